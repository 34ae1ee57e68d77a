package capture

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A damaged video makes FFmpeg complain; its lines must come through the
// log handler (source=ffmpeg), and nothing may reach stderr past it.
func TestFFmpegLinesGoThroughTheLog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "damaged.avi")
	writeVideo(t, path, 40, 320, 240, 25)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 1))
	for i := len(data) / 3; i < 2*len(data)/3; i += 500 {
		for j := range 20 {
			data[i+j] = byte(rng.IntN(256))
		}
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}

	var logged bytes.Buffer
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logged, nil)))
	defer slog.SetDefault(prev)
	stderr := captureStderr(t, func() {
		EachFrame(context.Background(), Config{Name: "damaged", Source: path, Size: 16}, func(Frame) error { return nil })
	})
	if !strings.Contains(logged.String(), "source=ffmpeg") {
		t.Errorf("no FFmpeg line in the log:\n%s", logged.String())
	}
	if stderr != "" {
		t.Errorf("written to stderr past the log handler:\n%s", stderr)
	}
}

// captureStderr runs fn with file descriptor 2 (where C code writes)
// pointing at a file, and returns what was written.
func captureStderr(t *testing.T, fn func()) string {
	f, err := os.CreateTemp(t.TempDir(), "stderr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	saved, err := syscall.Dup(2)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Dup2(int(f.Fd()), 2); err != nil {
		t.Fatal(err)
	}
	fn()
	syscall.Dup2(saved, 2)
	syscall.Close(saved)
	out, _ := os.ReadFile(f.Name())
	return string(out)
}
