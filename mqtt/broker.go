package mqtt

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"

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
	closing  *atomic.Bool
}

// StartEmbeddedBroker listens on address (host:port).
func StartEmbeddedBroker(address string) (*EmbeddedBroker, error) {
	closing := new(atomic.Bool)
	logger := slog.New(brokerLog{slog.Default().Handler(), closing}).With("component", "embedded-broker")
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
	return &EmbeddedBroker{server: s, listener: l, closing: closing}, nil
}

// brokerLog passes on the broker's warnings and errors, not its chatter
// (hooks, listeners, client churn), and nothing once Close has begun:
// every client still connected then fails its read with "use of closed
// network connection", which is the shutdown itself.
type brokerLog struct {
	slog.Handler
	closing *atomic.Bool
}

func (h brokerLog) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && !h.closing.Load() && h.Handler.Enabled(ctx, l)
}

func (h brokerLog) WithAttrs(attrs []slog.Attr) slog.Handler {
	return brokerLog{h.Handler.WithAttrs(attrs), h.closing}
}

func (h brokerLog) WithGroup(name string) slog.Handler {
	return brokerLog{h.Handler.WithGroup(name), h.closing}
}

// Address is where the broker listens (the real port when asked for 0).
func (b *EmbeddedBroker) Address() string { return b.listener.Address() }

// Close stops the broker, disconnecting its clients.
func (b *EmbeddedBroker) Close() error {
	b.closing.Store(true)
	return b.server.Close()
}
