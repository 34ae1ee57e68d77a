package e2e

import (
	"bytes"
	"fmt"
	"image/jpeg"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/transformaly/transformaly/internal/synth"
	"github.com/transformaly/transformaly/modbus"
)

// pausableStream serves an MJPEG stream of a normal part at 10 frames/s
// that goes silent, connection held open, while paused: a camera whose
// network or trigger wiring stalls without closing anything.
type pausableStream struct {
	*httptest.Server
	paused atomic.Bool
}

func newPausableStream(t *testing.T) *pausableStream {
	t.Helper()
	var frame bytes.Buffer
	if err := jpeg.Encode(&frame, synth.Part(96, synth.Normal, 3), &jpeg.Options{Quality: 90}); err != nil {
		t.Fatal(err)
	}
	s := &pausableStream{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "multipart/x-mixed-replace; boundary=frame")
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-r.Context().Done():
				return
			case <-tick.C:
			}
			if s.paused.Load() {
				continue
			}
			fmt.Fprintf(w, "--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n", frame.Len())
			w.Write(frame.Bytes())
			w.Write([]byte("\r\n"))
			w.(http.Flusher).Flush()
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// A PLC always gets in, and Ready tells the truth: when a stream stops sending (connection open, so
// the 60 s stall timeout is far off), Ready drops within the ready window
// (3 frame intervals at 10 frames/s, at least 500 ms) and a trigger gets Error at
// once, with the reason in the MQTT result, not after its 2 s deadline;
// with frames back, Ready rises and parts are judged again. It stayed 1
// for the stall timeout (20 s by default) before.
func TestReadyFollowsTheFrames(t *testing.T) {
	f := getDaemonFixture(t)
	stream := newPausableStream(t)
	b := startMosquitto(t, "")
	sub := subscribe(t, b.url(), "transformaly/line1/result", "test-sub-ready")
	cmd := subscribe(t, b.url(), "nothing/#", "test-ready-sender")
	modbusPort := freePort(t)
	config := fmt.Sprintf(`
cameras:
  - {name: line1, source: %s/stream.mjpg, model: %s, stall_timeout: 60s, trigger: {frames: 1, deadline: 2s}}
mqtt: {broker: %s}
metrics: {address: "off"}
modbus: {address: "127.0.0.1:%d", max_clients: 2, allowed_clients: [127.0.0.1/32]}
state_directory: %s
`, stream.URL, f.bundle, b.url(), modbusPort, t.TempDir())
	d := startDaemon(t, config)

	// The PLC gets in with max_clients idle connections held open (the
	// rebooted PLC's old sockets), and is served at once; a client from
	// another address is refused.
	modbusAddr := fmt.Sprintf("127.0.0.1:%d", modbusPort)
	eventually(t, "the Modbus port", 30*time.Second, func() bool {
		c, err := net.Dial("tcp", modbusAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	for range 2 {
		c, err := net.Dial("tcp", modbusAddr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	start := time.Now()
	plc, counter := connectPLC(t, modbusPort)
	if took := time.Since(start); took > time.Second {
		t.Errorf("the PLC was served %s after connecting with 2 idle connections held, want within 1 s", took)
	}
	before := counter()
	plc.WriteCoil(modbus.CoilTrigger, false)
	if err := plc.WriteCoil(modbus.CoilTrigger, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a part judged over Modbus", 10*time.Second, func() bool { return counter() == before+1 })
	foreign, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).Dial("tcp", modbusAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	foreign.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := foreign.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("a client from 127.0.0.2, outside allowed_clients: %v, want the connection closed", err)
	}
	eventually(t, "the refusal in the daemon's log", 5*time.Second, func() bool {
		return strings.Contains(d.stderr.String(), "not in modbus.allowed_clients")
	})

	ready := func() bool {
		r, err := plc.ReadDiscreteInput(modbus.InputReady)
		if err != nil {
			t.Fatalf("read Ready: %v", err)
		}
		return r
	}
	result := sub.partResult
	judge := func(id string) map[string]any {
		t.Helper()
		if tok := cmd.client.Publish("transformaly/line1/trigger", 1, false, id); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatal(tok.Error())
		}
		eventually(t, "the result of "+id, 10*time.Second, func() bool { return result(id) != nil })
		return result(id)
	}
	if r := judge("before"); r["verdict"] != "ok" && r["verdict"] != "ng" {
		t.Errorf("a part while frames arrive: %v", r)
	}

	stream.paused.Store(true)
	paused := time.Now()
	eventually(t, "Ready to drop", 5*time.Second, func() bool { return !ready() })
	// The window is 500 ms; reading the bit every 20 ms over a loaded
	// machine's frame decoding adds a little.
	if took := time.Since(paused); took > 1500*time.Millisecond {
		t.Errorf("Ready dropped %s after the last frame, want within about 500 ms", took.Round(10*time.Millisecond))
	}
	r := judge("during")
	if r["verdict"] != "error" || r["latency_ms"].(float64) > 500 {
		t.Errorf("a part while no frame comes: %v; want error at once", r)
	}
	if reason, _ := r["reason"].(string); len(reason) < 9 || reason[:9] != "not ready" {
		t.Errorf("reason %q, want it to say the camera is not ready", reason)
	}

	stream.paused.Store(false)
	eventually(t, "Ready to rise with the frames", 5*time.Second, ready)
	if r := judge("after"); r["verdict"] != "ok" && r["verdict"] != "ng" {
		t.Errorf("a part after the frames came back: %v", r)
	}
}
