package modbus

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/transformaly/transformaly/internal/guard"
)

func testConfig(addr string) Config {
	return Config{Address: addr, MaxClients: DefaultMaxClients, IdleTimeout: DefaultIdleTimeout}
}

// closedWithin says whether the server closed conn within d.
func closedWithin(conn net.Conn, d time.Duration) bool {
	conn.SetReadDeadline(time.Now().Add(d))
	_, err := conn.Read(make([]byte, 1))
	return err == io.EOF || (err != nil && !isTimeout(err))
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

// With max_clients connections held open and idle (a rebooted PLC's old
// socket, an HMI, a half-open connection), the PLC's new connection is
// served at once, again and again: each time the longest-idle connection
// is closed for it. The library alone accepted and reset it until an idle
// one timed out (5 minutes).
func TestAPLCAlwaysGetsIn(t *testing.T) {
	cfg := testConfig(freeAddress(t))
	cfg.MaxClients = 3
	s, err := Start(cfg, []string{"line1"}, &fakeLine{ready: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var idle []net.Conn
	for range cfg.MaxClients {
		c, err := net.Dial("tcp", cfg.Address)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
		time.Sleep(20 * time.Millisecond) // an order of idleness
	}
	for round := range 3 {
		start := time.Now()
		plc := dial(t, cfg.Address)
		ready, err := plc.ReadDiscreteInput(InputReady)
		if err != nil || !ready {
			t.Fatalf("round %d: the PLC's read with %d connections held: %v %v", round, cfg.MaxClients, ready, err)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("round %d: served after %s, want within 1 s", round, took)
		}
		if !closedWithin(idle[round], time.Second) {
			t.Errorf("round %d: the longest-idle connection is still open", round)
		}
		// The PLC's connection stays open, as a half-open one would.
	}
	if n := s.Evicted(); n != 3 {
		t.Errorf("%d connections closed to admit new ones, want 3", n)
	}
}

// A client outside allowed_clients is closed at once and counted; one
// inside is served.
func TestAllowedClients(t *testing.T) {
	cfg := testConfig(freeAddress(t))
	cfg.AllowedClients = []string{"10.1.0.0/16", "192.168.0.7"}
	s, err := Start(cfg, []string{"line1"}, &fakeLine{ready: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", cfg.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !closedWithin(c, time.Second) || s.Refused() != 1 {
		t.Errorf("a client from 127.0.0.1 was not refused (refused %d)", s.Refused())
	}
	s.Close()

	cfg.AllowedClients = []string{"10.1.0.0/16", "127.0.0.1"}
	if s, err = Start(cfg, []string{"line1"}, &fakeLine{ready: true}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := dial(t, cfg.Address).ReadDiscreteInput(InputReady); err != nil {
		t.Errorf("an allowed client: %v", err)
	}
	for _, bad := range [][]string{{"10.1.0.0/33"}, {"plc.local"}, {""}} {
		var keys []string
		Config{MaxClients: 1, IdleTimeout: time.Minute, AllowedClients: bad}.Check(func(key, _ string, _ ...any) { keys = append(keys, key) })
		if len(keys) != 1 || keys[0] != "modbus.allowed_clients" {
			t.Errorf("allowed_clients %q: %v", bad, keys)
		}
	}
}

// A connection that sends nothing for idle_timeout is closed.
func TestIdleConnectionsClose(t *testing.T) {
	cfg := testConfig(freeAddress(t))
	cfg.IdleTimeout = time.Second
	s, err := Start(cfg, []string{"line1"}, &fakeLine{ready: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c, err := net.Dial("tcp", cfg.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if closedWithin(c, 500*time.Millisecond) {
		t.Error("closed before the idle timeout")
	}
	if !closedWithin(c, 2*time.Second) {
		t.Error("still open well past the idle timeout")
	}
	mbWaitFor(t, "the relay forgotten", func() bool { return s.gate.clients() == 0 })
}

func mbWaitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// panickyLine panics when asked whether a camera is Ready.
type panickyLine struct{ fakeLine }

func (l *panickyLine) Ready(camera string) bool {
	if camera == "broken" {
		panic("a bug behind the register map")
	}
	return true
}

// A panic in a handler fails that request (a Modbus exception), closes its
// connection, is logged with its stack and counted; the server goes on.
// The library does not recover its handlers: the daemon would have ended.
func TestHandlerPanicIsRecovered(t *testing.T) {
	var logs syncBuffer
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	cfg := testConfig(freeAddress(t))
	s, err := Start(cfg, []string{"line1", "broken"}, new(panickyLine))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var before dto.Metric
	guard.Panics.WithLabelValues("modbus").Write(&before)
	c := dial(t, cfg.Address)
	if _, err := c.ReadDiscreteInput(BlockSize + InputReady); err == nil {
		t.Error("the request that panicked got an answer")
	}
	var after dto.Metric
	guard.Panics.WithLabelValues("modbus").Write(&after)
	if n := after.GetCounter().GetValue() - before.GetCounter().GetValue(); n != 1 {
		t.Errorf("%g panics counted, want 1", n)
	}
	if !strings.Contains(logs.String(), "a bug behind the register map") || !strings.Contains(logs.String(), "goroutine") {
		t.Errorf("the panic was not logged with its stack:\n%s", logs.String())
	}
	if ready, err := dial(t, cfg.Address).ReadDiscreteInput(InputReady); err != nil || !ready {
		t.Errorf("after the panic: %v %v", ready, err)
	}
}

// The library's own log lines (its format, on stdout unless given a
// logger) reach slog, at most one per interval: 20 malformed frames
// gave 20 lines on stdout.
func TestLibraryLogIsRateLimitedThroughSlog(t *testing.T) {
	var logs syncBuffer
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(&logs, nil)))
	stdout := os.Stdout
	r, w, _ := os.Pipe()
	os.Stdout = w
	cfg := testConfig(freeAddress(t))
	s, err := Start(cfg, []string{"line1"}, &fakeLine{ready: true})
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		c, err := net.Dial("tcp", cfg.Address)
		if err != nil {
			t.Fatal(err)
		}
		// MBAP header with protocol id 0x1234: the library logs and drops it.
		c.Write([]byte{0, 1, 0x12, 0x34, 0, 6, 1, 2, 0, 0, 0, 1})
		closedWithin(c, time.Second)
		c.Close()
	}
	s.Close()
	os.Stdout = stdout
	w.Close()
	printed, _ := io.ReadAll(r)
	if len(printed) > 0 {
		t.Errorf("the library printed on stdout: %q", printed)
	}
	if n := strings.Count(logs.String(), "unexpected protocol id"); n != 1 {
		t.Errorf("%d of the library's lines in the log within 10 s, want 1:\n%s", n, logs.String())
	}
}

// syncBuffer is a bytes.Buffer safe for the log handler's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
