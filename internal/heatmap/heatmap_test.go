package heatmap_test

import (
	"bytes"
	"image"
	"image/jpeg"
	"testing"

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
		jpg, err := heatmap.JPEG(img, c.w, c.h, tokens, 1, c.maxSide, "")
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
	if _, err := heatmap.JPEG(make([]byte, 10), 300, 150, tokens, 1, 1000, ""); err == nil {
		t.Error("an image buffer of the wrong size was accepted")
	}
}

// A caption is a dark band along the bottom with light text in it; the
// rest of the image is as without one.
func TestJPEGCaption(t *testing.T) {
	tokens := make([]float32, 1+16)
	img := bytes.Repeat([]byte{128}, 400*300*3)
	decode := func(caption string) image.Image {
		jpg, err := heatmap.JPEG(img, 400, 300, tokens, 1, 1000, caption)
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
