package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/transformaly/transformaly/internal/synth"
)

// fitFixture is a small synthetic inspection set and random teacher.
type fitFixture struct {
	dir, teacher, normal, testNormal, defective string
}

func newFitFixture(t *testing.T, normals int) fitFixture {
	t.Helper()
	dir := t.TempDir()
	f := fitFixture{dir: dir, teacher: filepath.Join(dir, "vit.safetensors"), normal: filepath.Join(dir, "normal"),
		testNormal: filepath.Join(dir, "test-normal"), defective: filepath.Join(dir, "defective")}
	if r := runBinary(t, nil, "random-vit", "--dim", "64", "--depth", "4", "--heads", "4", "--patch", "8", "--image-size", "48", "--out", f.teacher); r.code != 0 {
		t.Fatal(r.stderr)
	}
	for _, s := range []struct {
		dir, kind string
		n         int
		seed      uint64
	}{
		{f.normal, synth.Normal, normals, 1}, {f.testNormal, synth.Normal, 20, 2},
		{f.defective, synth.Missing, 10, 3}, {f.defective, synth.Recolored, 10, 4},
	} {
		if _, err := synth.WriteParts(s.dir, 48, s.kind, s.n, s.seed); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func TestFitEvalScoreInspect(t *testing.T) {
	f := newFitFixture(t, 60)
	// A corrupt file among the normals is listed and skipped.
	os.WriteFile(filepath.Join(f.normal, "zz-corrupt.jpg"), []byte("\xff\xd8\xff\xe0 truncated"), 0o644)
	bundle := filepath.Join(f.dir, "line.tfy")
	r := runBinary(t, nil, "fit", "--teacher", f.teacher, "--normal", f.normal, "--out", bundle, "--epochs", "4", "--batch-size", "8")
	if r.code != 0 {
		t.Fatalf("fit failed: %s", r.stderr)
	}
	if !strings.Contains(r.stderr, "zz-corrupt.jpg") {
		t.Errorf("the corrupt image is not named in the log:\n%s", r.stderr)
	}
	if !strings.Contains(r.stderr, "caching the teacher's activations") {
		t.Errorf("a CPU fit of 4 epochs did not cache the teacher's activations:\n%s", r.stderr)
	}
	if _, err := os.Stat(bundle + ".fit-state"); !os.IsNotExist(err) {
		t.Error("the fit state file was left behind after a finished fit")
	}

	chart := filepath.Join(t.TempDir(), "eval.png")
	r = runBinary(t, nil, "eval", "--model", bundle, "--normal", f.testNormal, "--anomalous", f.defective, "--json", "--compare-precision", "--chart", chart)
	if r.code != 0 {
		t.Fatalf("eval failed: %s", r.stderr)
	}
	if png, err := os.ReadFile(chart); err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Errorf("eval --chart wrote no PNG: %v", err)
	}
	var full struct {
		Precision map[string]float64 `json:"precision_compare"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &full); err != nil || full.Precision == nil {
		t.Fatalf("eval --json --compare-precision: %v\n%s", err, r.stdout)
	}
	if d := full.Precision["auroc_difference"]; d < -0.05 || d > 0.05 {
		t.Errorf("fp16 changes the AUROC by %g", d)
	}
	var rep map[string]any
	json.Unmarshal([]byte(r.stdout), &rep)
	for _, k := range []string{"auroc", "auroc_pretrained", "auroc_student", "false_alarm_rate", "detection_rate", "threshold", "normal_images", "anomalous_images",
		"expected_false_alarm_rate", "expected_false_alarm_rate_95"} {
		if _, ok := rep[k]; !ok {
			t.Errorf("eval --json lacks %q", k)
		}
	}
	// Random scores give 0.5 +- 0.1 on 20 vs 20 images; gross defects must
	// be told apart clearly.
	if rep["auroc"].(float64) < 0.9 {
		t.Errorf("AUROC %.3f on gross defects, want >= 0.9 (report %v)", rep["auroc"], rep)
	}
	if rep["normal_images"].(float64) != 20 || rep["anomalous_images"].(float64) != 20 {
		t.Errorf("image counts %v/%v, want 20/20", rep["normal_images"], rep["anomalous_images"])
	}

	imgs, _ := filepath.Glob(filepath.Join(f.defective, "*.png"))
	heat := filepath.Join(f.dir, "heat")
	r = runBinary(t, nil, "score", "--model", bundle, "--json", "--embedding", "--heatmap", heat, imgs[0], imgs[1])
	if r.code != 0 {
		t.Fatalf("score failed: %s", r.stderr)
	}
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	sc.Buffer(nil, 1<<20)
	lines := 0
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"path", "score", "ll_pretrained", "ll_student", "block_errors", "anomalous", "embedding", "heatmap", "normal_quantile"} {
			if _, ok := line[k]; !ok {
				t.Errorf("score --json lacks %q", k)
			}
		}
		// Gross defects score above every normal calibration image.
		if q, _ := line["normal_quantile"].(float64); q < 0.9 || q >= 1 {
			t.Errorf("a defective part's normal_quantile %v, want in [0.9, 1)", line["normal_quantile"])
		}
		if be := line["block_errors"].([]any); len(be) != 2 {
			t.Errorf("%d block errors, want 2 (blocks 2-3 of a 4-block teacher)", len(be))
		}
		if emb := line["embedding"].([]any); len(emb) != 64 {
			t.Errorf("embedding of %d values, want 64", len(emb))
		}
		lines++
	}
	if lines != 2 {
		t.Errorf("score printed %d lines for 2 images", lines)
	}
	for _, img := range imgs[:2] {
		name := strings.TrimSuffix(filepath.Base(img), ".png") + ".heatmap.jpg"
		if b, err := os.ReadFile(filepath.Join(heat, name)); err != nil || len(b) < 100 || b[0] != 0xff || b[1] != 0xd8 {
			t.Errorf("heatmap %s: %v", name, err)
		}
	}

	// --threshold is taken whatever its sign: scores are negative
	// log-likelihoods, often below zero (it once meant "the bundle's" at or
	// below zero).
	normals, _ := filepath.Glob(filepath.Join(f.testNormal, "*.png"))
	scoreAt := func(threshold float64) (scores []float64, anomalous []bool) {
		args := []string{"score", "--model", bundle, "--json", normals[0], normals[1]}
		if !math.IsNaN(threshold) {
			args = append(args, "--threshold", strconv.FormatFloat(threshold, 'g', -1, 64))
		}
		r := runBinary(t, nil, args...)
		for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
			var line struct {
				Score     float64 `json:"score"`
				Anomalous bool    `json:"anomalous"`
			}
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatalf("score: %v\n%s%s", err, r.stdout, r.stderr)
			}
			scores, anomalous = append(scores, line.Score), append(anomalous, line.Anomalous)
		}
		return scores, anomalous
	}
	scores, _ := scoreAt(math.NaN())
	below := min(scores[0], scores[1]) - 1
	if _, anomalous := scoreAt(below); !anomalous[0] || !anomalous[1] {
		t.Errorf("scores %v with --threshold %g: anomalous %v, want both", scores, below, anomalous)
	}
	if _, anomalous := scoreAt(max(scores[0], scores[1]) + 1); anomalous[0] || anomalous[1] {
		t.Errorf("scores %v with a threshold above both: anomalous %v", scores, anomalous)
	}
	r = runBinary(t, nil, "eval", "--model", bundle, "--normal", f.testNormal, "--anomalous", f.defective, "--json", "--threshold", "-123.5")
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || rep["threshold"] != -123.5 {
		t.Errorf("eval --threshold -123.5 reported threshold %v (%v)", rep["threshold"], err)
	}

	// A folder is scored image by image, each under its own path.
	r = runBinary(t, nil, "score", "--model", bundle, "--json", f.testNormal)
	lines = 0
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var line struct {
			Path string `json:"path"`
		}
		if json.Unmarshal([]byte(l), &line) != nil || filepath.Dir(line.Path) != f.testNormal {
			t.Errorf("score of a folder printed %q", l)
		}
		lines++
	}
	if r.code != 0 || lines != len(normals) {
		t.Errorf("score of a folder of %d images: exit %d, %d lines\n%s", len(normals), r.code, lines, r.stderr)
	}

	r = runBinary(t, nil, "inspect", bundle)
	var info map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &info); r.code != 0 || err != nil {
		t.Fatalf("inspect: %v %s", err, r.stderr)
	}
	for _, k := range []string{"threshold", "score_quantiles", "teacher", "training", "blocks", "image_size", "version", "calibration"} {
		if _, ok := info[k]; !ok {
			t.Errorf("inspect lacks %q", k)
		}
	}
	// How the threshold was set, without the scores behind it unless asked.
	cal, _ := info["calibration"].(map[string]any)
	if _, ok := cal["expected_false_alarm_rate"]; !ok || cal["method"] == "" || cal["scores"] != nil {
		t.Errorf("inspect's calibration: %v", cal)
	}
	r = runBinary(t, nil, "inspect", "--calibration-scores", bundle)
	json.Unmarshal([]byte(r.stdout), &info)
	if cal, _ := info["calibration"].(map[string]any); cal["scores"] == nil {
		t.Errorf("inspect --calibration-scores: no scores in %v", cal)
	}
}

func TestFitInterruptAndResume(t *testing.T) {
	f := newFitFixture(t, 40)
	bundle := filepath.Join(f.dir, "line.tfy")
	state := bundle + ".fit-state"
	cmd := exec.Command(binary, "fit", "--teacher", f.teacher, "--normal", f.normal, "--out", bundle, "--epochs", "1000", "--batch-size", "4")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(state); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no state file after 60 s:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGINT)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("interrupted fit: %v, want exit code 1\n%s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "--resume") {
		t.Errorf("the interruption message does not say how to resume:\n%s", stderr.String())
	}
	if _, err := os.Stat(bundle); !os.IsNotExist(err) {
		t.Error("an interrupted fit left a bundle behind")
	}
	if leftovers, _ := filepath.Glob(filepath.Join(f.dir, ".*tmp*")); len(leftovers) > 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}

	// Without --resume, the state is not silently overwritten.
	r := runBinary(t, nil, "fit", "--teacher", f.teacher, "--normal", f.normal, "--out", bundle, "--epochs", "2", "--batch-size", "4")
	if r.code != 1 || !strings.Contains(r.stderr, "pass --resume") {
		t.Errorf("fit over an interrupted state: exit %d\n%s", r.code, r.stderr)
	}
	// Other settings are refused.
	r = runBinary(t, nil, "fit", "--teacher", f.teacher, "--normal", f.normal, "--out", bundle, "--epochs", "2", "--batch-size", "8", "--resume")
	if r.code != 1 || !strings.Contains(r.stderr, "same settings") {
		t.Errorf("resume with another batch size: exit %d\n%s", r.code, r.stderr)
	}
	// So are other images under the same names.
	if _, err := synth.WriteParts(f.normal, 48, synth.Normal, 40, 99); err != nil {
		t.Fatal(err)
	}
	r = runBinary(t, nil, "fit", "--teacher", f.teacher, "--normal", f.normal, "--out", bundle, "--epochs", "2", "--batch-size", "4", "--resume")
	if r.code != 1 || !strings.Contains(r.stderr, "names or contents") {
		t.Errorf("resume on replaced images: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := synth.WriteParts(f.normal, 48, synth.Normal, 40, 1); err != nil {
		t.Fatal(err)
	}
	// Resuming finishes the remaining epochs from the saved ones.
	r = runBinary(t, nil, "fit", "--teacher", f.teacher, "--normal", f.normal, "--out", bundle, "--epochs", "3", "--batch-size", "4", "--resume")
	if r.code != 0 {
		t.Fatalf("resume failed: %s", r.stderr)
	}
	if !strings.Contains(r.stderr, "resuming fit") {
		t.Errorf("resume did not report resuming:\n%s", r.stderr)
	}
	if _, err := os.Stat(bundle); err != nil {
		t.Errorf("no bundle after resume: %v", err)
	}
	if _, err := os.Stat(state); !os.IsNotExist(err) {
		t.Error("state file left after the resumed fit finished")
	}
}

func TestFitAndScoreBadInputs(t *testing.T) {
	f := newFitFixture(t, 6)
	empty := filepath.Join(f.dir, "empty")
	os.MkdirAll(empty, 0o755)
	bundle := filepath.Join(f.dir, "b.tfy")
	onlyCorrupt := filepath.Join(f.dir, "corrupt")
	os.MkdirAll(onlyCorrupt, 0o755)
	for _, n := range []string{"a.png", "b.jpg", "c.bmp"} {
		os.WriteFile(filepath.Join(onlyCorrupt, n), []byte("garbage"), 0o644)
	}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"missing teacher", []string{"fit", "--teacher", filepath.Join(f.dir, "nope.safetensors"), "--normal", f.normal, "--out", bundle}, "no such file"},
		{"no teacher flag", []string{"fit", "--normal", f.normal, "--out", bundle}, "--teacher required"},
		{"empty folder", []string{"fit", "--teacher", f.teacher, "--normal", empty, "--out", bundle}, "no images"},
		{"only corrupt files", []string{"fit", "--teacher", f.teacher, "--normal", onlyCorrupt, "--out", bundle}, "only 0 readable images"},
		{"not a folder", []string{"fit", "--teacher", f.teacher, "--normal", f.teacher, "--out", bundle}, "not a readable folder"},
		{"bad blocks", []string{"fit", "--teacher", f.teacher, "--normal", f.normal, "--out", bundle, "--blocks", "2-x"}, "--blocks"},
		{"block out of range", []string{"fit", "--teacher", f.teacher, "--normal", f.normal, "--out", bundle, "--blocks", "3-9"}, "outside the teacher's blocks"},
		{"checkpoint as bundle", []string{"score", "--model", f.teacher, filepath.Join(f.normal, "normal-0000.png")}, "not an ONNX model"},
		{"missing bundle", []string{"score", "--model", bundle, filepath.Join(f.normal, "normal-0000.png")}, "no such file"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := runBinary(t, nil, c.args...)
			if r.code == 0 || !strings.Contains(r.stderr, c.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant a failure mentioning %q", r.code, r.stderr, c.want)
			}
			if _, err := os.Stat(bundle); !os.IsNotExist(err) {
				t.Error("a failed fit left a bundle behind")
			}
		})
	}
}
