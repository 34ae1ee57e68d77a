package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/transformaly/transformaly/console"
	"github.com/transformaly/transformaly/modbus"
	"github.com/transformaly/transformaly/opcua"

	sd "github.com/coreos/go-systemd/v22/daemon"

	"github.com/transformaly/transformaly/models"
	"github.com/transformaly/transformaly/mqtt"
)

// Daemon is a running transformaly service.
type Daemon struct {
	configPath string
	override   func(*Config)
	cfg        Config
	queue      *mqtt.Queue
	pub        *mqtt.Publisher
	control    *Control
	controlMu  sync.Mutex     // one control change at a time (changeControl)
	modbus     *modbus.Server // nil: off
	opcua      *opcua.Server  // nil: off
	ngImages   *ngArchive     // nil: off
	reviews    *reviews       // operators' marks on NG parts
	choices    *bundleChoices // promoted bundles
	refit      *refitter      // background refits and comparisons
	shadows    *shadows       // candidates scoring beside the live bundles
	// ctx is Run's: reloads started by a promote or a rollback run in it.
	ctx      context.Context
	reloadMu sync.Mutex // one reload at a time
	// events and parts are the recent ones the web console lists (nil: off).
	events  *recentLog[console.Event]
	parts   *recentLog[console.Part]
	broker  *mqtt.EmbeddedBroker
	started time.Time

	mu   sync.Mutex
	pipe *pipeline
}

// Options say where the configuration comes from.
type Options struct {
	ConfigPath string
	// Override applies command-line flags over the file (also on reload).
	Override func(*Config)
	// Ready, if set, is called once the models are warm and the cameras
	// started (after READY=1 is sent to systemd).
	Ready func(*Daemon)
}

// LoadAndValidate reads the configuration, applies the overrides and
// checks it; every problem is returned, each naming its key.
func LoadAndValidate(path string, override func(*Config)) (Config, error) {
	cfg, err := LoadConfig(path)
	if err != nil {
		return cfg, err
	}
	if override != nil {
		override(&cfg)
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		return cfg, fmt.Errorf("config %s is invalid:\n  %w", path, joinLines(errs))
	}
	return cfg, nil
}

type lines []error

func (l lines) Error() string {
	s := ""
	for i, e := range l {
		if i > 0 {
			s += "\n  "
		}
		s += e.Error()
	}
	return s
}

func joinLines(errs []error) error { return lines(errs) }

func (d *Daemon) current() *pipeline {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pipe
}

// Run runs the daemon until ctx ends: SIGHUP reloads the configuration and
// bundles. On the way out it tells systemd STOPPING=1, closes open events,
// publishes what is pending and marks the status "stopped".
func Run(ctx context.Context, opts Options) error {
	cfg, err := LoadAndValidate(opts.ConfigPath, opts.Override)
	if err != nil {
		return err
	}
	d := &Daemon{configPath: opts.ConfigPath, override: opts.Override, cfg: cfg, started: time.Now(), ctx: ctx,
		shadows: &shadows{cams: map[string]*shadow{}}}
	// From the start: SIGHUP's default action ends the process, and one sent
	// while the bundles load (a log rotation, an early reload) is a reload
	// to do once running.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if err := os.MkdirAll(cfg.StateDirectory, 0o750); err != nil {
		return fmt.Errorf("state_directory: %w", err)
	}
	if d.queue, err = mqtt.OpenQueue(filepath.Join(cfg.StateDirectory, "events"), cfg.MQTT.QueueLimit, int64(cfg.MQTT.SnapshotQueueMB)<<20); err != nil {
		return err
	}
	if d.control, err = OpenControl(filepath.Join(cfg.StateDirectory, "control.json")); err != nil {
		return err
	}
	if d.ngImages, err = openNGArchive(cfg.NGImagesDirectory(), cfg.NGImages.MaxMB); err != nil {
		return err
	}
	if d.reviews, err = openReviews(cfg); err != nil {
		return err
	}
	if d.choices, err = openBundleChoices(cfg.StateDirectory); err != nil {
		return err
	}
	d.choices.apply(&cfg)
	d.cfg = cfg
	d.refit = newRefitter(cfg)
	defer d.refit.close()
	defer d.stopShadows()
	if d.ngImages != nil {
		defer d.ngImages.close()
	}
	broker := cfg.MQTT.Broker
	if broker == "embedded" {
		if d.broker, err = mqtt.StartEmbeddedBroker(cfg.MQTT.EmbeddedAddress); err != nil {
			return err
		}
		defer d.broker.Close()
		broker = "tcp://" + d.broker.Address()
	}
	if d.pub, err = mqtt.NewPublisher(cfg.MQTT, broker, d.queue, d.publishControlStates); err != nil {
		return err
	}
	d.pub.SubscribeCommands(d)
	// The publisher outlives ctx: on shutdown it still delivers the events
	// that closing the pipeline produces; Close stops it.
	d.pub.Start(context.Background(), broker)
	defer d.pub.Close()
	var web http.Handler
	if cfg.WebAddress() != "" {
		opts, err := cfg.consoleOptions()
		if err != nil {
			return err
		}
		d.events, d.parts = newRecentLog[console.Event](eventHistory, keptImages), newRecentLog[console.Part](partHistory, keptImages)
		web = console.Handler(&webSource{d: d, normalDir: cfg.NormalImagesDirectory(), prev: map[string]fpsSample{}}, opts)
		if a := cfg.Web.Address; a != "" {
			stop, err := listen("web.address", a, web)
			if err != nil {
				return err
			}
			defer stop()
			web = nil // not with the metrics
		}
	}
	if a := cfg.Metrics.Address; a != "" && a != "off" {
		stop, err := d.serveHTTP(a, web)
		if err != nil {
			return err
		}
		defer stop()
	}

	pipe, err := buildPipeline(ctx, cfg, d.pub, d.control, nil)
	if err != nil {
		if ctx.Err() != nil {
			slog.Info("stopped before running", "reason", err)
			return nil
		}
		return err
	}
	if a := cfg.Modbus.Address; a != "" {
		if d.modbus, err = modbus.Start(cfg.Modbus, cfg.cameraNames(), d); err != nil {
			pipe.closeModels()
			return err
		}
		defer d.modbus.Close()
	}
	if cfg.OPCUA.Address != "" {
		if err := d.startOPCUA(cfg); err != nil {
			pipe.closeModels()
			return err
		}
		defer d.opcua.Close()
	}
	d.lend(pipe)
	d.mu.Lock()
	d.pipe = pipe
	d.mu.Unlock()
	pipe.start(ctx)
	d.publishControlStates()
	for _, c := range cfg.Cameras {
		d.publishModel(c.Name, "start")
	}
	notify(sd.SdNotifyReady)
	slog.Info("transformaly running", "cameras", len(cfg.Cameras), "models", len(pipe.models), "version", models.Version)
	if opts.Ready != nil {
		opts.Ready(d)
	}

	loops, stopLoops := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); d.watchdog(loops) }()
	go func() { defer wg.Done(); d.stats(loops, cfg.MQTT.StatsInterval) }()

	for running := true; running; {
		select {
		case <-ctx.Done():
			running = false
		case <-hup:
			d.reload(ctx)
		}
	}

	notify(sd.SdNotifyStopping)
	slog.Info("stopping: closing open events and publishing what is pending")
	stopLoops()
	wg.Wait()
	p := d.current()
	p.stop()
	p.flush()
	d.pub.Drain(10 * time.Second)
	return nil
}

// reload builds and warms a new pipeline from the configuration on disk,
// then swaps it in; on any error the running one stays.
func (d *Daemon) reload(ctx context.Context) {
	d.reloadMu.Lock()
	defer d.reloadMu.Unlock()
	switch err := d.reloadLocked(ctx); {
	case errors.Is(err, errConfigRefused):
		slog.Error("reload refused; still running the previous configuration", "err", err)
	case err != nil:
		slog.Error("reload failed; still running the previous configuration", "err", err)
	}
}

// errConfigRefused: a reload found the configuration invalid, or changed
// where only a restart may change it.
var errConfigRefused = errors.New("configuration refused")

// reloadLocked is reload with reloadMu held (SIGHUP, a promote or a
// rollback).
func (d *Daemon) reloadLocked(ctx context.Context) error {
	notify("RELOADING=1")
	defer notify(sd.SdNotifyReady)
	slog.Info("reloading configuration and bundles", "config", d.configPath)
	cfg, err := LoadAndValidate(d.configPath, d.override)
	if err == nil && (cfg.MQTT.Broker != d.cfg.MQTT.Broker || cfg.StateDirectory != d.cfg.StateDirectory || cfg.NGImages != d.cfg.NGImages || !reflect.DeepEqual(cfg.Modbus, d.cfg.Modbus) ||
		cfg.OPCUA != d.cfg.OPCUA || cfg.Web != d.cfg.Web || cfg.Metrics != d.cfg.Metrics) {
		err = errors.New("mqtt.broker, state_directory, ng_images, modbus, opcua, metrics and web change only with a restart")
	}
	if err != nil {
		return fmt.Errorf("%w: %w", errConfigRefused, err)
	}
	d.choices.apply(&cfg)
	old := d.current()
	next, err := buildPipeline(ctx, cfg, d.pub, d.control, old.trackers())
	if err != nil {
		return err
	}
	d.lend(next)
	old.stop()
	next.adoptPeaks(old)
	if d.modbus != nil {
		d.modbus.SetCameras(cfg.cameraNames())
	}
	d.mu.Lock()
	d.pipe, d.cfg = next, cfg
	d.mu.Unlock()
	next.start(ctx)
	d.publishControlStates()
	slog.Info("reloaded", "cameras", len(cfg.Cameras), "models", len(next.models))
	return nil
}

// lend gives a pipeline what outlives it: the Modbus map's results, the NG
// folder and the console's lists.
func (d *Daemon) lend(p *pipeline) {
	p.results, p.ngImages, p.events, p.parts = d.forwardResult, d.ngImages, d.events, d.parts
	for _, c := range p.cameras {
		c.shadows = d.shadows
	}
}

func notify(state string) {
	if _, err := sd.SdNotify(false, state); err != nil {
		slog.Warn("sd_notify failed", "state", state, "err", err)
	}
}

// watchdog sends WATCHDOG=1 at half the systemd interval, but only while
// the detector loops are turning (each turn, busy or idle, beats): a hung
// inference or pipeline stops the pings and systemd restarts the service.
func (d *Daemon) watchdog(ctx context.Context) {
	interval, err := sd.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		return
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if p := d.current(); p != nil && time.Since(time.Unix(0, p.heartbeat.Load())) < interval/2 {
				notify(sd.SdNotifyWatchdog)
			}
		}
	}
}

// CameraStats is one camera's part of <prefix>/stats.
type CameraStats struct {
	CaptureFPS   float64 `json:"capture_fps"`
	ProcessedFPS float64 `json:"processed_fps"`
	Dropped      uint64  `json:"dropped_frames"`
	Reconnects   uint64  `json:"reconnects"`
	State        string  `json:"state"`
	InferenceP50 float64 `json:"inference_ms_p50"`
	InferenceP99 float64 `json:"inference_ms_p99"`
	LatencyP50   float64 `json:"latency_ms_p50"`
	LatencyP99   float64 `json:"latency_ms_p99"`
	// Faults: frames damaged in transit (skipped), lost to detector errors,
	// and scored non-finite.
	Damaged        uint64 `json:"damaged_frames"`
	DetectorFailed uint64 `json:"detector_failed_frames"`
	NonFinite      uint64 `json:"non_finite_scores"`
	// Drift: the share of the last RecentFrames scored frames (at most
	// DriftWindow) over the threshold, the share of normal frames the
	// bundle promised over it, and whether the recent share is above the
	// promise beyond chance (Drift).
	RecentOverThreshold float64  `json:"recent_over_threshold"`
	RecentFrames        int      `json:"recent_frames"`
	PromisedRate        *float64 `json:"promised_false_alarm_rate,omitempty"`
	Drift               bool     `json:"drift"`
}

// Stats is the payload of <prefix>/stats.
type Stats struct {
	Time      time.Time              `json:"time"`
	UptimeS   float64                `json:"uptime_s"`
	Version   string                 `json:"version"`
	Providers map[string]string      `json:"providers"` // bundle -> execution provider
	Cameras   map[string]CameraStats `json:"cameras"`
	Queue     int                    `json:"event_queue"`
	// PublishSkipped counts score and snapshot messages not sent because
	// the broker was unreachable (events are queued instead).
	PublishSkipped uint64 `json:"publish_skipped"`
}

// Snapshot gathers the current figures; processed fps is measured since
// the previous call with the same memory.
func (d *Daemon) Snapshot(prev map[string]uint64, since time.Duration) (Stats, map[string]uint64) {
	s := Stats{Time: time.Now().UTC(), UptimeS: time.Since(d.started).Seconds(), Version: models.Version,
		Providers: map[string]string{}, Cameras: map[string]CameraStats{}, Queue: d.queue.Len(), PublishSkipped: d.pub.Skipped()}
	counts := map[string]uint64{}
	p := d.current()
	if p == nil {
		return s, counts
	}
	for _, m := range p.models {
		s.Providers[m.path] = m.det.Provider()
	}
	for _, c := range p.cameras {
		st := c.cam.Status()
		n := c.processed.Load()
		counts[c.cfg.Name] = n
		inf := c.latency.percentiles(0.5, 0.99)
		lat := c.e2e.percentiles(0.5, 0.99)
		drift := p.driftOf(c)
		s.Cameras[c.cfg.Name] = CameraStats{
			CaptureFPS: st.FPS, ProcessedFPS: float64(n-prev[c.cfg.Name]) / since.Seconds(),
			Dropped: st.Dropped + c.dropped.Load(), Reconnects: st.Reconnects, State: string(st.State),
			InferenceP50: nanToZero(inf[0]), InferenceP99: nanToZero(inf[1]), LatencyP50: nanToZero(lat[0]), LatencyP99: nanToZero(lat[1]),
			Damaged: st.Damaged, DetectorFailed: c.detectorFailed.Load(), NonFinite: c.nonFinite.Load(),
			RecentOverThreshold: drift.Share, RecentFrames: drift.Frames, PromisedRate: numberOrNil(drift.Promised), Drift: drift.Drifted,
		}
	}
	return s, counts
}

func numberOrNil(x float64) *float64 {
	if math.IsNaN(x) {
		return nil
	}
	return &x
}

func nanToZero(x float64) float64 {
	if x != x {
		return 0
	}
	return x
}

// stats publishes <prefix>/stats every interval (MQTT settings change only
// with a restart).
func (d *Daemon) stats(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	prev := map[string]uint64{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			var s Stats
			s, prev = d.Snapshot(prev, interval)
			if b, err := json.Marshal(s); err == nil {
				d.pub.Publish(d.pub.Topic("stats"), 0, false, b)
			}
		}
	}
}

// KnownCamera says whether the running configuration has the camera
// (mqtt.Commands).
func (d *Daemon) KnownCamera(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.cfg.Cameras {
		if c.Name == name {
			return true
		}
	}
	return false
}

// publishControlState publishes a camera's retained detect/state (ON or
// OFF) and threshold/state (the threshold it is judged by).
func (d *Daemon) publishControlState(camera string) {
	detect := "OFF"
	if d.control.Detect(camera) {
		detect = "ON"
	}
	d.pub.Publish(d.pub.Topic(camera, "detect", "state"), 1, true, []byte(detect))
	threshold, ok := d.control.Threshold(camera)
	if !ok {
		p := d.current()
		if p == nil {
			return // loading: published once running
		}
		for _, c := range p.cameras {
			if c.cfg.Name == camera {
				threshold, ok = c.threshold, true
			}
		}
	}
	if ok {
		d.pub.Publish(d.pub.Topic(camera, "threshold", "state"), 1, true, []byte(strconv.FormatFloat(threshold, 'g', -1, 64)))
	}
}

// publishControlStates publishes every camera's (on each connect).
func (d *Daemon) publishControlStates() {
	d.mu.Lock()
	cams := slices.Clone(d.cfg.Cameras)
	d.mu.Unlock()
	for _, c := range cams {
		d.publishControlState(c.Name)
	}
}

// TriggerPart starts judging a part on a triggered camera (id "": the next
// count) and returns the part's id; its result goes to
// <prefix>/<camera>/result.
func (d *Daemon) TriggerPart(camera, id string) (string, error) {
	at := time.Now()
	id = strings.TrimSpace(id)
	if len(id) > 128 || !printable(id) {
		return "", fmt.Errorf("part id %q: at most 128 printable characters", clip(id))
	}
	p := d.current()
	if p == nil {
		return "", errors.New("not running yet: the models are loading")
	}
	for _, c := range p.cameras {
		if c.cfg.Name == camera {
			if c.trig == nil {
				return "", fmt.Errorf("camera %q has no trigger configured (cameras[].trigger)", camera)
			}
			if reason := c.notReady(d.control.Detect(camera), at); reason != "" {
				return c.trig.refuse(camera, id, at, reason), nil
			}
			return c.trig.trigger(camera, id, at)
		}
	}
	return "", fmt.Errorf("no camera %q", camera)
}

// forwardResult shows a part result on the OPC UA address space and the
// Modbus map.
func (d *Daemon) forwardResult(r PartResult) {
	if d.opcua != nil {
		d.opcua.Publish(r.Camera, opcuaResult(r))
	}
	if d.modbus == nil {
		return
	}
	score := math.NaN()
	if r.Score != nil {
		score = *r.Score
	}
	d.modbus.Publish(r.Camera, modbus.Result{PartID: r.PartID, Verdict: r.Verdict, Score: score})
}

// Trigger is TriggerPart for the Modbus map (modbus.Line).
func (d *Daemon) Trigger(camera, partID string) error {
	_, err := d.TriggerPart(camera, partID)
	return err
}

// Ready says whether a triggered camera delivers frames (modbus.Line).
func (d *Daemon) Ready(camera string) bool {
	c := d.cameraRuntime(camera)
	return c != nil && c.trig != nil && c.notReady(d.control.Detect(camera), time.Now()) == ""
}

// Busy says whether a triggered camera has parts waiting (modbus.Line).
func (d *Daemon) Busy(camera string) bool {
	c := d.cameraRuntime(camera)
	return c != nil && c.trig != nil && c.trig.busy()
}

func (d *Daemon) cameraRuntime(name string) *cameraRuntime {
	if p := d.current(); p != nil {
		for _, c := range p.cameras {
			if c.cfg.Name == name {
				return c
			}
		}
	}
	return nil
}
