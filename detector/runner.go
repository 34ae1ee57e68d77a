// Package detector runs the project's ONNX graphs in ONNX Runtime sessions:
// image batches in, embeddings, block errors and scores out.
package detector

import (
	"fmt"
	"os"

	onnx "github.com/yalue/onnxruntime_go"

	"github.com/transformaly/transformaly/models"
)

// Output is one named float32 graph output.
type Output struct {
	Shape []int64
	Data  []float32
}

// Runner holds one ORT session over a graph whose single input is the
// uint8 image batch [N, size, size, 3]. A Runner is not safe for concurrent
// Run calls.
type Runner struct {
	session  *onnx.DynamicAdvancedSession
	outputs  []string
	size     int
	provider string
}

// RunnerOptions configure a session.
type RunnerOptions struct {
	// Threads is the intra-op thread count (0: one per core).
	Threads int
	// Provider is auto (TensorRT, then CUDA, then CPU), tensorrt, cuda or
	// cpu ("" means cpu).
	Provider string
	// CacheDir keeps TensorRT engine and timing caches between starts.
	CacheDir string
	// Precision of a bundle's detector graph: fp32 (as stored) or fp16
	// (rebuilt from the bundle at load time; scores stay float32).
	Precision string
	// ImageSize and MaxBatch shape TensorRT's optimisation profile.
	ImageSize, MaxBatch int
	// ProviderLibrary is one or more execution-provider plugin libraries,
	// comma-separated (for example libonnxruntime_providers_cuda.so and
	// ..._tensorrt.so of a matching GPU build), registered with ONNX Runtime
	// and used through its EP devices.
	ProviderLibrary string
	// CUDAOptions and TensorRTOptions are further settings of those
	// providers, handed to ONNX Runtime as they are (it checks the names;
	// CheckProviderOptions checks the common values first). TensorRT's
	// override the ones derived from the fields above.
	CUDAOptions, TensorRTOptions map[string]string
	// ScoreOnHost computes the log-likelihoods and the score in float64 on
	// the host from the graph's embedding, block errors and patch score
	// (always so for TensorRT at fp16, whose FP16 kernels may run any layer
	// in half precision, the whitening and its sums too; tests set it).
	ScoreOnHost bool

	// externalDataDir is where ONNX Runtime finds the model's external
	// data (set by NewFileRunner).
	externalDataDir string
}

// NewRunner opens a session over an ONNX graph that maps images to outputs,
// on the first execution provider of the preference that works; each
// fallback is logged with its reason.
func NewRunner(model []byte, size int, outputs []string, opts RunnerOptions) (*Runner, error) {
	var r *Runner
	provider, err := OpenOnProvider(opts, func(so *onnx.SessionOptions, p string) error {
		s, err := onnx.NewDynamicAdvancedSessionWithONNXData(model, []string{models.InputImages}, outputs, so)
		if err == nil {
			r = &Runner{session: s, outputs: outputs, size: size}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("create ONNX Runtime session: %w", err)
	}
	r.provider = provider
	return r, nil
}

// NewFileRunner is NewRunner over a model read from a file (see
// models.WriteModelFile). ONNX Runtime memory-maps a model's external data
// and runs the CPU provider on those very pages, so it never gets the
// user's file: a new bundle copied over it in place (cp truncates and
// rewrites the same file) would crash the process with SIGBUS. A model
// under protobuf's 2 GiB limit goes in inline; a bigger one through a
// private copy in the temporary directory, removed once the session holds
// its weights.
func NewFileRunner(mf models.ModelFile, size int, outputs []string, opts RunnerOptions) (*Runner, error) {
	if inlineFits(mf) {
		model, err := mf.Inline()
		if err != nil {
			return nil, err
		}
		return NewRunner(model, size, outputs, opts)
	}
	private, remove, err := mf.PrivateCopy(os.TempDir())
	if err != nil {
		return nil, err
	}
	defer remove()
	if opts.externalDataDir, err = private.ExternalDataDir(); err != nil {
		return nil, err
	}
	return NewRunner(private.Proto, size, outputs, opts)
}

// inlineFits is models.ModelFile.InlineFits, replaceable by tests of the
// other path.
var inlineFits = models.ModelFile.InlineFits

// Size is the image side length the graph takes.
func (r *Runner) Size() int { return r.size }

// Run scores n images packed as RGB bytes and returns the outputs in the
// order they were named.
func (r *Runner) Run(images []byte, n int) ([]Output, error) {
	if want := n * r.size * r.size * 3; len(images) != want || n <= 0 {
		return nil, fmt.Errorf("run graph: %d image bytes for %d images of %dx%d RGB (want %d)", len(images), n, r.size, r.size, want)
	}
	in, err := onnx.NewTensor(onnx.NewShape(int64(n), int64(r.size), int64(r.size), 3), images)
	if err != nil {
		return nil, fmt.Errorf("run graph: input tensor: %w", err)
	}
	defer in.Destroy()
	outs := make([]onnx.Value, len(r.outputs))
	if err := r.session.Run([]onnx.Value{in}, outs); err != nil {
		return nil, fmt.Errorf("run graph: %w", err)
	}
	defer func() {
		for _, o := range outs {
			o.Destroy()
		}
	}()
	res := make([]Output, len(outs))
	for i, o := range outs {
		t, ok := o.(*onnx.Tensor[float32])
		if !ok {
			return nil, fmt.Errorf("run graph: output %s is not a float32 tensor", r.outputs[i])
		}
		res[i] = Output{Shape: t.GetShape(), Data: append([]float32(nil), t.GetData()...)}
	}
	return res, nil
}

// Close releases the session.
func (r *Runner) Close() error {
	if r.session == nil {
		return nil
	}
	err := r.session.Destroy()
	r.session = nil
	return err
}
