package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"
)

// Events born while the daemon is cut off from the broker must arrive once
// each and in order after every reconnect. paho's own auto-reconnect resent
// its stored publishes concurrently with the reconnect handler and
// duplicated such an event now and then; this cuts the connection several
// times to give that race room.
func TestPublisherDeliversQueuedEventsOnceAcrossReconnects(t *testing.T) {
	// A broker that refuses connections while the test says so: a cut
	// connection would otherwise be back before the test sees it go.
	gate := new(connectionGate)
	broker, url := startBroker(t, gate)

	var mu sync.Mutex
	var received []int
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("test-sub"))
	if tok := sub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	defer sub.Disconnect(100)
	tok := sub.Subscribe("tfy/+/event", 1, func(_ mqtt.Client, m mqtt.Message) {
		var e Event
		if err := json.Unmarshal(m.Payload(), &e); err != nil {
			t.Errorf("event payload %q: %v", m.Payload(), err)
			return
		}
		mu.Lock()
		received = append(received, int(e.PeakFrame))
		mu.Unlock()
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}

	queue, err := OpenQueue(filepath.Join(t.TempDir(), "events"), 1000, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	cfg := MQTTConfig{ClientID: "tfy-test", TopicPrefix: "tfy"}
	pub, err := NewPublisher(cfg, url, queue, nil)
	if err != nil {
		t.Fatal(err)
	}
	pub.Start(context.Background(), url)
	defer pub.Close()
	waitFor(t, "the publisher to connect", pub.Connected)

	const rounds, perRound = 6, 3
	sent := 0
	for range rounds {
		// After a reconnect the broker may still list the old connection
		// for a moment.
		var cl *mochi.Client
		waitFor(t, "the broker to list the publisher's connection", func() bool {
			c, ok := broker.Clients.Get(cfg.ClientID)
			cl = c
			return ok && !c.Closed()
		})
		gate.refuse.Store(true)
		cl.Stop(errors.New("cut by the test"))
		waitFor(t, "the publisher to see the cut", func() bool { return !pub.Connected() })
		for range perRound {
			sent++
			if err := pub.Event(Event{Camera: "cam", Type: EventNew, ID: fmt.Sprint(sent), PeakFrame: uint64(sent)}); err != nil {
				t.Fatal(err)
			}
		}
		gate.refuse.Store(false)
		waitFor(t, "the queue to drain after the reconnect", func() bool { return pub.Connected() && queue.Len() == 0 })
	}
	waitFor(t, "every event at the subscriber", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(received) >= sent
	})
	time.Sleep(200 * time.Millisecond) // room for a late duplicate
	mu.Lock()
	defer mu.Unlock()
	if len(received) != sent {
		t.Errorf("%d events sent, %d received: %v", sent, len(received), received)
	}
	for i, n := range received {
		if n != i+1 {
			t.Fatalf("event %d arrived as number %d: %v", n, i+1, received)
		}
	}
}

// connectionGate lets everyone in, except while refuse is set.
type connectionGate struct {
	mochi.HookBase
	refuse atomic.Bool
}

func (g *connectionGate) ID() string { return "connection-gate" }

func (g *connectionGate) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (g *connectionGate) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool {
	return !g.refuse.Load()
}

func (g *connectionGate) OnACLCheck(*mochi.Client, string, bool) bool { return true }

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A broker that drops every connection as soon as it is made (as it does
// when it refuses what is sent) is retried with growing waits, not at once
// (~60 connections a second were seen), and the publisher says it is
// refused until a connection lasts.
func TestPublisherBacksOffFromABrokerThatDropsIt(t *testing.T) {
	dropper := &connectionDropper{}
	_, url := startBroker(t, dropper)
	pub, _ := startPublisher(t, url, "tfy-dropped")
	waitFor(t, "the publisher to be refused", pub.Refused)
	time.Sleep(3 * time.Second)
	// Five quick ones, then waits of 1 s and 2 s.
	if n := dropper.connections.Load(); n > 10 {
		t.Errorf("%d connections in about 3 s to a broker dropping each: no back-off", n)
	}
}

// connectionDropper lets every client in and drops it 20 ms later.
type connectionDropper struct {
	mochi.HookBase
	connections atomic.Int64
}

func (d *connectionDropper) ID() string { return "connection-dropper" }

func (d *connectionDropper) Provides(b byte) bool {
	return b == mochi.OnSessionEstablished || b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

func (d *connectionDropper) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool { return true }

func (d *connectionDropper) OnACLCheck(*mochi.Client, string, bool) bool { return true }

func (d *connectionDropper) OnSessionEstablished(cl *mochi.Client, _ packets.Packet) {
	d.connections.Add(1)
	time.AfterFunc(20*time.Millisecond, func() { cl.Stop(errors.New("dropped by the test")) })
}

// startBroker runs an embedded broker with hook on a free port until the
// test ends, and returns it and its URL.
func startBroker(t *testing.T, hook mochi.Hook) (*mochi.Server, string) {
	t.Helper()
	broker := mochi.New(&mochi.Options{Logger: slog.New(slog.DiscardHandler)})
	if err := broker.AddHook(hook, nil); err != nil {
		t.Fatal(err)
	}
	listener := listeners.NewTCP(listeners.Config{ID: "tcp", Address: "127.0.0.1:0"})
	if err := broker.AddListener(listener); err != nil {
		t.Fatal(err)
	}
	go broker.Serve()
	t.Cleanup(func() { broker.Close() })
	return broker, "tcp://" + listener.Address()
}

// startPublisher runs a publisher (prefix tfy) with its own event queue
// against url until the test ends.
func startPublisher(t *testing.T, url, clientID string) (*Publisher, *Queue) {
	t.Helper()
	queue, err := OpenQueue(filepath.Join(t.TempDir(), "events"), 100, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := NewPublisher(MQTTConfig{ClientID: clientID, TopicPrefix: "tfy"}, url, queue, nil)
	if err != nil {
		t.Fatal(err)
	}
	pub.Start(context.Background(), url)
	t.Cleanup(pub.Close)
	return pub, queue
}

// Six events and their snapshots made while the broker is unreachable all
// arrive once it is back (snapshots were published best effort: 4 of 6
// got through a 5 s outage).
func TestSnapshotsSurviveABrokerOutage(t *testing.T) {
	gate := new(connectionGate)
	broker, url := startBroker(t, gate)
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(url).SetClientID("test-snap-sub"))
	if tok := sub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	defer sub.Disconnect(100)
	var mu sync.Mutex
	got := map[byte]bool{}
	tok := sub.Subscribe("tfy/cam/snapshot", 1, func(_ mqtt.Client, m mqtt.Message) {
		mu.Lock()
		got[m.Payload()[0]] = true
		mu.Unlock()
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	pub, _ := startPublisher(t, url, "tfy-snap")
	waitFor(t, "the publisher to connect", pub.Connected)
	cl, _ := broker.Clients.Get("tfy-snap")
	gate.refuse.Store(true)
	cl.Stop(errors.New("cut by the test"))
	waitFor(t, "the publisher to see the cut", func() bool { return !pub.Connected() })
	for i := range 6 {
		if err := pub.Event(Event{Camera: "cam", Type: EventEnd, ID: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
		if err := pub.Snapshot("cam", []byte{byte(i), 0xff, 0xd8}); err != nil {
			t.Fatal(err)
		}
	}
	gate.refuse.Store(false)
	waitFor(t, "six snapshots at the subscriber", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 6 })
}
