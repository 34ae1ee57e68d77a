package models_test

import (
	"bytes"
	"gonum.org/v1/gonum/stat/distuv"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/transformaly/transformaly/models"
	"github.com/transformaly/transformaly/models/onnxpb"
)

// A bundle keeps its large initializers as ONNX external data inside its
// own file: the file still parses as a ModelProto, each external
// initializer's location, offset and length find its exact bytes, and the
// weights decode back to what went in, under any file name.
func TestBundleFileHoldsItsOwnExternalData(t *testing.T) {
	v, _ := models.RandomViT(smallConfig, 7)
	blocks := []int{1, 2}
	rng := rand.New(rand.NewPCG(3, 3))
	students := []models.Block{models.XavierBlock(v.Config, rng), models.XavierBlock(v.Config, rng)}
	scoring := models.Scoring{Pretrained: randomQuadratic(v.Dim, 4, rng), Student: randomQuadratic(2, 2, rng)}
	info := models.BundleInfo{Format: models.BundleFormat, ImageSize: v.ImageSize, Blocks: blocks, Threshold: 2}
	info.Teacher.Config = v.Config
	m, inline := scoredGraph(t, v, blocks, students, scoring, info)
	dir := t.TempDir()
	path := filepath.Join(dir, "line.tfy")
	if err := models.WriteBundle(path, m); err != nil {
		t.Fatal(err)
	}
	if again, _ := models.Serialize(m); !bytes.Equal(again, inline) {
		t.Error("WriteBundle changed the model it was given")
	}

	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var stored onnxpb.ModelProto
	if err := proto.Unmarshal(file, &stored); err != nil {
		t.Fatalf("the bundle file does not parse as an ONNX model: %v", err)
	}
	external := 0
	for i, want := range m.GetGraph().GetInitializer() {
		got := stored.GetGraph().GetInitializer()[i]
		if got.GetName() != want.GetName() {
			t.Fatalf("initializer %d: %s, want %s", i, got.GetName(), want.GetName())
		}
		if got.GetDataLocation() != onnxpb.TensorProto_EXTERNAL {
			if !bytes.Equal(got.GetRawData(), want.GetRawData()) || len(want.GetRawData()) >= 1024 {
				t.Errorf("inline initializer %s (%d bytes) differs or should be external", want.GetName(), len(want.GetRawData()))
			}
			continue
		}
		external++
		kv := map[string]string{}
		for _, e := range got.GetExternalData() {
			kv[e.GetKey()] = e.GetValue()
		}
		off, _ := strconv.Atoi(kv["offset"])
		n, _ := strconv.Atoi(kv["length"])
		if kv["location"] != "line.tfy" || off%64 != 0 || n != len(want.GetRawData()) || off+n > len(file) ||
			!bytes.Equal(file[off:off+n], want.GetRawData()) {
			t.Fatalf("external initializer %s: %v does not find its %d bytes", want.GetName(), kv, len(want.GetRawData()))
		}
	}
	if external < 10 {
		t.Errorf("only %d initializers external", external)
	}

	renamed := filepath.Join(dir, "renamed.tfy")
	if err := os.Rename(path, renamed); err != nil {
		t.Fatal(err)
	}
	back, mf, err := models.ReadBundle(renamed)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mf.Proto), "renamed.tfy") || strings.Contains(string(mf.Proto), "line.tfy") {
		t.Error("the external data does not name the file as it is called now")
	}
	v2, students2, scoring2, err := models.DecodeBundle(back, mf)
	if err != nil {
		t.Fatal(err)
	}
	same := func(what string, a, b []float32) {
		if !slices.Equal(a, b) {
			t.Errorf("%s differs after the round trip", what)
		}
	}
	same("patch embedding", v.PatchW, v2.PatchW)
	same("final norm", v.NormW, v2.NormW)
	for i := range v.Blocks {
		for j, p := range v.Blocks[i].Params(v.Config) {
			same(p.Name, *p.Data, *v2.Blocks[i].Params(v.Config)[j].Data)
		}
	}
	for k := range students {
		for j, p := range students[k].Params(v.Config) {
			same("student "+p.Name, *p.Data, *students2[k].Params(v.Config)[j].Data)
		}
	}
	same("pretrained scoring", scoring.Pretrained.W, scoring2.Pretrained.W)
	same("student scoring", scoring.Student.B, scoring2.Student.B)

	// Damaged weights are refused, not run.
	flipped := bytes.Clone(file)
	flipped[len(flipped)/3] ^= 0x10 // inside the weights
	os.WriteFile(renamed, flipped, 0o644)
	if _, _, err := models.ReadBundle(renamed); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("a bundle with a flipped bit in its weights: %v", err)
	}
	// A truncated bundle is one clear error.
	os.WriteFile(renamed, file[:len(file)/2], 0o644)
	if _, _, err := models.ReadBundle(renamed); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("truncated bundle: %v", err)
	}
}

// NormalQuantile against counting: for calibration scores kept whole, a
// score equal to the r-th smallest reads r/(n+1); kept as 1,001 of 5,000,
// any score reads within a grid step of the counted share.
func TestNormalQuantileCountsTheCalibrationScores(t *testing.T) {
	rng := rand.New(rand.NewPCG(2, 2))
	for _, n := range []int{50, 5000} {
		all := make([]float64, n)
		for i := range all {
			all[i] = rng.NormFloat64()
		}
		slices.Sort(all)
		kept := all
		if n > 1001 {
			kept = make([]float64, 1001)
			for i := range kept {
				kept[i] = all[int(math.Round(float64(i)*float64(n-1)/1000))]
			}
		}
		c := models.NormalScores{Images: n, Scores: kept}
		for _, s := range []float64{-10, all[0], all[n/3], (all[n/2] + all[n/2+1]) / 2, all[n-1], 10} {
			counted := float64(sort.SearchFloat64s(all, math.Nextafter(s, math.Inf(1)))) / float64(n+1)
			tol := 1e-9
			if n > 1001 {
				tol = 1.0 / 1000
			} else if s > all[0] && s < all[n-1] && slices.Index(all, s) < 0 {
				tol = 1.0 / float64(n+1) // between two scores: interpolated
			}
			if got := c.NormalQuantile(s); math.Abs(got-counted) > tol {
				t.Errorf("n %d, score %g: %g, counted %g", n, s, got, counted)
			}
		}
	}
	if q := (models.NormalScores{}).NormalQuantile(1); !math.IsNaN(q) {
		t.Errorf("without calibration scores: %g, want NaN", q)
	}
}

// Past the calibration scores the tail model says how rare a score is.
// Scores are drawn as the detector's are distributed on normal images: half
// a chi-square (a Gaussian's negative log-likelihood) of 10 and of 40
// degrees of freedom, 500 calibration images. At true tail shares of 1e-3,
// 1e-4 and 1e-5 (scores past every calibration score for the last two), the
// share read off the model, 1 - NormalQuantile, must be between half and
// ten times the true one (median of 30 draws), against gonum's chi-square.
// Without the model it stays at 1/501 = 2e-3 however far out, 200 times
// the true 1e-5. Measured: the exponential tail errs on the safe side
// (calls a score less rare than it is), by 1.2-1.7x at 1e-3 and 4.7-6.8x at
// 1e-5; a generalised Pareto tail with its shape estimated (probability-
// weighted moments) erred the other way, by up to 100x and with scores past
// its endpoint read as impossible, so it was not kept.
func TestNormalQuantileTailMatchesTheTrueTail(t *testing.T) {
	const n, draws = 500, 30
	for _, dof := range []float64{10, 40} {
		chi := distuv.ChiSquared{K: dof}
		for _, p := range []float64{1e-3, 1e-4, 1e-5} {
			score := chi.Quantile(1-p) / 2
			ratios := make([]float64, draws)
			for d := range draws {
				rng := rand.New(rand.NewPCG(uint64(dof), uint64(d)))
				scores := make([]float64, n)
				for i := range scores {
					x := 0.0
					for range int(dof) {
						z := rng.NormFloat64()
						x += z * z
					}
					scores[i] = x / 2
				}
				slices.Sort(scores)
				c := models.NormalScores{Images: n, Scores: scores, Tail: models.FitScoreTail(scores, 0.1, 20)}
				ratios[d] = (1 - c.NormalQuantile(score)) / p
			}
			slices.Sort(ratios)
			med := ratios[draws/2]
			t.Logf("dof %g, true share %g: median modelled/true %.2f (range %.2f-%.2f)", dof, p, med, ratios[0], ratios[draws-1])
			if med < 0.5 || med > 10 {
				t.Errorf("dof %g, true tail share %g: median modelled share %.2g times the true one", dof, p, med)
			}
		}
	}
	if tail := models.FitScoreTail(make([]float64, 150), 0.1, 20); tail != nil {
		t.Errorf("a tail model from 15 scores: %+v", tail)
	}
}

func TestRarityText(t *testing.T) {
	for q, want := range map[float64]string{
		0.5: "above 50% of normal parts", 0.97: "above 97% of normal parts", 0.9997: "above 99.97% of normal parts",
		0.999993: "above 99.9993% of normal parts", 1 - 1e-12: "above 99.9999% of normal parts", 1: "above 99.9999% of normal parts", math.NaN(): "",
	} {
		if got := models.RarityText(q); got != want {
			t.Errorf("RarityText(%g) = %q, want %q", q, got, want)
		}
	}
}
