package daemon

import (
	"math"
	"math/rand/v2"
	"testing"
)

// The window holds the last DriftWindow verdicts (counted by brute force
// over the whole history), and flags drift only when the share is over
// the promise beyond chance.
func TestRecentVerdictsKeepTheLastWindow(t *testing.T) {
	var r recentVerdicts
	rng := rand.New(rand.NewPCG(1, 2))
	var history []bool
	for i := range 3 * DriftWindow {
		over := rng.Float64() < 0.01
		if i > 2*DriftWindow {
			over = rng.Float64() < 0.2 // the normal moved
		}
		r.add(over)
		history = append(history, over)
		start := max(0, len(history)-DriftWindow)
		n := 0
		for _, h := range history[start:] {
			if h {
				n++
			}
		}
		d := r.drift(0.005, 0.018)
		if d.Frames != len(history)-start || math.Abs(d.Share-float64(n)/float64(d.Frames)) > 1e-12 {
			t.Fatalf("after %d frames: share %g of %d, brute force %d of %d", i+1, d.Share, d.Frames, n, len(history)-start)
		}
		if i == 2*DriftWindow && d.Drifted {
			t.Errorf("drift flagged at %.1f%% over the threshold, promised 0.5%%", 100*d.Share)
		}
	}
	if d := r.drift(0.005, 0.018); !d.Drifted {
		t.Errorf("no drift flagged at %.1f%% over the threshold, promised 0.5%%", 100*d.Share)
	}
	if d := r.drift(math.NaN(), math.NaN()); d.Drifted {
		t.Error("drift flagged without a promise")
	}
}
