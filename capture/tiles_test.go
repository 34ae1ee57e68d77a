package capture

import (
	"errors"
	"image"
	"math/rand/v2"
	"testing"

	"gocv.io/x/gocv"

	"github.com/transformaly/transformaly/tiles"
)

// TestInputCutsTiles: a frame cropped, rotated and cut into tiles of 64
// (the input size, so no resize) gives each tile's pixels, RGB, as plain
// indexing of the BGR frame finds them; a frame smaller than a tile is
// refused; no Mat is left behind.
func TestInputCutsTiles(t *testing.T) {
	mats := liveMats()
	const w, h = 200, 150
	rng := rand.New(rand.NewPCG(2, 2))
	bgr := make([]byte, w*h*3)
	for i := range bgr {
		bgr[i] = byte(rng.IntN(256))
	}
	src, err := gocv.NewMatFromBytes(h, w, gocv.MatTypeCV8UC3, bgr)
	if err != nil {
		t.Fatal(err)
	}
	tl := tiles.Tiling{Size: 64, Overlap: 0.125}
	roi := image.Rect(10, 5, 180, 145) // 170x140, rotated 90 clockwise: 140x170
	p := newPreprocessor(Transform{ROI: roi, Rotate: 90, Size: 64, Tiling: &tl})
	rgb, _, err := p.Input(src)
	if err != nil {
		t.Fatal(err)
	}
	l, err := tl.Layout(140, 170)
	if err != nil {
		t.Fatal(err)
	}
	if p.viewW != 140 || p.viewH != 170 || len(rgb) != len(l.Tiles)*64*64*3 {
		t.Fatalf("view %dx%d, %d bytes for %d tiles", p.viewW, p.viewH, len(rgb), len(l.Tiles))
	}
	// Rotated 90 clockwise: the view's (x, y) is the crop's (y, H-1-x).
	at := func(x, y int) []byte {
		cx, cy := roi.Min.X+y, roi.Min.Y+roi.Dy()-1-x
		return bgr[(cy*w+cx)*3 : (cy*w+cx)*3+3]
	}
	for i, r := range l.Tiles {
		for y := range 64 {
			for x := range 64 {
				want := at(r.Min.X+x, r.Min.Y+y)
				got := rgb[((i*64+y)*64+x)*3:]
				if got[0] != want[2] || got[1] != want[1] || got[2] != want[0] {
					t.Fatalf("tile %d (%v) pixel %d,%d: RGB %v, BGR %v", i, r, x, y, got[:3], want)
				}
			}
		}
	}
	small := newPreprocessor(Transform{ROI: image.Rect(0, 0, 60, 100), Size: 64, Tiling: &tl})
	if _, _, err := small.Input(src); !errors.Is(err, tiles.ErrFrameTooSmall) {
		t.Fatalf("a 60x100 crop for tiles of 64: %v", err)
	}
	p.Close()
	small.Close()
	src.Close()
	if matProfileEnabled && liveMats() != mats {
		t.Errorf("%d Mats alive, %d before:\n%s", liveMats(), mats, matReport())
	}
}
