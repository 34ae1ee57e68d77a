// Package heatmap draws the students' per-patch errors over a frame, for
// snapshots and score --heatmap. It is apart from the detector so that the
// detector (and the GPU check built from its tests) needs no OpenCV.
package heatmap

import (
	"fmt"
	"image"
	"image/color"
	"math"

	"gocv.io/x/gocv"
)

// minSide is the smallest longer side of a heatmap image: model
// inputs can be tiny (the demo's are 64 px), and a heatmap must be readable.
const minSide = 256

// JPEG draws a packed BGR image (OpenCV's order) of width x height
// with the per-patch anomaly heatmap (the students' token errors,
// [blocks * tokens], averaged over blocks, class token left out) blended
// over it, as a JPEG whose longer side is at most maxSide (and at least
// minSide). The image is the frame the model saw resized to its
// square input: the patch grid stretches back over it the same way. A
// caption, when given, is written in a dark band along the bottom.
func JPEG(bgrImage []byte, width, height int, tokenErrors []float32, blocks, maxSide int, caption string) ([]byte, error) {
	if len(bgrImage) != width*height*3 {
		return nil, fmt.Errorf("heatmap: %d bytes for a %dx%d image", len(bgrImage), width, height)
	}
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
	outW, outH := width, height
	if long := max(width, height); long < minSide || long > max(maxSide, minSide) {
		side := max(minSide, min(long, maxSide))
		outW, outH = max(1, width*side/long), max(1, height*side/long)
	}
	small, err := gocv.NewMatFromBytes(grid, grid, gocv.MatTypeCV8U, raw)
	if err != nil {
		return nil, err
	}
	defer small.Close()
	big := gocv.NewMat()
	defer big.Close()
	gocv.Resize(small, &big, image.Pt(outW, outH), 0, 0, gocv.InterpolationCubic)
	colored := gocv.NewMat()
	defer colored.Close()
	gocv.ApplyColorMap(big, &colored, gocv.ColormapJet)

	bgr, err := gocv.NewMatFromBytes(height, width, gocv.MatTypeCV8UC3, bgrImage)
	if err != nil {
		return nil, err
	}
	defer bgr.Close()
	interp := gocv.InterpolationLinear
	if outW < width/2 {
		interp = gocv.InterpolationArea // linear interpolation aliases when shrinking a lot
	}
	frame := gocv.NewMat()
	defer frame.Close()
	gocv.Resize(bgr, &frame, image.Pt(outW, outH), 0, 0, interp)
	blend := gocv.NewMat()
	defer blend.Close()
	gocv.AddWeighted(frame, 0.6, colored, 0.4, 0, &blend)
	if caption != "" {
		drawCaption(&blend, caption)
	}
	buf, err := gocv.IMEncode(gocv.JPEGFileExt, blend)
	if err != nil {
		return nil, fmt.Errorf("heatmap: encode JPEG: %w", err)
	}
	defer buf.Close()
	return append([]byte(nil), buf.GetBytes()...), nil
}

// drawCaption writes text in a dark band along the image's bottom, scaled
// to the image's width. OpenCV's Hershey fonts have ASCII only: other
// characters show as '?'.
func drawCaption(img *gocv.Mat, text string) {
	ascii := []rune(text)
	for i, r := range ascii {
		if r < 0x20 || r > 0x7e {
			ascii[i] = '?'
		}
	}
	text = string(ascii)
	w, h := img.Cols(), img.Rows()
	const font = gocv.FontHersheySimplex
	scale := 1.0
	size := gocv.GetTextSize(text, font, scale, 1)
	if limit := float64(w) * 0.96; float64(size.X) > limit {
		scale = limit / float64(size.X)
	}
	size = gocv.GetTextSize(text, font, scale, 1)
	band := size.Y*2 + 4
	gocv.Rectangle(img, image.Rect(0, h-band, w, h), color.RGBA{0, 0, 0, 0}, -1)
	gocv.PutText(img, text, image.Pt(w/50, h-band/2+size.Y/2), font, scale, color.RGBA{255, 255, 255, 0}, 1)
}
