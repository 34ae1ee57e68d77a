// Package detector runs the project's ONNX graphs in ONNX Runtime sessions:
// image batches in, embeddings, block errors and scores out.
package detector

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"

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
}

// providerOrder lists the execution providers to try for a preference.
func providerOrder(pref string) ([]string, error) {
	switch pref {
	case "", "cpu":
		return []string{"cpu"}, nil
	case "cuda":
		return []string{"cuda"}, nil
	case "tensorrt":
		return []string{"tensorrt"}, nil
	case "auto":
		// Only GPU providers whose libraries sit beside the core library are
		// tried: probing a CPU-only build makes ORT print errors of its own.
		var order []string
		dir := filepath.Dir(ort.Library())
		for _, p := range []string{"tensorrt", "cuda"} {
			lib := filepath.Join(dir, "libonnxruntime_providers_"+p+".so")
			if _, err := os.Stat(lib); err == nil {
				order = append(order, p)
			} else {
				slog.Info("execution provider not installed", "provider", p, "looked_for", lib)
			}
		}
		return append(order, "cpu"), nil
	}
	return nil, fmt.Errorf("execution provider %q is not auto, tensorrt, cuda or cpu", pref)
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

// OpenOnProvider calls open with session options for each execution
// provider of the preference in turn until one opens, logging each
// fallback with its reason, and returns the provider that worked. The
// training sessions of a fit open the same way as the detector's.
func OpenOnProvider(opts RunnerOptions, open func(so *onnx.SessionOptions, provider string) error) (string, error) {
	order, err := providerOrder(opts.Provider)
	if err != nil {
		return "", err
	}
	if order[0] == "cpu" && opts.Provider != "auto" {
		opts.ProviderLibrary = "" // a plugin has nothing to offer the CPU provider
	}
	if opts.ProviderLibrary != "" {
		var err error
		for _, lib := range strings.Split(opts.ProviderLibrary, ",") {
			err = errors.Join(err, RegisterPlugin(strings.TrimSpace(lib)))
		}
		if err != nil {
			if opts.Provider != "auto" {
				return "", err
			}
			slog.Warn("execution provider plugin unusable, falling back", "reason", err)
			opts.ProviderLibrary = ""
		} else if opts.Provider == "auto" {
			order = append([]string{"tensorrt", "cuda"}, order...)
		}
	}
	var errs []error
	for _, p := range order {
		err := withProvider(opts, p, func(so *onnx.SessionOptions) error { return open(so, p) })
		if err == nil {
			if len(errs) > 0 {
				slog.Info("execution provider chosen", "provider", p)
			}
			return p, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", p, err))
		if len(order) > 1 {
			slog.Warn("execution provider unusable, falling back", "provider", p, "reason", err)
		}
	}
	return "", errors.Join(errs...)
}

// withProvider makes session options with one provider appended and hands
// them to open.
func withProvider(opts RunnerOptions, provider string, open func(*onnx.SessionOptions) error) error {
	so, err := ort.SessionOptions(opts.Threads)
	if err != nil {
		return err
	}
	defer so.Destroy()
	if opts.ProviderLibrary != "" {
		if devices := pluginDevices(provider); len(devices) > 0 {
			if err := so.AppendExecutionProviderV2(devices, providerSettings(provider, opts)); err != nil {
				return err
			}
			return open(so)
		}
	}
	switch provider {
	case "cuda":
		cuda, err := onnx.NewCUDAProviderOptions()
		if err != nil {
			return err
		}
		defer cuda.Destroy()
		if err := so.AppendExecutionProviderCUDA(cuda); err != nil {
			return err
		}
	case "tensorrt":
		trt, err := onnx.NewTensorRTProviderOptions()
		if err != nil {
			return err
		}
		defer trt.Destroy()
		if err := trt.Update(providerSettings(provider, opts)); err != nil {
			return err
		}
		if err := so.AppendExecutionProviderTensorRT(trt); err != nil {
			return err
		}
	}
	return open(so)
}

// providerSettings are the options of a GPU provider: TensorRT with FP16
// kernels allowed unless fp32 is asked for, and its engine and timing
// caches in the cache directory so restarts do not rebuild engines.
func providerSettings(provider string, opts RunnerOptions) map[string]string {
	if provider != "tensorrt" {
		return nil
	}
	fp16 := "1"
	if opts.Precision == models.FP32 {
		fp16 = "0"
	}
	settings := map[string]string{"trt_fp16_enable": fp16}
	if opts.ImageSize > 0 && opts.MaxBatch > 0 {
		// One fixed profile over the batch sizes used (1 to the max batch),
		// so no batch shape triggers an engine rebuild while running.
		shape := func(n int) string {
			return fmt.Sprintf("%s:%dx%dx%dx3", models.InputImages, n, opts.ImageSize, opts.ImageSize)
		}
		settings["trt_profile_min_shapes"] = shape(1)
		settings["trt_profile_opt_shapes"] = shape(opts.MaxBatch)
		settings["trt_profile_max_shapes"] = shape(opts.MaxBatch)
	}
	if opts.CacheDir != "" {
		settings["trt_engine_cache_enable"] = "1"
		settings["trt_engine_cache_path"] = opts.CacheDir
		settings["trt_timing_cache_enable"] = "1"
		settings["trt_timing_cache_path"] = opts.CacheDir
	}
	return settings
}

var plugins struct {
	sync.Mutex
	registered map[string]error
}

// RegisterPlugin registers an execution-provider plugin library once per
// process; a missing file or a library ORT refuses is an error naming it.
func RegisterPlugin(path string) error {
	plugins.Lock()
	defer plugins.Unlock()
	if plugins.registered == nil {
		plugins.registered = map[string]error{}
	}
	if err, done := plugins.registered[path]; done {
		return err
	}
	var err error
	// ORT resolves a relative path against its own library's folder.
	abs, absErr := filepath.Abs(path)
	if _, statErr := os.Stat(path); statErr != nil {
		err = fmt.Errorf("provider library %s: %w", path, statErr)
	} else if absErr != nil {
		err = fmt.Errorf("provider library %s: %w", path, absErr)
	} else if regErr := onnx.RegisterExecutionProviderLibrary("transformaly_"+filepath.Base(path), abs); regErr != nil {
		err = fmt.Errorf("provider library %s: ONNX Runtime %s could not load it (a plugin must come from the same ONNX Runtime version, and its CUDA/cuDNN/TensorRT libraries must be found): %w", path, ort.Version(), regErr)
	}
	plugins.registered[path] = err
	return err
}

// pluginDevices are the EP devices registered plugins offer for a provider.
func pluginDevices(provider string) []onnx.EpDevice {
	devices, err := onnx.GetEpDevices()
	if err != nil {
		return nil
	}
	want := map[string]string{"cuda": "cuda", "tensorrt": "tensorrt"}[provider]
	var out []onnx.EpDevice
	for _, d := range devices {
		if want != "" && strings.Contains(strings.ToLower(d.EpName()), want) {
			out = append(out, d)
		}
	}
	return out
}

// Provider is the execution provider the session runs on.
func (r *Runner) Provider() string { return r.provider }

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
