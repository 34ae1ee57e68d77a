package models

import (
	"fmt"
	"math"
)

// ResizePositionEmbedding resamples the patch part of the position embedding
// to the grid of imageSize, keeping the class token's entry, the way timm's
// resample_abs_pos_embed does when a checkpoint is loaded at another size:
// F.interpolate(mode="bicubic", antialias=True, align_corners=False).
func (v *ViT) ResizePositionEmbedding(imageSize int) error {
	if imageSize <= 0 || imageSize%v.Patch != 0 {
		return fmt.Errorf("image size %d is not a positive multiple of the patch size %d", imageSize, v.Patch)
	}
	oldGrid, newGrid := v.Grid(), imageSize/v.Patch
	d := v.Dim
	grid := make([]float64, oldGrid*oldGrid*d)
	for i := range grid {
		grid[i] = float64(v.PosEmbed[d+i])
	}
	resized := resizeBicubicAA(grid, oldGrid, oldGrid, newGrid, newGrid, d)
	pos := make([]float32, (newGrid*newGrid+1)*d)
	copy(pos, v.PosEmbed[:d])
	for i, x := range resized {
		pos[d+i] = float32(x)
	}
	v.PosEmbed = pos
	v.ImageSize = imageSize
	return nil
}

// resizeBicubicAA resizes an [h, w, c] grid to [outH, outW, c] with PyTorch's
// separable antialiased bicubic filter (Keys a=-0.5, support widened by the
// scale when shrinking, weights renormalised at the borders). Written here
// because no Go image library offers this exact kernel, and position
// embeddings must match what timm computes.
func resizeBicubicAA(src []float64, h, w, outH, outW, c int) []float64 {
	// Width pass: [h, w, c] -> [h, outW, c].
	tmp := make([]float64, h*outW*c)
	for ox, ws := range aaWeights(w, outW) {
		for y := range h {
			dst := tmp[(y*outW+ox)*c : (y*outW+ox+1)*c]
			for j, wt := range ws.weights {
				s := src[(y*w+ws.first+j)*c:]
				for k := range dst {
					dst[k] += wt * s[k]
				}
			}
		}
	}
	// Height pass: [h, outW, c] -> [outH, outW, c].
	out := make([]float64, outH*outW*c)
	for oy, ws := range aaWeights(h, outH) {
		for x := range outW {
			dst := out[(oy*outW+x)*c : (oy*outW+x+1)*c]
			for j, wt := range ws.weights {
				s := tmp[((ws.first+j)*outW+x)*c:]
				for k := range dst {
					dst[k] += wt * s[k]
				}
			}
		}
	}
	return out
}

type tapWeights struct {
	first   int
	weights []float64
}

// aaWeights follows _compute_indices_min_size_weights_aa in PyTorch's
// UpSampleKernel.cpp for interp_size 4 (bicubic).
func aaWeights(in, out int) []tapWeights {
	scale := float64(in) / float64(out)
	support, invScale := 2.0, 1.0
	if scale >= 1 {
		support, invScale = 2*scale, 1/scale
	}
	taps := make([]tapWeights, out)
	for i := range out {
		center := scale * (float64(i) + 0.5)
		first := max(int(center-support+0.5), 0)
		size := min(int(center+support+0.5), in) - first
		ws := make([]float64, size)
		total := 0.0
		for j := range ws {
			ws[j] = bicubicAAFilter((float64(j+first) - center + 0.5) * invScale)
			total += ws[j]
		}
		if total != 0 {
			for j := range ws {
				ws[j] /= total
			}
		}
		taps[i] = tapWeights{first: first, weights: ws}
	}
	return taps
}

func bicubicAAFilter(x float64) float64 {
	const a = -0.5
	x = math.Abs(x)
	switch {
	case x < 1:
		return ((a+2)*x-(a+3))*x*x + 1
	case x < 2:
		return (((x-5)*x+8)*x - 4) * a
	default:
		return 0
	}
}
