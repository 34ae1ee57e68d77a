package synth

import (
	"fmt"
	"image"
	"image/color"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
)

// Tray draws a high-resolution scene, a tray of washers on a belt, width x
// height pixels: rows of three washers high and as many across as fit,
// each with its own small offset and light. A small defect (Crack, Chip,
// Stain or Hole) is 8-20 pixels wide on one of the washers, whatever the
// frame's size: at a camera's native resolution it covers a patch or two
// of a ViT's grid, and a resize of the whole frame to the ViT's input
// leaves a fraction of a patch. The mask is as PartWithMask's.
func Tray(width, height int, kind string, seed uint64) (*image.NRGBA, *image.Gray) {
	rng := rand.New(rand.NewPCG(seed, 0x7a4))
	img := image.NewNRGBA(image.Rect(0, 0, width, height))
	mask := image.NewGray(img.Rect)
	cell := float64(height) / 3
	cols, rows := max(1, int(float64(width)/cell)), 3
	marginX := (float64(width) - float64(cols)*cell) / 2
	type washer struct{ cx, cy, outer, inner, light float64 }
	washers := make([]washer, cols*rows)
	for i := range washers {
		c, r := i%cols, i/cols
		washers[i] = washer{
			cx:    marginX + (float64(c)+0.5+0.08*(rng.Float64()-0.5))*cell,
			cy:    (float64(r) + 0.5 + 0.08*(rng.Float64()-0.5)) * cell,
			outer: cell * (0.35 + 0.02*rng.Float64()), inner: cell * (0.15 + 0.02*rng.Float64()),
			light: 0.93 + 0.14*rng.Float64(),
		}
	}
	light := 0.9 + 0.2*rng.Float64()
	// The defect: on one washer, at a random angle, 8-20 px wide.
	w := washers[rng.IntN(len(washers))]
	angle := 2 * math.Pi * rng.Float64()
	dx, dy := math.Cos(angle), math.Sin(angle)
	mid := (w.outer + w.inner) / 2
	width8to20 := 8 + 12*rng.Float64()
	for y := range height {
		for x := range width {
			px, py := float64(x)+0.5, float64(y)+0.5
			v := 60 + 8*math.Sin(py*0.7) + 4*math.Sin(px*0.05+py*0.03)
			c := [3]float64{v, v, v + 5}
			col := min(cols-1, max(0, int((px-marginX)/cell)))
			row := min(rows-1, int(py/cell))
			h := washers[row*cols+col]
			r := math.Hypot(px-h.cx, py-h.cy)
			onRing := r < h.outer && r > h.inner
			defect := false
			if h == w {
				switch kind {
				case Chip: // a disc bitten out of the outer edge
					defect = onRing && math.Hypot(px-(w.cx+dx*w.outer), py-(w.cy+dy*w.outer)) < width8to20/2
					onRing = onRing && !defect
				case Hole:
					defect = math.Hypot(px-(w.cx+dx*mid), py-(w.cy+dy*mid)) < width8to20/2
					onRing = onRing && !defect
				}
			}
			if onRing {
				shade := h.light * (1 - 0.25*(r-h.inner)/(h.outer-h.inner))
				c = [3]float64{170 * shade, 175 * shade, 185 * shade}
			}
			if h == w {
				switch kind {
				case Crack: // radial, across the ring's middle, 8-20 px long
					along := (px-w.cx)*dx + (py-w.cy)*dy - mid
					across := -(px-w.cx)*dy + (py-w.cy)*dx
					if onRing && math.Abs(along) < width8to20/2 && math.Abs(across) < 1.5 {
						c, defect = [3]float64{35, 30, 30}, true
					}
				case Stain:
					if onRing && math.Hypot(px-(w.cx+dx*mid), py-(w.cy+dy*mid)) < width8to20/2 {
						c, defect = [3]float64{110, 70, 35}, true
					}
				case Hole:
					if defect {
						c = [3]float64{15, 15, 15}
					}
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

// WriteTrayDataset is WriteDataset with Tray scenes of width x height.
func WriteTrayDataset(dir string, width, height, trainN, testN int, kinds []string, seed uint64) error {
	return writeDataset(dir, trainN, testN, kinds, seed, func(kind string, seed uint64) (*image.NRGBA, *image.Gray) {
		return Tray(width, height, kind, seed)
	})
}

// WriteTrays writes n Tray scenes of kind into dir as kind-0000.png, ...
// and returns their paths.
func WriteTrays(dir string, width, height int, kind string, n int, seed uint64) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	paths := make([]string, n)
	for i := range n {
		paths[i] = filepath.Join(dir, fmt.Sprintf("%s-%04d.png", kind, i))
		img, _ := Tray(width, height, kind, seed*1_000_003+uint64(i))
		if err := writePNG(paths[i], img); err != nil {
			return nil, err
		}
	}
	return paths, nil
}

// writeDataset writes an MVTec AD layout of scenes draw makes (see
// WriteDataset).
func writeDataset(dir string, trainN, testN int, kinds []string, seed uint64, draw func(kind string, seed uint64) (*image.NRGBA, *image.Gray)) error {
	for _, set := range []struct {
		folder string
		n      int
		seed   uint64
	}{{filepath.Join(dir, "train", "good"), trainN, seed}, {filepath.Join(dir, "test", "good"), testN, seed + 1}} {
		if err := os.MkdirAll(set.folder, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", set.folder, err)
		}
		for i := range set.n {
			img, _ := draw(Normal, set.seed*1_000_003+uint64(i))
			if err := writePNG(filepath.Join(set.folder, fmt.Sprintf("%s-%04d.png", Normal, i)), img); err != nil {
				return err
			}
		}
	}
	for k, kind := range kinds {
		imgDir, maskDir := filepath.Join(dir, "test", kind), filepath.Join(dir, "ground_truth", kind)
		for _, d := range []string{imgDir, maskDir} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return fmt.Errorf("create %s: %w", d, err)
			}
		}
		for i := range testN {
			img, mask := draw(kind, (seed+2+uint64(k))*1_000_003+uint64(i))
			name := fmt.Sprintf("%03d", i)
			if err := writePNG(filepath.Join(imgDir, name+".png"), img); err != nil {
				return err
			}
			if err := writePNG(filepath.Join(maskDir, name+"_mask.png"), mask); err != nil {
				return err
			}
		}
	}
	return nil
}
