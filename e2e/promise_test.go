package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/transformaly/transformaly/internal/synth"
)

// Too few normal images for the promised rate: fit says the promise cannot
// be kept and what would keep it, and the bundle records it (inspect); eval
// on normal images of the same kind reports the observed rate beside the
// promise and no breach, and on normal parts under a brighter lamp flags a
// breach.
func TestFitAndEvalSayWhenThePromiseIsNotKept(t *testing.T) {
	dir := t.TempDir()
	normal, teacher, bundle := filepath.Join(dir, "normal"), filepath.Join(dir, "vit.safetensors"), filepath.Join(dir, "few.tfy")
	if _, err := synth.WriteParts(normal, 32, synth.Normal, 60, 5); err != nil {
		t.Fatal(err)
	}
	if r := runBinary(t, nil, "random-vit", "--dim", "32", "--depth", "3", "--heads", "2", "--patch", "8", "--image-size", "32", "--out", teacher); r.code != 0 {
		t.Fatal(r.stderr)
	}
	r := runBinary(t, nil, "fit", "--teacher", teacher, "--normal", normal, "--out", bundle, "--epochs", "2", "--calibration-folds", "2")
	if r.code != 0 {
		t.Fatal(r.stderr)
	}
	for _, want := range []string{"cannot keep", "60 normal images", "at least 199", "--threshold-quantile"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("fit's log lacks %q:\n%s", want, r.stderr)
		}
	}
	r = runBinary(t, nil, "inspect", bundle)
	var info struct {
		Calibration struct {
			Unkept   string  `json:"promise_unkept"`
			Expected float64 `json:"expected_false_alarm_rate"`
		} `json:"calibration"`
		Training struct {
			Folds int `json:"calibration_folds"`
		} `json:"training"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil {
		t.Fatal(err)
	}
	if info.Calibration.Unkept == "" || info.Calibration.Expected < 0.016 || info.Training.Folds != 2 {
		t.Errorf("inspect: %s", r.stdout)
	}

	same, anomalous := filepath.Join(dir, "same"), filepath.Join(dir, "anomalous")
	if _, err := synth.WriteParts(same, 32, synth.Normal, 150, 6); err != nil {
		t.Fatal(err)
	}
	if _, err := synth.WriteParts(anomalous, 32, synth.Missing, 20, 7); err != nil {
		t.Fatal(err)
	}
	brighter := filepath.Join(dir, "brighter")
	os.MkdirAll(brighter, 0o755)
	for i := range 150 {
		img := synth.Part(32, synth.Normal, 8_000+uint64(i))
		brighten(img, 1.6)
		savePNG(t, filepath.Join(brighter, fmt.Sprintf("%03d.png", i)), img)
	}
	type report struct {
		FalseAlarms int        `json:"false_alarms"`
		Rate95      [2]float64 `json:"false_alarm_rate_95"`
		Breached    *bool      `json:"promise_breached"`
		Unkept      string     `json:"promise_unkept"`
	}
	eval := func(normalDir string) (report, string) {
		r := runBinary(t, nil, "eval", "--model", bundle, "--normal", normalDir, "--anomalous", anomalous, "--json")
		if r.code != 0 {
			t.Fatal(r.stderr)
		}
		var rep report
		if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
			t.Fatal(err)
		}
		return rep, runBinary(t, nil, "eval", "--model", bundle, "--normal", normalDir, "--anomalous", anomalous).stdout
	}
	rep, text := eval(same)
	if rep.Breached == nil || *rep.Breached || rep.Unkept == "" || rep.Rate95[1] <= 0 {
		t.Errorf("eval on normal images like the fit's: %+v\n%s", rep, text)
	}
	if !strings.Contains(text, "false alarms:") || strings.Contains(text, "BREACH") {
		t.Errorf("eval on normal images like the fit's:\n%s", text)
	}
	rep, text = eval(brighter)
	if rep.Breached == nil || !*rep.Breached || !strings.Contains(text, "BREACH") {
		t.Errorf("eval on normal parts under a brighter lamp: %+v\n%s", rep, text)
	}
}
