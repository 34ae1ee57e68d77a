package detector

import (
	"fmt"
	"time"

	onnx "github.com/yalue/onnxruntime_go"

	"github.com/transformaly/transformaly/internal/ort"
	"github.com/transformaly/transformaly/models"
)

// MeasureSgemmPeak times an n x n x n float32 MatMul through ONNX Runtime
// (best of 4 runs after a warm-up) and returns GFLOP/s: the yardstick for
// the graphs' speed, to be measured in the same run as what it is compared
// with, since this kind of machine is shared and noisy.
func MeasureSgemmPeak(n int) (float64, error) {
	graph, err := models.SgemmGraph(n)
	if err != nil {
		return 0, err
	}
	so, err := ort.SessionOptions(0)
	if err != nil {
		return 0, err
	}
	defer so.Destroy()
	s, err := onnx.NewDynamicAdvancedSessionWithONNXData(graph, []string{"a", "b"}, []string{"c"}, so)
	if err != nil {
		return 0, fmt.Errorf("sgemm session: %w", err)
	}
	defer s.Destroy()
	data := make([]float32, n*n)
	for i := range data {
		data[i] = float32(i%17) / 17
	}
	a, err := onnx.NewTensor(onnx.NewShape(int64(n), int64(n)), data)
	if err != nil {
		return 0, err
	}
	defer a.Destroy()
	c, err := onnx.NewEmptyTensor[float32](onnx.NewShape(int64(n), int64(n)))
	if err != nil {
		return 0, err
	}
	defer c.Destroy()
	best := time.Duration(1 << 62)
	for i := range 5 {
		start := time.Now()
		if err := s.Run([]onnx.Value{a, a}, []onnx.Value{c}); err != nil {
			return 0, fmt.Errorf("sgemm run: %w", err)
		}
		if i > 0 {
			best = min(best, time.Since(start))
		}
	}
	return 2 * float64(n) * float64(n) * float64(n) / best.Seconds() / 1e9, nil
}
