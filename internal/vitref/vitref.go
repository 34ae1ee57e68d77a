// Package vitref is an independent, deliberately plain float64 ViT forward
// pass, written from the timm reference, against which tests check the ONNX
// graphs: no Gemm layouts, no fused ops, no batching. Only tests import it.
package vitref

import (
	"math"

	"github.com/transformaly/transformaly/models"
)

// Result is one image's forward pass.
type Result struct {
	Embedding []float64   // [Dim]
	BlockIO   [][]float64 // depth+1 token matrices [Tokens*Dim]: blockIO[i] is block i's input
}

// Forward runs v on one packed RGB image of v.ImageSize squared.
func Forward(v *models.ViT, img []uint8) Result {
	c := v.Config
	d, p, g := c.Dim, c.Patch, c.Grid()
	// The checkpoint's input normalisation; a ViT made without one gets
	// Google's (x/255 - 0.5)/0.5, as the models package does.
	rescale, mean, std := 1.0/255, [3]float64{0.5, 0.5, 0.5}, [3]float64{0.5, 0.5, 0.5}
	if n := v.Input; n.Rescale != 0 {
		rescale, mean, std = n.Rescale, n.Mean, n.Std
	}
	// Tokens: the class token, then DINOv2's registers (no position), then
	// the patches (the position table has no rows for registers).
	r := c.Registers
	x := make([]float64, c.Tokens()*d)
	for o := range d {
		x[o] = float64(v.ClsToken[o]) + float64(v.PosEmbed[o])
	}
	for i := range r * d {
		x[d+i] = float64(v.RegTokens[i])
	}
	for gy := range g {
		for gx := range g {
			pos := 1 + gy*g + gx
			tok := pos + r
			for o := range d {
				s := float64(v.PatchB[o])
				for ch := range 3 {
					for ky := range p {
						for kx := range p {
							pix := img[((gy*p+ky)*c.ImageSize+gx*p+kx)*3+ch]
							norm := (float64(pix)*rescale - mean[ch]) / std[ch]
							s += float64(v.PatchW[((o*3+ch)*p+ky)*p+kx]) * norm
						}
					}
				}
				x[tok*d+o] = s + float64(v.PosEmbed[pos*d+o])
			}
		}
	}
	res := Result{BlockIO: [][]float64{x}}
	for _, b := range v.Blocks {
		x = Block(c, b, x)
		res.BlockIO = append(res.BlockIO, x)
	}
	res.Embedding = refLayerNorm(x[:d], v.NormW, v.NormB, c.Eps)
	return res
}

func refLayerNorm(x []float64, w, b []float32, eps float64) []float64 {
	mean, vr := 0.0, 0.0
	for _, a := range x {
		mean += a
	}
	mean /= float64(len(x))
	for _, a := range x {
		vr += (a - mean) * (a - mean)
	}
	vr /= float64(len(x))
	out := make([]float64, len(x))
	for i, a := range x {
		out[i] = (a-mean)/math.Sqrt(vr+eps)*float64(w[i]) + float64(b[i])
	}
	return out
}

// refLinear is W x + b for W stored [out, in].
func refLinear(x []float64, w, b []float32, out int) []float64 {
	in := len(x)
	y := make([]float64, out)
	for o := range out {
		s := float64(b[o])
		for i := range in {
			s += float64(w[o*in+i]) * x[i]
		}
		y[o] = s
	}
	return y
}

// Block runs one transformer block on tokens [Tokens*Dim].
func Block(c models.Config, b models.Block, x []float64) []float64 {
	d, t, h := c.Dim, c.Tokens(), c.Heads
	dh := d / h
	q, k, vv := make([][]float64, t), make([][]float64, t), make([][]float64, t)
	for i := range t {
		qkv := refLinear(refLayerNorm(x[i*d:(i+1)*d], b.Norm1W, b.Norm1B, c.Eps), b.QKVW, b.QKVB, 3*d)
		q[i], k[i], vv[i] = qkv[:d], qkv[d:2*d], qkv[2*d:]
	}
	ctx := make([][]float64, t)
	for i := range t {
		ctx[i] = make([]float64, d)
		for hh := range h {
			lo := hh * dh
			scores := make([]float64, t)
			maxS := math.Inf(-1)
			for j := range t {
				s := 0.0
				for e := range dh {
					s += q[i][lo+e] * k[j][lo+e]
				}
				scores[j] = s / math.Sqrt(float64(dh))
				maxS = math.Max(maxS, scores[j])
			}
			sum := 0.0
			for j := range scores {
				scores[j] = math.Exp(scores[j] - maxS)
				sum += scores[j]
			}
			for j := range t {
				for e := range dh {
					ctx[i][lo+e] += scores[j] / sum * vv[j][lo+e]
				}
			}
		}
	}
	out := make([]float64, t*d)
	for i := range t {
		y := refLinear(ctx[i], b.ProjW, b.ProjB, d)
		for e := range d {
			ls := 1.0
			if b.LayerScale1 != nil {
				ls = float64(b.LayerScale1[e])
			}
			out[i*d+e] = x[i*d+e] + ls*y[e]
		}
		hid := refLinear(refLayerNorm(out[i*d:(i+1)*d], b.Norm2W, b.Norm2B, c.Eps), b.FC1W, b.FC1B, c.MLPDim)
		for j, a := range hid {
			hid[j] = 0.5 * a * (1 + math.Erf(a/math.Sqrt2))
		}
		y = refLinear(hid, b.FC2W, b.FC2B, d)
		for e := range d {
			ls := 1.0
			if b.LayerScale2 != nil {
				ls = float64(b.LayerScale2[e])
			}
			out[i*d+e] += ls * y[e]
		}
	}
	return out
}

// TokenErrors is the mean over channels of (student - teacher)^2 per token
// of the class token and the patches (registers skipped).
func TokenErrors(c models.Config, student, teacher []float64) []float64 {
	d := c.Dim
	out := make([]float64, c.ImageTokens())
	for i := range out {
		tok := i
		if i > 0 {
			tok += c.Registers
		}
		for e := range d {
			diff := student[tok*d+e] - teacher[tok*d+e]
			out[i] += diff * diff
		}
		out[i] /= float64(d)
	}
	return out
}
