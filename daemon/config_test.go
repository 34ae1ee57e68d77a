package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Relative paths in a configuration are taken from its folder, whatever
// the working directory (systemd runs the daemon in /); devices, URLs and
// absolute paths stay as written.
func TestConfigPathsAreRelativeToItsFolder(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "etc", "config.yaml")
	os.MkdirAll(filepath.Dir(path), 0o755)
	os.WriteFile(path, []byte(`
defaults: {model: line.tfy}
cameras:
  - {name: a, source: videos/a.mp4}
  - {name: b, source: 0, model: /abs/b.tfy}
  - {name: c, source: /dev/video2}
  - {name: d, source: "rtsp://cam.local/stream"}
  - {name: e, source: "file:///srv/e.mp4"}
mqtt: {password_file: secrets/pw, tls: {ca_file: ca.pem}}
detector: {provider_library: "libs/cuda.so, /opt/trt.so"}
state_directory: state
`), 0o644)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	etc := filepath.Dir(path)
	for _, c := range []struct{ got, want string }{
		{cfg.Camera(0).Model, filepath.Join(etc, "line.tfy")},
		{cfg.Cameras[0].Source, filepath.Join(etc, "videos/a.mp4")},
		{cfg.Camera(1).Model, "/abs/b.tfy"},
		{cfg.Cameras[1].Source, "0"},
		{cfg.Cameras[2].Source, "/dev/video2"},
		{cfg.Cameras[3].Source, "rtsp://cam.local/stream"},
		{cfg.Cameras[4].Source, "file:///srv/e.mp4"},
		{cfg.MQTT.PasswordFile, filepath.Join(etc, "secrets/pw")},
		{cfg.MQTT.TLS.CAFile, filepath.Join(etc, "ca.pem")},
		{cfg.Detector.ProviderLibrary, filepath.Join(etc, "libs/cuda.so") + ",/opt/trt.so"},
		{cfg.StateDirectory, filepath.Join(etc, "state")},
		{cfg.CacheDirectory, "/var/cache/transformaly"},
	} {
		if c.got != c.want {
			t.Errorf("%q, want %q", c.got, c.want)
		}
	}
}

// A broker or camera URL that does not parse (a raw % or # in the
// password) is reported without its password.
func TestMalformedURLsKeepTheirPasswords(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(path, []byte(`
defaults: {model: line.tfy}
cameras:
  - {name: a, source: "rtsp://admin:50%off@cam.local/stream"}
mqtt: {broker: "tcp://user:pa#ss%@broker:1883"}
`), 0o644)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	err = errors.Join(cfg.Validate()...)
	if err == nil {
		t.Fatal("malformed URLs accepted")
	}
	for _, secret := range []string{"50%off", "pa#ss"} {
		if strings.Contains(err.Error(), secret) {
			t.Errorf("the error shows the password %q:\n%v", secret, err)
		}
	}
	for _, named := range []string{"mqtt.broker", "cameras[0]"} {
		if !strings.Contains(err.Error(), named) {
			t.Errorf("the error does not name %s:\n%v", named, err)
		}
	}
}
