package mqtt

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/transformaly/transformaly/internal/redact"
)

// Publisher owns the MQTT connection: status and Last Will, scores, the
// persistent event queue, snapshots, availability, stats and Home
// Assistant discovery.
type Publisher struct {
	cfg    Config
	client paho.Client
	queue  *Queue

	connected atomic.Bool
	refused   atomic.Bool   // see Refused
	published atomic.Uint64 // score messages sent
	skipped   atomic.Uint64 // messages Publish did not send while disconnected

	mu           sync.Mutex
	availability map[string]string // camera -> online/offline, republished on connect
	discovery    []string          // cameras announced to Home Assistant
	onConnect    func()
	// subscriptions are made again on every connect: with a clean session
	// the broker forgets them when the connection drops (Frigate lost its
	// commands after a broker restart).
	subscriptions map[string]func(topic string, payload []byte)

	lost chan struct{} // the connection dropped; Start's loop reconnects

	commands sequencer // each camera's commands, in order (SubscribeCommands)

	wg   sync.WaitGroup
	stop context.CancelFunc
}

// Topic joins the prefix and parts.
func (p *Publisher) Topic(parts ...string) string {
	return p.cfg.TopicPrefix + "/" + strings.Join(parts, "/")
}

// password reads the broker password from its file or environment variable.
func (c Config) password() (string, error) {
	switch {
	case c.PasswordFile != "":
		b, err := os.ReadFile(c.PasswordFile)
		if err != nil {
			return "", fmt.Errorf("mqtt.password_file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case c.PasswordEnv != "":
		return os.Getenv(c.PasswordEnv), nil
	}
	return "", nil
}

func (c Config) tlsConfig() (*tls.Config, error) {
	t := c.TLS
	if t.CAFile == "" && t.CertFile == "" && !t.InsecureSkipVerify {
		return nil, nil
	}
	cfg := &tls.Config{InsecureSkipVerify: t.InsecureSkipVerify, MinVersion: tls.VersionTLS12} //nolint:gosec // the user asked for it
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("mqtt.tls.ca_file %s: no PEM certificates in it", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("mqtt.tls.cert_file/key_file: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// NewPublisher prepares the client; Start connects (retrying) in the
// background so the daemon runs, and queues events, with the broker down.
func NewPublisher(cfg Config, broker string, queue *Queue, onConnect func()) (*Publisher, error) {
	pw, err := cfg.password()
	if err != nil {
		return nil, err
	}
	tlsCfg, err := cfg.tlsConfig()
	if err != nil {
		return nil, err
	}
	p := &Publisher{cfg: cfg, queue: queue, availability: map[string]string{}, onConnect: onConnect, lost: make(chan struct{}, 1)}
	// Reconnection is ours, not paho's: on an automatic reconnect paho
	// resends its stored publishes concurrently with the OnConnect handler,
	// and re-reads its store while doing so, so an event published right
	// after the reconnect went out twice (seen in CI). Without auto-reconnect
	// a lost connection fails every in-flight publish, and the persistent
	// queue, which still holds that event, sends it again once reconnected.
	opts := paho.NewClientOptions().
		AddBroker(broker).
		SetClientID(cfg.ClientID).
		SetUsername(cfg.Username).
		SetPassword(pw).
		SetCleanSession(true).
		SetKeepAlive(cfg.KeepAlive).
		SetConnectTimeout(10*time.Second).
		SetAutoReconnect(false).
		SetWill(p.Topic("status"), "offline", 1, true).
		// Messages are handed to the handlers one at a time, in the order
		// received: with false paho ran each on its own goroutine, and ON
		// then OFF sent back to back left detection ON in 13 of 20 tries
		// on a loaded machine. The handlers only parse and queue
		// (SubscribeCommands), so nothing slow runs on paho's goroutine.
		SetOrderMatters(true).
		SetOnConnectHandler(func(paho.Client) { p.connectedNow() }).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			p.connected.Store(false)
			slog.Warn("MQTT connection lost; reconnecting", "broker", redact.URL(broker), "err", err)
			select {
			case p.lost <- struct{}{}:
			default:
			}
		})
	if tlsCfg != nil {
		opts.SetTLSConfig(tlsCfg)
	}
	p.client = paho.NewClient(opts)
	return p, nil
}

// describeConnectError turns paho's errors into what a user should do.
func describeConnectError(err error) string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "not Authorized"), strings.Contains(msg, "bad user name or password"):
		return "the broker refused the username or password (check mqtt.username and the password file or variable)"
	case strings.Contains(msg, "x509"), strings.Contains(msg, "tls"), strings.Contains(msg, "certificate"):
		return "TLS handshake failed: " + msg + " (check mqtt.tls)"
	case strings.Contains(msg, "connection refused"):
		return "nothing listens at the broker address: " + msg
	}
	return msg
}

// Start connects in the background, reconnects whenever the connection
// drops (retrying with growing waits) and runs the event delivery loop,
// until Close.
func (p *Publisher) Start(ctx context.Context, broker string) {
	ctx, p.stop = context.WithCancel(ctx)
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		p.keepConnected(ctx, broker)
	}()
	go func() {
		defer p.wg.Done()
		p.deliverEvents(ctx)
	}()
}

func (p *Publisher) keepConnected(ctx context.Context, broker string) {
	const firstWait, maxWait = time.Second, 30 * time.Second
	wait := firstWait
	dropped := 0 // connections in a row that did not last stableConnection
	for ctx.Err() == nil {
		tok := p.client.Connect()
		// paho gives up on an attempt after its ConnectTimeout (10 s); a
		// shutdown does not wait for it.
		select {
		case <-ctx.Done():
			return
		case <-tok.Done():
		case <-time.After(15 * time.Second):
		}
		if tok.Error() == nil && p.client.IsConnectionOpen() {
			wait = firstWait
			since := time.Now()
			select {
			case <-ctx.Done():
				return
			case <-p.lost:
			}
			if time.Since(since) >= stableConnection {
				dropped = 0
				p.refused.Store(false)
				continue // reconnect at once; waits grow only on failures
			}
			// Dropped as soon as made, again and again: the broker refuses
			// something we send (a topic, a QoS); reconnecting at once
			// made ~60 connections a second.
			if dropped++; dropped >= refusedAfter {
				p.refused.Store(true)
				backoff := min(firstWait<<min(dropped-refusedAfter, 5), maxWait)
				slog.Error("MQTT broker drops every connection right after accepting it (does it refuse a topic or QoS we send?); retrying",
					"broker", redact.URL(broker), "connections_dropped", dropped, "retry_in", backoff)
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
			}
			continue
		}
		err := tok.Error()
		if err == nil {
			err = errors.New("timed out")
		}
		slog.Error("MQTT connect failed; retrying", "broker", redact.URL(broker), "retry_in", wait, "err", describeConnectError(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, maxWait)
	}
}

func (p *Publisher) connectedNow() {
	p.connected.Store(true)
	slog.Info("MQTT connected", "prefix", p.cfg.TopicPrefix)
	p.client.Publish(p.Topic("status"), 1, true, "online")
	p.mu.Lock()
	avail := make(map[string]string, len(p.availability))
	for k, v := range p.availability {
		avail[k] = v
	}
	cams := append([]string(nil), p.discovery...)
	subs := maps.Clone(p.subscriptions)
	p.mu.Unlock()
	for filter, handle := range subs {
		p.subscribe(filter, handle)
	}
	for cam, state := range avail {
		p.client.Publish(p.Topic(cam, "availability"), 1, true, state)
	}
	if p.cfg.HomeAssistant {
		for _, cam := range cams {
			p.announce(cam)
		}
	}
	if p.onConnect != nil {
		p.onConnect()
	}
	// Events queued while we were away go out now.
	p.queue.signal()
}

// Subscribe calls handle with every message on the topic filter, from now
// and after every reconnect. Handlers run one at a time on paho's
// delivery goroutine, in the order messages arrive: they must not block.
func (p *Publisher) Subscribe(filter string, handle func(topic string, payload []byte)) {
	p.mu.Lock()
	if p.subscriptions == nil {
		p.subscriptions = map[string]func(string, []byte){}
	}
	p.subscriptions[filter] = handle
	p.mu.Unlock()
	if p.connected.Load() {
		p.subscribe(filter, handle)
	}
}

func (p *Publisher) subscribe(filter string, handle func(topic string, payload []byte)) {
	tok := p.client.Subscribe(filter, 1, func(_ paho.Client, m paho.Message) { handle(m.Topic(), m.Payload()) })
	go func() {
		if tok.WaitTimeout(10*time.Second) && tok.Error() != nil {
			slog.Error("MQTT subscription refused (check the broker's ACL for the topic prefix)", "filter", filter, "err", tok.Error())
		}
	}()
}

// Skipped counts the messages Publish did not send for want of a broker.
func (p *Publisher) Skipped() uint64 { return p.skipped.Load() }

// Connected reports the broker connection.
func (p *Publisher) Connected() bool { return p.connected.Load() }

// Refused says whether the broker dropped refusedAfter connections in a
// row as soon as they were made (it refuses what we send), until one lasts
// stableConnection.
func (p *Publisher) Refused() bool { return p.refused.Load() }

// A connection must last stableConnection for the broker to be taken as
// accepting what we send; refusedAfter shorter ones in a row mean it does
// not.
const (
	stableConnection = 5 * time.Second
	refusedAfter     = 5
)

// deliverEvents sends queued events one at a time, in order, removing each
// only once the broker acknowledged it (QoS 1). A publish in flight when the
// connection drops fails, and the same event is sent again after the
// reconnect: the broker may then hold it twice (MQTT's at-least-once when
// an acknowledgement is lost; events carry ids for that), never zero times.
func (p *Publisher) deliverEvents(ctx context.Context) {
	for {
		msg, ok, err := p.queue.Peek()
		if err != nil {
			slog.Error("event queue", "err", err)
		}
		if !ok || !p.connected.Load() {
			select {
			case <-ctx.Done():
				return
			case <-p.queue.Ready():
			case <-time.After(time.Second):
			}
			continue
		}
		tok := p.client.Publish(msg.Topic, msg.QoS, msg.Retained, msg.Body())
		select {
		case <-ctx.Done():
			return
		case <-tok.Done():
		}
		if err := tok.Error(); err != nil {
			slog.Warn("event not delivered yet; will retry", "topic", msg.Topic, "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		if err := p.queue.Remove(msg.Seq); err != nil {
			slog.Error("event queue", "err", err)
		}
	}
}

// Drain waits until the event queue is empty, the broker is gone, or the
// timeout passes; used on shutdown so pending events are published.
func (p *Publisher) Drain(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for p.queue.Len() > 0 && p.connected.Load() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := p.queue.Len(); n > 0 {
		slog.Warn("events left in the queue at shutdown; they go out at the next start", "events", n)
	}
}

// Event queues a camera's event (marshalled to JSON) for delivery.
func (p *Publisher) Event(camera string, event any) error {
	b, err := json.Marshal(event)
	if err != nil {
		return fmt.Errorf("event of camera %s: %w", camera, err)
	}
	return p.queue.Push(p.Topic(camera, "event"), 1, b)
}

// Snapshot queues an event's snapshot behind the event (retained), so it
// survives a broker outage as the event does: published best effort, 4
// snapshots of 6 events got through a 5 s outage.
// With snapshot_queue_mb 0 they are published best effort instead.
func (p *Publisher) Snapshot(camera string, jpg []byte) error {
	if p.queue.snapshotLimit == 0 {
		p.Publish(p.Topic(camera, "snapshot"), 1, true, jpg)
		return nil
	}
	return p.queue.PushSnapshot(p.Topic(camera, "snapshot"), jpg)
}

// Publish sends a best-effort message (scores, snapshots, stats): dropped
// while disconnected, never queued.
func (p *Publisher) Publish(topic string, qos byte, retained bool, payload []byte) bool {
	if !p.connected.Load() {
		p.skipped.Add(1)
		return false
	}
	p.client.Publish(topic, qos, retained, payload)
	p.published.Add(1)
	return true
}

// Availability records and publishes a camera's online/offline state.
func (p *Publisher) Availability(camera string, online bool) {
	state := "offline"
	if online {
		state = "online"
	}
	p.mu.Lock()
	changed := p.availability[camera] != state
	p.availability[camera] = state
	p.mu.Unlock()
	if changed && p.connected.Load() {
		p.client.Publish(p.Topic(camera, "availability"), 1, true, state)
	}
}

// Discover registers a camera for Home Assistant discovery.
func (p *Publisher) Discover(camera string) {
	p.mu.Lock()
	if slices.Contains(p.discovery, camera) {
		p.mu.Unlock()
		return // announced already (a reload)
	}
	p.discovery = append(p.discovery, camera)
	p.mu.Unlock()
	if p.cfg.HomeAssistant && p.connected.Load() {
		p.announce(camera)
	}
}

// announce publishes Home Assistant discovery for a camera: a problem
// binary_sensor (on while an event is open), a score sensor, and an
// "unusual" sensor, the share of normal parts scoring below the frame
// (normal_quantile, in %: a raw negative log-likelihood means little to a
// reader), all unavailable when the daemon's Last Will fires.
func (p *Publisher) announce(camera string) {
	id := p.cfg.ClientID + "_" + camera
	device := map[string]any{"identifiers": []string{p.cfg.ClientID}, "name": "transformaly " + p.cfg.ClientID, "manufacturer": "transformaly"}
	availability := []map[string]string{{"topic": p.Topic("status")}, {"topic": p.Topic(camera, "availability")}}
	for _, e := range []struct {
		kind, object string
		cfg          map[string]any
	}{
		{"binary_sensor", camera, map[string]any{"name": camera + " anomaly", "unique_id": id + "_problem", "device_class": "problem",
			"state_topic": p.Topic(camera, "event"), "value_template": "{{ 'OFF' if value_json.type == 'end' else 'ON' }}"}},
		{"sensor", camera, map[string]any{"name": camera + " anomaly score", "unique_id": id + "_score", "state_topic": p.Topic(camera, "score"),
			"value_template": "{{ value_json.score | round(3) }}", "state_class": "measurement"}},
		{"sensor", camera + "_unusual", map[string]any{"name": camera + " unusual", "unique_id": id + "_normal_quantile",
			"state_topic": p.Topic(camera, "score"), "unit_of_measurement": "%", "state_class": "measurement", "suggested_display_precision": 3,
			"value_template": "{{ (value_json.normal_quantile * 100) | round(5) if value_json.normal_quantile is number else none }}"}},
	} {
		e.cfg["device"], e.cfg["availability"], e.cfg["availability_mode"] = device, availability, "all"
		b, _ := json.Marshal(e.cfg)
		topic := fmt.Sprintf("%s/%s/%s/%s/config", p.cfg.HomeAssistantPrefix, e.kind, p.cfg.ClientID, e.object)
		p.client.Publish(topic, 1, true, b)
	}
}

// Close publishes "stopped", disconnects cleanly (so the Last Will does not
// fire) and stops the background loops.
func (p *Publisher) Close() {
	if p.connected.Load() {
		tok := p.client.Publish(p.Topic("status"), 1, true, "stopped")
		tok.WaitTimeout(2 * time.Second)
	}
	if p.stop != nil {
		p.stop()
	}
	p.client.Disconnect(500)
	p.wg.Wait()
	p.commands.wait()
}
