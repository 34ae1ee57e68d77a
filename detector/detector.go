package detector

import (
	"fmt"
	"log/slog"
	"math"
	"sync/atomic"

	"github.com/transformaly/transformaly/models"
)

// Detector scores images with a bundle: one ORT session over the scored
// detector graph.
type Detector struct {
	Info   models.BundleInfo
	Path   string
	runner *Runner
	host   *models.Scoring // non-nil: scores made on the host (RunnerOptions.ScoreOnHost)
	// tilesWarned: frames cut into more tiles than the bundle's were have
	// been logged (once).
	tilesWarned atomic.Bool
}

// Result is one image's verdict.
type Result struct {
	Score        float64
	LLPretrained float64
	LLStudent    float64
	BlockErrors  []float32
	TokenErrors  []float32 // [blocks * tokens], for heatmaps
	Embedding    []float32
	// PatchScore is the largest patch distance, PatchDistances each
	// patch's ([Grid*Grid], row by row): NaN and nil for a bundle without a
	// patch feature space.
	PatchScore     float64
	PatchDistances []float32
	// MapCols and MapRows shape PatchDistances when a tiled bundle has
	// stitched them into a map in frame coordinates (ScoreFrames); 0 for a
	// tile or a whole-frame bundle's image (the model's square grid).
	MapCols, MapRows int
	// Tiles is how many tiles the frame was cut into, WorstTile the one
	// whose result this is (row by row; tiled bundles only, 0 otherwise).
	Tiles, WorstTile int
	Anomalous        bool // above the threshold, or not finite
}

// outputsFor lists the graph outputs a bundle's detector reads, in the
// order Score expects them.
func outputsFor(info models.BundleInfo) []string {
	out := []string{
		models.OutputScore, models.OutputLLPretrained, models.OutputLLStudent,
		models.OutputBlockErrors, models.OutputTokenErrors, models.OutputEmbedding,
	}
	if info.Patch != nil {
		out = append(out, models.OutputPatchScore, models.OutputPatchDistances)
	}
	return out
}

// Load reads a bundle and opens its session.
func Load(path string, opts RunnerOptions) (*Detector, error) {
	info, mf, err := models.ReadBundle(path)
	if err != nil {
		return nil, err
	}
	opts.ImageSize = info.ImageSize
	var r *Runner
	var scoring models.Scoring
	switch opts.Precision {
	case "", models.FP32:
		if opts.ScoreOnHost {
			_, _, scoring, err = models.DecodeBundle(info, mf)
		}
		if err == nil {
			r, err = NewFileRunner(mf, info.ImageSize, outputsFor(info), opts)
		}
	case models.FP16:
		var model []byte
		model, scoring, err = fp16Model(info, mf)
		if err == nil {
			r, err = NewRunner(model, info.ImageSize, outputsFor(info), opts)
		}
	case models.INT8:
		if opts.Provider, err = Int8Provider(opts.Provider); err != nil {
			break
		}
		var model []byte
		model, scoring, err = int8Model(info, mf, opts)
		if err == nil {
			r, err = NewRunner(model, info.ImageSize, outputsFor(info), opts)
		}
		if err == nil {
			logInt8(path)
		}
	default:
		err = fmt.Errorf("precision %q is not fp32, fp16 or int8", opts.Precision)
	}
	if err != nil {
		return nil, fmt.Errorf("load bundle %s: %w", path, err)
	}
	d := &Detector{Info: info, Path: path, runner: r}
	if trt16 := r.Provider() == "tensorrt" && opts.Precision == models.FP16; opts.ScoreOnHost || trt16 {
		d.host = &scoring
		why := "asked (score_on_host)"
		if trt16 {
			why = "TensorRT's FP16 kernels may run any layer in half precision, the whitening and its sums too"
		}
		slog.Info("likelihoods and scores made on the host in float64 from the graph's features", "bundle", path, "why", why)
	}
	if u := info.Calibration.Unkept; u != "" {
		slog.Warn("the bundle's threshold cannot keep its promise: "+u, "bundle", path)
	}
	if c := info.Calibration; c.Precision != "" {
		if runs := EffectivePrecision(r.Provider(), opts.Precision); runs != c.Precision && (runs == models.INT8 || c.Precision == models.INT8) {
			slog.Warn("the bundle's threshold was set on scores of another precision, and int8 scores run higher than fp32's (quantization noise in the features raises Gaussian scores more often than it lowers them): more false alarms than promised at int8, fewer detections at fp32; fit with --precision set to the one that runs (transformaly inspect: calibration.precision)",
				"bundle", path, "calibrated_on", c.Provider+" "+c.Precision, "scoring_on", r.Provider()+" "+runs)
		} else if runs != c.Precision {
			slog.Warn("the bundle's threshold was set on scores of another precision: scores move a little (an H200: TF32 2.5e-3, fp16 2e-3 of their spread); check false alarms with transformaly eval",
				"bundle", path, "calibrated_on", c.Provider+" "+c.Precision, "scoring_on", r.Provider()+" "+runs)
		}
	}
	return d, nil
}

// EffectivePrecision is the arithmetic a provider runs a detector in at a
// precision setting: fp16 or int8 when asked; TF32 matmuls on CUDA by default;
// fp32 otherwise (TensorRT uses FP16 kernels only when asked).
func EffectivePrecision(provider, precision string) string {
	switch {
	case precision == models.FP16 || precision == models.INT8:
		return precision
	case provider == "cuda" && precision == "":
		return "tf32"
	}
	return models.FP32
}

// fp16Model rebuilds a bundle's detector in half precision (half the size:
// a bundle of up to 4 GB fits in memory this way), and gives its scoring.
func fp16Model(info models.BundleInfo, mf models.ModelFile) ([]byte, models.Scoring, error) {
	v, students, scoring, err := models.DecodeBundle(info, mf)
	if err != nil {
		return nil, scoring, err
	}
	m, err := models.ScoredDetectorGraph(v, info.Blocks, students, scoring, info, models.FP16)
	if err != nil {
		return nil, scoring, err
	}
	model, err := models.Serialize(m)
	return model, scoring, err
}

// Size is the image side length the bundle takes.
func (d *Detector) Size() int { return d.Info.ImageSize }

// Finite says whether the score and its parts are finite numbers (a
// provider or precision fault, or a damaged bundle, can make them NaN or
// infinite); a bundle without patch scores has no patch part to check.
func (r Result) Finite() bool {
	patch := r.PatchScore
	if r.PatchDistances == nil {
		patch = 0
	}
	for _, x := range []float64{r.Score, r.LLPretrained, r.LLStudent, patch} {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return false
		}
	}
	return true
}

// NumberOrNull is x for JSON, or nil (null) when x is NaN or infinite,
// which JSON cannot carry: a message holding one failed to encode.
func NumberOrNull(x float64) *float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return nil
	}
	return &x
}

// Score runs n packed RGB images of Size() squared; a result is Anomalous
// when its score is above threshold (d.Info.Threshold is the bundle's
// calibrated one; scores and thresholds may be negative).
func (d *Detector) Score(images []byte, n int, threshold float64) ([]Result, error) {
	out, err := d.runner.Run(images, n)
	if err != nil {
		return nil, err
	}
	nb := len(d.Info.Blocks)
	tokens := len(out[4].Data) / max(n*nb, 1)
	dim := len(out[5].Data) / n
	res := make([]Result, n)
	for i := range res {
		r := Result{
			Score:        float64(out[0].Data[i]),
			LLPretrained: float64(out[1].Data[i]),
			LLStudent:    float64(out[2].Data[i]),
			BlockErrors:  out[3].Data[i*nb : (i+1)*nb],
			TokenErrors:  out[4].Data[i*nb*tokens : (i+1)*nb*tokens],
			Embedding:    out[5].Data[i*dim : (i+1)*dim],
			PatchScore:   math.NaN(),
		}
		if len(out) > 7 {
			patches := len(out[7].Data) / n
			r.PatchScore = float64(out[6].Data[i])
			r.PatchDistances = out[7].Data[i*patches : (i+1)*patches]
		}
		res[i] = r
	}
	if d.host != nil {
		hostScore(d.host, res)
	}
	if p := d.Info.Patch; p != nil {
		for i := range res {
			res[i].Score = p.Combination.Score(res[i].Score, res[i].PatchScore)
		}
	}
	for i := range res {
		// Written so that a NaN score is anomalous too (NaN > t is false):
		// a score that is no number is never "normal".
		res[i].Anomalous = !(res[i].Score <= threshold) || !res[i].Finite()
	}
	return res, nil
}

// Close releases the session.
func (d *Detector) Close() error { return d.runner.Close() }

// Provider is the execution provider the bundle runs on.
func (d *Detector) Provider() string { return d.runner.Provider() }
