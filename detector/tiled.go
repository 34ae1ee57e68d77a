package detector

import (
	"fmt"
	"image"
	"log/slog"
	"math"

	"github.com/transformaly/transformaly/tiles"
)

// Tiled says whether the bundle cuts frames into tiles.
func (d *Detector) Tiled() bool { return d.Info.Tiling != nil }

// Layout is how a width x height frame is cut for this bundle (one tile
// of the whole frame for a bundle without tiling); an error names a frame
// smaller than one tile.
func (d *Detector) Layout(width, height int) (tiles.Layout, error) {
	if t := d.Info.Tiling; t != nil {
		return t.Layout(width, height)
	}
	return tiles.Layout{Width: width, Height: height, Cols: 1, Rows: 1, Tiles: []image.Rectangle{image.Rect(0, 0, width, height)}}, nil
}

// ScoreFrames scores frames of the given sizes (after the camera's crop
// and rotation). pixels holds, frame after frame, each frame's input: for
// a bundle without tiling the frame resized to Size() square, for a tiled
// one its tiles (Layout) each resized to Size() square, row by row. All go
// through the detector as one batch. A tiled frame's result is its worst
// tile's, with the patch distances stitched into one map in frame
// coordinates (Result.MapCols x MapRows).
func (d *Detector) ScoreFrames(pixels []byte, sizes []image.Point, threshold float64) ([]Result, error) {
	if !d.Tiled() {
		return d.Score(pixels, len(sizes), threshold)
	}
	layouts := make([]tiles.Layout, len(sizes))
	n := 0
	for i, s := range sizes {
		l, err := d.Layout(s.X, s.Y)
		if err != nil {
			return nil, fmt.Errorf("score frame %d: %w", i, err)
		}
		layouts[i] = l
		n += len(l.Tiles)
		if fitted := d.Info.Tiling.TilesPerFrame[1]; fitted > 0 && len(l.Tiles) > fitted && d.tilesWarned.CompareAndSwap(false, true) {
			slog.Warn("frames cut into more tiles than the bundle's normal frames were: each tile is a chance of a false alarm, so such frames raise more than the rate promised per frame (fit on frames of this size)",
				"bundle", d.Path, "frame", fmt.Sprintf("%dx%d", s.X, s.Y), "tiles", len(l.Tiles), "fitted_tiles_per_frame", fitted)
		}
	}
	perTile, err := d.Score(pixels, n, threshold)
	if err != nil {
		return nil, err
	}
	out := make([]Result, len(sizes))
	at := 0
	for i, l := range layouts {
		if out[i], err = d.mergeTiles(l, perTile[at:at+len(l.Tiles)], threshold); err != nil {
			return nil, err
		}
		at += len(l.Tiles)
	}
	return out, nil
}

// mergeTiles makes a frame's result from its tiles': each tile's patch
// score from the patches that count (its core, when the bundle says so),
// its score from that, and the frame's from its worst tile. Each feature
// space's evidence is the frame's strongest: the likelihoods (and the
// block errors and embedding behind them) are the tile's the image-level
// space finds most unusual, the patch score the largest, so the frame's
// score, its worst tile's, is their combination.
func (d *Detector) mergeTiles(l tiles.Layout, res []Result, threshold float64) (Result, error) {
	t, pi := d.Info.Tiling, d.Info.Patch
	grid := d.Info.Teacher.Config.Grid()
	dists := make([][]float32, len(res))
	worst := -1
	for i := range res {
		r := &res[i]
		dists[i] = r.PatchDistances
		if t.CoreOnly {
			mask := l.CoreMask(i, grid)
			patch := math.Inf(-1)
			for p, in := range mask {
				if in {
					patch = math.Max(patch, float64(r.PatchDistances[p]))
				}
			}
			if !math.IsNaN(r.PatchScore) { // a NaN patch score stays NaN
				r.Score = pi.Combination.Score(-(r.LLPretrained + r.LLStudent), patch)
				r.PatchScore = patch
			}
		}
		// A tile that is no number makes the frame's worst: never normal.
		if worst < 0 || !r.Finite() || res[worst].Finite() && r.Score > res[worst].Score {
			worst = i
		}
	}
	frame := res[worst]
	frame.Tiles, frame.WorstTile = len(res), worst
	unusual := worst // the tile the image-level space finds most unusual
	for i := range res {
		frame.PatchScore = math.Max(frame.PatchScore, res[i].PatchScore)
		if -(res[i].LLPretrained + res[i].LLStudent) > -(res[unusual].LLPretrained + res[unusual].LLStudent) {
			unusual = i
		}
	}
	if frame.Finite() {
		u := res[unusual]
		frame.LLPretrained, frame.LLStudent, frame.BlockErrors, frame.Embedding = u.LLPretrained, u.LLStudent, u.BlockErrors, u.Embedding
	}
	var err error
	frame.PatchDistances, frame.MapCols, frame.MapRows, err = l.Stitch(dists, grid, t.CoreOnly)
	if err != nil {
		return frame, err
	}
	frame.Anomalous = !(frame.Score <= threshold) || !frame.Finite()
	return frame, nil
}
