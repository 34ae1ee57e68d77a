// Package opcua serves the daemon's cameras to SCADA, MES and PLCs over
// OPC UA: an object per camera with its state, its threshold and detect
// switch (writable when allowed), its last score and, for triggered
// cameras, its last part result and a Trigger method; subscriptions get
// each new result once. Sessions are encrypted and authenticated
// (username and password, or a trusted certificate); anonymous sessions
// and the None policy only when allowed. It knows the daemon only through
// Source, so it is testable alone.
//
// Library: github.com/gopcua/opcua v0.8.0, the maintained Go OPC UA
// stack: its binary encoding, transport, secure channel with every
// current policy, namespace 0 and client. Its server package could not be
// used as it is (service.go says why): the services are this package's.
// github.com/awcullen/opcua, a server-first alternative, is not served by
// the module proxy this project builds from.
package opcua

import (
	"context"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/server"
	"github.com/gopcua/opcua/ua"
)

// Camera is one camera's state as the daemon reports it.
type Camera struct {
	Name      string
	Triggered bool // judges parts on trigger: has LastResult and Trigger
	Online    bool // its capture delivers frames
	Ready     bool // a triggered camera can judge a part now
	Busy      bool // parts wait for their results
	Detect    bool // scored (detect/set ON)
	Threshold float64
	LastScore float64 // NaN before the first scored frame
	// LastAnomalous is whether the last scored frame was above the
	// threshold (or not judgeable).
	LastAnomalous bool
	FPS           float64 // capture frames a second
}

// Result is a triggered part's result, as MQTT's result message says it.
type Result struct {
	PartID      string
	Verdict     string  // ok, ng or error
	Score       float64 // NaN without one
	Region      []int32 // x, y, width, height of the worst region; empty without one
	TriggerTime time.Time
	ResultTime  time.Time
	LatencyMS   float64
}

// Source is what the daemon offers the address space.
type Source interface {
	// Cameras lists the running cameras, in configuration order.
	Cameras() []Camera
	// Trigger starts judging a part (id "": the next count) and returns
	// its id; the result comes back through Server.Publish.
	Trigger(camera, partID string) (string, error)
	// SetDetect and SetThreshold change a camera as MQTT's detect/set and
	// threshold/set do (kept in control.json, published as retained state).
	SetDetect(camera string, on bool) error
	SetThreshold(camera string, threshold float64) error
}

// Options configure the server.
type Options struct {
	// Address is the endpoint, opc.tcp://host:port.
	Address string
	// ApplicationURI names this server in its certificate (default
	// urn:<hostname>:transformaly); a certificate given here keeps its own.
	ApplicationURI string
	// CertificateFile (DER or PEM) and KeyFile (PEM) are the server's
	// application instance certificate, both created when both are absent.
	CertificateFile, KeyFile string
	// TrustedDir holds the client certificates (DER or PEM files) allowed
	// to open sessions; RejectedDir gets each refused one, to review and
	// move into TrustedDir ("": not kept).
	TrustedDir, RejectedDir string
	// Users are the usernames and passwords allowed (LoadUsers).
	Users map[string]string
	// AllowChanges lets sessions write Detect and Threshold.
	AllowChanges bool
	// AllowAnonymous adds the None security policy and anonymous sessions.
	AllowAnonymous bool
	// Version and Started are the daemon's, shown as Version and Uptime.
	Version string
	Started time.Time
	// SampleInterval is how often the cameras' state is read (100 ms).
	SampleInterval time.Duration
}

// notifyQueue bounds the node changes waiting for subscriptions; past it
// changes are dropped (a subscription stuck that long is a dead client).
const notifyQueue = 4096

// Server is the OPC UA server.
type Server struct {
	opts      Options
	src       Source
	cert      []byte // the server's certificate (DER)
	key       *rsa.PrivateKey
	endpoints []*ua.EndpointDescription
	// ns0 holds namespace 0 (the library's standard nodes) and the
	// namespace array; it is never started.
	ns0    *server.Server
	sp     *space
	auth   *authenticator
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// cams (guarded by sp.mu) keeps each camera's values by name, across
	// reloads.
	cams   map[string]*camera
	daemon map[string]*ua.DataValue // Status, Version, Uptime

	notify  chan change
	dropped atomic.Uint64

	mu         sync.Mutex
	sessions   map[string]*session // by authentication token
	monitored  map[string][]*monitoredItem
	nextSubID  uint32
	nextItemID uint32
}

// camera is one camera's object and values.
type camera struct {
	name      string
	triggered bool
	obj       *node
	vals      map[string]*ua.DataValue // by path under the object: "Online", "LastResult/PartId"
	counter   uint32
}

// Variables of a camera object, in browse order.
var (
	cameraVars = []struct {
		name     string
		dataType uint32
	}{
		{"Online", id.Boolean}, {"Ready", id.Boolean}, {"Busy", id.Boolean}, {"Detect", id.Boolean},
		{"Threshold", id.Double}, {"LastScore", id.Double}, {"LastAnomalous", id.Boolean}, {"FPS", id.Double},
	}
	resultVars = []struct {
		name     string
		dataType uint32
	}{
		{"PartId", id.String}, {"Verdict", id.String}, {"Score", id.Double}, {"Region", id.Int32},
		{"TriggerTime", id.DateTime}, {"ResultTime", id.DateTime}, {"LatencyMs", id.Double}, {"ResultCounter", id.UInt32},
	}
)

// Start serves the address space of src's cameras at opts.Address.
func Start(opts Options, src Source) (*Server, error) {
	host, err := parseAddress(opts.Address)
	if err != nil {
		return nil, fmt.Errorf("opcua.address %w", err)
	}
	u, _ := url.Parse(opts.Address)
	port, _ := strconv.Atoi(u.Port())
	if opts.SampleInterval <= 0 {
		opts.SampleInterval = 100 * time.Millisecond
	}
	if opts.Started.IsZero() {
		opts.Started = time.Now()
	}
	hostname, _ := os.Hostname()
	if opts.ApplicationURI == "" {
		opts.ApplicationURI = "urn:" + hostname + ":transformaly"
	}
	cert, key, err := loadOrCreateCertificate(opts.CertificateFile, opts.KeyFile, opts.ApplicationURI, []string{hostname, "localhost", host})
	if err != nil {
		return nil, err
	}
	urls := []string{fmt.Sprintf("opc.tcp://%s:%d", host, port)}
	// Clients reach a server listening on every address by a name.
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() && hostname != "" {
		urls = append(urls, fmt.Sprintf("opc.tcp://%s:%d", hostname, port))
	}
	if parsed, err := x509.ParseCertificate(cert); err == nil && len(parsed.URIs) > 0 {
		opts.ApplicationURI = parsed.URIs[0].String() // the certificate's own
	}
	s := &Server{opts: opts, src: src, cert: cert, key: key, endpoints: endpoints(urls, cert, opts),
		ns0: server.New(server.ServerName("transformaly"), server.ManufacturerName("transformaly"), server.ProductName("transformaly"),
			server.SoftwareVersion(opts.Version)),
		sp: newSpace(opts.AllowChanges), cams: map[string]*camera{}, notify: make(chan change, notifyQueue),
		sessions: map[string]*session{}, monitored: map[string][]*monitoredItem{}}
	s.auth = &authenticator{opts: &s.opts, cert: cert, key: key, endpoints: s.endpoints}
	s.ns0.AddNamespace(s.sp)
	s.build()
	s.ns0.Node(server.ObjectsFolder).AddRef(s.sp.root.lib, server.RefTypeIDOrganizes, true)
	s.sync(src.Cameras())

	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("opcua.address %s: %w", opts.Address, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	s.wg.Add(4)
	go func() { defer s.wg.Done(); s.serve(ctx, l) }()
	go func() { defer s.wg.Done(); <-ctx.Done(); l.Close() }()
	go func() { defer s.wg.Done(); s.deliver(ctx) }()
	go func() { defer s.wg.Done(); s.sample(ctx) }()
	s.wg.Add(1)
	go func() { defer s.wg.Done(); s.sessionsLoop(ctx) }()
	if len(opts.Users) == 0 && !opts.AllowAnonymous {
		slog.Warn("OPC UA server without users (opcua.users_file): only clients whose certificate is trusted get in, with it as their identity")
	}
	slog.Info("OPC UA server listening", "address", opts.Address, "application_uri", opts.ApplicationURI,
		"anonymous", opts.AllowAnonymous, "allow_changes", opts.AllowChanges, "users", len(opts.Users))
	return s, nil
}

// Close stops the server.
func (s *Server) Close() {
	s.setDaemon("Status", "stopping", time.Now())
	s.cancel()
	s.mu.Lock()
	for _, sess := range s.sessions {
		s.dropSession(sess)
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// build makes the fixed nodes: the transformaly object with Status,
// Version and Uptime, and the Cameras folder.
func (s *Server) build() {
	sp := s.sp
	sp.mu.Lock()
	defer sp.mu.Unlock()
	sp.root = sp.add(nil, id.Organizes, &node{id: sp.nodeID("transformaly"), class: ua.NodeClassObject, name: "transformaly", typeDef: id.BaseObjectType})
	sp.root.lib = libNode(sp.root)
	now := time.Now()
	s.daemon = map[string]*ua.DataValue{
		"Status":  sourceValue("running", now),
		"Version": sourceValue(s.opts.Version, now),
		"Uptime":  sourceValue(uint32(0), now),
	}
	for _, v := range []struct {
		name     string
		dataType uint32
	}{{"Status", id.String}, {"Version", id.String}, {"Uptime", id.UInt32}} {
		sp.add(sp.root, id.HasComponent, &node{id: sp.nodeID(v.name), class: ua.NodeClassVariable, name: v.name,
			typeDef: id.BaseDataVariableType, dataType: v.dataType, value: copyOf(s.daemon, v.name)})
	}
	sp.cameras = sp.add(sp.root, id.Organizes, &node{id: sp.nodeID("Cameras"), class: ua.NodeClassObject, name: "Cameras", typeDef: id.FolderType})
}

// copyOf reads a value from a map (under the space's lock).
func copyOf(vals map[string]*ua.DataValue, key string) func() *ua.DataValue {
	return func() *ua.DataValue { v := *vals[key]; return &v }
}

func sourceValue(v any, at time.Time) *ua.DataValue {
	return &ua.DataValue{EncodingMask: ua.DataValueValue | ua.DataValueSourceTimestamp, Value: ua.MustVariant(v), SourceTimestamp: at}
}

// addCamera makes a camera's object (under the space's lock).
func (s *Server) addCamera(c *camera) {
	sp := s.sp
	path := cameraPath(c.name)
	c.obj = sp.add(sp.cameras, id.Organizes, &node{id: sp.nodeID(path), class: ua.NodeClassObject, name: c.name, typeDef: id.BaseObjectType})
	for _, v := range cameraVars {
		n := &node{id: sp.nodeID(path + "/" + v.name), class: ua.NodeClassVariable, name: v.name, typeDef: id.BaseDataVariableType,
			dataType: v.dataType, value: copyOf(c.vals, v.name)}
		switch v.name {
		case "Detect":
			n.write = s.writeDetect(c.name)
		case "Threshold":
			n.write = s.writeThreshold(c.name)
		}
		sp.add(c.obj, id.HasComponent, n)
	}
	if !c.triggered {
		return
	}
	result := sp.add(c.obj, id.HasComponent, &node{id: sp.nodeID(path + "/LastResult"), class: ua.NodeClassObject, name: "LastResult", typeDef: id.BaseObjectType})
	for _, v := range resultVars {
		key := "LastResult/" + v.name
		sp.add(result, id.HasComponent, &node{id: sp.nodeID(path + "/" + key), class: ua.NodeClassVariable, name: v.name,
			typeDef: id.BaseDataVariableType, dataType: v.dataType, array: v.name == "Region", value: copyOf(c.vals, key)})
	}
	method := sp.add(c.obj, id.HasComponent, &node{id: sp.nodeID(path + "/Trigger"), class: ua.NodeClassMethod, name: "Trigger", call: s.callTrigger(c.name)})
	for _, a := range []struct{ name, arg, help string }{
		{"InputArguments", "PartId", "the part's id (empty: the next count)"},
		{"OutputArguments", "PartId", "the part's id; its verdict arrives in LastResult"},
	} {
		arg := ua.NewExtensionObject(&ua.Argument{Name: a.arg, DataType: ua.NewNumericNodeID(0, id.String), ValueRank: -1,
			ArrayDimensions: []uint32{}, Description: &ua.LocalizedText{EncodingMask: ua.LocalizedTextText, Text: a.help}})
		val := &ua.DataValue{EncodingMask: ua.DataValueValue, Value: ua.MustVariant([]*ua.ExtensionObject{arg})}
		sp.add(method, id.HasProperty, &node{id: sp.nodeID(path + "/Trigger/" + a.name), class: ua.NodeClassVariable, name: a.name,
			typeDef: id.PropertyType, dataType: id.Argument, array: true, value: func() *ua.DataValue { v := *val; return &v }})
	}
}

// newCamera makes a camera's values before its first report.
func newCamera(name string, triggered bool) *camera {
	c := &camera{name: name, triggered: triggered, vals: map[string]*ua.DataValue{}}
	var zero time.Time
	for _, v := range cameraVars {
		switch v.dataType {
		case id.Boolean:
			c.vals[v.name] = sourceValue(false, zero)
		case id.Double:
			c.vals[v.name] = sourceValue(math.NaN(), zero)
		}
	}
	c.setResult(Result{Score: math.NaN()}, zero)
	return c
}

// setResult stores a part result's values.
func (c *camera) setResult(r Result, at time.Time) {
	region := r.Region
	if region == nil {
		region = []int32{}
	}
	for k, v := range map[string]any{
		"PartId": r.PartID, "Verdict": r.Verdict, "Score": r.Score, "Region": region,
		"TriggerTime": r.TriggerTime, "ResultTime": r.ResultTime, "LatencyMs": r.LatencyMS, "ResultCounter": c.counter,
	} {
		c.vals["LastResult/"+k] = sourceValue(v, at)
	}
}

// set stores a value; it says whether it changed (its source timestamp
// then is at).
func (c *camera) set(key string, v any, at time.Time) bool {
	if old := c.vals[key]; old != nil && same(old.Value.Value(), v) {
		return false
	}
	c.vals[key] = sourceValue(v, at)
	return true
}

func same(a, b any) bool {
	if x, ok := a.(float64); ok {
		y, ok := b.(float64)
		return ok && (x == y || math.IsNaN(x) && math.IsNaN(y))
	}
	return a == b
}

// sync applies the cameras' reported state: objects of new cameras
// appear, removed ones go, values that changed are notified.
func (s *Server) sync(cams []Camera) {
	now := time.Now()
	var changed []change
	sp := s.sp
	sp.mu.Lock()
	seen := map[string]bool{}
	for _, rc := range cams {
		seen[rc.Name] = true
		c := s.cams[rc.Name]
		if c != nil && c.obj != nil && c.triggered != rc.Triggered {
			sp.remove(c.obj) // made anew with or without LastResult
			c.obj, c.triggered = nil, rc.Triggered
		}
		if c == nil {
			c = newCamera(rc.Name, rc.Triggered)
			s.cams[rc.Name] = c
		}
		if c.obj == nil {
			s.addCamera(c)
		}
		for k, v := range map[string]any{"Online": rc.Online, "Ready": rc.Ready, "Busy": rc.Busy, "Detect": rc.Detect,
			"Threshold": rc.Threshold, "LastScore": rc.LastScore, "LastAnomalous": rc.LastAnomalous, "FPS": rc.FPS} {
			if c.set(k, v, now) {
				changed = append(changed, change{sp.nodeID(cameraPath(rc.Name) + "/" + k), snapshot(c.vals[k])})
			}
		}
	}
	for name, c := range s.cams {
		if !seen[name] {
			if c.obj != nil {
				sp.remove(c.obj)
			}
			delete(s.cams, name)
		}
	}
	// Reorder the folder as the configuration lists the cameras.
	slices.SortStableFunc(sp.cameras.children, func(a, b *node) int {
		return slices.IndexFunc(cams, func(c Camera) bool { return c.Name == a.name }) - slices.IndexFunc(cams, func(c Camera) bool { return c.Name == b.name })
	})
	up := uint32(now.Sub(s.opts.Started).Seconds())
	if s.daemon["Uptime"].Value.Value() != up {
		s.daemon["Uptime"] = sourceValue(up, now)
		changed = append(changed, change{sp.nodeID("Uptime"), snapshot(s.daemon["Uptime"])})
	}
	s.enqueue(changed...)
	sp.mu.Unlock()
}

func (s *Server) setDaemon(key string, v any, at time.Time) {
	s.sp.mu.Lock()
	s.daemon[key] = sourceValue(v, at)
	s.enqueue(change{s.sp.nodeID(key), snapshot(s.daemon[key])})
	s.sp.mu.Unlock()
}

// Publish shows a camera's new part result in its LastResult, each
// variable with the result time as source timestamp, and notifies every
// LastResult variable once.
func (s *Server) Publish(cameraName string, r Result) {
	sp := s.sp
	sp.mu.Lock()
	c := s.cams[cameraName]
	if c == nil { // a camera a reload just added: its object follows
		c = newCamera(cameraName, true)
		s.cams[cameraName] = c
	}
	c.counter++
	c.setResult(r, r.ResultTime)
	changes := make([]change, 0, len(resultVars))
	for _, v := range resultVars {
		key := "LastResult/" + v.name
		changes = append(changes, change{sp.nodeID(cameraPath(cameraName) + "/" + key), snapshot(c.vals[key])})
	}
	s.enqueue(changes...) // under the lock: in the results' order
	sp.mu.Unlock()
}

// change is a variable's new value, as it was when it changed: results
// that follow each other faster than the notifications go out are each
// notified with their own values.
type change struct {
	node  *ua.NodeID
	value *ua.DataValue
}

// snapshot copies a value (under the space's lock).
func snapshot(v *ua.DataValue) *ua.DataValue {
	c := *v
	c.ServerTimestamp = time.Now()
	c.EncodingMask |= ua.DataValueServerTimestamp
	return &c
}

// enqueue hands changes to the delivery goroutine without waiting (the
// daemon's result path never waits for a client); called under the
// space's lock, so changes queue in the order they were made.
func (s *Server) enqueue(changes ...change) {
	for _, ch := range changes {
		select {
		case s.notify <- ch:
		default:
			if s.dropped.Add(1) == 1 {
				slog.Warn("OPC UA notifications dropped: a subscription is not being served", "node", ch.node.String())
			}
		}
	}
}

// deliver notifies the subscriptions of changed nodes.
func (s *Server) deliver(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case ch := <-s.notify:
			s.changed(ch)
		}
	}
}

// sample reads the cameras' state every SampleInterval.
func (s *Server) sample(ctx context.Context) {
	t := time.NewTicker(s.opts.SampleInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sync(s.src.Cameras())
		}
	}
}

func (s *Server) writeDetect(camera string) func(*ua.Variant) ua.StatusCode {
	return func(v *ua.Variant) ua.StatusCode {
		on, ok := v.Value().(bool)
		if !ok {
			return ua.StatusBadTypeMismatch
		}
		if err := s.src.SetDetect(camera, on); err != nil {
			slog.Warn("OPC UA write of Detect failed", "camera", camera, "err", err)
			return ua.StatusBadInternalError
		}
		slog.Info("OPC UA write applied", "camera", camera, "detect", on)
		s.refresh(camera, "Detect", on)
		return ua.StatusOK
	}
}

func (s *Server) writeThreshold(camera string) func(*ua.Variant) ua.StatusCode {
	return func(v *ua.Variant) ua.StatusCode {
		t, ok := v.Value().(float64)
		if !ok {
			return ua.StatusBadTypeMismatch
		}
		if math.IsNaN(t) || math.IsInf(t, 0) {
			return ua.StatusBadOutOfRange
		}
		if err := s.src.SetThreshold(camera, t); err != nil {
			slog.Warn("OPC UA write of Threshold failed", "camera", camera, "err", err)
			return ua.StatusBadInternalError
		}
		slog.Info("OPC UA write applied", "camera", camera, "threshold", t)
		s.refresh(camera, "Threshold", t)
		return ua.StatusOK
	}
}

// refresh shows a written value at once (the next sample confirms it).
func (s *Server) refresh(camera, key string, v any) {
	s.sp.mu.Lock()
	c := s.cams[camera]
	if c == nil || !c.set(key, v, time.Now()) {
		s.sp.mu.Unlock()
		return
	}
	s.enqueue(change{s.sp.nodeID(cameraPath(camera) + "/" + key), snapshot(c.vals[key])})
	s.sp.mu.Unlock()
}

// callTrigger is a camera's Trigger(PartId) method: it returns the part's
// id; the verdict arrives in LastResult.
func (s *Server) callTrigger(camera string) func([]*ua.Variant) ([]*ua.Variant, []ua.StatusCode, ua.StatusCode) {
	return func(args []*ua.Variant) ([]*ua.Variant, []ua.StatusCode, ua.StatusCode) {
		part := ""
		switch len(args) {
		case 0:
		case 1:
			p, ok := args[0].Value().(string)
			if !ok && args[0].Value() != nil {
				return nil, []ua.StatusCode{ua.StatusBadTypeMismatch}, ua.StatusBadInvalidArgument
			}
			part = p
		default:
			return nil, nil, ua.StatusBadTooManyArguments
		}
		got, err := s.src.Trigger(camera, part)
		if err != nil {
			slog.Warn("OPC UA trigger refused", "camera", camera, "err", err)
			return nil, nil, ua.StatusBadInvalidState
		}
		return []*ua.Variant{ua.MustVariant(got)}, nil, ua.StatusOK
	}
}

// endpoints describes the server's endpoints: each URL with each secure
// policy, SignAndEncrypt, for a user's password or a certificate (and
// anonymous, with the None policy, when allowed).
func endpoints(urls []string, cert []byte, opts Options) []*ua.EndpointDescription {
	app := &ua.ApplicationDescription{ApplicationURI: opts.ApplicationURI, ProductURI: "urn:transformaly",
		ApplicationName: &ua.LocalizedText{EncodingMask: ua.LocalizedTextText, Text: "transformaly"},
		ApplicationType: ua.ApplicationTypeServer, DiscoveryURLs: urls}
	var eps []*ua.EndpointDescription
	for _, u := range urls {
		for i, p := range securePolicies {
			uri := ua.SecurityPolicyURIPrefix + p
			name := strings.ToLower(p)
			tokens := []*ua.UserTokenPolicy{
				{PolicyID: "username_" + name, TokenType: ua.UserTokenTypeUserName, SecurityPolicyURI: uri},
				{PolicyID: "certificate_" + name, TokenType: ua.UserTokenTypeCertificate, SecurityPolicyURI: uri},
			}
			if opts.AllowAnonymous {
				tokens = append(tokens, &ua.UserTokenPolicy{PolicyID: "anonymous", TokenType: ua.UserTokenTypeAnonymous})
			}
			eps = append(eps, &ua.EndpointDescription{EndpointURL: u, Server: app, ServerCertificate: cert,
				SecurityMode: ua.MessageSecurityModeSignAndEncrypt, SecurityPolicyURI: uri, UserIdentityTokens: tokens,
				TransportProfileURI: transportProfile, SecurityLevel: uint8(100 + i)})
		}
		if opts.AllowAnonymous {
			eps = append(eps, &ua.EndpointDescription{EndpointURL: u, Server: app, ServerCertificate: cert,
				SecurityMode: ua.MessageSecurityModeNone, SecurityPolicyURI: ua.SecurityPolicyURINone,
				UserIdentityTokens:  []*ua.UserTokenPolicy{{PolicyID: "anonymous", TokenType: ua.UserTokenTypeAnonymous}},
				TransportProfileURI: transportProfile})
		}
	}
	return eps
}

const transportProfile = "http://opcfoundation.org/UA-Profile/Transport/uatcp-uasc-uabinary"
