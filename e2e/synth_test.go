package e2e

import (
	"bytes"
	"image"
	"image/draw"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gocv.io/x/gocv"
)

// synth writes decodable parts of the size asked for, each its own, and a
// video of parts x frames-per-part frames; bad flags are named.
func TestSynthWritesPartsAndVideo(t *testing.T) {
	dir := t.TempDir()
	parts := filepath.Join(dir, "parts")
	if r := runBinary(t, nil, "synth", "--out", parts, "--kind", "foreign", "--count", "3", "--image-size", "40"); r.code != 0 {
		t.Fatalf("synth --out failed: %s", r.stderr)
	}
	files, err := filepath.Glob(filepath.Join(parts, "*.png"))
	if err != nil || len(files) != 3 {
		t.Fatalf("want 3 PNGs in %s, got %v (%v)", parts, files, err)
	}
	var pixels [][]byte
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if img.Bounds() != image.Rect(0, 0, 40, 40) {
			t.Errorf("%s is %v, want 40x40", p, img.Bounds())
		}
		rgba := image.NewRGBA(img.Bounds())
		draw.Draw(rgba, rgba.Bounds(), img, image.Point{}, draw.Src)
		pixels = append(pixels, rgba.Pix)
	}
	if bytes.Equal(pixels[0], pixels[1]) || bytes.Equal(pixels[1], pixels[2]) {
		t.Error("parts are identical; each should have its own position, light and noise")
	}

	video := filepath.Join(dir, "line.avi")
	if r := runBinary(t, nil, "synth", "--video", video, "--count", "2", "--frames-per-part", "4", "--image-size", "64"); r.code != 0 {
		t.Fatalf("synth --video failed: %s", r.stderr)
	}
	vc, err := gocv.VideoCaptureFile(video)
	if err != nil {
		t.Fatal(err)
	}
	defer vc.Close()
	frame := gocv.NewMat()
	defer frame.Close()
	frames := 0
	for vc.Read(&frame) && !frame.Empty() {
		if frame.Cols() != 64 || frame.Rows() != 64 {
			t.Errorf("frame %d is %dx%d, want 64x64", frames, frame.Cols(), frame.Rows())
		}
		frames++
	}
	if frames != 8 {
		t.Errorf("video has %d frames, want 2 parts x 4", frames)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--count", "3"}, "--out"},
		{[]string{"--out", parts, "--video", video}, "--video"},
		{[]string{"--out", parts, "--kind", "cracked"}, "normal, missing, foreign, recolored"},
		{[]string{"--out", parts, "--count", "0"}, "--count"},
	} {
		r := runBinary(t, nil, append([]string{"synth"}, c.args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("synth %v: exit %d, stderr %q; want 2 and %q named", c.args, r.code, r.stderr, c.want)
		}
	}
}
