package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/transformaly/transformaly/console"
	"github.com/transformaly/transformaly/internal/atomicfile"
)

// bundleChoice is a camera's promoted bundle: it runs instead of the
// configured one until rolled back.
type bundleChoice struct {
	Bundle     string    `json:"bundle"`
	Previous   string    `json:"previous"` // what ran before it: a rollback returns to it
	PromotedAt time.Time `json:"promoted_at"`
}

// bundleChoices keeps the promoted bundles in state_directory/models.json,
// so a reload or restart keeps them; the configuration file (and the
// bundle files it names, which a hardened unit may not let the daemon
// write) is never changed.
type bundleChoices struct {
	path string

	mu         sync.Mutex
	cams       map[string]bundleChoice
	configured map[string]string // camera -> the configuration's bundle, at the last load
}

func openBundleChoices(stateDir string) (*bundleChoices, error) {
	b := &bundleChoices{path: filepath.Join(stateDir, "models.json"), cams: map[string]bundleChoice{}, configured: map[string]string{}}
	data, err := os.ReadFile(b.path)
	if errors.Is(err, fs.ErrNotExist) {
		return b, nil
	}
	if err == nil {
		err = json.Unmarshal(data, &b.cams)
	}
	if err != nil {
		return nil, fmt.Errorf("promoted bundles %s: %w (delete it to run the configured bundles)", b.path, err)
	}
	return b, nil
}

// apply puts the promoted bundles in a freshly loaded configuration.
func (b *bundleChoices) apply(cfg *Config) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.configured = map[string]string{}
	for i := range cfg.Cameras {
		name := cfg.Cameras[i].Name
		b.configured[name] = cfg.Camera(i).Model
		if ch, ok := b.cams[name]; ok {
			if _, err := os.Stat(ch.Bundle); err != nil {
				slog.Error("promoted bundle missing; running the configured one", "camera", name, "bundle", ch.Bundle, "err", err)
				continue
			}
			cfg.Cameras[i].Model = ch.Bundle
		}
	}
}

// set makes bundle camera's (previous: what ran before) and returns what
// was chosen before, for undo; bundle "" goes back to the configured one.
func (b *bundleChoices) set(camera, bundle, previous string) (bundleChoice, bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	old, had := b.cams[camera]
	if bundle == "" || bundle == b.configured[camera] {
		delete(b.cams, camera)
	} else {
		b.cams[camera] = bundleChoice{Bundle: bundle, Previous: previous, PromotedAt: time.Now().UTC()}
	}
	return old, had, b.save()
}

// undo restores what set replaced.
func (b *bundleChoices) undo(camera string, old bundleChoice, had bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if had {
		b.cams[camera] = old
	} else {
		delete(b.cams, camera)
	}
	if err := b.save(); err != nil {
		slog.Error("promoted bundles not saved", "err", err)
	}
}

// save writes models.json; b.mu held.
func (b *bundleChoices) save() error {
	data, err := json.MarshalIndent(b.cams, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(b.path, data)
}

// get is camera's choice and configured bundle.
func (b *bundleChoices) get(camera string) (bundleChoice, bool, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch, ok := b.cams[camera]
	return ch, ok, b.configured[camera]
}

// liveBundle is the bundle camera runs now ("" for no such camera).
func (d *Daemon) liveBundle(camera string) string {
	if c := d.cameraRuntime(camera); c != nil {
		return c.cfg.Model
	}
	return ""
}

// swapBundle makes bundle camera's and reloads, as SIGHUP does (the new
// pipeline is built and warmed before it replaces the running one); on a
// failed reload the choice is undone and the running bundle stays. The
// run-time threshold (MQTT threshold/set, the console) is reset: it was
// set on the other bundle's scores.
func (d *Daemon) swapBundle(camera, bundle, previous, action string) error {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	old, had, err := d.choices.set(camera, bundle, previous)
	if err != nil {
		d.choices.undo(camera, old, had)
		return fmt.Errorf("%s: save the choice: %w", action, err)
	}
	if err := d.reloadLocked(d.ctx); err != nil {
		d.choices.undo(camera, old, had)
		return fmt.Errorf("%s: %w (still running %s)", action, err, previous)
	}
	if _, set := d.control.Threshold(camera); set {
		if err := d.SetThreshold(camera, nil); err != nil {
			slog.Error("run-time threshold not reset after a new bundle", "camera", camera, "err", err)
		}
		slog.Warn("run-time threshold reset: it was set on the scores of the bundle replaced", "camera", camera)
	}
	d.publishModel(camera, action)
	slog.Info("bundle "+action+"d", "camera", camera, "bundle", bundle, "previous", previous)
	return nil
}

// promote makes one of camera's candidates its live bundle.
func (d *Daemon) promote(camera, id string) error {
	c, err := d.refit.candidate(camera, id)
	if err != nil {
		return err
	}
	live := d.liveBundle(camera)
	if live == c.Bundle {
		return fmt.Errorf("candidate %s is live already", id)
	}
	d.stopShadow(camera)
	return d.swapBundle(camera, c.Bundle, live, "promote")
}

// rollback returns camera to the bundle that ran before the last promote
// (or rollback: a second one goes forward again).
func (d *Daemon) rollback(camera string) error {
	ch, ok, configured := d.choices.get(camera)
	if !ok {
		return fmt.Errorf("camera %s runs its configured bundle %s: nothing to roll back", camera, configured)
	}
	d.stopShadow(camera)
	return d.swapBundle(camera, ch.Previous, ch.Bundle, "rollback")
}

// modelMessage is the payload of <prefix>/<camera>/model (retained).
type modelMessage struct {
	Camera     string     `json:"camera"`
	Bundle     string     `json:"bundle"`
	Configured string     `json:"configured"`
	Previous   string     `json:"previous,omitempty"`
	PromotedAt *time.Time `json:"promoted_at,omitempty"`
	Action     string     `json:"action"` // start, promote or rollback
	Time       time.Time  `json:"time"`
}

// publishModel publishes the bundle camera runs (retained).
func (d *Daemon) publishModel(camera, action string) {
	ch, promoted, configured := d.choices.get(camera)
	m := modelMessage{Camera: camera, Bundle: d.liveBundle(camera), Configured: configured, Action: action, Time: time.Now().UTC()}
	if promoted {
		m.Previous, m.PromotedAt = ch.Previous, &ch.PromotedAt
	}
	if b, err := json.Marshal(m); err == nil {
		d.pub.Publish(d.pub.Topic(camera, "model"), 1, true, b)
	}
}

// Model is camera's bundles, candidates and job (console.Source).
func (w *webSource) Model(camera string) (console.ModelState, error) {
	if _, err := w.camera(camera); err != nil {
		return console.ModelState{}, err
	}
	d := w.d
	ch, promoted, configured := d.choices.get(camera)
	m := console.ModelState{Live: d.liveBundle(camera), Configured: configured, Job: d.refit.state(camera),
		Candidates: d.refit.candidates(camera), Shadow: d.shadowState(camera)}
	if promoted {
		m.Previous, m.PromotedAt = ch.Previous, &ch.PromotedAt
	}
	if m.Candidates == nil {
		m.Candidates = []console.Candidate{}
	}
	return m, nil
}

// ModelAction runs the console's model actions (console.Source).
func (w *webSource) ModelAction(camera, action, candidate string) error {
	if _, err := w.camera(camera); err != nil {
		return err
	}
	d := w.d
	switch action {
	case "refit":
		return d.refit.refit(camera, d.liveBundle(camera))
	case "cancel":
		return d.refit.cancel(camera)
	case "compare":
		return d.refit.compare(camera, d.liveBundle(camera), candidate)
	case "shadow":
		return d.startShadow(camera, candidate)
	case "unshadow":
		d.stopShadow(camera)
		return nil
	case "promote":
		return d.promote(camera, candidate)
	case "rollback":
		return d.rollback(camera)
	}
	return fmt.Errorf("unknown model action %q", action)
}
