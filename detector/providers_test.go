package detector_test

import (
	"maps"
	"strings"
	"testing"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/models"
)

// Each GPU provider gets the settings derived from the options (TensorRT:
// FP16 kernels with fp16 only, one batch profile, engine and timing caches; CUDA: TF32)
// with the user's own options over them; the CPU gets none.
func TestProviderSettings(t *testing.T) {
	opts := detector.RunnerOptions{Precision: models.FP32, ImageSize: 224, MaxBatch: 8, CacheDir: "/var/cache/t",
		CUDAOptions:     map[string]string{"gpu_mem_limit": "4294967296", "arena_extend_strategy": "kSameAsRequested"},
		TensorRTOptions: map[string]string{"trt_max_workspace_size": "2147483648", "trt_timing_cache_enable": "0"}}
	trt := detector.ProviderSettings("tensorrt", opts)
	want := map[string]string{
		"trt_fp16_enable":         "0",
		"trt_profile_min_shapes":  "images:1x224x224x3",
		"trt_profile_opt_shapes":  "images:8x224x224x3",
		"trt_profile_max_shapes":  "images:8x224x224x3",
		"trt_engine_cache_enable": "1",
		"trt_engine_cache_path":   "/var/cache/t",
		"trt_timing_cache_enable": "0", // the user's
		"trt_timing_cache_path":   "/var/cache/t",
		"trt_max_workspace_size":  "2147483648",
	}
	if !maps.Equal(trt, want) {
		t.Errorf("TensorRT settings\n%v\nwant\n%v", trt, want)
	}
	// FP16 kernels only with fp16 asked for, and LayerNorm kept in float32.
	opts.Precision = ""
	if got := detector.ProviderSettings("tensorrt", opts)["trt_fp16_enable"]; got != "0" {
		t.Errorf("TensorRT at the default precision: trt_fp16_enable=%q, want 0", got)
	}
	opts.Precision = models.FP16
	if got := detector.ProviderSettings("tensorrt", opts); got["trt_fp16_enable"] != "1" || got["trt_layer_norm_fp32_fallback"] != "1" {
		t.Errorf("TensorRT with fp16 asked for: %v, want FP16 kernels with LayerNorm in float32", got)
	}
	opts.Precision = ""
	cuda := detector.ProviderSettings("cuda", opts)
	if !maps.Equal(cuda, opts.CUDAOptions) {
		t.Errorf("CUDA settings %v, want %v", cuda, opts.CUDAOptions)
	}
	cuda["device_id"] = "1"
	if _, leaked := opts.CUDAOptions["device_id"]; leaked {
		t.Error("the CUDA settings share the caller's map")
	}
	// fp32 asked for turns CUDA's TF32 matmuls off, unless the user says.
	opts.Precision = models.FP32
	if got := detector.ProviderSettings("cuda", opts)["use_tf32"]; got != "0" {
		t.Errorf("CUDA with fp32 asked for: use_tf32=%q, want 0", got)
	}
	opts.CUDAOptions = map[string]string{"use_tf32": "1"}
	if got := detector.ProviderSettings("cuda", opts)["use_tf32"]; got != "1" {
		t.Errorf("CUDA with the user's use_tf32=1: use_tf32=%q, want the user's", got)
	}
	if got := detector.ProviderSettings("cpu", opts); got != nil {
		t.Errorf("CPU settings %v, want none", got)
	}
}

func TestCheckProviderOptions(t *testing.T) {
	if err := detector.CheckProviderOptions(map[string]string{"device_id": "0", "gpu_mem_limit": "8589934592",
		"arena_extend_strategy": "kNextPowerOfTwo", "cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}); err != nil {
		t.Errorf("good options refused: %v", err)
	}
	err := detector.CheckProviderOptions(map[string]string{"gpu_mem_limit": "8GB", "arena_extend_strategy": "same",
		"Device ID": "0", "device_id": "-1"})
	for _, want := range []string{`gpu_mem_limit: "8GB" is not a whole number`, `arena_extend_strategy: "same" is not one of kNextPowerOfTwo, kSameAsRequested`,
		`"Device ID" is not an ONNX Runtime option name`, `device_id: "-1"`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
}

func TestEffectivePrecision(t *testing.T) {
	for _, c := range []struct{ provider, precision, want string }{
		{"cpu", "", "fp32"}, {"cuda", "", "tf32"}, {"cuda", "fp32", "fp32"}, {"tensorrt", "", "fp32"},
		{"tensorrt", "fp16", "fp16"}, {"cuda", "fp16", "fp16"},
	} {
		if got := detector.EffectivePrecision(c.provider, c.precision); got != c.want {
			t.Errorf("%s at %q: %s, want %s", c.provider, c.precision, got, c.want)
		}
	}
}
