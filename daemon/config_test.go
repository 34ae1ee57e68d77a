package daemon

import (
	"errors"
	"fmt"
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

// Names that would break every publish (a NUL, an invisible character,
// more than a topic should carry) and a batch_wait that stalls scoring are
// refused with their key.
func TestConfigRefusesUnpublishableNamesAndLongBatchWaits(t *testing.T) {
	dir := t.TempDir()
	model := filepath.Join(dir, "line.tfy")
	os.WriteFile(model, []byte("x"), 0o644)
	for _, c := range []struct{ yaml, key string }{
		{`cameras: [{name: "cam\0one", source: 0}]`, "cameras[0].name"},
		{`cameras: [{name: "cam\u200bone", source: 0}]`, "cameras[0].name"},
		{`cameras: [{name: "` + strings.Repeat("c", 65) + `", source: 0}]`, "cameras[0].name"},
		{`cameras: [{name: "cam", source: 0}]` + "\nmqtt: {topic_prefix: \"line\\x01\"}", "mqtt.topic_prefix"},
		{`cameras: [{name: "cam", source: 0}]` + "\ndetector: {batch_wait: 1000h}", "detector.batch_wait"},
		{`cameras: [{name: "cam", source: 0}]` + "\ndetector: {batch_wait: 2s}", "detector.batch_wait"},
	} {
		path := filepath.Join(dir, "config.yaml")
		os.WriteFile(path, []byte("defaults: {model: line.tfy}\n"+c.yaml+"\n"), 0o644)
		cfg, err := LoadConfig(path)
		if err != nil {
			t.Fatalf("%s: %v", c.yaml, err)
		}
		err = errors.Join(cfg.Validate()...)
		if err == nil || !strings.Contains(err.Error(), c.key+":") {
			t.Errorf("%s: %v; want an error naming %s", c.yaml, err, c.key)
		}
	}
	// What stays valid: any printable name of up to 64 bytes, a short wait.
	path := filepath.Join(dir, "config.yaml")
	os.WriteFile(path, []byte("defaults: {model: line.tfy}\ncameras: [{name: \"Linie 3 – Prüfstand\", source: 0}]\ndetector: {batch_wait: 50ms}\n"), 0o644)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Errorf("a valid configuration refused: %v", errs)
	}
}

// Negative or zero durations and NaN rates are refused with their key
// (they silently became defaults).
func TestConfigRefusesNonsenseNumbers(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "line.tfy"), []byte("x"), 0o644)
	for _, c := range []struct{ yaml, key string }{
		{`cameras: [{name: cam, source: 0, stall_timeout: -5s}]`, "cameras[0].stall_timeout"},
		{`cameras: [{name: cam, source: 0, retry_start: 0s}]`, "cameras[0].retry_start"},
		{`cameras: [{name: cam, source: 0, retry_max: -1m}]`, "cameras[0].retry_max"},
		{`cameras: [{name: cam, source: 0, fps_limit: .nan}]`, "cameras[0].fps_limit"},
		{"cameras: [{name: cam, source: 0}]\nevents: {update_interval: -1s}", "events.update_interval"},
		{"cameras: [{name: cam, source: 0}]\ndetector: {threads: 100000}", "detector.threads"},
		{"cameras: [{name: cam, source: 0}]\ndetector: {threads: -2}", "detector.threads"},
		{"cameras: [{name: cam, source: 0}]\nmqtt: {keepalive: 0s}", "mqtt.keepalive"},
		{"cameras: [{name: cam, source: 0}]\nmqtt: {keepalive: 1500ms}", "mqtt.keepalive"},
		{"cameras: [{name: cam, source: 0}]\nmodbus: {address: \"127.0.0.1:502\", max_clients: 0}", "modbus.max_clients"},
		{"cameras: [{name: cam, source: 0}]\nmodbus: {address: \"127.0.0.1:502\", idle_timeout: 10ms}", "modbus.idle_timeout"},
		{"cameras: [{name: cam, source: 0}]\nmodbus: {address: \"127.0.0.1:502\", allowed_clients: [plc.local]}", "modbus.allowed_clients"},
		{`cameras: [{name: cam, source: 0, trigger: {ready_window: 1ms}}]`, "cameras[0].trigger.ready_window"},
	} {
		path := filepath.Join(dir, "config.yaml")
		os.WriteFile(path, []byte("defaults: {model: line.tfy}\n"+c.yaml+"\n"), 0o644)
		cfg, err := LoadConfig(path)
		if err != nil {
			t.Fatalf("%s: %v", c.yaml, err)
		}
		if err := errors.Join(cfg.Validate()...); err == nil || !strings.Contains(err.Error(), c.key+":") {
			t.Errorf("%s: %v; want an error naming %s", c.yaml, err, c.key)
		}
	}
}

// Smaller hostile inputs: a second YAML document is refused, not ignored;
// a port past 65535 is refused; a huge bad value is not echoed whole.
func TestConfigRefusesSecondDocumentsBadPortsAndClipsValues(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "line.tfy"), []byte("x"), 0o644)
	path := filepath.Join(dir, "config.yaml")
	os.WriteFile(path, []byte("defaults: {model: line.tfy}\ncameras: [{name: a, source: 0}]\n---\ncameras: [{name: b, source: 1}]\n"), 0o644)
	if _, err := LoadConfig(path); err == nil || !strings.Contains(err.Error(), "more than one YAML document") {
		t.Errorf("a second document: %v", err)
	}
	for _, c := range []struct{ yaml, key string }{
		{`mqtt: {broker: "tcp://broker:99999"}`, "mqtt.broker"},
		{`metrics: {address: "127.0.0.1:70000"}`, "metrics.address"},
		{`mqtt: {broker: embedded, embedded_address: "127.0.0.1:-1"}`, "mqtt.embedded_address"},
	} {
		os.WriteFile(path, []byte("defaults: {model: line.tfy}\ncameras: [{name: a, source: 0}]\n"+c.yaml+"\n"), 0o644)
		cfg, err := LoadConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := errors.Join(cfg.Validate()...); err == nil || !strings.Contains(err.Error(), c.key+":") {
			t.Errorf("%s: %v; want an error naming %s", c.yaml, err, c.key)
		}
	}
	huge := strings.Repeat("x", 1<<20)
	os.WriteFile(path, []byte("defaults: {model: line.tfy}\ncameras: [{name: a, source: 0}]\nevents: {min_frames: "+huge+"}\n"), 0o644)
	if _, err := LoadConfig(path); err == nil || len(err.Error()) > 2000 {
		t.Errorf("a 1 MB bad value: error of %d bytes", len(fmt.Sprint(err)))
	}
	os.WriteFile(path, []byte("defaults: {model: line.tfy}\ncameras: [{name: \""+huge+"\", source: 0}]\n"), 0o644)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := errors.Join(cfg.Validate()...); err == nil || len(err.Error()) > 2000 {
		t.Errorf("a 1 MB camera name: error of %d bytes", len(fmt.Sprint(err)))
	}
}

// The console is never open to the network without a password unless the
// configuration says so; on loopback, or off, it needs none.
func TestConsoleNeedsAPasswordOffLoopback(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "line.tfy"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(dir, "web-pw"), []byte("s3cret\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "empty-pw"), []byte("\n"), 0o600)
	const cam = "defaults: {model: line.tfy}\ncameras: [{name: cam, source: 0}]\n"
	for _, c := range []struct {
		yaml, refused string // refused: the key named, "" when valid
	}{
		{"", ""}, // metrics and console on 127.0.0.1:9108
		{"metrics: {address: \"0.0.0.0:9108\"}", "web.address (metrics.address)"},
		{"metrics: {address: \"0.0.0.0:9108\"}\nweb: {address: \"127.0.0.1:8080\"}", ""},
		{"metrics: {address: \"0.0.0.0:9108\"}\nweb: {address: \"off\"}", ""},
		{"web: {address: \"0.0.0.0:8080\"}", "web.address"},
		{"web: {address: \"[::]:8080\", insecure: true}", ""},
		{"web: {address: \"0.0.0.0:8080\", username: line, password_file: web-pw}", ""},
		{"web: {address: \"0.0.0.0:8080\", password_file: empty-pw}", "web.password_file"},
		{"web: {address: \"localhost:8080\"}", ""},
		{"web: {address: \"8080\"}", "web.address"},
	} {
		path := filepath.Join(dir, "config.yaml")
		os.WriteFile(path, []byte(cam+c.yaml+"\n"), 0o644)
		cfg, err := LoadConfig(path)
		if err != nil {
			t.Fatalf("%s: %v", c.yaml, err)
		}
		err = errors.Join(cfg.Validate()...)
		switch {
		case c.refused == "" && err != nil:
			t.Errorf("%q refused: %v", c.yaml, err)
		case c.refused != "" && (err == nil || !strings.Contains(err.Error(), c.refused+":")):
			t.Errorf("%q: %v; want an error naming %s", c.yaml, err, c.refused)
		}
	}
}

// A number with a fraction under an integer key is refused by key: the
// YAML decoder truncated it without a word (8.5 became 8, 0.5 became 0).
func TestConfigRefusesFractionsForWholeNumbers(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.yaml")
	os.WriteFile(path, []byte("cameras: [{name: a, source: 0, trigger: {frames: 1.5}}]\ndetector: {max_batch: 8.5}\nmqtt: {queue_limit: 0.5, score_qos: 1}\nng_images: {max_mb: 1e3}\n"), 0o644)
	_, err := LoadConfig(path)
	for _, key := range []string{"cameras[0].trigger.frames (line 1): 1.5", "detector.max_batch (line 2): 8.5", "mqtt.queue_limit (line 3): 0.5"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("%v; want %q", err, key)
		}
	}
	if err != nil && strings.Contains(err.Error(), "max_mb") {
		t.Errorf("1e3 is a whole number: %v", err)
	}
}
