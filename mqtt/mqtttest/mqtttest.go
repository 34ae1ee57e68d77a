// Package mqtttest has what tests of the MQTT side and of the daemon share:
// an in-process broker (mochi-mqtt) on a free port whose connections a
// test can refuse, a publisher against it, and a wait for a condition.
package mqtttest

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/transformaly/transformaly/mqtt"
)

// Gate lets every client in, except while Refuse is set.
type Gate struct {
	mochi.HookBase
	Refuse atomic.Bool
}

// ID names the hook.
func (g *Gate) ID() string { return "connection-gate" }

// Provides says which hooks Gate implements.
func (g *Gate) Provides(b byte) bool {
	return b == mochi.OnConnectAuthenticate || b == mochi.OnACLCheck
}

// OnConnectAuthenticate admits a client unless Refuse is set.
func (g *Gate) OnConnectAuthenticate(*mochi.Client, packets.Packet) bool {
	return !g.Refuse.Load()
}

// OnACLCheck allows every topic.
func (g *Gate) OnACLCheck(*mochi.Client, string, bool) bool { return true }

// StartBroker runs a broker with hook on a free port until the test ends,
// and returns it and its URL.
func StartBroker(t testing.TB, hook mochi.Hook) (*mochi.Server, string) {
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

// StartPublisher runs a publisher (prefix tfy) with its own event queue
// against url until the test ends.
func StartPublisher(t testing.TB, url, clientID string) (*mqtt.Publisher, *mqtt.Queue) {
	t.Helper()
	queue, err := mqtt.OpenQueue(filepath.Join(t.TempDir(), "events"), 100, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := mqtt.NewPublisher(mqtt.Config{ClientID: clientID, TopicPrefix: "tfy"}, url, queue, nil)
	if err != nil {
		t.Fatal(err)
	}
	pub.Start(context.Background(), url)
	t.Cleanup(pub.Close)
	return pub, queue
}

// WaitFor waits up to 20 s for cond, polling.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
