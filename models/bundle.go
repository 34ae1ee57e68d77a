package models

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/transformaly/transformaly/models/onnxpb"
	"github.com/transformaly/transformaly/tiles"
)

// A bundle is one ONNX model file (WriteModelFile: weights as external data
// inside the same file, so any size fits): the detector graph with the
// scoring baked in, and the BundleInfo as JSON under the model's metadata
// key BundleMetadataKey. ONNX tools open it by its path as they would any
// model with external data.

// BundleMetadataKey is the ONNX metadata_props key holding the BundleInfo.
const BundleMetadataKey = "transformaly.bundle"

// BundleFormat is bumped when a bundle's meaning or layout changes
// incompatibly for older readers (2: weights as external data in the same
// file; 3: a patch space's score combined with the method's by
// PatchInfo.Combination, not in the graph; 4: the patch features'
// neighbourhood recorded, which older builds would take as 3x3; 5: the
// patch features' pooling recorded, which older builds would take as a
// mean). This build reads formats 1 and 2 without a patch space (their
// graph's score is the method's), 3 and 4.
const BundleFormat = 5

// Scored detector outputs, besides the detector's own.
const (
	// OutputScore is the method's score, -(ll_pretrained + ll_student); a
	// bundle with a patch space combines it with the patch score
	// (PatchInfo.Combination) on the host.
	OutputScore        = "score"         // float32 [N]
	OutputLLPretrained = "ll_pretrained" // float32 [N]
	OutputLLStudent    = "ll_student"    // float32 [N]
)

// QuadraticScore is a Gaussian log-likelihood of a feature x (row vector of
// length In) after an affine map: ll(x) = Const - 0.5 * ||x W + B||^2. PCA
// whitening, centring and the inverse Cholesky factor all fold into W and B.
type QuadraticScore struct {
	In, K int
	W     []float32 // [In, K] row-major
	B     []float32 // [K]
	Const float64
}

// Scoring holds the two likelihoods of the method, and the patch feature
// space when the bundle has one.
type Scoring struct {
	Pretrained QuadraticScore // over the CLS embedding
	Student    QuadraticScore // over the per-block errors
	Patch      *PatchScore    // nil: no patch feature space
}

// quadraticLL evaluates a QuadraticScore in float32 (whatever the compute
// type) under initializers named name.W, name.B and name.const.
func (g *Graph) quadraticLL(x string, q QuadraticScore, name string) string {
	y := g.Op("Gemm", []string{x, g.Weight32(name+".W", q.W, q.In, q.K), g.Weight32(name+".B", q.B, q.K)})
	sq := g.Op("ReduceSum", []string{g.squared(y), g.Ints([]int64{1}, 1)}, AttrInt("keepdims", 0))
	return g.Op("Sub", []string{g.Weight32(name+".const", []float32{float32(q.Const)}, 1), g.Op("Mul", []string{sq, g.Scalar32(0.5)})})
}

// Precisions of the detector graph.
const (
	FP32 = "fp32"
	FP16 = "fp16" // weights and activations in half precision; errors and scores in float32
)

// ScoredDetectorGraph is DetectorGraph plus the two log-likelihoods and the
// anomaly score, with info stored as the bundle metadata. WriteBundle stores
// it; Serialize makes a model to open from memory.
func ScoredDetectorGraph(v *ViT, blocks []int, students []Block, s Scoring, info BundleInfo, precision string) (*onnxpb.ModelProto, error) {
	g := NewGraph()
	switch precision {
	case FP32, "":
	case FP16:
		g.compute = Float16
	default:
		return nil, fmt.Errorf("scored detector graph: precision %q is not fp32 or fp16 (int8: ScoredDetectorGraphInt8)", precision)
	}
	return g.scoredDetector(v, blocks, students, s, info)
}

func (g *Graph) scoredDetector(v *ViT, blocks []int, students []Block, s Scoring, info BundleInfo) (*onnxpb.ModelProto, error) {
	if s.Pretrained.In != v.Dim || s.Student.In != len(blocks) {
		return nil, fmt.Errorf("scored detector graph: scoring takes %d and %d features, want %d and %d", s.Pretrained.In, s.Student.In, v.Dim, len(blocks))
	}
	out, err := g.detectorBody(v, blocks, students)
	if err != nil {
		return nil, err
	}
	llPre := g.quadraticLL(out.embedding, s.Pretrained, "score.pretrained")
	llStu := g.quadraticLL(out.blockErrors, s.Student, "score.student")
	g.Output(OutputLLPretrained, llPre, Float32, batchDim)
	g.Output(OutputLLStudent, llStu, Float32, batchDim)
	g.Output(OutputScore, g.Op("Neg", []string{g.Op("Add", []string{llPre, llStu})}), Float32, batchDim)
	if p := s.Patch; p != nil {
		if err := p.Check(v.Depth, v.Dim); err != nil {
			return nil, fmt.Errorf("scored detector graph: %w", err)
		}
		if p.D != p.Width(v.Dim) || len(p.Bank) != p.M*p.D || p.M == 0 {
			return nil, fmt.Errorf("scored detector graph: patch bank of %d x %d for %d-wide features", p.M, p.D, p.Width(v.Dim))
		}
		g.patchOutputs(out.ins, v.Config, p)
	}
	meta, err := json.Marshal(info)
	if err != nil {
		return nil, fmt.Errorf("encode bundle metadata: %w", err)
	}
	return g.Proto("transformaly_detector", map[string]string{BundleMetadataKey: string(meta)}), nil
}

// BundleInfo is what a bundle says about itself.
type BundleInfo struct {
	Format    int       `json:"format"`
	Version   string    `json:"version"`
	Created   time.Time `json:"created"`
	ImageSize int       `json:"image_size"`
	Blocks    []int     `json:"blocks"`
	Teacher   struct {
		Path     string `json:"path"`
		Layout   string `json:"layout"`
		Checksum string `json:"sha256"`
		Config   Config `json:"config"`
		// Normalization is the teacher's input normalisation, baked into the
		// graph (absent in bundles from before it was read: 0.5 and 0.5).
		Normalization *Normalization `json:"normalization,omitempty"`
	} `json:"teacher"`
	Training      TrainingInfo `json:"training"`
	PCAComponents int          `json:"pca_components"`
	// Threshold is the default alert threshold on the score: the
	// ThresholdQuantile of the normal images' out-of-sample scores.
	Threshold         float64            `json:"threshold"`
	ThresholdQuantile float64            `json:"threshold_quantile"`
	ScoreQuantiles    map[string]float64 `json:"score_quantiles"` // of the calibration scores
	// Calibration says how the threshold was set, and the false-alarm rate
	// it promises on normal images with its 95% interval.
	Calibration Calibration `json:"calibration"`
	// Patch describes the patch feature space (nil: the bundle has none).
	Patch *PatchInfo `json:"patch,omitempty"`
	// Tiling says how frames are cut into tiles at native resolution (nil:
	// each frame is resized whole to ImageSize). Scores, threshold and
	// calibration of a tiled bundle are per frame: its worst tile's.
	Tiling *TilingInfo `json:"tiling,omitempty"`
}

// TilingInfo is a tiled bundle's tiling and what it was fitted on.
type TilingInfo struct {
	tiles.Tiling
	// CoreOnly: each tile's patches count only in its core (tiles.Layout.
	// CoreMask), the ring its neighbours cover being left to them.
	CoreOnly bool `json:"core_only"`
	// Frames is the normal frames fitted on; TilesPerFrame the fewest and
	// most tiles one of them had.
	Frames        int    `json:"frames"`
	TilesPerFrame [2]int `json:"tiles_per_frame"`
}

// Calibration is how a bundle's threshold was set.
type Calibration struct {
	Method string `json:"method"`
	// NormalScores are the calibration scores: Images normal images scored
	// out of sample.
	NormalScores
	// Provider and Precision are what the calibration scores were computed
	// on (fit runs strict fp32): scoring elsewhere moves scores a little.
	Provider  string `json:"provider,omitempty"`
	Precision string `json:"precision,omitempty"`
	// ExpectedFalseAlarms is 1 - ThresholdQuantile; FalseAlarms95 is the
	// 95% interval of the rate the threshold gives on unseen normal
	// images, from the order statistics of Images scores.
	ExpectedFalseAlarms float64    `json:"expected_false_alarm_rate"`
	FalseAlarms95       [2]float64 `json:"false_alarm_rate_95"`
	// Unkept, when set, says why the threshold cannot keep the promise of
	// 1 - ThresholdQuantile false alarms (too few normal images for the
	// rate) and what would keep it; ExpectedFalseAlarms is then the rate
	// it gives.
	Unkept string `json:"promise_unkept,omitempty"`
}

// NormalScores are normal images' out-of-sample scores (a bundle's, or
// one feature space's), kept to tell how rare a new part's score is.
type NormalScores struct {
	Images int `json:"images"` // normal images scored out of sample
	// Scores are the scores, sorted (at most 1,001 evenly spaced order
	// statistics of the Images), for NormalQuantile.
	Scores []float64 `json:"scores,omitempty"`
	// Tail extrapolates NormalQuantile past the scores (nil in bundles
	// from before it, or with too few scores to fit one).
	Tail *ScoreTail `json:"tail,omitempty"`
}

// ScoreTail is an exponential model of the calibration scores' upper tail
// (peaks over a threshold; a generalised Pareto tail with shape 0): the
// share of normal scores above s > From is Share*exp(-(s-From)/Scale).
// Shape 0 because the scores are sums of Gaussian negative
// log-likelihoods, half Mahalanobis distances squared: chi-square-like,
// whose tails are exponential (the Gumbel domain, where the shape is 0).
// Estimating a shape from the hundred-odd scores above From would add more
// variance than the bias it removes.
type ScoreTail struct {
	From  float64 `json:"from"`  // the tail's threshold: a high calibration quantile
	Share float64 `json:"share"` // of calibration scores above From
	Scale float64 `json:"scale"` // mean excess over From (the exponential's maximum likelihood)
}

// FitScoreTail fits the exponential tail to the scores above their
// 1-share quantile; nil with fewer than minExceedances scores there.
func FitScoreTail(sorted []float64, share float64, minExceedances int) *ScoreTail {
	k := int(math.Floor(share * float64(len(sorted))))
	if k < minExceedances || k >= len(sorted) {
		return nil
	}
	from := sorted[len(sorted)-k-1]
	excess := 0.0
	for _, s := range sorted[len(sorted)-k:] {
		excess += s - from
	}
	if excess <= 0 {
		return nil
	}
	// Share (k+1)/(n+1): From ranks n-k of n, so the model meets the
	// empirical level rank/(n+1) there.
	return &ScoreTail{From: from, Share: float64(k+1) / float64(len(sorted)+1), Scale: excess / float64(k)}
}

// NormalQuantile is the share of normal parts expected to score at or
// below score, read off the calibration scores: rank/(Images+1),
// interpolated between the stored ones, and above the tail model's
// threshold from the tail model (so a score far past every calibration
// score still reads as how rare it is: 0.99997, not the Images/(Images+1)
// every such score would get). NaN without calibration scores or for a
// NaN score.
func (c NormalScores) NormalQuantile(score float64) float64 {
	m := len(c.Scores)
	if m == 0 || math.IsNaN(score) {
		return math.NaN()
	}
	if t := c.Tail; t != nil && score > t.From {
		return 1 - t.Share*math.Exp(-(score-t.From)/t.Scale)
	}
	n := float64(c.Images)
	// level of stored point i: its rank among the Images, over Images+1.
	level := func(i int) float64 {
		if m == 1 {
			return n / (n + 1)
		}
		return (1 + math.Round(float64(i)*(n-1)/float64(m-1))) / (n + 1)
	}
	i := sort.SearchFloat64s(c.Scores, score) // first stored score >= score
	switch {
	case i == m:
		return level(m - 1)
	case c.Scores[i] == score || i == 0:
		if score < c.Scores[0] {
			return 0
		}
		return level(i)
	}
	lo, hi := c.Scores[i-1], c.Scores[i]
	return level(i-1) + (score-lo)/(hi-lo)*(level(i)-level(i-1))
}

// Surprise is -ln of the share of normal parts expected to score above
// score (1 - NormalQuantile): 0 below every normal score, ln(Images+1) at
// the largest, and past the tail model's threshold growing linearly, so
// that a score far past every normal one still ranks by how far.
func (c NormalScores) Surprise(score float64) float64 {
	if t := c.Tail; t != nil && score > t.From {
		return -math.Log(t.Share) + (score-t.From)/t.Scale
	}
	return -math.Log1p(-c.NormalQuantile(score))
}

// RarityText says in words how a score compares with normal parts, from its
// NormalQuantile q: "above 99.97% of normal parts", with as many digits
// as it takes to show how rare (the first digit of 1-q that is not 0);
// "" for NaN.
func RarityText(q float64) string {
	if math.IsNaN(q) {
		return ""
	}
	if 1-q <= 1e-6 { // rounding would say 100%; rarer than one in a million is what is known
		return "above 99.9999% of normal parts"
	}
	digits := 0
	if rest := 1 - q; rest > 0 && rest < 0.1 {
		digits = min(8, int(math.Floor(-math.Log10(rest)))-1)
	}
	return fmt.Sprintf("above %.*f%% of normal parts", digits, 100*q)
}

// PatchInfo is what a bundle says of its patch feature space; the bank
// itself is in the graph (patch.bank_t).
type PatchInfo struct {
	Blocks []int `json:"blocks"` // teacher blocks of the features
	// FeatureWidth is the bank's width: Dim x len(Blocks) for a mean, at
	// most Neighbourhood^2 times that for a concatenation (projected).
	FeatureWidth int `json:"feature_width"`
	// Neighbourhood is the side, in patches, of the square each patch's
	// feature pools (format 3 bundles: 3, unrecorded).
	Neighbourhood int `json:"neighbourhood"`
	// Pooling is how (models.PoolMean or PoolConcat; formats 3 and 4: a
	// mean, unrecorded).
	Pooling     string  `json:"pooling"`
	BankEntries int     `json:"bank_entries"`
	Coreset     float64 `json:"coreset"` // share of the normal images' patches kept
	Patches     int     `json:"patches"` // normal patches the coreset was chosen from
	// Combination makes one score of the method's (OutputScore) and the
	// patch score.
	Combination Combination `json:"combination"`
	// NormalDistance is a high quantile (99.9%) of normal patches'
	// out-of-sample distances: anomaly maps are scaled by it, so a normal
	// frame shows no hot spot.
	NormalDistance float64 `json:"normal_patch_distance"`
}

// TrainingInfo records how the students were trained.
type TrainingInfo struct {
	Epochs      int       `json:"epochs"`
	EpochsRun   int       `json:"epochs_run"` // fewer than Epochs when stopped early
	BatchSize   int       `json:"batch_size"`
	LR          float64   `json:"lr"`
	Seed        uint64    `json:"seed"`
	ValFraction float64   `json:"val_fraction"`
	Whitening   float64   `json:"whitening"`
	TrainImages int       `json:"train_images"`
	ValImages   int       `json:"val_images"`
	BestEpochs  []int     `json:"best_epochs"`  // per block, 1-based
	ValLosses   []float64 `json:"val_losses"`   // per block, at its best epoch
	Seconds     float64   `json:"seconds"`      // the whole fit
	StepSeconds float64   `json:"step_seconds"` // of which training steps
	// CalibrationFolds parts of the images were each left out of a
	// student training of their own, whose students scored them for the
	// calibration; CrossFitSeconds is what those trainings and the
	// calibration's patch banks took of Seconds.
	CalibrationFolds int     `json:"calibration_folds,omitempty"`
	CrossFitSeconds  float64 `json:"cross_fit_seconds,omitempty"`
}

// WriteBundle writes a scored detector graph atomically.
func WriteBundle(path string, m *onnxpb.ModelProto) error {
	return WriteModelFile(path, m)
}

// ReadBundle reads a bundle file's metadata and model, leaving the weights
// in the file.
func ReadBundle(path string) (BundleInfo, ModelFile, error) {
	var info BundleInfo
	mf, err := ReadModelFile(path)
	if err != nil {
		return info, mf, fmt.Errorf("bundle: %w", err)
	}
	raw, ok := mf.Metadata[BundleMetadataKey]
	if !ok {
		return info, mf, fmt.Errorf("read bundle %s: an ONNX model but not a transformaly bundle (no %s metadata); make one with `transformaly fit`", path, BundleMetadataKey)
	}
	if err := json.Unmarshal([]byte(raw), &info); err != nil {
		return info, mf, fmt.Errorf("read bundle %s: metadata: %w", path, err)
	}
	// Format 1 differs only in keeping the weights inline, which
	// ReadModelFile reads as well; formats 1 and 2 added a patch term to
	// the graph's score.
	if info.Format < 1 || info.Format > BundleFormat {
		return info, mf, fmt.Errorf("read bundle %s: format %d, this build reads formats 1 to %d (fit it again with this version)", path, info.Format, BundleFormat)
	}
	if info.Format < 3 && info.Patch != nil {
		return info, mf, fmt.Errorf("read bundle %s: format %d with a patch feature space, whose score this build makes another way (fit it again with this version, or refit from the console)", path, info.Format)
	}
	if info.Format == 3 && info.Patch != nil {
		info.Patch.Neighbourhood = 3 // format 3 averaged every patch feature over 3x3, unrecorded
	}
	if info.Format <= 4 && info.Patch != nil {
		info.Patch.Pooling = PoolMean // formats 3 and 4 averaged, unrecorded
	}
	if err := info.consistentWith(mf); err != nil {
		return info, mf, fmt.Errorf("read bundle %s: metadata contradicts itself or the graph (edited or damaged?): %w", path, err)
	}
	return info, mf, nil
}

// consistentWith checks the metadata a detector relies on against itself
// and the graph's image input: an image_size or blocks edited to values
// the graph does not have were taken as they were, and a teacher width of
// 800 million allocated gigabytes before any check.
func (info BundleInfo) consistentWith(mf ModelFile) error {
	c := info.Teacher.Config
	switch {
	case c.Dim <= 0 || c.Dim > 1<<14 || c.Depth <= 0 || c.Depth > 256 || c.Heads <= 0 || c.Dim%c.Heads != 0:
		return fmt.Errorf("teacher %s is no ViT this reads (width 1 to 16384, depth 1 to 256, heads dividing width)", c.Describe())
	case c.Patch <= 0 || c.ImageSize <= 0 || c.ImageSize%c.Patch != 0 || c.ImageSize > 1<<13:
		return fmt.Errorf("teacher patch %d and image size %d: the patch must divide the image size (at most 8192)", c.Patch, c.ImageSize)
	case info.ImageSize != c.ImageSize:
		return fmt.Errorf("image_size %d, but the teacher's is %d", info.ImageSize, c.ImageSize)
	case math.IsNaN(info.Threshold) || math.IsInf(info.Threshold, 0):
		return fmt.Errorf("threshold %g", info.Threshold)
	}
	if err := CheckBlocks(info.Blocks, c.Depth); err != nil {
		return fmt.Errorf("blocks %v: %w", info.Blocks, err)
	}
	if t := info.Tiling; t != nil {
		if err := t.Check(); err != nil {
			return fmt.Errorf("tiling: %w", err)
		}
		if info.Patch == nil {
			return errors.New("tiling without a patch feature space")
		}
	}
	if p := info.Patch; p != nil {
		f := PatchFeatures{Blocks: p.Blocks, Neighbourhood: p.Neighbourhood, Pooling: p.Pooling}
		if err := f.Check(c.Depth, c.Dim); err != nil {
			return err
		}
		if raw := f.RawWidth(c.Dim); p.FeatureWidth <= 0 || p.FeatureWidth > raw || p.Pooling == PoolMean && p.FeatureWidth != raw || p.BankEntries <= 0 || p.BankEntries > 1<<24 {
			return fmt.Errorf("patch bank of %d entries of width %d for %s pooling of %dx%d patches of blocks %v of a teacher %d wide", p.BankEntries, p.FeatureWidth, p.Pooling, p.Neighbourhood, p.Neighbourhood, p.Blocks, c.Dim)
		}
		if err := p.Combination.check(); err != nil {
			return err
		}
	}
	var m onnxpb.ModelProto
	if err := proto.Unmarshal(mf.Proto, &m); err != nil {
		return fmt.Errorf("graph: %w", err)
	}
	for _, in := range m.GetGraph().GetInput() {
		if in.GetName() != InputImages {
			continue
		}
		dims := in.GetType().GetTensorType().GetShape().GetDim()
		if len(dims) != 4 || dims[1].GetDimValue() != int64(info.ImageSize) || dims[2].GetDimValue() != int64(info.ImageSize) {
			return fmt.Errorf("image_size %d, but the graph takes images of %v", info.ImageSize, dims)
		}
		return nil
	}
	return fmt.Errorf("the graph has no %q input", InputImages)
}

// onnxMetadata scans a serialized ModelProto's top-level fields for
// metadata_props, checking that the bytes parse as protobuf and carry a graph.
func onnxMetadata(data []byte) (map[string]string, error) {
	const graphField, metadataField = 7, 14
	meta := map[string]string{}
	hasGraph := false
	for len(data) > 0 {
		num, typ, n := protowire.ConsumeTag(data)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		m := protowire.ConsumeFieldValue(num, typ, data[n:])
		if m < 0 {
			return nil, protowire.ParseError(m)
		}
		switch {
		case num == graphField && typ == protowire.BytesType:
			hasGraph = true
		case num == metadataField && typ == protowire.BytesType:
			v, _ := protowire.ConsumeBytes(data[n : n+m])
			var e onnxpb.StringStringEntryProto
			if err := proto.Unmarshal(v, &e); err != nil {
				return nil, err
			}
			meta[e.GetKey()] = e.GetValue()
		}
		data = data[n+m:]
	}
	if !hasGraph {
		return nil, errors.New("no graph")
	}
	return meta, nil
}

// LogLikelihood evaluates the score in float64 on one feature vector, the
// same function the graph computes in float32.
func (q QuadraticScore) LogLikelihood(x []float32) float64 {
	y := make([]float64, q.K)
	for j := range y {
		y[j] = float64(q.B[j])
	}
	for i := range q.In { // row by row of W: contiguous reads
		xi, row := float64(x[i]), q.W[i*q.K:(i+1)*q.K]
		for j, w := range row {
			y[j] += xi * float64(w)
		}
	}
	sq := 0.0
	for _, v := range y {
		sq += v * v
	}
	return q.Const - 0.5*sq
}

// DecodeBundle rebuilds the teacher, students and scoring from a float32
// bundle's initializers (by the names the graph builder gives them), so
// variants such as the FP16 graph can be made from a bundle alone. The class
// token comes back folded into the first position-embedding row.
func DecodeBundle(info BundleInfo, mf ModelFile) (*ViT, []Block, Scoring, error) {
	var s Scoring
	weights, err := mf.Float32Initializers()
	if err != nil {
		return nil, nil, s, fmt.Errorf("decode bundle: %w", err)
	}
	c := info.Teacher.Config
	if c.Dim <= 0 || c.Patch <= 0 || c.ImageSize <= 0 || c.Depth <= 0 {
		return nil, nil, s, fmt.Errorf("decode bundle: its metadata has no teacher architecture (%+v)", c)
	}
	r := newWeightReader(weights)
	v := &ViT{Config: c, Layout: info.Teacher.Layout, Checksum: info.Teacher.Checksum}
	if n := info.Teacher.Normalization; n != nil {
		v.Input = *n
	}
	v.PatchW = r.take("patch_embed.weight", c.Dim, 3, c.Patch, c.Patch)
	v.PatchB = r.take("patch_embed.bias", c.Dim)
	if pos := r.take("pos_embed_with_cls", 1, c.Tokens(), c.Dim); pos != nil {
		// Rows: class token, registers, patches (see embedTokens).
		d, reg := c.Dim, c.Registers*c.Dim
		v.PosEmbed = slices.Concat(pos[:d], pos[d+reg:])
		v.RegTokens = pos[d : d+reg]
	}
	v.ClsToken = make([]float32, c.Dim)
	v.NormW, v.NormB = r.take("norm.weight", c.Dim), r.take("norm.bias", c.Dim)
	if r.err != nil { // before anything sized by the metadata is made
		return nil, nil, s, fmt.Errorf("decode bundle: %w", r.err)
	}
	readBlock := func(prefix string) Block {
		var b Block
		if has(weights, prefix+".ls1") {
			b.LayerScale1, b.LayerScale2 = []float32{}, []float32{}
		}
		for _, p := range b.Params(c) {
			*p.Data = r.take(prefix+"."+p.Name, p.Shape...)
		}
		return b
	}
	for i := range c.Depth {
		v.Blocks = append(v.Blocks, readBlock(fmt.Sprintf("teacher.%d", i)))
	}
	var students []Block
	for _, b := range info.Blocks {
		students = append(students, readBlock(fmt.Sprintf("student.%d", b)))
	}
	for _, q := range []struct {
		name string
		dst  *QuadraticScore
	}{{"score.pretrained", &s.Pretrained}, {"score.student", &s.Student}} {
		w, ok := weights[q.name+".W"]
		if !ok || len(w.Shape) != 2 {
			return nil, nil, s, fmt.Errorf("decode bundle: missing tensor %q", q.name+".W")
		}
		q.dst.In, q.dst.K = w.Shape[0], w.Shape[1]
		q.dst.W = w.Data
		q.dst.B = r.take(q.name+".B", q.dst.K)
		if cst := r.take(q.name+".const", 1); cst != nil {
			q.dst.Const = float64(cst[0])
		}
	}
	if pi := info.Patch; pi != nil {
		p := &PatchScore{PatchFeatures: PatchFeatures{Blocks: pi.Blocks, Neighbourhood: pi.Neighbourhood, Pooling: pi.Pooling}, D: pi.FeatureWidth, M: pi.BankEntries}
		if raw := p.RawWidth(info.Teacher.Config.Dim); p.D < raw {
			p.Projection = r.take("patch.projection", raw, p.D)
		}
		if bankT := r.take("patch.bank_t", p.D, p.M); bankT != nil {
			p.Bank = make([]float32, p.M*p.D)
			for i := range p.D {
				for j := range p.M {
					p.Bank[j*p.D+i] = bankT[i*p.M+j]
				}
			}
		}
		s.Patch = p
	}
	if r.err != nil {
		return nil, nil, s, fmt.Errorf("decode bundle: %w", r.err)
	}
	return v, students, s, nil
}
