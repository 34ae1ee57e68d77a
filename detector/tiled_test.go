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
func tiledBundle(t *testing.T, coreOnly bool, c models.Combination) string {
	t.Helper()
	v, err := models.RandomViT(models.Config{Dim: 32, Depth: 2, Heads: 2, Patch: 8, ImageSize: 32}, 5)
	if err != nil {
		t.Fatal(err)
	}
	blocks := []int{1}
	rng := rand.New(rand.NewPCG(3, 3))
	students := []models.Block{models.XavierBlock(v.Config, rng)}
	patch := &models.PatchScore{PatchFeatures: models.PatchFeatures{Blocks: []int{0}, Neighbourhood: 3, Pooling: models.PoolMean}, D: v.Dim, M: 20}
	for range patch.M * patch.D {
		patch.Bank = append(patch.Bank, float32(rng.NormFloat64()))
	}
	scoring := identityScoring(v.Dim, len(blocks))
	scoring.Patch = patch
	info := models.BundleInfo{Format: models.BundleFormat, ImageSize: v.ImageSize, Blocks: blocks, Threshold: 1}
	info.Teacher.Config = v.Config
	info.Patch = &models.PatchInfo{Blocks: patch.Blocks, Neighbourhood: patch.Neighbourhood, Pooling: patch.Pooling, FeatureWidth: patch.D, BankEntries: patch.M, Combination: c, NormalDistance: 1}
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
	// The method's scores of these tiles are far past the combination's
	// normal ones, so it sets every score; unless its normal scores are
	// spread 10^4 wide, when the patch scores set them and the worst tile
	// may be another than the method's.
	patchLed := spreadCombination(1)
	patchLed.Image = spreadCombination(1e4).Image
	for _, c := range []struct {
		coreOnly    bool
		combination models.Combination
	}{{false, spreadCombination(1)}, {true, spreadCombination(1)}, {true, patchLed}} {
		coreOnly := c.coreOnly
		d, err := detector.Load(tiledBundle(t, coreOnly, c.combination), detector.RunnerOptions{})
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
		at := 0
		for f, l := range layouts {
			n := len(l.Tiles)
			alone, err := d.Score(pixels[at*3072:(at+n)*3072], n, 1)
			if err != nil {
				t.Fatal(err)
			}
			at += n
			worst, best := -1, math.Inf(-1)
			maxImage, maxPatch := math.Inf(-1), math.Inf(-1)
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
				if s := pi.Combination.Score(-(r.LLPretrained + r.LLStudent), patch); s > best {
					worst, best = i, s
				}
				maxImage, maxPatch = math.Max(maxImage, -(r.LLPretrained+r.LLStudent)), math.Max(maxPatch, patch)
				dists = append(dists, r.PatchDistances)
			}
			g := got[f]
			// The worst tile's score is the combination of the frame's
			// largest scores in each space.
			if frame := pi.Combination.Score(maxImage, maxPatch); math.Abs(frame-best) > 1e-9*math.Max(1, math.Abs(best)) {
				t.Errorf("core %v frame %d: worst tile's score %g, the frame's largest scores combined %g", coreOnly, f, best, frame)
			}
			if g.Tiles != n || g.WorstTile != worst || math.Abs(g.Score-best) > 1e-4*math.Max(1, math.Abs(best)) {
				t.Fatalf("core %v frame %d: %d tiles, worst %d, score %g; tiles alone: worst %d, score %g", coreOnly, f, g.Tiles, g.WorstTile, g.Score, worst, best)
			}
			// Each space's evidence is the frame's strongest, and the
			// score their combination.
			if image := -(g.LLPretrained + g.LLStudent); math.Abs(image-maxImage) > 1e-4*math.Max(1, math.Abs(maxImage)) || math.Abs(g.PatchScore-maxPatch) > 1e-5*math.Max(1, maxPatch) ||
				math.Abs(pi.Combination.Score(image, g.PatchScore)-g.Score) > 1e-4*math.Max(1, math.Abs(g.Score)) {
				t.Errorf("core %v frame %d: method's score %g, patch score %g, score %g; tiles alone: largest %g and %g", coreOnly, f, image, g.PatchScore, g.Score, maxImage, maxPatch)
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

// BenchmarkTiledFrame: a 1920x1080 frame scored by a ViT-S/16 detector at
// 224 (students on blocks 2..11, a patch bank of 9,800 entries): resized
// whole (one image), and cut into tiles of 224 at native resolution (60
// tiles, one batch). frames/s and tiles a frame; the cut itself is
// capture's (BenchmarkDecodePreprocess).
func BenchmarkTiledFrame(b *testing.B) {
	cfg := benchShapes[0].cfg
	v, err := models.RandomViT(cfg, 1)
	if err != nil {
		b.Fatal(err)
	}
	blocks := []int{2, 3, 4, 5, 6, 7, 8, 9, 10, 11}
	rng := rand.New(rand.NewPCG(1, 1))
	students := make([]models.Block, len(blocks))
	for i := range students {
		students[i] = models.XavierBlock(v.Config, rng)
	}
	const bank = 9800
	scoring := identityScoring(v.Dim, len(blocks))
	frame := image.Pt(1920, 1080)
	for _, tiled := range []bool{false, true} {
		// fit's defaults: the 3x3 mean for frames resized whole; for tiles
		// at native resolution, the 3x3 side by side projected to twice
		// the teacher's width.
		features, width := models.PatchFeatures{Blocks: []int{2}, Neighbourhood: 3, Pooling: models.PoolMean}, v.Dim
		if tiled {
			features.Pooling, width = models.PoolConcat, 2*v.Dim
			features.Projection = models.RandomProjection(features.RawWidth(v.Dim), width, 1)
		}
		scoring.Patch = &models.PatchScore{PatchFeatures: features, D: width, M: bank, Bank: make([]float32, bank*width)}
		for i := range scoring.Patch.Bank {
			scoring.Patch.Bank[i] = float32(rng.NormFloat64())
		}
		info := models.BundleInfo{Format: models.BundleFormat, ImageSize: v.ImageSize, Blocks: blocks, Threshold: 1}
		info.Teacher.Config = v.Config
		info.Patch = &models.PatchInfo{Blocks: []int{2}, Neighbourhood: 3, Pooling: features.Pooling, FeatureWidth: width, BankEntries: bank, Combination: spreadCombination(1), NormalDistance: 1}
		name := "whole-frame"
		if tiled {
			info.Tiling = &models.TilingInfo{Tiling: tiles.Tiling{Size: 224, Overlap: tiles.DefaultOverlap(v.Grid())}, CoreOnly: true}
			name = "tiles-224"
		}
		m, err := models.ScoredDetectorGraph(v, blocks, students, scoring, info, models.FP32)
		if err != nil {
			b.Fatal(err)
		}
		path := filepath.Join(b.TempDir(), "bench.tfy")
		if err := models.WriteBundle(path, m); err != nil {
			b.Fatal(err)
		}
		d, err := detector.Load(path, detector.RunnerOptions{})
		if err != nil {
			b.Fatal(err)
		}
		l, err := d.Layout(frame.X, frame.Y)
		if err != nil {
			b.Fatal(err)
		}
		pixels := make([]byte, len(l.Tiles)*v.ImageSize*v.ImageSize*3)
		for i := range pixels {
			pixels[i] = byte(i * 7)
		}
		b.Run("ViT-S16-224/1920x1080/"+name, func(b *testing.B) {
			for range 2 { // ORT plans its memory on the first run, touches it on the second
				if _, err := d.ScoreFrames(pixels, []image.Point{frame}, 1); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for range b.N {
				if _, err := d.ScoreFrames(pixels, []image.Point{frame}, 1); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "frames/s")
			b.ReportMetric(float64(len(l.Tiles)), "tiles")
		})
		d.Close()
	}
}
