package mqtt

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/transformaly/transformaly/internal/guard"
)

// Commands is what the command topics act on; the daemon implements it.
// Each method is called for one camera at a time, in the order the broker
// delivered that camera's commands.
type Commands interface {
	// KnownCamera says whether the running configuration has the camera.
	KnownCamera(name string) bool
	// SetDetect turns a camera's scoring on or off.
	SetDetect(camera string, on bool) error
	// SetThreshold sets a camera's threshold; nil goes back to the
	// configured (or calibrated) one.
	SetThreshold(camera string, threshold *float64) error
	// TriggerPart judges a part (id "": the next count).
	TriggerPart(camera, partID string) (string, error)
}

// The command topics, after <prefix>/<camera>/.
const (
	DetectSet    = "detect/set"
	ThresholdSet = "threshold/set"
	TriggerTopic = "trigger"
)

// maxPendingCommands bounds the commands waiting for one camera. Each
// takes about a control.json write (milliseconds); a sender further ahead
// than this is refused command by command, with an error logged, rather
// than let memory grow.
const maxPendingCommands = 256

// SubscribeCommands subscribes to every camera's detect/set, threshold/set
// and trigger topics. A camera's commands are applied one at a time in the
// order the broker delivered them (MQTT keeps one client's QoS 1 and 2
// messages in order), each camera on its own goroutine, so a slow command
// (a control.json write on a slow disk) holds back only later commands of
// the same camera, never scoring, other cameras or the connection.
func (p *Publisher) SubscribeCommands(target Commands) {
	for _, command := range []string{DetectSet, ThresholdSet, TriggerTopic} {
		p.Subscribe(p.Topic("+", command), func(topic string, payload []byte) { p.command(target, topic, payload) })
	}
}

// command checks one command message and queues it behind its camera's
// earlier ones. It runs on paho's single delivery goroutine (the client
// is made with SetOrderMatters(true)), so it only parses and queues.
func (p *Publisher) command(target Commands, topic string, payload []byte) {
	defer guard.Recover("mqtt", topic, nil)
	rest, ok := strings.CutPrefix(topic, p.cfg.TopicPrefix+"/")
	camera, command, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 {
		return
	}
	if !target.KnownCamera(camera) {
		slog.Warn("MQTT command for an unknown camera ignored", "topic", topic)
		return
	}
	var apply func() error
	switch command {
	case DetectSet:
		on, err := ParseDetect(payload)
		if err != nil {
			slog.Warn("MQTT detect command ignored", "topic", topic, "payload", quote(payload), "err", err)
			return
		}
		apply = func() error { return target.SetDetect(camera, on) }
	case ThresholdSet:
		threshold, err := ParseThreshold(payload)
		if err != nil {
			slog.Warn("MQTT threshold command ignored", "topic", topic, "payload", quote(payload), "err", err)
			return
		}
		apply = func() error { return target.SetThreshold(camera, threshold) }
	case TriggerTopic:
		apply = func() error {
			_, err := target.TriggerPart(camera, string(payload))
			return err
		}
	default:
		return
	}
	queued := p.commands.do(camera, func() {
		defer guard.Recover("mqtt", topic, nil)
		if err := apply(); err != nil {
			slog.Warn("MQTT command not applied", "topic", topic, "payload", quote(payload), "err", err)
			return
		}
		slog.Info("MQTT command applied", "topic", topic, "payload", quote(payload))
	})
	if !queued {
		slog.Error("MQTT command dropped: too many commands waiting for this camera", "topic", topic, "waiting", maxPendingCommands)
	}
}

// ParseDetect reads a detect/set payload: ON or OFF, in any case, with
// surrounding white space ignored.
func ParseDetect(payload []byte) (bool, error) {
	switch text := strings.TrimSpace(string(payload)); {
	case strings.EqualFold(text, "ON"):
		return true, nil
	case strings.EqualFold(text, "OFF"):
		return false, nil
	}
	return false, errors.New("the payload is not ON or OFF")
}

// decimal is a plain decimal number, with an optional sign, fraction and
// exponent: what a PLC, a SCADA script or a person types. Go's own syntax
// beyond it (0x1p4, 1_000, Inf) is refused, so a value means one thing.
var decimal = regexp.MustCompile(`^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$`)

// ParseThreshold reads a threshold/set payload: "reset" (any case; back to
// the configured threshold) or a decimal number that float64 holds
// without overflow or underflow to zero, surrounding white space ignored.
func ParseThreshold(payload []byte) (*float64, error) {
	text := strings.TrimSpace(string(payload))
	if strings.EqualFold(text, "reset") {
		return nil, nil
	}
	if !decimal.MatchString(text) {
		return nil, errors.New("the payload is not a decimal number (such as 12.5, -3 or 1e3) or reset")
	}
	v, err := strconv.ParseFloat(text, 64)
	if err != nil || math.IsInf(v, 0) {
		return nil, fmt.Errorf("%s is beyond the range of a float64", text)
	}
	if mantissa, _, _ := strings.Cut(strings.ToLower(text), "e"); v == 0 && strings.ContainsAny(mantissa, "123456789") {
		return nil, fmt.Errorf("%s is too close to zero for a float64 (it would be 0)", text)
	}
	return &v, nil
}

// quote shows a payload in the log, clipped.
func quote(payload []byte) string {
	const most = 64
	if len(payload) > most {
		return strconv.Quote(string(payload[:most])) + "..."
	}
	return strconv.Quote(string(payload))
}

// sequencer runs functions one at a time per key, in the order given, each
// key on its own goroutine while it has work (so goroutines are bounded by
// the keys with work waiting: known cameras).
type sequencer struct {
	mu      sync.Mutex
	pending map[string][]func()
	wg      sync.WaitGroup
}

// do queues f behind key's earlier functions; false if maxPendingCommands
// wait already.
func (s *sequencer) do(key string, f func()) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending == nil {
		s.pending = map[string][]func(){}
	}
	queue, running := s.pending[key]
	if len(queue) >= maxPendingCommands {
		return false
	}
	s.pending[key] = append(queue, f)
	if !running {
		s.wg.Add(1)
		go s.drain(key)
	}
	return true
}

// drain runs key's functions until none waits.
func (s *sequencer) drain(key string) {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		queue := s.pending[key]
		if len(queue) == 0 {
			delete(s.pending, key)
			s.mu.Unlock()
			return
		}
		f := queue[0]
		s.pending[key] = queue[1:]
		s.mu.Unlock()
		f()
	}
}

// wait returns once nothing is queued or running.
func (s *sequencer) wait() { s.wg.Wait() }
