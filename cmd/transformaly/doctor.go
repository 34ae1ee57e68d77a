package main

import (
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"

	"github.com/transformaly/transformaly/daemon"
	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/internal/ort"
	"github.com/transformaly/transformaly/models"
)

// doctorCommand says, in plain words, which execution providers this box
// can use and why the others cannot.
func doctorCommand(fs *pflag.FlagSet) func([]string) error {
	var rt runtimeFlags
	rt.register(fs)
	library := fs.String("provider-library", "", "also try these execution-provider plugin libraries (comma-separated)")
	config := fs.String("config", "", "try the providers as this daemon configuration sets them up (detector.provider_library, cuda_options, tensorrt_options)")
	cudaOptions := fs.StringToString("cuda-options", nil, "try the CUDA provider with these ONNX Runtime options, e.g. device_id=1")
	tensorrtOptions := fs.StringToString("tensorrt-options", nil, "try the TensorRT provider with these ONNX Runtime options")
	return func(args []string) error {
		if len(args) > 0 {
			return usageError("unexpected arguments %q", args)
		}
		if *config != "" {
			cfg, err := daemon.LoadAndValidate(*config, nil)
			if err != nil {
				return err
			}
			if *library == "" {
				*library = cfg.Detector.ProviderLibrary
			}
			*cudaOptions = mergeOptions(cfg.Detector.CUDAOptions, *cudaOptions)
			*tensorrtOptions = mergeOptions(cfg.Detector.TensorRTOptions, *tensorrtOptions)
		}
		for flag, opts := range map[string]map[string]string{"--cuda-options": *cudaOptions, "--tensorrt-options": *tensorrtOptions} {
			if err := detector.CheckProviderOptions(opts); err != nil {
				return usageError("%s: %v", flag, err)
			}
		}
		cands, _ := ort.Candidates(rt.library)
		if err := rt.init(); err != nil {
			fmt.Printf("ONNX Runtime: NOT LOADED\n  %v\n", err)
			return err
		}
		fmt.Printf("ONNX Runtime %s: %s\n", ort.Version(), ort.Library())
		if len(cands) > 1 {
			fmt.Printf("  (searched %d places; set --ort-lib or $%s to choose)\n", len(cands), ort.EnvLibrary)
		}

		fmt.Println("\nGPU:")
		if out, err := exec.Command("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader").Output(); err == nil {
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				fmt.Printf("  %s\n", line)
			}
		} else {
			fmt.Println("  no NVIDIA driver found (nvidia-smi is missing or failed): only the CPU provider can work")
		}
		fmt.Println("\nGPU libraries the CUDA and TensorRT providers load:")
		ldconfig, _ := exec.Command("ldconfig", "-p").Output()
		for _, lib := range []struct{ name, why string }{
			{"libcudart.so", "CUDA runtime"}, {"libcublasLt.so", "cuBLAS (matrix products)"},
			{"libcudnn.so", "cuDNN 9 (convolutions)"}, {"libnvinfer.so", "TensorRT 10"},
		} {
			state := "missing"
			if strings.Contains(string(ldconfig), lib.name) || inLibraryPath(lib.name) {
				state = "found"
			}
			fmt.Printf("  %-16s %-8s %s\n", lib.name, state, lib.why)
		}

		fmt.Println("\nExecution providers (a one-block test model is run on each):")
		v, err := models.RandomViT(models.Config{Dim: 32, Depth: 1, Heads: 2, Patch: 8, ImageSize: 16}, 1)
		if err != nil {
			return err
		}
		graph, err := models.TeacherGraph(v)
		if err != nil {
			return err
		}
		dir := filepath.Dir(ort.Library())
		for _, p := range []string{"tensorrt", "cuda", "cpu"} {
			lib := filepath.Join(dir, "libonnxruntime_providers_"+p+".so")
			opts := detector.RunnerOptions{Provider: p, ProviderLibrary: *library, CUDAOptions: *cudaOptions, TensorRTOptions: *tensorrtOptions}
			if p != "cpu" && *library == "" {
				if _, err := os.Stat(lib); err != nil {
					fmt.Printf("  %-9s not installed: no %s beside the core library (a GPU build of ONNX Runtime %s, or --provider-library)\n", p, filepath.Base(lib), ort.Version())
					continue
				}
			}
			r, err := detector.NewRunner(graph, 16, []string{models.OutputEmbedding}, opts)
			if err != nil {
				fmt.Printf("  %-9s UNUSABLE: %s\n", p, plainReason(err))
				continue
			}
			_, err = r.Run(make([]byte, 16*16*3), 1)
			r.Close()
			if err != nil {
				fmt.Printf("  %-9s UNUSABLE at run time: %s\n", p, plainReason(err))
				continue
			}
			fmt.Printf("  %-9s ok\n", p)
		}
		return nil
	}
}

// mergeOptions is base with over's entries over it.
func mergeOptions(base, over map[string]string) map[string]string {
	out := maps.Clone(base)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, over)
	return out
}

func inLibraryPath(name string) bool {
	for _, dir := range strings.Split(os.Getenv("LD_LIBRARY_PATH"), ":") {
		if dir == "" {
			continue
		}
		if m, _ := filepath.Glob(filepath.Join(dir, name+"*")); len(m) > 0 {
			return true
		}
	}
	return false
}

// plainReason adds what to do to ORT's typical provider failures.
func plainReason(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "libcublasLt"):
		return "cuBLAS (libcublasLt) is missing or of another CUDA major version: " + msg
	case strings.Contains(msg, "libcudnn"):
		return "cuDNN is missing or of another major version: " + msg
	case strings.Contains(msg, "libnvinfer"):
		return "TensorRT (libnvinfer) is missing: " + msg
	case strings.Contains(msg, "CUDA driver version is insufficient"):
		return "the NVIDIA driver is older than the CUDA runtime the provider was built for: " + msg
	case strings.Contains(msg, "not enabled in this build"):
		return "this core library was built without it; give the provider's plugin library with --provider-library: " + msg
	}
	return msg
}
