package console

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSource is a daemon of one camera, "line1".
type fakeSource struct {
	mu        sync.Mutex
	seq       uint64
	scores    []Score
	threshold *float64
	saved     int
	reviews   map[string]string
	actions   []string
}

func (f *fakeSource) Cameras() []Camera {
	return []Camera{{Name: "line1", State: "online", Threshold: 1}}
}

func (f *fakeSource) LiveJPEG(camera string, overlay bool) ([]byte, uint64, error) {
	if camera != "line1" {
		return nil, 0, fmt.Errorf("%w %q", ErrNoCamera, camera)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++ // a new frame for every request
	return fmt.Appendf(nil, "jpeg %d overlay %v", f.seq, overlay), f.seq, nil
}

func (f *fakeSource) Scores(camera string, since time.Time) ([]Score, error) {
	var out []Score
	for _, s := range f.scores {
		if s.Time.After(since) {
			out = append(out, s)
		}
	}
	return out, nil
}

func (f *fakeSource) Events() []Event {
	return []Event{{ID: "b", Camera: "line2", Snapshot: false}, {ID: "a", Camera: "line1", Snapshot: true}}
}

func (f *fakeSource) Snapshot(id string) ([]byte, bool) { return []byte("snap"), id == "a" }

func (f *fakeSource) Parts() []Part {
	return []Part{{ID: "p2", Camera: "line1", Verdict: "ng", Map: true}, {ID: "p1", Camera: "line2", Verdict: "ok"}}
}

func (f *fakeSource) PartMap(id string) ([]byte, bool) { return []byte("map"), id == "p2" }

func (f *fakeSource) SetThreshold(camera string, t *float64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.threshold = t
	return nil
}

func (f *fakeSource) SaveNormal(camera string) (string, error) { f.saved++; return "/x.png", nil }

func (f *fakeSource) Model(camera string) (ModelState, error) {
	if camera != "line1" {
		return ModelState{}, ErrNoCamera
	}
	return ModelState{Live: "line1.tfy", Configured: "line1.tfy"}, nil
}

func (f *fakeSource) ModelAction(camera, action, candidate string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.actions = append(f.actions, camera+" "+action+" "+candidate)
	return nil
}

func (f *fakeSource) ShadowImage(camera, image string) ([]byte, bool) { return nil, false }

func (f *fakeSource) ReviewPart(id, mark string) error {
	if id != "p2" {
		return ErrNoPart
	}
	if f.reviews == nil {
		f.reviews = map[string]string{}
	}
	f.reviews[id] = mark
	return nil
}

func get(t *testing.T, url string, header ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if len(header) == 2 {
		req.SetBasicAuth(header[0], header[1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func post(t *testing.T, url, body string, pageHeader bool) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if pageHeader {
		req.Header.Set("X-Transformaly", "1")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestPageAndReadOnlyAPI(t *testing.T) {
	now := time.Now()
	src := &fakeSource{scores: []Score{
		{Time: now.Add(-2 * time.Second), Score: 0.5, Patch: math.NaN()},
		{Time: now.Add(-time.Second), Score: 2, Patch: 1.5, Anomalous: true},
		{Time: now, Score: math.NaN(), Patch: math.NaN(), Anomalous: true},
	}}
	srv := httptest.NewServer(Handler(src, Options{}))
	defer srv.Close()

	resp, body := get(t, srv.URL+"/")
	if resp.StatusCode != 200 || !strings.Contains(body, "/assets/app.js") || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("page: %s %q", resp.Status, body[:min(80, len(body))])
	}
	for _, asset := range []string{"app.js", "style.css", "uPlot.iife.min.js", "uPlot.min.css"} {
		if resp, _ := get(t, srv.URL+"/assets/"+asset); resp.StatusCode != 200 {
			t.Errorf("asset %s: %s", asset, resp.Status)
		}
	}
	_, body = get(t, srv.URL+"/api/cameras")
	if !strings.Contains(body, `"allow_changes":false`) || !strings.Contains(body, `"name":"line1"`) {
		t.Errorf("cameras: %s", body)
	}
	// Scores after since; NaN parts are null, not invalid JSON.
	_, body = get(t, fmt.Sprintf("%s/api/cameras/line1/scores?since=%d", srv.URL, now.Add(-1500*time.Millisecond).UnixMilli()))
	var pts []map[string]any
	if err := json.Unmarshal([]byte(body), &pts); err != nil || len(pts) != 2 || pts[0]["patch"] != 1.5 || pts[1]["score"] != nil {
		t.Errorf("scores: %s (%v)", body, err)
	}
	_, body = get(t, srv.URL+"/api/cameras/line1/flagged?threshold=1")
	if !strings.Contains(body, `"flagged":2`) || !strings.Contains(body, `"frames":3`) {
		t.Errorf("flagged at 1: %s, want the score of 2 and the NaN", body)
	}
	if resp, _ := get(t, srv.URL+"/api/cameras/nocam/frame.jpg"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("frame of an unknown camera: %s", resp.Status)
	}
	_, body = get(t, srv.URL+"/api/events?camera=line1")
	if !strings.Contains(body, `"id":"a"`) || strings.Contains(body, `"id":"b"`) {
		t.Errorf("events of line1: %s", body)
	}
	if resp, _ := get(t, srv.URL+"/api/events/b/snapshot.jpg"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("snapshot of an event without one: %s", resp.Status)
	}
	_, body = get(t, srv.URL+"/api/parts?camera=line1")
	if !strings.Contains(body, `"id":"p2"`) || strings.Contains(body, `"id":"p1"`) {
		t.Errorf("parts of line1: %s", body)
	}
	if resp, body := get(t, srv.URL+"/api/parts/p2/map.jpg"); resp.StatusCode != 200 || body != "map" {
		t.Errorf("map of an NG part: %s %q", resp.Status, body)
	}

	// Read-only: changes are refused and nothing changes.
	if code, body := post(t, srv.URL+"/api/cameras/line1/threshold", "3", true); code != http.StatusForbidden || !strings.Contains(body, "allow_changes") {
		t.Errorf("threshold on a read-only console: %d %s", code, body)
	}
	if code, _ := post(t, srv.URL+"/api/cameras/line1/normal", "", true); code != http.StatusForbidden || src.saved != 0 {
		t.Errorf("save normal on a read-only console: %d, saved %d", code, src.saved)
	}
	if code, _ := post(t, srv.URL+"/api/parts/p2/review", "false_reject", true); code != http.StatusForbidden || src.reviews != nil {
		t.Errorf("review on a read-only console: %d, reviews %v", code, src.reviews)
	}
	if code, _ := post(t, srv.URL+"/api/cameras/line1/model/refit", "", true); code != http.StatusForbidden || src.actions != nil {
		t.Errorf("refit on a read-only console: %d, actions %v", code, src.actions)
	}
	if _, body := get(t, srv.URL+"/api/cameras/line1/model"); !strings.Contains(body, `"live":"line1.tfy"`) {
		t.Errorf("model: %s", body)
	}
	if resp, body := get(t, srv.URL+"/favicon.ico"); resp.StatusCode != 200 || !strings.Contains(body, "<svg") {
		t.Errorf("favicon: %s", resp.Status)
	}
}

func TestChangesNeedPermissionAndThePage(t *testing.T) {
	src := &fakeSource{}
	srv := httptest.NewServer(Handler(src, Options{AllowChanges: true}))
	defer srv.Close()
	if code, _ := post(t, srv.URL+"/api/cameras/line1/threshold", "3", false); code != http.StatusForbidden || src.threshold != nil {
		t.Errorf("a post without the page's header (another site's form): %d", code)
	}
	if code, body := post(t, srv.URL+"/api/cameras/line1/threshold", "2.5", true); code != 200 || src.threshold == nil || *src.threshold != 2.5 {
		t.Errorf("threshold 2.5: %d %s", code, body)
	}
	if code, _ := post(t, srv.URL+"/api/cameras/line1/threshold", "reset", true); code != 200 || src.threshold != nil {
		t.Errorf("reset: %d, threshold %v", code, src.threshold)
	}
	for _, bad := range []string{"NaN", "1e999", "abc", ""} {
		if code, _ := post(t, srv.URL+"/api/cameras/line1/threshold", bad, true); code != http.StatusBadRequest {
			t.Errorf("threshold %q: %d", bad, code)
		}
	}
	if code, body := post(t, srv.URL+"/api/cameras/line1/normal", "", true); code != 200 || src.saved != 1 {
		t.Errorf("save normal: %d %s", code, body)
	}
	if code, body := post(t, srv.URL+"/api/parts/p2/review", "true_defect", true); code != 200 || src.reviews["p2"] != "true_defect" {
		t.Errorf("review true defect: %d %s", code, body)
	}
	if code, _ := post(t, srv.URL+"/api/parts/p2/review", "maybe", true); code != http.StatusBadRequest {
		t.Errorf("review with a bad mark: %d", code)
	}
	if code, _ := post(t, srv.URL+"/api/parts/nopart/review", "false_reject", true); code != http.StatusNotFound {
		t.Errorf("review of an unknown part: %d", code)
	}
	if code, body := post(t, srv.URL+"/api/cameras/line1/model/promote", "20261207T010203Z", true); code != 200 || len(src.actions) != 1 || src.actions[0] != "line1 promote 20261207T010203Z" {
		t.Errorf("promote: %d %s %v", code, body, src.actions)
	}
	if code, _ := post(t, srv.URL+"/api/cameras/line1/model/explode", "", true); code != http.StatusNotFound || len(src.actions) != 1 {
		t.Errorf("an unknown model action: %d", code)
	}
}

func TestBasicAuthGuardsEverything(t *testing.T) {
	srv := httptest.NewServer(Handler(&fakeSource{}, Options{Username: "line", Password: "s3cret"}))
	defer srv.Close()
	for _, path := range []string{"/", "/api/cameras", "/assets/app.js", "/api/cameras/line1/frame.jpg"} {
		if resp, _ := get(t, srv.URL+path); resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), "Basic") {
			t.Errorf("%s without credentials: %s", path, resp.Status)
		}
		if resp, _ := get(t, srv.URL+path, "line", "wrong"); resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("%s with a wrong password: %s", path, resp.Status)
		}
		if resp, _ := get(t, srv.URL+path, "line", "s3cret"); resp.StatusCode != http.StatusOK {
			t.Errorf("%s with the password: %s", path, resp.Status)
		}
	}
}

// The live view is a multipart stream of whole JPEGs at the configured
// rate; past the limit of open views a new one is refused.
func TestLiveViewStreamsFramesAndIsBounded(t *testing.T) {
	srv := httptest.NewServer(Handler(&fakeSource{}, Options{LiveFPS: 50, MaxLiveViews: 2}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func() *http.Response {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/cameras/line1/live.mjpeg?overlay=0", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}
	a := open()
	defer a.Body.Close()
	mediaType, params, err := mime.ParseMediaType(a.Header.Get("Content-Type"))
	if err != nil || mediaType != "multipart/x-mixed-replace" {
		t.Fatalf("content type %q (%v)", a.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(bufio.NewReader(a.Body), params["boundary"])
	start := time.Now()
	for i := range 5 {
		part, err := mr.NextPart()
		if err != nil {
			t.Fatalf("part %d: %v", i, err)
		}
		b, _ := io.ReadAll(part)
		if part.Header.Get("Content-Type") != "image/jpeg" || !strings.HasSuffix(string(b), "overlay false") {
			t.Errorf("part %d: %q %q", i, part.Header.Get("Content-Type"), b)
		}
	}
	if el := time.Since(start); el < 60*time.Millisecond {
		t.Errorf("5 frames in %s at 50 a second: not throttled", el)
	}
	b := open()
	defer b.Body.Close()
	if c := open(); c.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a third live view past a limit of 2: %s", c.Status)
	}
}
