package detector

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"strings"

	"golang.org/x/sys/cpu"

	"github.com/transformaly/transformaly/models"
)

// Int8Provider checks that a provider preference can run the int8
// detector, which only ONNX Runtime's CPU provider runs in integer
// arithmetic (its CUDA provider has no DynamicQuantizeMatMul, and TensorRT
// wants calibrated static int8): cpu, or auto, which then means the CPU.
func Int8Provider(provider string) (string, error) {
	switch provider {
	case "", "cpu", "auto":
		return "cpu", nil
	}
	return "", fmt.Errorf("precision int8 runs on the CPU provider only, not %q (on a GPU use precision fp16; or set the provider to cpu)", provider)
}

// Int8UnsignedWeights says whether this CPU's int8 detector stores its
// weights as uint8 (models.Int8Options.UnsignedWeights): x86 without VNNI.
func Int8UnsignedWeights() bool {
	return runtime.GOARCH == "amd64" && !cpu.X86.HasAVX512VNNI && !cpu.X86.HasAVXVNNI
}

// int8Model makes a bundle's int8 detector: the float32 detector runs once
// on probe images for each linear layer's activation ranges (its SmoothQuant
// factors), then the int8 graph is built from the bundle's weights.
func int8Model(info models.BundleInfo, mf models.ModelFile, opts RunnerOptions) ([]byte, models.Scoring, error) {
	v, students, scoring, err := models.DecodeBundle(info, mf)
	if err != nil {
		return nil, scoring, err
	}
	ranges, err := ActivationRanges(v, info.Blocks, students, opts.Threads)
	if err != nil {
		return nil, scoring, err
	}
	m, err := models.ScoredDetectorGraphInt8(v, info.Blocks, students, scoring, info, models.Int8Options{Ranges: ranges, UnsignedWeights: Int8UnsignedWeights()})
	if err != nil {
		return nil, scoring, err
	}
	model, err := models.Serialize(m)
	return model, scoring, err
}

// ActivationRanges runs the float32 detector on ProbeImages on the CPU and
// returns each linear layer's per-input-channel largest magnitude, by its
// weight's name (models.Int8Options.Ranges). The channels whose magnitudes
// dwarf the others' in ViTs (a few LayerNorm outputs) do so on any image,
// which is what lets a bundle alone, with no images, make its int8 variant.
func ActivationRanges(v *models.ViT, blocks []int, students []models.Block, threads int) (map[string][]float32, error) {
	m, outputs, err := models.ActivationRangeGraph(v, blocks, students)
	if err != nil {
		return nil, err
	}
	model, err := models.Serialize(m)
	if err != nil {
		return nil, err
	}
	r, err := NewRunner(model, v.ImageSize, outputs, RunnerOptions{Threads: threads, Provider: "cpu"})
	if err != nil {
		return nil, fmt.Errorf("activation ranges: %w", err)
	}
	defer r.Close()
	out, err := r.Run(ProbeImages(v.ImageSize), probeCount)
	if err != nil {
		return nil, fmt.Errorf("activation ranges: %w", err)
	}
	ranges := map[string][]float32{}
	for i, name := range outputs {
		ranges[strings.TrimPrefix(name, models.RangePrefix)] = out[i].Data
	}
	return ranges, nil
}

const probeCount = 2

// ProbeImages are the fixed images the activation ranges are measured on:
// uniform noise (every patch busy), and smooth colour ramps under flat
// rectangles with sharp edges.
func ProbeImages(size int) []byte {
	img := make([]byte, probeCount*size*size*3)
	rng := rand.New(rand.NewPCG(23, 8))
	noise, ramps := img[:size*size*3], img[size*size*3:]
	for i := range noise {
		noise[i] = byte(rng.IntN(256))
	}
	type rect struct{ x0, y0, x1, y1 int }
	var rects []rect
	var colours [][3]byte
	for range 6 {
		x0, y0 := rng.IntN(size), rng.IntN(size)
		rects = append(rects, rect{x0, y0, x0 + 1 + rng.IntN(size/2), y0 + 1 + rng.IntN(size/2)})
		colours = append(colours, [3]byte{byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))})
	}
	for y := range size {
		for x := range size {
			px := [3]byte{byte(255 * x / size), byte(255 * y / size), byte(255 * (x + y) / (2 * size))}
			for k, r := range rects {
				if x >= r.x0 && x < r.x1 && y >= r.y0 && y < r.y1 {
					px = colours[k]
				}
			}
			copy(ramps[(y*size+x)*3:], px[:])
		}
	}
	return img
}

// logInt8 says what the int8 detector runs on.
func logInt8(path string) {
	weights := "int8 (VNNI or ARM dot products)"
	if Int8UnsignedWeights() {
		weights = "uint8 (no VNNI here: AVX2's int8 kernel would saturate)"
	}
	slog.Info("int8 detector on the CPU: linear layers in int8 (DynamicQuantizeMatMul), smoothed by activation ranges measured on probe images; the rest float32",
		"bundle", path, "weights", weights)
}
