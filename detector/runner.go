// Package detector runs the project's ONNX graphs in ONNX Runtime sessions:
// image batches in, embeddings, block errors and scores out.
package detector

import (
	"fmt"

	onnx "github.com/yalue/onnxruntime_go"

	"github.com/transformaly/transformaly/internal/ort"
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
	session *onnx.DynamicAdvancedSession
	outputs []string
	size    int
}

// RunnerOptions configure a session.
type RunnerOptions struct {
	// Threads is the intra-op thread count (0: one per core).
	Threads int
}

// NewRunner opens a session over an ONNX graph that maps images to outputs.
func NewRunner(model []byte, size int, outputs []string, opts RunnerOptions) (*Runner, error) {
	so, err := ort.SessionOptions(opts.Threads)
	if err != nil {
		return nil, err
	}
	defer so.Destroy()
	s, err := onnx.NewDynamicAdvancedSessionWithONNXData(model, []string{models.InputImages}, outputs, so)
	if err != nil {
		return nil, fmt.Errorf("create ONNX Runtime session: %w", err)
	}
	return &Runner{session: s, outputs: outputs, size: size}, nil
}

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
