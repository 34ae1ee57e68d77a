package daemon

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
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
	limit int

	mu       sync.Mutex
	seqs     []uint64 // queued, ascending
	next     uint64
	dropped  uint64
	rejected uint64
	notify   chan struct{}
}

// QueuedMessage is one stored message.
type QueuedMessage struct {
	Seq     uint64          `json:"-"`
	Topic   string          `json:"topic"`
	QoS     byte            `json:"qos"`
	Payload json.RawMessage `json:"payload"`
}

const queueExt = ".msg"

// rejectedDir is the queue's subfolder for messages that cannot be sent:
// kept for a person to look at, out of the way of those after them.
const rejectedDir = "rejected"

// maxQueuedPayload bounds a queued message (events are a few hundred
// bytes); a bigger file is no event of ours.
const maxQueuedPayload = 1 << 20

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
	case len(m.Payload) > maxQueuedPayload:
		return fmt.Errorf("payload of %d bytes (at most %d)", len(m.Payload), maxQueuedPayload)
	}
	return nil
}

// OpenQueue opens (creating) the queue in dir, keeping what an earlier run
// left there.
func OpenQueue(dir string, limit int) (*Queue, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("event queue: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("event queue: %w", err)
	}
	q := &Queue{dir: dir, limit: limit, next: 1, notify: make(chan struct{}, 1)}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") && strings.Contains(name, queueExt+".tmp-") {
			os.Remove(filepath.Join(dir, name)) // a write a crash cut short (atomicfile's temporary)
			continue
		}
		if !strings.HasSuffix(name, queueExt) {
			continue
		}
		seq, err := strconv.ParseUint(strings.TrimSuffix(name, queueExt), 10, 64)
		if err != nil {
			continue
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
	return filepath.Join(q.dir, fmt.Sprintf("%020d%s", seq, queueExt))
}

func (q *Queue) signal() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

// Ready is signalled when messages may be waiting.
func (q *Queue) Ready() <-chan struct{} { return q.notify }

// Push stores a message; when the queue is full the oldest is dropped (and
// counted), so memory and disk stay bounded through any outage.
func (q *Queue) Push(topic string, qos byte, payload []byte) error {
	data, err := json.Marshal(QueuedMessage{Topic: topic, QoS: qos, Payload: payload})
	if err != nil {
		return err
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	seq := q.next
	if err := atomicfile.Write(q.path(seq), data); err != nil {
		return fmt.Errorf("event queue: %w", err)
	}
	q.next++
	q.seqs = append(q.seqs, seq)
	for len(q.seqs) > q.limit {
		old := q.seqs[0]
		q.seqs = q.seqs[1:]
		os.Remove(q.path(old))
		q.dropped++
		slog.Warn("event queue full: dropped the oldest event", "limit", q.limit, "dropped_total", q.dropped)
	}
	q.signal()
	return nil
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
	q.seqs = q.seqs[1:]
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
	if len(q.seqs) > 0 && q.seqs[0] == seq {
		q.seqs = q.seqs[1:]
	}
	if err := os.Remove(q.path(seq)); err != nil && !os.IsNotExist(err) {
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

// Dropped counts messages lost to the size bound.
func (q *Queue) Dropped() uint64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.dropped
}
