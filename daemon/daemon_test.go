package daemon

import (
	"encoding/json"
	"math"
	"slices"
	"testing"
	"time"
)

func TestTrackerOneEventPerDefect(t *testing.T) {
	tr := newTracker("cam", EventConfig{MinFrames: 2, EndFrames: 3, UpdateInterval: 0})
	t0 := time.Unix(1000, 0)
	// Frame scores against threshold 10: a lone spike (no event), a defect
	// with a one-frame dip inside it (one event), then quiet.
	scores := []float64{1, 2, 50, 1, 1, 1, 20, 30, 5, 40, 35, 2, 2, 2, 1, 1}
	var got []Event
	for i, s := range scores {
		evs, _ := tr.observe(uint64(i+1), t0.Add(time.Duration(i)*100*time.Millisecond), s, nil, s > 10, 10)
		got = append(got, evs...)
	}
	var types []string
	for _, e := range got {
		types = append(types, e.Type)
	}
	want := []string{"new", "update", "end"} // 40 raises the peak, 35 does not
	if len(types) != len(want) {
		t.Fatalf("events %v, want %v", types, want)
	}
	for i := range want {
		if types[i] != want[i] {
			t.Fatalf("events %v, want %v", types, want)
		}
	}
	end := got[len(got)-1]
	if end.PeakScore != 40 || end.PeakFrame != 10 || end.FramesAbove != 4 || end.ID != got[0].ID {
		t.Errorf("end event %+v: want peak 40 at frame 10, 4 frames above, same id", end)
	}
	if !end.StartTime.Equal(t0.Add(600*time.Millisecond)) || !end.EndTime.Equal(t0.Add(1100*time.Millisecond)) {
		t.Errorf("event from %v to %v", end.StartTime, end.EndTime)
	}
	if evs := tr.flush(t0); evs != nil {
		t.Errorf("flush with nothing open gave %v", evs)
	}
}

func TestTrackerUpdatesAreRateLimitedAndFlushCloses(t *testing.T) {
	tr := newTracker("cam", EventConfig{MinFrames: 1, EndFrames: 2, UpdateInterval: time.Second})
	t0 := time.Unix(0, 0)
	n := 0
	for i := range 30 { // a rising peak every 100 ms for 3 s
		evs, _ := tr.observe(uint64(i), t0.Add(time.Duration(i)*100*time.Millisecond), float64(20+i), nil, float64(20+i) > 10, 10)
		for _, e := range evs {
			if e.Type == EventUpdate {
				n++
			}
		}
	}
	if n < 2 || n > 3 {
		t.Errorf("%d updates in 3 s at one per second", n)
	}
	evs := tr.flush(t0.Add(5 * time.Second))
	if len(evs) != 1 || evs[0].Type != EventEnd || evs[0].PeakScore != 49 {
		t.Errorf("flush: %+v", evs)
	}
}

func TestWindowPercentiles(t *testing.T) {
	w := newWindow(100)
	for i := range 250 { // only the last 100 (150..249) count
		w.add(float64(i))
	}
	p := w.percentiles(0, 0.5, 0.99)
	if p[0] != 150 || p[1] != 200 || p[2] != 249 {
		t.Errorf("percentiles %v", p)
	}
}

// Non-finite scores count as above the threshold but never become the
// peak: the peak keeps its last finite value (the threshold until there is
// one), so every event encodes as JSON (one peaking at +Inf never went out).
func TestTrackerKeepsAFinitePeak(t *testing.T) {
	tr := newTracker("cam", EventConfig{MinFrames: 2, EndFrames: 1, UpdateInterval: 0})
	t0 := time.Now()
	var all []Event
	for i, s := range []float64{math.NaN(), math.Inf(1), 30, math.Inf(1), 40, 5} {
		evs, _ := tr.observe(uint64(i+1), t0.Add(time.Duration(i)*time.Second), s, nil, !(s <= 10), 10)
		all = append(all, evs...)
	}
	var peaks []float64
	for _, e := range all {
		if _, err := json.Marshal(e); err != nil {
			t.Errorf("event %s does not encode: %v", e.Type, err)
		}
		peaks = append(peaks, e.PeakScore)
	}
	// new at the Inf frame (peak: the threshold), updates at 30 and 40, end.
	if want := []float64{10, 30, 40, 40}; !slices.Equal(peaks, want) {
		t.Errorf("peaks %v, want %v", peaks, want)
	}
}
