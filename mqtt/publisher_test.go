package mqtt_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/transformaly/transformaly/mqtt"
	"github.com/transformaly/transformaly/mqtt/mqtttest"
)

// testEvent stands for the daemon's events: the publisher queues any JSON.
type testEvent struct {
	Type      string `json:"type"`
	ID        string `json:"id"`
	PeakFrame uint64 `json:"peak_frame"`
}

// Events born while the daemon is cut off from the broker must arrive once
// each and in order after every reconnect. paho's own auto-reconnect resent
// its stored publishes concurrently with the reconnect handler and
// duplicated such an event now and then; this cuts the connection several
// times to give that race room.
func TestPublisherDeliversQueuedEventsOnceAcrossReconnects(t *testing.T) {
	// A broker that refuses connections while the test says so: a cut
	// connection would otherwise be back before the test sees it go.
	gate := new(mqtttest.Gate)
	broker, url := mqtttest.StartBroker(t, gate)

	var mu sync.Mutex
	var received []int
	sub := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("test-sub"))
	if tok := sub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	defer sub.Disconnect(100)
	tok := sub.Subscribe("tfy/+/event", 1, func(_ paho.Client, m paho.Message) {
		var e testEvent
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

	queue, err := mqtt.OpenQueue(filepath.Join(t.TempDir(), "events"), 1000, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	cfg := mqtt.Config{ClientID: "tfy-test", TopicPrefix: "tfy"}
	pub, err := mqtt.NewPublisher(cfg, url, queue, nil)
	if err != nil {
		t.Fatal(err)
	}
	pub.Start(context.Background(), url)
	defer pub.Close()
	mqtttest.WaitFor(t, "the publisher to connect", pub.Connected)

	const rounds, perRound = 6, 3
	sent := 0
	for range rounds {
		// After a reconnect the broker may still list the old connection
		// for a moment.
		var cl *mochi.Client
		mqtttest.WaitFor(t, "the broker to list the publisher's connection", func() bool {
			c, ok := broker.Clients.Get(cfg.ClientID)
			cl = c
			return ok && !c.Closed()
		})
		gate.Refuse.Store(true)
		cl.Stop(errors.New("cut by the test"))
		mqtttest.WaitFor(t, "the publisher to see the cut", func() bool { return !pub.Connected() })
		for range perRound {
			sent++
			if err := pub.Event("cam", testEvent{Type: "new", ID: fmt.Sprint(sent), PeakFrame: uint64(sent)}); err != nil {
				t.Fatal(err)
			}
		}
		gate.Refuse.Store(false)
		mqtttest.WaitFor(t, "the queue to drain after the reconnect", func() bool { return pub.Connected() && queue.Len() == 0 })
	}
	mqtttest.WaitFor(t, "every event at the subscriber", func() bool {
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

// A broker that drops every connection as soon as it is made (as it does
// when it refuses what is sent) is retried with growing waits, not at once
// (~60 connections a second were seen), and the publisher says it is
// refused until a connection lasts.
func TestPublisherBacksOffFromABrokerThatDropsIt(t *testing.T) {
	dropper := &connectionDropper{}
	_, url := mqtttest.StartBroker(t, dropper)
	pub, _ := mqtttest.StartPublisher(t, url, "tfy-dropped")
	mqtttest.WaitFor(t, "the publisher to be refused", pub.Refused)
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

// Six events and their snapshots made while the broker is unreachable all
// arrive once it is back (snapshots were published best effort: 4 of 6
// got through a 5 s outage).
func TestSnapshotsSurviveABrokerOutage(t *testing.T) {
	gate := new(mqtttest.Gate)
	broker, url := mqtttest.StartBroker(t, gate)
	sub := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("test-snap-sub"))
	if tok := sub.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	defer sub.Disconnect(100)
	var mu sync.Mutex
	got := map[byte]bool{}
	tok := sub.Subscribe("tfy/cam/snapshot", 1, func(_ paho.Client, m paho.Message) {
		mu.Lock()
		got[m.Payload()[0]] = true
		mu.Unlock()
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	pub, _ := mqtttest.StartPublisher(t, url, "tfy-snap")
	mqtttest.WaitFor(t, "the publisher to connect", pub.Connected)
	cl, _ := broker.Clients.Get("tfy-snap")
	gate.Refuse.Store(true)
	cl.Stop(errors.New("cut by the test"))
	mqtttest.WaitFor(t, "the publisher to see the cut", func() bool { return !pub.Connected() })
	for i := range 6 {
		if err := pub.Event("cam", testEvent{Type: "end", ID: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
		if err := pub.Snapshot("cam", []byte{byte(i), 0xff, 0xd8}); err != nil {
			t.Fatal(err)
		}
	}
	gate.Refuse.Store(false)
	mqtttest.WaitFor(t, "six snapshots at the subscriber", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 6 })
}
