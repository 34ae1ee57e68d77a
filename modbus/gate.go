package modbus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// gate is the Modbus port's front door. The library takes its own listener
// and, when full, resets every new connection: seven idle connections (a
// rebooted PLC's old one, an HMI, a half-open socket) locked a
// reconnecting PLC out until they timed out, up to 5 minutes. It has no
// hook on accept, so the gate accepts instead and relays each admitted
// connection to the library on loopback: it refuses addresses outside
// allowed_clients, closes the longest-idle connection to admit a new one
// when max_clients are open, closes connections idle for idle_timeout, and
// turns on TCP keep-alive so half-open sockets die. Relaying costs one
// loopback hop (tens of microseconds) per request.
type gate struct {
	listener net.Listener
	upstream string // the library's listener
	allowed  []netip.Prefix
	max      int
	idle     time.Duration
	refused  atomic.Uint64
	evicted  atomic.Uint64
	logRate  *rateLimit

	mu    sync.Mutex
	conns map[*relay]struct{}
	// byLibraryAddr finds a relay by the address the library sees as its
	// client's (the relay's loopback socket), to close it from a handler.
	byLibraryAddr map[string]*relay
	wg            sync.WaitGroup
}

// relay is one client connection and its loopback leg to the library.
type relay struct {
	client, library net.Conn
	lastRequest     atomic.Int64 // unix nanoseconds of the client's last bytes
	once            sync.Once
}

func (r *relay) close() {
	r.once.Do(func() {
		r.client.Close()
		r.library.Close()
	})
}

// TCP keep-alive on clients: a peer that vanished (cable pulled, PLC
// powered off) is found dead after about a minute of silence.
var keepAlive = net.KeepAliveConfig{Enable: true, Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3}

// parseAllowed reads allowed_clients: addresses or CIDR prefixes.
func parseAllowed(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is neither an IP address nor a CIDR prefix such as 192.168.10.0/24", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

func (g *gate) admits(addr net.Addr) bool {
	if len(g.allowed) == 0 {
		return true
	}
	ap, err := netip.ParseAddrPort(addr.String())
	if err != nil {
		return false
	}
	ip := ap.Addr().Unmap()
	for _, p := range g.allowed {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// serve accepts clients until the listener closes.
func (g *gate) serve() {
	defer g.wg.Done()
	for {
		conn, err := g.listener.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			g.logRate.warn("Modbus accept failed", "err", err)
			time.Sleep(50 * time.Millisecond) // out of file descriptors: do not spin
			continue
		}
		if !g.admits(conn.RemoteAddr()) {
			g.refused.Add(1)
			g.logRate.warn("Modbus client refused: not in modbus.allowed_clients", "client", conn.RemoteAddr().String())
			conn.Close()
			continue
		}
		if tc, ok := conn.(*net.TCPConn); ok {
			tc.SetKeepAliveConfig(keepAlive)
		}
		g.admit(conn)
	}
}

// admit makes room if needed (closing the longest-idle client), connects
// the client to the library and relays both ways.
func (g *gate) admit(client net.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	library, err := new(net.Dialer).DialContext(ctx, "tcp", g.upstream)
	cancel()
	if err != nil {
		slog.Error("Modbus client dropped: the register map's loopback listener did not answer", "client", client.RemoteAddr().String(), "err", err)
		client.Close()
		return
	}
	r := &relay{client: client, library: library}
	r.lastRequest.Store(time.Now().UnixNano())
	g.mu.Lock()
	var evict *relay
	if len(g.conns) >= g.max {
		for c := range g.conns {
			if evict == nil || c.lastRequest.Load() < evict.lastRequest.Load() {
				evict = c
			}
		}
		g.forget(evict)
	}
	g.conns[r] = struct{}{}
	g.byLibraryAddr[library.LocalAddr().String()] = r
	g.wg.Add(2)
	g.mu.Unlock()
	if evict != nil {
		g.evicted.Add(1)
		evict.close()
		slog.Info("Modbus connection closed to admit a new client (modbus.max_clients reached; it was the longest idle)",
			"closed", evict.client.RemoteAddr().String(), "idle", time.Since(time.Unix(0, evict.lastRequest.Load())).Round(time.Second),
			"admitted", client.RemoteAddr().String())
	}
	go func() { // client to library: requests
		defer g.wg.Done()
		defer g.drop(r)
		buf := make([]byte, 512) // a Modbus TCP frame is at most 260 bytes
		for {
			r.client.SetReadDeadline(time.Now().Add(g.idle))
			n, err := r.client.Read(buf)
			if n > 0 {
				r.lastRequest.Store(time.Now().UnixNano())
				if _, werr := r.library.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					slog.Info("Modbus connection closed: idle past modbus.idle_timeout", "client", r.client.RemoteAddr().String(), "idle_timeout", g.idle)
				}
				return
			}
		}
	}()
	go func() { // library to client: responses
		defer g.wg.Done()
		defer g.drop(r)
		io.Copy(r.client, r.library)
	}()
}

// forget takes a relay off the books; g.mu held.
func (g *gate) forget(r *relay) {
	delete(g.conns, r)
	delete(g.byLibraryAddr, r.library.LocalAddr().String())
}

// drop closes a relay and forgets it.
func (g *gate) drop(r *relay) {
	g.mu.Lock()
	g.forget(r)
	g.mu.Unlock()
	r.close()
}

// dropLibraryClient closes the connection the library knows by addr (a
// handler that panicked on its request).
func (g *gate) dropLibraryClient(addr string) {
	g.mu.Lock()
	r := g.byLibraryAddr[addr]
	g.mu.Unlock()
	if r != nil {
		g.drop(r)
	}
}

// close stops accepting and closes every connection.
func (g *gate) close() {
	g.listener.Close()
	g.mu.Lock()
	conns := make([]*relay, 0, len(g.conns))
	for r := range g.conns {
		conns = append(conns, r)
	}
	g.mu.Unlock()
	for _, r := range conns {
		g.drop(r)
	}
	g.wg.Wait()
}

// clients counts the open connections.
func (g *gate) clients() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.conns)
}

// rateLimit lets at most one log line through per interval and counts the
// rest, reported with the next one through: a port scan or a PLC
// reconnecting in a loop must not flood the journal (the library logged
// one line per refused connection on stdout, 79 in one test run).
type rateLimit struct {
	interval time.Duration
	mu       sync.Mutex
	last     time.Time
	held     int
}

func (l *rateLimit) allow() (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := time.Now(); now.Sub(l.last) >= l.interval {
		held := l.held
		l.last, l.held = now, 0
		return true, held
	}
	l.held++
	return false, 0
}

func (l *rateLimit) warn(msg string, args ...any) {
	if ok, held := l.allow(); ok {
		if held > 0 {
			args = append(args, "similar_lines_suppressed", held)
		}
		slog.Warn(msg, args...)
	}
}

// libraryLog takes the library's own log lines (its format, meant for
// stdout) to slog, rate limited.
type libraryLog struct{ rate *rateLimit }

func (w libraryLog) Write(p []byte) (int, error) {
	w.rate.warn("Modbus library", "message", string(trimNewline(p)))
	return len(p), nil
}

func trimNewline(p []byte) []byte {
	for len(p) > 0 && (p[len(p)-1] == '\n' || p[len(p)-1] == '\r') {
		p = p[:len(p)-1]
	}
	return p
}
