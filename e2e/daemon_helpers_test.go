package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/transformaly/transformaly/internal/synth"
)

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// mosquittoBroker is a real mosquitto started by a test.
type mosquittoBroker struct {
	t    *testing.T
	port int
	conf string
	cmd  *exec.Cmd
	log  *lockedBuffer
}

func mosquittoPath(t testing.TB) string {
	for _, p := range []string{"/usr/sbin/mosquitto", "/usr/bin/mosquitto"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("mosquitto"); err == nil {
		return p
	}
	t.Fatal("mosquitto is not installed (make deps installs it)")
	return ""
}

// startMosquitto runs mosquitto on a free port with persistence in a
// temporary folder; extra is appended to its configuration.
func startMosquitto(t *testing.T, extra string) *mosquittoBroker {
	t.Helper()
	dir := t.TempDir()
	b := &mosquittoBroker{t: t, port: freePort(t), conf: filepath.Join(dir, "mosquitto.conf"), log: &lockedBuffer{}}
	conf := fmt.Sprintf("listener %d 127.0.0.1\npersistence true\npersistence_location %s/\n%s\n", b.port, dir, extra)
	if !strings.Contains(extra, "allow_anonymous") {
		conf += "allow_anonymous true\n"
	}
	if os.Geteuid() == 0 {
		// mosquitto drops root for its own user, who cannot read the test's
		// temporary files.
		conf += "user root\n"
	}
	if err := os.WriteFile(b.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	b.start()
	t.Cleanup(b.stop)
	return b
}

func (b *mosquittoBroker) url() string { return fmt.Sprintf("tcp://127.0.0.1:%d", b.port) }

func (b *mosquittoBroker) start() {
	b.t.Helper()
	b.cmd = exec.Command(mosquittoPath(b.t), "-c", b.conf)
	b.cmd.Stdout, b.cmd.Stderr = b.log, b.log
	if err := b.cmd.Start(); err != nil {
		b.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", b.port))
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("mosquitto did not start: %s", b.log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *mosquittoBroker) stop() {
	if b.cmd == nil || b.cmd.Process == nil {
		return
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	b.cmd.Wait()
	b.cmd = nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// message is one received MQTT message.
type message struct {
	Topic    string
	Payload  []byte
	Retained bool
}

// subscriber records everything under a topic filter, in arrival order.
// With a client id and clean=false, its QoS 1 session survives its own and
// the broker's restarts (mosquitto persistence keeps it).
type subscriber struct {
	mu     sync.Mutex
	msgs   []message
	client mqtt.Client
}

func subscribe(t testing.TB, brokerURL, filter, clientID string) *subscriber {
	t.Helper()
	s := &subscriber{}
	opts := mqtt.NewClientOptions().AddBroker(brokerURL).SetClientID(clientID).SetCleanSession(false).
		SetAutoReconnect(true).SetMaxReconnectInterval(500 * time.Millisecond).SetConnectRetry(true).
		SetConnectRetryInterval(200 * time.Millisecond).
		SetOnConnectHandler(func(c mqtt.Client) {
			c.Subscribe(filter, 1, func(_ mqtt.Client, m mqtt.Message) {
				s.mu.Lock()
				s.msgs = append(s.msgs, message{m.Topic(), append([]byte(nil), m.Payload()...), m.Retained()})
				s.mu.Unlock()
			}).Wait()
		})
	s.client = mqtt.NewClient(opts)
	if tok := s.client.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	t.Cleanup(func() { s.client.Disconnect(100) })
	time.Sleep(100 * time.Millisecond) // let the subscription settle
	return s
}

// partResult is the result message of a part on camera line1 (nil: none
// yet).
func (s *subscriber) partResult(part string) map[string]any {
	for _, m := range s.on("transformaly/line1/result") {
		var r map[string]any
		json.Unmarshal(m.Payload, &r)
		if r["part_id"] == part {
			return r
		}
	}
	return nil
}

// on returns the messages of one topic so far.
func (s *subscriber) on(topic string) []message {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []message
	for _, m := range s.msgs {
		if m.Topic == topic {
			out = append(out, m)
		}
	}
	return out
}

// daemonFixture is a fitted bundle and inspection videos for daemon tests,
// made once per test binary.
type daemonFixture struct {
	bundle string
	video  string // 3 defects among normal parts, 6 frames per part
	loop   string // a shorter video with one defect, for looping
}

var (
	fixtureOnce sync.Once
	fixture     daemonFixture
	fixtureErr  error
	fixtureDir  string
)

// defectVideoKinds: 24 parts with gross defects at parts 5, 12 and 19.
func defectVideoKinds() []string {
	kinds := make([]string, 24)
	for i := range kinds {
		kinds[i] = synth.Normal
	}
	kinds[5], kinds[12], kinds[19] = synth.Missing, synth.Recolored, synth.Missing
	return kinds
}

func getDaemonFixture(t testing.TB) daemonFixture {
	t.Helper()
	fixtureOnce.Do(func() {
		fixtureDir, fixtureErr = os.MkdirTemp("", "transformaly-daemon-e2e-")
		if fixtureErr != nil {
			return
		}
		teacher := filepath.Join(fixtureDir, "vit.safetensors")
		normal := filepath.Join(fixtureDir, "normal")
		if _, fixtureErr = synth.WriteParts(normal, 48, synth.Normal, 160, 1); fixtureErr != nil {
			return
		}
		fixture.bundle = filepath.Join(fixtureDir, "line.tfy")
		for _, args := range [][]string{
			{"random-vit", "--dim", "64", "--depth", "4", "--heads", "4", "--patch", "8", "--image-size", "48", "--out", teacher},
			{"fit", "--teacher", teacher, "--normal", normal, "--out", fixture.bundle, "--epochs", "8", "--batch-size", "16", "--val-fraction", "0.2"},
		} {
			out, err := exec.Command(binary, args...).CombinedOutput()
			if err != nil {
				fixtureErr = fmt.Errorf("%v: %v\n%s", args, err, out)
				return
			}
		}
		fixture.video = filepath.Join(fixtureDir, "line.avi")
		if fixtureErr = synth.WriteVideo(fixture.video, 96, 25, defectVideoKinds(), 6, 3); fixtureErr != nil {
			return
		}
		fixture.loop = filepath.Join(fixtureDir, "loop.avi")
		fixtureErr = synth.WriteVideo(fixture.loop, 96, 25, []string{synth.Normal, synth.Normal, synth.Normal, synth.Missing, synth.Normal, synth.Normal}, 6, 4)
	})
	if fixtureErr != nil {
		t.Fatal(fixtureErr)
	}
	return fixture
}

// runningDaemon is a transformaly run process.
type runningDaemon struct {
	cmd    *exec.Cmd
	stderr *lockedBuffer
	done   chan error
}

func startDaemon(t testing.TB, config string, env ...string) *runningDaemon {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	d := &runningDaemon{cmd: exec.Command(binary, "run", "--config", path), stderr: &lockedBuffer{}, done: make(chan error, 1)}
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.Stderr = d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.done
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.stderr.String())
		}
	})
	return d
}

// stop sends SIGTERM and waits for a clean exit.
func (d *runningDaemon) stop(t testing.TB) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		d.done <- err
		if err != nil {
			t.Errorf("daemon exited with %v after SIGTERM", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("daemon did not stop within 30 s of SIGTERM")
	}
}

func eventually(t testing.TB, what string, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
