package opcua

import (
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

// fakeLine is the daemon as the address space sees it: two cameras, line1
// triggered; a trigger's result comes back a few milliseconds later, NG
// for part ids starting with "bad".
type fakeLine struct {
	mu         sync.Mutex
	cams       []Camera
	srv        *Server
	thresholds []float64
	detects    []bool
}

func newFakeLine() *fakeLine {
	return &fakeLine{cams: []Camera{
		{Name: "line1", Triggered: true, Online: true, Ready: true, Detect: true, Threshold: 0.5, LastScore: math.NaN(), FPS: 25},
		{Name: "line2", Online: true, Detect: true, Threshold: 2, LastScore: 1.25, FPS: 10},
	}}
}

func (f *fakeLine) Cameras() []Camera {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.cams)
}

func (f *fakeLine) setCameras(cams []Camera) {
	f.mu.Lock()
	f.cams = cams
	f.mu.Unlock()
}

func (f *fakeLine) Trigger(camera, part string) (string, error) {
	if camera != "line1" {
		return "", fmt.Errorf("camera %q has no trigger", camera)
	}
	at := time.Now()
	go func() {
		time.Sleep(5 * time.Millisecond)
		r := Result{PartID: part, Verdict: "ok", Score: 0.25, TriggerTime: at, ResultTime: time.Now()}
		if strings.HasPrefix(part, "bad") {
			r.Verdict, r.Score, r.Region = "ng", 0.75, []int32{10, 20, 30, 40}
		}
		r.LatencyMS = float64(r.ResultTime.Sub(at).Microseconds()) / 1000
		f.srv.Publish(camera, r)
	}()
	return part, nil
}

func (f *fakeLine) SetDetect(camera string, on bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.detects = append(f.detects, on)
	f.cams[0].Detect = on // as the daemon: it reports what it was told
	return nil
}

func (f *fakeLine) SetThreshold(camera string, t float64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.thresholds = append(f.thresholds, t)
	f.cams[0].Threshold = t
	return nil
}

// pki is made once: the server's certificate, a trusted client's and an
// untrusted one's (RSA key generation is the slow part).
var pki struct {
	once                     sync.Once
	dir                      string
	serverCert, serverKey    string
	trusted, untrusted       []byte
	trustedKey, untrustedKey *rsa.PrivateKey
}

func TestMain(m *testing.M) {
	code := m.Run()
	if pki.dir != "" {
		os.RemoveAll(pki.dir)
	}
	os.Exit(code)
}

func makePKI(t *testing.T) {
	pki.once.Do(func() {
		dir, err := os.MkdirTemp("", "opcua-pki")
		if err != nil {
			t.Fatal(err)
		}
		pki.dir = dir
		pki.serverCert, pki.serverKey = filepath.Join(dir, "server.der"), filepath.Join(dir, "server.pem")
		if _, _, err := createCertificate(pki.serverCert, pki.serverKey, "urn:test:transformaly", []string{"localhost", "127.0.0.1"}); err != nil {
			t.Fatal(err)
		}
		pki.trusted, pki.trustedKey, err = createCertificate(filepath.Join(dir, "trusted.der"), filepath.Join(dir, "trusted.pem"), "urn:test:scada", []string{"localhost"})
		if err != nil {
			t.Fatal(err)
		}
		pki.untrusted, pki.untrustedKey, err = createCertificate(filepath.Join(dir, "untrusted.der"), filepath.Join(dir, "untrusted.pem"), "urn:test:intruder", []string{"localhost"})
		if err != nil {
			t.Fatal(err)
		}
	})
	if pki.trusted == nil {
		t.Fatal("test PKI not made")
	}
}

func freeAddress(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "opc.tcp://" + l.Addr().String()
}

// startServer serves a fakeLine with the trusted client's certificate in
// the trusted folder and one user, operator.
func startServer(t *testing.T, change func(*Options)) (*Server, *fakeLine) {
	makePKI(t)
	trusted := t.TempDir()
	if err := os.WriteFile(filepath.Join(trusted, "scada.der"), pki.trusted, 0o644); err != nil {
		t.Fatal(err)
	}
	opts := Options{Address: freeAddress(t), CertificateFile: pki.serverCert, KeyFile: pki.serverKey, TrustedDir: trusted,
		RejectedDir: filepath.Join(t.TempDir(), "rejected"), Users: map[string]string{"operator": "s3cret"}, Version: "test",
		SampleInterval: 20 * time.Millisecond}
	if change != nil {
		change(&opts)
	}
	line := newFakeLine()
	s, err := Start(opts, line)
	if err != nil {
		t.Fatal(err)
	}
	line.srv = s
	t.Cleanup(s.Close)
	return s, line
}

// connect opens a session: policy "None" forces the None policy and an
// anonymous identity whatever the endpoints offer.
func connect(t *testing.T, address, policy string, cert []byte, key *rsa.PrivateKey, auth ua.UserTokenType, user, pass string) (*opcua.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := []opcua.Option{opcua.AutoReconnect(false), opcua.RequestTimeout(5 * time.Second)}
	if cert != nil {
		opts = append(opts, opcua.Certificate(cert), opcua.PrivateKey(key))
	}
	if policy == "None" {
		opts = append(opts, opcua.SecurityPolicy("None"), opcua.SecurityMode(ua.MessageSecurityModeNone), opcua.AuthAnonymous(), opcua.AuthPolicyID("anonymous"))
	} else {
		eps, err := opcua.GetEndpoints(ctx, address)
		if err != nil {
			t.Fatal(err)
		}
		ep, err := opcua.SelectEndpoint(eps, policy, ua.MessageSecurityModeSignAndEncrypt)
		if err != nil {
			t.Fatal(err)
		}
		switch auth {
		case ua.UserTokenTypeUserName:
			opts = append(opts, opcua.AuthUsername(user, pass))
		case ua.UserTokenTypeCertificate:
			opts = append(opts, opcua.AuthCertificate(cert), opcua.AuthPrivateKey(key))
		case ua.UserTokenTypeAnonymous:
			opts = append(opts, opcua.AuthAnonymous())
		}
		opts = append(opts, opcua.SecurityFromEndpoint(ep, auth))
	}
	c, err := opcua.NewClient(address, opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(ctx); err != nil {
		c.Close(context.Background())
		return nil, err
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c, nil
}

func operator(t *testing.T, s *Server) *opcua.Client {
	t.Helper()
	c, err := connect(t, s.opts.Address, "Basic256Sha256", pki.trusted, pki.trustedKey, ua.UserTokenTypeUserName, "operator", "s3cret")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func nodeOf(c *opcua.Client, path string) *ua.NodeID {
	ns, err := c.FindNamespace(context.Background(), NamespaceURI)
	if err != nil {
		panic(err)
	}
	return ua.NewStringNodeID(ns, path)
}

func browseNames(t *testing.T, c *opcua.Client, nid *ua.NodeID) []string {
	t.Helper()
	resp, err := c.Browse(context.Background(), &ua.BrowseRequest{NodesToBrowse: []*ua.BrowseDescription{{
		NodeID: nid, BrowseDirection: ua.BrowseDirectionForward, ReferenceTypeID: ua.NewNumericNodeID(0, id.HierarchicalReferences),
		IncludeSubtypes: true, ResultMask: uint32(ua.BrowseResultMaskAll)}}})
	if err != nil {
		t.Fatal(err)
	}
	if s := resp.Results[0].StatusCode; s != ua.StatusOK {
		t.Fatalf("browse %s: %s", nid, s)
	}
	var names []string
	for _, r := range resp.Results[0].References {
		names = append(names, r.BrowseName.Name)
	}
	return names
}

func read(t *testing.T, c *opcua.Client, nid *ua.NodeID, attr ua.AttributeID) *ua.DataValue {
	t.Helper()
	resp, err := c.Read(context.Background(), &ua.ReadRequest{NodesToRead: []*ua.ReadValueID{{NodeID: nid, AttributeID: attr}},
		TimestampsToReturn: ua.TimestampsToReturnBoth})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Results[0]
}

func write(t *testing.T, c *opcua.Client, nid *ua.NodeID, v any) ua.StatusCode {
	t.Helper()
	resp, err := c.Write(context.Background(), &ua.WriteRequest{NodesToWrite: []*ua.WriteValue{{NodeID: nid, AttributeID: ua.AttributeIDValue,
		Value: &ua.DataValue{EncodingMask: ua.DataValueValue, Value: ua.MustVariant(v)}}}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Results[0]
}

func trigger(c *opcua.Client, camera, part string) (string, error) {
	res, err := c.Call(context.Background(), &ua.CallMethodRequest{ObjectID: nodeOf(c, cameraPath(camera)),
		MethodID: nodeOf(c, cameraPath(camera)+"/Trigger"), InputArguments: []*ua.Variant{ua.MustVariant(part)}})
	if err != nil {
		return "", err
	}
	if res.StatusCode != ua.StatusOK {
		return "", res.StatusCode
	}
	return res.OutputArguments[0].Value().(string), nil
}

// A SCADA's session (Basic256Sha256, a user's password, a trusted
// certificate) browses the cameras, reads their state, subscribes to a
// triggered camera's LastResult and triggers parts by the method: each
// part's result arrives once, with its id, verdict and result time.
func TestSessionBrowsesSubscribesAndTriggers(t *testing.T) {
	s, _ := startServer(t, nil)
	c := operator(t, s)
	ctx := context.Background()

	if got := browseNames(t, c, ua.NewNumericNodeID(0, id.ObjectsFolder)); !slices.Contains(got, "transformaly") {
		t.Errorf("Objects folder: %v, no transformaly", got)
	}
	if got, want := browseNames(t, c, nodeOf(c, "transformaly")), []string{"Status", "Version", "Uptime", "Cameras"}; !slices.Equal(got, want) {
		t.Errorf("transformaly object: %v, want %v", got, want)
	}
	if got := browseNames(t, c, nodeOf(c, "Cameras")); !slices.Equal(got, []string{"line1", "line2"}) {
		t.Errorf("cameras %v, want line1 and line2 in configuration order", got)
	}
	want1 := []string{"Online", "Ready", "Busy", "Detect", "Threshold", "LastScore", "LastAnomalous", "FPS", "LastResult", "Trigger"}
	if got := browseNames(t, c, nodeOf(c, cameraPath("line1"))); !slices.Equal(got, want1) {
		t.Errorf("line1 (triggered): %v, want %v", got, want1)
	}
	if got := browseNames(t, c, nodeOf(c, cameraPath("line2"))); !slices.Equal(got, want1[:8]) {
		t.Errorf("line2 (not triggered): %v, want %v", got, want1[:8])
	}
	if got := browseNames(t, c, nodeOf(c, cameraPath("line1")+"/LastResult")); len(got) != 8 || got[0] != "PartId" {
		t.Errorf("LastResult: %v", got)
	}
	for path, want := range map[string]any{"Version": "test", "Status": "running", "Cameras/line2/Threshold": 2.0, "Cameras/line2/LastScore": 1.25,
		"Cameras/line1/Online": true, "Cameras/line1/Ready": true, "Cameras/line2/FPS": 10.0} {
		if v := read(t, c, nodeOf(c, path), ua.AttributeIDValue); v.Status != ua.StatusOK || v.Value.Value() != want || v.SourceTimestamp.IsZero() {
			t.Errorf("%s: %v (status %s, source time %v), want %v", path, v.Value.Value(), v.Status, v.SourceTimestamp, want)
		}
	}
	if v := read(t, c, nodeOf(c, "Cameras/line2/LastResult/PartId"), ua.AttributeIDValue); v.Status != ua.StatusBadNodeIDUnknown {
		t.Errorf("line2's LastResult read: %s, want no such node", v.Status)
	}
	if v := read(t, c, nodeOf(c, "Cameras/line1/Threshold"), ua.AttributeIDDataType); v.Value.Value().(*ua.NodeID).IntID() != id.Double {
		t.Errorf("Threshold's data type %v", v.Value.Value())
	}

	notes := make(chan *opcua.PublishNotificationData, 64)
	sub, err := c.Subscribe(ctx, &opcua.SubscriptionParameters{Interval: 10 * time.Millisecond}, notes)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Cancel(ctx)
	handles := map[uint32]string{1: "PartId", 2: "Verdict", 3: "ResultCounter"}
	var reqs []*ua.MonitoredItemCreateRequest
	for h := uint32(1); h <= 3; h++ {
		reqs = append(reqs, opcua.NewMonitoredItemCreateRequestWithDefaults(nodeOf(c, "Cameras/line1/LastResult/"+handles[h]), ua.AttributeIDValue, h))
	}
	if _, err := sub.Monitor(ctx, ua.TimestampsToReturnBoth, reqs...); err != nil {
		t.Fatal(err)
	}
	// Notifications per variable, in order.
	got := map[string][]*ua.DataValue{}
	receive := func(until func() bool) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for !until() {
			select {
			case n := <-notes:
				if n.Error != nil {
					t.Fatal(n.Error)
				}
				if dc, ok := n.Value.(*ua.DataChangeNotification); ok {
					for _, item := range dc.MonitoredItems {
						got[handles[item.ClientHandle]] = append(got[handles[item.ClientHandle]], item.Value)
					}
				}
			case <-deadline:
				t.Fatalf("notifications: %d part ids, %d verdicts, %d counters", len(got["PartId"]), len(got["Verdict"]), len(got["ResultCounter"]))
			}
		}
	}
	complete := func(n int) func() bool {
		return func() bool {
			return len(got["PartId"]) >= n && len(got["Verdict"]) >= n && len(got["ResultCounter"]) >= n
		}
	}
	receive(complete(1)) // the initial values
	parts := []string{"p1", "bad2", "p3", "bad4", "p5"}
	for i, part := range parts {
		sent := time.Now()
		id, err := trigger(c, "line1", part)
		if err != nil || id != part {
			t.Fatalf("Trigger(%s): %q, %v", part, id, err)
		}
		receive(complete(i + 2))
		verdict := "ok"
		if strings.HasPrefix(part, "bad") {
			verdict = "ng"
		}
		pid, v, n := got["PartId"][i+1], got["Verdict"][i+1], got["ResultCounter"][i+1]
		if pid.Value.Value() != part || v.Value.Value() != verdict || n.Value.Value() != uint32(i+1) {
			t.Errorf("part %s: notified %v, %v, counter %v; want %s, %s, %d", part, pid.Value.Value(), v.Value.Value(), n.Value.Value(), part, verdict, i+1)
		}
		if ts := v.SourceTimestamp; ts.Before(sent) || ts.After(time.Now()) || !ts.Equal(pid.SourceTimestamp) {
			t.Errorf("part %s: source timestamps %v and %v, not its result time", part, ts, pid.SourceTimestamp)
		}
	}
	time.Sleep(100 * time.Millisecond) // ten publishing intervals: nothing more comes
	receive(func() bool { return len(notes) == 0 })
	if len(got["PartId"]) != len(parts)+1 || len(got["Verdict"]) != len(parts)+1 {
		t.Errorf("%d part id and %d verdict notifications for %d results: each result once", len(got["PartId"])-1, len(got["Verdict"])-1, len(parts))
	}
	if v := read(t, c, nodeOf(c, "Cameras/line1/LastResult/Region"), ua.AttributeIDValue); !slices.Equal(v.Value.Value().([]int32), []int32{}) {
		t.Errorf("an OK part's region %v, want none", v.Value.Value())
	}
	if _, err := trigger(c, "line2", "x"); !errors.Is(err, ua.StatusBadMethodInvalid) {
		t.Errorf("Trigger on a camera without trigger: %v", err)
	}
}

// The daemon's security defaults: only SignAndEncrypt endpoints; a None
// or anonymous session, a wrong password, an unknown user and a
// certificate not in the trusted folder are refused (the last kept for
// review); a trusted certificate alone (X509 identity) is a user.
func TestRefusesWhatIsNotAllowed(t *testing.T) {
	s, _ := startServer(t, nil)
	eps, err := opcua.GetEndpoints(context.Background(), s.opts.Address)
	if err != nil {
		t.Fatal(err)
	}
	var policies []string
	for _, ep := range eps {
		if ep.SecurityMode != ua.MessageSecurityModeSignAndEncrypt {
			t.Errorf("endpoint %s with mode %s", ep.SecurityPolicyURI, ep.SecurityMode)
		}
		for _, tok := range ep.UserIdentityTokens {
			if tok.TokenType == ua.UserTokenTypeAnonymous {
				t.Errorf("endpoint %s offers anonymous sessions", ep.SecurityPolicyURI)
			}
		}
		policies = append(policies, strings.TrimPrefix(ep.SecurityPolicyURI, ua.SecurityPolicyURIPrefix))
	}
	slices.Sort(policies)
	if want := slices.Sorted(slices.Values(securePolicies)); !slices.Equal(policies, want) {
		t.Errorf("endpoints' policies %v, want %v", policies, want)
	}

	refused := func(what string, err error, code ua.StatusCode) {
		t.Helper()
		if !errors.Is(err, code) {
			t.Errorf("%s: %v, want %s", what, err, code)
		}
	}
	_, err = connect(t, s.opts.Address, "None", pki.trusted, pki.trustedKey, ua.UserTokenTypeAnonymous, "", "")
	refused("policy None, anonymous", err, ua.StatusBadSecurityPolicyRejected)
	_, err = connect(t, s.opts.Address, "Basic256Sha256", pki.trusted, pki.trustedKey, ua.UserTokenTypeAnonymous, "", "")
	refused("anonymous over Basic256Sha256", err, ua.StatusBadIdentityTokenRejected)
	_, err = connect(t, s.opts.Address, "Basic256Sha256", pki.trusted, pki.trustedKey, ua.UserTokenTypeUserName, "operator", "guess")
	refused("wrong password", err, ua.StatusBadUserAccessDenied)
	_, err = connect(t, s.opts.Address, "Basic256Sha256", pki.trusted, pki.trustedKey, ua.UserTokenTypeUserName, "root", "s3cret")
	refused("unknown user", err, ua.StatusBadUserAccessDenied)
	_, err = connect(t, s.opts.Address, "Aes256_Sha256_RsaPss", pki.untrusted, pki.untrustedKey, ua.UserTokenTypeUserName, "operator", "s3cret")
	refused("untrusted certificate with the right password", err, ua.StatusBadCertificateUntrusted)
	_, err = connect(t, s.opts.Address, "Aes128_Sha256_RsaOaep", pki.untrusted, pki.untrustedKey, ua.UserTokenTypeCertificate, "", "")
	refused("untrusted certificate as identity", err, ua.StatusBadCertificateUntrusted)
	if kept, _ := filepath.Glob(filepath.Join(s.opts.RejectedDir, "*.der")); len(kept) != 1 {
		t.Errorf("rejected folder: %v, want the untrusted certificate once", kept)
	} else if data, _ := os.ReadFile(kept[0]); !slices.Equal(data, pki.untrusted) {
		t.Errorf("rejected folder keeps %s, not the refused certificate", kept[0])
	}

	// Every policy serves the right user, and a trusted certificate alone.
	for _, p := range securePolicies {
		c, err := connect(t, s.opts.Address, p, pki.trusted, pki.trustedKey, ua.UserTokenTypeUserName, "operator", "s3cret")
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if v := read(t, c, nodeOf(c, "Version"), ua.AttributeIDValue); v.Value.Value() != "test" {
			t.Errorf("%s: Version %v", p, v.Value.Value())
		}
	}
	if _, err := connect(t, s.opts.Address, "Aes256_Sha256_RsaPss", pki.trusted, pki.trustedKey, ua.UserTokenTypeCertificate, "", ""); err != nil {
		t.Errorf("trusted certificate as identity: %v", err)
	}
}

// allow_anonymous adds the None policy and anonymous sessions.
func TestAnonymousWhenAllowed(t *testing.T) {
	s, _ := startServer(t, func(o *Options) { o.AllowAnonymous = true })
	c, err := connect(t, s.opts.Address, "None", nil, nil, ua.UserTokenTypeAnonymous, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if v := read(t, c, nodeOf(c, "Status"), ua.AttributeIDValue); v.Value.Value() != "running" {
		t.Errorf("Status %v", v.Value.Value())
	}
	// Passwords never travel unencrypted, even then.
	if _, err := connect(t, s.opts.Address, "Basic256Sha256", pki.trusted, pki.trustedKey, ua.UserTokenTypeAnonymous, "", ""); err != nil {
		t.Errorf("anonymous over Basic256Sha256: %v", err)
	}
}

// Detect and Threshold are written only with allow_changes, and then go
// to the daemon; nothing else is writable.
func TestWritesNeedAllowChanges(t *testing.T) {
	for _, allow := range []bool{false, true} {
		s, line := startServer(t, func(o *Options) { o.AllowChanges = allow })
		c := operator(t, s)
		level := read(t, c, nodeOf(c, "Cameras/line1/Threshold"), ua.AttributeIDUserAccessLevel).Value.Value().(byte)
		code := write(t, c, nodeOf(c, "Cameras/line1/Threshold"), 0.75)
		if !allow {
			if code != ua.StatusBadUserAccessDenied || level&byte(ua.AccessLevelTypeCurrentWrite) != 0 {
				t.Errorf("without allow_changes: write %s, access level %d", code, level)
			}
			if len(line.thresholds) != 0 {
				t.Errorf("without allow_changes the daemon got thresholds %v", line.thresholds)
			}
			continue
		}
		if code != ua.StatusOK || level&byte(ua.AccessLevelTypeCurrentWrite) == 0 {
			t.Errorf("with allow_changes: write %s, access level %d", code, level)
		}
		if code := write(t, c, nodeOf(c, "Cameras/line1/Detect"), false); code != ua.StatusOK {
			t.Errorf("Detect write: %s", code)
		}
		if code := write(t, c, nodeOf(c, "Cameras/line1/Threshold"), "high"); code != ua.StatusBadTypeMismatch {
			t.Errorf("a string threshold: %s", code)
		}
		if code := write(t, c, nodeOf(c, "Cameras/line1/Threshold"), math.Inf(1)); code != ua.StatusBadOutOfRange {
			t.Errorf("an infinite threshold: %s", code)
		}
		for _, path := range []string{"Cameras/line1/LastScore", "Version"} {
			if code := write(t, c, nodeOf(c, path), 1.0); code != ua.StatusBadNotWritable {
				t.Errorf("%s write: %s", path, code)
			}
		}
		line.mu.Lock()
		if !slices.Equal(line.thresholds, []float64{0.75}) || !slices.Equal(line.detects, []bool{false}) {
			t.Errorf("the daemon got thresholds %v and detects %v", line.thresholds, line.detects)
		}
		line.mu.Unlock()
		if v := read(t, c, nodeOf(c, "Cameras/line1/Threshold"), ua.AttributeIDValue); v.Value.Value() != 0.75 {
			t.Errorf("Threshold reads %v after the write", v.Value.Value())
		}
	}
}

// A reload's cameras: a removed camera's object goes, a new one appears,
// and a camera that stays keeps its result counter.
func TestCamerasFollowTheDaemon(t *testing.T) {
	s, line := startServer(t, nil)
	c := operator(t, s)
	if _, err := trigger(c, "line1", "a"); err != nil {
		t.Fatal(err)
	}
	counter := func() any {
		return read(t, c, nodeOf(c, "Cameras/line1/LastResult/ResultCounter"), ua.AttributeIDValue).Value.Value()
	}
	deadline := time.Now().Add(5 * time.Second)
	for counter() != uint32(1) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cams := line.Cameras()
	line.setCameras([]Camera{{Name: "new/cam", Online: true, LastScore: math.NaN()}, cams[0]})
	for !slices.Equal(browseNames(t, c, nodeOf(c, "Cameras")), []string{"new/cam", "line1"}) {
		if time.Now().After(deadline) {
			t.Fatalf("cameras after the reload: %v", browseNames(t, c, nodeOf(c, "Cameras")))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if v := read(t, c, nodeOf(c, "Cameras/line2/Online"), ua.AttributeIDValue); v.Status != ua.StatusBadNodeIDUnknown {
		t.Errorf("removed camera's Online: %s", v.Status)
	}
	if v := read(t, c, nodeOf(c, "Cameras/new%2Fcam/Online"), ua.AttributeIDValue); v.Value.Value() != true {
		t.Errorf("new camera's Online: %v %s", v.Value.Value(), v.Status)
	}
	if got := counter(); got != uint32(1) {
		t.Errorf("line1's result counter after the reload: %v", got)
	}
}

func TestLoadUsers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "users")
	os.WriteFile(p, []byte("# SCADA\nscada:pa:ss\r\n\nmes:x\n"), 0o600)
	users, err := LoadUsers(p)
	if err != nil || len(users) != 2 || users["scada"] != "pa:ss" || users["mes"] != "x" {
		t.Errorf("users %v, %v", users, err)
	}
	os.WriteFile(p, []byte("scada:pw\nnopassword\n"), 0o600)
	if _, err := LoadUsers(p); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("a line without a password: %v", err)
	}
}

// A client that connects and says nothing, or sends no OPC UA, does not
// keep others out.
func TestSilentClientsDoNotStallOthers(t *testing.T) {
	s, _ := startServer(t, nil)
	addr := strings.TrimPrefix(s.opts.Address, "opc.tcp://")
	for _, hello := range []string{"", "GET / HTTP/1.1\r\n\r\n"} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte(hello))
	}
	done := make(chan error, 1)
	go func() {
		_, err := connect(t, s.opts.Address, "Basic256Sha256", pki.trusted, pki.trustedKey, ua.UserTokenTypeUserName, "operator", "s3cret")
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a session behind two silent connections did not open within 5 s")
	}
}

// Results that come faster than the publishing interval each reach the
// subscription, in order (a queue, not the newest value).
func TestResultsWithinOneIntervalEachArrive(t *testing.T) {
	s, _ := startServer(t, nil)
	c := operator(t, s)
	ctx := context.Background()
	notes := make(chan *opcua.PublishNotificationData, 64)
	sub, err := c.Subscribe(ctx, &opcua.SubscriptionParameters{Interval: 200 * time.Millisecond}, notes)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Cancel(ctx)
	if _, err := sub.Monitor(ctx, ua.TimestampsToReturnBoth, opcua.NewMonitoredItemCreateRequestWithDefaults(nodeOf(c, "Cameras/line1/LastResult/PartId"), ua.AttributeIDValue, 1)); err != nil {
		t.Fatal(err)
	}
	var got []any
	next := func() {
		select {
		case n := <-notes:
			if dc, ok := n.Value.(*ua.DataChangeNotification); ok {
				for _, it := range dc.MonitoredItems {
					got = append(got, it.Value.Value.Value())
				}
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("notifications so far: %v", got)
		}
	}
	for len(got) < 1 {
		next() // the current value
	}
	for i := range 5 {
		s.Publish("line1", Result{PartID: fmt.Sprint("q", i), Verdict: "ok", Score: 0.1, ResultTime: time.Now()})
	}
	for len(got) < 6 {
		next()
	}
	if want := []any{"", "q0", "q1", "q2", "q3", "q4"}; !slices.Equal(got, want) {
		t.Errorf("PartId notifications %v, want %v", got, want)
	}
}

// A PLC's way to a node: its browse path from Objects (TranslateBrowsePaths)
// and RegisterNodes; a browse of namespace 0 without subtypes answers (the
// library's panics on one).
func TestBrowsePathsAndNamespaceZero(t *testing.T) {
	s, _ := startServer(t, nil)
	c := operator(t, s)
	ctx := context.Background()
	ns, err := c.FindNamespace(ctx, NamespaceURI)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Node(ua.NewNumericNodeID(0, id.ObjectsFolder)).TranslateBrowsePathInNamespaceToNodeID(ctx, ns, "transformaly.Cameras.line1.LastResult.Verdict")
	if err != nil || !got.Equal(nodeOf(c, "Cameras/line1/LastResult/Verdict")) {
		t.Errorf("browse path to line1's verdict: %v, %v", got, err)
	}
	if _, err := c.Node(ua.NewNumericNodeID(0, id.ObjectsFolder)).TranslateBrowsePathInNamespaceToNodeID(ctx, ns, "transformaly.Cameras.line9"); !errors.Is(err, ua.StatusBadNoMatch) {
		t.Errorf("browse path to no camera: %v", err)
	}
	reg, err := c.RegisterNodes(ctx, &ua.RegisterNodesRequest{NodesToRegister: []*ua.NodeID{nodeOf(c, "Cameras/line1/Ready")}})
	if err != nil || len(reg.RegisteredNodeIDs) != 1 || read(t, c, reg.RegisteredNodeIDs[0], ua.AttributeIDValue).Value.Value() != true {
		t.Errorf("registered node: %v, %v", reg, err)
	}
	for _, refType := range []uint32{id.Organizes, id.References, id.HasChild} {
		done := make(chan *ua.BrowseResponse, 1)
		go func() {
			resp, err := c.Browse(ctx, &ua.BrowseRequest{NodesToBrowse: []*ua.BrowseDescription{{NodeID: ua.NewNumericNodeID(0, id.ObjectsFolder),
				BrowseDirection: ua.BrowseDirectionForward, ReferenceTypeID: ua.NewNumericNodeID(0, refType), ResultMask: uint32(ua.BrowseResultMaskAll)}}})
			if err != nil {
				t.Errorf("browse of Objects by reference type %d without subtypes: %v", refType, err)
			}
			done <- resp
		}()
		select {
		case resp := <-done:
			var names []string
			if resp != nil {
				for _, r := range resp.Results[0].References {
					names = append(names, r.BrowseName.Name)
				}
			}
			if refType == id.Organizes && !slices.Contains(names, "transformaly") {
				t.Errorf("Objects organizes %v", names)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("a browse of Objects by reference type %d without subtypes did not answer within 5 s", refType)
		}
	}
}
