// Package daemon runs transformaly as a service: cameras in, scores, events
// and snapshots out over MQTT, with metrics, health and systemd integration.
package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/transformaly/transformaly/capture"
	"github.com/transformaly/transformaly/detector"
	"github.com/transformaly/transformaly/internal/ort"
	"github.com/transformaly/transformaly/internal/redact"
	"github.com/transformaly/transformaly/modbus"
	"github.com/transformaly/transformaly/mqtt"
	"github.com/transformaly/transformaly/opcua"
)

// DefaultConfigPath is where `transformaly run` looks without --config.
const DefaultConfigPath = "/etc/transformaly/config.yaml"

// Config is the daemon's YAML configuration.
type Config struct {
	// Defaults apply to every camera that does not set the key itself.
	Defaults CameraConfig   `yaml:"defaults"`
	Cameras  []CameraConfig `yaml:"cameras"`
	MQTT     mqtt.Config    `yaml:"mqtt"`
	Events   EventConfig    `yaml:"events"`
	Detector DetectorConfig `yaml:"detector"`
	Metrics  MetricsConfig  `yaml:"metrics"`
	// Modbus serves the PLC the triggered cameras' registers (off unless an
	// address is given; see the modbus package for the map).
	Modbus modbus.Config `yaml:"modbus"`
	// OPCUA serves the cameras to SCADA, MES and PLCs over OPC UA (off
	// unless an address is given; see the opcua package).
	OPCUA opcua.Config `yaml:"opcua"`
	// NGImages keeps triggered cameras' NG parts' images.
	NGImages NGImagesConfig `yaml:"ng_images"`
	// Web places the web console.
	Web WebConfig `yaml:"web"`
	// StateDirectory holds the event queue (systemd StateDirectory).
	StateDirectory string `yaml:"state_directory"`
	// CacheDirectory holds TensorRT engine caches (systemd CacheDirectory).
	CacheDirectory string `yaml:"cache_directory"`
}

// CameraConfig is one camera; pointer fields distinguish "unset" (take
// the default) from an explicit zero.
type CameraConfig struct {
	Name         string         `yaml:"name"`
	Source       string         `yaml:"source"`
	Model        string         `yaml:"model"`     // bundle path
	Threshold    *float64       `yaml:"threshold"` // override of the bundle's calibrated one
	FPSLimit     *float64       `yaml:"fps_limit"`
	ROI          string         `yaml:"roi"` // "x,y,width,height"
	Rotate       *int           `yaml:"rotate"`
	FlipH        *bool          `yaml:"flip_horizontal"`
	FlipV        *bool          `yaml:"flip_vertical"`
	Loop         *bool          `yaml:"loop"` // files and folders
	Pace         *bool          `yaml:"pace"` // files and folders: real time
	Width        int            `yaml:"width"`
	Height       int            `yaml:"height"`
	FPS          float64        `yaml:"fps"`
	FourCC       string         `yaml:"fourcc"`
	StallTimeout *time.Duration `yaml:"stall_timeout"`
	RetryStart   *time.Duration `yaml:"retry_start"`
	RetryMax     *time.Duration `yaml:"retry_max"`
	// Trigger makes the camera judge parts, not streams (see TriggerConfig).
	Trigger *TriggerConfig `yaml:"trigger"`
}

// TriggerConfig: on each trigger (MQTT <prefix>/<camera>/trigger, POST
// /trigger/<camera>) the camera scores the next Frames frames captured
// Delay after it, and publishes one result, the worst of them, to
// <prefix>/<camera>/result; a trigger not answered within Deadline gets the
// verdict "error" (fail-safe: the line rejects the part), and so does, at
// once, a trigger while the camera is not Ready.
type TriggerConfig struct {
	Frames   int            `yaml:"frames"`   // default 1
	Delay    *time.Duration `yaml:"delay"`    // default 0
	Deadline *time.Duration `yaml:"deadline"` // default 500ms
	// ReadyWindow: the camera is Ready while its last frame is at most this
	// old (default: 3 frame intervals at its measured rate, at least
	// 500 ms; 1 s until a rate is measured).
	ReadyWindow *time.Duration `yaml:"ready_window"`
}

// withDefaults fills the unset keys.
func (t TriggerConfig) withDefaults() TriggerConfig {
	if t.Frames == 0 {
		t.Frames = 1
	}
	if t.Delay == nil {
		t.Delay = new(time.Duration)
	}
	if t.Deadline == nil {
		d := 500 * time.Millisecond
		t.Deadline = &d
	}
	return t
}

// EventConfig shapes anomaly events out of per-frame verdicts.
type EventConfig struct {
	// MinFrames above the threshold, in a row, open an event (debounce).
	MinFrames int `yaml:"min_frames"`
	// EndFrames below the threshold, in a row, close it (hysteresis).
	EndFrames int `yaml:"end_frames"`
	// UpdateInterval bounds how often "update" messages are sent for a
	// rising peak.
	UpdateInterval time.Duration `yaml:"update_interval"`
}

// DetectorConfig sets up inference.
type DetectorConfig struct {
	Provider  string `yaml:"provider"`  // auto, tensorrt, cuda or cpu
	Precision string `yaml:"precision"` // "" (FP16 kernels on TensorRT, TF32 on CUDA), fp32 (neither), fp16, or int8 (CPU only)
	// ProviderLibrary is an execution-provider plugin library.
	ProviderLibrary string `yaml:"provider_library"`
	// CUDAOptions and TensorRTOptions are further ONNX Runtime settings of
	// those providers (device_id, gpu_mem_limit, arena_extend_strategy,
	// cudnn_conv_algo_search, ...).
	CUDAOptions     map[string]string `yaml:"cuda_options"`
	TensorRTOptions map[string]string `yaml:"tensorrt_options"`
	MaxBatch        int               `yaml:"max_batch"`
	BatchWait       time.Duration     `yaml:"batch_wait"`
	Threads         int               `yaml:"threads"`
}

// MetricsConfig places the HTTP endpoint (/metrics, /healthz, /readyz).
type MetricsConfig struct {
	Address string `yaml:"address"` // "" or "off" disables
}

// WebConfig places and guards the web console (see the console package).
type WebConfig struct {
	// Address: "" serves it with the metrics (metrics.address), "off" not
	// at all, host:port on its own listener.
	Address string `yaml:"address"`
	// AllowChanges lets the page set thresholds and save normal frames.
	AllowChanges bool `yaml:"allow_changes"`
	// Username and PasswordFile turn on HTTP basic auth (required on an
	// address that is not loopback, unless Insecure).
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	Insecure     bool   `yaml:"insecure"`
	// NormalImages is where "save frame as normal" writes, a folder per
	// camera (default <state_directory>/normal_images).
	NormalImages string `yaml:"normal_images"`
}

// WebAddress is where the console is served ("" when off).
func (c Config) WebAddress() string {
	switch a := c.Web.Address; a {
	case "off":
		return ""
	case "":
		if m := c.Metrics.Address; m != "off" {
			return m
		}
		return ""
	default:
		return a
	}
}

// loopback says whether a host:port listens on this machine only.
func loopback(address string) bool {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// NormalImagesDirectory is where the console saves normal frames.
func (c Config) NormalImagesDirectory() string {
	if c.Web.NormalImages != "" {
		return c.Web.NormalImages
	}
	return filepath.Join(c.StateDirectory, "normal_images")
}

// cameraNames lists the cameras in configuration order (the Modbus blocks).
func (c Config) cameraNames() []string {
	names := make([]string, len(c.Cameras))
	for i, cam := range c.Cameras {
		names[i] = cam.Name
	}
	return names
}

// NGImagesDirectory is where NG parts' images go.
func (c Config) NGImagesDirectory() string {
	if c.NGImages.Directory != "" {
		return c.NGImages.Directory
	}
	return filepath.Join(c.StateDirectory, "ng_images")
}

// DefaultConfig is what an empty file means.
func DefaultConfig() Config {
	return Config{
		Modbus: modbus.Config{MaxClients: modbus.DefaultMaxClients, IdleTimeout: modbus.DefaultIdleTimeout},
		MQTT: mqtt.Config{Broker: "tcp://127.0.0.1:1883", EmbeddedAddress: "127.0.0.1:1883", ClientID: "transformaly",
			TopicPrefix: "transformaly", HomeAssistantPrefix: "homeassistant", StatsInterval: 60 * time.Second, KeepAlive: 30 * time.Second, QueueLimit: 10000, SnapshotQueueMB: 64,
			SnapshotSize: 960},
		Events:         EventConfig{MinFrames: 2, EndFrames: 5, UpdateInterval: time.Second},
		Detector:       DetectorConfig{Provider: "auto", MaxBatch: 8, BatchWait: 10 * time.Millisecond},
		Metrics:        MetricsConfig{Address: "127.0.0.1:9108"},
		NGImages:       NGImagesConfig{MaxMB: 512},
		StateDirectory: "/var/lib/transformaly",
		CacheDirectory: "/var/cache/transformaly",
	}
}

// LoadConfig reads a YAML file over the defaults. Unknown keys are errors.
func LoadConfig(path string) (Config, error) {
	cfg := DefaultConfig()
	data, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("read config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	// An empty file (io.EOF) stands for all defaults.
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return cfg, fmt.Errorf("config %s:\n  %s", path, keyedYAMLError(data, err))
	}
	// A second document was ignored without a word.
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		return cfg, fmt.Errorf("config %s: holds more than one YAML document (a --- line); the daemon reads one", path)
	}
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) == nil {
		if bad := fractionsForIntegers(&doc, reflect.TypeOf(cfg), ""); len(bad) > 0 {
			return cfg, fmt.Errorf("config %s:\n  %s", path, strings.Join(bad, "\n  "))
		}
	}
	dir, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return cfg, fmt.Errorf("config %s: %w", path, err)
	}
	cfg.resolvePaths(dir)
	return cfg, nil
}

// resolvePaths takes relative file paths from dir, the configuration's
// folder, as most tools do: a daemon's working directory is / (systemd),
// and a configuration should mean the same wherever it is read from.
// Device indices, /dev nodes and URLs are left as they are.
func (c *Config) resolvePaths(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	cams := []*CameraConfig{&c.Defaults}
	for i := range c.Cameras {
		cams = append(cams, &c.Cameras[i])
	}
	for _, cam := range cams {
		abs(&cam.Model)
		if kind, _, _ := capture.ParseKind(cam.Source); kind != capture.KindDevice && !strings.Contains(cam.Source, "://") {
			abs(&cam.Source)
		}
	}
	for _, p := range []*string{&c.StateDirectory, &c.CacheDirectory, &c.NGImages.Directory, &c.Web.PasswordFile, &c.Web.NormalImages, &c.MQTT.PasswordFile, &c.MQTT.TLS.CAFile, &c.MQTT.TLS.CertFile, &c.MQTT.TLS.KeyFile,
		&c.OPCUA.CertificateFile, &c.OPCUA.KeyFile, &c.OPCUA.TrustedCertificates, &c.OPCUA.RejectedCertificates, &c.OPCUA.UsersFile} {
		abs(p)
	}
	if c.Detector.ProviderLibrary != "" {
		libs := strings.Split(c.Detector.ProviderLibrary, ",")
		for i := range libs {
			libs[i] = strings.TrimSpace(libs[i])
			abs(&libs[i])
		}
		c.Detector.ProviderLibrary = strings.Join(libs, ",")
	}
}

// fractionsForIntegers finds numbers with a fraction under keys whose
// value is an integer: the YAML decoder truncates them without a word
// (max_batch: 8.5 became 8, queue_limit: 0.5 became 0).
func fractionsForIntegers(n *yaml.Node, t reflect.Type, path string) []string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		if t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode {
			var out []string
			for i, item := range n.Content {
				out = append(out, fractionsForIntegers(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i))...)
			}
			return out
		}
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.DocumentNode:
		var out []string
		for _, c := range n.Content {
			out = append(out, fractionsForIntegers(c, t, path)...)
		}
		return out
	case yaml.MappingNode:
		if t.Kind() != reflect.Struct {
			return nil
		}
		var out []string
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			for f := range t.NumField() {
				if strings.Split(t.Field(f).Tag.Get("yaml"), ",")[0] == key {
					k := key
					if path != "" {
						k = path + "." + key
					}
					out = append(out, fractionsForIntegers(n.Content[i+1], t.Field(f).Type, k)...)
				}
			}
		}
		return out
	case yaml.ScalarNode:
		switch t.Kind() {
		case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64, reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			if x, err := strconv.ParseFloat(n.Value, 64); n.ShortTag() == "!!float" && err == nil && x != math.Trunc(x) {
				return []string{fmt.Sprintf("%s (line %d): %s is not a whole number", path, n.Line, clip(n.Value))}
			}
		}
	}
	return nil
}

var yamlLine = regexp.MustCompile(`line (\d+): `)

// keyedYAMLError rewrites the decoder's "line N: ..." messages to start with
// the key at that line (cameras[0].stall_timeout), found by walking the
// document.
func keyedYAMLError(data []byte, err error) string {
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil {
		return err.Error()
	}
	keys := map[int]string{}
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i].Value
				if path != "" {
					k = path + "." + k
				}
				keys[n.Content[i].Line] = k
				if _, taken := keys[n.Content[i+1].Line]; !taken {
					keys[n.Content[i+1].Line] = k
				}
				walk(n.Content[i+1], k)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, fmt.Sprintf("%s[%d]", path, i))
			}
		}
	}
	walk(&doc, "")
	var out []string
	for _, line := range strings.Split(strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n"), "\n") {
		line = strings.TrimSpace(line)
		if m := yamlLine.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			if k, ok := keys[n]; ok {
				line = k + " (" + strings.TrimSuffix(m[0], ": ") + "): " + line[len(m[0])+strings.Index(line, m[0]):]
			}
		}
		out = append(out, clip(line))
	}
	return strings.Join(out, "\n  ")
}

// checkHostPort accepts host:port with a port of 0 (any free one) to 65535.
func checkHostPort(a string) error {
	_, port, err := net.SplitHostPort(a)
	if err != nil {
		return fmt.Errorf("%q is not host:port", a)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port %s is not 0 to 65535", a, port)
	}
	return nil
}

// clip shortens a message that quotes a value from the file: a 50 MB bad
// value was echoed whole into the log.
func clip(s string) string {
	const limit = 400
	if len(s) <= limit {
		return s
	}
	cut := limit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (%d bytes more)", s[:cut], len(s)-cut)
}

// Camera returns camera i with the defaults filled in.
func (c Config) Camera(i int) CameraConfig {
	cam, d := c.Cameras[i], c.Defaults
	if cam.Model == "" {
		cam.Model = d.Model
	}
	if cam.ROI == "" {
		cam.ROI = d.ROI
	}
	inherit(&cam.Threshold, d.Threshold)
	inherit(&cam.FPSLimit, d.FPSLimit)
	inherit(&cam.Rotate, d.Rotate)
	inherit(&cam.FlipH, d.FlipH)
	inherit(&cam.FlipV, d.FlipV)
	inherit(&cam.Loop, d.Loop)
	inherit(&cam.Pace, d.Pace)
	inherit(&cam.StallTimeout, d.StallTimeout)
	inherit(&cam.RetryStart, d.RetryStart)
	inherit(&cam.RetryMax, d.RetryMax)
	inherit(&cam.Trigger, d.Trigger)
	return cam
}

// inherit takes the default when the camera leaves a key unset.
func inherit[T any](v **T, def *T) {
	if *v == nil {
		*v = def
	}
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// CaptureConfig turns a camera's settings into the capture package's, for
// a model input of size, keeping the full frames for snapshots if asked.
func (cam CameraConfig) CaptureConfig(size int, snapshots bool) (capture.Config, error) {
	cc := capture.Config{
		Name: cam.Name, Source: cam.Source, Width: cam.Width, Height: cam.Height, FPS: cam.FPS, FourCC: cam.FourCC,
		Loop: deref(cam.Loop), Pace: deref(cam.Pace), FPSLimit: deref(cam.FPSLimit), Rotate: deref(cam.Rotate),
		FlipH: deref(cam.FlipH), FlipV: deref(cam.FlipV), Size: size, KeepView: snapshots,
		StallTimeout: deref(cam.StallTimeout), RetryStart: deref(cam.RetryStart), RetryMax: deref(cam.RetryMax),
	}
	if cam.ROI != "" {
		roi, err := capture.ParseROI(cam.ROI)
		if err != nil {
			return cc, err
		}
		cc.ROI = roi
	}
	return cc, nil
}

// Validate checks everything that can be checked without opening cameras
// or the broker, and names the exact key of every problem.
// Bounds on names that go into MQTT topics (at most 65535 bytes, and a
// NUL in one makes the broker drop the client) and on batch_wait (a frame
// waits that long for others at most).
const (
	maxCameraName  = 64
	maxTopicPrefix = 256
	maxBatchWait   = time.Second
)

// printable says whether s is valid UTF-8 of printable characters only
// (no NUL, control or invisible formatting characters).
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

func (c Config) Validate() []error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, clip(fmt.Sprintf(format, a...))))
	}
	if len(c.Cameras) == 0 {
		bad("cameras", "no cameras configured")
	}
	names := map[string]int{}
	for i := range c.Cameras {
		cam := c.Camera(i)
		key := func(k string) string { return fmt.Sprintf("cameras[%d].%s", i, k) }
		switch {
		case cam.Name == "":
			bad(key("name"), "missing")
		case strings.ContainsAny(cam.Name, "/+#") || strings.TrimSpace(cam.Name) != cam.Name || !printable(cam.Name):
			bad(key("name"), "%q cannot be part of an MQTT topic (printable UTF-8 without /, +, # or surrounding spaces)", cam.Name)
		case len(cam.Name) > maxCameraName:
			bad(key("name"), "%d bytes long, over %d (it goes into every topic and metric of the camera)", len(cam.Name), maxCameraName)
		default:
			if j, dup := names[cam.Name]; dup {
				bad(key("name"), "%q is already the name of cameras[%d]", cam.Name, j)
			}
			names[cam.Name] = i
		}
		if cam.Source == "" {
			bad(key("source"), "missing")
		} else if _, _, err := capture.ParseKind(cam.Source); err != nil {
			bad(key("source"), "%v", err)
		}
		if cam.Model == "" {
			bad(key("model"), "missing (set it here or in defaults.model)")
		} else if st, err := os.Stat(cam.Model); err != nil || st.IsDir() {
			bad(key("model"), "bundle %s is not a readable file", cam.Model)
		}
		if cam.ROI != "" {
			if _, err := capture.ParseROI(cam.ROI); err != nil {
				bad(key("roi"), "%v", err)
			}
		}
		if cam.Trigger != nil {
			t := cam.Trigger.withDefaults()
			switch {
			case t.Frames < 1 || t.Frames > 100:
				bad(key("trigger.frames"), "%d: 1 to 100 frames a part", t.Frames)
			case *t.Delay < 0 || *t.Delay > time.Minute:
				bad(key("trigger.delay"), "%s: 0 to 1m", *t.Delay)
			case *t.Deadline <= *t.Delay || *t.Deadline > time.Minute:
				bad(key("trigger.deadline"), "%s: longer than the delay (%s) and at most 1m", *t.Deadline, *t.Delay)
			case t.ReadyWindow != nil && (*t.ReadyWindow < 10*time.Millisecond || *t.ReadyWindow > time.Hour):
				bad(key("trigger.ready_window"), "%s: 10ms to 1h (leave it out for 3 frame intervals)", *t.ReadyWindow)
			}
		}
		if r := deref(cam.Rotate); r != 0 && r != 90 && r != 180 && r != 270 {
			bad(key("rotate"), "%d is not 0, 90, 180 or 270", r)
		}
		if f := deref(cam.FPSLimit); !(f >= 0) || math.IsInf(f, 0) {
			bad(key("fps_limit"), "%g must be a finite number, 0 or more", f)
		}
		// A zero or negative duration silently became the default.
		for _, d := range []struct {
			key   string
			value *time.Duration
		}{{"stall_timeout", cam.StallTimeout}, {"retry_start", cam.RetryStart}, {"retry_max", cam.RetryMax}} {
			if d.value != nil && *d.value <= 0 {
				bad(key(d.key), "%s must be positive", *d.value)
			}
		}
		// Any finite value is a threshold, 0 and below too: scores are
		// negative log-likelihoods, often below zero.
		if t := cam.Threshold; t != nil && (math.IsNaN(*t) || math.IsInf(*t, 0)) {
			bad(key("threshold"), "%g is not a threshold", *t)
		}
		if cam.FourCC != "" && len(cam.FourCC) != 4 {
			bad(key("fourcc"), "%q is not four characters", cam.FourCC)
		}
	}
	m := c.MQTT
	if m.Broker == "" {
		bad("mqtt.broker", "missing (a URL such as tcp://host:1883, or embedded)")
	} else if m.Broker == "embedded" {
		if err := checkHostPort(m.EmbeddedAddress); err != nil {
			bad("mqtt.embedded_address", "%v", err)
		}
	} else if u, err := url.Parse(m.Broker); err != nil || u.Host == "" {
		bad("mqtt.broker", "%q is not a broker URL like tcp://host:1883", redact.URL(m.Broker))
	} else if !map[string]bool{"tcp": true, "mqtt": true, "ssl": true, "tls": true, "mqtts": true, "ws": true, "wss": true}[u.Scheme] {
		bad("mqtt.broker", "unknown scheme %q (tcp, ssl, ws, wss)", u.Scheme)
	} else if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			bad("mqtt.broker", "port %s is not 1 to 65535", p)
		}
	}
	if m.ScoreQoS > 2 {
		bad("mqtt.score_qos", "%d is not 0, 1 or 2", m.ScoreQoS)
	}
	if m.TopicPrefix == "" || strings.ContainsAny(m.TopicPrefix, "+#") || !printable(m.TopicPrefix) || len(m.TopicPrefix) > maxTopicPrefix {
		bad("mqtt.topic_prefix", "%q must be printable UTF-8 of 1 to %d bytes without + or #", m.TopicPrefix, maxTopicPrefix)
	}
	if m.PasswordFile != "" && m.PasswordEnv != "" {
		bad("mqtt.password_file", "set either password_file or password_env, not both")
	}
	if m.PasswordFile != "" {
		if _, err := os.ReadFile(m.PasswordFile); err != nil {
			bad("mqtt.password_file", "%v", err)
		}
	}
	if m.PasswordEnv != "" && os.Getenv(m.PasswordEnv) == "" {
		bad("mqtt.password_env", "environment variable %s is empty or unset", m.PasswordEnv)
	}
	for key, f := range map[string]string{"mqtt.tls.ca_file": m.TLS.CAFile, "mqtt.tls.cert_file": m.TLS.CertFile, "mqtt.tls.key_file": m.TLS.KeyFile} {
		if f != "" {
			if _, err := os.Stat(f); err != nil {
				bad(key, "%v", err)
			}
		}
	}
	if (m.TLS.CertFile == "") != (m.TLS.KeyFile == "") {
		bad("mqtt.tls.cert_file", "cert_file and key_file go together")
	}
	if m.QueueLimit < 1 {
		bad("mqtt.queue_limit", "must be at least 1")
	}
	if m.SnapshotQueueMB < 0 || m.SnapshotQueueMB > 1<<20 {
		bad("mqtt.snapshot_queue_mb", "%d must be 0 (snapshots are not queued) to 1048576", m.SnapshotQueueMB)
	}
	if m.SnapshotSize < 64 {
		bad("mqtt.snapshot_size", "must be at least 64 (pixels)")
	}
	if m.StatsInterval < time.Second {
		bad("mqtt.stats_interval", "must be at least 1s")
	}
	if m.KeepAlive < time.Second || m.KeepAlive > 18*time.Hour || m.KeepAlive%time.Second != 0 {
		bad("mqtt.keepalive", "%s must be whole seconds from 1s to 18h (MQTT counts it in seconds up to 65535)", m.KeepAlive)
	}
	if c.Events.MinFrames < 1 {
		bad("events.min_frames", "must be at least 1")
	}
	if c.Events.EndFrames < 1 {
		bad("events.end_frames", "must be at least 1")
	}
	if c.Events.UpdateInterval < 0 {
		bad("events.update_interval", "%s must not be negative", c.Events.UpdateInterval)
	}
	switch c.Detector.Provider {
	case "auto", "tensorrt", "cuda", "cpu":
	default:
		bad("detector.provider", "%q is not auto, tensorrt, cuda or cpu", c.Detector.Provider)
	}
	switch p := c.Detector.Precision; p {
	case "", "fp32", "fp16":
	case "int8":
		if _, err := detector.Int8Provider(c.Detector.Provider); err != nil {
			bad("detector.precision", "%v", err)
		}
	default:
		bad("detector.precision", "%q is not fp32, fp16 or int8", p)
	}
	if libs := c.Detector.ProviderLibrary; libs != "" {
		for _, l := range strings.Split(libs, ",") {
			if _, err := os.Stat(strings.TrimSpace(l)); err != nil {
				bad("detector.provider_library", "%v", err)
			}
		}
	}
	if err := detector.CheckProviderOptions(c.Detector.CUDAOptions); err != nil {
		bad("detector.cuda_options", "%v", err)
	}
	if err := detector.CheckProviderOptions(c.Detector.TensorRTOptions); err != nil {
		bad("detector.tensorrt_options", "%v", err)
	}
	if c.Detector.Threads < 0 || c.Detector.Threads > ort.MaxThreads {
		bad("detector.threads", "%d must be 0 (one per core) to %d", c.Detector.Threads, ort.MaxThreads)
	}
	if c.Detector.MaxBatch < 1 {
		bad("detector.max_batch", "must be at least 1")
	}
	if c.Detector.BatchWait < 0 || c.Detector.BatchWait > maxBatchWait {
		bad("detector.batch_wait", "%s must be between 0 and %s (it delays every batch that is not full)", c.Detector.BatchWait, maxBatchWait)
	}
	if a := c.Metrics.Address; a != "" && a != "off" {
		if err := checkHostPort(a); err != nil {
			bad("metrics.address", "%v", err)
		}
	}
	if a := c.Modbus.Address; a != "" {
		if err := checkHostPort(a); err != nil {
			bad("modbus.address", "%v", err)
		}
		c.Modbus.Check(bad)
	}
	if c.OPCUA.Address != "" {
		c.OPCUA.Check(bad)
	}
	if c.StateDirectory == "" {
		bad("state_directory", "missing")
	}
	if c.NGImages.MaxMB < 0 {
		bad("ng_images.max_mb", "%d: 0 (keep none) or more", c.NGImages.MaxMB)
	}
	w := c.Web
	if w.Address != "" && w.Address != "off" {
		if err := checkHostPort(w.Address); err != nil {
			bad("web.address", "%v", err)
		}
	}
	if w.PasswordFile != "" {
		if b, err := os.ReadFile(w.PasswordFile); err != nil {
			bad("web.password_file", "%v", err)
		} else if strings.TrimRight(string(b), "\r\n") == "" {
			bad("web.password_file", "%s is empty", w.PasswordFile)
		}
	}
	if a := c.WebAddress(); a != "" && !loopback(a) && w.PasswordFile == "" && !w.Insecure {
		key := "web.address"
		if w.Address == "" {
			key = "web.address (metrics.address)"
		}
		bad(key, "the console would be open to the network at %s without a password: set web.password_file (and web.username), serve it on a loopback address, turn it off (web.address: off), or accept that with web.insecure: true", a)
	}
	return errs
}
