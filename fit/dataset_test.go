package fit

import (
	"context"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

// Over the memory budget, decoded images go to a temporary file and read
// back the same; the file is removed on Close.
func TestImagesSpillToDiskBeyondTheBudget(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	for i := range 5 {
		img := image.NewNRGBA(image.Rect(0, 0, 8, 8))
		for p := 0; p < len(img.Pix); p += 4 {
			img.Pix[p], img.Pix[p+1], img.Pix[p+2], img.Pix[p+3] = uint8(40*i), 7, 200, 255
		}
		path := filepath.Join(dir, fmt.Sprintf("%d.png", i))
		f, _ := os.Create(path)
		png.Encode(f, img)
		f.Close()
		paths = append(paths, path)
	}
	paths = append(paths, filepath.Join(dir, "missing.png"))
	for _, budget := range []int64{1 << 20, 100} {
		im, failed, err := LoadImages(context.Background(), paths, 8, budget, dir)
		if err != nil {
			t.Fatal(err)
		}
		if im.Len() != 5 || len(failed) != 1 {
			t.Fatalf("budget %d: %d images, %d failures", budget, im.Len(), len(failed))
		}
		if spilled := im.store.file != nil; spilled != (budget == 100) {
			t.Errorf("budget %d: spilled=%v", budget, spilled)
		}
		buf, err := im.Batch([]int{3, 1}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if buf[0] != 120 || buf[1] != 7 || buf[2] != 200 || buf[8*8*3] != 40 {
			t.Errorf("budget %d: batch starts %v, image 1 starts %v", budget, buf[:3], buf[8*8*3:8*8*3+3])
		}
		im.Close()
		if left, _ := filepath.Glob(filepath.Join(dir, ".transformaly-decoded-images-*")); len(left) > 0 {
			t.Errorf("spill file left behind: %v", left)
		}
	}
}

// A folder of images reached through a symbolic link (a common way to
// point at a data set) lists its images under the path as given.
func TestListImagesThroughASymlink(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data", "good")
	os.MkdirAll(filepath.Join(data, "sub"), 0o755)
	for _, name := range []string{"a.png", "sub/b.JPG", "notes.txt"} {
		os.WriteFile(filepath.Join(data, name), []byte("x"), 0o644)
	}
	// A FIFO named .png is no image (reading it hung fit past Ctrl-C).
	if err := syscall.Mkfifo(filepath.Join(data, "sub", "pipe.png"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "normal")
	if err := os.Symlink(data, link); err != nil {
		t.Fatal(err)
	}
	got, err := ListImages(link)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(link, "a.png"), filepath.Join(link, "sub", "b.JPG")}
	if !slices.Equal(got, want) {
		t.Errorf("listed %v, want %v", got, want)
	}
	if _, err := ListImages(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing folder listed without error")
	}
}
