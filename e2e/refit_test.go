package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/transformaly/transformaly/internal/synth"
)

// cameraFPS reads a camera's scored frames a second from the console API.
func cameraFPS(t *testing.T, base, camera string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/api/cameras")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct {
		Cameras []struct {
			Name      string  `json:"name"`
			ScoredFPS float64 `json:"scored_fps"`
		} `json:"cameras"`
	}
	json.NewDecoder(resp.Body).Decode(&v)
	for _, c := range v.Cameras {
		if c.Name == camera {
			return c.ScoredFPS
		}
	}
	return 0
}

// The loop an operator runs from the console in a real browser, with no
// shell: refit a candidate from the camera's normal images (watching its
// progress while the live camera keeps scoring), compare it with the live
// bundle on held-out normal images and labelled defects, shadow it on the
// live frames, promote it (the card and the score messages name it), and
// roll back.
func TestRefitCompareShadowPromoteRollBack(t *testing.T) {
	f := getDaemonFixture(t)
	b := startMosquitto(t, "")
	sub := subscribe(t, b.url(), "transformaly/#", "test-sub-refit")
	state := t.TempDir()
	// The camera's normal images (saved from the console, false rejects)
	// and its reviewed true defects.
	if _, err := synth.WriteParts(filepath.Join(state, "normal_images", "line1"), 96, synth.Normal, 50, 21); err != nil {
		t.Fatal(err)
	}
	for i, kind := range synth.Defects {
		if _, err := synth.WriteParts(filepath.Join(state, "true_defects", "line1", kind), 96, kind, 2, uint64(30+i)); err != nil {
			t.Fatal(err)
		}
	}
	base := startConsoleDaemon(t, f.loop, f.bundle, b.url(), state, "")
	ctx := browser(t)
	errs := pageErrors(ctx)
	card := "#camera-line1 "
	do(t, ctx, 30*time.Second, "open the console's model panel", chromedp.Navigate(base+"/"), chromedp.WaitVisible(css(card+".model summary")),
		chromedp.Click(css(card+".model summary")), poll(`document.querySelector("#camera-line1 .live-bundle").textContent === "line.tfy"`, 20*time.Second))

	eventually(t, "the camera scoring", 30*time.Second, func() bool { return cameraFPS(t, base, "line1") > 5 })
	time.Sleep(3 * time.Second)
	before := cameraFPS(t, base, "line1")
	do(t, ctx, 10*time.Second, "start a refit", chromedp.Click(css(card+".refit")),
		poll(`document.querySelector("#camera-line1 .job").dataset.state === "running"`, 10*time.Second))
	// Progress as the fit reports it, and the live camera's rate meanwhile.
	var during []float64
	var stages []string
	deadline := time.Now().Add(5 * time.Minute)
	for {
		text := value(t, ctx, 5*time.Second, "the job", chromedp.Text(css(card+".job-text")))
		if len(stages) == 0 || stages[len(stages)-1] != text {
			stages = append(stages, text)
		}
		if !strings.HasPrefix(text, "refit running") {
			break
		}
		during = append(during, cameraFPS(t, base, "line1"))
		if time.Now().After(deadline) {
			t.Fatalf("the refit ran past 5 minutes: %q", stages)
		}
		time.Sleep(time.Second)
	}
	if last := stages[len(stages)-1]; !strings.HasPrefix(last, "refit done") {
		t.Fatalf("the refit ended %q (stages %q)", last, stages)
	}
	if !strings.Contains(strings.Join(stages, "\n"), "epoch") {
		t.Errorf("no training progress shown: %q", stages)
	}
	mean := 0.0
	for _, x := range during {
		mean += x / float64(len(during))
	}
	t.Logf("live camera: %.1f frames/s scored before the refit, %.1f during it (%.0f%%, %d readings); refit stages %q", before, mean, 100*mean/before, len(during), stages)

	// Compare: both bundles' figures on the same images.
	do(t, ctx, 20*time.Second, "the candidate listed", chromedp.WaitVisible(css(card+".candidates li .compare")))
	do(t, ctx, 3*time.Minute, "compare", chromedp.Click(css(card+".candidates li .compare")),
		poll(`document.querySelectorAll("#camera-line1 .candidates li table tr").length === 5`, 3*time.Minute))
	table := value(t, ctx, 5*time.Second, "the comparison", chromedp.Text(css(card+".candidates li table")))
	if !strings.Contains(table, "detection") || strings.Count(table, "%") < 6 {
		t.Errorf("comparison table %q", table)
	}
	t.Logf("comparison:\n%s", table)

	// Shadow: agreement on live frames.
	do(t, ctx, 60*time.Second, "shadow", chromedp.Click(css(card+".candidates li .shadow")),
		poll(`/on ([3-9]|\d\d+) of \d+ frames/.test(document.querySelector("#camera-line1 .shadow .agreement")?.textContent ?? "")`, 60*time.Second))
	t.Logf("shadow: %s", value(t, ctx, 5*time.Second, "agreement", chromedp.Text(css(card+".shadow .agreement"))))

	// Promote: the card and the score messages name the candidate.
	scoresBefore := len(sub.on("transformaly/line1/score"))
	do(t, ctx, 60*time.Second, "promote", chromedp.Click(css(card+".candidates li .promote")),
		poll(`document.querySelector("#camera-line1 .live-bundle").textContent.startsWith("candidate.tfy (promoted")`, 60*time.Second))
	bundleOfLastScore := func() string {
		m := sub.on("transformaly/line1/score")
		var s struct{ Bundle string }
		json.Unmarshal(m[len(m)-1].Payload, &s)
		return s.Bundle
	}
	eventually(t, "scores from the promoted bundle", 20*time.Second, func() bool {
		return len(sub.on("transformaly/line1/score")) > scoresBefore && bundleOfLastScore() == "candidate.tfy"
	})
	do(t, ctx, 60*time.Second, "roll back", chromedp.Click(css(card+".rollback")),
		poll(`document.querySelector("#camera-line1 .live-bundle").textContent === "line.tfy"`, 60*time.Second))
	eventually(t, "scores from the configured bundle again", 20*time.Second, func() bool { return bundleOfLastScore() == "line.tfy" })
	var actions []string
	for _, m := range sub.on("transformaly/line1/model") {
		var v struct{ Action, Bundle string }
		json.Unmarshal(m.Payload, &v)
		actions = append(actions, v.Action+" "+filepath.Base(v.Bundle))
	}
	if got := strings.Join(actions, ", "); got != "start line.tfy, promote candidate.tfy, rollback line.tfy" {
		t.Errorf("model messages: %s", got)
	}
	os.WriteFile(filepath.Join(t.TempDir(), "console-model.jpg"), value(t, ctx, 10*time.Second, "screenshot", chromedp.FullScreenshot(80)), 0o644)
	if e := errs(); len(e) > 0 {
		t.Errorf("the browser reported errors: %q", e)
	}
}

// A promote while a PLC triggers parts: 50 parts triggered across the
// swap each get exactly one result.
func TestPromoteDuringTriggeredInspection(t *testing.T) {
	f := getDaemonFixture(t)
	b := startMosquitto(t, "")
	sub := subscribe(t, b.url(), "transformaly/line1/result", "test-sub-promote")
	cmd := subscribe(t, b.url(), "nothing/#", "test-promote-sender")
	state := t.TempDir()
	// A candidate as a refit leaves it (here the same bundle, copied).
	dir := filepath.Join(state, "candidates", "line1", "20261207T000000Z")
	os.MkdirAll(dir, 0o750)
	data, err := os.ReadFile(f.bundle)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "candidate.tfy"), data, 0o644)
	os.WriteFile(filepath.Join(dir, "report.json"), []byte(fmt.Sprintf(`{"id": "20261207T000000Z", "bundle": %q, "created": "2026-12-07T00:00:00Z"}`,
		filepath.Join(dir, "candidate.tfy"))), 0o644)
	base := startConsoleDaemon(t, f.loop, f.bundle, b.url(), state, ", trigger: {deadline: 2s}")
	// Once a part is judged the camera is Ready.
	warm := 0
	eventually(t, "a judged part", 60*time.Second, func() bool {
		for _, m := range sub.on("transformaly/line1/result") {
			if !strings.Contains(string(m.Payload), `"verdict":"error"`) {
				return true
			}
		}
		warm++
		cmd.client.Publish("transformaly/line1/trigger", 1, false, fmt.Sprintf("warm-%d", warm)).WaitTimeout(5 * time.Second)
		time.Sleep(500 * time.Millisecond)
		return false
	})
	promoted := make(chan error, 1)
	for i := range 50 {
		if i == 10 {
			go func() {
				req, _ := http.NewRequest(http.MethodPost, base+"/api/cameras/line1/model/promote", strings.NewReader("20261207T000000Z"))
				req.Header.Set("X-Transformaly", "1")
				resp, err := http.DefaultClient.Do(req)
				if err == nil {
					body, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("%s: %s", resp.Status, body)
					}
				}
				promoted <- err
			}()
		}
		if tok := cmd.client.Publish("transformaly/line1/trigger", 1, false, fmt.Sprintf("p%02d", i)); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		time.Sleep(80 * time.Millisecond)
	}
	if err := <-promoted; err != nil {
		t.Fatalf("promote: %v", err)
	}
	counts := map[string]int{}
	eventually(t, "50 results", 30*time.Second, func() bool {
		clear(counts)
		for _, m := range sub.on("transformaly/line1/result") {
			var r struct {
				PartID string `json:"part_id"`
			}
			json.Unmarshal(m.Payload, &r)
			if strings.HasPrefix(r.PartID, "p") {
				counts[r.PartID]++
			}
		}
		return len(counts) >= 50
	})
	time.Sleep(3 * time.Second) // a late second result would come within the deadline
	verdicts := map[string]int{}
	for _, m := range sub.on("transformaly/line1/result") {
		var r struct {
			PartID  string `json:"part_id"`
			Verdict string `json:"verdict"`
		}
		json.Unmarshal(m.Payload, &r)
		verdicts[r.Verdict]++
	}
	for i := range 50 {
		if id := fmt.Sprintf("p%02d", i); counts[id] != 1 {
			t.Errorf("part %s: %d results, want exactly one", id, counts[id])
		}
	}
	t.Logf("verdicts across the promote: %v", verdicts)

	// The same loop from the shell: status, then a rollback.
	status := func() map[string]any {
		t.Helper()
		r := runBinary(t, nil, "model", "--url", base, "--camera", "line1", "status")
		var m map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &m); r.code != 0 || err != nil {
			t.Fatalf("model status: %s %v", r.stderr, err)
		}
		return m
	}
	if m := status(); !strings.HasSuffix(m["live"].(string), "candidate.tfy") || m["previous"] != f.bundle {
		t.Errorf("status after the promote: live %v, previous %v", m["live"], m["previous"])
	}
	if r := runBinary(t, nil, "model", "--url", base, "--camera", "line1", "promote"); r.code == 0 || !strings.Contains(r.stderr, "candidate id") {
		t.Errorf("promote without a candidate: exit %d, %s", r.code, r.stderr)
	}
	if r := runBinary(t, nil, "model", "--url", base, "--camera", "line1", "rollback"); r.code != 0 {
		t.Fatalf("model rollback: %s", r.stderr)
	}
	if m := status(); m["live"] != f.bundle || m["previous"] != nil {
		t.Errorf("status after the rollback: live %v, previous %v", m["live"], m["previous"])
	}
}
