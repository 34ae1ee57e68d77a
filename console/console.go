// Package console is the daemon's web page: each camera's live view with
// its anomaly map, a chart of its recent scores, the recent events with
// their snapshots, and (when allowed) its threshold and saving frames as
// normal images. It knows the daemon only through Source, so it is
// testable alone; the page and its one library (uPlot) are embedded, no
// Node toolchain at build or run time.
package console

import (
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/transformaly/transformaly/internal/guard"
)

//go:embed assets
var assets embed.FS

// Camera is one camera as the page shows it.
type Camera struct {
	Name       string  `json:"name"`
	State      string  `json:"state"` // online, reconnecting, offline, starting
	Bundle     string  `json:"bundle"`
	Provider   string  `json:"provider"`
	CaptureFPS float64 `json:"capture_fps"`
	ScoredFPS  float64 `json:"scored_fps"`
	Reconnects uint64  `json:"reconnects"`
	Damaged    uint64  `json:"damaged_frames"`
	Threshold  float64 `json:"threshold"`
	// BundleThreshold is the configured or calibrated one a reset returns to.
	BundleThreshold float64 `json:"bundle_threshold"`
	Detect          bool    `json:"detect"`    // scored (detect/set ON)
	Triggered       bool    `json:"triggered"` // judges parts on trigger
	Events          uint64  `json:"events"`
	// FalseRejects and TrueDefects count the camera's NG parts reviewed.
	FalseRejects int `json:"false_rejects"`
	TrueDefects  int `json:"true_defects"`
	// RecentOverThreshold is the share of the last RecentFrames scored
	// frames over the threshold, PromisedRate the share of normal frames
	// the bundle promised (nil: no calibration), and Drift says the recent
	// share is above the promise beyond chance.
	RecentOverThreshold float64  `json:"recent_over_threshold"`
	RecentFrames        int      `json:"recent_frames"`
	PromisedRate        *float64 `json:"promised_false_alarm_rate,omitempty"`
	Drift               bool     `json:"drift"`
}

// Score is one scored frame.
type Score struct {
	Time       time.Time `json:"t"`
	Score      float64   `json:"score"`
	Pretrained float64   `json:"pretrained"` // the parts: -log-likelihoods
	Student    float64   `json:"student"`
	Patch      float64   `json:"patch"` // NaN without a patch feature space
	Anomalous  bool      `json:"anomalous"`
}

// Event is an anomaly event, open or ended.
type Event struct {
	ID          string     `json:"id"`
	Camera      string     `json:"camera"`
	StartTime   time.Time  `json:"start_time"`
	EndTime     *time.Time `json:"end_time,omitempty"`
	PeakScore   float64    `json:"peak_score"`
	FramesAbove int        `json:"frames_above"`
	Threshold   float64    `json:"threshold"`
	Region      any        `json:"region,omitempty"`
	Snapshot    bool       `json:"snapshot"` // GET /api/events/<id>/snapshot.jpg
}

// Part is a triggered part's result.
type Part struct {
	ID          string    `json:"id"` // the page's: GET /api/parts/<id>/map.jpg
	Camera      string    `json:"camera"`
	PartID      string    `json:"part_id"`
	Verdict     string    `json:"verdict"` // ok, ng or error
	Reason      string    `json:"reason,omitempty"`
	Score       *float64  `json:"score,omitempty"`
	Threshold   float64   `json:"threshold"`
	TriggerTime time.Time `json:"trigger_time"`
	LatencyMS   float64   `json:"latency_ms"`
	Map         bool      `json:"map"` // an NG part's frame with its anomaly map
	// Review is an operator's mark on an NG part: false_reject or
	// true_defect ("" while none).
	Review string `json:"review,omitempty"`
}

// ModelState is what a camera's bundle is and what could replace it.
type ModelState struct {
	Live       string `json:"live"`       // the bundle scoring now
	Configured string `json:"configured"` // the configuration's
	// Previous is what a rollback returns to, PromotedAt when Live was
	// promoted (both absent while the configured bundle runs).
	Previous   string       `json:"previous,omitempty"`
	PromotedAt *time.Time   `json:"promoted_at,omitempty"`
	Job        *RefitState  `json:"job,omitempty"` // the camera's latest background job
	Candidates []Candidate  `json:"candidates"`    // newest first
	Shadow     *ShadowState `json:"shadow,omitempty"`
}

// RefitState is a background job's progress: a refit or a comparison.
type RefitState struct {
	ID       string    `json:"id"`
	Kind     string    `json:"kind"`  // refit or comparison
	State    string    `json:"state"` // running, done, failed or cancelled
	Stage    string    `json:"stage,omitempty"`
	Fraction float64   `json:"fraction"` // of the stage
	LeftS    float64   `json:"left_s"`   // the stage's time left, as the fit estimates it
	Error    string    `json:"error,omitempty"`
	Started  time.Time `json:"started"`
}

// Candidate is a refitted bundle kept beside the live one.
type Candidate struct {
	ID            string      `json:"id"`
	Bundle        string      `json:"bundle"`
	From          string      `json:"from"` // the live bundle it was refitted from
	Created       time.Time   `json:"created"`
	TrainImages   int         `json:"train_images"`
	HoldoutImages int         `json:"holdout_images"`
	Threshold     float64     `json:"threshold"`
	Compare       *Comparison `json:"compare,omitempty"`
}

// Comparison is the live bundle and a candidate scored on the same
// labelled images, each at its own threshold (eval --json's figures).
type Comparison struct {
	Time             time.Time      `json:"time"`
	Live             string         `json:"live"`
	Normal           string         `json:"normal"`    // held-out normal images
	Anomalous        string         `json:"anomalous"` // true defects
	LiveFigures      map[string]any `json:"live_figures"`
	CandidateFigures map[string]any `json:"candidate_figures"`
}

// ShadowState is a candidate scoring the live frames beside the live
// bundle, publishing nothing.
type ShadowState struct {
	Candidate     string         `json:"candidate"` // its id
	Frames        int            `json:"frames"`    // scored by both
	Agree         int            `json:"agree"`     // with the same verdict
	Disagreements []Disagreement `json:"disagreements"`
}

// Disagreement is a frame the two bundles judged differently.
type Disagreement struct {
	Time           time.Time `json:"time"`
	LiveScore      float64   `json:"live_score"`
	LiveAnomalous  bool      `json:"live_anomalous"`
	CandidateScore float64   `json:"candidate_score"`
	Image          string    `json:"image"` // GET /api/cameras/<camera>/shadow/<image>.jpg
}

// Model actions (ModelAction).
var modelActions = []string{"refit", "cancel", "compare", "shadow", "unshadow", "promote", "rollback"}

// Source is what the daemon offers the page.
type Source interface {
	Cameras() []Camera
	// LiveJPEG is the camera's latest frame (after crop and rotation), with
	// its anomaly map over it when overlay; seq changes with the frame. A
	// call also tells the daemon someone watches: frames are kept for the
	// page only then.
	LiveJPEG(camera string, overlay bool) (jpeg []byte, seq uint64, err error)
	// Scores are the camera's scores after since, oldest first.
	Scores(camera string, since time.Time) ([]Score, error)
	Events() []Event // newest first
	Snapshot(eventID string) ([]byte, bool)
	Parts() []Part // newest first
	PartMap(id string) ([]byte, bool)
	// SetThreshold sets a camera's threshold (nil: back to the bundle's),
	// as MQTT's threshold/set does.
	SetThreshold(camera string, threshold *float64) error
	// SaveNormal saves the camera's latest frame as a normal image for the
	// next fit, as collect does, and says where.
	SaveNormal(camera string) (string, error)
	// ReviewPart marks an NG part (by the page's id) false_reject (its
	// frame joins the camera's normal images) or true_defect (kept as a
	// labelled anomalous image).
	ReviewPart(id, mark string) error
	// Model is the camera's bundle, candidates and background job.
	Model(camera string) (ModelState, error)
	// ModelAction starts a refit (or cancels it), compares, shadows (or
	// stops shadowing) or promotes a candidate, or rolls back.
	ModelAction(camera, action, candidate string) error
	// ShadowImage is a disagreeing frame's JPEG.
	ShadowImage(camera, image string) ([]byte, bool)
}

// ErrNoCamera is returned by Source for an unknown camera (404).
var ErrNoCamera = errors.New("no such camera")

// ErrNoPart is returned by Source for a part the page does not list (404).
var ErrNoPart = errors.New("no such part")

// Options shape the page's safety.
type Options struct {
	// AllowChanges lets the page set thresholds and save frames.
	AllowChanges bool
	// Username and Password, when Password is set, guard every page and
	// API call with HTTP basic auth.
	Username, Password string
	// LiveFPS is the most frames a second one live view sends (default 4).
	LiveFPS float64
	// MaxLiveViews bounds the live views open at once (default 32): each is
	// a goroutine and a connection, so many tabs cannot exhaust the daemon.
	MaxLiveViews int
}

// Handler serves the page under "/" and its API under "/api/".
func Handler(src Source, opts Options) http.Handler {
	if opts.LiveFPS <= 0 {
		opts.LiveFPS = 4
	}
	if opts.MaxLiveViews <= 0 {
		opts.MaxLiveViews = 32
	}
	s := &server{src: src, opts: opts}
	mux := http.NewServeMux()
	static, _ := fs.Sub(assets, "assets")
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", http.FileServerFS(static)))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		data, _ := assets.ReadFile("assets/index.html")
		w.Write(data)
	})
	// Browsers ask for /favicon.ico whatever the page links: a 404 there
	// was an error in the browser's console on every load.
	mux.HandleFunc("GET /favicon.ico", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/svg+xml")
		data, _ := assets.ReadFile("assets/icon.svg")
		w.Write(data)
	})
	mux.HandleFunc("GET /api/cameras", s.cameras)
	mux.HandleFunc("GET /api/cameras/{camera}/live.mjpeg", s.live)
	mux.HandleFunc("GET /api/cameras/{camera}/frame.jpg", s.frame)
	mux.HandleFunc("GET /api/cameras/{camera}/scores", s.scores)
	mux.HandleFunc("GET /api/cameras/{camera}/flagged", s.flagged)
	mux.HandleFunc("POST /api/cameras/{camera}/threshold", s.changes(s.threshold))
	mux.HandleFunc("POST /api/cameras/{camera}/normal", s.changes(s.saveNormal))
	mux.HandleFunc("GET /api/events", s.events)
	mux.HandleFunc("GET /api/events/{id}/snapshot.jpg", s.snapshot)
	mux.HandleFunc("GET /api/parts", s.parts)
	mux.HandleFunc("GET /api/parts/{id}/map.jpg", s.partMap)
	mux.HandleFunc("POST /api/parts/{id}/review", s.changes(s.review))
	mux.HandleFunc("GET /api/cameras/{camera}/model", s.model)
	mux.HandleFunc("GET /api/cameras/{camera}/shadow/{image}", s.shadowImage)
	mux.HandleFunc("POST /api/cameras/{camera}/model/{action}", s.changes(s.modelAction))
	var h http.Handler = guard.HTTP("console", mux)
	if opts.Password != "" {
		h = basicAuth(h, opts.Username, opts.Password)
	}
	return securityHeaders(h)
}

type server struct {
	src       Source
	opts      Options
	liveViews atomic.Int64
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		slog.Debug("console: response not written", "err", err)
	}
}

// fail answers an error: 404 for an unknown camera, else status.
func fail(w http.ResponseWriter, err error, status int) {
	if errors.Is(err, ErrNoCamera) || errors.Is(err, ErrNoPart) {
		status = http.StatusNotFound
	}
	http.Error(w, err.Error(), status)
}

func (s *server) cameras(w http.ResponseWriter, _ *http.Request) {
	cams := s.src.Cameras()
	if cams == nil {
		cams = []Camera{} // loading: an empty list, not null
	}
	writeJSON(w, map[string]any{"allow_changes": s.opts.AllowChanges, "cameras": cams})
}

// frame is the latest frame as one JPEG.
func (s *server) frame(w http.ResponseWriter, r *http.Request) {
	jpg, _, err := s.src.LiveJPEG(r.PathValue("camera"), r.URL.Query().Get("overlay") != "0")
	if err != nil {
		fail(w, err, http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "image/jpeg")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(jpg)
}

// live streams the camera's frames as MJPEG (multipart/x-mixed-replace,
// which an <img> shows in every browser), at most LiveFPS a second and
// only new frames, until the viewer leaves.
func (s *server) live(w http.ResponseWriter, r *http.Request) {
	if n := s.liveViews.Add(1); n > int64(s.opts.MaxLiveViews) {
		s.liveViews.Add(-1)
		http.Error(w, fmt.Sprintf("%d live views are open already: close some", s.opts.MaxLiveViews), http.StatusServiceUnavailable)
		return
	}
	defer s.liveViews.Add(-1)
	camera, overlay := r.PathValue("camera"), r.URL.Query().Get("overlay") != "0"
	if _, _, err := s.src.LiveJPEG(camera, overlay); errors.Is(err, ErrNoCamera) {
		fail(w, err, http.StatusNotFound)
		return
	}
	const boundary = "transformaly-frame"
	w.Header().Set("Content-Type", "multipart/x-mixed-replace; boundary="+boundary)
	w.Header().Set("Cache-Control", "no-store")
	rc := http.NewResponseController(w)
	tick := time.NewTicker(time.Duration(float64(time.Second) / s.opts.LiveFPS))
	defer tick.Stop()
	var last uint64
	for {
		jpg, seq, err := s.src.LiveJPEG(camera, overlay)
		if err == nil && seq != last {
			last = seq
			// The server's write timeout is for requests, not streams.
			rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := fmt.Fprintf(w, "--%s\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n", boundary, len(jpg)); err != nil {
				return
			}
			if _, err := w.Write(append(jpg, '\r', '\n')); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
}

func (s *server) scores(w http.ResponseWriter, r *http.Request) {
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			http.Error(w, "since: unix milliseconds", http.StatusBadRequest)
			return
		}
		since = time.UnixMilli(ms)
	}
	scores, err := s.src.Scores(r.PathValue("camera"), since)
	if err != nil {
		fail(w, err, http.StatusInternalServerError)
		return
	}
	// JSON has no NaN: parts a bundle lacks are null.
	type point struct {
		T          int64    `json:"t"` // unix ms
		Score      *float64 `json:"score"`
		Pretrained *float64 `json:"pretrained"`
		Student    *float64 `json:"student"`
		Patch      *float64 `json:"patch"`
		Anomalous  bool     `json:"anomalous"`
	}
	num := func(x float64) *float64 {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil
		}
		return &x
	}
	out := make([]point, len(scores))
	for i, sc := range scores {
		out[i] = point{sc.Time.UnixMilli(), num(sc.Score), num(sc.Pretrained), num(sc.Student), num(sc.Patch), sc.Anomalous}
	}
	writeJSON(w, out)
}

// flagged counts the recent frames a threshold would flag: what a new
// threshold would have done, before it is set.
func (s *server) flagged(w http.ResponseWriter, r *http.Request) {
	t, err := strconv.ParseFloat(r.URL.Query().Get("threshold"), 64)
	if err != nil || math.IsNaN(t) || math.IsInf(t, 0) {
		http.Error(w, "threshold: a finite number", http.StatusBadRequest)
		return
	}
	scores, err := s.src.Scores(r.PathValue("camera"), time.Time{})
	if err != nil {
		fail(w, err, http.StatusInternalServerError)
		return
	}
	flagged := 0
	for _, sc := range scores {
		if !(sc.Score <= t) { // NaN scores are flagged, as the daemon does
			flagged++
		}
	}
	writeJSON(w, map[string]any{"threshold": t, "flagged": flagged, "frames": len(scores)})
}

// changes guards what changes the daemon: refused unless allowed, and only
// from the page itself (a form on another site cannot post here: browsers
// send no custom header across origins without asking).
func (s *server) changes(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.opts.AllowChanges {
			http.Error(w, "changes are off: set web.allow_changes: true in the configuration", http.StatusForbidden)
			return
		}
		if r.Header.Get("X-Transformaly") != "1" {
			http.Error(w, "changes come from the console page only (header X-Transformaly: 1)", http.StatusForbidden)
			return
		}
		h(w, r)
	}
}

// readText reads a change's short body, trimmed; false (answered 400)
// when it cannot.
func readText(w http.ResponseWriter, r *http.Request) (string, bool) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 128))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return "", false
	}
	return strings.TrimSpace(string(body)), true
}

func (s *server) threshold(w http.ResponseWriter, r *http.Request) {
	text, ok := readText(w, r)
	if !ok {
		return
	}
	var t *float64
	if !strings.EqualFold(text, "reset") {
		v, err := strconv.ParseFloat(text, 64)
		if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
			http.Error(w, fmt.Sprintf("%q is not a finite number or reset", text), http.StatusBadRequest)
			return
		}
		t = &v
	}
	camera := r.PathValue("camera")
	if err := s.src.SetThreshold(camera, t); err != nil {
		fail(w, err, http.StatusInternalServerError)
		return
	}
	slog.Info("threshold set from the web console", "camera", camera, "threshold", text, "remote", r.RemoteAddr)
	writeJSON(w, map[string]any{"camera": camera, "threshold": text})
}

func (s *server) saveNormal(w http.ResponseWriter, r *http.Request) {
	path, err := s.src.SaveNormal(r.PathValue("camera"))
	if err != nil {
		fail(w, err, http.StatusServiceUnavailable)
		return
	}
	slog.Info("frame saved as a normal image from the web console", "camera", r.PathValue("camera"), "path", path)
	writeJSON(w, map[string]string{"path": path})
}

func (s *server) model(w http.ResponseWriter, r *http.Request) {
	m, err := s.src.Model(r.PathValue("camera"))
	if err != nil {
		fail(w, err, http.StatusInternalServerError)
		return
	}
	writeJSON(w, m)
}

func (s *server) shadowImage(w http.ResponseWriter, r *http.Request) {
	jpg, ok := s.src.ShadowImage(r.PathValue("camera"), strings.TrimSuffix(r.PathValue("image"), ".jpg"))
	writeImage(w, jpg, ok, "no such frame (the console keeps the last disagreements only)")
}

// modelAction: the body names the candidate, for compare, shadow and
// promote.
func (s *server) modelAction(w http.ResponseWriter, r *http.Request) {
	action := r.PathValue("action")
	if !slices.Contains(modelActions, action) {
		http.Error(w, fmt.Sprintf("%q: one of %s", action, strings.Join(modelActions, ", ")), http.StatusNotFound)
		return
	}
	candidate, ok := readText(w, r)
	if !ok {
		return
	}
	camera := r.PathValue("camera")
	if err := s.src.ModelAction(camera, action, candidate); err != nil {
		fail(w, err, http.StatusConflict)
		return
	}
	slog.Info("model action from the web console", "camera", camera, "action", action, "candidate", candidate, "remote", r.RemoteAddr)
	writeJSON(w, map[string]string{"camera": camera, "action": action, "candidate": candidate})
}

// review marks an NG part: the body is false_reject or true_defect.
func (s *server) review(w http.ResponseWriter, r *http.Request) {
	mark, ok := readText(w, r)
	if !ok {
		return
	}
	if mark != "false_reject" && mark != "true_defect" {
		http.Error(w, fmt.Sprintf("%q: false_reject or true_defect", mark), http.StatusBadRequest)
		return
	}
	if err := s.src.ReviewPart(r.PathValue("id"), mark); err != nil {
		fail(w, err, http.StatusConflict)
		return
	}
	slog.Info("part reviewed from the web console", "id", r.PathValue("id"), "mark", mark, "remote", r.RemoteAddr)
	writeJSON(w, map[string]string{"id": r.PathValue("id"), "review": mark})
}

func (s *server) events(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, ofCamera(s.src.Events(), r.URL.Query().Get("camera"), func(e Event) string { return e.Camera }))
}

func (s *server) snapshot(w http.ResponseWriter, r *http.Request) {
	jpg, ok := s.src.Snapshot(r.PathValue("id"))
	writeImage(w, jpg, ok, "no snapshot for this event (still open, or no longer kept)")
}

func (s *server) parts(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, ofCamera(s.src.Parts(), r.URL.Query().Get("camera"), func(p Part) string { return p.Camera }))
}

// ofCamera keeps the items of one camera ("": all).
func ofCamera[T any](items []T, camera string, cameraOf func(T) string) []T {
	if camera == "" {
		return items
	}
	kept := items[:0:0]
	for _, it := range items {
		if cameraOf(it) == camera {
			kept = append(kept, it)
		}
	}
	return kept
}

func (s *server) partMap(w http.ResponseWriter, r *http.Request) {
	jpg, ok := s.src.PartMap(r.PathValue("id"))
	writeImage(w, jpg, ok, "no map for this part (not NG, NG images off, or no longer kept)")
}

// writeImage answers a kept JPEG, which never changes, or 404.
func writeImage(w http.ResponseWriter, jpg []byte, ok bool, missing string) {
	if !ok {
		http.Error(w, missing, http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "image/jpeg")
	w.Header().Set("Cache-Control", "max-age=3600")
	w.Write(jpg)
}

// basicAuth compares hashes in constant time, so neither the password nor
// its length leaks through timing.
func basicAuth(h http.Handler, username, password string) http.Handler {
	wantUser, wantPass := sha256.Sum256([]byte(username)), sha256.Sum256([]byte(password))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		gotUser, gotPass := sha256.Sum256([]byte(u)), sha256.Sum256([]byte(p))
		if !ok || subtle.ConstantTimeCompare(gotUser[:], wantUser[:])&subtle.ConstantTimeCompare(gotPass[:], wantPass[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="transformaly", charset="UTF-8"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// securityHeaders keep the page from being framed or fed foreign scripts.
func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'")
		h.ServeHTTP(w, r)
	})
}
