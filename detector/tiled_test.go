package detector_test

import (
	"errors"
	"image"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/models"
	"github.com/transformaly/transformaly/tiles"
)

// tiledBundle writes a small random bundle with a patch space and a
// tiling of 48 px tiles (resized to its 32 px input).
func tiledBundle(t *testing.T, coreOnly bool) string {
	t.Helper()
	v, err := models.RandomViT(models.Config{Dim: 32, Depth: 2, Heads: 2, Patch: 8, ImageSize: 32}, 5)
	if err != nil {
		t.Fatal(err)
	}
	blocks := []int{1}
	rng := rand.New(rand.NewPCG(3, 3))
	students := []models.Block{models.XavierBlock(v.Config, rng)}
	patch := &models.PatchScore{Blocks: []int{0}, D: v.Dim, M: 20, Median: 0.5, Scale: 0.25, Weight: 2}
	for range patch.M * patch.D {
		patch.Bank = append(patch.Bank, float32(rng.NormFloat64()))
	}
	scoring := identityScoring(v.Dim, len(blocks))
	scoring.Patch = patch
	info := models.BundleInfo{Format: models.BundleFormat, ImageSize: v.ImageSize, Blocks: blocks, Threshold: 1}
	info.Teacher.Config = v.Config
	info.Patch = &models.PatchInfo{Blocks: patch.Blocks, FeatureWidth: patch.D, BankEntries: patch.M, TermMedian: patch.Median, TermScale: patch.Scale, TermWeight: patch.Weight, NormalDistance: 1}
	info.Tiling = &models.TilingInfo{Tiling: tiles.Tiling{Size: 48, Overlap: 0.25}, CoreOnly: coreOnly}
	m, err := models.ScoredDetectorGraph(v, blocks, students, scoring, info, models.FP32)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "tiled.tfy")
	if err := models.WriteBundle(path, m); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestScoreFramesIsTheWorstTile: two frames of different sizes go through
// as one batch of tiles; each frame's result is, against every tile
// scored alone, its worst tile's (with the patch score of the patches
// that count), and its map the tiles' maps stitched.
func TestScoreFramesIsTheWorstTile(t *testing.T) {
	for _, coreOnly := range []bool{false, true} {
		d, err := detector.Load(tiledBundle(t, coreOnly), detector.RunnerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		sizes := []image.Point{{112, 80}, {48, 60}}
		rng := rand.New(rand.NewPCG(4, 4))
		var pixels []byte
		var layouts []tiles.Layout
		for _, s := range sizes {
			l, err := d.Layout(s.X, s.Y)
			if err != nil {
				t.Fatal(err)
			}
			layouts = append(layouts, l)
			for range len(l.Tiles) * 32 * 32 * 3 {
				pixels = append(pixels, byte(rng.IntN(256)))
			}
		}
		if len(layouts[0].Tiles) != 6 || len(layouts[1].Tiles) != 2 {
			t.Fatalf("layouts of %d and %d tiles", len(layouts[0].Tiles), len(layouts[1].Tiles))
		}
		got, err := d.ScoreFrames(pixels, sizes, 1)
		if err != nil {
			t.Fatal(err)
		}
		pi := d.Info.Patch
		term := models.PatchScore{Median: pi.TermMedian, Scale: pi.TermScale, Weight: pi.TermWeight}
		at := 0
		for f, l := range layouts {
			n := len(l.Tiles)
			alone, err := d.Score(pixels[at*3072:(at+n)*3072], n, 1)
			if err != nil {
				t.Fatal(err)
			}
			at += n
			worst, best := -1, math.Inf(-1)
			var dists [][]float32
			for i, r := range alone {
				patch := r.PatchScore
				if coreOnly {
					patch = math.Inf(-1)
					for p, in := range l.CoreMask(i, 4) {
						if in {
							patch = math.Max(patch, float64(r.PatchDistances[p]))
						}
					}
				}
				if s := -(r.LLPretrained + r.LLStudent) + term.Term(patch); s > best {
					worst, best = i, s
				}
				dists = append(dists, r.PatchDistances)
			}
			g := got[f]
			if g.Tiles != n || g.WorstTile != worst || math.Abs(g.Score-best) > 1e-4*math.Max(1, math.Abs(best)) {
				t.Fatalf("core %v frame %d: %d tiles, worst %d, score %g; tiles alone: worst %d, score %g", coreOnly, f, g.Tiles, g.WorstTile, g.Score, worst, best)
			}
			if g.Anomalous != (g.Score > 1) {
				t.Fatalf("frame %d: anomalous %v at score %g, threshold 1", f, g.Anomalous, g.Score)
			}
			want, cols, rows, err := l.Stitch(dists, 4, coreOnly)
			if err != nil {
				t.Fatal(err)
			}
			if g.MapCols != cols || g.MapRows != rows || len(g.PatchDistances) != len(want) {
				t.Fatalf("frame %d: map %dx%d, want %dx%d", f, g.MapCols, g.MapRows, cols, rows)
			}
			for i := range want {
				if g.PatchDistances[i] != want[i] {
					t.Fatalf("frame %d: map cell %d is %g, stitched alone %g", f, i, g.PatchDistances[i], want[i])
				}
			}
		}
		if _, err := d.ScoreFrames(pixels[:3072], []image.Point{{40, 100}}, 1); !errors.Is(err, tiles.ErrFrameTooSmall) {
			t.Fatalf("a frame narrower than a tile: %v", err)
		}
	}
}
