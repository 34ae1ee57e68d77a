package capture

import (
	"fmt"
	"image"

	"gocv.io/x/gocv"

	"github.com/transformaly/transformaly/tiles"
)

// Transform is what is done to every frame: crop, rotate, flip, resize;
// and, with KeepView, a copy of the frame before the resize (see
// Config.KeepView).
type Transform struct {
	ROI      image.Rectangle
	Rotate   int
	FlipH    bool
	FlipV    bool
	Size     int
	KeepView bool
	// Tiling cuts the frame into tiles at native resolution, each resized
	// to Size square (nil: the whole frame resized).
	Tiling *tiles.Tiling
}

// preprocessor applies a Transform with Mats reused across frames:
// allocating large Mats per frame is slow (page faults on every frame).
type preprocessor struct {
	t                      Transform
	rotated, flipped, size gocv.Mat
	rgb                    gocv.Mat
	viewMat                gocv.Mat
	// freeViews holds released views for reuse: frames in flight at once
	// are the mailbox's, the detector's pending and batch ones and an
	// event's peak.
	freeViews chan *View
	// viewW and viewH are the last frame's size after crop, rotation and
	// flips (what Frame.Width and Height report).
	viewW, viewH int
}

func newPreprocessor(t Transform) *preprocessor {
	return &preprocessor{t: t, rotated: gocv.NewMat(), flipped: gocv.NewMat(), size: gocv.NewMat(), rgb: gocv.NewMat(),
		viewMat: gocv.NewMat(), freeViews: make(chan *View, 4)}
}

// Input turns a BGR frame into the detector's input, packed RGB bytes: the
// frame resized to Size x Size, or with a Tiling each of its tiles
// (tiles.Layout, row by row) resized so; and returns the view (nil without
// KeepView).
func (p *preprocessor) Input(src gocv.Mat) ([]byte, *View, error) {
	if p.t.Tiling == nil {
		dst := make([]byte, p.t.Size*p.t.Size*3)
		view, err := p.Apply(src, dst)
		return dst, view, err
	}
	var dst []byte
	view, err := p.apply(src, func(cur gocv.Mat) error {
		l, err := p.t.Tiling.Layout(cur.Cols(), cur.Rows())
		if err != nil {
			return fmt.Errorf("preprocess: %w", err)
		}
		n := p.t.Size * p.t.Size * 3
		dst = make([]byte, len(l.Tiles)*n)
		for i, r := range l.Tiles {
			tile := cur.Region(r)
			err := p.resizeRGB(tile, dst[i*n:(i+1)*n])
			tile.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	return dst, view, err
}

// Apply turns a BGR frame into packed RGB bytes of Size x Size in dst, and
// returns the view (nil without KeepView).
func (p *preprocessor) Apply(src gocv.Mat, dst []byte) (*View, error) {
	size := p.t.Size
	if len(dst) != size*size*3 {
		return nil, fmt.Errorf("preprocess: destination holds %d bytes, want %d", len(dst), size*size*3)
	}
	return p.apply(src, func(cur gocv.Mat) error {
		if size > 0 {
			return p.resizeRGB(cur, dst)
		}
		return nil
	})
}

// resizeRGB resizes a BGR image to Size x Size into dst as packed RGB.
func (p *preprocessor) resizeRGB(cur gocv.Mat, dst []byte) error {
	size := p.t.Size
	gocv.Resize(cur, &p.size, image.Pt(size, size), 0, 0, shrinkInterpolation(cur, size, size))
	gocv.CvtColor(p.size, &p.rgb, gocv.ColorBGRToRGB)
	b, err := p.rgb.DataPtrUint8()
	if err != nil {
		return fmt.Errorf("preprocess: %w", err)
	}
	copy(dst, b)
	return nil
}

// apply crops, rotates and flips a BGR frame, hands the result to
// toInput, and returns the view (nil without KeepView).
func (p *preprocessor) apply(src gocv.Mat, toInput func(gocv.Mat) error) (*View, error) {
	if src.Empty() {
		return nil, fmt.Errorf("preprocess: empty frame")
	}
	cur := src
	if p.t.ROI != (image.Rectangle{}) {
		frame := image.Rect(0, 0, src.Cols(), src.Rows())
		if !p.t.ROI.In(frame) {
			return nil, fmt.Errorf("preprocess: ROI %v lies outside the %dx%d frame", p.t.ROI, src.Cols(), src.Rows())
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
	p.viewW, p.viewH = cur.Cols(), cur.Rows()
	if err := toInput(cur); err != nil {
		return nil, err
	}
	if !p.t.KeepView {
		return nil, nil
	}
	return p.view(cur)
}

// view copies the transformed frame into a reused buffer.
func (p *preprocessor) view(cur gocv.Mat) (*View, error) {
	if !cur.IsContinuous() { // a crop's rows are apart in memory
		cur.CopyTo(&p.viewMat)
		cur = p.viewMat
	}
	b, err := cur.DataPtrUint8()
	if err != nil {
		return nil, fmt.Errorf("preprocess: view: %w", err)
	}
	var v *View
	select {
	case v = <-p.freeViews:
	default:
		v = &View{free: p.freeViews}
	}
	if cap(v.BGR) < len(b) {
		v.BGR = make([]byte, len(b))
	}
	v.BGR = v.BGR[:len(b)]
	copy(v.BGR, b)
	v.Width, v.Height = cur.Cols(), cur.Rows()
	return v, nil
}

// shrinkInterpolation is linear, or area averaging when shrinking a lot
// (linear interpolation aliases then).
func shrinkInterpolation(src gocv.Mat, w, h int) gocv.InterpolationFlags {
	if src.Cols() > 2*w || src.Rows() > 2*h {
		return gocv.InterpolationArea
	}
	return gocv.InterpolationLinear
}

// Close releases the reused Mats.
func (p *preprocessor) Close() {
	for _, m := range []*gocv.Mat{&p.rotated, &p.flipped, &p.size, &p.rgb, &p.viewMat} {
		m.Close()
	}
}
