package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"image"
	"log/slog"
	"math"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/console"
	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/internal/heatmap"
	"github.com/transformaly/transformaly/models"
	"github.com/transformaly/transformaly/mqtt"
)

// ScoreMessage is the payload of <prefix>/<camera>/score. A score part
// that is not a finite number is null (JSON has no NaN: such a message
// failed to encode and was dropped without a word), and Error says so.
type ScoreMessage struct {
	Camera       string    `json:"camera"`
	Frame        uint64    `json:"frame"`
	Timestamp    time.Time `json:"timestamp"` // capture time
	Score        *float64  `json:"score"`
	Threshold    float64   `json:"threshold"`
	Anomalous    bool      `json:"anomalous"`
	LLPretrained *float64  `json:"ll_pretrained"`
	LLStudent    *float64  `json:"ll_student"`
	// PatchScore is the largest patch distance (bundles with a patch
	// feature space only).
	PatchScore *float64 `json:"patch_score,omitempty"`
	// Region is the frame's worst region (bundles with a patch feature
	// space only).
	Region      *Region `json:"region,omitempty"`
	InferenceMS float64 `json:"inference_ms"`
	LatencyMS   float64 `json:"latency_ms"` // capture to publish
	// NormalQuantile is the share of normal parts scoring at or below this
	// one, from the bundle's calibration (bundles fitted before it lack it).
	NormalQuantile *float64 `json:"normal_quantile,omitempty"`
	Error          string   `json:"error,omitempty"`
	// Bundle is the file name of the bundle that scored the frame (a
	// promote or a reload may change it).
	Bundle string `json:"bundle"`
}

// nonFiniteLogEvery spaces the log lines about non-finite scores and failed
// batches: a provider gone wrong emits them for every frame.
const nonFiniteLogEvery = time.Minute

// peakFrame is what a snapshot is drawn from.
type peakFrame struct {
	view    *capture.View // the camera's frame
	anomaly heatmap.Map   // from the bundle that scored it (a reload may change bundles)
	caption string        // score, threshold and rarity, for the snapshot
}

// cameraRuntime is one camera inside a running pipeline.
type cameraRuntime struct {
	cfg       CameraConfig
	cam       *capture.Camera
	model     *modelRuntime
	threshold float64
	tracker   *tracker
	shadows   *shadows // candidates scoring beside the live bundle (lent)

	processed atomic.Uint64
	dropped   atomic.Uint64 // replaced while waiting for the detector
	nonFinite atomic.Uint64 // frames whose score was NaN or infinite
	// detectorFailed counts frames lost to a detector error on their batch.
	detectorFailed atomic.Uint64
	// recent holds the last frames' verdicts, for the share over the
	// threshold against the promise (drift.go).
	recent recentVerdicts
	// normalQuantile reads a score against the bundle's calibration.
	normalQuantile func(score float64) float64
	// normalPatchDistance scales anomaly maps and finds regions (NaN for
	// a bundle without a patch feature space).
	normalPatchDistance float64
	// grid is the teacher's patches a side, the scale of the maps' blur.
	grid int
	// trig judges parts on trigger (nil: the camera judges its stream).
	trig *triggers
	// live and scores are what the web console shows.
	live   liveView
	scores scoreRing
	// nonFiniteLogged is when such a frame was last logged (unix nanos).
	nonFiniteLogged atomic.Int64
	lastScore       atomic.Uint64 // float64 bits
	events          atomic.Uint64
	lastSent        time.Time
	peak            *peakFrame
	latency         *window // inference ms
	e2e             *window // capture-to-publish ms
}

// modelRuntime is one loaded bundle and the cameras it scores.
type modelRuntime struct {
	path    string
	det     *detector.Detector
	cameras []*cameraRuntime

	mu      sync.Mutex
	pending map[*cameraRuntime]capture.Frame // newest frame per camera
	signal  chan struct{}

	failLogged time.Time // last log of a failed batch (detectLoop's own)
}

// pipeline is everything a configuration runs: replaced whole on reload.
type pipeline struct {
	cfg     Config
	models  []*modelRuntime
	cameras []*cameraRuntime
	pub     *mqtt.Publisher
	control *Control         // run-time settings over MQTT (nil: none)
	results func(PartResult) // also told every part result (the Modbus map); nil: none
	// ngImages keeps NG parts' images (nil: off); events and parts are
	// the console's lists (nil: off). The daemon's, lent before start.
	ngImages *ngArchive
	events   *recentLog[console.Event]
	parts    *recentLog[console.Part]

	heartbeat atomic.Int64 // unix nanos of the last detector loop turn
	cancel    context.CancelFunc
	wg        sync.WaitGroup
}

// buildPipeline loads and warms every bundle and prepares the cameras; it
// starts nothing, so a failed reload leaves the running pipeline alone.
// Trackers are carried over by camera name so a reload does not split an
// open event. It gives up between bundles once ctx ends (loading one can
// take minutes: a TensorRT engine build).
func buildPipeline(ctx context.Context, cfg Config, pub *mqtt.Publisher, control *Control, trackers map[string]*tracker) (*pipeline, error) {
	p := &pipeline{cfg: cfg, pub: pub, control: control}
	byPath := map[string]*modelRuntime{}
	for i := range cfg.Cameras {
		cc := cfg.Camera(i)
		m, ok := byPath[cc.Model]
		if !ok {
			if err := ctx.Err(); err != nil {
				p.closeModels()
				return nil, fmt.Errorf("stopped while loading the bundles: %w", err)
			}
			det, err := detector.Load(cc.Model, detector.RunnerOptions{Threads: cfg.Detector.Threads, Provider: cfg.Detector.Provider, Precision: cfg.Detector.Precision, ProviderLibrary: cfg.Detector.ProviderLibrary,
				CUDAOptions: cfg.Detector.CUDAOptions, TensorRTOptions: cfg.Detector.TensorRTOptions, CacheDir: cfg.CacheDirectory, MaxBatch: cfg.Detector.MaxBatch})
			if err != nil {
				p.closeModels()
				return nil, fmt.Errorf("cameras[%d].model: %w", i, err)
			}
			m = &modelRuntime{path: cc.Model, det: det, pending: map[*cameraRuntime]capture.Frame{}, signal: make(chan struct{}, 1)}
			byPath[cc.Model] = m
			p.models = append(p.models, m)
			if err := warmUp(det, cfg.Detector.MaxBatch); err != nil {
				p.closeModels()
				return nil, fmt.Errorf("warm up %s: %w", cc.Model, err)
			}
			slog.Info("model loaded", "bundle", cc.Model, "provider", det.Provider(), "image_size", det.Size(), "threshold", det.Info.Threshold)
		}
		// Views are kept for snapshots and NG parts' images (and, while
		// someone watches, for the console: Camera.WantViews).
		capCfg, err := cc.CaptureConfig(m.det.Size(), snapshotsEnabled(cfg.MQTT) || cc.Trigger != nil && cfg.NGImages.MaxMB > 0)
		if err != nil {
			p.closeModels()
			return nil, fmt.Errorf("cameras[%d]: %w", i, err)
		}
		if t := m.det.Info.Tiling; t != nil {
			capCfg.Tiling = &t.Tiling // frames cut into the bundle's tiles
		}
		rt := &cameraRuntime{cfg: cc, model: m, threshold: m.det.Info.Threshold, latency: newWindow(1024), e2e: newWindow(1024),
			normalQuantile: m.det.Info.Calibration.NormalQuantile, normalPatchDistance: math.NaN(), grid: m.det.Info.Teacher.Config.Grid()}
		if pi := m.det.Info.Patch; pi != nil {
			rt.normalPatchDistance = pi.NormalDistance
		}
		if cc.Trigger != nil {
			rt.trig = newTriggers(*cc.Trigger, p.publishResult)
		}
		if cc.Threshold != nil {
			rt.threshold = *cc.Threshold
		}
		if t, ok := trackers[cc.Name]; ok {
			rt.tracker = t // its settings change in start, once the old pipeline has stopped
		} else {
			rt.tracker = newTracker(cc.Name, cfg.Events)
		}
		name := cc.Name
		rt.cam, err = capture.NewCamera(capCfg, func(s capture.Status) {
			pub.Availability(name, s.State == capture.StateOnline)
		})
		if err != nil {
			p.closeModels()
			return nil, fmt.Errorf("cameras[%d]: %w", i, err)
		}
		m.cameras = append(m.cameras, rt)
		p.cameras = append(p.cameras, rt)
	}
	return p, nil
}

// warmUp runs the detector at batch 1 and the max batch, twice each: ORT
// plans memory on the first run and touches it on the second, and TensorRT
// builds its engines at the first run of a shape. A tiled bundle's batches
// are frames' tiles: as many as the frames it was fitted on had.
func warmUp(det *detector.Detector, maxBatch int) error {
	perFrame := 1
	if t := det.Info.Tiling; t != nil {
		perFrame = max(1, t.TilesPerFrame[1])
	}
	for _, n := range []int{maxBatch * perFrame, perFrame} {
		img := make([]byte, n*det.Size()*det.Size()*3)
		for range 2 {
			if _, err := det.Score(img, n, det.Info.Threshold); err != nil {
				return err
			}
		}
	}
	return nil
}

func (p *pipeline) closeModels() {
	for _, m := range p.models {
		m.det.Close()
	}
}

func (p *pipeline) beat() { p.heartbeat.Store(time.Now().UnixNano()) }

// start runs the cameras and the detector loops.
func (p *pipeline) start(ctx context.Context) {
	ctx, p.cancel = context.WithCancel(ctx)
	p.beat()
	for _, c := range p.cameras {
		c.tracker.cfg = p.cfg.Events
		p.pub.Discover(c.cfg.Name)
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			if err := c.cam.Run(ctx); err != nil {
				slog.Error("camera stopped", "camera", c.cfg.Name, "err", err)
			}
		}()
		go func() {
			defer p.wg.Done()
			for f := range c.cam.Frames() {
				// detect/set OFF, or no part triggered: captured, shown, not scored
				switch {
				case !p.control.Detect(c.cfg.Name):
					c.showUnscored(f, "not scored: detect off")
				case c.trig != nil && !c.trig.wants(f.Seq, f.Time):
					c.showUnscored(f, "waiting for a trigger")
				default:
					c.model.put(c, f)
					continue
				}
				f.View.Release()
			}
		}()
	}
	for _, m := range p.models {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.detectLoop(ctx, m)
		}()
	}
}

// stop ends the cameras and loops and releases the models.
func (p *pipeline) stop() {
	if p.cancel != nil {
		p.cancel()
	}
	p.wg.Wait()
	p.closeModels()
}

// put keeps the newest frame of a camera for the detector.
func (m *modelRuntime) put(c *cameraRuntime, f capture.Frame) {
	m.mu.Lock()
	if old, waiting := m.pending[c]; waiting {
		c.dropped.Add(1)
		old.View.Release()
		if c.trig != nil {
			c.trig.unassign(old.Seq)
		}
	}
	m.pending[c] = f
	m.mu.Unlock()
	select {
	case m.signal <- struct{}{}:
	default:
	}
}

type pendingFrame struct {
	cam   *cameraRuntime
	frame capture.Frame
}

// take removes up to n waiting frames, oldest capture first.
func (m *modelRuntime) take(n int) []pendingFrame {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]pendingFrame, 0, len(m.pending))
	for c, f := range m.pending {
		out = append(out, pendingFrame{c, f})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].frame.Time.Before(out[j].frame.Time) })
	out = out[:min(n, len(out))]
	for _, pf := range out {
		delete(m.pending, pf.cam)
	}
	if len(m.pending) > 0 {
		select {
		case m.signal <- struct{}{}:
		default:
		}
	}
	return out
}

// fill adds frames to a batch as they arrive, until it is full, holds a
// frame of every camera that is online, or wait has passed: frames that
// cannot come (an offline camera, or more batch slots than cameras) are
// never waited for past the moment all that can come is in. It is false
// once ctx ends.
func (m *modelRuntime) fill(ctx context.Context, batch []pendingFrame, maxBatch int, wait time.Duration) ([]pendingFrame, bool) {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	for len(batch) < maxBatch && len(batch) < m.online() {
		select {
		case <-ctx.Done():
			return batch, false
		case <-deadline.C:
			return append(batch, m.take(maxBatch-len(batch))...), true
		case <-m.signal:
			batch = append(batch, m.take(maxBatch-len(batch))...)
		}
	}
	return batch, true
}

// online counts the cameras of this bundle delivering frames now; a
// triggered camera delivers only now and then, and is never waited for.
func (m *modelRuntime) online() int {
	n := 0
	for _, c := range m.cameras {
		if c.trig == nil && c.cam.Status().State == capture.StateOnline {
			n++
		}
	}
	return n
}

// detectLoop batches frames of the cameras sharing a bundle: it waits up
// to batch_wait for more cameras' frames when the batch is not full, so a
// GPU box with many cameras runs full batches.
func (p *pipeline) detectLoop(ctx context.Context, m *modelRuntime) {
	maxBatch := p.cfg.Detector.MaxBatch
	var pixels []byte
	var sizes []image.Point
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
			p.beat() // idle but alive
			continue
		case <-m.signal:
		}
		batch := m.take(maxBatch)
		if len(batch) > 0 && len(batch) < maxBatch && p.cfg.Detector.BatchWait > 0 {
			var ok bool
			if batch, ok = m.fill(ctx, batch, maxBatch, p.cfg.Detector.BatchWait); !ok {
				return
			}
		}
		if len(batch) == 0 {
			continue
		}
		pixels, sizes = pixels[:0], sizes[:0]
		for _, pf := range batch {
			pixels = append(pixels, pf.frame.RGB...)
			sizes = append(sizes, image.Pt(pf.frame.Width, pf.frame.Height))
		}
		start := time.Now()
		// A tiled bundle's frames go in as their tiles, one batch.
		res, err := m.det.ScoreFrames(pixels, sizes, m.det.Info.Threshold) // each camera judges by its own threshold
		inferMS := float64(time.Since(start).Microseconds()) / 1000
		if err != nil {
			// The frames are lost: counted per camera, their buffers given
			// back, and the log spared a line per batch.
			for _, pf := range batch {
				pf.cam.detectorFailed.Add(1)
				pf.frame.View.Release()
			}
			if now := time.Now(); now.Sub(m.failLogged) >= nonFiniteLogEvery {
				m.failLogged = now
				slog.Error("detector failed on a batch; its frames are not scored (logged at most once a minute, counted in transformaly_frames_detector_failed_total)",
					"bundle", m.path, "frames", len(batch), "err", err)
			}
			continue
		}
		for i, pf := range batch {
			p.handle(pf.cam, pf.frame, res[i], inferMS)
		}
		p.beat()
	}
}

// handle publishes one scored frame and feeds its camera's event tracker.
func (p *pipeline) handle(c *cameraRuntime, f capture.Frame, r detector.Result, inferMS float64) {
	c.processed.Add(1)
	c.lastScore.Store(math.Float64bits(r.Score))
	c.latency.add(inferMS)
	now := time.Now()
	// A score that is no number is never "normal": the frame is anomalous.
	var fault string
	if !r.Finite() {
		fault = fmt.Sprintf("the detector gave a non-finite score (score %g, ll_pretrained %g, ll_student %g)", r.Score, r.LLPretrained, r.LLStudent)
		n := c.nonFinite.Add(1)
		if last := c.nonFiniteLogged.Load(); now.UnixNano()-last >= int64(nonFiniteLogEvery) && c.nonFiniteLogged.CompareAndSwap(last, now.UnixNano()) {
			slog.Error("non-finite scores: frames judged anomalous (a provider or precision fault, or a damaged bundle)",
				"camera", c.cfg.Name, "frame", f.Seq, "score", r.Score, "ll_pretrained", r.LLPretrained, "ll_student", r.LLStudent, "non_finite_total", n)
		}
	}
	threshold := c.threshold
	if t, ok := p.control.Threshold(c.cfg.Name); ok { // threshold/set over MQTT
		threshold = t
	}
	anomalous := fault != "" || r.Score > threshold
	c.recent.add(anomalous)
	// The map is made for every frame only where it gives the frame's
	// region (a patch feature space); otherwise once, when a part's worst
	// frame, a live view or a new peak needs it.
	var anomaly heatmap.Map
	var mapErr error
	mapped := false
	frameMap := func() (heatmap.Map, error) {
		if !mapped {
			anomaly, mapErr = heatmap.ForResult(r.PatchDistances, r.MapCols, r.MapRows, c.grid, c.normalPatchDistance, r.TokenErrors, len(r.BlockErrors))
			mapped = true
			if mapErr != nil {
				slog.Error("anomaly map failed", "camera", c.cfg.Name, "err", mapErr)
			}
		}
		return anomaly, mapErr
	}
	var region *Region
	if r.PatchDistances != nil {
		if m, err := frameMap(); err == nil && f.Width > 0 {
			box := m.Region(f.Width, f.Height)
			region = &Region{X: box.Min.X, Y: box.Min.Y, Width: box.Dx(), Height: box.Dy()}
		}
	}
	if rate := p.cfg.MQTT.ScoreRate; rate <= 0 || now.Sub(c.lastSent).Seconds() >= 1/rate {
		c.lastSent = now
		msg := ScoreMessage{Camera: c.cfg.Name, Frame: f.Seq, Timestamp: f.Time.UTC(), Score: detector.NumberOrNull(r.Score), Threshold: threshold, Bundle: filepath.Base(c.cfg.Model),
			Anomalous: anomalous, LLPretrained: detector.NumberOrNull(r.LLPretrained), LLStudent: detector.NumberOrNull(r.LLStudent), PatchScore: detector.NumberOrNull(r.PatchScore), InferenceMS: inferMS,
			LatencyMS: float64(now.Sub(f.Time).Microseconds()) / 1000, Region: region, Error: fault}
		if c.normalQuantile != nil {
			msg.NormalQuantile = detector.NumberOrNull(c.normalQuantile(r.Score))
		}
		if b, err := json.Marshal(msg); err != nil {
			slog.Error("score message not encoded", "camera", c.cfg.Name, "err", err)
		} else {
			p.pub.Publish(p.pub.Topic(c.cfg.Name, "score"), p.cfg.MQTT.ScoreQoS, false, b)
		}
	}
	c.e2e.add(float64(time.Since(f.Time).Microseconds()) / 1000)
	if c.trig != nil {
		var evidence func() *partImage
		if p.ngImages != nil && f.View != nil {
			evidence = func() *partImage {
				m, _ := frameMap()
				return &partImage{bgr: slices.Clone(f.View.BGR), width: f.View.Width, height: f.View.Height, anomaly: m,
					caption: c.caption(r.Score, threshold)}
			}
		}
		c.trig.scored(f.Seq, r, threshold, region, fault, evidence)
	}
	c.observeForConsole(now, f, r, anomalous, frameMap, threshold)
	events, newPeak := c.tracker.observe(f.Seq, f.Time, r.Score, region, anomalous, threshold)
	if newPeak {
		if c.peak != nil {
			c.peak.view.Release()
		}
		m, _ := frameMap()
		c.peak = &peakFrame{view: f.View, anomaly: m, caption: c.caption(r.Score, threshold)}
	} else {
		f.View.Release()
	}
	for _, e := range events {
		p.publishEvent(c, e)
	}
}

// caption names the camera, score, threshold and rarity on saved images.
func (c *cameraRuntime) caption(score, threshold float64) string {
	caption := fmt.Sprintf("%s  score %.4g  threshold %.4g", c.cfg.Name, score, threshold)
	if c.normalQuantile != nil {
		if rarity := models.RarityText(c.normalQuantile(score)); rarity != "" {
			caption += "  " + rarity
		}
	}
	return caption
}

func (p *pipeline) publishEvent(c *cameraRuntime, e Event) {
	if err := p.pub.Event(e.Camera, e); err != nil {
		slog.Error("could not queue an event", "camera", c.cfg.Name, "event", e.ID, "err", err)
	}
	if e.Type == EventNew {
		c.events.Add(1)
	}
	slog.Info("anomaly event", "camera", c.cfg.Name, "type", e.Type, "id", e.ID, "peak_score", e.PeakScore, "frames_above", e.FramesAbove)
	var snapshot []byte
	if e.Type == EventEnd && c.peak != nil {
		if v := c.peak.view; v != nil {
			jpg, err := heatmap.JPEG(v.BGR, v.Width, v.Height, c.peak.anomaly, p.cfg.MQTT.SnapshotSize, c.peak.caption)
			switch {
			case err != nil:
				slog.Error("snapshot failed", "camera", c.cfg.Name, "err", err)
			case snapshotsEnabled(p.cfg.MQTT): // views are also kept for the console
				if err := p.pub.Snapshot(c.cfg.Name, jpg); err != nil {
					slog.Error("could not queue a snapshot", "camera", c.cfg.Name, "event", e.ID, "err", err)
				}
			}
			snapshot = jpg
			v.Release()
		}
		c.peak = nil
	}
	p.events.put(e.ID, consoleEvent(e))
	p.events.attach(e.ID, snapshot)
}

func snapshotsEnabled(m mqtt.Config) bool { return m.Snapshots == nil || *m.Snapshots }

// flush ends open events (shutdown), publishing their end.
func (p *pipeline) flush() {
	now := time.Now()
	for _, c := range p.cameras {
		for _, e := range c.tracker.flush(now) {
			p.publishEvent(c, e)
		}
	}
}

// adoptPeaks takes over, from the stopped pipeline old, the peak frames of
// the events still open, so that their snapshots survive a reload (they
// were dropped with the old pipeline's cameras).
func (p *pipeline) adoptPeaks(old *pipeline) {
	before := map[string]*cameraRuntime{}
	for _, c := range old.cameras {
		before[c.cfg.Name] = c
	}
	for _, c := range p.cameras {
		if o := before[c.cfg.Name]; o != nil && o.peak != nil && o.tracker == c.tracker && c.peak == nil {
			c.peak, o.peak = o.peak, nil
		}
	}
}

// trackers hands the event state to the next pipeline.
func (p *pipeline) trackers() map[string]*tracker {
	out := map[string]*tracker{}
	for _, c := range p.cameras {
		out[c.cfg.Name] = c.tracker
	}
	return out
}

// ready: models warmed (true once built), at least one camera online, and
// no broker refusing what we publish.
func (p *pipeline) ready() bool {
	if p.pub != nil && p.pub.Refused() {
		return false
	}
	for _, c := range p.cameras {
		if c.cam.Status().State == capture.StateOnline {
			return true
		}
	}
	return false
}

// window keeps the last n samples for percentiles.
type window struct {
	mu   sync.Mutex
	vals []float64
	next int
	full bool
}

func newWindow(n int) *window { return &window{vals: make([]float64, n)} }

func (w *window) add(v float64) {
	w.mu.Lock()
	w.vals[w.next] = v
	w.next = (w.next + 1) % len(w.vals)
	w.full = w.full || w.next == 0
	w.mu.Unlock()
}

// percentiles returns the requested quantiles (NaN when empty).
func (w *window) percentiles(qs ...float64) []float64 {
	w.mu.Lock()
	n := w.next
	if w.full {
		n = len(w.vals)
	}
	s := append([]float64(nil), w.vals[:n]...)
	w.mu.Unlock()
	sort.Float64s(s)
	out := make([]float64, len(qs))
	for i, q := range qs {
		if len(s) == 0 {
			out[i] = math.NaN()
			continue
		}
		out[i] = s[min(int(q*float64(len(s))), len(s)-1)]
	}
	return out
}
