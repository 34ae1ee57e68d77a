package daemon

import (
	"fmt"
	"log/slog"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
)

// EmbeddedBroker is an in-process MQTT broker (mochi-mqtt) for single-box
// installs and the demo: anyone who can reach its address may connect, so
// it listens on 127.0.0.1 unless configured otherwise.
type EmbeddedBroker struct {
	server *mochi.Server
}

// StartEmbeddedBroker listens on address (host:port).
func StartEmbeddedBroker(address string) (*EmbeddedBroker, error) {
	logger := slog.Default().With("component", "embedded-broker")
	s := mochi.New(&mochi.Options{Logger: logger, InlineClient: false})
	if err := s.AddHook(new(auth.AllowHook), nil); err != nil {
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	if err := s.AddListener(listeners.NewTCP(listeners.Config{ID: "tcp", Address: address})); err != nil {
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
	slog.Info("embedded MQTT broker listening", "address", address)
	return &EmbeddedBroker{server: s}, nil
}

// Close stops the broker.
func (b *EmbeddedBroker) Close() error { return b.server.Close() }
