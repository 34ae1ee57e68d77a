package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// precision: int8 is the CPU's: refused with a GPU provider, by the key and
// with what to do instead; accepted with cpu and auto (which then runs it
// on the CPU).
func TestConfigInt8IsForTheCPU(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "line.tfy"), []byte("x"), 0o644)
	for _, c := range []struct {
		provider string
		ok       bool
	}{{"cpu", true}, {"auto", true}, {"cuda", false}, {"tensorrt", false}} {
		path := filepath.Join(dir, "config.yaml")
		os.WriteFile(path, []byte("defaults: {model: line.tfy}\ncameras: [{name: cam, source: 0}]\ndetector: {precision: int8, provider: "+c.provider+"}\n"), 0o644)
		cfg, err := LoadConfig(path)
		if err != nil {
			t.Fatalf("%s: %v", c.provider, err)
		}
		err = errors.Join(cfg.Validate()...)
		switch {
		case c.ok && err != nil:
			t.Errorf("int8 on %s refused: %v", c.provider, err)
		case !c.ok && (err == nil || !strings.Contains(err.Error(), "detector.precision:") || !strings.Contains(err.Error(), "CPU provider only")):
			t.Errorf("int8 on %s: %v; want detector.precision refused for the CPU only", c.provider, err)
		}
	}
}
