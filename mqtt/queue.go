package mqtt

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/transformaly/transformaly/internal/atomicfile"
)

// Queue is the persistent, bounded, ordered queue of messages that must not
// be lost (events): one file per message in a directory, written
// atomically, removed once the broker acknowledged it. It survives broker
// outages and daemon restarts.
type Queue struct {
	dir   string
	limit int // events
	// snapshotLimit bounds the bytes of queued snapshots: past it the
	// oldest snapshot goes (never an event).
	snapshotLimit int64

	mu       sync.Mutex
	seqs     []uint64 // queued, ascending
	next     uint64
	dropped  uint64
	rejected uint64
	notify   chan struct{}
	// snapshots are the queued snapshot messages and their file sizes.
	snapshots        map[uint64]int64
	snapshotBytes    int64
	snapshotsDropped uint64
}

// QueuedMessage is one stored message: an event (JSON Payload) or a
// snapshot (binary Data, retained).
type QueuedMessage struct {
	Seq      uint64          `json:"-"`
	Topic    string          `json:"topic"`
	QoS      byte            `json:"qos"`
	Retained bool            `json:"retained,omitempty"`
	Payload  json.RawMessage `json:"payload,omitempty"`
	Data     []byte          `json:"data,omitempty"`
}

// Body is what goes to the broker.
func (m QueuedMessage) Body() []byte {
	if m.Data != nil {
		return m.Data
	}
	return m.Payload
}

// queueExt ends every queued file; snapshots end in snapshotExt (a file
// name tells the kind, so a restart knows which files the byte bound
// covers).
const (
	queueExt    = ".msg"
	snapshotExt = ".snapshot" + queueExt
)

// rejectedDir is the queue's subfolder for messages that cannot be sent:
// kept for a person to look at, out of the way of those after them.
const rejectedDir = "rejected"

// maxQueuedPayload bounds a queued message (events are a few hundred
// bytes, snapshot JPEGs a few hundred kilobytes); a bigger file is no
// message of ours.
const maxQueuedPayload = 16 << 20

// sendable says why a queued message cannot be published, if it cannot:
// one the broker refuses (a wildcard or empty topic, QoS 3) made it drop
// the client at every try, and no later event of any camera went out.
func (m QueuedMessage) sendable() error {
	switch {
	case m.Topic == "" || len(m.Topic) > 65535:
		return fmt.Errorf("topic of %d bytes (1 to 65535)", len(m.Topic))
	case strings.ContainsAny(m.Topic, "+#\x00") || !utf8.ValidString(m.Topic):
		return fmt.Errorf("topic %q is not one a message can be published to (wildcards, NUL or invalid UTF-8)", m.Topic)
	case m.QoS > 2:
		return fmt.Errorf("QoS %d (0 to 2)", m.QoS)
	case len(m.Body()) == 0 || len(m.Body()) > maxQueuedPayload:
		return fmt.Errorf("payload of %d bytes (1 to %d)", len(m.Body()), maxQueuedPayload)
	}
	return nil
}

// OpenQueue opens (creating) the queue in dir, keeping what an earlier run
// left there: at most limit events and snapshotLimit bytes of snapshots.
func OpenQueue(dir string, limit int, snapshotLimit int64) (*Queue, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("event queue: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("event queue: %w", err)
	}
	q := &Queue{dir: dir, limit: limit, snapshotLimit: snapshotLimit, next: 1, notify: make(chan struct{}, 1), snapshots: map[uint64]int64{}}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") && strings.Contains(name, queueExt+".tmp-") {
			os.Remove(filepath.Join(dir, name)) // a write a crash cut short (atomicfile's temporary)
			continue
		}
		if !strings.HasSuffix(name, queueExt) {
			continue
		}
		seq, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSuffix(name, snapshotExt), queueExt), 10, 64)
		if err != nil {
			continue
		}
		if strings.HasSuffix(name, snapshotExt) {
			if info, err := e.Info(); err == nil {
				q.snapshots[seq] = info.Size()
				q.snapshotBytes += info.Size()
			}
		}
		q.seqs = append(q.seqs, seq)
		q.next = max(q.next, seq+1)
	}
	sort.Slice(q.seqs, func(i, j int) bool { return q.seqs[i] < q.seqs[j] })
	if len(q.seqs) > 0 {
		slog.Info("event queue holds messages from an earlier run", "messages", len(q.seqs), "dir", dir)
		q.signal()
	}
	return q, nil
}

func (q *Queue) path(seq uint64) string {
	ext := queueExt
	if _, snap := q.snapshots[seq]; snap {
		ext = snapshotExt
	}
	return filepath.Join(q.dir, fmt.Sprintf("%020d%s", seq, ext))
}

// forget drops seq from the bookkeeping (its file is the caller's).
func (q *Queue) forget(seq uint64) {
	if i := slices.Index(q.seqs, seq); i >= 0 {
		q.seqs = slices.Delete(q.seqs, i, i+1)
	}
	if size, snap := q.snapshots[seq]; snap {
		q.snapshotBytes -= size
		delete(q.snapshots, seq)
	}
}

func (q *Queue) signal() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// Ready is signalled when messages may be waiting.
func (q *Queue) Ready() <-chan struct{} { return q.notify }

// Push stores an event (JSON payload); when the queue holds more than its
// limit of events the oldest event is dropped (and counted), so memory and
// disk stay bounded through any outage.
func (q *Queue) Push(topic string, qos byte, payload []byte) error {
	return q.store(QueuedMessage{Topic: topic, QoS: qos, Payload: payload})
}

// PushSnapshot stores a snapshot (retained, QoS 1) behind the events queued
// before it; past the snapshot byte bound the oldest snapshot is dropped,
// with a log line, and never an event.
func (q *Queue) PushSnapshot(topic string, jpg []byte) error {
	return q.store(QueuedMessage{Topic: topic, QoS: 1, Retained: true, Data: jpg})
}

func (q *Queue) store(m QueuedMessage) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	seq := q.next
	if m.Data != nil {
		q.snapshots[seq] = int64(len(data))
	}
	if err := atomicfile.Write(q.path(seq), data); err != nil {
		delete(q.snapshots, seq)
		return fmt.Errorf("event queue: %w", err)
	}
	q.next++
	q.seqs = append(q.seqs, seq)
	if m.Data != nil {
		q.snapshotBytes += int64(len(data))
	}
	for len(q.seqs)-len(q.snapshots) > q.limit {
		old := q.oldest(false)
		os.Remove(q.path(old))
		q.forget(old)
		q.dropped++
		slog.Warn("event queue full: dropped the oldest event", "limit", q.limit, "dropped_total", q.dropped)
	}
	for q.snapshotBytes > q.snapshotLimit && len(q.snapshots) > 0 {
		old := q.oldest(true)
		os.Remove(q.path(old))
		q.forget(old)
		q.snapshotsDropped++
		slog.Warn("event queue: snapshots past their byte bound; dropped the oldest snapshot (its event stays)",
			"limit_bytes", q.snapshotLimit, "snapshots_dropped_total", q.snapshotsDropped)
	}
	q.signal()
	return nil
}

// oldest is the first queued seq that is (or is not) a snapshot.
func (q *Queue) oldest(snapshot bool) uint64 {
	for _, s := range q.seqs {
		if _, snap := q.snapshots[s]; snap == snapshot {
			return s
		}
	}
	return q.seqs[0]
}

// Peek returns the oldest message.
func (q *Queue) Peek() (QueuedMessage, bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.seqs) > 0 {
		seq := q.seqs[0]
		data, err := os.ReadFile(q.path(seq))
		var m QueuedMessage
		if err == nil {
			err = json.Unmarshal(data, &m)
		}
		if err == nil {
			err = m.sendable()
		}
		if err != nil {
			// A damaged or unsendable file would block the queue forever:
			// it is set aside instead.
			q.reject(seq, err)
			continue
		}
		m.Seq = seq
		return m, true, nil
	}
	return QueuedMessage{}, false, nil
}

// reject moves the message seq into the rejected folder (removing it if
// even that fails), counts it, and logs the first of a process and then
// every hundredth.
func (q *Queue) reject(seq uint64, why error) {
	defer q.forget(seq)
	q.rejected++
	dir := filepath.Join(q.dir, rejectedDir)
	dest := filepath.Join(dir, filepath.Base(q.path(seq)))
	err := os.MkdirAll(dir, 0o750)
	if err == nil {
		err = os.Rename(q.path(seq), dest)
	}
	if err != nil {
		os.Remove(q.path(seq))
		dest = "(removed: " + err.Error() + ")"
	}
	if q.rejected == 1 || q.rejected%100 == 0 {
		slog.Error("event queue: a message that cannot be sent was set aside", "seq", seq, "reason", why, "kept_as", dest, "rejected_total", q.rejected)
	}
}

// Remove deletes a delivered message.
func (q *Queue) Remove(seq uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	path := q.path(seq)
	q.forget(seq)
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("event queue: %w", err)
	}
	return nil
}

// Len is the number of waiting messages.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.seqs)
}

// Rejected counts messages set aside as unreadable or unsendable.
func (q *Queue) Rejected() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.rejected
}

// SnapshotsDropped counts snapshots dropped past their byte bound.
func (q *Queue) SnapshotsDropped() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.snapshotsDropped
}

// Dropped counts messages lost to the size bound.
func (q *Queue) Dropped() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dropped
}
