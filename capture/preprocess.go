package capture

import (
	"fmt"
	"image"

	"gocv.io/x/gocv"
)

// Transform is what is done to every frame: crop, rotate, flip, resize.
type Transform struct {
	ROI    image.Rectangle
	Rotate int
	FlipH  bool
	FlipV  bool
	Size   int
}

// preprocessor applies a Transform with Mats reused across frames:
// allocating large Mats per frame is slow (page faults on every frame).
type preprocessor struct {
	t                      Transform
	rotated, flipped, size gocv.Mat
	rgb                    gocv.Mat
}

func newPreprocessor(t Transform) *preprocessor {
	return &preprocessor{t: t, rotated: gocv.NewMat(), flipped: gocv.NewMat(), size: gocv.NewMat(), rgb: gocv.NewMat()}
}

// Apply turns a BGR frame into packed RGB bytes of Size x Size in dst.
func (p *preprocessor) Apply(src gocv.Mat, dst []byte) error {
	size := p.t.Size
	if len(dst) != size*size*3 {
		return fmt.Errorf("preprocess: destination holds %d bytes, want %d", len(dst), size*size*3)
	}
	if src.Empty() {
		return fmt.Errorf("preprocess: empty frame")
	}
	cur := src
	if p.t.ROI != (image.Rectangle{}) {
		frame := image.Rect(0, 0, src.Cols(), src.Rows())
		if !p.t.ROI.In(frame) {
			return fmt.Errorf("preprocess: ROI %v lies outside the %dx%d frame", p.t.ROI, src.Cols(), src.Rows())
		}
		region := src.Region(p.t.ROI)
		defer region.Close()
		cur = region
	}
	if r := p.t.Rotate; r != 0 {
		code := map[int]gocv.RotateFlag{90: gocv.Rotate90Clockwise, 180: gocv.Rotate180Clockwise, 270: gocv.Rotate90CounterClockwise}[r]
		gocv.Rotate(cur, &p.rotated, code)
		cur = p.rotated
	}
	if p.t.FlipH || p.t.FlipV {
		code := 0 // around the x axis: vertical flip
		switch {
		case p.t.FlipH && p.t.FlipV:
			code = -1
		case p.t.FlipH:
			code = 1
		}
		gocv.Flip(cur, &p.flipped, code)
		cur = p.flipped
	}
	interp := gocv.InterpolationLinear
	if cur.Cols() > 2*size || cur.Rows() > 2*size {
		interp = gocv.InterpolationArea // linear interpolation aliases when shrinking a lot
	}
	gocv.Resize(cur, &p.size, image.Pt(size, size), 0, 0, interp)
	gocv.CvtColor(p.size, &p.rgb, gocv.ColorBGRToRGB)
	b, err := p.rgb.DataPtrUint8()
	if err != nil {
		return fmt.Errorf("preprocess: %w", err)
	}
	copy(dst, b)
	return nil
}

// Close releases the reused Mats.
func (p *preprocessor) Close() {
	for _, m := range []*gocv.Mat{&p.rotated, &p.flipped, &p.size, &p.rgb} {
		m.Close()
	}
}
