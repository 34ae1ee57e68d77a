package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"

	"github.com/transformaly/transformaly/internal/atomicfile"
)

// Control holds what is changed at run time over MQTT, Frigate's way
// (<prefix>/<camera>/detect/set, .../threshold/set), or from the console:
// whether a camera is scored, and its threshold. It is kept in state_directory/control.json, so
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

// SetDetect turns a camera's scoring on or off (mqtt.Commands).
func (d *Daemon) SetDetect(camera string, on bool) error {
	return d.changeControl(camera, func(cc *CameraControl) { cc.Detect = &on })
}

// SetThreshold sets a camera's threshold, nil back to the configured one
// (mqtt.Commands, the console).
func (d *Daemon) SetThreshold(camera string, threshold *float64) error {
	return d.changeControl(camera, func(cc *CameraControl) { cc.Threshold = threshold })
}

// changeControl applies a change, saves it and publishes the camera's
// retained state, one change at a time: two changes from different places
// (MQTT, the console) could otherwise publish their states in the other
// order and leave the retained state on the one not applied last.
func (d *Daemon) changeControl(camera string, change func(*CameraControl)) error {
	if !d.KnownCamera(camera) {
		return fmt.Errorf("no camera %q", camera)
	}
	d.controlMu.Lock()
	defer d.controlMu.Unlock()
	err := d.control.set(camera, change)
	d.publishControlState(camera)
	if err != nil {
		return fmt.Errorf("applied but not saved (a restart forgets it): %w", err)
	}
	return nil
}
