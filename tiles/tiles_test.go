package tiles

import (
	"errors"
	"image"
	"math"
	"math/rand/v2"
	"testing"
)

// TestLayoutRules checks every layout of frames from one tile to three and
// a half wide against the rules, for several overlaps: the first tile at
// 0, the last at the far edge, every overlap at least ceil(Overlap x
// Size), and no layout with one tile fewer along an axis able to keep that.
func TestLayoutRules(t *testing.T) {
	for _, tl := range []Tiling{{128, 0}, {128, 0.125}, {100, 0.3}, {64, 0.5}, {37, 0.89}} {
		need := int(math.Ceil(tl.Overlap * float64(tl.Size)))
		for n := tl.Size; n <= tl.Size*7/2; n++ {
			l, err := tl.Layout(n, tl.Size)
			if err != nil {
				t.Fatal(err)
			}
			if l.Rows != 1 || len(l.Tiles) != l.Cols {
				t.Fatalf("%+v at %d: %d rows, %d tiles, %d cols", tl, n, l.Rows, len(l.Tiles), l.Cols)
			}
			xs := l.xs
			if xs[0] != 0 || xs[len(xs)-1] != n-tl.Size {
				t.Fatalf("%+v at %d: origins %v", tl, n, xs)
			}
			for i := 1; i < len(xs); i++ {
				if ov := xs[i-1] + tl.Size - xs[i]; ov < need || xs[i] <= xs[i-1] {
					t.Fatalf("%+v at %d: overlap %d < %d (origins %v)", tl, n, ov, need, xs)
				}
			}
			// One tile fewer: the widest even spread leaves too little overlap.
			if k := len(xs) - 1; k >= 2 {
				if stride := float64(n-tl.Size) / float64(k-1); float64(tl.Size)-stride >= float64(need) {
					t.Fatalf("%+v at %d: %d tiles where %d would do", tl, n, len(xs), k)
				}
			} else if k == 1 && n == tl.Size {
				t.Fatalf("%+v at %d: two tiles for a frame of one", tl, n)
			}
		}
	}
}

func TestRefusals(t *testing.T) {
	if _, err := (Tiling{128, 0.1}).Layout(127, 300); !errors.Is(err, ErrFrameTooSmall) {
		t.Fatalf("a frame narrower than a tile: %v", err)
	}
	for _, tl := range []Tiling{{0, 0.1}, {128, -0.1}, {128, 0.9}, {128, math.NaN()}} {
		if tl.Check() == nil {
			t.Fatalf("%+v accepted", tl)
		}
	}
}

// TestCoresPartitionTheFrame: every pixel centre of odd-sized frames lies
// in exactly one tile's core, and inside that tile.
func TestCoresPartitionTheFrame(t *testing.T) {
	for _, sz := range [][2]int{{389, 261}, {128, 128}, {1000, 700}} {
		l, err := Tiling{128, 0.125}.Layout(sz[0], sz[1])
		if err != nil {
			t.Fatal(err)
		}
		for y := 0; y < sz[1]; y += 3 {
			for x := 0; x < sz[0]; x += 3 {
				px, py := float64(x)+0.5, float64(y)+0.5
				owners := 0
				for i, r := range l.Tiles {
					x0, y0, x1, y1 := l.Core(i)
					if px >= x0 && px < x1 && py >= y0 && py < y1 {
						owners++
						if !image.Pt(x, y).In(r) {
							t.Fatalf("%v: pixel %d,%d in the core of tile %d (%v) but not in it", sz, x, y, i, r)
						}
					}
				}
				if owners != 1 {
					t.Fatalf("%v: pixel %d,%d owned by %d tiles", sz, x, y, owners)
				}
			}
		}
	}
}

// render is the brute force: every pixel of the frame gets, from every
// tile covering it (or only from the one owning it), the value of the
// patch it lies in, merged by maximum.
func render(l Layout, values [][]float32, grid int, coreOnly bool) []float32 {
	out := make([]float32, l.Width*l.Height)
	for i := range out {
		out[i] = float32(math.Inf(-1))
	}
	for i, r := range l.Tiles {
		x0, y0, x1, y1 := l.Core(i)
		cell := r.Dx() / grid
		for y := r.Min.Y; y < r.Max.Y; y++ {
			for x := r.Min.X; x < r.Max.X; x++ {
				px, py := float64(x)+0.5, float64(y)+0.5
				if coreOnly && !(px >= x0 && px < x1 && py >= y0 && py < y1) {
					continue
				}
				v := values[i][((y-r.Min.Y)/cell)*grid+(x-r.Min.X)/cell]
				out[y*l.Width+x] = max(out[y*l.Width+x], v)
			}
		}
	}
	return out
}

// TestStitchAgainstBruteForce: on frames whose cells are whole pixels
// (tiles of 128 with 16 patches of 8 px), each stitched cell is the
// brute-force frame's value at the cell's centre pixel.
func TestStitchAgainstBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const grid = 16
	for _, sz := range [][2]int{{384, 256}, {128, 128}, {520, 136}} {
		for _, overlap := range []float64{0, 0.125, 0.3} {
			l, err := Tiling{128, overlap}.Layout(sz[0], sz[1])
			if err != nil {
				t.Fatal(err)
			}
			values := make([][]float32, len(l.Tiles))
			for i := range values {
				values[i] = make([]float32, grid*grid)
				for j := range values[i] {
					values[i][j] = rng.Float32()
				}
			}
			for _, core := range []bool{false, true} {
				got, cols, rows, err := l.Stitch(values, grid, core)
				if err != nil {
					t.Fatal(err)
				}
				if cols != sz[0]/8 || rows != sz[1]/8 {
					t.Fatalf("%v: map %dx%d", sz, cols, rows)
				}
				want := render(l, values, grid, core)
				for r := range rows {
					for c := range cols {
						if g, w := got[r*cols+c], want[(r*8+4)*sz[0]+c*8+4]; g != w {
							t.Fatalf("%v overlap %g core %v: cell %d,%d is %g, brute force %g", sz, overlap, core, c, r, g, w)
						}
					}
				}
			}
		}
	}
}

// TestCoreMaskMatchesCores: a patch counts exactly when its centre is in
// the tile's core, and every tile counts some patches.
func TestCoreMaskMatchesCores(t *testing.T) {
	l, err := Tiling{128, 0.125}.Layout(389, 261)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range l.Tiles {
		mask := l.CoreMask(i, 16)
		x0, y0, x1, y1 := l.Core(i)
		n := 0
		for p, in := range mask {
			cx, cy := float64(r.Min.X)+float64(p%16)*8+4, float64(r.Min.Y)+float64(p/16)*8+4
			if in != (cx >= x0 && cx < x1 && cy >= y0 && cy < y1) {
				t.Fatalf("tile %d patch %d: mask %v", i, p, in)
			}
			if in {
				n++
			}
		}
		if n == 0 {
			t.Fatalf("tile %d counts no patch", i)
		}
	}
}
