package fit

import (
	"math"
	"slices"
	"testing"
)

func TestPixelAUROCByHand(t *testing.T) {
	for _, c := range []struct {
		scores []float32
		want   float64
	}{
		{[]float32{0.9, 0.1, 0.4, 0.8}, 1},   // both defect pixels above both normal ones
		{[]float32{0.9, 0.5, 0.6, 0.2}, 0.5}, // 2 of the 4 pairs ordered right
	} {
		got, err := PixelAUROC([]PixelMap{{W: 2, H: 2, Scores: c.scores, Mask: []bool{true, false, false, true}}})
		if err != nil || math.Abs(got-c.want) > 1e-12 {
			t.Errorf("scores %v: pixel AUROC %g (%v), want %g", c.scores, got, err, c.want)
		}
	}
}

// A 6x1 image with two defect regions (pixels 0-1 and 5) and three normal
// pixels; the sweep by hand: 0.9 (region A) PRO 0.25, 0.8 (B) 0.75, 0.7
// (normal) FPR 1/3, 0.5 (A) PRO 1, 0.3 and 0.1 (normal) FPR 2/3 and 1. Up to
// FPR 1: 0.25 + 1/3 + 1/3 = 0.9167; up to 0.5: (0.25 + 1/6)/0.5 = 0.8333.
func TestAUPROByHand(t *testing.T) {
	m := []PixelMap{{W: 6, H: 1, Scores: []float32{0.9, 0.5, 0.7, 0.3, 0.1, 0.8}, Mask: []bool{true, true, false, false, false, true}}}
	for _, c := range []struct{ limit, want float64 }{{1, 0.25 + 2.0/3}, {0.5, (0.25 + 1.0/6) / 0.5}} {
		if got, err := AUPRO(m, c.limit); err != nil || math.Abs(got-c.want) > 1e-12 {
			t.Errorf("limit %g: AUPRO %g (%v), want %g", c.limit, got, err, c.want)
		}
	}
	// Splitting the image in two changes nothing: regions and normal
	// pixels pool over images.
	split := []PixelMap{
		{W: 3, H: 1, Scores: []float32{0.9, 0.5, 0.7}, Mask: []bool{true, true, false}},
		{W: 3, H: 1, Scores: []float32{0.3, 0.1, 0.8}, Mask: []bool{false, false, true}},
	}
	if got, _ := AUPRO(split, 1); math.Abs(got-(0.25+2.0/3)) > 1e-12 {
		t.Errorf("the same pixels in two images: AUPRO %g", got)
	}
	if _, err := AUPRO([]PixelMap{{W: 2, H: 1, Scores: []float32{1, 2}, Mask: []bool{false, false}}}, 0.3); err == nil {
		t.Error("AUPRO without a defect region gave no error")
	}
}

// Regions are 8-connected: a diagonal pair is one region.
func TestComponentsAreEightConnected(t *testing.T) {
	_, sizes := components([]bool{true, false, false, true}, 2, 2)
	if !slices.Equal(sizes, []int{2}) {
		t.Errorf("diagonal pair: regions of sizes %v, want one of 2", sizes)
	}
	_, sizes = components([]bool{true, false, true, false, false, false, true, true, false}, 3, 3)
	if !slices.Equal(sizes, []int{1, 1, 2}) {
		t.Errorf("corners and a bottom pair: regions of sizes %v, want 1, 1 and 2", sizes)
	}
	_, sizes = components([]bool{true, false, true, false, true, false, true, true, false}, 3, 3)
	if !slices.Equal(sizes, []int{5}) {
		t.Errorf("an X joined at the centre: regions of sizes %v, want one of 5", sizes)
	}
}
