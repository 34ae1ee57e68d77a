package fit

import (
	"math"
	"math/rand/v2"
	"testing"
)

// adam follows torch.optim.Adam's update, written out here in float64 from
// its documentation, over several steps and tensors of awkward lengths
// (split across cores in chunks).
func TestAdamMatchesTorchUpdate(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	sizes := []int{1, 1000, 1<<16 + 7, 3}
	const lr, steps = 1e-3, 5
	var params, grads, m, v [][]float32
	var ref, refM, refV [][]float64
	for _, n := range sizes {
		p := make([]float32, n)
		r := make([]float64, n)
		for j := range p {
			p[j] = float32(rng.NormFloat64())
			r[j] = float64(p[j])
		}
		params, ref = append(params, p), append(ref, r)
		grads = append(grads, make([]float32, n))
		m, v = append(m, make([]float32, n)), append(v, make([]float32, n))
		refM, refV = append(refM, make([]float64, n)), append(refV, make([]float64, n))
	}
	for step := 1; step <= steps; step++ {
		for i := range grads {
			for j := range grads[i] {
				grads[i][j] = float32(rng.NormFloat64() * math.Pow(10, float64(rng.IntN(5)-3)))
			}
		}
		adam(params, grads, m, v, step, lr)
		for i := range ref {
			for j := range ref[i] {
				g := float64(grads[i][j])
				refM[i][j] = 0.9*refM[i][j] + 0.1*g
				refV[i][j] = 0.999*refV[i][j] + 0.001*g*g
				mHat := refM[i][j] / (1 - math.Pow(0.9, float64(step)))
				vHat := refV[i][j] / (1 - math.Pow(0.999, float64(step)))
				ref[i][j] -= lr * mHat / (math.Sqrt(vHat) + 1e-8)
			}
		}
	}
	worst := 0.0
	for i := range ref {
		for j := range ref[i] {
			worst = math.Max(worst, math.Abs(float64(params[i][j])-ref[i][j]))
		}
	}
	// Each step moves a parameter by about lr; float32 keeps ~1e-7 of it.
	if worst > 1e-6 {
		t.Errorf("after %d steps a parameter is %.3g away from the float64 reference", steps, worst)
	}
}

// BenchmarkAdam updates a ViT-B/16's ten student blocks (71M parameters),
// what a GPU training step waits for on the host.
func BenchmarkAdam(b *testing.B) {
	const block = 7087872 // 12*768^2 + 13*768 parameters
	var params, grads, m, v [][]float32
	for range 10 {
		params = append(params, make([]float32, block))
		grads = append(grads, make([]float32, block))
		m, v = append(m, make([]float32, block)), append(v, make([]float32, block))
	}
	for i := range grads {
		for j := range grads[i] {
			grads[i][j] = float32(j%7) * 1e-3
		}
	}
	adam(params, grads, m, v, 1, 1e-4) // first touch of the moments' pages
	b.ResetTimer()
	for i := range b.N {
		adam(params, grads, m, v, i+2, 1e-4)
	}
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N)*1e3, "ms/update")
}
