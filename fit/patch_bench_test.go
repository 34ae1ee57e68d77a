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
// then every image's out-of-sample distances.
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
					owner := make([]int, m)
					for j, p := range picked {
						bank = append(bank, feats[p*width:(p+1)*width]...)
						owner[j] = p / perImage
					}
					start = time.Now()
					products, closeProducts, err := (&Options{}).bankProducts(bank, m, width)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := outOfSampleDistances(feats, width, perImage, bank, owner, nil, products); err != nil {
						b.Fatal(err)
					}
					closeProducts()
					b.ReportMetric(time.Since(start).Seconds(), "distances-s")
				}
			})
		}
	}
}
