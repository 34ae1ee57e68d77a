package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	cdpruntime "github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// chromium finds Debian's browser (make deps and .ci/run install it).
func chromium(t testing.TB) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("chromium is not installed (make deps installs it)")
	return ""
}

// browser opens a headless Chromium for the test (no sandbox: CI runs as
// root, where Chromium's sandbox refuses to start).
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium(t)), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.WindowSize(1280, 900))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// The first run starts the browser, which lives as long as that run's
	// context: this one, not the timed ones of later steps.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start %s: %v", chromium(t), err)
	}
	return ctx
}

// do runs browser steps within limit.
func do(t *testing.T, ctx context.Context, limit time.Duration, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// value runs one browser action within limit and returns its value.
func value[T any](t *testing.T, ctx context.Context, limit time.Duration, what string, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// poll waits for a JavaScript condition on the page.
func poll(expression string, limit time.Duration) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](expression, chromedp.WithPollingInterval(200*time.Millisecond), chromedp.WithPollingTimeout(limit))
}

// startConsoleDaemon runs a daemon whose camera line1 plays video in a
// loop (paced; extraCamera adds keys to it) with the console allowed to
// change things, and gives the console's URL.
func startConsoleDaemon(t *testing.T, video, bundle, broker, state, extraCamera string) string {
	t.Helper()
	port := freePort(t)
	startDaemon(t, fmt.Sprintf(`
cameras:
  - {name: line1, source: %q, model: %q, loop: true, pace: true%s}
mqtt: {broker: %s}
metrics: {address: "127.0.0.1:%d"}
web: {allow_changes: true}
state_directory: %q
`, video, bundle, extraCamera, broker, port, state))
	return waitForConsole(t, port)
}

func css(sel string) chromedp.CSS { return chromedp.CSS(sel) }

// pageErrors collects what the browser reports as errors for the test's
// pages (a resource that failed to load, such as a missing favicon, or an
// exception), from now until the test ends.
func pageErrors(ctx context.Context) func() []string {
	var mu sync.Mutex
	var errs []string
	add := func(s string) { mu.Lock(); errs = append(errs, s); mu.Unlock() }
	entries := chromedp.Events(ctx, cdplog.EntryAdded)
	exceptions := chromedp.Events(ctx, cdpruntime.ExceptionThrown)
	go func() {
		for ev, err := range entries {
			if err != nil {
				return
			}
			if ev.Entry.Level == cdplog.EntryLevelError {
				add(ev.Entry.Text + " " + ev.Entry.URL)
			}
		}
	}()
	go func() {
		for ev, err := range exceptions {
			if err != nil {
				return
			}
			d := ev.ExceptionDetails
			what := d.Text
			if d.Exception != nil {
				what += " " + d.Exception.Description
			}
			add(fmt.Sprintf("%s %s:%d", what, d.URL, d.LineNumber+1))
		}
	}()
	return func() []string { mu.Lock(); defer mu.Unlock(); return slices.Clone(errs) }
}

// waitForConsole waits for a daemon's console on port and gives its URL.
func waitForConsole(t *testing.T, port int) string {
	t.Helper()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	eventually(t, "the console at "+base, 30*time.Second, func() bool {
		resp, err := http.Get(base + "/api/cameras")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return base
}

// The console in a real browser, on the daemon scoring a video with
// defects: the camera, a live image that changes, a chart with points, an
// event with its snapshot, a threshold change that takes effect; and a
// read-only console that refuses it. Screenshots go to the test's folder
// (and to $CONSOLE_SCREENSHOT, for the README, when set).
func TestWebConsoleInChromium(t *testing.T) {
	f := getDaemonFixture(t)
	b := startMosquitto(t, "")
	sub := subscribe(t, b.url(), "transformaly/#", "test-sub-console")
	shots, state := t.TempDir(), t.TempDir()
	base := startConsoleDaemon(t, f.video, f.bundle, b.url(), state, "")
	ctx := browser(t)
	errs := pageErrors(ctx)
	do(t, ctx, 30*time.Second, "open the console", chromedp.Navigate(base+"/"), chromedp.WaitVisible(css("#camera-line1 .live")))

	// The camera's own picture by default (the map is an overlay to turn
	// on), one card using the width, numbers alike (the threshold field
	// too: it showed 24.113422039... cut off).
	layout := value(t, ctx, 10*time.Second, "the layout", chromedp.Evaluate[map[string]any](`(() => {
		const card = document.querySelector("#camera-line1"), input = card.querySelector(".threshold-input");
		return {overlay: card.querySelector(".overlay").checked,
			share: card.getBoundingClientRect().width / document.querySelector("#cameras").getBoundingClientRect().width,
			threshold: input.value, alike: input.value === String(Number(Number(input.value).toPrecision(4)))};
	})()`))
	if layout["overlay"] != false || layout["share"].(float64) < 0.9 || layout["alike"] != true {
		t.Errorf("console layout: %v; want the map off by default, one card the width of its column, the threshold to 4 digits", layout)
	}
	// The chart keeps the threshold readable beside a spike 40 times it,
	// and shows scores when most frames are over the threshold.
	clip := value(t, ctx, 5*time.Second, "the chart's axis", chromedp.Evaluate[[]float64](`(() => {
		const spike = {threshold: 10, scores: [...Array(99).fill(5), 400]}; const r = yRange(spike, 0, 400);
		const over = {threshold: 10, scores: Array(100).fill(180)}; const r2 = yRange(over, 170, 190);
		return [r[1], spike.clipped, r2[1]];
	})()`))
	if clip[0] > 40 || clip[1] != 400 || clip[2] < 190 {
		t.Errorf("axis top %g with a threshold of 10 and a spike of 400 (named: %g), want the threshold in view; %g with every score near 180", clip[0], clip[1], clip[2])
	}

	// The live image changes.
	do(t, ctx, 20*time.Second, "the live image", poll(`document.querySelector("#camera-line1 .live").naturalWidth > 0`, 20*time.Second))
	first := value(t, ctx, 10*time.Second, "the live image", chromedp.Screenshot(css("#camera-line1 .view")))
	time.Sleep(1500 * time.Millisecond)
	second := value(t, ctx, 10*time.Second, "the live image again", chromedp.Screenshot(css("#camera-line1 .view")))
	if bytes.Equal(first, second) {
		t.Error("the live image did not change in 1.5 s")
	}

	// The chart draws points.
	do(t, ctx, 20*time.Second, "chart points", poll(`Number(document.querySelector("#camera-line1").dataset.points) >= 10`, 20*time.Second),
		chromedp.WaitVisible(css("#camera-line1 .chart canvas")))

	// An event with its snapshot, once a defective part has passed.
	do(t, ctx, 60*time.Second, "an event with its snapshot",
		poll(`[...document.querySelectorAll("#events li img")].some(i => i.complete && i.naturalWidth > 0)`, 60*time.Second))
	// A snapshot opens large, with its caption.
	do(t, ctx, 10*time.Second, "open a snapshot large",
		chromedp.Evaluate[chromedp.Void](`[...document.querySelectorAll("#events li img")].find(i => i.naturalWidth > 0).click()`),
		poll(`document.querySelector("#viewer").open && document.querySelector("#viewer img").naturalWidth > 0`, 10*time.Second))
	if w := value(t, ctx, 5*time.Second, "the large snapshot", chromedp.Evaluate[float64](`document.querySelector("#viewer img").getBoundingClientRect().width`)); w < 200 {
		t.Errorf("the opened snapshot is %g px wide", w)
	}
	os.WriteFile(filepath.Join(shots, "console-snapshot.jpg"), value(t, ctx, 10*time.Second, "screenshot", chromedp.FullScreenshot(80)), 0o644)
	do(t, ctx, 5*time.Second, "close the snapshot", chromedp.Click(css("#viewer .close")), poll(`!document.querySelector("#viewer").open`, 5*time.Second))
	page := value(t, ctx, 10*time.Second, "screenshot", chromedp.FullScreenshot(80))
	os.WriteFile(filepath.Join(shots, "console.jpg"), page, 0o644)
	if p := os.Getenv("CONSOLE_SCREENSHOT"); p != "" {
		os.WriteFile(p, page, 0o644)
	}

	// A threshold set on the page takes effect: the API, the retained
	// MQTT state and the score messages all carry it.
	const threshold = 12345.5
	do(t, ctx, 20*time.Second, "set the threshold",
		chromedp.SetValue(css("#camera-line1 .threshold-input"), strconv.FormatFloat(threshold, 'f', -1, 64)),
		chromedp.Click(css("#camera-line1 .threshold-set")),
		poll(`document.querySelector("#camera-line1 .threshold-status").dataset.result === "ok"`, 20*time.Second))
	eventually(t, "scores judged by the new threshold", 10*time.Second, func() bool {
		m := sub.on("transformaly/line1/score")
		if len(m) == 0 {
			return false
		}
		var s struct {
			Threshold float64 `json:"threshold"`
		}
		json.Unmarshal(m[len(m)-1].Payload, &s)
		return s.Threshold == threshold
	})
	if st := sub.on("transformaly/line1/threshold/state"); len(st) == 0 || string(st[len(st)-1].Payload) != "12345.5" {
		t.Errorf("threshold state over MQTT: %v", st)
	}
	// The count of recent frames a threshold would flag, as it is typed.
	do(t, ctx, 10*time.Second, "would-flag count",
		chromedp.SetValue(css("#camera-line1 .threshold-input"), ""),
		chromedp.SendKeys(css("#camera-line1 .threshold-input"), "-1000"), // below every score: all flagged
		poll(`/^[1-9]\d* of the last \d+ frames would be flagged/.test(document.querySelector("#camera-line1 .threshold-status").textContent)`, 10*time.Second))
	t.Logf("typing a threshold: %q", value(t, ctx, 5*time.Second, "status", chromedp.Text(css("#camera-line1 .threshold-status"))))
	os.WriteFile(filepath.Join(shots, "console-threshold.jpg"), value(t, ctx, 10*time.Second, "screenshot", chromedp.FullScreenshot(80)), 0o644)

	// "Save frame as normal" writes the live frame as collect does.
	do(t, ctx, 10*time.Second, "save a normal frame", chromedp.Click(css("#camera-line1 .save-normal")),
		poll(`document.querySelector("#camera-line1 .threshold-status").textContent.startsWith("saved ")`, 10*time.Second))
	if saved, _ := filepath.Glob(filepath.Join(state, "normal_images", "line1", "line1-*.png")); len(saved) != 1 {
		t.Errorf("normal images saved: %v, want one", saved)
	}

	// A read-only console shows the page and refuses changes; without MQTT
	// snapshots its camera keeps frames only while the live view is open.
	port2 := freePort(t)
	startDaemon(t, fmt.Sprintf(`
cameras:
  - {name: line1, source: %q, model: %q, loop: true, pace: true}
mqtt: {broker: %s, client_id: read-only, snapshots: false}
metrics: {address: "127.0.0.1:%d"}
state_directory: %q
`, f.video, f.bundle, b.url(), port2, t.TempDir()))
	base2 := waitForConsole(t, port2)
	do(t, ctx, 30*time.Second, "the read-only console", chromedp.Navigate(base2+"/"), chromedp.WaitVisible(css("#camera-line1")),
		poll(`document.querySelector("#mode").textContent.startsWith("read-only")`, 20*time.Second),
		poll(`document.querySelector("#camera-line1 .live").naturalWidth > 0`, 20*time.Second))
	disabled := value(t, ctx, 5*time.Second, "Set disabled", chromedp.Evaluate[bool](`(() => {
		const b = document.querySelector("#camera-line1 .threshold-set"), note = document.querySelector("#camera-line1 .readonly-note");
		return b.disabled && b.title.includes("web.allow_changes") && !note.hidden;
	})()`))
	refused := value(t, ctx, 5*time.Second, "a posted threshold", chromedp.Evaluate[string](
		`fetch("/api/cameras/line1/threshold", {method: "POST", body: "1", headers: {"X-Transformaly": "1"}}).then(r => r.status + " " + r.statusText)`, chromedp.EvalAwaitPromise))
	if !disabled || !strings.HasPrefix(refused, "403") {
		t.Errorf("read-only console: Set disabled %v, a posted threshold %q", disabled, refused)
	}
	os.WriteFile(filepath.Join(shots, "console-read-only.jpg"), value(t, ctx, 10*time.Second, "screenshot", chromedp.FullScreenshot(80)), 0o644)
	// The one error expected: the 403 of the test's own refused change.
	if e := slices.DeleteFunc(errs(), func(e string) bool {
		return strings.Contains(e, "403") && strings.Contains(e, "/api/cameras/line1/threshold")
	}); len(e) > 0 {
		t.Errorf("the browser reported errors: %q", e)
	}
	t.Logf("screenshots in %s", shots)
}
