package fit

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
)

// PixelMap is one test image's anomaly map and ground-truth mask, of the
// same W x H, row by row.
type PixelMap struct {
	W, H   int
	Scores []float32
	Mask   []bool // true: defect
}

func (p PixelMap) check() error {
	if p.W <= 0 || p.H <= 0 || len(p.Scores) != p.W*p.H || len(p.Mask) != p.W*p.H {
		return fmt.Errorf("a %dx%d map with %d scores and %d mask pixels", p.W, p.H, len(p.Scores), len(p.Mask))
	}
	return nil
}

// ErrNoDefectPixels says the masks mark no defect (or no normal) pixel.
var ErrNoDefectPixels = errors.New("the masks mark no defect pixel, or no normal one")

// PixelAUROC is the AUROC of every pixel's score, defect pixels against the
// rest, over all the images.
func PixelAUROC(maps []PixelMap) (float64, error) {
	var normal, defect []float64
	for _, m := range maps {
		if err := m.check(); err != nil {
			return 0, err
		}
		for i, s := range m.Scores {
			if m.Mask[i] {
				defect = append(defect, float64(s))
			} else {
				normal = append(normal, float64(s))
			}
		}
	}
	if len(normal) == 0 || len(defect) == 0 {
		return 0, fmt.Errorf("pixel AUROC: %w", ErrNoDefectPixels)
	}
	return AUROC(normal, defect), nil
}

// AUPRO is the area under the per-region-overlap curve up to a false
// positive rate of fprLimit, divided by fprLimit (Bergmann et al., MVTec AD):
// for each threshold, PRO is the mean over every connected defect region
// (8-connected, of every image) of the share of its pixels above the
// threshold, and the false positive rate is the share of all normal pixels
// above it. Unlike pixel AUROC it weighs a small defect like a large one.
// By hand: no library here has it. Exact: one sweep down the sorted pixels,
// the curve integrated with the trapezoidal rule, interpolated at fprLimit.
func AUPRO(maps []PixelMap, fprLimit float64) (float64, error) {
	type pixel struct {
		score  float32
		region int // -1: normal
	}
	var pixels []pixel
	var regionSize []int
	normal := 0
	for _, m := range maps {
		if err := m.check(); err != nil {
			return 0, err
		}
		labels, sizes := components(m.Mask, m.W, m.H)
		base := len(regionSize)
		regionSize = append(regionSize, sizes...)
		for i, s := range m.Scores {
			r := -1
			if labels[i] >= 0 {
				r = base + labels[i]
			} else {
				normal++
			}
			pixels = append(pixels, pixel{s, r})
		}
	}
	if normal == 0 || len(regionSize) == 0 {
		return 0, fmt.Errorf("AUPRO: %w", ErrNoDefectPixels)
	}
	slices.SortFunc(pixels, func(a, b pixel) int { return cmp.Compare(b.score, a.score) })
	regions := float64(len(regionSize))
	area, fpr0, pro0 := 0.0, 0.0, 0.0 // the curve starts at (0, 0): nothing above the threshold
	falsePos, pro := 0, 0.0
	for i := 0; i < len(pixels); {
		// Every pixel of the same score passes the threshold together.
		j := i
		for ; j < len(pixels) && pixels[j].score == pixels[i].score; j++ {
			if r := pixels[j].region; r >= 0 {
				pro += 1 / float64(regionSize[r]) / regions
			} else {
				falsePos++
			}
		}
		i = j
		fpr := float64(falsePos) / float64(normal)
		if fpr >= fprLimit {
			proLimit := pro0 + (pro-pro0)*(fprLimit-fpr0)/(fpr-fpr0)
			area += (fprLimit - fpr0) * (pro0 + proLimit) / 2
			return area / fprLimit, nil
		}
		area += (fpr - fpr0) * (pro0 + pro) / 2
		fpr0, pro0 = fpr, pro
	}
	return area / fprLimit, nil // not reached: the last point has a false positive rate of 1
}

// components labels the 8-connected regions of a mask: each pixel's region
// (-1 outside every one) and each region's size.
func components(mask []bool, w, h int) (labels []int, sizes []int) {
	labels = make([]int, len(mask))
	for i := range labels {
		labels[i] = -1
	}
	var stack []int
	for start, on := range mask {
		if !on || labels[start] >= 0 {
			continue
		}
		label := len(sizes)
		sizes = append(sizes, 0)
		labels[start] = label
		stack = append(stack[:0], start)
		for len(stack) > 0 {
			p := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			sizes[label]++
			x, y := p%w, p/w
			for dy := -1; dy <= 1; dy++ {
				for dx := -1; dx <= 1; dx++ {
					nx, ny := x+dx, y+dy
					if nx < 0 || ny < 0 || nx >= w || ny >= h {
						continue
					}
					if q := ny*w + nx; mask[q] && labels[q] < 0 {
						labels[q] = label
						stack = append(stack, q)
					}
				}
			}
		}
	}
	return labels, sizes
}
