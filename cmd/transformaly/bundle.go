package main

import (
	"fmt"
	"image"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/pflag"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/fit"
	"github.com/transformaly/transformaly/tiles"
)

// imageBatches reads image files in batches of packed RGB at size (with a
// tiling, each image's tiles at size), calling fn with each batch's
// readable files, their sizes and (with keepViews) each image as decoded;
// unreadable files are logged and counted.
func imageBatches(paths []string, size int, tiling *tiles.Tiling, keepViews bool, batch int, fn func(ok []string, pixels []byte, sizes []image.Point, views []*capture.View) error) (failed int, err error) {
	for start := 0; start < len(paths); start += batch {
		var ok []string
		var pixels []byte
		var sizes []image.Point
		var views []*capture.View
		for _, p := range paths[start:min(start+batch, len(paths))] {
			img, sz, view, err := capture.ReadImageInput(p, capture.Transform{Size: size, Tiling: tiling, KeepView: keepViews})
			if err != nil {
				slog.Error("skipping image", "err", err)
				failed++
				continue
			}
			ok = append(ok, p)
			pixels = append(pixels, img...)
			sizes = append(sizes, sz)
			views = append(views, view)
		}
		if len(ok) > 0 {
			if err := fn(ok, pixels, sizes, views); err != nil {
				return failed, err
			}
		}
	}
	return failed, nil
}

// unreadable ends a command over image files: the batch error if any, else
// a failure when some files could not be read (after the others were done).
func unreadable(failed, total int, err error) error {
	if err != nil {
		return err
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d images could not be read", failed, total)
	}
	return nil
}

// scoreFiles scores image files in batches, calling fn for each readable
// one.
func scoreFiles(det *detector.Detector, paths []string, batch int, threshold float64, fn func(path string, r detector.Result) error) (failed int, err error) {
	return scoreFilesWithViews(det, paths, batch, false, threshold, func(p string, _ *capture.View, r detector.Result) error { return fn(p, r) })
}

// scoreFilesWithViews is scoreFiles that also hands over each image as
// decoded (with keepViews).
func scoreFilesWithViews(det *detector.Detector, paths []string, batch int, keepViews bool, threshold float64, fn func(path string, view *capture.View, r detector.Result) error) (failed int, err error) {
	var tiling *tiles.Tiling
	if t := det.Info.Tiling; t != nil {
		// A frame's tiles are a batch of their own.
		tiling, batch = &t.Tiling, 1
	}
	return imageBatches(paths, det.Size(), tiling, keepViews, batch, func(ok []string, pixels []byte, sizes []image.Point, views []*capture.View) error {
		res, err := det.ScoreFrames(pixels, sizes, threshold)
		if err != nil {
			return err
		}
		for i, p := range ok {
			if err := fn(p, views[i], res[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// modelFlags name a bundle.
type modelFlags struct {
	flags                        *pflag.FlagSet
	path                         string
	threshold                    float64
	provider                     string
	precision                    string
	providerLibrary              string
	cudaOptions, tensorrtOptions map[string]string
}

func (m *modelFlags) register(fs *pflag.FlagSet) {
	m.flags = fs
	fs.StringVar(&m.path, "model", "", "bundle `file` written by transformaly fit (required)")
	fs.Float64Var(&m.threshold, "threshold", 0, "alert threshold on the score (default: the bundle's calibrated one)")
	fs.StringVar(&m.provider, "provider", "cpu", "execution provider: auto (TensorRT, then CUDA, then CPU), tensorrt, cuda or cpu")
	fs.StringVar(&m.precision, "precision", "", "detector precision: fp32, fp16 (weights and activations in half precision, scores in float32), or int8 (linear layers in int8 on the CPU provider; scores in float32); default fp32 with FP16 kernels allowed on TensorRT and TF32 on CUDA")
	fs.StringVar(&m.providerLibrary, "provider-library", "", "execution-provider plugin libraries, comma-separated (e.g. libonnxruntime_providers_cuda.so of the core library's exact version)")
	fs.StringToStringVar(&m.cudaOptions, "cuda-options", nil, "ONNX Runtime CUDA provider options, e.g. device_id=1,gpu_mem_limit=8589934592")
	fs.StringToStringVar(&m.tensorrtOptions, "tensorrt-options", nil, "ONNX Runtime TensorRT provider options, e.g. trt_max_workspace_size=4294967296")
}

// thresholdFor is --threshold when it was given, whatever its sign (scores
// are negative log-likelihoods and often below zero), else the bundle's.
func (m *modelFlags) thresholdFor(det *detector.Detector) float64 {
	if m.flags.Changed("threshold") {
		return m.threshold
	}
	return det.Info.Threshold
}

func (m *modelFlags) load(rt runtimeFlags) (*detector.Detector, error) {
	return m.loadAs(rt, m.precision)
}

func (m *modelFlags) loadAs(rt runtimeFlags, precision string) (*detector.Detector, error) {
	if m.path == "" {
		return nil, usageError("--model is required")
	}
	if err := detector.CheckProviderOptions(m.cudaOptions); err != nil {
		return nil, usageError("--cuda-options: %v", err)
	}
	if err := detector.CheckProviderOptions(m.tensorrtOptions); err != nil {
		return nil, usageError("--tensorrt-options: %v", err)
	}
	if err := rt.init(); err != nil {
		return nil, err
	}
	return detector.Load(m.path, detector.RunnerOptions{Threads: rt.threads, Provider: m.provider, Precision: precision, ProviderLibrary: m.providerLibrary,
		CUDAOptions: m.cudaOptions, TensorRTOptions: m.tensorrtOptions})
}

// imageArgs sorts command-line arguments into image files, with each
// folder standing for every image in it (each under its own name, not one
// video of them), and the rest (videos).
func imageArgs(args []string) (images, others []string, err error) {
	for _, p := range args {
		switch st, statErr := os.Stat(p); {
		case statErr == nil && st.IsDir():
			found, err := fit.ListImages(p)
			if err != nil {
				return nil, nil, err
			}
			if len(found) == 0 {
				return nil, nil, fmt.Errorf("%s holds no images (png, jpg, jpeg, bmp)", p)
			}
			images = append(images, found...)
		case capture.ImageExtensions[strings.ToLower(filepath.Ext(p))]:
			images = append(images, p)
		default:
			others = append(others, p)
		}
	}
	return images, others, nil
}
