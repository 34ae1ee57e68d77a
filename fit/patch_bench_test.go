package fit

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// BenchmarkPatchBank times the patch memory bank's part of a fit for 500
// images at 224 with patch 16 (98,000 patches, random features of ViT-S
// and ViT-B width): the random projection and greedy coreset of 1% and 10%,
// then every patch's distance to the bank (a calibration fold's banks
// choose as many from (k-1)/k of the patches, and take these distances
// for the other 1/k).
func BenchmarkPatchBank(b *testing.B) {
	const images, perImage = 500, 196
	for _, width := range []int{384, 768} {
		rng := rand.New(rand.NewPCG(1, uint64(width)))
		feats := make([]float32, images*perImage*width)
		for i := range feats {
			feats[i] = float32(rng.NormFloat64())
		}
		for _, coreset := range []float64{0.01, 0.1} {
			m := int(coreset * images * perImage)
			b.Run(fmt.Sprintf("width%d/coreset%g%%", width, 100*coreset), func(b *testing.B) {
				for b.Loop() {
					start := time.Now()
					picked := greedyCoreset(context.Background(), projectRandomly(feats, width, patchProjection, 1), min(width, patchProjection), m, 1)
					b.ReportMetric(time.Since(start).Seconds(), "coreset-s")
					bank := make([]float32, 0, m*width)
					for _, p := range picked {
						bank = append(bank, feats[p*width:(p+1)*width]...)
					}
					start = time.Now()
					if _, err := (&Options{}).nearestDistances(feats, bank, m, width); err != nil {
						b.Fatal(err)
					}
					b.ReportMetric(time.Since(start).Seconds(), "distances-s")
				}
			})
		}
	}
}
