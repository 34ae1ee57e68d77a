package models

import (
	"fmt"
	"math"
)

// ResizePositionEmbedding resamples the patch part of the position embedding
// to the grid of imageSize, keeping the class token's entry, as the
// checkpoint's own library does at another size: timm's
// resample_abs_pos_embed, F.interpolate(mode="bicubic", antialias=True,
// align_corners=False); Hugging Face's interpolate_pos_encoding (ViT and
// DINOv2) the same without antialias, which differs when shrinking (a
// DINOv2 at 518 used at 224).
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
	taps := aaWeights
	if v.Layout == LayoutHuggingFace {
		taps = bicubicWeights
	}
	resized := resizeBicubic(grid, oldGrid, oldGrid, newGrid, newGrid, d, taps)
	pos := make([]float32, (newGrid*newGrid+1)*d)
	copy(pos, v.PosEmbed[:d])
	for i, x := range resized {
		pos[d+i] = float32(x)
	}
	v.PosEmbed = pos
	v.ImageSize = imageSize
	return nil
}

// resizeBicubic resizes an [h, w, c] grid to [outH, outW, c] separably with
// one of PyTorch's bicubic filters (taps: aaWeights or bicubicWeights).
// Written here because no Go image library offers these exact kernels, and
// position embeddings must match what timm and transformers compute.
func resizeBicubic(src []float64, h, w, outH, outW, c int, taps func(in, out int) []tapWeights) []float64 {
	// Width pass: [h, w, c] -> [h, outW, c].
	tmp := make([]float64, h*outW*c)
	for ox, ws := range taps(w, outW) {
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
	for oy, ws := range taps(h, outH) {
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

// bicubicWeights follows PyTorch's upsample_bicubic2d without antialias,
// align_corners=False: four taps around scale*(i+0.5)-0.5 with the cubic
// convolution of A=-0.75, indices clamped to the edge (a clamped tap adds
// its weight to the edge one).
func bicubicWeights(in, out int) []tapWeights {
	const a = -0.75
	near := func(x float64) float64 { return ((a+2)*x-(a+3))*x*x + 1 }  // |x| <= 1
	far := func(x float64) float64 { return ((a*x-5*a)*x+8*a)*x - 4*a } // 1 < |x| < 2
	scale := float64(in) / float64(out)
	taps := make([]tapWeights, out)
	for i := range out {
		src := scale*(float64(i)+0.5) - 0.5
		x0 := int(math.Floor(src))
		t := src - float64(x0)
		coeffs := [4]float64{far(t + 1), near(t), near(1 - t), far(2 - t)}
		first, last := min(max(x0-1, 0), in-1), min(max(x0+2, 0), in-1)
		ws := make([]float64, last-first+1)
		for k, c := range coeffs {
			ws[min(max(x0-1+k, 0), in-1)-first] += c
		}
		taps[i] = tapWeights{first: first, weights: ws}
	}
	return taps
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
