// Package capture turns cameras, streams, video files, image folders and
// single image files into RGB frames of the model's input size.
package capture

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	_ "image/jpeg" // second-opinion decoders for ValidateImageFile
	_ "image/png"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"gocv.io/x/gocv"
)

// ImageExtensions are the still-image file types read from folders.
var ImageExtensions = map[string]bool{".png": true, ".jpg": true, ".jpeg": true, ".bmp": true}

func lowerExt(name string) string { return strings.ToLower(filepath.Ext(name)) }

// IsImageFile says whether a folder entry is an image to read: a regular
// file (or a link to one) with an image extension. A FIFO named .png hung
// score and fit past Ctrl-C: reading it waits for a writer forever.
func IsImageFile(path string, d fs.DirEntry) bool {
	if !ImageExtensions[lowerExt(path)] {
		return false
	}
	if d.Type()&fs.ModeSymlink != 0 {
		st, err := os.Stat(path)
		return err == nil && st.Mode().IsRegular()
	}
	return d.Type().IsRegular()
}

// ReadImageFile reads a file whole if it is a regular file: opened without
// blocking, so a FIFO or device given by name is refused, not waited on.
func ReadImageFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file (%s)", path, st.Mode().Type())
	}
	return io.ReadAll(f)
}

// MaxImagePixels bounds the width x height of image files before any
// decoder runs: a 70-byte BMP header claiming 40000x40000 made OpenCV throw
// a C++ exception that aborted the process, and a small PNG of 20000x20000
// cost gigabytes. 50 megapixels leaves room for 8K (33 MP) frames.
var MaxImagePixels = 50_000_000

// ValidateImageFile refuses what no decoder should be given: an image
// whose header claims more than MaxImagePixels (or no pixels), and the
// corrupt files OpenCV would decode into garbage without an error (a PNG
// is decoded once by Go's own decoder as well; a cut or corrupted JPEG is
// caught by the libjpeg check every JPEG decode runs, see checkJPEG, ten
// times cheaper than Go's decoder).
func ValidateImageFile(path string, data []byte) error {
	ext := strings.ToLower(filepath.Ext(path))
	var w, h int
	switch ext {
	case ".jpg", ".jpeg", ".png":
		cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
		if errors.Is(err, image.ErrFormat) {
			return fmt.Errorf("image %s: not a %s file: its first bytes are no JPEG or PNG signature", path, strings.TrimPrefix(ext, "."))
		}
		if err != nil {
			return fmt.Errorf("image %s: unreadable %s header: %w", path, strings.TrimPrefix(ext, "."), err)
		}
		w, h = cfg.Width, cfg.Height
	case ".bmp":
		var err error
		if w, h, err = bmpSize(data); err != nil {
			return fmt.Errorf("image %s: %w", path, err)
		}
	default:
		return nil
	}
	if w <= 0 || h <= 0 || int64(w)*int64(h) > int64(MaxImagePixels) {
		return fmt.Errorf("image %s: %dx%d pixels, over the limit of %d megapixels (--max-image-pixels)", path, w, h, MaxImagePixels/1_000_000)
	}
	if ext == ".png" {
		if _, _, err := image.Decode(bytes.NewReader(data)); err != nil {
			return fmt.Errorf("image %s: corrupt %s: %w", path, strings.TrimPrefix(ext, "."), err)
		}
	}
	return nil
}

// bmpSize reads a BMP's dimensions from its DIB header. By hand because
// golang.org/x/image/bmp refuses the compressed and 16-bit BMPs OpenCV
// reads: only the sizes are needed, and they sit at the same place in
// every header version but the old 12-byte OS/2 one.
func bmpSize(data []byte) (w, h int, err error) {
	if len(data) < 26 || data[0] != 'B' || data[1] != 'M' {
		return 0, 0, errors.New("not a BMP file (no BM header)")
	}
	if binary.LittleEndian.Uint32(data[14:]) == 12 { // BITMAPCOREHEADER: 16-bit sizes
		return int(binary.LittleEndian.Uint16(data[18:])), int(binary.LittleEndian.Uint16(data[20:])), nil
	}
	w = int(int32(binary.LittleEndian.Uint32(data[18:])))
	h = int(int32(binary.LittleEndian.Uint32(data[22:])))
	return w, max(h, -h), nil // a negative height is a top-down image
}

// ReadImageRGB reads an image file and returns it resized to size x size as
// packed RGB bytes (resized with INTER_LINEAR; INTER_AREA when shrinking by
// more than 2x, where linear interpolation aliases), and with keepView also
// as it is (see Config.KeepView).
func ReadImageRGB(path string, size int, keepView bool) ([]byte, *View, error) {
	rgb, _, view, err := ReadImageInput(path, Transform{Size: size, KeepView: keepView})
	return rgb, view, err
}

// ReadImageInput reads an image file as a detector's input, as t makes it
// of a camera's frame (see preprocessor.Input): cropped to t.ROI if set,
// then resized whole to t.Size square, or with t.Tiling cut into tiles
// each resized so; with its width and height after the crop, and with
// t.KeepView the image as it is.
func ReadImageInput(path string, t Transform) ([]byte, image.Point, *View, error) {
	data, err := ReadImageFile(path)
	if err != nil {
		return nil, image.Point{}, nil, fmt.Errorf("read image: %w", err)
	}
	if err := ValidateImageFile(path, data); err != nil {
		return nil, image.Point{}, nil, err
	}
	img := gocv.NewMat()
	defer img.Close()
	if err := decodeInto(data, &img); err != nil {
		return nil, image.Point{}, nil, fmt.Errorf("decode image %s: %w", path, err)
	}
	p := newPreprocessor(t)
	defer p.Close()
	out, view, err := p.Input(img)
	if err != nil {
		return nil, image.Point{}, nil, fmt.Errorf("image %s: %w", path, err)
	}
	return out, image.Pt(p.viewW, p.viewH), view, nil
}

// ImageDimensions is the width and height an image file's header gives
// (the file is checked in full when it is read: ReadImageInput).
func ImageDimensions(path string) (int, int, error) {
	data, err := ReadImageFile(path)
	if err != nil {
		return 0, 0, fmt.Errorf("read image: %w", err)
	}
	if lowerExt(path) == ".bmp" {
		return bmpSize(data)
	}
	cfg, _, err := image.DecodeConfig(bytes.NewReader(data))
	if err != nil {
		return 0, 0, fmt.Errorf("image %s: %w", path, err)
	}
	return cfg.Width, cfg.Height, nil
}

// EncodeImage encodes packed BGR pixels (a View's) as an image file's bytes
// of the type ext names (".png", ".jpg"): how collect and the daemon's NG
// images save frames, so both folders are alike.
func EncodeImage(bgr []byte, width, height int, ext string) ([]byte, error) {
	m, err := gocv.NewMatFromBytes(height, width, gocv.MatTypeCV8UC3, bgr)
	if err != nil {
		return nil, fmt.Errorf("encode a %dx%d image: %w", width, height, err)
	}
	defer m.Close()
	buf, err := gocv.IMEncode(gocv.FileExt(ext), m)
	if err != nil {
		return nil, fmt.Errorf("encode a %dx%d image as %s: %w", width, height, ext, err)
	}
	defer buf.Close()
	return append([]byte(nil), buf.GetBytes()...), nil
}

// FrameFileName names a saved frame: camera, capture time (UTC, ms) and
// frame number, so saved frames sort by time and never collide.
func FrameFileName(camera string, at time.Time, seq uint64, ext string) string {
	return fmt.Sprintf("%s-%s-%06d.%s", camera, at.UTC().Format("20060102T150405.000Z"), seq, ext)
}
