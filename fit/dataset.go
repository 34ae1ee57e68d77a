package fit

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"

	"github.com/transformaly/transformaly/capture"
)

// Images is a set of decoded images of one size, packed RGB, decoded once
// and read back batch by batch each epoch: in memory while they fit the
// budget, else in a temporary file (read through the page cache), so a fit
// over tens of thousands of images stays within bounded memory.
type Images struct {
	Size  int
	Paths []string
	slot  []int    // where image i is stored, in images
	mem   []byte   // in memory ...
	file  *os.File // ... or spilled to disk
}

// Len is the number of images.
func (im *Images) Len() int { return len(im.Paths) }

// Batch packs the images at idx into buf (reused when large enough).
func (im *Images) Batch(idx []int, buf []byte) ([]byte, error) {
	n := im.Size * im.Size * 3
	if cap(buf) < len(idx)*n {
		buf = make([]byte, len(idx)*n)
	}
	buf = buf[:len(idx)*n]
	for k, i := range idx {
		dst := buf[k*n : (k+1)*n]
		if im.file == nil {
			copy(dst, im.mem[im.slot[i]*n:])
		} else if _, err := im.file.ReadAt(dst, int64(im.slot[i])*int64(n)); err != nil {
			return nil, fmt.Errorf("read decoded image %s back: %w", im.Paths[i], err)
		}
	}
	return buf, nil
}

// Close removes the spill file, if any.
func (im *Images) Close() error {
	if im.file == nil {
		return nil
	}
	name := im.file.Name()
	im.file.Close()
	return os.Remove(name)
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

// LoadImages decodes and resizes every file in parallel, keeping them in
// memory up to memoryBudget bytes and in a temporary file in spillDir
// beyond. Files that cannot be read are logged, left out and returned as
// errors; the caller decides whether what is left is enough.
func LoadImages(ctx context.Context, paths []string, size int, memoryBudget int64, spillDir string) (*Images, []error, error) {
	n := size * size * 3
	im := &Images{Size: size}
	if total := int64(len(paths)) * int64(n); total > memoryBudget {
		f, err := os.CreateTemp(spillDir, ".transformaly-images-*")
		if err != nil {
			return nil, nil, fmt.Errorf("decoded images need %d MB, over the %d MB memory budget, and no spill file can be made: %w", total>>20, memoryBudget>>20, err)
		}
		im.file = f
		slog.Info("decoded images go to a temporary file", "mb", total>>20, "budget_mb", memoryBudget>>20, "file", f.Name())
	} else {
		im.mem = make([]byte, len(paths)*n)
	}
	ok := make([]bool, len(paths))
	errs := make([]error, len(paths))
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				img, _, err := capture.ReadImageRGB(paths[i], size, false)
				if err == nil && im.file != nil {
					_, err = im.file.WriteAt(img, int64(i)*int64(n))
				} else if err == nil {
					copy(im.mem[i*n:], img)
				}
				errs[i], ok[i] = err, err == nil
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
	var failed []error
	for i, p := range paths {
		if ok[i] {
			im.Paths = append(im.Paths, p)
			im.slot = append(im.slot, i)
		} else if errs[i] != nil {
			slog.Warn("skipping unreadable image", "err", errs[i])
			failed = append(failed, errs[i])
		}
	}
	return im, failed, nil
}
