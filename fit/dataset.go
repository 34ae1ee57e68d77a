package fit

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/transformaly/transformaly/capture"
)

// Images is a set of decoded images of one size, packed RGB, in memory
// (a 224x224 image takes 150 kB, so ten thousand take 1.5 GB).
type Images struct {
	Size   int
	Paths  []string
	Pixels []byte // len(Paths) * Size * Size * 3
}

// Len is the number of images.
func (im *Images) Len() int { return len(im.Paths) }

// At returns image i's pixels.
func (im *Images) At(i int) []byte {
	n := im.Size * im.Size * 3
	return im.Pixels[i*n : (i+1)*n]
}

// Batch packs the images at idx into buf (reused when large enough).
func (im *Images) Batch(idx []int, buf []byte) []byte {
	n := im.Size * im.Size * 3
	buf = buf[:0]
	for _, i := range idx {
		buf = append(buf, im.Pixels[i*n:(i+1)*n]...)
	}
	return buf
}

// ListImages returns the image files (png, jpg, jpeg, bmp) under dir,
// recursively, sorted.
func ListImages(dir string) ([]string, error) {
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && capture.ImageExtensions[strings.ToLower(filepath.Ext(p))] {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list images in %s: %w", dir, err)
	}
	sort.Strings(paths)
	return paths, nil
}

// LoadImages decodes and resizes every file in parallel. Files that cannot
// be read are logged and left out, and returned as errors; the caller
// decides whether what is left is enough.
func LoadImages(ctx context.Context, paths []string, size int) (*Images, []error) {
	n := size * size * 3
	pixels := make([]byte, len(paths)*n)
	ok := make([]bool, len(paths))
	errs := make([]error, len(paths))
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				img, err := capture.ReadImageRGB(paths[i], size)
				if err != nil {
					errs[i] = err
					continue
				}
				copy(pixels[i*n:], img)
				ok[i] = true
			}
		}()
	}
feed:
	for i := range paths {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	im := &Images{Size: size}
	var failed []error
	for i, p := range paths {
		if ok[i] {
			// Compact in place: no second copy of the whole set.
			copy(pixels[len(im.Paths)*n:], pixels[i*n:(i+1)*n])
			im.Paths = append(im.Paths, p)
		} else if errs[i] != nil {
			slog.Warn("skipping unreadable image", "err", errs[i])
			failed = append(failed, errs[i])
		}
	}
	im.Pixels = pixels[:len(im.Paths)*n]
	return im, failed
}
