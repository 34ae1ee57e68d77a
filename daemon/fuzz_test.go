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

// FuzzQueuedMessage: whatever a queue file holds, the queue hands out only
// messages the broker can take, and sets the rest aside.
func FuzzQueuedMessage(f *testing.F) {
	f.Add([]byte(`{"topic":"transformaly/cam/event","qos":1,"payload":{"id":"a"}}`))
	f.Add([]byte(`{"topic":"transformaly/#","qos":1,"payload":{}}`))
	f.Add([]byte(`{"topic":"t","qos":3,"payload":{}}`))
	f.Add([]byte(`{"topic":"t\u0000","qos":0,"payload":null}`))
	f.Add([]byte(`{broken`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "00000000000000000001.msg"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		q, err := OpenQueue(dir, 10, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		m, ok, err := q.Peek()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			if err := m.sendable(); err != nil {
				t.Errorf("handed out an unsendable message: %v", err)
			}
		} else if q.Rejected() != 1 {
			t.Errorf("message neither handed out nor set aside")
		}
	})
}
