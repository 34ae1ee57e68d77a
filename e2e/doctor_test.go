package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// doctor names the library it loaded, says the CPU provider works, and
// for each GPU provider either that it works or, in words, why not: here a
// CPU-only library, a plugin path that does not exist, and the GPU options
// of a daemon configuration.
func TestDoctorSaysWhatWorksAndWhy(t *testing.T) {
	r := runBinary(t, nil, "doctor")
	if r.code != 0 || !strings.Contains(r.stdout, "ONNX Runtime 1.") || !strings.Contains(r.stdout, "  cpu       ok") {
		t.Fatalf("doctor: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, p := range []string{"tensorrt", "cuda"} {
		if !strings.Contains(r.stdout, "  "+p+" ") {
			t.Errorf("doctor says nothing of %s:\n%s", p, r.stdout)
		}
	}
	r = runBinary(t, nil, "doctor", "--provider-library", "/nope/libonnxruntime_providers_cuda.so")
	if r.code != 0 || !strings.Contains(r.stdout, "cuda      UNUSABLE") || !strings.Contains(r.stdout, "/nope/libonnxruntime_providers_cuda.so") {
		t.Errorf("doctor with a missing plugin: exit %d\n%s", r.code, r.stdout)
	}
	r = runBinary(t, nil, "doctor", "--cuda-options", "cudnn_conv_algo_search=FAST")
	if r.code != 2 || !strings.Contains(r.stderr, `cudnn_conv_algo_search: "FAST" is not one of`) {
		t.Errorf("doctor with a bad CUDA option: exit %d\n%s", r.code, r.stderr)
	}
	f := getDaemonFixture(t)
	config := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf("cameras: [{name: a, source: %s, model: %s}]\ndetector: {cuda_options: {gpu_mem_limit: 8G}}\nstate_directory: %s\n",
		f.video, f.bundle, t.TempDir())), 0o644)
	r = runBinary(t, nil, "doctor", "--config", config)
	if r.code == 0 || !strings.Contains(r.stderr, "detector.cuda_options: gpu_mem_limit") {
		t.Errorf("doctor with a config whose CUDA options are bad: exit %d\n%s", r.code, r.stderr)
	}
}
