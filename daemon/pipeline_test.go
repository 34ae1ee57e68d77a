package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/transformaly/transformaly/capture"
)

// A batch is not held back for frames that cannot come: with one of two
// cameras not delivering (ended, offline or not started), a frame is
// scored at once however long batch_wait is (1000h scored nothing before).
func TestBatchNeverWaitsForCamerasThatAreNotOnline(t *testing.T) {
	m := &modelRuntime{pending: map[*cameraRuntime]capture.Frame{}, signal: make(chan struct{}, 1)}
	for _, name := range []string{"a", "b"} {
		cam, err := capture.NewCamera(capture.Config{Name: name, Source: t.TempDir(), Size: 8}, nil)
		if err != nil {
			t.Fatal(err)
		}
		m.cameras = append(m.cameras, &cameraRuntime{cam: cam, model: m})
	}
	done := make(chan []pendingFrame)
	go func() {
		batch, _ := m.fill(context.Background(), []pendingFrame{{cam: m.cameras[0]}}, 8, time.Hour)
		done <- batch
	}()
	select {
	case batch := <-done:
		if len(batch) != 1 {
			t.Errorf("batch of %d frames, want the 1 there was", len(batch))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the batch waits for cameras that deliver nothing")
	}
}
