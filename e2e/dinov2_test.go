package e2e

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/transformaly/transformaly/internal/synth"
)

// A DINOv2-with-registers teacher in timm's layout with its config.json
// (patch 14, LayerScale, 4 registers, ImageNet normalisation): fit takes
// it whole, the bundle records registers and normalisation, and scoring
// gives finite scores, regions and anomaly maps of the patch grid.
func TestFitAndScoreADINOv2WithRegisters(t *testing.T) {
	dir := t.TempDir()
	teacher := filepath.Join(dir, "vit_small_patch14_reg4_dinov2", "model.safetensors")
	os.MkdirAll(filepath.Dir(teacher), 0o755)
	if r := runBinary(t, nil, "random-vit", "--dim", "384", "--depth", "3", "--heads", "6", "--patch", "14", "--image-size", "56",
		"--registers", "4", "--layer-scale", "--out", teacher); r.code != 0 {
		t.Fatal(r.stderr)
	}
	cfg := `{"architecture": "vit_small_patch14_reg4_dinov2", "pretrained_cfg": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "input_size": [3, 56, 56]}}`
	if err := os.WriteFile(filepath.Join(filepath.Dir(teacher), "config.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	normal, defective := filepath.Join(dir, "normal"), filepath.Join(dir, "defective")
	if _, err := synth.WriteParts(normal, 56, synth.Normal, 40, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := synth.WriteParts(defective, 56, synth.Missing, 3, 2); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "dinov2.tfy")
	if r := runBinary(t, nil, "fit", "--teacher", teacher, "--normal", normal, "--out", bundle, "--epochs", "2", "--batch-size", "8", "--val-fraction", "0.2"); r.code != 0 {
		t.Fatalf("fit: %s", r.stderr)
	}
	r := runBinary(t, nil, "inspect", bundle)
	var info struct {
		Teacher struct {
			Config struct {
				Registers int `json:"registers"`
				Patch     int `json:"patch"`
			} `json:"config"`
			Normalization struct {
				Mean []float64 `json:"mean"`
			} `json:"normalization"`
		} `json:"teacher"`
		Patch *struct{} `json:"patch"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil {
		t.Fatalf("inspect: %v\n%s", err, r.stdout)
	}
	if info.Teacher.Config.Registers != 4 || info.Teacher.Config.Patch != 14 || len(info.Teacher.Normalization.Mean) != 3 || info.Teacher.Normalization.Mean[0] != 0.485 || info.Patch == nil {
		t.Errorf("inspect: %s", r.stdout)
	}
	maps := filepath.Join(dir, "maps")
	r = runBinary(t, nil, "score", "--model", bundle, "--json", "--anomaly-maps", maps, defective)
	if r.code != 0 {
		t.Fatalf("score: %s", r.stderr)
	}
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var s struct {
			Score  float64         `json:"score"`
			Region json.RawMessage `json:"region"`
		}
		if err := json.Unmarshal([]byte(l), &s); err != nil || math.IsNaN(s.Score) || math.IsInf(s.Score, 0) || len(s.Region) == 0 {
			t.Errorf("score line %s (%v)", l, err)
		}
	}
	if tiffs, _ := filepath.Glob(filepath.Join(maps, "*.tiff")); len(tiffs) != 3 {
		t.Errorf("%d anomaly maps for 3 images", len(tiffs))
	}
}
