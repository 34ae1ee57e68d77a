package e2e

import (
	"encoding/json"
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gocv.io/x/gocv"

	"github.com/transformaly/transformaly/internal/synth"
)

// The patch feature space end to end on the MVTec AD layout synth writes:
// fit on train/good, eval --dataset finds the small defects (image and
// pixel AUROC at least 0.95) and keeps the gross ones (1.0); score --json
// puts the worst region on the defect and writes float32 TIFF maps at the
// image's resolution; a dataset without test/good and a mask of the wrong
// size are refused by name.
func TestPatchSpaceOnADataset(t *testing.T) {
	dir := t.TempDir()
	data, teacher, bundle := filepath.Join(dir, "data"), filepath.Join(dir, "vit.safetensors"), filepath.Join(dir, "line.tfy")
	for _, args := range [][]string{
		{"synth", "--dataset", data, "--count", "200", "--test-count", "25", "--image-size", "128"},
		{"random-vit", "--dim", "96", "--depth", "6", "--heads", "4", "--patch", "8", "--image-size", "128", "--out", teacher},
		{"fit", "--teacher", teacher, "--normal", filepath.Join(data, "train", "good"), "--out", bundle, "--epochs", "3"},
	} {
		if r := runBinary(t, nil, args...); r.code != 0 {
			t.Fatalf("%s: %s", args[0], r.stderr)
		}
	}
	// One eval gives the fp32 figures and their int8 comparison.
	r := runBinary(t, nil, "eval", "--model", bundle, "--dataset", data, "--json", "--compare-precision", "int8")
	if r.code != 0 {
		t.Fatal(r.stderr)
	}
	var rep struct {
		Kinds map[string]struct {
			Auroc float64  `json:"auroc"`
			Pixel *float64 `json:"pixel_auroc"`
			Aupro *float64 `json:"aupro"`
		} `json:"kinds"`
		Precision struct {
			Kinds map[string]struct {
				FP32 float64  `json:"auroc_fp32"`
				Int8 *float64 `json:"auroc_int8"`
				Max  float64  `json:"max_score_difference"`
			} `json:"kinds"`
		} `json:"precision_compare"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("eval --json: %v\n%s", err, r.stdout)
	}
	small := 0.0
	for _, kind := range synth.SmallDefects {
		k, ok := rep.Kinds[kind]
		if !ok || k.Pixel == nil || k.Aupro == nil {
			t.Fatalf("eval --dataset: no figures for %s: %s", kind, r.stdout)
		}
		t.Logf("%s: image AUROC %.3f, pixel AUROC %.3f, AUPRO %.3f", kind, k.Auroc, *k.Pixel, *k.Aupro)
		small += k.Auroc / float64(len(synth.SmallDefects))
		if *k.Pixel < 0.95 {
			t.Errorf("%s: pixel AUROC %.3f, want at least 0.95", kind, *k.Pixel)
		}
	}
	if small < 0.95 {
		t.Errorf("small defects: image AUROC %.3f on average, want at least 0.95", small)
	}
	for _, kind := range synth.Defects {
		if a := rep.Kinds[kind].Auroc; a < 0.99 {
			t.Errorf("gross defect %s: image AUROC %.3f, want 1", kind, a)
		}
	}

	// At int8 (linear layers in int8 on the CPU) every kind's AUROC stays
	// within 0.005 of fp32's (measured here: chips -0.0016, one normal and
	// one chipped part of 25 each swapped; every other kind 1.0 at both).
	// With the spaces summed (bundle format 2), the Gaussians' int8 noise
	// moved small defects' AUROC by -0.016 to +0.022.
	if len(rep.Precision.Kinds) != len(rep.Kinds) {
		t.Fatalf("eval --compare-precision int8 --json: %d kinds compared of %d\n%s", len(rep.Precision.Kinds), len(rep.Kinds), r.stdout)
	}
	for kind, k := range rep.Precision.Kinds {
		if k.Int8 == nil {
			t.Fatalf("%s: no auroc_int8: %s", kind, r.stdout)
		}
		t.Logf("%s: AUROC %.4f at int8, %.4f at fp32 (scores up to %.3g apart)", kind, *k.Int8, k.FP32, k.Max)
		if d := *k.Int8 - k.FP32; math.Abs(d) > 0.005 {
			t.Errorf("%s: int8 AUROC %.4f, fp32 %.4f: more than 0.005 apart", kind, *k.Int8, k.FP32)
		}
	}

	// The worst region lies on the stain, and the map is the image's size.
	stain := filepath.Join(data, "test", synth.Stain, "003.png")
	maps := filepath.Join(dir, "maps")
	r = runBinary(t, nil, "score", "--model", bundle, "--json", "--anomaly-maps", maps, stain)
	if r.code != 0 {
		t.Fatal(r.stderr)
	}
	var line struct {
		AnomalyMap string `json:"anomaly_map"`
		Region     *struct{ X, Y, Width, Height int }
	}
	if err := json.Unmarshal([]byte(r.stdout), &line); err != nil || line.Region == nil || line.AnomalyMap == "" {
		t.Fatalf("score --json: %v\n%s", err, r.stdout)
	}
	maskFile, err := os.Open(filepath.Join(data, "ground_truth", synth.Stain, "003_mask.png"))
	if err != nil {
		t.Fatal(err)
	}
	mask, err := png.Decode(maskFile)
	maskFile.Close()
	if err != nil {
		t.Fatal(err)
	}
	defect := image.Rectangle{}
	for y := range 128 {
		for x := range 128 {
			if g, _, _, _ := mask.At(x, y).RGBA(); g > 0 {
				defect = defect.Union(image.Rect(x, y, x+1, y+1))
			}
		}
	}
	region := image.Rect(line.Region.X, line.Region.Y, line.Region.X+line.Region.Width, line.Region.Y+line.Region.Height)
	if !region.Overlaps(defect) {
		t.Errorf("worst region %v misses the stain at %v", region, defect)
	}
	tiff := gocv.IMRead(line.AnomalyMap, gocv.IMReadUnchanged)
	defer tiff.Close()
	if tiff.Type() != gocv.MatTypeCV32F || tiff.Cols() != 128 || tiff.Rows() != 128 {
		t.Errorf("anomaly map %s: %dx%d of type %v, want 128x128 float32", line.AnomalyMap, tiff.Cols(), tiff.Rows(), tiff.Type())
	}

	// Bad datasets are refused by name.
	noGood := filepath.Join(dir, "no-good")
	os.MkdirAll(filepath.Join(noGood, "test", "crack"), 0o755)
	if r := runBinary(t, nil, "eval", "--model", bundle, "--dataset", noGood); r.code == 0 || !strings.Contains(r.stderr, "no test/good") {
		t.Errorf("a dataset without test/good: code %d, %s", r.code, r.stderr)
	}
	small32 := gocv.NewMatWithSize(32, 32, gocv.MatTypeCV8U)
	gocv.IMWrite(filepath.Join(data, "ground_truth", synth.Crack, "000_mask.png"), small32)
	small32.Close()
	if r := runBinary(t, nil, "eval", "--model", bundle, "--dataset", data); r.code == 0 || !strings.Contains(r.stderr, "000_mask.png is 32x32, but its image") {
		t.Errorf("a mask of the wrong size: code %d, %s", r.code, r.stderr)
	}
}
