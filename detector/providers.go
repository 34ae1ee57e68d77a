package detector

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	onnx "github.com/yalue/onnxruntime_go"

	"github.com/transformaly/transformaly/internal/ort"
	"github.com/transformaly/transformaly/models"
)

// Execution-provider selection: TensorRT, CUDA or CPU, from a GPU build of
// ONNX Runtime or from provider plugins, with logged fallbacks.

// providerOrder lists the execution providers to try for a preference.
func providerOrder(pref string) ([]string, error) {
	switch pref {
	case "", "cpu":
		return []string{"cpu"}, nil
	case "cuda":
		return []string{"cuda"}, nil
	case "tensorrt":
		return []string{"tensorrt"}, nil
	case "cuda,cpu": // what training asks for by auto: TensorRT does not train
		return append(installedGPUProviders("cuda"), "cpu"), nil
	case "auto":
		return append(installedGPUProviders("tensorrt", "cuda"), "cpu"), nil
	}
	return nil, fmt.Errorf("execution provider %q is not auto, tensorrt, cuda or cpu", pref)
}

// installedGPUProviders keeps the providers whose libraries sit beside the
// core library: probing a CPU-only build makes ORT print errors of its own.
func installedGPUProviders(providers ...string) []string {
	var installed []string
	dir := filepath.Dir(ort.Library())
	for _, p := range providers {
		lib := filepath.Join(dir, "libonnxruntime_providers_"+p+".so")
		if _, err := os.Stat(lib); err == nil {
			installed = append(installed, p)
		} else if _, said := notInstalled.LoadOrStore(lib, true); !said {
			slog.Info("execution provider not installed", "provider", p, "looked_for", lib)
		}
	}
	return installed
}

// notInstalled remembers the provider libraries already logged missing:
// every session of a fit or daemon looks again, and once is enough to say.
var notInstalled sync.Map

// OpenOnProvider calls open with session options for each execution
// provider of the preference in turn until one opens, logging each
// fallback with its reason, and returns the provider that worked. The
// training sessions of a fit open the same way as the detector's.
func OpenOnProvider(opts RunnerOptions, open func(so *onnx.SessionOptions, provider string) error) (string, error) {
	order, err := providerOrder(opts.Provider)
	if err != nil {
		return "", err
	}
	// Whether the preference names more than one provider (before those
	// not installed were left out).
	fallback := opts.Provider == "auto" || strings.Contains(opts.Provider, ",")
	if order[0] == "cpu" && !fallback {
		opts.ProviderLibrary = "" // a plugin has nothing to offer the CPU provider
	}
	if opts.ProviderLibrary != "" {
		// One plugin that loads is enough: a box with CUDA but no TensorRT
		// can still run the CUDA plugin of a list naming both.
		var err error
		loaded := 0
		for _, lib := range strings.Split(opts.ProviderLibrary, ",") {
			if libErr := RegisterPlugin(strings.TrimSpace(lib)); libErr != nil {
				err = errors.Join(err, libErr)
			} else {
				loaded++
			}
		}
		if err != nil && loaded > 0 {
			logPluginOnce(err)
		}
		if loaded == 0 {
			if !fallback {
				return "", err
			}
			slog.Warn("execution provider plugin unusable, falling back", "reason", err)
			opts.ProviderLibrary = ""
		} else if opts.Provider == "auto" {
			order = unique(append([]string{"tensorrt", "cuda"}, order...)) // plugins first, once each
		} else if fallback {
			order = unique(append([]string{"cuda"}, order...))
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
	if slices.ContainsFunc(order, func(p string) bool { return p != "cpu" }) {
		return "", fmt.Errorf("%w (transformaly doctor says what a GPU provider lacks here)", errors.Join(errs...))
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
	if opts.externalDataDir != "" {
		if err := so.AddSessionConfigEntry("session.model_external_initializers_file_folder_path", opts.externalDataDir); err != nil {
			return err
		}
	}
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
		if settings := providerSettings(provider, opts); len(settings) > 0 {
			if err := cuda.Update(settings); err != nil {
				return fmt.Errorf("CUDA options %v: %w", settings, err)
			}
		}
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
			return fmt.Errorf("TensorRT options: %w", err)
		}
		if err := so.AppendExecutionProviderTensorRT(trt); err != nil {
			return err
		}
	}
	return open(so)
}

// providerSettings are the options of a GPU provider: the user's CUDA
// options (TF32 matmuls off for an explicit fp32); TensorRT with FP16
// kernels only where precision fp16 is asked for (TensorRT's FP16 mode may
// run any layer in half precision, the scoring's squares and sums too:
// left on by default it could overflow them unasked), then with LayerNorm
// kept in float32, and its engine and timing caches in the cache directory
// so restarts do not rebuild engines, then the user's TensorRT options over
// those.
func providerSettings(provider string, opts RunnerOptions) map[string]string {
	switch provider {
	case "cuda":
		settings := map[string]string{}
		if opts.Precision == models.FP32 {
			// ORT's CUDA provider runs float32 matmuls in TF32 (10-bit
			// mantissa) unless told not to: on an H200 that put scores
			// 2.5e-3 of their spread away from the CPU's. fp32 asked for
			// means fp32, as it turns TensorRT's FP16 kernels off.
			settings["use_tf32"] = "0"
		}
		maps.Copy(settings, opts.CUDAOptions)
		return settings
	case "tensorrt":
	default:
		return nil
	}
	settings := map[string]string{"trt_fp16_enable": "0"}
	if opts.Precision == models.FP16 {
		settings["trt_fp16_enable"] = "1"
		settings["trt_layer_norm_fp32_fallback"] = "1"
	}
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
	maps.Copy(settings, opts.TensorRTOptions)
	return settings
}

// providerOptionValues are the values ONNX Runtime accepts for the options
// users set most (integers: device_id, gpu_mem_limit,
// trt_max_workspace_size), checked before a GPU is at hand.
var providerOptionValues = map[string][]string{
	"arena_extend_strategy":  {"kNextPowerOfTwo", "kSameAsRequested"},
	"cudnn_conv_algo_search": {"EXHAUSTIVE", "HEURISTIC", "DEFAULT"},
}

// CheckProviderOptions checks a provider's extra options as far as that
// can be done without the provider: option names are ONNX Runtime's
// (lower case, digits and underscores), and the common ones have a value
// it takes.
func CheckProviderOptions(options map[string]string) error {
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(options)) {
		v := options[k]
		switch {
		case k == "" || strings.Trim(k, "abcdefghijklmnopqrstuvwxyz0123456789_") != "":
			errs = append(errs, fmt.Errorf("%q is not an ONNX Runtime option name (lower case, digits and underscores)", k))
		case providerOptionValues[k] != nil && !slices.Contains(providerOptionValues[k], v):
			errs = append(errs, fmt.Errorf("%s: %q is not one of %s", k, v, strings.Join(providerOptionValues[k], ", ")))
		case k == "device_id" || k == "gpu_mem_limit" || k == "trt_max_workspace_size":
			if _, err := strconv.ParseUint(v, 10, 64); err != nil {
				errs = append(errs, fmt.Errorf("%s: %q is not a whole number (bytes, or the device's index)", k, v))
			}
		}
	}
	return errors.Join(errs...)
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

// pluginsUnusable remembers the plugin failures already logged: every
// session of a fit or daemon registers its list again.
var pluginsUnusable sync.Map

func logPluginOnce(err error) {
	if _, said := pluginsUnusable.LoadOrStore(err.Error(), true); !said {
		slog.Warn("execution provider plugin unusable, using the others of the list", "reason", err)
	}
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

// unique keeps the first of each value, in order.
func unique(xs []string) []string {
	var out []string
	for _, x := range xs {
		if !slices.Contains(out, x) {
			out = append(out, x)
		}
	}
	return out
}
