package heatmap_test

import (
	"bytes"
	"image"
	"image/jpeg"
	"path/filepath"
	"testing"

	"gocv.io/x/gocv"

	"github.com/transformaly/transformaly/internal/heatmap"
)

// The heatmap stretches the patch grid over an image of any aspect, as the
// model saw it stretched to a square: the hottest patch lands on its place
// in the image, and small images are enlarged to stay readable.
func TestJPEGPlacesThePatchGridOverTheImage(t *testing.T) {
	const grid, row, col = 4, 1, 3
	tokens := make([]float32, 1+grid*grid) // one block: class token, then the patches
	for i := 1; i < len(tokens); i++ {
		tokens[i] = 0.1
	}
	tokens[1+row*grid+col] = 5
	for _, c := range []struct{ w, h, maxSide, wantW, wantH int }{
		{300, 150, 1000, 300, 150}, // kept
		{64, 32, 1000, 256, 128},   // enlarged to be readable
		{1200, 900, 600, 600, 450}, // shrunk to maxSide
	} {
		img := bytes.Repeat([]byte{128}, c.w*c.h*3)
		m, err := heatmap.FromTokenErrors(tokens, 1)
		if err != nil {
			t.Fatal(err)
		}
		jpg, err := heatmap.JPEG(img, c.w, c.h, m, c.maxSide, "")
		if err != nil {
			t.Fatal(err)
		}
		out, err := jpeg.Decode(bytes.NewReader(jpg))
		if err != nil {
			t.Fatalf("not a JPEG: %v", err)
		}
		b := out.Bounds()
		if b.Dx() != c.wantW || b.Dy() != c.wantH {
			t.Errorf("%dx%d image: heatmap %dx%d, want %dx%d", c.w, c.h, b.Dx(), b.Dy(), c.wantW, c.wantH)
			continue
		}
		hotX, hotY, hottest := 0, 0, -1<<31
		for y := range b.Dy() {
			for x := range b.Dx() {
				r, _, bl, _ := out.At(x, y).RGBA()
				if d := int(r>>8) - int(bl>>8); d > hottest {
					hotX, hotY, hottest = x, y, d
				}
			}
		}
		cellW, cellH := b.Dx()/grid, b.Dy()/grid
		if hotX/cellW != col || hotY/cellH != row {
			t.Errorf("%dx%d image: hottest pixel at (%d,%d), want inside patch row %d col %d", c.w, c.h, hotX, hotY, row, col)
		}
	}
	m, _ := heatmap.FromTokenErrors(tokens, 1)
	if _, err := heatmap.JPEG(make([]byte, 10), 300, 150, m, 1000, ""); err == nil {
		t.Error("an image buffer of the wrong size was accepted")
	}
}

// A caption is a dark band along the bottom with light text in it; the
// rest of the image is as without one.
func TestJPEGCaption(t *testing.T) {
	m, _ := heatmap.FromPatchDistances(make([]float32, 16), 0, 0, 4, 1)
	img := bytes.Repeat([]byte{128}, 400*300*3)
	decode := func(caption string) image.Image {
		jpg, err := heatmap.JPEG(img, 400, 300, m, 1000, caption)
		if err != nil {
			t.Fatal(err)
		}
		out, err := jpeg.Decode(bytes.NewReader(jpg))
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	plain, captioned := decode(""), decode("cam1  score 437.2  threshold 12.3  above 99.97% of normal parts")
	dark, light := 0, 0
	for y := 280; y < 300; y++ {
		for x := range 400 {
			g, _, _, _ := captioned.At(x, y).RGBA()
			switch {
			case g>>8 < 40:
				dark++
			case g>>8 > 200:
				light++
			}
		}
	}
	if dark < 400*20/2 || light < 100 {
		t.Errorf("bottom band: %d dark and %d light pixels, want a dark band with text", dark, light)
	}
	a, _, _, _ := plain.At(200, 100).RGBA()
	b, _, _, _ := captioned.At(200, 100).RGBA()
	if d := int(a>>8) - int(b>>8); d < -3 || d > 3 {
		t.Errorf("the caption changed the image above it: %d vs %d", a>>8, b>>8)
	}
}

// The worst region is the box of the patches above normal connected to the
// worst one, in the image's coordinates; with none above normal, the worst
// patch alone.
func TestRegion(t *testing.T) {
	dist := make([]float32, 8*8)
	for _, p := range [][2]int{{2, 3}, {2, 4}, {3, 4}, {4, 4}} { // an L of 4 patches
		dist[p[0]*8+p[1]] = 3
	}
	dist[3*8+4] = 5 // the worst
	dist[6*8+0] = 4 // above normal but apart
	m, _ := heatmap.FromPatchDistances(dist, 0, 0, 8, 2)
	if got, want := m.Region(800, 400), image.Rect(300, 100, 500, 250); got != want {
		t.Errorf("region %v, want %v", got, want)
	}
	calm, _ := heatmap.FromPatchDistances(make([]float32, 64), 0, 0, 8, 2)
	calm.Values[9] = 1
	if got, want := calm.Region(80, 80), image.Rect(10, 10, 20, 20); got != want {
		t.Errorf("region of a map with nothing above normal: %v, want the worst patch %v", got, want)
	}
}

// On the fixed scale, a normal frame (every patch at or under the normal
// distance) shows no warm colour, and a patch at twice it is red.
func TestFixedScaleShowsNoHotSpotOnNormalFrames(t *testing.T) {
	img := bytes.Repeat([]byte{128}, 256*256*3)
	warm := func(dist []float32) int {
		m, _ := heatmap.FromPatchDistances(dist, 0, 0, 4, 1)
		jpg, err := heatmap.JPEG(img, 256, 256, m, 256, "")
		if err != nil {
			t.Fatal(err)
		}
		out, _ := jpeg.Decode(bytes.NewReader(jpg))
		n := 0
		for y := range 256 {
			for x := range 256 {
				r, _, b, _ := out.At(x, y).RGBA()
				if int(r>>8)-int(b>>8) > 60 {
					n++
				}
			}
		}
		return n
	}
	normal := make([]float32, 16)
	for i := range normal {
		normal[i] = 0.5 + 0.5*float32(i%3)/2 // 0.5 .. 1, the normal range
	}
	if n := warm(normal); n > 0 {
		t.Errorf("a normal frame has %d warm pixels", n)
	}
	normal[5] = 2
	if n := warm(normal); n < 100 {
		t.Errorf("a patch at twice the normal distance shows only %d warm pixels", n)
	}
}

// Full upsamples and blurs: the peak stays where its patch is, and the map
// has the image's size.
func TestFullMap(t *testing.T) {
	dist := make([]float32, 16)
	dist[1*4+2] = 4
	m, _ := heatmap.FromPatchDistances(dist, 0, 0, 4, 1)
	full, err := m.Full(200, 100)
	if err != nil || len(full) != 200*100 {
		t.Fatalf("%d values, %v", len(full), err)
	}
	best := 0
	for i, v := range full {
		if v > full[best] {
			best = i
		}
	}
	if x, y := best%200, best/200; x/50 != 2 || y/25 != 1 {
		t.Errorf("peak at (%d, %d), want inside patch row 1 col 2", x, y)
	}
}

// A map written as TIFF reads back as the same float32 values.
func TestWriteTIFF(t *testing.T) {
	values := []float32{0, 0.5, 1.25, 3e-7, 42, -1}
	path := filepath.Join(t.TempDir(), "m.tiff")
	if err := heatmap.WriteTIFF(path, values, 3, 2); err != nil {
		t.Fatal(err)
	}
	m := gocv.IMRead(path, gocv.IMReadUnchanged)
	defer m.Close()
	if m.Type() != gocv.MatTypeCV32F || m.Cols() != 3 || m.Rows() != 2 {
		t.Fatalf("read back a %dx%d Mat of type %v", m.Cols(), m.Rows(), m.Type())
	}
	got, _ := m.DataPtrFloat32()
	for i, v := range values {
		if got[i] != v {
			t.Errorf("value %d: %g, want %g", i, got[i], v)
		}
	}
}

// TestRegionOnAStitchedGrid: a map wider than high (a tiled frame's) puts
// its region where its cells lie on the frame, and Full keeps the hot
// cell there.
func TestRegionOnAStitchedGrid(t *testing.T) {
	dist := make([]float32, 8*3)
	dist[1*8+6], dist[1*8+7] = 5, 4 // row 1, columns 6 and 7
	m, err := heatmap.FromPatchDistances(dist, 8, 3, 4, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := m.Region(800, 300), image.Rect(600, 100, 800, 200); got != want {
		t.Fatalf("region %v, want %v", got, want)
	}
	full, err := m.Full(800, 300)
	if err != nil {
		t.Fatal(err)
	}
	best := 0
	for i, v := range full {
		if v > full[best] {
			best = i
		}
	}
	if x, y := best%800, best/800; x < 600 || x >= 700 || y < 100 || y >= 200 {
		t.Fatalf("hottest pixel at %d,%d, not in the hot cell", x, y)
	}
	if _, err := heatmap.FromPatchDistances(dist, 5, 5, 4, 1); err == nil {
		t.Fatal("24 values taken as a 5x5 grid")
	}
}

// A tiled frame's stitched map is blurred as each tile's map is (PatchCore's
// 4 px at 224, of the tile), not as the whole frame shrunk to one input: a
// hot patch spreads over as many frame pixels in a 2x1-tile frame as in
// one tile. (Blurred at the frame's scale, it covered 1.6 times as many.)
func TestStitchedMapIsBlurredAtTheTilesScale(t *testing.T) {
	spot := func(cols, rows, w, h int) int {
		dist := make([]float32, cols*rows)
		dist[5*cols+5] = 4
		m, err := heatmap.FromPatchDistances(dist, cols, rows, 14, 1)
		if err != nil {
			t.Fatal(err)
		}
		full, err := m.Full(w, h)
		if err != nil {
			t.Fatal(err)
		}
		peak := float32(0)
		for _, v := range full {
			peak = max(peak, v)
		}
		n := 0
		for _, v := range full {
			if v > peak/2 {
				n++
			}
		}
		return n
	}
	tile, frame := spot(14, 14, 224, 224), spot(28, 14, 448, 224)
	if d := frame - tile; d < -tile/20 || d > tile/20 {
		t.Errorf("a hot patch covers %d pixels of a tiled frame's map, %d of a tile's", frame, tile)
	}
}
