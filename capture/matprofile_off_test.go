//go:build !matprofile

package capture

// Without -tags matprofile gocv does not count Mats.
const matProfileEnabled = false

func liveMats() int { return 0 }

func matReport() string { return "" }
