package fit

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"runtime"
	"sort"
	"sync"

	"github.com/transformaly/transformaly/capture"
)

// Images is a set of decoded images of one size, packed RGB, decoded once
// and read back batch by batch each epoch.
type Images struct {
	Size  int
	Paths []string
	slot  []int // where image i is stored, in store
	store *records
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
		if err := im.store.get(im.slot[i], buf[k*n:(k+1)*n]); err != nil {
			return nil, fmt.Errorf("decoded image %s: %w", im.Paths[i], err)
		}
	}
	return buf, nil
}

// Close frees the images (removing their spill file, if any).
func (im *Images) Close() error { return im.store.close() }

// ListImages returns the image files (png, jpg, jpeg, bmp) under dir,
// recursively, sorted. dir may be a symbolic link to the folder (WalkDir
// alone would not enter it); the paths keep dir as given.
func ListImages(dir string) ([]string, error) {
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return nil, fmt.Errorf("list images in %s: %w", dir, err)
	}
	var paths []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if capture.IsImageFile(p, d) {
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			paths = append(paths, filepath.Join(dir, rel))
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
	store, err := newRecords(len(paths), size*size*3, memoryBudget, spillDir, "decoded images")
	if err != nil {
		return nil, nil, err
	}
	im := &Images{Size: size, store: store}
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
				if err == nil {
					err = store.put(i, img)
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
