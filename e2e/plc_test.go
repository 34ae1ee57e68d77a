package e2e

import (
	"encoding/json"
	"fmt"
	"image"
	_ "image/jpeg"
	_ "image/png"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	mb "github.com/simonvetter/modbus"

	"github.com/transformaly/transformaly/internal/synth"
	"github.com/transformaly/transformaly/modbus"
)

// connectPLC connects a Modbus client to the daemon at port once line1 is
// ready, and gives a reader of line1's result counter.
func connectPLC(t testing.TB, port int) (*mb.ModbusClient, func() uint16) {
	t.Helper()
	plc, err := mb.NewClient(&mb.ClientConfiguration{URL: fmt.Sprintf("tcp://127.0.0.1:%d", port), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the Modbus server", 30*time.Second, func() bool { return plc.Open() == nil })
	t.Cleanup(func() { plc.Close() })
	eventually(t, "line1 ready", 30*time.Second, func() bool { r, _ := plc.ReadDiscreteInput(modbus.InputReady); return r })
	return plc, func() uint16 {
		r, err := plc.ReadRegisters(modbus.RegisterResultCounter, 1, mb.INPUT_REGISTER)
		if err != nil {
			t.Fatal(err)
		}
		return r[0]
	}
}

// loopParts is the fixture's looping part video as a line sees it: a
// threshold between its normal and missing frames (from score on the same
// file: the verdicts then depend only on which part a trigger caught),
// and whether a frame shows the missing part.
func loopParts(t testing.TB, f daemonFixture) (threshold float64, bad func(frame uint64) bool) {
	t.Helper()
	// The loop's parts (six frames each): the fourth is missing, NG.
	kinds := []string{synth.Normal, synth.Normal, synth.Normal, synth.Missing, synth.Normal, synth.Normal}
	const perPart = 6
	loopFrames := perPart * len(kinds)
	bad = func(frame uint64) bool { return kinds[int((frame-1)%uint64(loopFrames))/perPart] == synth.Missing }
	out, err := exec.Command(binary, "score", "--model", f.bundle, "--json", f.loop).Output()
	if err != nil {
		t.Fatalf("score the loop: %v", err)
	}
	maxNormal, minBad := math.Inf(-1), math.Inf(1)
	for l := range strings.SplitSeq(strings.TrimSpace(string(out)), "\n") {
		var s struct {
			Frame uint64  `json:"frame"`
			Score float64 `json:"score"`
		}
		if err := json.Unmarshal([]byte(l), &s); err != nil {
			t.Fatal(err)
		}
		if bad(s.Frame) {
			minBad = min(minBad, s.Score)
		} else {
			maxNormal = max(maxNormal, s.Score)
		}
	}
	if !(minBad > maxNormal) {
		t.Fatalf("the bundle does not separate the missing part (lowest %g) from normal ones (highest %g)", minBad, maxNormal)
	}
	return (minBad + maxNormal) / 2, bad
}

// A PLC judges 20 parts over Modbus TCP (a real client) on a looping part
// video with known good and bad parts: 20 results, each with the verdict
// its part deserves, Result Valid toggling each time, every NG part's
// image and map kept in the NG folder, and two NG parts reviewed on the
// console (a false reject joins the normal images, a true defect is kept
// apart and left out by collect --ng-images).
func TestModbusJudgesTwentyParts(t *testing.T) {
	f := getDaemonFixture(t)
	threshold, bad := loopParts(t, f)

	b := startMosquitto(t, "")
	sub := subscribe(t, b.url(), "transformaly/line1/result", "test-sub-plc")
	modbusPort, webPort := freePort(t), freePort(t)
	state := t.TempDir()
	startDaemon(t, fmt.Sprintf(`
cameras:
  - {name: line1, source: %q, model: %q, loop: true, pace: true, threshold: %g, trigger: {deadline: 2s}}
mqtt: {broker: %s}
metrics: {address: "off"}
web: {address: "127.0.0.1:%d", allow_changes: true}
modbus: {address: "127.0.0.1:%d"}
state_directory: %q
`, f.loop, f.bundle, threshold, b.url(), webPort, modbusPort, state))
	plc, counter := connectPLC(t, modbusPort)
	result := sub.partResult
	valid, _ := plc.ReadDiscreteInput(modbus.InputResultValid)
	toggles, ng := 0, 0
	// Triggers 7 frames (280 ms at 25 fps) apart step through the loop's
	// parts one by one: both verdicts come up several times.
	for i := range 20 {
		start := time.Now()
		part := uint32(1000 + i)
		before := counter()
		// The handshake: the PLC waits for Ready before each part.
		eventually(t, "line1 Ready", 10*time.Second, func() bool { r, _ := plc.ReadDiscreteInput(modbus.InputReady); return r })
		if err := plc.WriteUint32(modbus.HoldingPartID, part); err != nil {
			t.Fatal(err)
		}
		plc.WriteCoil(modbus.CoilTrigger, false)
		if err := plc.WriteCoil(modbus.CoilTrigger, true); err != nil {
			t.Fatal(err)
		}
		eventually(t, fmt.Sprintf("part %d's result in the registers", part), 5*time.Second, func() bool { return counter() != before })
		bits, err := plc.ReadDiscreteInputs(0, 6)
		if err != nil {
			t.Fatal(err)
		}
		if bits[modbus.InputResultValid] != valid {
			toggles++
		}
		valid = bits[modbus.InputResultValid]
		if id, _ := plc.ReadUint32(modbus.RegisterPartID, mb.INPUT_REGISTER); id != part {
			t.Errorf("part id register %d, want %d", id, part)
		}
		eventually(t, fmt.Sprintf("part %d's result over MQTT", part), 5*time.Second, func() bool { return result(fmt.Sprint(part)) != nil })
		res := result(fmt.Sprint(part))
		if res["verdict"] == "error" {
			t.Fatalf("part %d: error (%v)", part, res["reason"])
		}
		frame := uint64(res["frame"].(float64))
		want := "ok"
		if bad(frame) {
			want = "ng"
			ng++
		}
		if res["verdict"] != want || bits[modbus.InputNG] != (want == "ng") || bits[modbus.InputOK] != (want == "ok") || bits[modbus.InputError] {
			t.Errorf("part %d (frame %d): verdict %v, bits %v; want %s", part, frame, res["verdict"], bits, want)
		}
		time.Sleep(time.Until(start.Add(280 * time.Millisecond)))
	}
	if toggles != 20 {
		t.Errorf("Result Valid toggled %d times for 20 results", toggles)
	}
	t.Logf("%d of 20 parts NG (threshold %.4g, between the loop's normal and missing frames)", ng, threshold)
	if ng == 0 || ng == 20 {
		t.Fatalf("%d of 20 parts NG: the triggers did not step through the loop", ng)
	}

	// The web console lists the 20 parts with their verdicts, NG ones with
	// their map, and shows the camera between parts.
	var parts []struct {
		ID      string `json:"id"`
		PartID  string `json:"part_id"`
		Verdict string `json:"verdict"`
		Map     bool   `json:"map"`
	}
	eventually(t, "the console's parts", 5*time.Second, func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/parts", webPort))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		parts = nil
		json.NewDecoder(resp.Body).Decode(&parts)
		maps := 0
		for _, p := range parts {
			maps += btoi(p.Map)
		}
		return len(parts) == 20 && maps == ng
	})
	for _, p := range parts {
		if r := result(p.PartID); r == nil || r["verdict"] != p.Verdict {
			t.Errorf("console part %s: verdict %s, MQTT %v", p.PartID, p.Verdict, r)
		}
		if p.Map {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/api/parts/%s/map.jpg", webPort, p.ID))
			if err != nil {
				t.Fatal(err)
			}
			_, format, err := image.DecodeConfig(resp.Body)
			resp.Body.Close()
			if err != nil || format != "jpeg" {
				t.Errorf("part %s's map: %s %v", p.PartID, format, err)
			}
		}
	}

	ctx := browser(t)
	do(t, ctx, 20*time.Second, "the parts on the page", chromedp.Navigate(fmt.Sprintf("http://127.0.0.1:%d/", webPort)),
		// The camera's picture shows between parts too.
		poll(`document.querySelectorAll("#parts li").length === 20 && [...document.querySelectorAll("#parts li img")].some(i => i.complete && i.naturalWidth > 0) &&
			document.querySelector("#camera-line1 .live").naturalWidth > 0`, 20*time.Second))
	// An operator reviews two NG parts: the first a false reject, the
	// second a true defect.
	reviewed := value(t, ctx, 10*time.Second, "the NG parts to review", chromedp.Evaluate[[]string](
		`[...document.querySelectorAll("#parts li")].filter(li => li.querySelector(".review")).slice(0, 2).map(li => li.dataset.part)`))
	if len(reviewed) != 2 {
		t.Fatalf("%d NG parts with review buttons on the page, want at least 2", len(reviewed))
	}
	for i, mark := range []string{"false-reject", "true-defect"} {
		sel := fmt.Sprintf(`#parts li[data-part=%q]`, reviewed[i])
		do(t, ctx, 10*time.Second, "review a part as "+mark,
			chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`document.querySelector(%q).click()`, sel+" .review ."+mark)),
			poll(fmt.Sprintf(`document.querySelector(%q)?.textContent.startsWith(%q)`, sel+" .review-state", strings.ReplaceAll(mark, "-", " ")), 10*time.Second))
	}
	page := value(t, ctx, 10*time.Second, "screenshot", chromedp.FullScreenshot(80))
	shot := filepath.Join(t.TempDir(), "console-parts.jpg")
	os.WriteFile(shot, page, 0o644)
	if p := os.Getenv("CONSOLE_PARTS_SCREENSHOT"); p != "" {
		os.WriteFile(p, page, 0o644)
	}

	// Each NG part's frame and its map, named by trigger time and part id.
	dir := filepath.Join(state, "ng_images", "line1")
	var images []string
	eventually(t, "the NG images written", 5*time.Second, func() bool {
		images, _ = filepath.Glob(filepath.Join(dir, "images", "*.png"))
		return len(images) == ng
	})
	for _, p := range images {
		for _, file := range []string{p, filepath.Join(dir, "maps", strings.TrimSuffix(filepath.Base(p), ".png")+".jpg")} {
			fh, err := os.Open(file)
			if err != nil {
				t.Fatal(err)
			}
			cfg, _, err := image.DecodeConfig(fh)
			fh.Close()
			if err != nil || cfg.Width < 96 || cfg.Height < 96 {
				t.Errorf("%s: %dx%d (%v), want an image at least the camera's 96x96", file, cfg.Width, cfg.Height, err)
			}
		}
		if !strings.Contains(filepath.Base(p), "_10") {
			t.Errorf("NG image %s is not named by its part id", p)
		}
	}

	// collect takes them (the false rejects left after a review) as normal
	// images for the next fit.
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("cameras: [{name: line1, source: %q, model: %q}]\nstate_directory: %q\n", f.loop, f.bundle, state)), 0o644)
	normal := filepath.Join(t.TempDir(), "normal")
	if r := runBinary(t, nil, "collect", "--config", cfg, "--ng-images", "--out", normal); r.code != 0 {
		t.Fatalf("collect --ng-images: %s", r.stderr)
	}
	if copied, _ := filepath.Glob(filepath.Join(normal, "line1-ng-*.png")); len(copied) != ng-1 {
		t.Errorf("collect --ng-images copied %d of %d NG frames, want all but the one reviewed as a true defect", len(copied), ng)
	}
	// The reviewed frames: the false reject among the camera's normal
	// images, the true defect among its labelled defects.
	for folder, want := range map[string]int{filepath.Join(state, "normal_images", "line1"): 1, filepath.Join(state, "true_defects", "line1"): 1} {
		if got, _ := filepath.Glob(filepath.Join(folder, "*.png")); len(got) != want {
			t.Errorf("%s holds %v, want %d reviewed frame", folder, got, want)
		}
	}
}
