package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	mb "github.com/simonvetter/modbus"

	"github.com/transformaly/transformaly/internal/synth"
	"github.com/transformaly/transformaly/modbus"
)

// MQTT control, Frigate's way, against real mosquitto: detect/set OFF stops
// a camera's score messages (ON resumes them), threshold/set changes the
// threshold it is judged by and survives a restart, states are retained,
// bad payloads are ignored without a crash, and the commands still work
// after the broker restarts (the subscriptions are renewed).
func TestMQTTControl(t *testing.T) {
	f := getDaemonFixture(t)
	b := startMosquitto(t, "")
	sub := subscribe(t, b.url(), "transformaly/#", "test-sub-control")
	cmd := subscribe(t, b.url(), "nothing/#", "test-commander") // a client to publish with
	send := func(topic, payload string) {
		t.Helper()
		if tok := cmd.client.Publish(topic, 1, false, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %s: %v", topic, tok.Error())
		}
	}
	state := t.TempDir()
	config := fmt.Sprintf(`
cameras:
  - {name: line1, source: %s, model: %s, loop: true, pace: true}
mqtt: {broker: %s}
metrics: {address: "off"}
state_directory: %s
`, f.loop, f.bundle, b.url(), state)
	d := startDaemon(t, config)
	scores := func() int { return len(sub.on("transformaly/line1/score")) }
	last := func(topic string) string {
		m := sub.on(topic)
		if len(m) == 0 {
			return ""
		}
		return string(m[len(m)-1].Payload)
	}
	eventually(t, "scores", 30*time.Second, func() bool { return scores() > 5 })
	eventually(t, "detect state ON", 10*time.Second, func() bool { return last("transformaly/line1/detect/state") == "ON" })

	send("transformaly/line1/detect/set", "OFF")
	eventually(t, "detect state OFF", 10*time.Second, func() bool { return last("transformaly/line1/detect/state") == "OFF" })
	time.Sleep(500 * time.Millisecond) // frames already in the detector
	n := scores()
	time.Sleep(time.Second)
	if got := scores(); got != n {
		t.Errorf("%d score messages in the second after detect OFF", got-n)
	}
	send("transformaly/line1/detect/set", "ON")
	eventually(t, "scores again after ON", 10*time.Second, func() bool { return scores() > n+5 })

	// One client's commands apply in the order it published them: ON then
	// OFF back to back end OFF, 20 times out of 20 (paho ran each message
	// on its own goroutine: ON won 13 of 20 times on a loaded machine),
	// and the retained state follows every step.
	burst := func(topic string, payloads ...string) {
		t.Helper()
		toks := make([]mqtt.Token, len(payloads))
		for i, p := range payloads {
			toks[i] = cmd.client.Publish(topic, 1, false, p)
		}
		for _, tok := range toks {
			if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
				t.Fatalf("publish %s: %v", topic, tok.Error())
			}
		}
	}
	states := func(topic string, from int) []string {
		var out []string
		for _, m := range sub.on(topic)[from:] {
			out = append(out, string(m.Payload))
		}
		return out
	}
	for round := range 20 {
		from := len(sub.on("transformaly/line1/detect/state"))
		burst("transformaly/line1/detect/set", "ON", "OFF")
		eventually(t, "two detect states", 10*time.Second, func() bool { return len(states("transformaly/line1/detect/state", from)) >= 2 })
		if got := states("transformaly/line1/detect/state", from); got[0] != "ON" || got[len(got)-1] != "OFF" {
			t.Fatalf("round %d: ON then OFF gave the states %v", round, got)
		}
	}
	from := len(sub.on("transformaly/line1/threshold/state"))
	var thresholds []string
	for i := 1; i <= 50; i++ {
		thresholds = append(thresholds, fmt.Sprint(i))
	}
	burst("transformaly/line1/threshold/set", thresholds...)
	eventually(t, "50 threshold states", 10*time.Second, func() bool { return len(states("transformaly/line1/threshold/state", from)) >= 50 })
	got := states("transformaly/line1/threshold/state", from)
	// Each change publishes both states: the last detect command's
	// threshold state (the bundle's) may arrive after from was counted.
	for len(got) > 50 && got[0] != "1" {
		got = got[1:]
	}
	if strings.Join(got, ",") != strings.Join(thresholds, ",") {
		t.Errorf("thresholds 1..50 published back to back gave the states %v", got)
	}
	send("transformaly/line1/detect/set", "on ")
	eventually(t, "scores judged by the last threshold of the burst", 10*time.Second, func() bool {
		var s struct{ Threshold float64 }
		json.Unmarshal([]byte(last("transformaly/line1/score")), &s)
		return s.Threshold == 50
	})

	// Bad payloads are ignored; the daemon carries on.
	send("transformaly/line1/threshold/set", "banana")
	send("transformaly/line1/threshold/set", "0x1p4")
	send("transformaly/line1/detect/set", "MAYBE")
	send("transformaly/nocam/threshold/set", "5")
	send("transformaly/line1/threshold/set", "1e9")
	eventually(t, "threshold state 1e9", 10*time.Second, func() bool { return last("transformaly/line1/threshold/state") == "1e+09" })
	eventually(t, "scores judged by the new threshold", 10*time.Second, func() bool {
		var s struct{ Threshold float64 }
		json.Unmarshal([]byte(last("transformaly/line1/score")), &s)
		return s.Threshold == 1e9
	})
	log := d.stderr.String()
	for _, want := range []string{"not a decimal number", "not ON or OFF", "unknown camera"} {
		if !strings.Contains(log, want) {
			t.Errorf("no log line about a bad command (%q)", want)
		}
	}

	// After the broker restarts, commands still arrive.
	b.stop()
	b.start()
	eventually(t, "scores after the broker restart", 30*time.Second, func() bool {
		var s struct{ Threshold float64 }
		json.Unmarshal([]byte(last("transformaly/line1/score")), &s)
		return s.Threshold == 1e9 && scores() > n+20
	})
	send("transformaly/line1/threshold/set", "2e9")
	eventually(t, "a command after the broker restart", 15*time.Second, func() bool { return last("transformaly/line1/threshold/state") == "2e+09" })

	// The threshold survives a restart of the daemon; reset returns to the bundle's.
	d.stop(t)
	if data, err := os.ReadFile(filepath.Join(state, "control.json")); err != nil || !strings.Contains(string(data), "2000000000") {
		t.Errorf("control.json: %s, %v", data, err)
	}
	before := scores()
	startDaemon(t, config)
	eventually(t, "scores after the restart", 30*time.Second, func() bool { return scores() > before+3 })
	var s struct{ Threshold float64 }
	json.Unmarshal([]byte(last("transformaly/line1/score")), &s)
	if s.Threshold != 2e9 {
		t.Errorf("threshold %g after a restart, want the 2e9 set over MQTT", s.Threshold)
	}
	send("transformaly/line1/threshold/set", "reset")
	eventually(t, "the bundle's threshold after reset", 10*time.Second, func() bool {
		var s struct{ Threshold float64 }
		json.Unmarshal([]byte(last("transformaly/line1/score")), &s)
		return s.Threshold != 2e9 && s.Threshold != 0
	})
}

// Triggered inspection: a camera with trigger: judges parts, not its stream.
// A trigger over MQTT (the part id as payload) and one over HTTP (POST
// /trigger/<camera>) each get one result on <prefix>/<camera>/result with
// the part id, a verdict and the latency; a camera whose frames stopped
// answers "error" at the deadline (fail-safe).
func TestTriggeredInspection(t *testing.T) {
	f := getDaemonFixture(t)
	b := startMosquitto(t, "")
	sub := subscribe(t, b.url(), "transformaly/#", "test-sub-trigger")
	cmd := subscribe(t, b.url(), "nothing/#", "test-trigger-sender")
	port, modbusPort := freePort(t), freePort(t)
	folder := t.TempDir()
	if _, err := synth.WriteParts(folder, 96, synth.Normal, 2, 9); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, fmt.Sprintf(`
cameras:
  - {name: line1, source: %s, model: %s, loop: true, pace: true, trigger: {frames: 2, deadline: 2s}}
  - {name: ended, source: %s, model: %s, trigger: {deadline: 300ms}}
mqtt: {broker: %s}
metrics: {address: "127.0.0.1:%d"}
modbus: {address: "127.0.0.1:%d"}
state_directory: %s
`, f.loop, f.bundle, folder, f.bundle, b.url(), port, modbusPort, t.TempDir()))
	eventually(t, "running", 30*time.Second, func() bool {
		resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/trigger/line1", port), "text/plain", strings.NewReader("warm-up"))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusAccepted
	})
	// Parts are judged once the camera delivers frames (Ready); before,
	// they are answered error at once.
	eventually(t, "line1 online", 30*time.Second, func() bool {
		av := sub.on("transformaly/line1/availability")
		return len(av) > 0 && string(av[len(av)-1].Payload) == "online"
	})
	find := sub.partResult
	if tok := cmd.client.Publish("transformaly/line1/trigger", 1, false, "part-7"); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	eventually(t, "the result of part-7", 10*time.Second, func() bool { return find("part-7") != nil })
	r := find("part-7")
	if v := r["verdict"]; v != "ok" && v != "ng" {
		t.Errorf("part-7: verdict %v (%v), want ok or ng", v, r["reason"])
	}
	if r["frames"] != 2.0 || r["score"] == nil || r["latency_ms"].(float64) > 2000 {
		t.Errorf("part-7 result %v: want 2 frames, a score, within the deadline", r)
	}
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/trigger/line1", port), "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	var accepted struct {
		PartID string `json:"part_id"`
	}
	json.NewDecoder(resp.Body).Decode(&accepted)
	resp.Body.Close()
	eventually(t, "the result of the HTTP trigger", 10*time.Second, func() bool { return accepted.PartID != "" && find(accepted.PartID) != nil })

	// The folder camera has ended: it is not Ready, and a part is an
	// error at once, not at the deadline.
	eventually(t, "the ended camera offline", 10*time.Second, func() bool {
		av := sub.on("transformaly/ended/availability")
		return len(av) > 0 && string(av[len(av)-1].Payload) == "offline"
	})
	resp, err = http.Post(fmt.Sprintf("http://127.0.0.1:%d/trigger/ended", port), "text/plain", strings.NewReader("late"))
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("trigger on the ended camera: %v %v", resp.Status, err)
	}
	resp.Body.Close()
	eventually(t, "an error at once", 5*time.Second, func() bool {
		m := sub.on("transformaly/ended/result")
		return len(m) == 1 && strings.Contains(string(m[0].Payload), `"verdict":"error"`) && strings.Contains(string(m[0].Payload), "not ready: the camera is offline")
	})
	// The PLC's way: a rising edge on line1's Trigger coil, the result in
	// its registers (a real Modbus TCP client).
	plc, err := mb.NewClient(&mb.ClientConfiguration{URL: fmt.Sprintf("tcp://127.0.0.1:%d", modbusPort), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := plc.Open(); err != nil {
		t.Fatal(err)
	}
	defer plc.Close()
	if ready, err := plc.ReadDiscreteInput(modbus.InputReady); err != nil || !ready {
		t.Errorf("line1 Ready: %v (%v)", ready, err)
	}
	counter := func() uint16 {
		r, err := plc.ReadRegisters(modbus.RegisterResultCounter, 1, mb.INPUT_REGISTER)
		if err != nil {
			t.Fatal(err)
		}
		return r[0]
	}
	before := counter()
	valid, _ := plc.ReadDiscreteInput(modbus.InputResultValid)
	plc.WriteUint32(modbus.HoldingPartID, 31337)
	plc.WriteCoil(modbus.CoilTrigger, false)
	if err := plc.WriteCoil(modbus.CoilTrigger, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a result in the registers", 10*time.Second, func() bool { return counter() == before+1 })
	bits, _ := plc.ReadDiscreteInputs(0, 6)
	if bits[modbus.InputResultValid] == valid || bits[modbus.InputOK] == bits[modbus.InputNG] || bits[modbus.InputError] {
		t.Errorf("bits after the Modbus-triggered part: %v (Valid was %v)", bits, valid)
	}
	if id, _ := plc.ReadUint32(modbus.RegisterPartID, mb.INPUT_REGISTER); id != 31337 {
		t.Errorf("part id %d in the registers, want 31337", id)
	}
	// The registers change as the result is published: its MQTT message
	// reaches the subscriber a moment later (on a loaded machine, after
	// this test first looked).
	eventually(t, "part 31337's MQTT result", 5*time.Second, func() bool { return find("31337") != nil })

	// Unknown cameras and untriggered ones are refused.
	resp, _ = http.Post(fmt.Sprintf("http://127.0.0.1:%d/trigger/nocam", port), "text/plain", nil)
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("trigger on an unknown camera: %s", resp.Status)
	}
	resp.Body.Close()
}
