package daemon

import (
	"fmt"
	"log/slog"
	"os"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// EmbeddedBroker is an in-process MQTT broker (mochi-mqtt) for single-box
// installs and the demo: anyone who can reach its address may connect, so
// it listens on 127.0.0.1 unless configured otherwise.
type EmbeddedBroker struct {
	server   *mochi.Server
	listener *listeners.TCP
}

// StartEmbeddedBroker listens on address (host:port).
func StartEmbeddedBroker(address string) (*EmbeddedBroker, error) {
	// The broker's own chatter (hooks, listeners, client churn) is kept to
	// warnings.
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("component", "embedded-broker")
	s := mochi.New(&mochi.Options{Logger: logger, InlineClient: false})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	l := listeners.NewTCP(listeners.Config{ID: "tcp", Address: address})
	if err := s.AddListener(l); err != nil {
		return nil, fmt.Errorf("embedded broker on %s: %w", address, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.Serve() }()
	select {
	case err := <-errc:
		if err != nil {
			return nil, fmt.Errorf("embedded broker on %s: %w", address, err)
		}
	default:
	}
	slog.Info("embedded MQTT broker listening", "address", l.Address())
	return &EmbeddedBroker{server: s, listener: l}, nil
}

// Address is where the broker listens (the real port when asked for 0).
func (b *EmbeddedBroker) Address() string { return b.listener.Address() }

// Close stops the broker.
func (b *EmbeddedBroker) Close() error { return b.server.Close() }
