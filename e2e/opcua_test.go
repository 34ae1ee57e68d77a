package e2e

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"

	uaserver "github.com/transformaly/transformaly/opcua"
)

// clientCertificate makes an OPC UA client's application certificate and
// key (what a SCADA creates on its first start).
func clientCertificate(t testing.TB, name string) ([]byte, *rsa.PrivateKey) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	uri, _ := url.Parse("urn:e2e:" + name)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), URIs: []*url.URL{uri}, DNSNames: []string{"localhost"},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment | x509.KeyUsageKeyEncipherment | x509.KeyUsageDataEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

// opcuaLine is a SCADA's view of a daemon: its endpoint and what a client
// needs to get in.
type opcuaLine struct {
	endpoint  string
	cert      []byte
	key       *rsa.PrivateKey
	user, pwd string
}

// opcuaSetup makes a users file and a trusted folder with a client's
// certificate, and gives the daemon's opcua section for them.
func opcuaSetup(t testing.TB, extra string) (opcuaLine, string) {
	dir := t.TempDir()
	users, trusted := filepath.Join(dir, "users"), filepath.Join(dir, "trusted")
	os.WriteFile(users, []byte("scada:line-3-secret\n"), 0o600)
	os.MkdirAll(trusted, 0o755)
	cert, key := clientCertificate(t, "scada")
	os.WriteFile(filepath.Join(trusted, "scada.der"), cert, 0o644)
	line := opcuaLine{endpoint: fmt.Sprintf("opc.tcp://127.0.0.1:%d", freePort(t)), cert: cert, key: key, user: "scada", pwd: "line-3-secret"}
	return line, fmt.Sprintf("opcua: {address: %q, users_file: %q, trusted_certificates: %q%s}", line.endpoint, users, trusted, extra)
}

// connectOPCUA opens a session over Basic256Sha256 with SignAndEncrypt
// (policy "None": the None policy and an anonymous identity), with a
// password when pwd is not empty, else the certificate as identity.
func connectOPCUA(t testing.TB, endpoint, policy string, cert []byte, key *rsa.PrivateKey, user, pwd string) (*opcua.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts := []opcua.Option{opcua.AutoReconnect(false), opcua.RequestTimeout(5 * time.Second), opcua.Certificate(cert), opcua.PrivateKey(key)}
	if policy == "None" {
		opts = append(opts, opcua.SecurityPolicy("None"), opcua.SecurityMode(ua.MessageSecurityModeNone), opcua.AuthAnonymous(), opcua.AuthPolicyID("anonymous"))
	} else {
		eps, err := opcua.GetEndpoints(ctx, endpoint)
		if err != nil {
			return nil, err
		}
		ep, err := opcua.SelectEndpoint(eps, policy, ua.MessageSecurityModeSignAndEncrypt)
		if err != nil {
			return nil, err
		}
		auth := ua.UserTokenTypeCertificate
		if pwd != "" {
			auth = ua.UserTokenTypeUserName
			opts = append(opts, opcua.AuthUsername(user, pwd))
		} else {
			opts = append(opts, opcua.AuthCertificate(cert), opcua.AuthPrivateKey(key))
		}
		opts = append(opts, opcua.SecurityFromEndpoint(ep, auth))
	}
	c, err := opcua.NewClient(endpoint, opts...)
	if err != nil {
		return nil, err
	}
	if err := c.Connect(ctx); err != nil {
		c.Close(context.Background())
		return nil, err
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c, nil
}

// scada connects as the line's SCADA once the daemon serves, and waits
// for line1 to be ready.
func (l opcuaLine) scada(t testing.TB) (*opcua.Client, func(path string) *ua.NodeID) {
	t.Helper()
	var c *opcua.Client
	eventually(t, "the OPC UA server", 30*time.Second, func() bool {
		var err error
		c, err = connectOPCUA(t, l.endpoint, "Basic256Sha256", l.cert, l.key, l.user, l.pwd)
		return err == nil
	})
	ns, err := c.FindNamespace(context.Background(), uaserver.NamespaceURI)
	if err != nil {
		t.Fatal(err)
	}
	node := func(path string) *ua.NodeID { return ua.NewStringNodeID(ns, path) }
	eventually(t, "line1 ready over OPC UA", 30*time.Second, func() bool { return readValue(t, c, node("Cameras/line1/Ready")) == true })
	return c, node
}

func readValue(t testing.TB, c *opcua.Client, nid *ua.NodeID) any {
	t.Helper()
	resp, err := c.Read(context.Background(), &ua.ReadRequest{NodesToRead: []*ua.ReadValueID{{NodeID: nid, AttributeID: ua.AttributeIDValue}}})
	if err != nil {
		t.Fatal(err)
	}
	if r := resp.Results[0]; r.Status != ua.StatusOK || r.Value == nil {
		return r.Status
	}
	return resp.Results[0].Value.Value()
}

func writeValue(t testing.TB, c *opcua.Client, nid *ua.NodeID, v any) ua.StatusCode {
	t.Helper()
	resp, err := c.Write(context.Background(), &ua.WriteRequest{NodesToWrite: []*ua.WriteValue{{NodeID: nid, AttributeID: ua.AttributeIDValue,
		Value: &ua.DataValue{EncodingMask: ua.DataValueValue, Value: ua.MustVariant(v)}}}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Results[0]
}

// resultWatch is a subscription to line1's LastResult: each new result's
// part id, verdict and counter.
type resultWatch struct {
	notes chan *opcua.PublishNotificationData
	seen  map[uint32][]any // by client handle: 1 PartId, 2 Verdict, 3 ResultCounter
}

func watchResults(t testing.TB, c *opcua.Client, node func(string) *ua.NodeID) *resultWatch {
	t.Helper()
	w := &resultWatch{notes: make(chan *opcua.PublishNotificationData, 256), seen: map[uint32][]any{}}
	ctx := context.Background()
	sub, err := c.Subscribe(ctx, &opcua.SubscriptionParameters{Interval: 10 * time.Millisecond}, w.notes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Cancel(context.Background()) })
	var reqs []*ua.MonitoredItemCreateRequest
	for h, name := range []string{"PartId", "Verdict", "ResultCounter"} {
		reqs = append(reqs, opcua.NewMonitoredItemCreateRequestWithDefaults(node("Cameras/line1/LastResult/"+name), ua.AttributeIDValue, uint32(h+1)))
	}
	if _, err := sub.Monitor(ctx, ua.TimestampsToReturnBoth, reqs...); err != nil {
		t.Fatal(err)
	}
	w.wait(t, 1) // the current values
	return w
}

// wait takes notifications until n of each variable came.
func (w *resultWatch) wait(t testing.TB, n int) {
	t.Helper()
	deadline := time.After(10 * time.Second) // a trigger's deadline is 2 s; the rest is a loaded CI box
	for len(w.seen[1]) < n || len(w.seen[2]) < n || len(w.seen[3]) < n {
		select {
		case p := <-w.notes:
			if p.Error != nil {
				t.Fatal(p.Error)
			}
			if dc, ok := p.Value.(*ua.DataChangeNotification); ok {
				for _, it := range dc.MonitoredItems {
					w.seen[it.ClientHandle] = append(w.seen[it.ClientHandle], it.Value.Value.Value())
				}
			}
		case <-deadline:
			t.Fatalf("LastResult notifications: %d part ids, %d verdicts, %d counters; want %d", len(w.seen[1]), len(w.seen[2]), len(w.seen[3]), n)
		}
	}
}

func triggerPart(c *opcua.Client, node func(string) *ua.NodeID, part string) (string, error) {
	res, err := c.Call(context.Background(), &ua.CallMethodRequest{ObjectID: node("Cameras/line1"), MethodID: node("Cameras/line1/Trigger"),
		InputArguments: []*ua.Variant{ua.MustVariant(part)}})
	if err != nil {
		return "", err
	}
	if res.StatusCode != ua.StatusOK {
		return "", res.StatusCode
	}
	return res.OutputArguments[0].Value().(string), nil
}

// A SCADA judges 20 parts over OPC UA (the gopcua client, Basic256Sha256,
// a user's password, its certificate trusted) on the looping part video:
// it browses the cameras, subscribes to line1's LastResult and triggers
// each part by the Trigger method; 20 notifications come, one a part,
// with the part ids and the verdicts the parts deserve, the same as MQTT's
// results. A Threshold written over OPC UA changes the verdicts (and is
// kept in control.json, published as MQTT's retained state).
func TestOPCUAJudgesTwentyParts(t *testing.T) {
	f := getDaemonFixture(t)
	threshold, bad := loopParts(t, f)
	b := startMosquitto(t, "")
	results := subscribe(t, b.url(), "transformaly/line1/#", "test-sub-opcua")
	line, section := opcuaSetup(t, ", allow_changes: true")
	state := t.TempDir()
	startDaemon(t, fmt.Sprintf(`
cameras:
  - {name: line1, source: %q, model: %q, loop: true, pace: true, threshold: %g, trigger: {deadline: 2s}}
mqtt: {broker: %s}
metrics: {address: "off"}
%s
state_directory: %q
`, f.loop, f.bundle, threshold, b.url(), section, state))
	c, node := line.scada(t)

	resp, err := c.Browse(context.Background(), &ua.BrowseRequest{NodesToBrowse: []*ua.BrowseDescription{{NodeID: node("Cameras"),
		BrowseDirection: ua.BrowseDirectionForward, ReferenceTypeID: ua.NewNumericNodeID(0, id.HierarchicalReferences), IncludeSubtypes: true,
		ResultMask: uint32(ua.BrowseResultMaskAll)}}})
	if err != nil || len(resp.Results[0].References) != 1 || resp.Results[0].References[0].BrowseName.Name != "line1" {
		t.Fatalf("cameras browsed: %v %v", resp, err)
	}
	mqttResult := results.partResult
	w := watchResults(t, c, node)
	ng := 0
	judge := func(i int, part string) string {
		t.Helper()
		got, err := triggerPart(c, node, part)
		if err != nil || got != part {
			t.Fatalf("Trigger(%s): %q, %v", part, got, err)
		}
		w.wait(t, i+2)
		eventually(t, part+"'s result over MQTT", 5*time.Second, func() bool { return mqttResult(part) != nil })
		r := mqttResult(part)
		if w.seen[1][i+1] != part || w.seen[2][i+1] != r["verdict"] || w.seen[3][i+1] != uint32(i+1) {
			t.Errorf("part %s: OPC UA notified %v, %v, counter %v; MQTT says %v", part, w.seen[1][i+1], w.seen[2][i+1], w.seen[3][i+1], r["verdict"])
		}
		return r["verdict"].(string)
	}
	// Triggers 7 frames (280 ms at 25 fps) apart step through the loop's
	// parts one by one: both verdicts come up several times.
	for i := range 20 {
		start := time.Now()
		part := fmt.Sprintf("P-%03d", i)
		verdict := judge(i, part)
		want := "ok"
		if bad(uint64(mqttResult(part)["frame"].(float64))) {
			want = "ng"
			ng++
		}
		if verdict != want {
			t.Errorf("part %s: verdict %s, want %s", part, verdict, want)
		}
		time.Sleep(time.Until(start.Add(280 * time.Millisecond)))
	}
	t.Logf("%d of 20 parts NG over OPC UA", ng)
	if ng == 0 || ng == 20 {
		t.Fatalf("%d of 20 parts NG: the triggers did not step through the loop", ng)
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(w.notes); n != 0 || len(w.seen[1]) != 21 {
		t.Errorf("%d part id notifications for 20 results, %d more waiting: each result once", len(w.seen[1])-1, n)
	}

	// Everything flagged: a threshold below every score.
	if code := writeValue(t, c, node("Cameras/line1/Threshold"), -1e9); code != ua.StatusOK {
		t.Fatalf("Threshold write: %s", code)
	}
	for i := 20; i < 22; i++ {
		if v := judge(i, fmt.Sprintf("P-%03d", i)); v != "ng" {
			t.Errorf("after the threshold write: verdict %s, want ng", v)
		}
	}
	var control map[string]struct{ Threshold *float64 }
	data, _ := os.ReadFile(filepath.Join(state, "control.json"))
	if json.Unmarshal(data, &control); control["line1"].Threshold == nil || *control["line1"].Threshold != -1e9 {
		t.Errorf("control.json after the write: %s", data)
	}
	eventually(t, "the threshold's retained state", 5*time.Second, func() bool {
		s := results.on("transformaly/line1/threshold/state")
		return len(s) > 0 && string(s[len(s)-1].Payload) == "-1e+09"
	})
}

// The security defaults, on a daemon without allow_changes: Threshold
// writes are refused; anonymous and None-policy sessions, a wrong
// password and a certificate not in the trusted folder are refused; the
// trusted certificate alone gets in. A reload keeps a camera's node by
// name (its result counter and the subscription on it); a removed
// camera's object goes, a new one appears.
func TestOPCUADefaultsAndReload(t *testing.T) {
	f := getDaemonFixture(t)
	line, section := opcuaSetup(t, "")
	brokerPort, state := freePort(t), t.TempDir()
	config := func(second string) string {
		return fmt.Sprintf(`
cameras:
  - {name: line1, source: %q, model: %q, loop: true, pace: true, trigger: {deadline: 2s}}
  - {name: %s, source: %q, model: %q, loop: true, pace: true, trigger: {deadline: 2s}}
mqtt: {broker: embedded, embedded_address: "127.0.0.1:%d"}
metrics: {address: "off"}
%s
state_directory: %q
`, f.loop, f.bundle, second, f.loop, f.bundle, brokerPort, section, state)
	}
	d := startDaemon(t, config("lineB"))
	c, node := line.scada(t)
	before := readValue(t, c, node("Cameras/line1/Threshold"))
	if code := writeValue(t, c, node("Cameras/line1/Threshold"), 0.5); code != ua.StatusBadUserAccessDenied {
		t.Errorf("Threshold write without allow_changes: %s", code)
	}
	if after := readValue(t, c, node("Cameras/line1/Threshold")); after != before {
		t.Errorf("Threshold %v after a refused write, was %v", after, before)
	}

	stranger, strangerKey := clientCertificate(t, "stranger")
	for _, c := range []struct {
		what      string
		policy    string
		cert      []byte
		key       *rsa.PrivateKey
		user, pwd string
		want      ua.StatusCode
	}{
		{"anonymous over None", "None", line.cert, line.key, "", "", ua.StatusBadSecurityPolicyRejected},
		{"wrong password", "Basic256Sha256", line.cert, line.key, line.user, "guess", ua.StatusBadUserAccessDenied},
		{"untrusted certificate, right password", "Aes256_Sha256_RsaPss", stranger, strangerKey, line.user, line.pwd, ua.StatusBadCertificateUntrusted},
		{"untrusted certificate as identity", "Aes128_Sha256_RsaOaep", stranger, strangerKey, "", "", ua.StatusBadCertificateUntrusted},
	} {
		if _, err := connectOPCUA(t, line.endpoint, c.policy, c.cert, c.key, c.user, c.pwd); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %s", c.what, err, c.want)
		}
	}
	eps, err := opcua.GetEndpoints(context.Background(), line.endpoint)
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range eps {
		if ep.SecurityMode != ua.MessageSecurityModeSignAndEncrypt || slices.ContainsFunc(ep.UserIdentityTokens, func(p *ua.UserTokenPolicy) bool {
			return p.TokenType == ua.UserTokenTypeAnonymous
		}) {
			t.Errorf("endpoint %s %s offers %v", ep.SecurityPolicyURI, ep.SecurityMode, ep.UserIdentityTokens)
		}
	}
	if _, err := connectOPCUA(t, line.endpoint, "Aes256_Sha256_RsaPss", line.cert, line.key, "", ""); err != nil {
		t.Errorf("the trusted certificate as identity: %v", err)
	}

	w := watchResults(t, c, node)
	if _, err := triggerPart(c, node, "before"); err != nil {
		t.Fatal(err)
	}
	w.wait(t, 2)
	cameras := func() []string {
		resp, err := c.Browse(context.Background(), &ua.BrowseRequest{NodesToBrowse: []*ua.BrowseDescription{{NodeID: node("Cameras"),
			BrowseDirection: ua.BrowseDirectionForward, ReferenceTypeID: ua.NewNumericNodeID(0, id.Organizes), ResultMask: uint32(ua.BrowseResultMaskAll)}}})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, r := range resp.Results[0].References {
			names = append(names, r.BrowseName.Name)
		}
		return names
	}
	if got := cameras(); !slices.Equal(got, []string{"line1", "lineB"}) {
		t.Fatalf("cameras before the reload: %v", got)
	}
	path := d.cmd.Args[len(d.cmd.Args)-1]
	if err := os.WriteFile(path, []byte(config("lineC")), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, "lineC in place of lineB", 30*time.Second, func() bool { return slices.Equal(cameras(), []string{"line1", "lineC"}) })
	if v := readValue(t, c, node("Cameras/lineB/Online")); v != ua.StatusBadNodeIDUnknown {
		t.Errorf("the removed camera's Online reads %v", v)
	}
	eventually(t, "line1 ready after the reload", 30*time.Second, func() bool { return readValue(t, c, node("Cameras/line1/Ready")) == true })
	if _, err := triggerPart(c, node, "after"); err != nil {
		t.Fatal(err)
	}
	w.wait(t, 3) // the subscription made before the reload
	if w.seen[1][2] != "after" || w.seen[3][2] != uint32(2) {
		t.Errorf("after the reload: part %v, counter %v; want after, 2 (kept by name)", w.seen[1][2], w.seen[3][2])
	}
}
