package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/transformaly/transformaly/internal/atomicfile"
)

// Control holds what is changed at run time over MQTT, Frigate's way
// (<prefix>/<camera>/detect/set, .../threshold/set): whether a camera is
// scored, and its threshold. It is kept in state_directory/control.json, so
// a reload or a restart keeps it.
type Control struct {
	path string
	mu   sync.Mutex
	cams map[string]CameraControl
}

// CameraControl is one camera's run-time settings; nil fields are the
// configuration's.
type CameraControl struct {
	Detect    *bool    `json:"detect,omitempty"`
	Threshold *float64 `json:"threshold,omitempty"`
}

// OpenControl reads the control file (none yet: nothing changed).
func OpenControl(path string) (*Control, error) {
	c := &Control{path: path, cams: map[string]CameraControl{}}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(data, &c.cams); err != nil {
		return nil, fmt.Errorf("%s: %w (delete it to forget the settings changed over MQTT)", path, err)
	}
	return c, nil
}

// Detect says whether a camera is scored (true unless set OFF). Safe on nil.
func (c *Control) Detect(camera string) bool {
	if c == nil {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.cams[camera].Detect
	return d == nil || *d
}

// Threshold is a camera's threshold set at run time, if any. Safe on nil.
func (c *Control) Threshold(camera string) (float64, bool) {
	if c == nil {
		return 0, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.cams[camera].Threshold
	if t == nil {
		return 0, false
	}
	return *t, true
}

// set changes a camera's settings and saves them.
func (c *Control) set(camera string, change func(*CameraControl)) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	cc := c.cams[camera]
	change(&cc)
	c.cams[camera] = cc
	data, err := json.MarshalIndent(c.cams, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(c.path, data)
}

// controlTopics are the command topics, after <prefix>/<camera>/.
const (
	detectSet    = "detect/set"
	thresholdSet = "threshold/set"
)

// handleCommand applies one command message. Bad payloads and unknown
// cameras are logged and ignored. known says whether a camera exists; state
// publishes a camera's detect and threshold state.
func (c *Control) handleCommand(prefix, topic string, payload []byte, known func(string) bool, state func(string)) {
	rest, ok := strings.CutPrefix(topic, prefix+"/")
	camera, command, ok2 := strings.Cut(rest, "/")
	if !ok || !ok2 {
		return
	}
	if !known(camera) {
		slog.Warn("MQTT command for an unknown camera ignored", "topic", topic)
		return
	}
	text := strings.TrimSpace(string(payload))
	var err error
	switch command {
	case detectSet:
		switch strings.ToUpper(text) {
		case "ON", "OFF":
			on := strings.EqualFold(text, "ON")
			err = c.set(camera, func(cc *CameraControl) { cc.Detect = &on })
		default:
			slog.Warn("MQTT detect command ignored: the payload is not ON or OFF", "topic", topic, "payload", strconv.Quote(clip(text)))
			return
		}
	case thresholdSet:
		if strings.EqualFold(text, "reset") {
			err = c.set(camera, func(cc *CameraControl) { cc.Threshold = nil })
			break
		}
		v, perr := strconv.ParseFloat(text, 64)
		if perr != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			slog.Warn("MQTT threshold command ignored: the payload is not a finite number or reset", "topic", topic, "payload", strconv.Quote(clip(text)))
			return
		}
		err = c.set(camera, func(cc *CameraControl) { cc.Threshold = &v })
	default:
		return
	}
	if err != nil {
		slog.Error("MQTT command applied but not saved (a restart forgets it)", "topic", topic, "err", err)
	}
	slog.Info("MQTT command applied", "topic", topic, "payload", strconv.Quote(clip(text)))
	state(camera)
}
