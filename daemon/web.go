package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/console"
	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/internal/atomicfile"
	"github.com/transformaly/transformaly/internal/heatmap"
)

// What the console is given, and how much of it is kept.
const (
	// liveEvery spaces the frames kept for live views (at most 5 a second
	// a camera, whatever the number of viewers: they share them).
	liveEvery = 200 * time.Millisecond
	// liveWatched is how long after a viewer's last request frames are
	// still kept: none are copied when no one watches.
	liveWatched = 3 * time.Second
	// liveMaxSide bounds live JPEGs, which are made at most once a frame.
	liveMaxSide = 800
	// scoreHistory is the scores kept per camera for charts and for the
	// "would flag" count: 2 minutes at 25 fps, about 170 kB.
	scoreHistory = 3000
	// eventHistory and partHistory bound the events and part results the
	// page lists; images are kept for the newest 50 of each (snapshots and
	// NG parts' maps, about 100 kB each).
	eventHistory, partHistory, keptImages = 200, 200, 50
)

// liveFrame is a camera's frame kept for the page, encoded once per kind.
type liveFrame struct {
	seq           uint64
	bgr           []byte
	width, height int
	anomaly       heatmap.Map
	mapped        bool
	caption       string

	once [2]sync.Once // plain, overlay
	jpeg [2][]byte
	err  [2]error
}

func (f *liveFrame) encode(overlay bool) ([]byte, error) {
	i := 0
	if overlay && f.mapped {
		i = 1
	}
	f.once[i].Do(func() {
		if i == 1 {
			f.jpeg[i], f.err[i] = heatmap.JPEG(f.bgr, f.width, f.height, f.anomaly, liveMaxSide, f.caption)
		} else {
			f.jpeg[i], f.err[i] = heatmap.FrameJPEG(f.bgr, f.width, f.height, liveMaxSide, f.caption)
		}
	})
	return f.jpeg[i], f.err[i]
}

// liveView holds a camera's newest frame for the page while someone
// watches.
type liveView struct {
	wanted atomic.Int64 // unix nanos of a viewer's last request
	mu     sync.Mutex
	frame  *liveFrame
	kept   time.Time
}

// watched says whether a viewer asked for frames lately.
func (l *liveView) watched(now time.Time) bool {
	return now.UnixNano()-l.wanted.Load() <= int64(liveWatched)
}

// due says whether a frame scored at now should be kept.
func (l *liveView) due(now time.Time) bool {
	if !l.watched(now) {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return now.Sub(l.kept) >= liveEvery
}

func (l *liveView) keep(now time.Time, f *liveFrame) {
	l.mu.Lock()
	l.frame, l.kept = f, now
	l.mu.Unlock()
}

func (l *liveView) latest() *liveFrame {
	l.wanted.Store(time.Now().UnixNano())
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.frame
}

// scoreRing keeps a camera's recent scores.
type scoreRing struct {
	mu   sync.Mutex
	vals []console.Score
	next int
	full bool
}

func (r *scoreRing) add(s console.Score) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.vals == nil {
		r.vals = make([]console.Score, scoreHistory)
	}
	r.vals[r.next] = s
	r.next = (r.next + 1) % len(r.vals)
	r.full = r.full || r.next == 0
}

// after lists the scores after since, oldest first.
func (r *scoreRing) after(since time.Time) []console.Score {
	r.mu.Lock()
	defer r.mu.Unlock()
	ordered := r.vals[:r.next]
	if r.full {
		ordered = slices.Concat(r.vals[r.next:], r.vals[:r.next])
	}
	i, _ := slices.BinarySearchFunc(ordered, since, func(s console.Score, t time.Time) int {
		if s.Time.After(t) {
			return 1
		}
		return -1
	})
	return slices.Clone(ordered[i:])
}

// recentLog keeps the newest items by id, and the images of the newest few
// of them, for the console; it outlives reloads. Nil-safe: a daemon
// without the console has none.
type recentLog[T any] struct {
	maxItems, maxImages int

	mu     sync.Mutex
	ids    []string // oldest first, with items
	items  []T
	images map[string][]byte
	order  []string // ids with images, oldest first
}

func newRecentLog[T any](maxItems, maxImages int) *recentLog[T] {
	return &recentLog[T]{maxItems: maxItems, maxImages: maxImages, images: map[string][]byte{}}
}

// put adds an item, or replaces the one of the same id.
func (l *recentLog[T]) put(id string, item T) {
	if l == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if i := slices.Index(l.ids, id); i >= 0 {
		l.items[i] = item
		return
	}
	l.ids, l.items = append(l.ids, id), append(l.items, item)
	if len(l.ids) > l.maxItems {
		l.ids, l.items = l.ids[1:], l.items[1:]
	}
}

// attach keeps an item's image, dropping the oldest past maxImages.
func (l *recentLog[T]) attach(id string, image []byte) {
	if l == nil || image == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.images[id]; !ok {
		l.order = append(l.order, id)
	}
	l.images[id] = image
	if len(l.order) > l.maxImages {
		delete(l.images, l.order[0])
		l.order = l.order[1:]
	}
}

// list gives the items newest first; mark tells each whether its image is
// kept.
func (l *recentLog[T]) list(mark func(*T, bool)) []T {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]T, 0, len(l.items))
	for i := len(l.items) - 1; i >= 0; i-- {
		it := l.items[i]
		_, ok := l.images[l.ids[i]]
		mark(&it, ok)
		out = append(out, it)
	}
	return out
}

func (l *recentLog[T]) image(id string) ([]byte, bool) {
	if l == nil {
		return nil, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.images[id]
	return b, ok
}

// consoleEvent is an event as the console lists it.
func consoleEvent(e Event) console.Event {
	ce := console.Event{ID: e.ID, Camera: e.Camera, StartTime: e.StartTime, EndTime: e.EndTime, PeakScore: e.PeakScore,
		FramesAbove: e.FramesAbove, Threshold: e.Threshold}
	if e.Region != nil {
		ce.Region = e.Region
	}
	return ce
}

// consolePart is a part result as the console lists it, under id.
func consolePart(id string, r PartResult) console.Part {
	return console.Part{ID: id, Camera: r.Camera, PartID: r.PartID, Verdict: r.Verdict, Reason: r.Reason, Score: r.Score,
		Threshold: r.Threshold, TriggerTime: r.TriggerTime, LatencyMS: r.LatencyMS}
}

// observeForConsole records a scored frame for the page: its score, and
// the frame itself, with its map (frameMap makes it once), while someone
// watches the live view.
func (c *cameraRuntime) observeForConsole(now time.Time, f capture.Frame, r detector.Result, anomalous bool, frameMap func() (heatmap.Map, error), threshold float64) {
	c.shadows.offer(c.cfg.Name, f, r.Score, anomalous)
	c.scores.add(console.Score{Time: f.Time, Score: r.Score, Pretrained: -r.LLPretrained, Student: -r.LLStudent, Patch: r.PatchScore, Anomalous: anomalous})
	if !c.liveFrameDue(now, f) {
		return
	}
	anomaly, err := frameMap()
	anomaly.Unboxed = !anomalous
	c.live.keep(now, &liveFrame{seq: f.Seq, bgr: slices.Clone(f.View.BGR), width: f.View.Width, height: f.View.Height,
		anomaly: anomaly, mapped: err == nil, caption: c.caption(r.Score, threshold)})
}

// showUnscored gives the live view a frame that is not scored (detect/set
// OFF, or a triggered camera between parts): aiming a camera needs its
// picture whether or not it is judged.
func (c *cameraRuntime) showUnscored(f capture.Frame, why string) {
	if now := time.Now(); c.liveFrameDue(now, f) {
		c.live.keep(now, &liveFrame{seq: f.Seq, bgr: slices.Clone(f.View.BGR), width: f.View.Width, height: f.View.Height,
			caption: c.cfg.Name + "  " + why})
	}
}

// liveFrameDue says whether f should be kept for the live view now; while
// no one watches it also stops the camera copying full frames for it.
func (c *cameraRuntime) liveFrameDue(now time.Time, f capture.Frame) bool {
	if !c.live.watched(now) {
		c.cam.WantViews(false)
		return false
	}
	return f.View != nil && c.live.due(now)
}

// webSource is the daemon as the console sees it.
type webSource struct {
	d         *Daemon
	normalDir string // web settings change only with a restart

	mu   sync.Mutex
	prev map[string]fpsSample // for scored fps
}

type fpsSample struct {
	n   uint64
	at  time.Time
	fps float64
}

var _ console.Source = (*webSource)(nil)

func (w *webSource) camera(name string) (*cameraRuntime, error) {
	if c := w.d.cameraRuntime(name); c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("%w %q", console.ErrNoCamera, name)
}

func (w *webSource) Cameras() []console.Camera {
	p := w.d.current()
	if p == nil {
		return nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	var out []console.Camera
	for _, c := range p.cameras {
		st := c.cam.Status()
		n := c.processed.Load()
		s, ok := w.prev[c.cfg.Name]
		if !ok || n < s.n {
			s = fpsSample{n: n, at: now}
		} else if dt := now.Sub(s.at).Seconds(); dt >= 1 {
			s = fpsSample{n: n, at: now, fps: float64(n-s.n) / dt}
		}
		w.prev[c.cfg.Name] = s
		threshold := c.threshold
		if t, ok := w.d.control.Threshold(c.cfg.Name); ok {
			threshold = t
		}
		out = append(out, console.Camera{Name: c.cfg.Name, State: string(st.State), Bundle: filepath.Base(c.cfg.Model), Provider: c.model.det.Provider(),
			CaptureFPS: st.FPS, ScoredFPS: s.fps, Reconnects: st.Reconnects, Damaged: st.Damaged, Threshold: threshold, BundleThreshold: c.threshold,
			Detect: w.d.control.Detect(c.cfg.Name), Triggered: c.trig != nil, Events: c.events.Load()})
		out[len(out)-1].FalseRejects, out[len(out)-1].TrueDefects = w.d.reviews.counts(c.cfg.Name)
		if p := w.d.current(); p != nil {
			d := p.driftOf(c)
			last := &out[len(out)-1]
			last.RecentOverThreshold, last.RecentFrames, last.PromisedRate, last.Drift = d.Share, d.Frames, numberOrNil(d.Promised), d.Drifted
		}
	}
	return out
}

func (w *webSource) LiveJPEG(camera string, overlay bool) ([]byte, uint64, error) {
	c, err := w.camera(camera)
	if err != nil {
		return nil, 0, err
	}
	f := c.live.latest() // marks the view watched first: then frames keep coming
	c.cam.WantViews(true)
	if f == nil {
		return nil, 0, errors.New("no scored frame yet (the camera is offline, not scored, or the view just opened)")
	}
	jpg, err := f.encode(overlay)
	return jpg, f.seq, err
}

func (w *webSource) Scores(camera string, since time.Time) ([]console.Score, error) {
	c, err := w.camera(camera)
	if err != nil {
		return nil, err
	}
	return c.scores.after(since), nil
}

func (w *webSource) Events() []console.Event {
	return w.d.events.list(func(e *console.Event, image bool) { e.Snapshot = image })
}

func (w *webSource) Snapshot(id string) ([]byte, bool) { return w.d.events.image(id) }

func (w *webSource) Parts() []console.Part {
	return w.d.parts.list(func(p *console.Part, image bool) {
		p.Map = image
		if p.Verdict == VerdictNG {
			p.Review = w.d.reviews.get(p.Camera, ngImageName(p.TriggerTime, p.PartID))
		}
	})
}

// ReviewPart marks an NG part false reject or true defect: its kept frame
// goes to the camera's normal images or its true defects.
func (w *webSource) ReviewPart(id, mark string) error {
	for _, p := range w.Parts() {
		if p.ID != id {
			continue
		}
		if p.Verdict != VerdictNG {
			return fmt.Errorf("part %s of %s is %s: only NG parts are reviewed", p.PartID, p.Camera, p.Verdict)
		}
		if err := w.d.reviews.mark(p.Camera, ngImageName(p.TriggerTime, p.PartID), mark); err != nil {
			return fmt.Errorf("part %s of %s: %w", p.PartID, p.Camera, err)
		}
		slog.Info("NG part reviewed on the console", "camera", p.Camera, "part_id", p.PartID, "mark", mark)
		return nil
	}
	return fmt.Errorf("part %q: %w (the console lists the last %d)", id, console.ErrNoPart, partHistory)
}

func (w *webSource) PartMap(id string) ([]byte, bool) { return w.d.parts.image(id) }

// SetThreshold goes the MQTT threshold/set way: kept in control.json and
// published as the retained state, in turn with MQTT's changes.
func (w *webSource) SetThreshold(camera string, threshold *float64) error {
	if _, err := w.camera(camera); err != nil {
		return err
	}
	return w.d.SetThreshold(camera, threshold)
}

// SaveNormal writes the newest live frame as collect would.
func (w *webSource) SaveNormal(camera string) (string, error) {
	c, err := w.camera(camera)
	if err != nil {
		return "", err
	}
	f := c.live.latest()
	if f == nil {
		return "", errors.New("no frame to save yet: the live view keeps them")
	}
	dir := filepath.Join(w.normalDir, camera)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", err
	}
	png, err := capture.EncodeImage(f.bgr, f.width, f.height, ".png")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, capture.FrameFileName(camera, time.Now(), f.seq, "png"))
	return path, atomicfile.Write(path, png)
}

// consoleOptions reads the console's settings, its password included.
func (c Config) consoleOptions() (console.Options, error) {
	opts := console.Options{AllowChanges: c.Web.AllowChanges, Username: c.Web.Username}
	if c.Web.PasswordFile != "" {
		b, err := os.ReadFile(c.Web.PasswordFile)
		if err != nil {
			return opts, fmt.Errorf("web.password_file: %w", err)
		}
		opts.Password = strings.TrimRight(string(b), "\r\n")
	}
	return opts, nil
}
