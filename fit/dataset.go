package fit

import (
	"context"
	"fmt"
	"image"
	"io/fs"
	"log/slog"
	"path/filepath"
	"runtime"
	"sort"
	"sync"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/tiles"
)

// Images is a set of decoded images of one size, packed RGB, decoded once
// and read back batch by batch each epoch.
type Images struct {
	Size  int
	Paths []string
	slot  []int // where image i is stored, in store
	store *records
	// Tiled images (LoadTiles) are each a tile of a frame: frame[i] is
	// image i's frame, tile[i] its index in that frame's layout. Frames of
	// untiled images are the images themselves (frame nil).
	frame   []int
	tile    []int
	layouts []tiles.Layout
}

// Len is the number of images (tiles, for tiled images).
func (im *Images) Len() int { return len(im.Paths) }

// Frames is the number of frames the images were cut from (the images
// themselves, untiled).
func (im *Images) Frames() int {
	if im.frame == nil {
		return im.Len()
	}
	return len(im.layouts)
}

// FrameOf is the frame image i was cut from (i itself, untiled).
func (im *Images) FrameOf(i int) int {
	if im.frame == nil {
		return i
	}
	return im.frame[i]
}

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

// LoadTiles reads every file as LoadImages does, but cuts each into the
// tiles of tiling (each resized to size): every tile is an image, and the
// frames they come from are kept. A file smaller than one tile is an
// error naming it: the bundle could never score such frames. With a
// shift, each frame first loses shift.X columns on the left and shift.Y
// rows on the top (an axis left shorter than a tile keeps them), so its
// tiles' patches fall at another phase of the same pixels.
func LoadTiles(ctx context.Context, paths []string, size int, tiling tiles.Tiling, shift image.Point, memoryBudget int64, spillDir string) (*Images, []error, error) {
	var layouts []tiles.Layout
	var framePaths []string
	var crops []image.Rectangle
	var failed []error
	offset := []int{0} // first record of each listed frame
	for _, p := range paths {
		w, h, err := capture.ImageDimensions(p)
		if err != nil {
			slog.Warn("skipping unreadable image", "err", err)
			failed = append(failed, err)
			continue
		}
		crop := image.Rectangle{} // the whole frame
		if shift != (image.Point{}) {
			crop = image.Rect(shift.X, shift.Y, w, h)
			if crop.Dx() < tiling.Size {
				crop.Min.X = 0
			}
			if crop.Dy() < tiling.Size {
				crop.Min.Y = 0
			}
			w, h = crop.Dx(), crop.Dy()
		}
		l, err := tiling.Layout(w, h)
		if err != nil {
			return nil, nil, fmt.Errorf("fit: image %s: %w", p, err)
		}
		layouts, framePaths, crops = append(layouts, l), append(framePaths, p), append(crops, crop)
		offset = append(offset, offset[len(offset)-1]+len(l.Tiles))
	}
	n := size * size * 3
	store, err := newRecords(offset[len(offset)-1], n, memoryBudget, spillDir, "decoded tiles")
	if err != nil {
		return nil, nil, err
	}
	im := &Images{Size: size, store: store, frame: []int{}}
	errs := parallel(ctx, len(framePaths), func(f int) error {
		rgb, got, _, err := capture.ReadImageInput(framePaths[f], capture.Transform{ROI: crops[f], Size: size, Tiling: &tiling})
		if err != nil {
			return err
		}
		if l := layouts[f]; got.X != l.Width || got.Y != l.Height {
			return fmt.Errorf("image %s: decoded at %dx%d, its header says %dx%d (an EXIF rotation?)", framePaths[f], got.X, got.Y, l.Width, l.Height)
		}
		for t := range layouts[f].Tiles {
			if err := store.put(offset[f]+t, rgb[t*n:(t+1)*n]); err != nil {
				return err
			}
		}
		return nil
	})
	for f, err := range errs {
		switch {
		case err == nil && ctx.Err() == nil:
			for t := range layouts[f].Tiles {
				im.Paths = append(im.Paths, framePaths[f])
				im.slot = append(im.slot, offset[f]+t)
				im.frame = append(im.frame, len(im.layouts))
				im.tile = append(im.tile, t)
			}
			im.layouts = append(im.layouts, layouts[f])
		case err != nil:
			slog.Warn("skipping unreadable image", "err", err)
			failed = append(failed, err)
		}
	}
	return im, failed, nil
}

// parallel runs fn(0..n-1) on every core until ctx ends, and returns each
// one's error (nil for those not run).
func parallel(ctx context.Context, n int, fn func(int) error) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				errs[i] = fn(i)
			}
		}()
	}
feed:
	for i := range n {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return errs
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
	ok := make([]bool, len(paths)) // decoded and stored: not every path is reached once ctx ends
	errs := parallel(ctx, len(paths), func(i int) error {
		img, _, err := capture.ReadImageRGB(paths[i], size, false)
		if err == nil {
			err = store.put(i, img)
		}
		ok[i] = err == nil
		return err
	})
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
