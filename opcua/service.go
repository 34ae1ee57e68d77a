package opcua

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"slices"
	"syscall"
	"time"

	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
	"github.com/gopcua/opcua/uacp"
	"github.com/gopcua/opcua/uapolicy"
	"github.com/gopcua/opcua/uasc"
)

// The services are this package's own, on gopcua's transport (uacp),
// secure channel (uasc, uapolicy) and encoding (ua): gopcua v0.8.0's
// server cannot open an encrypted channel (its channels start in mode
// None and so never decrypt the client's OpenSecureChannel request,
// gopcua issue 815, fixed after the last release), accepts any user
// identity, serves requests of sessions never activated, lets any client
// write any attribute or add nodes, and merges a subscription's
// notifications of one item within a publishing interval. Its namespace 0
// (the standard nodes every client reads) is used as it is.

const (
	maxConnections     = 128              // connections open at once
	maxSessions        = 64               // sessions open at once
	activationTimeout  = 30 * time.Second // a session not activated by then is dropped
	maxPublishRequests = 32               // waiting per session
	maxSubscriptions   = 64               // per session
	maxQueued          = 4096             // notifications waiting per subscription; the oldest go first
	maxPerPublish      = 200              // notifications in one publish response (one chunk: within a client's 64 KiB buffer)
)

// session is a client's session.
type session struct {
	id, token  *ua.NodeID
	clientCert []byte
	timeout    time.Duration

	// Guarded by Server.mu.
	nonce     []byte // the server nonce the next ActivateSession is signed with
	activated bool
	channel   *uasc.SecureChannel // the channel it was activated on
	user      string
	lastUsed  time.Time
	subs      map[uint32]*subscription

	publish chan publishRequest
}

type publishRequest struct {
	sc    *uasc.SecureChannel
	reqID uint32
	req   *ua.PublishRequest
}

// serve accepts connections until ctx ends, at most maxConnections at
// once.
func (s *Server) serve(ctx context.Context, l net.Listener) {
	slots := make(chan struct{}, maxConnections)
	var ids uint32
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			slog.Warn("OPC UA connection not accepted", "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		select {
		case slots <- struct{}{}:
		default:
			slog.Warn("OPC UA connection refused: too many open", "remote", c.RemoteAddr().String(), "max", maxConnections)
			c.Close()
			continue
		}
		ids++
		s.wg.Add(1)
		go func(id uint32) {
			defer s.wg.Done()
			defer func() { <-slots }()
			conn, err := handshake(c.(*net.TCPConn))
			if err != nil {
				slog.Debug("OPC UA connection without a handshake", "remote", c.RemoteAddr().String(), "err", err)
				c.Close()
				return
			}
			s.serveConn(ctx, conn, id)
		}(ids)
	}
}

// handshake answers a connection's Hello within a deadline. The
// library's listener does it inline, where one silent client stalls every
// other, and follows a ReverseHello to any address it names.
func handshake(c *net.TCPConn) (*uacp.Conn, error) {
	conn, err := uacp.NewConn(c, uacp.DefaultServerACK)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	defer c.SetDeadline(time.Time{})
	b, err := conn.Receive()
	if err != nil {
		return nil, err
	}
	if len(b) < 8 || string(b[:4]) != "HELF" {
		conn.SendError(ua.StatusBadTCPMessageTypeInvalid)
		return nil, fmt.Errorf("%q instead of a Hello", b[:min(len(b), 4)])
	}
	if _, err := new(uacp.Hello).Decode(b[8:]); err != nil {
		conn.SendError(ua.StatusBadTCPInternalError)
		return nil, err
	}
	return conn, conn.Send("ACKF", uacp.DefaultServerACK)
}

// serveConn opens a secure channel on a connection and answers its
// requests in order.
func (s *Server) serveConn(ctx context.Context, conn *uacp.Conn, channelID uint32) {
	defer conn.Close()
	policy, clientCert, err := peekOpen(conn.TCPConn, 10*time.Second)
	if err != nil {
		slog.Debug("OPC UA connection without a secure channel", "remote", conn.RemoteAddr().String(), "err", err)
		return
	}
	// The channel's mode must be known before its first message: an
	// encrypted OpenSecureChannel request is decrypted only by a channel
	// that is not in mode None; and its response names the client's
	// certificate by thumbprint (gopcua's server sends none, which other
	// clients than gopcua's refuse).
	cfg := &uasc.Config{SecurityPolicyURI: policy, SecurityMode: ua.MessageSecurityModeNone, Certificate: s.cert, LocalKey: s.key,
		Lifetime: uint32(time.Hour / time.Millisecond)}
	if policy != ua.SecurityPolicyURINone {
		cfg.SecurityMode = ua.MessageSecurityModeSignAndEncrypt
		cfg.Thumbprint = uapolicy.Thumbprint(clientCert)
	}
	errs := make(chan error, 1)
	var token [4]byte
	rand.Read(token[:])
	sc, err := uasc.NewServerSecureChannel(s.opts.Address, conn, cfg, errs, channelID, 1, binary.LittleEndian.Uint32(token[:])|1)
	if err != nil {
		slog.Warn("OPC UA secure channel refused", "remote", conn.RemoteAddr().String(), "policy", policy, "err", err)
		return
	}
	defer sc.Close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			sc.Close()
		case <-done:
		}
	}()
	// A channel not renewed within its lifetime is closed (a quarter more,
	// as OPC UA allows): a client that went quiet holds no connection.
	idle := 10 * time.Second // the OpenSecureChannel request comes at once
	for {
		conn.SetReadDeadline(time.Now().Add(idle))
		msg := sc.Receive(ctx)
		idle = min(max(time.Duration(cfg.Lifetime)*time.Millisecond*5/4, 10*time.Second), 2*time.Hour)
		if msg.Err != nil {
			if msg.Err != io.EOF && ctx.Err() == nil {
				slog.Debug("OPC UA secure channel closed", "remote", conn.RemoteAddr().String(), "err", msg.Err)
			}
			return
		}
		req := msg.Request()
		if req == nil {
			continue // the OpenSecureChannel exchange, answered by the channel
		}
		resp := s.handle(sc, cfg, msg.RequestID, req)
		if resp == nil {
			continue // a publish request, answered when there is something to publish
		}
		if err := sc.SendResponseWithContext(ctx, msg.RequestID, resp); err != nil {
			slog.Debug("OPC UA response not sent", "remote", conn.RemoteAddr().String(), "err", err)
			return
		}
	}
}

// peekOpen reads, without consuming them, the security policy URI and
// the client's certificate of the OpenSecureChannel request a connection
// starts with (its asymmetric security header, after the message header
// and the secure channel id: each a length and its bytes).
func peekOpen(c *net.TCPConn, timeout time.Duration) (policy string, cert []byte, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return "", nil, err
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	const maxURI, maxCert = 256, 16 << 10
	buf := make([]byte, 16+maxURI+4+maxCert)
	// field reads the length-prefixed field at off of the n bytes peeked:
	// its end, or -1 while incomplete, or -2 when its length is out of
	// bounds.
	field := func(n, off, limit int) int {
		if n < off+4 {
			return -1
		}
		l := int(int32(binary.LittleEndian.Uint32(buf[off:])))
		switch {
		case l == -1:
			return off + 4 // a null ByteString: no certificate
		case l < 0 || l > limit:
			return -2
		case n < off+4+l:
			return -1
		}
		return off + 4 + l
	}
	var n int
	var peekErr error
	err = raw.Read(func(fd uintptr) bool {
		n, _, peekErr = syscall.Recvfrom(int(fd), buf, syscall.MSG_PEEK)
		if peekErr == syscall.EAGAIN {
			return false
		}
		if peekErr != nil || n == 0 {
			return true
		}
		end := field(n, 12, maxURI)
		if end >= 0 {
			end = field(n, end, maxCert)
		}
		return end != -1
	})
	if err == nil {
		err = peekErr
	}
	if err != nil {
		return "", nil, err
	}
	if n < 16 || string(buf[:3]) != "OPN" {
		return "", nil, errors.New("the first message is no OpenSecureChannel request")
	}
	uriEnd := field(n, 12, maxURI)
	certEnd := -2
	if uriEnd >= 0 {
		certEnd = field(n, uriEnd, maxCert)
	}
	if certEnd < 0 {
		return "", nil, errors.New("the OpenSecureChannel request's security header is out of bounds")
	}
	policy = string(buf[16:uriEnd])
	if certEnd > uriEnd+4 {
		cert = slices.Clone(buf[uriEnd+4 : certEnd])
	}
	return policy, cert, nil
}

func fault(hdr *ua.RequestHeader, code ua.StatusCode) ua.Response {
	return &ua.ServiceFault{ResponseHeader: responseHeader(hdr, code)}
}

func responseHeader(req *ua.RequestHeader, code ua.StatusCode) *ua.ResponseHeader {
	h := &ua.ResponseHeader{Timestamp: time.Now(), ServiceResult: code, ServiceDiagnostics: &ua.DiagnosticInfo{},
		StringTable: []string{}, AdditionalHeader: ua.NewExtensionObject(nil)}
	if req != nil {
		h.RequestHandle = req.RequestHandle
	}
	return h
}

// handle answers one request (nil: answered later).
func (s *Server) handle(sc *uasc.SecureChannel, cfg *uasc.Config, reqID uint32, r ua.Request) (resp ua.Response) {
	hdr := r.Header()
	defer func() {
		if p := recover(); p != nil {
			slog.Error("OPC UA request failed", "request", fmt.Sprintf("%T", r), "panic", p)
			resp = fault(hdr, ua.StatusBadInternalError)
		}
	}()
	switch req := r.(type) {
	case *ua.GetEndpointsRequest:
		return &ua.GetEndpointsResponse{ResponseHeader: responseHeader(hdr, ua.StatusOK), Endpoints: s.endpoints}
	case *ua.FindServersRequest:
		return &ua.FindServersResponse{ResponseHeader: responseHeader(hdr, ua.StatusOK), Servers: []*ua.ApplicationDescription{s.endpoints[0].Server}}
	case *ua.CreateSessionRequest:
		return s.createSession(sc, cfg, req)
	case *ua.ActivateSessionRequest:
		return s.activateSession(sc, cfg, req)
	case *ua.CloseSessionRequest:
		return s.closeSession(sc, req)
	}
	sess, code := s.activeSession(sc, hdr)
	if code != ua.StatusOK {
		return fault(hdr, code)
	}
	switch req := r.(type) {
	case *ua.ReadRequest:
		return s.read(req)
	case *ua.WriteRequest:
		return s.write(req)
	case *ua.BrowseRequest:
		return s.browse(req)
	case *ua.TranslateBrowsePathsToNodeIDsRequest:
		return s.translate(req)
	case *ua.RegisterNodesRequest:
		// Node ids are cheap to look up as they are: registered as given.
		return &ua.RegisterNodesResponse{ResponseHeader: responseHeader(req.RequestHeader, ua.StatusOK), RegisteredNodeIDs: req.NodesToRegister}
	case *ua.UnregisterNodesRequest:
		return &ua.UnregisterNodesResponse{ResponseHeader: responseHeader(req.RequestHeader, ua.StatusOK)}
	case *ua.CallRequest:
		return s.call(req)
	case *ua.CreateSubscriptionRequest:
		return s.createSubscription(sess, req)
	case *ua.ModifySubscriptionRequest:
		return s.modifySubscription(sess, req)
	case *ua.SetPublishingModeRequest:
		return s.setPublishingMode(sess, req)
	case *ua.DeleteSubscriptionsRequest:
		return s.deleteSubscriptions(sess, req)
	case *ua.CreateMonitoredItemsRequest:
		return s.createMonitoredItems(sess, req)
	case *ua.ModifyMonitoredItemsRequest:
		return s.modifyMonitoredItems(sess, req)
	case *ua.SetMonitoringModeRequest:
		return s.setMonitoringMode(sess, req)
	case *ua.DeleteMonitoredItemsRequest:
		return s.deleteMonitoredItems(sess, req)
	case *ua.PublishRequest:
		return s.queuePublish(sess, sc, reqID, req)
	case *ua.RepublishRequest:
		return fault(hdr, ua.StatusBadMessageNotAvailable)
	}
	return fault(hdr, ua.StatusBadServiceUnsupported)
}

// activeSession finds the activated session a request belongs to, on the
// channel it was activated on.
func (s *Server) activeSession(sc *uasc.SecureChannel, hdr *ua.RequestHeader) (*session, ua.StatusCode) {
	if hdr == nil || hdr.AuthenticationToken == nil {
		return nil, ua.StatusBadSessionIDInvalid
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.sessions[hdr.AuthenticationToken.String()]
	switch {
	case sess == nil:
		return nil, ua.StatusBadSessionIDInvalid
	case !sess.activated || sess.channel != sc:
		return nil, ua.StatusBadSessionNotActivated
	}
	sess.lastUsed = time.Now()
	return sess, ua.StatusOK
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func (s *Server) createSession(sc *uasc.SecureChannel, cfg *uasc.Config, req *ua.CreateSessionRequest) ua.Response {
	hdr := req.RequestHeader
	// Sessions are made only for clients that may activate them: no one
	// else fills the session table.
	if cfg.SecurityMode == ua.MessageSecurityModeNone {
		if !s.opts.AllowAnonymous {
			slog.Warn("OPC UA session refused", "remote", sc.RemoteAddr().String(), "reason", "security policy None (allow_anonymous is off)")
			return fault(hdr, ua.StatusBadSecurityPolicyRejected)
		}
	} else {
		if !bytes.Equal(req.ClientCertificate, cfg.RemoteCertificate) {
			return fault(hdr, ua.StatusBadCertificateInvalid) // not the certificate the channel was opened with
		}
		if err := s.auth.checkTrusted(cfg.RemoteCertificate); err != nil {
			code := ua.StatusBadCertificateUntrusted
			if ref := (*refusal)(nil); errors.As(err, &ref) {
				code = ref.code
			}
			slog.Warn("OPC UA session refused", "remote", sc.RemoteAddr().String(), "reason", err.Error())
			return fault(hdr, code)
		}
	}
	sig, alg, err := sc.NewSessionSignature(req.ClientCertificate, req.ClientNonce)
	if err != nil {
		slog.Warn("OPC UA session not created", "remote", sc.RemoteAddr().String(), "err", err)
		return fault(hdr, ua.StatusBadCertificateInvalid)
	}
	timeout := time.Duration(req.RequestedSessionTimeout) * time.Millisecond
	timeout = min(max(timeout, 10*time.Second), time.Hour)
	sess := &session{id: ua.NewByteStringNodeID(s.sp.index, randomBytes(16)), token: ua.NewByteStringNodeID(0, randomBytes(32)),
		clientCert: req.ClientCertificate, timeout: timeout, nonce: randomBytes(32), lastUsed: time.Now(),
		subs: map[uint32]*subscription{}, publish: make(chan publishRequest, maxPublishRequests)}
	s.mu.Lock()
	s.expireSessions()
	if len(s.sessions) >= maxSessions {
		s.mu.Unlock()
		return fault(hdr, ua.StatusBadTooManySessions)
	}
	s.sessions[sess.token.String()] = sess
	s.mu.Unlock()
	return &ua.CreateSessionResponse{
		ResponseHeader: responseHeader(hdr, ua.StatusOK), SessionID: sess.id, AuthenticationToken: sess.token,
		RevisedSessionTimeout: float64(timeout / time.Millisecond), ServerNonce: sess.nonce, ServerCertificate: s.cert,
		ServerEndpoints: s.endpoints, ServerSoftwareCertificates: []*ua.SignedSoftwareCertificate{},
		ServerSignature: &ua.SignatureData{Signature: sig, Algorithm: alg},
	}
}

func (s *Server) activateSession(sc *uasc.SecureChannel, cfg *uasc.Config, req *ua.ActivateSessionRequest) ua.Response {
	hdr := req.RequestHeader
	s.mu.Lock()
	var sess *session
	if hdr.AuthenticationToken != nil {
		sess = s.sessions[hdr.AuthenticationToken.String()]
	}
	var nonce []byte
	if sess != nil {
		nonce = sess.nonce
	}
	s.mu.Unlock()
	if sess == nil {
		return fault(hdr, ua.StatusBadSessionIDInvalid)
	}
	user, err := s.auth.authenticate(sc, cfg, req, nonce)
	if err != nil {
		var ref *refusal
		code := ua.StatusBadInternalError
		if errors.As(err, &ref) {
			code = ref.code
		}
		slog.Warn("OPC UA session refused", "remote", sc.RemoteAddr().String(), "reason", err.Error(), "status", code.Error())
		return fault(hdr, code)
	}
	next := randomBytes(32)
	s.mu.Lock()
	sess.activated, sess.channel, sess.user, sess.nonce, sess.lastUsed = true, sc, user, next, time.Now()
	s.mu.Unlock()
	slog.Info("OPC UA session activated", "remote", sc.RemoteAddr().String(), "user", user,
		"policy", cfg.SecurityPolicyURI[len(ua.SecurityPolicyURIPrefix):])
	return &ua.ActivateSessionResponse{ResponseHeader: responseHeader(hdr, ua.StatusOK), ServerNonce: next,
		Results: []ua.StatusCode{}, DiagnosticInfos: []*ua.DiagnosticInfo{}}
}

func (s *Server) closeSession(sc *uasc.SecureChannel, req *ua.CloseSessionRequest) ua.Response {
	hdr := req.RequestHeader
	s.mu.Lock()
	defer s.mu.Unlock()
	sess := s.sessions[hdr.AuthenticationToken.String()]
	if sess == nil || sess.activated && sess.channel != sc {
		return fault(hdr, ua.StatusBadSessionIDInvalid)
	}
	s.dropSession(sess)
	return &ua.CloseSessionResponse{ResponseHeader: responseHeader(hdr, ua.StatusOK)}
}

// dropSession ends a session and its subscriptions (under s.mu).
func (s *Server) dropSession(sess *session) {
	delete(s.sessions, sess.token.String())
	for _, sub := range sess.subs {
		s.stopSubscription(sub)
	}
}

// expireSessions drops the sessions unused for their timeout (under s.mu).
func (s *Server) expireSessions() {
	now := time.Now()
	for _, sess := range s.sessions {
		if idle := now.Sub(sess.lastUsed); idle > sess.timeout || !sess.activated && idle > activationTimeout {
			slog.Info("OPC UA session timed out", "user", sess.user)
			s.dropSession(sess)
		}
	}
}

func (s *Server) read(req *ua.ReadRequest) ua.Response {
	results := make([]*ua.DataValue, len(req.NodesToRead))
	for i, n := range req.NodesToRead {
		results[i] = s.attribute(n.NodeID, n.AttributeID)
	}
	return &ua.ReadResponse{ResponseHeader: responseHeader(req.RequestHeader, ua.StatusOK), Results: results,
		DiagnosticInfos: []*ua.DiagnosticInfo{}}
}

// attribute reads a node's attribute in any namespace.
func (s *Server) attribute(nid *ua.NodeID, attr ua.AttributeID) *ua.DataValue {
	if nid == nil {
		return badValue(ua.StatusBadNodeIDInvalid)
	}
	if nid.Namespace() == 0 && attr == ua.AttributeIDValue {
		// The library's server status reads Suspended: it was never
		// started, this package serves.
		switch nid.IntID() {
		case id.Server_ServerStatus_State:
			return dataValue(int32(ua.ServerStateRunning))
		case id.Server_ServerStatus:
			st := s.ns0.Status()
			st.State, st.StartTime = ua.ServerStateRunning, s.opts.Started
			return dataValue(ua.NewExtensionObject(st))
		}
	}
	ns, err := s.ns0.Namespace(int(nid.Namespace()))
	if err != nil {
		return badValue(ua.StatusBadNodeIDUnknown)
	}
	return ns.Attribute(nid, attr)
}

// write sets the camera variables that can be written (Detect,
// Threshold), with opcua.allow_changes; nothing else.
func (s *Server) write(req *ua.WriteRequest) ua.Response {
	results := make([]ua.StatusCode, len(req.NodesToWrite))
	for i, w := range req.NodesToWrite {
		n := s.sp.lookup(w.NodeID)
		switch {
		case n == nil && w.NodeID != nil && w.NodeID.Namespace() == s.sp.index:
			results[i] = ua.StatusBadNodeIDUnknown
		case n == nil || w.AttributeID != ua.AttributeIDValue || n.write == nil:
			results[i] = ua.StatusBadNotWritable
		case !s.opts.AllowChanges:
			results[i] = ua.StatusBadUserAccessDenied
		case w.Value == nil || w.Value.Value == nil:
			results[i] = ua.StatusBadTypeMismatch
		default:
			results[i] = n.write(w.Value.Value)
		}
	}
	return &ua.WriteResponse{ResponseHeader: responseHeader(req.RequestHeader, ua.StatusOK), Results: results,
		DiagnosticInfos: []*ua.DiagnosticInfo{}}
}

func (s *Server) browse(req *ua.BrowseRequest) ua.Response {
	results := make([]*ua.BrowseResult, len(req.NodesToBrowse))
	for i, bd := range req.NodesToBrowse {
		results[i] = s.browseNode(bd)
	}
	return &ua.BrowseResponse{ResponseHeader: responseHeader(req.RequestHeader, ua.StatusOK), Results: results,
		DiagnosticInfos: []*ua.DiagnosticInfo{}}
}

// browseNode browses a node of any namespace. The library's namespace 0
// panics on a browse without subtypes of a reference type with HasSubtype
// among its subtypes (References, say: it deletes past a slice's end): it
// is asked with subtypes, and the references of other types are left out
// here.
func (s *Server) browseNode(bd *ua.BrowseDescription) *ua.BrowseResult {
	if bd == nil || bd.NodeID == nil {
		return &ua.BrowseResult{StatusCode: ua.StatusBadNodeIDInvalid}
	}
	ns, err := s.ns0.Namespace(int(bd.NodeID.Namespace()))
	if err != nil {
		return &ua.BrowseResult{StatusCode: ua.StatusBadNodeIDUnknown}
	}
	q := *bd
	if q.ReferenceTypeID == nil {
		q.ReferenceTypeID = ua.NewNumericNodeID(0, 0) // all references
	}
	exact := !q.IncludeSubtypes && q.ReferenceTypeID.IntID() != 0 && bd.NodeID.Namespace() == 0
	q.IncludeSubtypes = q.IncludeSubtypes || exact
	r := ns.Browse(&q)
	if exact {
		r.References = slices.DeleteFunc(r.References, func(ref *ua.ReferenceDescription) bool { return !ref.ReferenceTypeID.Equal(q.ReferenceTypeID) })
	}
	return r
}

// translate resolves browse paths (TranslateBrowsePathsToNodeIds, what
// PLCs' OPC UA clients use to find a node by its names): each element
// follows the references of its type whose target has its name.
func (s *Server) translate(req *ua.TranslateBrowsePathsToNodeIDsRequest) ua.Response {
	results := make([]*ua.BrowsePathResult, len(req.BrowsePaths))
	for i, p := range req.BrowsePaths {
		results[i] = s.followPath(p)
	}
	return &ua.TranslateBrowsePathsToNodeIDsResponse{ResponseHeader: responseHeader(req.RequestHeader, ua.StatusOK), Results: results,
		DiagnosticInfos: []*ua.DiagnosticInfo{}}
}

func (s *Server) followPath(p *ua.BrowsePath) *ua.BrowsePathResult {
	none := []*ua.BrowsePathTarget{}
	if p == nil || p.StartingNode == nil || p.RelativePath == nil || len(p.RelativePath.Elements) == 0 {
		return &ua.BrowsePathResult{StatusCode: ua.StatusBadNothingToDo, Targets: none}
	}
	current := []*ua.NodeID{p.StartingNode}
	for _, el := range p.RelativePath.Elements {
		if el == nil || el.TargetName == nil || el.TargetName.Name == "" {
			return &ua.BrowsePathResult{StatusCode: ua.StatusBadBrowseNameInvalid, Targets: none}
		}
		dir := ua.BrowseDirectionForward
		if el.IsInverse {
			dir = ua.BrowseDirectionInverse
		}
		refType := el.ReferenceTypeID
		if refType == nil {
			refType = ua.NewNumericNodeID(0, id.HierarchicalReferences)
		}
		var next []*ua.NodeID
		for _, nid := range current {
			r := s.browseNode(&ua.BrowseDescription{NodeID: nid, BrowseDirection: dir, ReferenceTypeID: refType, IncludeSubtypes: el.IncludeSubtypes,
				ResultMask: uint32(ua.BrowseResultMaskAll)})
			for _, ref := range r.References {
				if ref.BrowseName != nil && ref.NodeID != nil && ref.BrowseName.Name == el.TargetName.Name && ref.BrowseName.NamespaceIndex == el.TargetName.NamespaceIndex {
					next = append(next, ref.NodeID.NodeID)
				}
			}
		}
		if len(next) == 0 {
			return &ua.BrowsePathResult{StatusCode: ua.StatusBadNoMatch, Targets: none}
		}
		current = next
	}
	targets := make([]*ua.BrowsePathTarget, len(current))
	for i, nid := range current {
		targets[i] = &ua.BrowsePathTarget{TargetID: ua.NewExpandedNodeID(nid, "", 0), RemainingPathIndex: math.MaxUint32}
	}
	return &ua.BrowsePathResult{StatusCode: ua.StatusOK, Targets: targets}
}

// call runs the cameras' Trigger methods.
func (s *Server) call(req *ua.CallRequest) ua.Response {
	results := make([]*ua.CallMethodResult, len(req.MethodsToCall))
	for i, m := range req.MethodsToCall {
		res := &ua.CallMethodResult{InputArgumentResults: []ua.StatusCode{}, InputArgumentDiagnosticInfos: []*ua.DiagnosticInfo{},
			OutputArguments: []*ua.Variant{}}
		method := s.sp.lookup(m.MethodID)
		switch obj := s.sp.lookup(m.ObjectID); {
		case method == nil || method.call == nil:
			res.StatusCode = ua.StatusBadMethodInvalid
		case obj == nil || method.parent != obj:
			res.StatusCode = ua.StatusBadNodeIDInvalid
		default:
			out, argResults, code := method.call(m.InputArguments)
			res.StatusCode = code
			if out != nil {
				res.OutputArguments = out
			}
			if argResults != nil {
				res.InputArgumentResults = argResults
			}
		}
		results[i] = res
	}
	return &ua.CallResponse{ResponseHeader: responseHeader(req.RequestHeader, ua.StatusOK), Results: results,
		DiagnosticInfos: []*ua.DiagnosticInfo{}}
}

// sessionsLoop expires idle sessions.
func (s *Server) sessionsLoop(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.mu.Lock()
			s.expireSessions()
			s.mu.Unlock()
		}
	}
}
