//go:build matprofile

package capture

import (
	"bytes"

	"gocv.io/x/gocv"
)

const matProfileEnabled = true

func liveMats() int { return gocv.MatProfile.Count() }

func matReport() string {
	var b bytes.Buffer
	gocv.MatProfile.WriteTo(&b, 1)
	return b.String()
}
