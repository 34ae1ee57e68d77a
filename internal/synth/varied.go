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

// VariedPart draws a scene with the variety of a real line, where Part's
// washers differ only by a little light and position: each seed picks an
// exposure (gain and gamma) and sensor noise, one of three background
// textures (a striped belt, brushed metal, a perforated plate) with its own
// scale and angle, a part (a ring or a plate with a hole) of its own size,
// aspect and rotation, and a crop of the scene of its own size and aspect,
// resized to size x size (so parts also come stretched, as frames cropped
// by hand and resized to a model's input do). Kinds are Normal, Missing,
// Foreign, Crack, Stain and Hole; the mask is as PartWithMask's.
func VariedPart(size int, kind string, seed uint64) (*image.NRGBA, *image.Gray) {
	rng := rand.New(rand.NewPCG(seed, 0x7a71ed))
	img := image.NewNRGBA(image.Rect(0, 0, size, size))
	mask := image.NewGray(img.Rect)
	// Exposure: under- to over-exposed, with a camera's own gamma.
	gain := 0.55 + 0.95*rng.Float64()
	gamma := 0.8 + 0.45*rng.Float64()
	noise := 2 + 6*rng.Float64()
	tint := [3]float64{1 + 0.08*(rng.Float64()-0.5), 1, 1 + 0.08*(rng.Float64()-0.5)}
	// The crop: a window of the unit scene, 0.55-1.0 wide and 0.55-1.0
	// high independently, around the part.
	cw, ch := 0.55+0.45*rng.Float64(), 0.55+0.45*rng.Float64()
	cx0, cy0 := 0.5-cw/2+0.08*(rng.Float64()-0.5), 0.5-ch/2+0.08*(rng.Float64()-0.5)
	// Background texture.
	texture := rng.IntN(3)
	freq := 20 + 40*rng.Float64()
	texAngle := math.Pi * rng.Float64()
	base := 40 + 50*rng.Float64()
	phase := [4]float64{}
	for i := range phase {
		phase[i] = 2 * math.Pi * rng.Float64()
	}
	// The part: a ring (elliptical) or a rectangular plate with a hole.
	plate := rng.IntN(2) == 1
	pcx, pcy := 0.5+0.05*(rng.Float64()-0.5), 0.5+0.05*(rng.Float64()-0.5)
	radius := 0.18 + 0.12*rng.Float64()
	aspect := 0.7 + 0.6*rng.Float64()
	rot := math.Pi * rng.Float64()
	innerShare := 0.35 + 0.15*rng.Float64()
	grey := 140 + 60*rng.Float64()
	metal := [3]float64{grey, grey * (1 + 0.04*rng.Float64()), grey * (1 + 0.08*rng.Float64())}
	// Defects and the foreign object, in the part's own frame (u, v).
	defAngle := 2 * math.Pi * rng.Float64()
	fx, fy := 0.15+0.15*rng.Float64(), 0.15+0.15*rng.Float64()
	cosR, sinR := math.Cos(rot), math.Sin(rot)
	for y := range size {
		for x := range size {
			sx := cx0 + (float64(x)+0.5)/float64(size)*cw
			sy := cy0 + (float64(y)+0.5)/float64(size)*ch
			// Background.
			var v float64
			along := sx*math.Cos(texAngle) + sy*math.Sin(texAngle)
			switch texture {
			case 0: // belt stripes
				v = base + 10*math.Sin(along*freq+phase[0])
			case 1: // brushed metal: fine streaks along one direction
				across := -sx*math.Sin(texAngle) + sy*math.Cos(texAngle)
				v = base + 20 + 7*math.Sin(across*freq*7+phase[1]) + 5*math.Sin(across*freq*2.3+phase[2])
			default: // perforated plate: a grid of dark holes
				gx, gy := math.Mod(sx*freq/3+phase[3], 1), math.Mod(sy*freq/3+phase[3], 1)
				v = base + 15
				if math.Hypot(gx-0.5, gy-0.5) < 0.22 {
					v = base * 0.4
				}
			}
			c := [3]float64{v, v, v * 1.05}
			// The part's frame: rotated and stretched to its aspect.
			dx, dy := sx-pcx, sy-pcy
			u := (dx*cosR + dy*sinR) / aspect
			w := (-dx*sinR + dy*cosR) * aspect
			r := math.Hypot(u, w)
			inner := radius * innerShare
			var onPart bool
			if plate {
				onPart = math.Abs(u) < radius && math.Abs(w) < radius*0.7 && r > inner
			} else {
				onPart = r < radius && r > inner
			}
			mid := (radius + inner) / 2
			ddx, ddy := math.Cos(defAngle), math.Sin(defAngle)
			defect := false
			switch kind {
			case Missing:
				defect, onPart = onPart, false
			case Hole:
				if onPart && math.Hypot(u-ddx*mid, w-ddy*mid) < 0.035 {
					defect, onPart = true, false
				}
			}
			if onPart {
				shade := 1 - 0.25*(r-inner)/(radius-inner)
				if plate {
					shade = 0.9 + 0.1*math.Sin(u*40)
				}
				c = [3]float64{metal[0] * shade, metal[1] * shade, metal[2] * shade}
				switch kind {
				case Crack:
					a := u*ddx + w*ddy - mid
					b := -u*ddy + w*ddx
					if math.Abs(a) < 0.045 && math.Abs(b) < 0.006 {
						c, defect = [3]float64{35, 30, 30}, true
					}
				case Stain:
					if math.Hypot(u-ddx*mid, w-ddy*mid) < 0.045 {
						c, defect = [3]float64{110, 70, 35}, true
					}
				}
			}
			if kind == Hole && defect {
				c = [3]float64{15, 15, 15}
			}
			if kind == Foreign && math.Abs(sx-fx) < 0.1 && math.Abs(sy-fy) < 0.05 {
				c, defect = [3]float64{220, 180, 60}, true
			}
			var out [3]uint8
			for i := range c {
				lin := math.Max(0, c[i]*tint[i]*gain/255)
				out[i] = uint8(math.Max(0, math.Min(255, 255*math.Pow(lin, gamma)+rng.NormFloat64()*noise)))
			}
			img.SetNRGBA(x, y, color.NRGBA{out[0], out[1], out[2], 255})
			if defect {
				mask.SetGray(x, y, color.Gray{255})
			}
		}
	}
	return img, mask
}

// VariedKinds are the kinds VariedPart draws besides Normal.
var VariedKinds = []string{Missing, Foreign, Crack, Stain, Hole}

// WriteVariedParts writes n VariedPart scenes of kind into dir as
// kind-0000.png, ... and returns their paths.
func WriteVariedParts(dir string, size int, kind string, n int, seed uint64) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	paths := make([]string, n)
	for i := range n {
		paths[i] = filepath.Join(dir, fmt.Sprintf("%s-%04d.png", kind, i))
		img, _ := VariedPart(size, kind, seed*1_000_003+uint64(i))
		if err := writePNG(paths[i], img); err != nil {
			return nil, err
		}
	}
	return paths, nil
}
