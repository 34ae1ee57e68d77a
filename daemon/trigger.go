package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"time"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/detector"
)

// Part verdicts.
const (
	VerdictOK    = "ok"
	VerdictNG    = "ng"
	VerdictError = "error" // not judged in time, or not judgeable: the line rejects the part
)

// PartResult is the payload of <prefix>/<camera>/result: one triggered
// part's verdict.
type PartResult struct {
	Camera      string    `json:"camera"`
	PartID      string    `json:"part_id"`
	Verdict     string    `json:"verdict"`
	Reason      string    `json:"reason,omitempty"` // with error
	Score       *float64  `json:"score,omitempty"`  // the worst frame's
	Threshold   float64   `json:"threshold"`
	Region      *Region   `json:"region,omitempty"`
	Frames      int       `json:"frames"`          // scored for this part
	Frame       uint64    `json:"frame,omitempty"` // the worst one's number (the camera's count)
	TriggerTime time.Time `json:"trigger_time"`
	ResultTime  time.Time `json:"result_time"`
	LatencyMS   float64   `json:"latency_ms"`
}

// maxPendingParts bounds the triggers waiting for frames on one camera.
const maxPendingParts = 64

// errTriggerQueueFull refuses a trigger past maxPendingParts.
var errTriggerQueueFull = errors.New("too many parts waiting for frames")

// partRequest is one trigger in progress.
type partRequest struct {
	result   PartResult
	from     time.Time // frames captured at or after it count
	assigned int       // frames handed to the detector
	worst    float64
	image    *partImage // the worst frame's, when NG images are kept
	timer    *time.Timer
}

// triggers turns a triggered camera's frames into part results: each
// trigger takes the next Frames frames captured Delay after it, in order.
type triggers struct {
	cfg     TriggerConfig
	publish func(PartResult, *partImage)

	mu      sync.Mutex
	pending []*partRequest
	bySeq   map[uint64]*partRequest
	counter uint64
}

func newTriggers(cfg TriggerConfig, publish func(PartResult, *partImage)) *triggers {
	return &triggers{cfg: cfg.withDefaults(), publish: publish, bySeq: map[uint64]*partRequest{}}
}

// trigger starts a part (id "" takes the next count) and returns its id.
func (t *triggers) trigger(camera, id string, at time.Time) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.pending) >= maxPendingParts {
		return "", errTriggerQueueFull
	}
	t.counter++
	if id == "" {
		id = strconv.FormatUint(t.counter, 10)
	}
	req := &partRequest{result: PartResult{Camera: camera, PartID: id, TriggerTime: at.UTC()}, from: at.Add(*t.cfg.Delay), worst: math.Inf(-1)}
	req.timer = time.AfterFunc(*t.cfg.Deadline, func() { t.expire(req) })
	t.pending = append(t.pending, req)
	return id, nil
}

// wants says whether a frame captured at the given time goes to the
// detector for a part, and records which.
func (t *triggers) wants(seq uint64, captured time.Time) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, req := range t.pending {
		if req.assigned < t.cfg.Frames {
			if captured.Before(req.from) {
				return false
			}
			req.assigned++
			t.bySeq[seq] = req
			return true
		}
	}
	return false
}

// unassign gives back a frame that was replaced before it was scored: the
// part waits for another.
func (t *triggers) unassign(seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if req, ok := t.bySeq[seq]; ok {
		delete(t.bySeq, seq)
		req.assigned--
	}
}

// scored takes a frame's result; the part's last frame publishes it.
// evidence (nil: none wanted) copies the frame and its map when the frame
// is the part's worst so far.
func (t *triggers) scored(seq uint64, r detector.Result, threshold float64, region *Region, fault string, evidence func() *partImage) {
	t.mu.Lock()
	req, ok := t.bySeq[seq]
	if !ok {
		t.mu.Unlock()
		return
	}
	delete(t.bySeq, seq)
	req.result.Frames++
	req.result.Threshold = threshold
	switch {
	case fault != "":
		req.result.Verdict, req.result.Reason = VerdictError, fault
	case r.Score > req.worst:
		req.worst, req.result.Region, req.result.Frame = r.Score, region, seq
		if evidence != nil {
			req.image = evidence()
		}
	}
	if req.result.Frames < t.cfg.Frames {
		t.mu.Unlock()
		return
	}
	t.remove(req)
	t.mu.Unlock()
	req.timer.Stop()
	if req.result.Verdict == "" {
		req.result.Score = detector.NumberOrNull(req.worst)
		req.result.Verdict = VerdictOK
		if req.worst > threshold {
			req.result.Verdict = VerdictNG
		}
	}
	t.finish(req)
}

// expire answers a part its frames did not reach in time.
func (t *triggers) expire(req *partRequest) {
	t.mu.Lock()
	if !t.remove(req) {
		t.mu.Unlock()
		return // answered meanwhile
	}
	for seq, r := range t.bySeq {
		if r == req {
			delete(t.bySeq, seq)
		}
	}
	t.mu.Unlock()
	req.result.Verdict = VerdictError
	req.result.Reason = fmt.Sprintf("deadline: %d of %d frames scored within %s", req.result.Frames, t.cfg.Frames, *t.cfg.Deadline)
	req.result.Score, req.result.Region, req.result.Frame, req.image = nil, nil, 0, nil
	t.finish(req)
}

// remove takes a part off the pending list; false if it was not on it.
func (t *triggers) remove(req *partRequest) bool {
	for i, r := range t.pending {
		if r == req {
			t.pending = append(t.pending[:i], t.pending[i+1:]...)
			return true
		}
	}
	return false
}

// refuse answers a part at once with an error: the camera cannot judge
// it (see notReady).
func (t *triggers) refuse(camera, id string, at time.Time, reason string) string {
	t.mu.Lock()
	t.counter++
	if id == "" {
		id = strconv.FormatUint(t.counter, 10)
	}
	t.mu.Unlock()
	t.finish(&partRequest{result: PartResult{Camera: camera, PartID: id, TriggerTime: at.UTC(), Verdict: VerdictError, Reason: reason}})
	return id
}

// Ready windows: see TriggerConfig.ReadyWindow.
const (
	readyIntervals        = 3
	minReadyWindow        = 500 * time.Millisecond
	unmeasuredReadyWindow = time.Second
)

// readyWindow is how old the last frame may be for the camera to be Ready.
func (t *triggers) readyWindow(fps float64) time.Duration {
	switch {
	case t.cfg.ReadyWindow != nil:
		return *t.cfg.ReadyWindow
	case fps <= 0:
		return unmeasuredReadyWindow
	}
	return max(minReadyWindow, time.Duration(readyIntervals*float64(time.Second)/fps))
}

// notReady says why a triggered camera cannot judge a part now ("": it
// can). It is Ready while detection is on and frames arrive, the last one
// within the ready window: the stall timeout, which recreates the capture,
// is far longer (20 s), and a part triggered in between waited out its
// deadline for frames that were not coming.
func (c *cameraRuntime) notReady(detect bool, now time.Time) string {
	st := c.cam.Status()
	switch {
	case !detect:
		return "not ready: detect is OFF"
	case st.State != capture.StateOnline:
		return fmt.Sprintf("not ready: the camera is %s", st.State)
	}
	if age, window := now.Sub(st.LastFrame), c.trig.readyWindow(st.FPS); age > window {
		return fmt.Sprintf("not ready: no frame for %s (ready window %s)", age.Round(time.Millisecond), window.Round(time.Millisecond))
	}
	return ""
}

func (t *triggers) finish(req *partRequest) {
	req.result.ResultTime = time.Now().UTC()
	req.result.LatencyMS = float64(req.result.ResultTime.Sub(req.result.TriggerTime).Microseconds()) / 1000
	t.publish(req.result, req.image)
}

// publishResult sends a part result (QoS 1) and logs it; an NG part's
// image goes to the NG folder.
func (p *pipeline) publishResult(r PartResult, img *partImage) {
	b, err := json.Marshal(r)
	if err != nil {
		slog.Error("part result not encoded", "camera", r.Camera, "err", err)
		return
	}
	p.pub.Publish(p.pub.Topic(r.Camera, "result"), 1, false, b)
	if p.results != nil {
		p.results(r)
	}
	id := fmt.Sprintf("%s-%d", r.Camera, r.TriggerTime.UnixNano())
	p.parts.put(id, consolePart(id, r))
	if r.Verdict == VerdictNG && img != nil && p.ngImages != nil {
		var preview func([]byte)
		if p.parts != nil {
			preview = func(jpg []byte) { p.parts.attach(id, jpg) }
		}
		p.ngImages.keep(r, img, preview)
	}
	slog.Info("part result", "camera", r.Camera, "part_id", r.PartID, "verdict", r.Verdict, "reason", r.Reason, "latency_ms", r.LatencyMS)
}

// busy says whether parts wait for their results.
func (t *triggers) busy() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pending) > 0
}
