package daemon

import (
	"fmt"
	"math"
	"time"
)

// Event types, as Frigate names them.
const (
	EventNew    = "new"
	EventUpdate = "update"
	EventEnd    = "end"
)

// Event is the payload of <prefix>/<camera>/event.
type Event struct {
	Type        string     `json:"type"`
	ID          string     `json:"id"`
	Camera      string     `json:"camera"`
	StartTime   time.Time  `json:"start_time"`
	EndTime     *time.Time `json:"end_time,omitempty"`
	PeakScore   float64    `json:"peak_score"`
	PeakFrame   uint64     `json:"peak_frame"`
	PeakTime    time.Time  `json:"peak_time"`
	FramesAbove int        `json:"frames_above"`
	Threshold   float64    `json:"threshold"`
	// Region is the peak frame's worst region (bundles with a patch
	// feature space only).
	Region *Region `json:"region,omitempty"`
}

// Region is a box in the camera frame's coordinates after crop and
// rotation: where a frame is most unlike normal ones.
type Region struct {
	X      int `json:"x"`
	Y      int `json:"y"`
	Width  int `json:"width"`
	Height int `json:"height"`
}

// tracker turns one camera's per-frame verdicts into events: MinFrames
// above the threshold in a row open one (so a single noisy frame does not),
// EndFrames below in a row close it (so a flicker below does not split one
// defect into two), and a rising peak is reported at most every
// UpdateInterval.
type tracker struct {
	cfg    EventConfig
	camera string

	above, below int
	candidate    Event // the run of frames above, before it becomes an event
	active       *Event
	firstBelow   time.Time
	lastUpdate   time.Time
	peakPending  bool
	count        int
}

func newTracker(camera string, cfg EventConfig) *tracker {
	return &tracker{camera: camera, cfg: cfg}
}

// observe takes one scored frame, anomalous or not, and returns the events
// to publish, and whether this frame is the (possibly pending) event's new
// peak. An anomalous frame whose score is not finite counts as above the
// threshold but never becomes the peak score (JSON cannot carry it; an
// event peaking at +Inf was never published): the peak keeps its last
// finite value, or the threshold when there is none yet. region is the
// frame's worst region (nil without one).
func (t *tracker) observe(seq uint64, at time.Time, score float64, region *Region, anomalous bool, threshold float64) (events []Event, newPeak bool) {
	if math.IsNaN(score) || math.IsInf(score, 0) {
		score = threshold
	}
	if anomalous {
		t.below = 0
		t.above++
		if t.active == nil {
			if t.above == 1 || score > t.candidate.PeakScore {
				if t.above == 1 {
					t.candidate = Event{Camera: t.camera, StartTime: at, Threshold: threshold}
				}
				t.candidate.PeakScore, t.candidate.PeakFrame, t.candidate.PeakTime, t.candidate.Region = score, seq, at, region
				newPeak = true
			}
			t.candidate.FramesAbove = t.above
			if t.above >= t.cfg.MinFrames {
				t.count++
				e := t.candidate
				e.Type = EventNew
				e.ID = fmt.Sprintf("%s-%s-%d", t.camera, e.StartTime.UTC().Format("20060102T150405.000Z"), t.count)
				t.active = &e
				t.lastUpdate = at
				events = append(events, e)
			}
			return events, newPeak
		}
		t.active.FramesAbove++
		if score > t.active.PeakScore {
			t.active.PeakScore, t.active.PeakFrame, t.active.PeakTime, t.active.Region = score, seq, at, region
			t.peakPending, newPeak = true, true
		}
		if t.peakPending && at.Sub(t.lastUpdate) >= t.cfg.UpdateInterval {
			t.peakPending, t.lastUpdate = false, at
			e := *t.active
			e.Type = EventUpdate
			events = append(events, e)
		}
		return events, newPeak
	}
	t.above = 0
	if t.active == nil {
		return nil, false
	}
	if t.below == 0 {
		t.firstBelow = at
	}
	t.below++
	if t.below >= t.cfg.EndFrames {
		events = append(events, t.close(t.firstBelow))
	}
	return events, false
}

// close ends the active event at the given time.
func (t *tracker) close(at time.Time) Event {
	e := *t.active
	e.Type = EventEnd
	end := at
	e.EndTime = &end
	t.active, t.below, t.peakPending = nil, 0, false
	return e
}

// flush ends an open event (on shutdown or when the camera goes away).
func (t *tracker) flush(at time.Time) []Event {
	if t.active == nil {
		return nil
	}
	return []Event{t.close(at)}
}
