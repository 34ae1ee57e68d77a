package detector

import (
	"fmt"
	"image"
	"math"

	"gocv.io/x/gocv"
)

// heatmapMinSide is the smallest side of a heatmap image: model inputs can
// be tiny (the demo's are 64 px), and a heatmap must be readable.
const heatmapMinSide = 256

// HeatmapJPEG draws a packed RGB image of size x size with the per-patch
// anomaly heatmap (the students' token errors, [blocks * tokens], averaged
// over blocks, class token left out) blended over it, as a JPEG.
func HeatmapJPEG(rgbImage []byte, tokenErrors []float32, blocks, size int) ([]byte, error) {
	tokens := len(tokenErrors) / blocks
	grid := int(math.Round(math.Sqrt(float64(tokens - 1))))
	if grid*grid+1 != tokens {
		return nil, fmt.Errorf("heatmap: %d tokens per block is not a square grid plus one", tokens)
	}
	heat := make([]float64, grid*grid)
	lo, hi := math.Inf(1), math.Inf(-1)
	for i := range heat {
		for b := range blocks {
			heat[i] += float64(tokenErrors[b*tokens+1+i]) / float64(blocks)
		}
		lo, hi = math.Min(lo, heat[i]), math.Max(hi, heat[i])
	}
	raw := make([]byte, len(heat))
	for i, v := range heat {
		if hi > lo {
			raw[i] = byte(255 * (v - lo) / (hi - lo))
		}
	}
	side := max(size, heatmapMinSide)
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

	rgb, err := gocv.NewMatFromBytes(size, size, gocv.MatTypeCV8UC3, rgbImage)
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
		return nil, fmt.Errorf("heatmap: encode JPEG: %w", err)
	}
	defer buf.Close()
	return append([]byte(nil), buf.GetBytes()...), nil
}
