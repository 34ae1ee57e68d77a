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

// Defect kinds. Gross ones change the whole scene; small ones cover a few
// patches of a ViT's grid (2-4% of the image), the defects inspection is
// for, which image-level features dilute.
const (
	Normal    = "normal"
	Missing   = "missing"   // no washer on the belt
	Foreign   = "foreign"   // a brass screw lying beside the washer
	Recolored = "recolored" // a washer of the wrong material (red)

	// Nut is a semantic anomaly (a Fashion-MNIST-style other class): a
	// hexagonal nut of the same metal where a washer belongs.
	Nut = "nut"

	Crack = "crack" // a thin dark crack across the ring
	Chip  = "chip"  // a bite out of the ring's outer edge
	Stain = "stain" // a brown blot on the ring
	Hole  = "hole"  // a small hole through the ring
)

// Defects lists the gross defect kinds; SmallDefects the small ones.
var (
	Defects      = []string{Missing, Foreign, Recolored}
	SmallDefects = []string{Crack, Chip, Stain, Hole}
)

// Part draws one size x size RGB scene of the given kind; seed varies the
// position, lighting, defect placement and sensor noise.
func Part(size int, kind string, seed uint64) *image.NRGBA {
	img, _ := PartWithMask(size, kind, seed)
	return img
}

// PartWithMask draws Part and the defect's mask: 255 where the scene
// differs from a normal part by the defect, 0 elsewhere (all 0 for Normal).
func PartWithMask(size int, kind string, seed uint64) (*image.NRGBA, *image.Gray) {
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	img := image.NewNRGBA(image.Rect(0, 0, size, size))
	mask := image.NewGray(img.Rect)
	s := float64(size)
	light := 0.9 + 0.2*rng.Float64()
	cx, cy := s/2+s*0.04*(rng.Float64()-0.5), s/2+s*0.04*(rng.Float64()-0.5)
	outer, inner := s*0.30, s*0.13
	metal := [3]float64{170, 175, 185}
	if kind == Recolored {
		metal = [3]float64{200, 50, 40}
	}
	fx, fy := s*(0.15+0.1*rng.Float64()), s*(0.15+0.1*rng.Float64())
	// A small defect sits on the ring at a random angle.
	angle := 2 * math.Pi * rng.Float64()
	mid := (outer + inner) / 2
	dx, dy := math.Cos(angle), math.Sin(angle)
	crackLen, crackW := s*0.09, math.Max(0.8, s*0.008)
	for y := range size {
		for x := range size {
			px, py := float64(x)+0.5, float64(y)+0.5
			// Belt: dark grey with faint stripes.
			v := 60 + 8*math.Sin(float64(y)*0.7)
			c := [3]float64{v, v, v + 5}
			r := math.Hypot(px-cx, py-cy)
			onRing := kind != Missing && kind != Nut && r < outer && r > inner
			defect := false
			if kind == Nut { // a hexagon (circumradius outer) with a round hole
				ax, ay := math.Abs(px-cx), math.Abs(py-cy)
				hex := ay <= outer*math.Sqrt(3)/2 && math.Sqrt(3)*ax+ay <= math.Sqrt(3)*outer
				onRing = hex && r > inner
				defect = onRing || (r < outer && r > inner)
			}
			switch kind {
			case Missing: // where the washer should be
				defect = r < outer && r > inner
			case Recolored:
				defect = onRing
			case Chip: // a disc bitten out of the outer edge
				defect = onRing && math.Hypot(px-(cx+dx*outer), py-(cy+dy*outer)) < s*0.06
				onRing = onRing && !defect
			case Hole:
				defect = math.Hypot(px-(cx+dx*mid), py-(cy+dy*mid)) < s*0.035
				onRing = onRing && !defect
			}
			if onRing {
				shade := 1 - 0.25*(r-inner)/(outer-inner)
				c = [3]float64{metal[0] * shade, metal[1] * shade, metal[2] * shade}
			}
			switch kind {
			case Foreign:
				if math.Abs(px-fx) < s*0.12 && math.Abs(py-fy) < s*0.06 {
					c, defect = [3]float64{220, 180, 60}, true
				}
			case Crack: // radial, across the ring's middle
				along := (px-cx)*dx + (py-cy)*dy - mid
				across := -(px-cx)*dy + (py-cy)*dx
				if onRing && math.Abs(along) < crackLen/2 && math.Abs(across) < crackW {
					c, defect = [3]float64{35, 30, 30}, true
				}
			case Stain:
				if onRing && math.Hypot(px-(cx+dx*mid), py-(cy+dy*mid)) < s*0.045 {
					c, defect = [3]float64{110, 70, 35}, true
				}
			case Hole:
				if defect {
					c = [3]float64{15, 15, 15}
				}
			}
			var out [3]uint8
			for i := range c {
				out[i] = uint8(math.Max(0, math.Min(255, c[i]*light+rng.NormFloat64()*4)))
			}
			img.SetNRGBA(x, y, color.NRGBA{out[0], out[1], out[2], 255})
			if defect {
				mask.SetGray(x, y, color.Gray{255})
			}
		}
	}
	return img, mask
}

// WriteDataset writes an MVTec AD layout under dir: train/good with
// trainN normal parts, test/good with testN, and for each defect kind
// test/<kind> with testN parts and ground_truth/<kind>/<name>_mask.png.
func WriteDataset(dir string, size, trainN, testN int, kinds []string, seed uint64) error {
	return writeDataset(dir, trainN, testN, kinds, seed, func(kind string, seed uint64) (*image.NRGBA, *image.Gray) {
		return PartWithMask(size, kind, seed)
	})
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
