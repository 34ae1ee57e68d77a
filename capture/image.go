// Package capture turns cameras, streams, video files, image folders and
// single image files into RGB frames of the model's input size.
package capture

import (
	"bytes"
	"fmt"
	"image"
	_ "image/jpeg" // second-opinion decoders for ValidateImageFile
	_ "image/png"
	"os"
	"path/filepath"
	"strings"

	"gocv.io/x/gocv"
)

// ImageExtensions are the still-image file types read from folders.
var ImageExtensions = map[string]bool{".png": true, ".jpg": true, ".jpeg": true, ".bmp": true}

func lowerExt(name string) string { return strings.ToLower(filepath.Ext(name)) }

// ValidateImageFile catches the corrupt files OpenCV would decode into
// garbage without an error: libjpeg only warns on a truncated or bit-flipped
// JPEG, so JPEG and PNG files are decoded once by Go's own decoders as well.
func ValidateImageFile(path string, data []byte) error {
	ext := strings.ToLower(filepath.Ext(path))
	switch ext {
	case ".jpg", ".jpeg":
		if !bytes.HasSuffix(bytes.TrimRight(data, "\x00\r\n "), []byte{0xff, 0xd9}) {
			return fmt.Errorf("image %s: JPEG end marker missing (truncated file)", path)
		}
		fallthrough
	case ".png":
		if _, _, err := image.Decode(bytes.NewReader(data)); err != nil {
			return fmt.Errorf("image %s: corrupt %s: %w", path, strings.TrimPrefix(ext, "."), err)
		}
	}
	return nil
}

// ReadImageRGB reads an image file and returns it resized to size x size as
// packed RGB bytes (resized with INTER_LINEAR; INTER_AREA when shrinking by
// more than 2x, where linear interpolation aliases), and with keepView also
// as it is (see Config.KeepView).
func ReadImageRGB(path string, size int, keepView bool) ([]byte, *View, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("read image: %w", err)
	}
	if err := ValidateImageFile(path, data); err != nil {
		return nil, nil, err
	}
	img, err := gocv.IMDecode(data, gocv.IMReadColor)
	if err != nil {
		return nil, nil, fmt.Errorf("decode image %s: %w", path, err)
	}
	defer img.Close()
	if img.Empty() {
		return nil, nil, fmt.Errorf("decode image %s: not an image OpenCV can read", path)
	}
	p := newPreprocessor(Transform{Size: size, KeepView: keepView})
	defer p.Close()
	out := make([]byte, size*size*3)
	view, err := p.Apply(img, out)
	if err != nil {
		return nil, nil, fmt.Errorf("image %s: %w", path, err)
	}
	return out, view, nil
}
