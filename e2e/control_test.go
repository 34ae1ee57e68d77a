package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

	// Bad payloads are ignored; the daemon carries on.
	send("transformaly/line1/threshold/set", "banana")
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
	for _, want := range []string{"not a finite number or reset", "not ON or OFF", "unknown camera"} {
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
