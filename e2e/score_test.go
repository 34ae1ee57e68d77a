package e2e

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// score on a recording scores every frame in order, placed in seconds by
// the file's frame rate, and the defective parts stand out.
func TestScoreVideoScoresEveryFrame(t *testing.T) {
	f := getDaemonFixture(t)
	r := runBinary(t, nil, "score", "--model", f.bundle, "--json", "--batch-size", "5", f.video)
	if r.code != 0 {
		t.Fatalf("score failed: %s", r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	const perPart, parts = 6, 24 // defectVideoKinds at 25 fps
	if len(lines) != perPart*parts {
		t.Fatalf("%d scored frames for a %d-frame video", len(lines), perPart*parts)
	}
	defective := map[int]bool{5: true, 12: true, 19: true}
	var normal, defect []float64
	for i, l := range lines {
		var s struct {
			Frame   int      `json:"frame"`
			Seconds *float64 `json:"seconds"`
			Score   float64  `json:"score"`
		}
		if err := json.Unmarshal([]byte(l), &s); err != nil {
			t.Fatalf("line %d: %v: %s", i, err, l)
		}
		if s.Frame != i+1 || s.Seconds == nil || math.Abs(*s.Seconds-float64(i)/25) > 1e-6 {
			t.Fatalf("line %d is frame %d at %v s, want frame %d at %g s", i, s.Frame, s.Seconds, i+1, float64(i)/25)
		}
		if defective[i/perPart] {
			defect = append(defect, s.Score)
		} else {
			normal = append(normal, s.Score)
		}
	}
	if mean(defect) <= mean(normal) {
		t.Errorf("defective parts' frames score %g on average, normal ones %g", mean(defect), mean(normal))
	}
}

func mean(xs []float64) float64 {
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}
