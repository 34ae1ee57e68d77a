package detector_test

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	onnx "github.com/yalue/onnxruntime_go"

	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/models"
)

// On this CPU-only ONNX Runtime, auto falls back to the CPU provider and an
// explicit GPU provider is an error that names it.
func TestProviderSelectionAndFallback(t *testing.T) {
	v, err := models.RandomViT(models.Config{Dim: 32, Depth: 1, Heads: 2, Patch: 8, ImageSize: 16}, 1)
	if err != nil {
		t.Fatal(err)
	}
	graph, err := models.TeacherGraph(v)
	if err != nil {
		t.Fatal(err)
	}
	notAPlugin := filepath.Join(t.TempDir(), "libonnxruntime_providers_cuda.so")
	os.WriteFile(notAPlugin, []byte("not a shared library"), 0o644)
	for _, c := range []struct {
		provider, library, want, wantErr string
	}{
		{"", "", "cpu", ""},
		{"cpu", "", "cpu", ""},
		{"auto", "", "cpu", ""},
		{"cuda", "", "", "cuda"},
		{"tensorrt", "", "", "tensorrt"},
		{"tpu", "", "", `"tpu" is not auto, tensorrt, cuda or cpu`},
		{"auto", "/nonexistent/libonnxruntime_providers_cuda.so", "cpu", ""},
		{"cuda", "/nonexistent/libonnxruntime_providers_cuda.so", "", "provider library /nonexistent/libonnxruntime_providers_cuda.so: stat"},
		{"cuda", notAPlugin, "", "could not load it"},
	} {
		r, err := detector.NewRunner(graph, 16, []string{models.OutputEmbedding}, detector.RunnerOptions{Provider: c.provider, ProviderLibrary: c.library})
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("provider %q: error %v, want one naming %q", c.provider, err, c.wantErr)
			}
			if r != nil {
				r.Close()
			}
			continue
		}
		if err != nil {
			t.Errorf("provider %q: %v", c.provider, err)
			continue
		}
		if r.Provider() != c.want {
			t.Errorf("provider %q ran on %s, want %s", c.provider, r.Provider(), c.want)
		}
		out, err := r.Run(make([]byte, 16*16*3), 1)
		if err != nil || len(out[0].Data) != 32 {
			t.Errorf("provider %q: run %v", c.provider, err)
		}
		r.Close()
	}
}

// Training's auto ("cuda,cpu") falls back to the CPU here, where the CUDA
// provider is not installed (and is not even tried, so ORT prints no error
// of its own); "cuda" alone is an error.
func TestTrainingProviderFallback(t *testing.T) {
	opened := 0
	open := func(*onnx.SessionOptions, string) error { opened++; return nil }
	if p, err := detector.OpenOnProvider(detector.RunnerOptions{Provider: "cuda,cpu"}, open); err != nil || p != "cpu" || opened != 1 {
		t.Errorf("cuda,cpu: provider %q, %d opens, err %v; want cpu", p, opened, err)
	}
	if _, err := detector.OpenOnProvider(detector.RunnerOptions{Provider: "cuda"}, open); err == nil {
		t.Error("cuda alone succeeded on a CPU-only ONNX Runtime")
	}
	// A plugin that cannot load is said so, not dropped in silence.
	var log bytes.Buffer
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(&log, nil)))
	p, err := detector.OpenOnProvider(detector.RunnerOptions{Provider: "cuda,cpu", ProviderLibrary: "/nonexistent/libonnxruntime_providers_cuda.so"}, open)
	if err != nil || p != "cpu" || !strings.Contains(log.String(), "plugin unusable") {
		t.Errorf("cuda,cpu with a missing plugin: provider %q, err %v, log:\n%s", p, err, log.String())
	}
}
