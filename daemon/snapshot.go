package daemon

import (
	"fmt"
	"image"
	"math"

	"gocv.io/x/gocv"
)

// snapshotMinSide is the smallest side of a snapshot: model inputs can be
// tiny (the demo's are 64 px), and a heatmap must be readable.
const snapshotMinSide = 256

// snapshot draws the event's peak frame with the per-patch anomaly heatmap
// (the students' token errors averaged over blocks, class token left out)
// blended over it, as a JPEG.
func snapshot(pf *peakFrame, blocks, size int) ([]byte, error) {
	tokens := len(pf.tokens) / blocks
	grid := int(math.Round(math.Sqrt(float64(tokens - 1))))
	if grid*grid+1 != tokens {
		return nil, fmt.Errorf("snapshot: %d tokens per block is not a square grid plus one", tokens)
	}
	heat := make([]float64, grid*grid)
	lo, hi := math.Inf(1), math.Inf(-1)
	for i := range heat {
		for b := range blocks {
			heat[i] += float64(pf.tokens[b*tokens+1+i]) / float64(blocks)
		}
		lo, hi = math.Min(lo, heat[i]), math.Max(hi, heat[i])
	}
	raw := make([]byte, len(heat))
	for i, v := range heat {
		if hi > lo {
			raw[i] = byte(255 * (v - lo) / (hi - lo))
		}
	}
	side := max(size, snapshotMinSide)
	small, err := gocv.NewMatFromBytes(grid, grid, gocv.MatTypeCV8U, raw)
	if err != nil {
		return nil, err
	}
	defer small.Close()
	big := gocv.NewMat()
	defer big.Close()
	gocv.Resize(small, &big, image.Pt(side, side), 0, 0, gocv.InterpolationCubic)
	colored := gocv.NewMat()
	defer colored.Close()
	gocv.ApplyColorMap(big, &colored, gocv.ColormapJet)

	rgb, err := gocv.NewMatFromBytes(size, size, gocv.MatTypeCV8UC3, pf.rgb)
	if err != nil {
		return nil, err
	}
	defer rgb.Close()
	bgr := gocv.NewMat()
	defer bgr.Close()
	gocv.CvtColor(rgb, &bgr, gocv.ColorBGRToRGB) // the same swap both ways
	frame := gocv.NewMat()
	defer frame.Close()
	gocv.Resize(bgr, &frame, image.Pt(side, side), 0, 0, gocv.InterpolationLinear)
	blend := gocv.NewMat()
	defer blend.Close()
	gocv.AddWeighted(frame, 0.6, colored, 0.4, 0, &blend)
	buf, err := gocv.IMEncode(gocv.JPEGFileExt, blend)
	if err != nil {
		return nil, fmt.Errorf("snapshot: encode JPEG: %w", err)
	}
	defer buf.Close()
	return append([]byte(nil), buf.GetBytes()...), nil
}
