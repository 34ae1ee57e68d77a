// Package tiles is the geometry of tiled inspection: a frame (after the
// camera's crop and rotation) cut into a grid of square tiles at native
// resolution, which tiles' patches count for the frame, and the tiles'
// patch maps stitched back into one map in frame coordinates. It knows no
// images, only rectangles and numbers, so the detector, capture and fit
// share it without OpenCV.
package tiles

import (
	"errors"
	"fmt"
	"image"
	"math"
)

// DefaultOverlap is the share of a tile its neighbours overlap by default,
// for tiles of grid x grid patches: two patches (at least an eighth). Each
// tile's outer ring of patches, whose neighbourhood the tile's edge cuts
// off and which scores worst on normal frames, then lies in a neighbour's
// core, and so does every point of the frame that the ring covers: one
// patch of overlap left the rings of both neighbours straddling the
// boundary between their cores, where the stitched map read them.
func DefaultOverlap(grid int) float64 {
	return max(0.125, 2/float64(max(1, grid)))
}

// MaxOverlap bounds the overlap (exclusive): at 0.9 a frame of twice a
// tile's width is already 11 tiles wide.
const MaxOverlap = 0.9

// Tiling is how a tiled bundle cuts frames: square tiles of Size frame
// pixels, neighbours overlapping by at least Overlap of a tile.
type Tiling struct {
	Size    int     `json:"tile"`
	Overlap float64 `json:"overlap"`
}

// Check says whether the tiling makes sense at all (any frame).
func (t Tiling) Check() error {
	switch {
	case t.Size < 1:
		return fmt.Errorf("tile size %d: must be at least 1 pixel", t.Size)
	case !(t.Overlap >= 0 && t.Overlap < MaxOverlap): // NaN fails too
		return fmt.Errorf("tile overlap %g: must be in [0, %g)", t.Overlap, MaxOverlap)
	}
	return nil
}

// ErrFrameTooSmall is returned for a frame smaller than one tile.
var ErrFrameTooSmall = errors.New("frame smaller than one tile")

// Fits says whether a width x height frame holds at least one tile.
func (t Tiling) Fits(width, height int) error {
	if width < t.Size || height < t.Size {
		return fmt.Errorf("%w: the frame is %dx%d pixels, a tile %dx%d (after the camera's crop and rotation; fit the bundle with a smaller --tile, or crop less)",
			ErrFrameTooSmall, width, height, t.Size, t.Size)
	}
	return nil
}

// Layout is the tiles of one frame: their rectangles in frame pixels, row
// by row, and the grid's shape.
type Layout struct {
	Width, Height int
	Cols, Rows    int
	Tiles         []image.Rectangle
	xs, ys        []int // tile origins along each axis
}

// Layout cuts a width x height frame: along each axis as few tiles as keep
// every overlap at least Overlap x Size (rounded up to a pixel), the first
// at 0, the last aligned to the frame's far edge, the ones between spread
// evenly.
func (t Tiling) Layout(width, height int) (Layout, error) {
	if err := t.Check(); err != nil {
		return Layout{}, err
	}
	if err := t.Fits(width, height); err != nil {
		return Layout{}, err
	}
	l := Layout{Width: width, Height: height, xs: t.origins(width), ys: t.origins(height)}
	l.Cols, l.Rows = len(l.xs), len(l.ys)
	for _, y := range l.ys {
		for _, x := range l.xs {
			l.Tiles = append(l.Tiles, image.Rect(x, y, x+t.Size, y+t.Size))
		}
	}
	return l, nil
}

// Count is the number of tiles of a width x height frame (0 when it holds
// none).
func (t Tiling) Count(width, height int) int {
	l, err := t.Layout(width, height)
	if err != nil {
		return 0
	}
	return len(l.Tiles)
}

// origins places tiles along an axis of length n >= Size.
func (t Tiling) origins(n int) []int {
	if n == t.Size {
		return []int{0}
	}
	overlap := int(math.Ceil(t.Overlap * float64(t.Size)))
	stride := max(1, t.Size-overlap)
	count := (n-t.Size+stride-1)/stride + 1
	out := make([]int, count)
	for i := range out {
		out[i] = i * (n - t.Size) / (count - 1)
	}
	return out
}

// cores are, along one axis, the intervals [lo, hi) each tile owns: from
// the middle of its overlap with the previous tile to the middle of its
// overlap with the next (the frame's edges at either end). They partition
// the axis, each point owned by the tile in which it lies farthest from
// an edge.
func cores(origins []int, size, n int) [][2]float64 {
	out := make([][2]float64, len(origins))
	for i, x := range origins {
		lo, hi := 0.0, float64(n)
		if i > 0 {
			lo = float64(origins[i-1]+size+x) / 2
		}
		if i < len(origins)-1 {
			hi = float64(x+size+origins[i+1]) / 2
		}
		out[i] = [2]float64{lo, hi}
	}
	return out
}

// Core is the rectangle of frame pixels tile i owns (see cores), as
// float bounds [x0, x1) x [y0, y1).
func (l Layout) Core(i int) (x0, y0, x1, y1 float64) {
	size := l.Tiles[0].Dx()
	cx, cy := cores(l.xs, size, l.Width), cores(l.ys, size, l.Height)
	c, r := i%l.Cols, i/l.Cols
	return cx[c][0], cy[r][0], cx[c][1], cy[r][1]
}

// CoreMask says, for each patch of tile i on a grid x grid patch grid (row
// by row), whether its centre lies in the tile's core: the patches that
// count for the frame when edges are left to the neighbours that cover
// them.
func (l Layout) CoreMask(i, grid int) []bool {
	x0, y0, x1, y1 := l.Core(i)
	t := l.Tiles[i]
	cell := float64(t.Dx()) / float64(grid)
	mask := make([]bool, grid*grid)
	for r := range grid {
		cy := float64(t.Min.Y) + (float64(r)+0.5)*cell
		for c := range grid {
			cx := float64(t.Min.X) + (float64(c)+0.5)*cell
			mask[r*grid+c] = cx >= x0 && cx < x1 && cy >= y0 && cy < y1
		}
	}
	return mask
}

// MapShape is the stitched map's grid for tiles of grid x grid patches:
// about one cell per patch (frame pixels per patch: Size/grid), at least
// one cell a side.
func (l Layout) MapShape(grid int) (cols, rows int) {
	cell := float64(l.Tiles[0].Dx()) / float64(grid)
	return max(1, int(math.Round(float64(l.Width)/cell))), max(1, int(math.Round(float64(l.Height)/cell)))
}

// Stitch makes one map in frame coordinates from the tiles' patch values
// (values[i] is tile i's grid x grid, row by row): each cell, stretched
// over the frame (MapShape), takes the value of the patch under its centre
// in every tile that covers it, merged by maximum; with coreOnly only the
// tile whose core holds the cell's centre is read.
func (l Layout) Stitch(values [][]float32, grid int, coreOnly bool) (out []float32, cols, rows int, err error) {
	if len(values) != len(l.Tiles) {
		return nil, 0, 0, fmt.Errorf("stitch: %d tiles' values for a layout of %d tiles", len(values), len(l.Tiles))
	}
	for i, v := range values {
		if len(v) != grid*grid {
			return nil, 0, 0, fmt.Errorf("stitch: tile %d has %d values, want %d", i, len(v), grid*grid)
		}
	}
	size := l.Tiles[0].Dx()
	cols, rows = l.MapShape(grid)
	cx, cy := cores(l.xs, size, l.Width), cores(l.ys, size, l.Height)
	// patch is the index of the patch of a tile at origin o under frame
	// coordinate p, or -1 when the tile does not cover p.
	patch := func(o int, p float64) int {
		k := int(math.Floor((p - float64(o)) * float64(grid) / float64(size)))
		if p < float64(o) || k >= grid {
			return -1
		}
		return k
	}
	out = make([]float32, cols*rows)
	for r := range rows {
		py := (float64(r) + 0.5) * float64(l.Height) / float64(rows)
		for c := range cols {
			px := (float64(c) + 0.5) * float64(l.Width) / float64(cols)
			best := float32(math.Inf(-1))
			for ty, oy := range l.ys {
				pr := patch(oy, py)
				if pr < 0 || coreOnly && !(py >= cy[ty][0] && py < cy[ty][1]) {
					continue
				}
				for tx, ox := range l.xs {
					pc := patch(ox, px)
					if pc < 0 || coreOnly && !(px >= cx[tx][0] && px < cx[tx][1]) {
						continue
					}
					best = max(best, values[ty*l.Cols+tx][pr*grid+pc])
				}
			}
			out[r*cols+c] = best
		}
	}
	return out, cols, rows, nil
}
