package mqtt_test

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	dto "github.com/prometheus/client_model/go"

	"github.com/transformaly/transformaly/internal/guard"
	"github.com/transformaly/transformaly/mqtt"
	"github.com/transformaly/transformaly/mqtt/mqtttest"
)

func TestParseThresholdIsStrictDecimal(t *testing.T) {
	for _, c := range []struct {
		payload string
		want    float64 // NaN: refused
	}{
		{"12.5", 12.5}, {" -3 \n", -3}, {"1e3", 1000}, {"+.5", 0.5}, {"7.", 7}, {"0", 0}, {"0.000e5", 0}, {"-2.5E-3", -0.0025},
		{"0x1p4", math.NaN()}, {"1_000", math.NaN()}, {"1e-400", math.NaN()}, {"-1e400", math.NaN()}, {"1e309", math.NaN()},
		{"Inf", math.NaN()}, {"NaN", math.NaN()}, {"", math.NaN()}, {"1,5", math.NaN()}, {"12 5", math.NaN()}, {"e5", math.NaN()}, {".", math.NaN()},
	} {
		got, err := mqtt.ParseThreshold([]byte(c.payload))
		switch {
		case math.IsNaN(c.want) && err == nil:
			t.Errorf("%q read as %v, want refused", c.payload, *got)
		case !math.IsNaN(c.want) && (err != nil || got == nil || *got != c.want):
			t.Errorf("%q: %v %v, want %g", c.payload, got, err, c.want)
		}
	}
	for _, reset := range []string{"reset", " RESET "} {
		if got, err := mqtt.ParseThreshold([]byte(reset)); got != nil || err != nil {
			t.Errorf("%q: %v %v, want a reset", reset, got, err)
		}
	}
}

func TestParseDetect(t *testing.T) {
	for payload, want := range map[string]any{"ON": true, " off\n": false, "On": true, "1": nil, "ONN": nil, "": nil} {
		got, err := mqtt.ParseDetect([]byte(payload))
		if (want == nil) != (err != nil) || (want != nil && got != want) {
			t.Errorf("%q: %v %v, want %v", payload, got, err, want)
		}
	}
}

// recorder is a daemon stand-in that records what it applies, slowly
// (as a control.json write on a busy disk), and panics on request.
type recorder struct {
	mu      sync.Mutex
	applied map[string][]string
	delay   map[string]time.Duration
}

func (r *recorder) KnownCamera(name string) bool { return name != "nocam" }

func (r *recorder) record(camera, what string) error {
	r.mu.Lock()
	d := r.delay[camera]
	r.mu.Unlock()
	time.Sleep(d + time.Duration(len(r.list(camera))%3)*time.Millisecond)
	if what == "threshold 13" {
		panic("a bug in a handler")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.applied[camera] = append(r.applied[camera], what)
	return nil
}

func (r *recorder) list(camera string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.applied[camera])
}

func (r *recorder) SetDetect(camera string, on bool) error {
	return r.record(camera, fmt.Sprint("detect ", on))
}

func (r *recorder) SetThreshold(camera string, threshold *float64) error {
	return r.record(camera, fmt.Sprint("threshold ", *threshold))
}

func (r *recorder) TriggerPart(camera, id string) (string, error) {
	return id, r.record(camera, "trigger "+id)
}

// One client's commands are applied in the order it published them, per
// camera and across a camera's topics, even when applying one is slow; a
// slow camera holds back neither another camera's commands nor the
// connection; a panicking command is recovered and counted, and the
// commands behind it still apply. paho ran each message on its own
// goroutine before: ON then OFF ended ON in 13 of 20 tries on a loaded
// machine.
func TestCommandsApplyInOrderPerCamera(t *testing.T) {
	_, url := mqtttest.StartBroker(t, new(mqtttest.Gate))
	pub, _ := mqtttest.StartPublisher(t, url, "tfy-commands")
	target := &recorder{applied: map[string][]string{}, delay: map[string]time.Duration{"slow": time.Second}}
	pub.SubscribeCommands(target)
	mqtttest.WaitFor(t, "the publisher to connect", pub.Connected)
	time.Sleep(200 * time.Millisecond) // the subscriptions

	sender := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("plc"))
	if tok := sender.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("sender: %v", tok.Error())
	}
	defer sender.Disconnect(100)
	var want []string
	var toks []paho.Token
	send := func(topic, payload string) {
		toks = append(toks, sender.Publish("tfy/"+topic, 1, false, payload))
	}
	send("slow/detect/set", "OFF")
	send("slow/threshold/set", "99")
	for i := range 20 {
		send("line/detect/set", "ON")
		send("line/detect/set", "OFF")
		want = append(want, "detect true", "detect false")
		send("line/threshold/set", strconv.Itoa(i+1))
		want = append(want, fmt.Sprint("threshold ", i+1))
		if i+1 == 13 {
			want = want[:len(want)-1] // panics
		}
		send("line/trigger", fmt.Sprint("part-", i))
		want = append(want, fmt.Sprint("trigger part-", i))
	}
	send("nocam/detect/set", "OFF")
	send("line/threshold/set", "0x1p4") // refused, not applied
	send("line/threshold/set", "500")
	want = append(want, "threshold 500")
	for _, tok := range toks {
		if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	mqtttest.WaitFor(t, "every command of line applied", func() bool { return len(target.list("line")) >= len(want) })
	if got := target.list("line"); !slices.Equal(got, want) {
		t.Errorf("applied in this order:\n%v\nwant\n%v", got, want)
	}
	if got := target.list("slow"); len(got) == 2 {
		t.Errorf("the slow camera's two commands (2 s) were done before line's %d: %v", len(want), got)
	}
	mqtttest.WaitFor(t, "the slow camera's commands", func() bool { return len(target.list("slow")) == 2 })
	if got := target.list("slow"); !slices.Equal(got, []string{"detect false", "threshold 99"}) {
		t.Errorf("slow camera: %v", got)
	}
	var panics dto.Metric
	guard.Panics.WithLabelValues("mqtt").Write(&panics)
	if n := panics.GetCounter().GetValue(); n != 1 {
		t.Errorf("%g panics counted, want 1", n)
	}
}
