package mqtt

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

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

// FuzzQueuedMessage: whatever a queue file holds, the queue hands out only
// messages the broker can take, and sets the rest aside.
func FuzzQueuedMessage(f *testing.F) {
	f.Add([]byte(`{"topic":"transformaly/cam/event","qos":1,"payload":{"id":"a"}}`))
	f.Add([]byte(`{"topic":"transformaly/#","qos":1,"payload":{}}`))
	f.Add([]byte(`{"topic":"t","qos":3,"payload":{}}`))
	f.Add([]byte(`{"topic":"t\u0000","qos":0,"payload":null}`))
	f.Add([]byte(`{broken`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "00000000000000000001.msg"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		q, err := OpenQueue(dir, 10, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		m, ok, err := q.Peek()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			if err := m.sendable(); err != nil {
				t.Errorf("handed out an unsendable message: %v", err)
			}
		} else if q.Rejected() != 1 {
			t.Errorf("message neither handed out nor set aside")
		}
	})
}
