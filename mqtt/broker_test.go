package mqtt

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// The embedded broker reaches the daemon's log with its warnings, but a
// clean stop with a client still connected (a dashboard, the demo's
// viewer) logs nothing.
func TestEmbeddedBrokerStopsQuietly(t *testing.T) {
	var logs bytes.Buffer
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	b, err := StartEmbeddedBroker("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	client := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + b.Address()).SetClientID("dashboard").SetAutoReconnect(false))
	if tok := client.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer client.Disconnect(0)
	b.server.Log.Warn("a warning of the broker's own")
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the client's connection is torn down in the background
	got := logs.String()
	if !strings.Contains(got, "a warning of the broker's own") || !strings.Contains(got, "component=embedded-broker") {
		t.Errorf("the broker's warning did not reach the log:\n%s", got)
	}
	if strings.Contains(got, "closed network connection") {
		t.Errorf("stopping the broker logged its clients' disconnection:\n%s", got)
	}
}
