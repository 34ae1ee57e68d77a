package fit

import (
	"context"
	"fmt"
	"image"
	"log/slog"
	"math"
	"sort"

	"github.com/transformaly/transformaly/models"
)

// Tiled fits (Options.Tiling) cut every normal frame into tiles at native
// resolution, and fit the whole method (students, Gaussians, patch bank) on
// tiles as if each were an image. What makes them differ from a fit on
// loose images is that the tiles of one frame overlap and see the same
// part: they are split, folded and held out together (a tile scored
// against a bank holding its neighbour's patches of the same pixels would
// look more normal than a new frame's), and the threshold is calibrated
// on each normal frame's worst tile, the statistic a frame is judged by.

// loadImages decodes the normal images: whole, or cut into tiles.
func (o *Options) loadImages(ctx context.Context, paths []string) (*Images, []error, error) {
	if o.Tiling == nil {
		return LoadImages(ctx, paths, o.Teacher.ImageSize, o.memoryBudget(), o.spillDir())
	}
	return LoadTiles(ctx, paths, o.Teacher.ImageSize, *o.Tiling, image.Point{}, o.memoryBudget(), o.spillDir())
}

// checkTiling validates the tiling options.
func (o *Options) checkTiling() error {
	if o.Tiling == nil {
		return nil
	}
	if err := o.Tiling.Check(); err != nil {
		return fmt.Errorf("--tile, --tile-overlap: %w", err)
	}
	if o.NoPatch {
		return fmt.Errorf("--tile needs the patch feature space (not --patch-blocks none): a tiled frame's map and region come from its tiles' patch distances")
	}
	if o.Tiling.Size < o.Teacher.Patch {
		return fmt.Errorf("--tile %d: smaller than one of the teacher's patches (%d px)", o.Tiling.Size, o.Teacher.Patch)
	}
	return nil
}

// splitFrames is split over frames: a frame's tiles are all trained on or
// all held out.
func (o *Options) splitFrames(images *Images) (train, val []int) {
	ft, fv := split(images.Frames(), o.ValFraction, o.Seed)
	return images.ofFrames(ft), images.ofFrames(fv)
}

// ofFrames lists the images (tiles) of the given frames, sorted.
func (im *Images) ofFrames(frames []int) []int {
	if im.frame == nil {
		return frames
	}
	in := make([]bool, im.Frames())
	for _, f := range frames {
		in[f] = true
	}
	var out []int
	for i, f := range im.frame {
		if in[f] {
			out = append(out, i)
		}
	}
	return out
}

// worstTiles reduces per-image scores (scores[k] is image idx[k]'s) to
// one per frame, its worst tile's, in frame order; untiled images are
// their own frames.
func (im *Images) worstTiles(scores []float64, idx []int) []float64 {
	if im.frame == nil {
		return scores
	}
	out := make([]float64, im.Frames())
	for f := range out {
		out[f] = math.Inf(-1)
	}
	for k, i := range idx {
		out[im.frame[i]] = math.Max(out[im.frame[i]], scores[k])
	}
	return out
}

// countedPatches says which of image i's patches (grid x grid, row by
// row) count for its patch score: all of an untiled image's, a tile's
// core only unless edges count too.
func (im *Images) countedPatches(i, grid int, edges bool) []bool {
	if im.frame == nil || edges {
		return nil
	}
	return im.layouts[im.frame[i]].CoreMask(im.tile[i], grid)
}

// tilingInfo records the tiling in the bundle, and logs it with the
// promise it makes per frame.
func (o *Options) tilingInfo(images *Images, promise models.Calibration) *models.TilingInfo {
	if o.Tiling == nil {
		return nil
	}
	t := &models.TilingInfo{Tiling: *o.Tiling, CoreOnly: !o.TileEdges, Frames: images.Frames(), TilesPerFrame: [2]int{math.MaxInt, 0}}
	for _, l := range images.layouts {
		t.TilesPerFrame = [2]int{min(t.TilesPerFrame[0], len(l.Tiles)), max(t.TilesPerFrame[1], len(l.Tiles))}
	}
	slog.Info("tiled: each frame is judged by its worst tile; the threshold is calibrated on normal frames' worst tiles",
		"tile", t.Size, "overlap", t.Overlap, "frames", t.Frames, "tiles", images.Len(),
		"tiles_per_frame", fmt.Sprintf("%d-%d", t.TilesPerFrame[0], t.TilesPerFrame[1]),
		"false_alarm_rate_per_frame", promise.ExpectedFalseAlarms,
		"false_alarm_rate_per_frame_95", fmt.Sprintf("%.4f-%.4f", promise.FalseAlarms95[0], promise.FalseAlarms95[1]))
	return t
}

// MaxBankEntries caps the patch memory bank. Every scored image's patches
// are compared with every entry (on a ViT-S/16 at 224, 9,800 entries
// added 9% to its time), and tiles multiply the patches: a 10% bank of
// 2,520 tiles of 128 px would hold 64,500 entries, where a bank of a few
// hundred images' patches already covers what normal looks like.
const MaxBankEntries = 16384

// bankEntries is the bank's size for share of patches: at least one, at
// most MaxBankEntries.
func bankEntries(share float64, patches int) int {
	return max(1, min(patches, MaxBankEntries, int(math.Round(share*float64(patches)))))
}

// coresetChunk is the rows each part of a composed coreset holds;
// composeAbove the greedy coreset's cost (rows x entries) above which it
// is composed: about 10 s on 2 cores (98,000 patches, 9,800 entries).
const (
	coresetChunk = 16384
	composeAbove = 1e9
)

// composedCoreset picks m of the rows of x ([P, k]) as greedyCoreset does,
// in two stages when the rows are many: greedy k-center within each chunk
// of coresetChunk consecutive rows (an image's, or a frame's tiles',
// patches lie together) keeping its share of 2m rows, then greedy over
// those 2m. Greedy alone costs P x m distances, which grows with the
// square of the normal images (tiles: 2,520 tiles of 128 px, 645,000
// patches, over 10 minutes on 2 cores); composed, 2m x (coresetChunk + m).
// The union of the parts' k-center coresets is a composable coreset: the
// bank over it covers every row within a small multiple of greedy's own
// radius (Indyk, Mahabadi, Mahdian and Mirrokni, PODS 2014).
func composedCoreset(ctx context.Context, x []float32, k, m int, seed uint64) []int {
	p := len(x) / k
	if p <= 4*m || int64(p)*int64(m) <= composeAbove {
		return greedyCoreset(ctx, x, k, m, seed)
	}
	return composeCoreset(ctx, x, k, m, coresetChunk, seed)
}

// composeCoreset is composedCoreset's two stages over parts of chunk rows.
func composeCoreset(ctx context.Context, x []float32, k, m, chunk int, seed uint64) []int {
	p, union := len(x)/k, 2*m
	var rows []int
	for lo := 0; lo < p && ctx.Err() == nil; lo += chunk {
		hi := min(p, lo+chunk)
		take := (union*(hi-lo) + p - 1) / p
		for _, r := range greedyCoreset(ctx, x[lo*k:hi*k], k, take, seed+uint64(lo)) {
			rows = append(rows, lo+r)
		}
	}
	sort.Ints(rows)
	candidates := make([]float32, 0, len(rows)*k)
	for _, r := range rows {
		candidates = append(candidates, x[r*k:(r+1)*k]...)
	}
	picked := greedyCoreset(ctx, candidates, k, m, seed)
	for i, c := range picked {
		picked[i] = rows[c]
	}
	return picked
}

// patchScore is image i's patch score from its patches' distances: the
// largest of those that count (countedPatches).
func (im *Images) patchScore(i int, dist []float32, grid int, edges bool) float64 {
	mask := im.countedPatches(i, grid, edges)
	best := math.Inf(-1)
	for p, x := range dist {
		if mask == nil || mask[p] {
			best = math.Max(best, float64(x))
		}
	}
	return best
}

// countedDistances are the patch distances (dist[k*grid*grid+p] is image
// idx[k]'s patch p; idx nil: image k's) that count for the images' patch
// scores.
func (im *Images) countedDistances(dist []float32, idx []int, grid int, edges bool) []float64 {
	g2 := grid * grid
	out := make([]float64, 0, len(dist))
	for k := range len(dist) / g2 {
		i := k
		if idx != nil {
			i = idx[k]
		}
		mask := im.countedPatches(i, grid, edges)
		for p, x := range dist[k*g2 : (k+1)*g2] {
			if mask == nil || mask[p] {
				out = append(out, float64(x))
			}
		}
	}
	return out
}
