package synth

import (
	"fmt"

	"gocv.io/x/gocv"
)

// WriteVideo writes an MJPG AVI of parts passing the camera: each entry of
// kinds is one part (Normal or a defect) shown for framesPerPart frames,
// each frame with its own lighting and sensor noise.
func WriteVideo(path string, size int, fps float64, kinds []string, framesPerPart int, seed uint64) error {
	vw, err := gocv.VideoWriterFile(path, "MJPG", fps, size, size, true)
	if err != nil {
		return fmt.Errorf("write video %s: %w", path, err)
	}
	defer vw.Close()
	n := uint64(0)
	for _, kind := range kinds {
		for range framesPerPart {
			n++
			m, err := gocv.ImageToMatRGB(Part(size, kind, seed*7_919+n))
			if err != nil {
				return fmt.Errorf("write video %s: %w", path, err)
			}
			err = vw.Write(m)
			m.Close()
			if err != nil {
				return fmt.Errorf("write video %s: %w", path, err)
			}
		}
	}
	return nil
}
