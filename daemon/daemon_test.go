package daemon

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

func TestQueuePersistsInOrderAndBounds(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "events")
	q, err := OpenQueue(dir, 3, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := q.Push("t", 1, []byte(`{"n":`+string(rune('0'+i))+`}`)); err != nil {
			t.Fatal(err)
		}
	}
	if q.Len() != 3 || q.Dropped() != 2 {
		t.Fatalf("len %d dropped %d, want 3 and 2 (oldest dropped)", q.Len(), q.Dropped())
	}
	// A new process sees the same queue, oldest first.
	q2, err := OpenQueue(dir, 3, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`{"n":2}`, `{"n":3}`, `{"n":4}`} {
		m, ok, err := q2.Peek()
		if err != nil || !ok || string(m.Payload) != want {
			t.Fatalf("peek: %s %v %v, want %s", m.Payload, ok, err, want)
		}
		if err := q2.Remove(m.Seq); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok, _ := q2.Peek(); ok {
		t.Error("queue not empty after removing everything")
	}
	// New messages continue the sequence after a restart.
	q2.Push("t", 1, []byte(`{}`))
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() <= "00000000000000000004.msg" {
		t.Errorf("after restart the queue holds %v", entries)
	}
	// A damaged message is set aside, not stuck.
	os.WriteFile(filepath.Join(dir, entries[0].Name()), []byte("{broken"), 0o644)
	if _, ok, _ := q2.Peek(); ok || q2.Rejected() != 1 || q2.Dropped() != 0 {
		t.Errorf("damaged message: ok=%v rejected=%d dropped=%d", ok, q2.Rejected(), q2.Dropped())
	}
}

// Queued messages the broker would refuse (it dropped the client at every
// try, so no later event of any camera went out) are set aside in
// rejected/, counted, and the good one behind them is sent; temporary
// files a crash left are cleaned at start.
func TestQueueSetsAsideWhatCannotBeSent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "events")
	os.MkdirAll(dir, 0o750)
	bad := []string{
		`{"topic":"transformaly/#","qos":1,"payload":{}}`,
		`{"topic":"","qos":1,"payload":{}}`,
		`{"topic":"transformaly/cam/event","qos":3,"payload":{}}`,
		`{"topic":"transformaly/c\u0000m/event","qos":1,"payload":{}}`,
		`{"topic":"transformaly/cam/event","qos":1,"payload":"` + strings.Repeat("x", 17<<20) + `"}`,
		`not json`,
	}
	for i, b := range bad {
		os.WriteFile(filepath.Join(dir, fmt.Sprintf("%020d.msg", i+1)), []byte(b), 0o644)
	}
	os.WriteFile(filepath.Join(dir, fmt.Sprintf("%020d.msg", len(bad)+1)), []byte(`{"topic":"transformaly/cam/event","qos":1,"payload":{"id":"good"}}`), 0o644)
	leftover := filepath.Join(dir, ".00000000000000000009.msg.tmp-123")
	os.WriteFile(leftover, []byte("half"), 0o644)

	q, err := OpenQueue(dir, 100, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(leftover); !os.IsNotExist(err) {
		t.Error("a temporary file left by a crash is still there")
	}
	m, ok, err := q.Peek()
	if err != nil || !ok || string(m.Payload) != `{"id":"good"}` {
		t.Fatalf("peek: %s %v %v, want the good message", m.Payload, ok, err)
	}
	if q.Rejected() != uint64(len(bad)) {
		t.Errorf("%d rejected, want %d", q.Rejected(), len(bad))
	}
	set, _ := os.ReadDir(filepath.Join(dir, rejectedDir))
	if len(set) != len(bad) {
		t.Errorf("%d files in rejected/, want %d", len(set), len(bad))
	}
	if q.Len() != 1 {
		t.Errorf("queue length %d, want 1", q.Len())
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

// Snapshots queue behind their events and past their byte bound the
// oldest snapshot goes, never an event; a restart knows which files are
// snapshots.
func TestQueueBoundsSnapshotsByBytes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "events")
	q, err := OpenQueue(dir, 100, 3000)
	if err != nil {
		t.Fatal(err)
	}
	jpg := make([]byte, 900) // about 1,200 bytes queued (base64)
	for i := range 3 {
		if err := q.Push("t/cam/event", 1, []byte(fmt.Sprintf(`{"n":%d}`, i))); err != nil {
			t.Fatal(err)
		}
		jpg[0] = byte(i)
		if err := q.PushSnapshot("t/cam/snapshot", jpg); err != nil {
			t.Fatal(err)
		}
	}
	if q.Len() != 5 || q.SnapshotsDropped() != 1 || q.Dropped() != 0 {
		t.Fatalf("len %d, snapshots dropped %d, events dropped %d; want 5, 1, 0", q.Len(), q.SnapshotsDropped(), q.Dropped())
	}
	q2, err := OpenQueue(dir, 100, 3000)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		m, ok, err := q2.Peek()
		if err != nil || !ok {
			break
		}
		if m.Data != nil {
			if !m.Retained || m.QoS != 1 {
				t.Errorf("snapshot queued with retained %v QoS %d", m.Retained, m.QoS)
			}
			got = append(got, fmt.Sprintf("snap%d", m.Data[0]))
		} else {
			got = append(got, string(m.Payload))
		}
		q2.Remove(m.Seq)
	}
	want := []string{`{"n":0}`, `{"n":1}`, "snap1", `{"n":2}`, "snap2"}
	if !slices.Equal(got, want) {
		t.Errorf("after a restart the queue held %v, want %v", got, want)
	}
}
