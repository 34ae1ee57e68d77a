// Package synth draws a synthetic inspection scene, a washer on a conveyor,
// for demos and tests that need "normal" and visibly defective parts without
// any downloaded data.
package synth

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
)

// Defect kinds. A random ViT teacher sees gross defects (these) but hardly
// fine ones such as thin cracks, so the demo uses gross ones.
const (
	Normal    = "normal"
	Missing   = "missing"   // no washer on the belt
	Foreign   = "foreign"   // a brass screw lying beside the washer
	Recolored = "recolored" // a washer of the wrong material (red)
)

// Defects lists the defect kinds Part can draw.
var Defects = []string{Missing, Foreign, Recolored}

// Part draws one size x size RGB scene of the given kind; seed varies the
// position, lighting and sensor noise.
func Part(size int, kind string, seed uint64) *image.NRGBA {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	img := image.NewNRGBA(image.Rect(0, 0, size, size))
	s := float64(size)
	light := 0.9 + 0.2*rng.Float64()
	cx, cy := s/2+s*0.04*(rng.Float64()-0.5), s/2+s*0.04*(rng.Float64()-0.5)
	outer, inner := s*0.30, s*0.13
	metal := [3]float64{170, 175, 185}
	if kind == Recolored {
		metal = [3]float64{200, 50, 40}
	}
	fx, fy := s*(0.15+0.1*rng.Float64()), s*(0.15+0.1*rng.Float64())
	for y := range size {
		for x := range size {
			// Belt: dark grey with faint stripes.
			v := 60 + 8*math.Sin(float64(y)*0.7)
			c := [3]float64{v, v, v + 5}
			r := math.Hypot(float64(x)+0.5-cx, float64(y)+0.5-cy)
			if kind != Missing && r < outer && r > inner {
				shade := 1 - 0.25*(r-inner)/(outer-inner)
				c = [3]float64{metal[0] * shade, metal[1] * shade, metal[2] * shade}
			}
			if kind == Foreign && math.Abs(float64(x)-fx) < s*0.12 && math.Abs(float64(y)-fy) < s*0.06 {
				c = [3]float64{220, 180, 60}
			}
			var px [3]uint8
			for i := range c {
				px[i] = uint8(math.Max(0, math.Min(255, c[i]*light+rng.NormFloat64()*4)))
			}
			img.SetNRGBA(x, y, color.NRGBA{px[0], px[1], px[2], 255})
		}
	}
	return img
}

// WriteParts writes n scenes of kind into dir as kind-0000.png, ... and
// returns their paths.
func WriteParts(dir string, size int, kind string, n int, seed uint64) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	paths := make([]string, n)
	for i := range n {
		paths[i] = filepath.Join(dir, fmt.Sprintf("%s-%04d.png", kind, i))
		if err := writePNG(paths[i], Part(size, kind, seed*1_000_003+uint64(i))); err != nil {
			return nil, err
		}
	}
	return paths, nil
}

func writePNG(path string, img image.Image) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return f.Close()
}
