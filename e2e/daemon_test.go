package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"image/jpeg"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

type eventMsg struct {
	Type      string    `json:"type"`
	ID        string    `json:"id"`
	Camera    string    `json:"camera"`
	StartTime time.Time `json:"start_time"`
	PeakScore float64   `json:"peak_score"`
	Region    *struct {
		X, Y, Width, Height int
	} `json:"region"`
}

func events(t *testing.T, msgs []message) []eventMsg {
	t.Helper()
	var out []eventMsg
	for _, m := range msgs {
		var e eventMsg
		if err := json.Unmarshal(m.Payload, &e); err != nil {
			t.Fatalf("event payload %q: %v", m.Payload, err)
		}
		out = append(out, e)
	}
	return out
}

// checkEventSequences asserts new ... end pairs, one event at a time, no
// duplicates, and returns the number of events.
func checkEventSequences(t *testing.T, evs []eventMsg) int {
	t.Helper()
	open, n := "", 0
	seen := map[string]bool{}
	for _, e := range evs {
		key := e.ID + "/" + e.Type
		if e.Type != "update" && seen[key] {
			t.Errorf("duplicate %s", key)
		}
		seen[key] = true
		switch e.Type {
		case "new":
			if open != "" {
				t.Errorf("event %s opened while %s is open", e.ID, open)
			}
			open = e.ID
			n++
		case "update":
			if e.ID != open {
				t.Errorf("update of %s while %q is open", e.ID, open)
			}
		case "end":
			if e.ID != open {
				t.Errorf("end of %s while %q is open", e.ID, open)
			}
			open = ""
		default:
			t.Errorf("unknown event type %q", e.Type)
		}
	}
	if open != "" {
		t.Errorf("event %s never ended", open)
	}
	return n
}

func TestDaemonScoresEventsAndSnapshots(t *testing.T) {
	f := getDaemonFixture(t)
	b := startMosquitto(t, "")
	sub := subscribe(t, b.url(), "transformaly/#", "test-sub-1")
	ha := subscribe(t, b.url(), "homeassistant/#", "test-sub-ha")
	metricsPort := freePort(t)
	d := startDaemon(t, fmt.Sprintf(`
defaults:
  model: %s
  pace: true
cameras:
  - name: line1
    source: %s
  - name: line2
    source: %s
    roi: "0,0,96,96"
mqtt:
  broker: %s
  stats_interval: 1s
  home_assistant: true
metrics:
  address: 127.0.0.1:%d
state_directory: %s
`, f.bundle, f.video, f.video, b.url(), metricsPort, t.TempDir()))

	eventually(t, "both cameras to finish the video", 60*time.Second, func() bool {
		for _, cam := range []string{"line1", "line2"} {
			av := sub.on("transformaly/" + cam + "/availability")
			if len(av) < 2 || string(av[len(av)-1].Payload) != "offline" {
				return false
			}
		}
		return true
	})
	time.Sleep(500 * time.Millisecond) // the last events and snapshot

	if st := sub.on("transformaly/status"); len(st) == 0 || string(st[0].Payload) != "online" || !st[0].Retained && len(st) > 1 {
		t.Errorf("status messages %v, want online first", st)
	}
	for _, cam := range []string{"line1", "line2"} {
		scores := sub.on("transformaly/" + cam + "/score")
		if len(scores) < 100 { // 144 frames, paced: a few may be replaced by newer ones
			t.Errorf("%s: %d scores for a 144-frame video", cam, len(scores))
		}
		var s map[string]any
		if err := json.Unmarshal(scores[0].Payload, &s); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"camera", "frame", "timestamp", "score", "threshold", "anomalous", "ll_pretrained", "ll_student", "patch_score", "region", "inference_ms"} {
			if _, ok := s[k]; !ok {
				t.Errorf("%s score message lacks %q: %s", cam, k, scores[0].Payload)
			}
		}
		if _, err := time.Parse(time.RFC3339Nano, s["timestamp"].(string)); err != nil {
			t.Errorf("timestamp %v is not RFC 3339", s["timestamp"])
		}
		// The worst region lies in the camera's 96x96 frame.
		if r, ok := s["region"].(map[string]any); ok {
			x, y, w, h := r["x"].(float64), r["y"].(float64), r["width"].(float64), r["height"].(float64)
			if x < 0 || y < 0 || w <= 0 || h <= 0 || x+w > 96 || y+h > 96 {
				t.Errorf("%s: region %v outside the 96x96 frame", cam, r)
			}
		}
		evs := events(t, sub.on("transformaly/"+cam+"/event"))
		for _, e := range evs {
			if e.Region == nil || e.Region.Width <= 0 {
				t.Errorf("%s: event %s %s without its peak frame's region", cam, e.ID, e.Type)
			}
		}
		if n := checkEventSequences(t, evs); n != 3 {
			t.Errorf("%s: %d events for 3 defective parts: %+v", cam, n, evs)
		}
		snaps := sub.on("transformaly/" + cam + "/snapshot")
		if len(snaps) != 3 {
			t.Errorf("%s: %d snapshots, want 3", cam, len(snaps))
		}
		// The camera's 96 px frame, enlarged to stay readable.
		for _, s := range snaps {
			img, err := jpeg.DecodeConfig(bytes.NewReader(s.Payload))
			if err != nil || img.Width != 256 || img.Height != 256 {
				t.Errorf("%s: snapshot %dx%d (%v), want a 256x256 JPEG", cam, img.Width, img.Height, err)
			}
		}
	}
	stats := sub.on("transformaly/stats")
	if len(stats) == 0 {
		t.Fatal("no stats published")
	}
	var st struct {
		Version string                    `json:"version"`
		Cameras map[string]map[string]any `json:"cameras"`
	}
	json.Unmarshal(stats[len(stats)-1].Payload, &st)
	if st.Version == "" || len(st.Cameras) != 2 || st.Cameras["line1"]["inference_ms_p50"] == nil {
		t.Errorf("stats %s", stats[len(stats)-1].Payload)
	}
	metrics := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
	for _, want := range []string{`transformaly_frames_scored_total{camera="line1"}`, `transformaly_events_total{camera="line2"} 3`, "transformaly_mqtt_connected 1"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if h := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/healthz", metricsPort)); !strings.Contains(h, "ok") {
		t.Errorf("/healthz: %q", h)
	}
	// Both videos ended: no camera online, so not ready.
	if r := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/readyz", metricsPort)); !strings.Contains(r, "not ready") {
		t.Errorf("/readyz with every camera offline: %q", r)
	}
	for _, topic := range []string{"homeassistant/binary_sensor/transformaly/line1/config", "homeassistant/sensor/transformaly/line2/config",
		"homeassistant/sensor/transformaly/line2_unusual/config"} {
		msgs := ha.on(topic)
		var cfg map[string]any
		if len(msgs) == 0 || !msgs[0].Retained && len(msgs) > 1 || json.Unmarshal(msgs[0].Payload, &cfg) != nil || cfg["state_topic"] == nil {
			t.Errorf("Home Assistant discovery %s: %v", topic, msgs)
		}
	}
	d.stop(t)
	eventually(t, "status stopped", 5*time.Second, func() bool {
		st := sub.on("transformaly/status")
		return string(st[len(st)-1].Payload) == "stopped"
	})
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// writePasswordFile makes a mosquitto password file with mosquitto_passwd.
func writePasswordFile(t *testing.T, path, user, password string) {
	t.Helper()
	tool := filepath.Join(filepath.Dir(mosquittoPath(t)), "mosquitto_passwd")
	if _, err := os.Stat(tool); err != nil {
		tool = "mosquitto_passwd"
	}
	if out, err := exec.Command(tool, "-c", "-b", path, user, password).CombinedOutput(); err != nil {
		t.Fatalf("mosquitto_passwd: %v\n%s", err, out)
	}
}

// testCA makes a CA; sign issues a server certificate for 127.0.0.1 from it.
type testCA struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
	pem  []byte
}

func newTestCA(t *testing.T, name string) testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return testCA{key: key, cert: cert, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca testCA) sign(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "broker"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile
}

func TestLastWillWhenKilled(t *testing.T) {
	f := getDaemonFixture(t)
	b := startMosquitto(t, "")
	sub := subscribe(t, b.url(), "transformaly/status", "test-sub-2")
	d := startDaemon(t, fmt.Sprintf(`
cameras:
  - {name: line1, source: %s, model: %s, loop: true, pace: true}
mqtt: {broker: %s}
metrics: {address: "off"}
state_directory: %s
`, f.loop, f.bundle, b.url(), t.TempDir()))
	eventually(t, "online", 30*time.Second, func() bool {
		st := sub.on("transformaly/status")
		return len(st) > 0 && string(st[len(st)-1].Payload) == "online"
	})
	d.cmd.Process.Signal(syscall.SIGKILL)
	eventually(t, "the Last Will", 10*time.Second, func() bool {
		st := sub.on("transformaly/status")
		return string(st[len(st)-1].Payload) == "offline"
	})
}

func TestEventsSurviveBrokerOutage(t *testing.T) {
	f := getDaemonFixture(t)
	b := startMosquitto(t, "")
	sub := subscribe(t, b.url(), "transformaly/+/event", "test-sub-3")
	state := t.TempDir()
	startDaemon(t, fmt.Sprintf(`
cameras:
  - {name: line1, source: %s, model: %s, loop: true, pace: true}
mqtt: {broker: %s}
metrics: {address: "off"}
state_directory: %s
`, f.loop, f.bundle, b.url(), state))
	// One defect per 36-frame loop at 25 fps: an event every ~1.4 s.
	eventually(t, "a first event", 30*time.Second, func() bool { return len(sub.on("transformaly/line1/event")) >= 2 })
	stopped := time.Now()
	b.stop()
	// While the broker is down, events pile up on disk.
	eventually(t, "events queued on disk", 30*time.Second, func() bool {
		entries, _ := os.ReadDir(filepath.Join(state, "events"))
		return len(entries) >= 4
	})
	before := len(sub.on("transformaly/line1/event"))
	b.start()
	eventually(t, "queued events delivered", 60*time.Second, func() bool {
		entries, _ := os.ReadDir(filepath.Join(state, "events"))
		return len(entries) == 0 && len(sub.on("transformaly/line1/event")) >= before+4
	})
	time.Sleep(300 * time.Millisecond)
	// Events born while the broker was down arrive once each, in order. (One
	// in flight at the moment the broker died may come twice: MQTT QoS 1 is
	// at-least-once when an acknowledgement is lost.)
	var during []eventMsg
	for _, e := range events(t, sub.on("transformaly/line1/event")) {
		if e.StartTime.After(stopped) {
			during = append(during, e)
		}
	}
	last := 0
	for i, e := range during {
		if e.Type == "end" {
			last = i + 1
		}
	}
	if n := checkEventSequences(t, during[:last]); n < 2 {
		t.Errorf("%d complete events born during the outage: %+v", n, during)
	}
}

func TestBrokerAuthAndTLSErrorsAreLoggedAndRetried(t *testing.T) {
	f := getDaemonFixture(t)
	dir := t.TempDir()
	pwFile := filepath.Join(dir, "passwd")
	writePasswordFile(t, pwFile, "inspector", "right")
	// A TLS listener whose certificate comes from a CA the daemon does not
	// trust.
	brokerCA, otherCA := newTestCA(t, "broker CA"), newTestCA(t, "other CA")
	certFile, keyFile := brokerCA.sign(t, dir)
	tlsPort := freePort(t)
	b := startMosquitto(t, fmt.Sprintf("allow_anonymous false\npassword_file %s\nlistener %d 127.0.0.1\ncertfile %s\nkeyfile %s\n", pwFile, tlsPort, certFile, keyFile))
	wrong := filepath.Join(dir, "wrong")
	os.WriteFile(wrong, []byte("wrong\n"), 0o600)
	d := startDaemon(t, fmt.Sprintf(`
cameras:
  - {name: line1, source: %s, model: %s, loop: true}
mqtt: {broker: %s, username: inspector, password_file: %s}
metrics: {address: "off"}
state_directory: %s
`, f.loop, f.bundle, b.url(), wrong, t.TempDir()))
	eventually(t, "two refused attempts", 30*time.Second, func() bool {
		return strings.Count(d.stderr.String(), "refused the username or password") >= 2
	})
	if strings.Contains(d.stderr.String(), "wrong") {
		t.Error("the password appears in the log")
	}

	ca := filepath.Join(dir, "ca.pem")
	os.WriteFile(ca, otherCA.pem, 0o644)
	d2 := startDaemon(t, fmt.Sprintf(`
cameras:
  - {name: line1, source: %s, model: %s, loop: true}
mqtt:
  broker: ssl://127.0.0.1:%d
  tls: {ca_file: %s}
metrics: {address: "off"}
state_directory: %s
`, f.loop, f.bundle, tlsPort, ca, t.TempDir()))
	eventually(t, "a TLS error line", 30*time.Second, func() bool {
		return strings.Contains(d2.stderr.String(), "MQTT connect failed") && strings.Contains(d2.stderr.String(), "TLS")
	})
	// Both keep running (scoring, queueing) instead of crashing.
	for _, x := range []*runningDaemon{d, d2} {
		select {
		case err := <-x.done:
			t.Fatalf("daemon exited: %v", err)
		default:
		}
	}
}

func TestCheckConfigNamesTheKey(t *testing.T) {
	f := getDaemonFixture(t)
	dir := t.TempDir()
	for _, c := range []struct {
		name, config, want string
	}{
		{"no cameras", "mqtt: {broker: embedded}\n", "cameras: no cameras configured"},
		{"unknown key", "cameras: []\nmqtt: {brokr: x}\n", "field brokr not found"},
		{"missing source", fmt.Sprintf("cameras: [{name: a, model: %s}]\n", f.bundle), "cameras[0].source: missing"},
		{"missing file source", fmt.Sprintf("cameras: [{name: a, model: %s, source: /nope.mp4}]\n", f.bundle), "cameras[0].source"},
		{"bad scheme", fmt.Sprintf("cameras: [{name: a, model: %s, source: \"gopher://x\"}]\n", f.bundle), "unknown URL scheme"},
		{"bad roi", fmt.Sprintf("cameras: [{name: a, model: %s, source: %s, roi: \"1,2,3\"}]\n", f.bundle, f.video), "cameras[0].roi"},
		{"duplicate names", fmt.Sprintf("defaults: {model: %s}\ncameras: [{name: a, source: %s}, {name: a, source: %s}]\n", f.bundle, f.video, f.video), "cameras[1].name"},
		{"missing model", fmt.Sprintf("cameras: [{name: a, source: %s, model: /nope.tfy}]\n", f.video), "cameras[0].model"},
		{"bad broker", fmt.Sprintf("cameras: [{name: a, source: %s, model: %s}]\nmqtt: {broker: \"localhost\"}\n", f.video, f.bundle), "mqtt.broker"},
		{"bad qos", fmt.Sprintf("cameras: [{name: a, source: %s, model: %s}]\nmqtt: {score_qos: 3}\n", f.video, f.bundle), "mqtt.score_qos"},
		{"unset password env", fmt.Sprintf("cameras: [{name: a, source: %s, model: %s}]\nmqtt: {password_env: TFY_NOPE_PW}\n", f.video, f.bundle), "mqtt.password_env"},
		{"bad provider", fmt.Sprintf("cameras: [{name: a, source: %s, model: %s}]\ndetector: {provider: tpu}\n", f.video, f.bundle), "detector.provider"},
		{"nan threshold", fmt.Sprintf("cameras: [{name: a, source: %s, model: %s, threshold: .nan}]\n", f.video, f.bundle), "cameras[0].threshold"},
		{"bad cuda option", fmt.Sprintf("cameras: [{name: a, source: %s, model: %s}]\ndetector: {cuda_options: {arena_extend_strategy: same}}\n", f.video, f.bundle), "detector.cuda_options: arena_extend_strategy"},
		{"bad duration", fmt.Sprintf("cameras: [{name: a, source: %s, model: %s, stall_timeout: soon}]\n", f.video, f.bundle), "stall_timeout"},
		{"bad metrics address", fmt.Sprintf("cameras: [{name: a, source: %s, model: %s}]\nmetrics: {address: nine}\n", f.video, f.bundle), "metrics.address"},
		{"bad trigger frames", fmt.Sprintf("cameras: [{name: a, source: %s, model: %s, trigger: {frames: 101}}]\n", f.video, f.bundle), "cameras[0].trigger.frames"},
		{"bad trigger deadline", fmt.Sprintf("cameras: [{name: a, source: %s, model: %s, trigger: {delay: 1s, deadline: 500ms}}]\n", f.video, f.bundle), "cameras[0].trigger.deadline"},
		{"bad modbus address", fmt.Sprintf("cameras: [{name: a, source: %s, model: %s}]\nmodbus: {address: \"502\"}\n", f.video, f.bundle), "modbus.address"},
		{"negative ng_images cap", fmt.Sprintf("cameras: [{name: a, source: %s, model: %s}]\nng_images: {max_mb: -1}\n", f.video, f.bundle), "ng_images.max_mb"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".yaml")
			os.WriteFile(path, []byte(c.config), 0o644)
			r := runBinary(t, nil, "run", "--check-config", "--config", path)
			if r.code == 0 || !strings.Contains(r.stderr, c.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant %q", r.code, r.stderr, c.want)
			}
		})
	}
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte(fmt.Sprintf("cameras: [{name: a, source: %s, model: %s}]\nmqtt: {broker: embedded}\n"+
		"detector: {cuda_options: {device_id: 0, gpu_mem_limit: 8589934592}, tensorrt_options: {trt_builder_optimization_level: 3}}\n", f.video, f.bundle)), 0o644)
	if r := runBinary(t, nil, "run", "--check-config", "--config", good); r.code != 0 {
		t.Errorf("a good config failed: %s", r.stderr)
	}
	// A camera that is unplugged now is valid, with a note.
	unplugged := filepath.Join(dir, "unplugged.yaml")
	os.WriteFile(unplugged, []byte(fmt.Sprintf("cameras: [{name: a, source: /dev/video97, model: %s}]\n", f.bundle)), 0o644)
	if r := runBinary(t, nil, "run", "--check-config", "--config", unplugged); r.code != 0 || !strings.Contains(r.stdout, "/dev/video97 is not there now") {
		t.Errorf("an unplugged camera: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}

// TestSystemdNotifyAndReload plays systemd: a datagram NOTIFY_SOCKET and a
// watchdog interval, then SIGHUP with a changed config, then SIGTERM.
func TestSystemdNotifyAndReload(t *testing.T) {
	f := getDaemonFixture(t)
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var notes lockedBuffer
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			notes.Write(append(buf[:n:n], '\n'))
		}
	}()
	port, state := freePort(t), t.TempDir()
	config := func(threshold string) string {
		return fmt.Sprintf(`
cameras:
  - {name: line1, source: %s, model: %s, loop: true, pace: true%s}
mqtt: {broker: embedded, embedded_address: "127.0.0.1:%d"}
metrics: {address: "off"}
state_directory: %s
`, f.loop, f.bundle, threshold, port, state)
	}
	d := startDaemon(t, config(""), "NOTIFY_SOCKET="+sock, "WATCHDOG_USEC=400000")
	eventually(t, "READY=1", 30*time.Second, func() bool { return strings.Contains(notes.String(), "READY=1") })
	eventually(t, "WATCHDOG=1", 10*time.Second, func() bool { return strings.Contains(notes.String(), "WATCHDOG=1") })

	// Reload with a new threshold: the daemon warms the bundle again and
	// swaps the pipeline.
	cfgPath := d.cmd.Args[len(d.cmd.Args)-1]
	os.WriteFile(cfgPath, []byte(config(", threshold: 12345")), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, "reloaded", 30*time.Second, func() bool { return strings.Contains(d.stderr.String(), "msg=reloaded") })
	if !strings.Contains(notes.String(), "RELOADING=1") {
		t.Error("no RELOADING=1 around the reload")
	}
	// A broken config on reload keeps the running one.
	os.WriteFile(cfgPath, []byte("cameras: [{name: x}]\n"), 0o644)
	d.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, "reload refused", 30*time.Second, func() bool { return strings.Contains(d.stderr.String(), "reload refused") })

	d.stop(t)
	if !strings.Contains(notes.String(), "STOPPING=1") {
		t.Errorf("no STOPPING=1; notifications:\n%s", notes.String())
	}
}

// TestReloadsLeakNothing reloads a running daemon again and again, with a
// camera scoring a looping video and one whose stream never answers (so
// its capture keeps retrying): goroutines and resident memory, as its own
// /metrics reports them, stay where the first reloads left them.
func TestReloadsLeakNothing(t *testing.T) {
	f := getDaemonFixture(t)
	brokerPort, metricsPort, state := freePort(t), freePort(t), t.TempDir()
	d := startDaemon(t, fmt.Sprintf(`
cameras:
  - {name: line1, source: %s, model: %s, loop: true, pace: true}
  - {name: gone, source: "rtsp://127.0.0.1:%d/none", model: %s, retry_start: 100ms, retry_max: 200ms}
mqtt: {broker: embedded, embedded_address: "127.0.0.1:%d"}
metrics: {address: "127.0.0.1:%d"}
state_directory: %s
`, f.loop, f.bundle, freePort(t), f.bundle, brokerPort, metricsPort, state))
	metric := func(name string) float64 {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort))
		if err != nil {
			return -1
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		for _, line := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(line, name+" "); ok {
				x, _ := strconv.ParseFloat(v, 64)
				return x
			}
		}
		return -1
	}
	// The metrics come up before the bundles are loaded, so the first
	// SIGHUP lands during startup: it must wait to be a reload, not end
	// the process (SIGHUP's default action).
	eventually(t, "metrics", 30*time.Second, func() bool { return metric("go_goroutines") > 0 })
	reload := func(n int) {
		d.cmd.Process.Signal(syscall.SIGHUP)
		eventually(t, fmt.Sprintf("reload %d", n), 30*time.Second, func() bool {
			return strings.Count(d.stderr.String(), "msg=reloaded") >= n
		})
		time.Sleep(300 * time.Millisecond) // the old pipeline winds down
	}
	for n := 1; n <= 3; n++ {
		reload(n)
	}
	goroutines, rss := metric("go_goroutines"), metric("process_resident_memory_bytes")
	for n := 4; n <= 12; n++ {
		reload(n)
	}
	t.Logf("after 3 reloads: %v goroutines, %.0f MB resident; after 12: %v, %.0f MB",
		goroutines, rss/(1<<20), metric("go_goroutines"), metric("process_resident_memory_bytes")/(1<<20))
	if g := metric("go_goroutines"); g > goroutines+5 {
		t.Errorf("goroutines grew from %v to %v over 9 reloads", goroutines, g)
	}
	if r := metric("process_resident_memory_bytes"); r > rss+64<<20 {
		t.Errorf("resident memory grew from %.0f MB to %.0f MB over 9 reloads", rss/(1<<20), r/(1<<20))
	}
	d.stop(t)
}

// A stop asked for while the bundles load ends the daemon cleanly before
// the next bundle, rather than after loading them all.
func TestStopWhileLoadingBundles(t *testing.T) {
	f := getDaemonFixture(t)
	dir := t.TempDir()
	var cameras strings.Builder
	data, err := os.ReadFile(f.bundle)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		bundle := filepath.Join(dir, fmt.Sprintf("line%d.tfy", i))
		if err := os.WriteFile(bundle, data, 0o644); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&cameras, "  - {name: line%d, source: %s, model: %s, loop: true, pace: true}\n", i, f.loop, bundle)
	}
	d := startDaemon(t, fmt.Sprintf("cameras:\n%smqtt: {broker: embedded, embedded_address: \"127.0.0.1:%d\"}\nmetrics: {address: \"off\"}\nstate_directory: %s\n",
		cameras.String(), freePort(t), filepath.Join(dir, "state")))
	eventually(t, "the first bundle loaded", 30*time.Second, func() bool { return strings.Contains(d.stderr.String(), "msg=\"model loaded\"") })
	d.stop(t)
	if log := d.stderr.String(); !strings.Contains(log, "stopped before running") || strings.Count(log, "msg=\"model loaded\"") == 20 {
		t.Errorf("the daemon loaded %d of 20 bundles after SIGTERM and did not say it stopped before running:\n%s", strings.Count(log, "msg=\"model loaded\""), log)
	}
}
