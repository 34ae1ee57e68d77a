package daemon

import (
	"math"
	"sync"

	"gonum.org/v1/gonum/stat/distuv"
)

// DriftWindow is how many of a camera's latest scored frames the share
// over the threshold is taken over: 500 frames are 20 s at 25 fps, and
// hold 2.5 false alarms at a promise of 0.5%, so a share of 2% stands out
// of chance within a window.
const DriftWindow = 500

// recentVerdicts keeps whether each of a camera's last DriftWindow scored
// frames was over its threshold: a line sees what share of its frames
// are flagged now, beside the share the bundle's calibration promised for
// normal parts. A normal that has moved (a new lamp, a new supplier) shows
// there before operators stop trusting the alarms.
type recentVerdicts struct {
	mu     sync.Mutex
	ring   [DriftWindow]bool
	next   int
	frames int // filled, up to DriftWindow
	over   int
}

func (r *recentVerdicts) add(over bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.frames == DriftWindow {
		if r.ring[r.next] {
			r.over--
		}
	} else {
		r.frames++
	}
	r.ring[r.next] = over
	if over {
		r.over++
	}
	r.next = (r.next + 1) % DriftWindow
}

// Drift is a camera's recent share of frames over its threshold against
// the promise.
type Drift struct {
	// Share of the last Frames scored frames over the threshold (defects
	// included: on a line with few defects, it is the false alarms').
	Share  float64
	Frames int
	// Promised is the share of normal frames the bundle's calibration
	// expects over the threshold in use (NaN without a calibration).
	Promised float64
	// Drifted: the share is above the promise beyond chance (the lower end
	// of the share's 99% interval is over the promise's 95% upper bound),
	// with at least 100 frames seen.
	Drifted bool
}

// drift reads the window against promised (a rate) and its 95% upper
// bound promisedHigh.
func (r *recentVerdicts) drift(promised, promisedHigh float64) Drift {
	r.mu.Lock()
	over, n := r.over, r.frames
	r.mu.Unlock()
	d := Drift{Frames: n, Promised: promised}
	if n == 0 {
		return d
	}
	d.Share = float64(over) / float64(n)
	if over > 0 && n >= 100 && !math.IsNaN(promisedHigh) {
		// Clopper-Pearson's lower end: the Beta(k, n-k+1) quantile.
		low := distuv.Beta{Alpha: float64(over), Beta: float64(n - over + 1)}.Quantile(0.005)
		d.Drifted = low > promisedHigh
	}
	return d
}

// driftOf reads camera c's recent verdicts against the promise at the
// threshold in use: the share of normal frames the bundle's calibration
// expects over it (its own threshold's promise, or the calibration
// scores' share above a threshold set by hand), and that promise's 95%
// upper bound, scaled with it.
func (p *pipeline) driftOf(c *cameraRuntime) Drift {
	threshold := c.threshold
	if t, ok := p.control.Threshold(c.cfg.Name); ok {
		threshold = t
	}
	promised, high := math.NaN(), math.NaN()
	if cal := c.model.det.Info.Calibration; cal.Images > 0 && c.normalQuantile != nil {
		promised = 1 - c.normalQuantile(threshold)
		high = cal.FalseAlarms95[1]
		if e := cal.ExpectedFalseAlarms; e > 0 {
			high *= promised / e
		}
	}
	return c.recent.drift(promised, high)
}
