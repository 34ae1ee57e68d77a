package capture

import (
	"errors"
	"math/rand/v2"
	"testing"

	"gocv.io/x/gocv"
)

// texturedJPEG encodes a 320x240 scene with edges and noise (a flat image's
// scan is a few bytes, too little to damage in a telling way).
func texturedJPEG(t testing.TB, params ...int) []byte {
	t.Helper()
	img := gocv.NewMatWithSize(240, 320, gocv.MatTypeCV8UC3)
	defer img.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	pix, err := img.DataPtrUint8()
	if err != nil {
		t.Fatal(err)
	}
	for y := range 240 {
		for x := range 320 {
			for c := range 3 {
				v := (x*(c+1) + y*(3-c)) % 256
				if (x/40+y/30)%2 == 0 {
					v = 255 - v
				}
				pix[(y*320+x)*3+c] = uint8(min(255, v+rng.IntN(24)))
			}
		}
	}
	buf, err := gocv.IMEncodeWithParams(gocv.JPEGFileExt, img, params)
	if err != nil {
		t.Fatal(err)
	}
	defer buf.Close()
	return append([]byte{}, buf.GetBytes()...)
}

// scanStart is the offset after the first start-of-scan segment.
func scanStart(t testing.TB, data []byte) int {
	for i := 2; i+4 < len(data); {
		if data[i] != 0xFF {
			t.Fatalf("no marker at %d", i)
		}
		n := int(data[i+2])<<8 | int(data[i+3])
		if data[i+1] == 0xDA {
			return i + 2 + n
		}
		i += 2 + n
	}
	t.Fatal("no start of scan")
	return 0
}

// What OpenCV decodes silently must be refused here: JPEGs cut at 50% and
// 20%, a scan overwritten with noise or zeros, a lost restart interval. The
// same images whole, in baseline, progressive and restart-marker forms, pass.
func TestDamagedJPEGsAreRefused(t *testing.T) {
	forms := map[string][]int{
		"baseline":    {gocv.IMWriteJpegQuality, 90},
		"progressive": {gocv.IMWriteJpegQuality, 90, gocv.IMWriteJpegProgressive, 1},
		"restarts":    {gocv.IMWriteJpegQuality, 90, gocv.IMWriteJpegRstInterval, 4},
	}
	for name, params := range forms {
		good := texturedJPEG(t, params...)
		if err := checkJPEG(good); err != nil {
			t.Errorf("%s, whole: %v", name, err)
		}
		if err := checkJPEG(append(append([]byte{}, good...), "trailer after EOI"...)); err != nil {
			t.Errorf("%s, with a trailer after the end marker: %v", name, err)
		}
		scan := scanStart(t, good)
		mid := scan + (len(good)-scan)/2
		damaged := map[string][]byte{
			"cut at 50%":                good[:len(good)/2],
			"cut at 20%":                good[:len(good)/5],
			"cut before the end marker": good[:len(good)-2],
		}
		noise := append([]byte{}, good...)
		rng := rand.New(rand.NewPCG(3, 4))
		for i := mid; i < mid+64; i++ {
			noise[i] = byte(rng.IntN(255)) // never 0xFF: no fake markers
		}
		damaged["64 bytes of noise mid-scan"] = noise
		zeros := append([]byte{}, good...)
		clear(zeros[mid : mid+256])
		damaged["256 zero bytes mid-scan"] = zeros
		dropped := append(append([]byte{}, good[:mid]...), good[mid+300:]...)
		damaged["300 bytes lost mid-scan"] = dropped
		for what, data := range damaged {
			err := checkJPEG(data)
			if !errors.Is(err, ErrDamaged) {
				t.Errorf("%s, %s: %v, want ErrDamaged", name, what, err)
				continue
			}
			// And the decode path refuses it.
			dst := gocv.NewMat()
			if err := decodeInto(data, &dst); !errors.Is(err, ErrDamaged) {
				t.Errorf("%s, %s: decodeInto gave %v", name, what, err)
			}
			dst.Close()
		}
	}
}

// BenchmarkJPEGCheck sets the check's cost beside a full OpenCV decode of
// the same frame (the check runs before every JPEG decode).
func BenchmarkJPEGCheck(b *testing.B) {
	data := texturedJPEG(b, gocv.IMWriteJpegQuality, 90)
	b.Run("check", func(b *testing.B) {
		for b.Loop() {
			if err := checkJPEG(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("opencv-decode", func(b *testing.B) {
		for b.Loop() {
			m, err := gocv.IMDecode(data, gocv.IMReadColor)
			if err != nil {
				b.Fatal(err)
			}
			m.Close()
		}
	})
}
