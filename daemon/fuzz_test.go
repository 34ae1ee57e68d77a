package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzConfig: any file given as the configuration is loaded and checked
// without a panic; what passes the check has the bounds it promises.
func FuzzConfig(f *testing.F) {
	example, err := os.ReadFile("../systemd/config.example.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add([]byte("cameras: [{name: \"cam\\0\", source: 0}]\ndetector: {batch_wait: 1000h}\n"))
	f.Add([]byte("cameras: [{name: a, source: \"rtsp://u:p%zz@h/s\", stall_timeout: -1s}]\nmqtt: {broker: \"tcp://u:p#@h:99999\"}\n"))
	f.Add([]byte("---\na: b\n---\nc: d\n"))
	dir := f.TempDir()
	path := filepath.Join(dir, "config.yaml")
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadConfig(path)
		if err != nil {
			return
		}
		if errors.Join(cfg.Validate()...) != nil {
			return
		}
		for i := range cfg.Cameras {
			if name := cfg.Camera(i).Name; len(name) > maxCameraName || !printable(name) {
				t.Errorf("camera name %q passed the check", name)
			}
		}
		if w := cfg.Detector.BatchWait; w < 0 || w > maxBatchWait {
			t.Errorf("batch_wait %s passed the check", w)
		}
	})
}
