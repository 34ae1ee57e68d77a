package fit

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"time"

	onnx "github.com/yalue/onnxruntime_go"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/models"
)

// Adam's usual constants (PyTorch's defaults, as the paper uses).
const (
	adamBeta1 = 0.9
	adamBeta2 = 0.999
	adamEps   = 1e-8
)

// Trainer runs training steps for a set of student blocks in ONNX Runtime
// and updates them with Adam in place. Parameter tensors are backed by the
// students' own slices, so ORT always sees the current weights.
type Trainer struct {
	cfg      models.Config
	blocks   []int
	Students []models.Block

	step, eval *onnx.DynamicAdvancedSession
	inputs     []string // images, then every parameter
	params     [][]float32
	tensors    []*onnx.Tensor[float32]
	grads      []*onnx.Tensor[float32]
	losses     *onnx.Tensor[float32]
	m, v       [][]float32
	t          int // Adam steps taken
	LR         float64
	// StepTime is the time spent in Step (ORT and the Adam update), for
	// telling training cost from everything around it.
	StepTime time.Duration
	// Provider is the execution provider the training runs on.
	Provider string
}

// NewTrainer opens the training-step session (forward and backward) and a
// forward-only session for validation over the given students, fed images
// or the teacher's cached activations, on the first execution provider of
// opts that works (CPU, CUDA or TensorRT).
func NewTrainer(teacher *models.ViT, blocks []int, students []models.Block, lr float64, opts detector.RunnerOptions, input models.TrainingInput) (*Trainer, error) {
	tr := &Trainer{cfg: teacher.Config, blocks: blocks, Students: students, LR: lr}
	stepGraph, err := models.TrainingGraph(teacher, blocks, true, input)
	if err != nil {
		return nil, err
	}
	evalGraph, err := models.TrainingGraph(teacher, blocks, false, input)
	if err != nil {
		return nil, err
	}
	tr.inputs = []string{models.InputImages}
	if input == models.FromActivations {
		tr.inputs[0] = models.Activations
	}
	gradOutputs := []string{models.OutputLosses}
	for k, b := range blocks {
		for _, p := range tr.Students[k].Params(tr.cfg) {
			name := models.StudentParamName(b, p.Name)
			tr.inputs = append(tr.inputs, name)
			gradOutputs = append(gradOutputs, models.GradName(name))
			tr.params = append(tr.params, *p.Data)
			t, err := onnx.NewTensor(shape(p.Shape), *p.Data)
			if err != nil {
				tr.Close()
				return nil, fmt.Errorf("parameter tensor %s: %w", name, err)
			}
			tr.tensors = append(tr.tensors, t)
			g, err := onnx.NewEmptyTensor[float32](shape(p.Shape))
			if err != nil {
				tr.Close()
				return nil, fmt.Errorf("gradient tensor %s: %w", name, err)
			}
			tr.grads = append(tr.grads, g)
			tr.m = append(tr.m, make([]float32, len(*p.Data)))
			tr.v = append(tr.v, make([]float32, len(*p.Data)))
		}
	}
	if tr.losses, err = onnx.NewEmptyTensor[float32](onnx.NewShape(int64(len(blocks)))); err != nil {
		tr.Close()
		return nil, err
	}
	opts.ImageSize = 0 // no TensorRT batch profile: training batches vary
	provider, err := detector.OpenOnProvider(opts, func(so *onnx.SessionOptions, _ string) error {
		step, err := onnx.NewDynamicAdvancedSessionWithONNXData(stepGraph, tr.inputs, gradOutputs, so)
		if err != nil {
			return fmt.Errorf("training session: %w", err)
		}
		eval, err := onnx.NewDynamicAdvancedSessionWithONNXData(evalGraph, tr.inputs, []string{models.OutputBlockErrors}, so)
		if err != nil {
			step.Destroy()
			return fmt.Errorf("validation session: %w", err)
		}
		tr.step, tr.eval = step, eval
		return nil
	})
	if err != nil {
		tr.Close()
		return nil, fmt.Errorf("create training sessions: %w", err)
	}
	tr.Provider = provider
	return tr, nil
}

func shape(dims []int) onnx.Shape {
	s := make(onnx.Shape, len(dims))
	for i, d := range dims {
		s[i] = int64(d)
	}
	return s
}

// values are a batch (images or activations, as the trainer was made for)
// followed by every parameter.
func (tr *Trainer) values(batch onnx.Value) []onnx.Value {
	vals := []onnx.Value{batch}
	for _, t := range tr.tensors {
		vals = append(vals, t)
	}
	return vals
}

// Step runs forward and backward on a batch, applies one Adam update to
// every student and returns each block's loss on the batch (before the
// update).
func (tr *Trainer) Step(batch onnx.Value) ([]float32, error) {
	start := time.Now()
	defer func() { tr.StepTime += time.Since(start) }()
	outs := []onnx.Value{tr.losses}
	for _, g := range tr.grads {
		outs = append(outs, g)
	}
	if err := tr.step.Run(tr.values(batch), outs); err != nil {
		return nil, fmt.Errorf("training step: %w", err)
	}
	tr.t++
	grads := make([][]float32, len(tr.grads))
	for i, g := range tr.grads {
		grads[i] = g.GetData()
	}
	adam(tr.params, grads, tr.m, tr.v, tr.t, tr.LR)
	return append([]float32(nil), tr.losses.GetData()...), nil
}

// adam takes step t (1-based) of bias-corrected Adam, as torch.optim.Adam,
// on every parameter in place. It runs on the host, split across all cores:
// on a GPU the training step itself takes milliseconds and a single-core
// loop over a ViT-B's ten student blocks (71M parameters) would take
// hundreds. (Keeping Adam on the device would need ONNX Runtime's I/O
// binding, which onnxruntime_go does not offer.)
func adam(params, grads, m, v [][]float32, t int, lr float64) {
	c1 := 1 - math.Pow(adamBeta1, float64(t))
	c2 := 1 - math.Pow(adamBeta2, float64(t))
	stepSize := float32(lr / c1)
	sqrtC2 := float32(math.Sqrt(c2))
	type span struct{ tensor, lo, hi int }
	const chunk = 1 << 16
	work := make(chan span)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for s := range work {
				p, g := params[s.tensor][s.lo:s.hi], grads[s.tensor][s.lo:s.hi]
				m, v := m[s.tensor][s.lo:s.hi], v[s.tensor][s.lo:s.hi]
				for j := range p {
					m[j] = adamBeta1*m[j] + (1-adamBeta1)*g[j]
					v[j] = adamBeta2*v[j] + (1-adamBeta2)*g[j]*g[j]
					p[j] -= stepSize * m[j] / (float32(math.Sqrt(float64(v[j])))/sqrtC2 + adamEps)
				}
			}
		})
	}
	for i, p := range params {
		for lo := 0; lo < len(p); lo += chunk {
			work <- span{i, lo, min(lo+chunk, len(p))}
		}
	}
	close(work)
	wg.Wait()
}

// BlockErrors runs the students forward on a batch and returns the
// per-image, per-block MSE, [n * len(blocks)].
func (tr *Trainer) BlockErrors(batch onnx.Value) ([]float32, error) {
	outs := []onnx.Value{nil}
	if err := tr.eval.Run(tr.values(batch), outs); err != nil {
		return nil, fmt.Errorf("validation: %w", err)
	}
	defer outs[0].Destroy()
	return append([]float32(nil), outs[0].(*onnx.Tensor[float32]).GetData()...), nil
}

// Close releases the sessions and tensors.
func (tr *Trainer) Close() error {
	var errs []error
	for _, s := range []*onnx.DynamicAdvancedSession{tr.step, tr.eval} {
		if s != nil {
			errs = append(errs, s.Destroy())
		}
	}
	for _, t := range append(append([]*onnx.Tensor[float32]{tr.losses}, tr.tensors...), tr.grads...) {
		if t != nil {
			errs = append(errs, t.Destroy())
		}
	}
	tr.step, tr.eval, tr.losses, tr.tensors, tr.grads = nil, nil, nil, nil, nil
	tr.m, tr.v = nil, nil // Adam's moments: as large as the students again
	return errors.Join(errs...)
}
