package redact

import "testing"

func TestURL(t *testing.T) {
	for in, want := range map[string]string{
		"rtsp://admin:hunter2@cam.local:554/stream": "rtsp://admin:xxxxx@cam.local:554/stream",
		"tcp://user:s3cret@broker:1883":             "tcp://user:xxxxx@broker:1883",
		"tcp://broker:1883":                         "tcp://broker:1883",
		"/dev/video0":                               "/dev/video0",
	} {
		if got := URL(in); got != want {
			t.Errorf("URL(%q) = %q, want %q", in, got, want)
		}
	}
}
