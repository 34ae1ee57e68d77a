package capture

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"testing"

	"gocv.io/x/gocv"
)

// FuzzImageFile: whatever bytes an image file holds, the header check and
// then OpenCV's decoder (only for what the check lets through, as every
// command does) end in an error or an image: no panic, and no C++
// exception (a 70-byte BMP header aborted the process).
func FuzzImageFile(f *testing.F) {
	defer func(old int) { MaxImagePixels = old }(MaxImagePixels)
	MaxImagePixels = 4_000_000 // keeps each execution's memory small
	small := image.NewNRGBA(image.Rect(0, 0, 8, 6))
	for i := range small.Pix {
		small.Pix[i] = byte(i * 37)
	}
	var pngBuf bytes.Buffer
	png.Encode(&pngBuf, small)
	jpg := writeJPEG(f, "", color.RGBA{10, 200, 30, 255})
	m, _ := gocv.ImageToMatRGB(small)
	bmp, _ := gocv.IMEncode(".bmp", m)
	m.Close()
	f.Add(byte(0), jpg)
	f.Add(byte(0), append(append([]byte{}, jpg...), "trailer"...))
	f.Add(byte(1), pngBuf.Bytes())
	f.Add(byte(2), append([]byte{}, bmp.GetBytes()...))
	f.Add(byte(2), bmpHeader(40000, 40000))
	f.Add(byte(2), bmpHeader(3, -2))
	bmp.Close()
	exts := []string{"x.jpg", "x.png", "x.bmp"}
	f.Fuzz(func(t *testing.T, kind byte, data []byte) {
		if ValidateImageFile(exts[int(kind)%len(exts)], data) != nil {
			return
		}
		dst := gocv.NewMat()
		defer dst.Close()
		decodeInto(data, &dst)
	})
}
