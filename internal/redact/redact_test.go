package redact

import (
	"net/url"
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	for in, want := range map[string]string{
		"rtsp://admin:hunter2@cam.local:554/stream": "rtsp://admin:xxxxx@cam.local:554/stream",
		"tcp://user:s3cret@broker:1883":             "tcp://user:xxxxx@broker:1883",
		"tcp://broker:1883":                         "tcp://broker:1883",
		"/dev/video0":                               "/dev/video0",
		// Passwords that make url.Parse fail or misread the URL.
		"tcp://user:50%off@broker:1883":    "tcp://user:xxxxx@broker:1883",
		"tcp://user:pa#ss@broker:1883":     "tcp://user:xxxxx@broker:1883",
		"rtsp://admin:a/b?c@cam/stream":    "rtsp://admin:xxxxx@cam/stream",
		"rtsp://admin:p@ss@word@cam:554/s": "rtsp://admin:xxxxx@cam:554/s",
		"rtsp://viewer@cam/stream":         "rtsp://viewer@cam/stream",
	} {
		if got := URL(in); got != want {
			t.Errorf("URL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseErrorHidesTheURL(t *testing.T) {
	//lint:ignore SA1007 a URL that does not parse is the point
	_, err := url.Parse("tcp://user:50%off@broker:1883")
	if err == nil {
		t.Fatal("the URL parsed")
	}
	if got := ParseError(err).Error(); strings.Contains(got, "50%off") || got == "" {
		t.Errorf("ParseError = %q: the password is still there", got)
	}
}
