package opcua

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/gopcua/opcua/ua"
	"github.com/gopcua/opcua/uapolicy"
	"github.com/gopcua/opcua/uasc"

	"github.com/transformaly/transformaly/internal/atomicfile"
)

// securePolicies are the endpoints' policies, all SignAndEncrypt: the
// current ones of OPC UA 1.04 and later (Basic128Rsa15 and Basic256 are
// deprecated, SHA-1 based).
var securePolicies = []string{"Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"}

// maxRejected bounds the refused certificates kept for review.
const maxRejected = 100

// LoadUsers reads a users file: one "username:password" a line; blank
// lines and lines starting with # are skipped.
func LoadUsers(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	users := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimRight(sc.Text(), "\r")
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		user, pass, ok := strings.Cut(line, ":")
		if !ok || user == "" || pass == "" {
			return nil, fmt.Errorf("%s line %d: want username:password", path, n)
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("%s line %d: user %q listed twice", path, n, user)
		}
		users[user] = pass
	}
	return users, sc.Err()
}

// authenticator checks sessions: the channel's security, the client's
// application certificate, and the user identity.
type authenticator struct {
	opts      *Options
	cert      []byte // the server's certificate (DER)
	key       *rsa.PrivateKey
	endpoints []*ua.EndpointDescription
}

// refusal is a refused activation: the status the client gets and the
// reason the log gets.
type refusal struct {
	code   ua.StatusCode
	reason string
}

func (r *refusal) Error() string { return r.reason }

func refuse(code ua.StatusCode, format string, args ...any) error {
	return &refusal{code: code, reason: fmt.Sprintf(format, args...)}
}

// authenticate checks a session's activation and names its user.
func (a *authenticator) authenticate(sc *uasc.SecureChannel, cfg *uasc.Config, req *ua.ActivateSessionRequest, nonce []byte) (string, error) {
	policy, mode, clientCert := cfg.SecurityPolicyURI, cfg.SecurityMode, cfg.RemoteCertificate
	secure := mode == ua.MessageSecurityModeSignAndEncrypt
	switch {
	case mode == ua.MessageSecurityModeNone || policy == ua.SecurityPolicyURINone:
		if !a.opts.AllowAnonymous {
			return "", refuse(ua.StatusBadSecurityPolicyRejected, "security policy None (allow_anonymous is off)")
		}
	case !secure:
		return "", refuse(ua.StatusBadSecurityModeRejected, "security mode %s: only SignAndEncrypt is served", mode)
	default:
		// The client proves it holds its certificate's key, and the
		// certificate must be trusted.
		var sig []byte
		if req.ClientSignature != nil {
			sig = req.ClientSignature.Signature
		}
		if err := sc.VerifySessionSignature(clientCert, nonce, sig); err != nil {
			return "", refuse(ua.StatusBadApplicationSignatureInvalid, "client signature: %v", err)
		}
		if err := a.checkTrusted(clientCert); err != nil {
			return "", err
		}
	}
	var tok any
	if req.UserIdentityToken != nil {
		tok = req.UserIdentityToken.Value
	}
	switch t := tok.(type) {
	case *ua.AnonymousIdentityToken:
		if !a.opts.AllowAnonymous {
			return "", refuse(ua.StatusBadIdentityTokenRejected, "anonymous session (allow_anonymous is off)")
		}
		return "anonymous", nil
	case *ua.UserNameIdentityToken:
		if !secure {
			return "", refuse(ua.StatusBadIdentityTokenRejected, "a password over an unencrypted channel")
		}
		pass, err := a.decryptPassword(t, policy, nonce)
		if err != nil {
			return "", refuse(ua.StatusBadIdentityTokenInvalid, "user %q: password not decrypted: %v", t.UserName, err)
		}
		want, ok := a.opts.Users[t.UserName]
		// Compared in constant time, of equal length.
		h1, h2 := sha256.Sum256([]byte(pass)), sha256.Sum256([]byte(want))
		if subtle.ConstantTimeCompare(h1[:], h2[:]) != 1 || !ok {
			return "", refuse(ua.StatusBadUserAccessDenied, "user %q: unknown or wrong password", t.UserName)
		}
		return t.UserName, nil
	case *ua.X509IdentityToken:
		if !secure {
			return "", refuse(ua.StatusBadIdentityTokenRejected, "a certificate identity over an unencrypted channel")
		}
		if err := a.checkTrusted(t.CertificateData); err != nil {
			return "", err
		}
		cert, err := x509.ParseCertificate(t.CertificateData)
		if err != nil {
			return "", refuse(ua.StatusBadIdentityTokenInvalid, "user certificate: %v", err)
		}
		pub, ok := cert.PublicKey.(*rsa.PublicKey)
		if !ok {
			return "", refuse(ua.StatusBadIdentityTokenInvalid, "user certificate: not an RSA key")
		}
		enc, err := uapolicy.Asymmetric(a.tokenPolicy(t.PolicyID, policy), a.key, pub)
		if err != nil {
			return "", refuse(ua.StatusBadIdentityTokenInvalid, "user token policy: %v", err)
		}
		var sig []byte
		if req.UserTokenSignature != nil {
			sig = req.UserTokenSignature.Signature
		}
		if err := enc.VerifySignature(slices.Concat(a.cert, nonce), sig); err != nil {
			return "", refuse(ua.StatusBadUserSignatureInvalid, "user token signature: %v", err)
		}
		return "certificate " + cert.Subject.CommonName, nil
	default:
		return "", refuse(ua.StatusBadIdentityTokenInvalid, "identity token %T", tok)
	}
}

// tokenPolicy is the security policy a user token was made with: its
// endpoint token policy's, else the channel's.
func (a *authenticator) tokenPolicy(policyID, channel string) string {
	for _, ep := range a.endpoints {
		for _, t := range ep.UserIdentityTokens {
			if t.PolicyID == policyID && t.SecurityPolicyURI != "" && t.SecurityPolicyURI != ua.SecurityPolicyURINone {
				return t.SecurityPolicyURI
			}
		}
	}
	return channel
}

// decryptPassword opens a password the client encrypted with the server's
// key: a 4-byte little-endian length, the password and the server nonce
// (OPC UA Part 4, 7.41.2.3), which must be this session's.
func (a *authenticator) decryptPassword(t *ua.UserNameIdentityToken, channelPolicy string, nonce []byte) (string, error) {
	if t.EncryptionAlgorithm == "" {
		return "", errors.New("the password is not encrypted")
	}
	enc, err := uapolicy.Asymmetric(a.tokenPolicy(t.PolicyID, channelPolicy), a.key, &a.key.PublicKey)
	if err != nil {
		return "", err
	}
	plain, err := enc.Decrypt(t.Password)
	if err != nil {
		return "", err
	}
	if len(plain) < 4 {
		return "", errors.New("too short")
	}
	n := int(binary.LittleEndian.Uint32(plain))
	secret := plain[4:]
	if n > len(secret) || n < len(nonce) {
		return "", errors.New("bad length")
	}
	secret = secret[:n]
	if !bytes.HasSuffix(secret, nonce) {
		return "", errors.New("not made with this session's nonce")
	}
	return string(secret[:n-len(nonce)]), nil
}

// checkTrusted accepts a certificate found in the trusted folder (and
// valid now); a refused one is kept in the rejected folder for review.
func (a *authenticator) checkTrusted(der []byte) error {
	if len(der) == 0 {
		return refuse(ua.StatusBadCertificateInvalid, "no client certificate")
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return refuse(ua.StatusBadCertificateInvalid, "client certificate: %v", err)
	}
	thumb := sha1.Sum(der)
	name := fmt.Sprintf("%q (thumbprint %s)", cert.Subject.CommonName, hex.EncodeToString(thumb[:]))
	if now := time.Now(); now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return refuse(ua.StatusBadCertificateTimeInvalid, "client certificate %s is not valid now (%s to %s)", name, cert.NotBefore.Format(time.DateOnly), cert.NotAfter.Format(time.DateOnly))
	}
	trusted, err := readCertificates(a.opts.TrustedDir)
	if err != nil {
		slog.Error("OPC UA trusted certificates not read", "dir", a.opts.TrustedDir, "err", err)
	}
	if slices.ContainsFunc(trusted, func(t []byte) bool { return bytes.Equal(t, der) }) {
		return nil
	}
	a.keepRejected(der, thumb[:], cert)
	return refuse(ua.StatusBadCertificateUntrusted, "client certificate %s is not in the trusted folder %s", name, a.opts.TrustedDir)
}

// keepRejected writes a refused certificate to the rejected folder (at
// most maxRejected files): moved to the trusted folder, it is trusted.
func (a *authenticator) keepRejected(der, thumb []byte, cert *x509.Certificate) {
	dir := a.opts.RejectedDir
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		slog.Warn("OPC UA rejected certificate not kept", "dir", dir, "err", err)
		return
	}
	name := strings.Map(func(r rune) rune {
		if r == '-' || r == '_' || r == '.' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' {
			return r
		}
		return '_'
	}, cert.Subject.CommonName)
	path := filepath.Join(dir, fmt.Sprintf("%s_%s.der", name, hex.EncodeToString(thumb)))
	if _, err := os.Stat(path); err == nil {
		return
	}
	if entries, _ := os.ReadDir(dir); len(entries) >= maxRejected {
		return
	}
	if err := atomicfile.Write(path, der); err != nil {
		slog.Warn("OPC UA rejected certificate not kept", "path", path, "err", err)
	}
}

// readCertificates reads every certificate of a folder (DER, or PEM with
// one or more certificates); a missing folder has none.
func readCertificates(dir string) ([][]byte, error) {
	if dir == "" {
		return nil, nil
	}
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var certs [][]byte
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return certs, err
		}
		certs = append(certs, certificatesIn(data)...)
	}
	return certs, nil
}

func certificatesIn(data []byte) [][]byte {
	var certs [][]byte
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			certs = append(certs, b.Bytes)
		}
	}
	if len(certs) == 0 {
		if _, err := x509.ParseCertificate(data); err == nil {
			certs = append(certs, data)
		}
	}
	return certs
}

// loadOrCreateCertificate reads the server's certificate and key, or
// creates both (self-signed, RSA 2048, 10 years, the application URI and
// host names in it) when both files are absent.
func loadOrCreateCertificate(certFile, keyFile, appURI string, hosts []string) ([]byte, *rsa.PrivateKey, error) {
	_, certErr := os.Stat(certFile)
	_, keyErr := os.Stat(keyFile)
	if errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist) {
		return createCertificate(certFile, keyFile, appURI, hosts)
	}
	data, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, fmt.Errorf("opcua.certificate_file: %w", err)
	}
	certs := certificatesIn(data)
	if len(certs) == 0 {
		return nil, nil, fmt.Errorf("opcua.certificate_file %s: no certificate (DER or PEM) in it", certFile)
	}
	data, err = os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("opcua.key_file: %w", err)
	}
	b, _ := pem.Decode(data)
	if b == nil {
		return nil, nil, fmt.Errorf("opcua.key_file %s: no PEM key in it", keyFile)
	}
	var key *rsa.PrivateKey
	if k, err := x509.ParsePKCS1PrivateKey(b.Bytes); err == nil {
		key = k
	} else if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
		key, _ = k.(*rsa.PrivateKey)
	}
	if key == nil {
		return nil, nil, fmt.Errorf("opcua.key_file %s: not an RSA private key (OPC UA's policies are RSA)", keyFile)
	}
	cert, err := x509.ParseCertificate(certs[0])
	if err != nil {
		return nil, nil, fmt.Errorf("opcua.certificate_file %s: %w", certFile, err)
	}
	if pub, ok := cert.PublicKey.(*rsa.PublicKey); !ok || !pub.Equal(&key.PublicKey) {
		return nil, nil, fmt.Errorf("opcua.key_file %s is not the key of opcua.certificate_file %s", keyFile, certFile)
	}
	return certs[0], key, nil
}

func createCertificate(certFile, keyFile, appURI string, hosts []string) ([]byte, *rsa.PrivateKey, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	uri, err := url.Parse(appURI)
	if err != nil {
		return nil, nil, fmt.Errorf("opcua.application_uri %q: %w", appURI, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "transformaly", Organization: []string{"transformaly"}},
		NotBefore:    now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment | x509.KeyUsageKeyEncipherment |
			x509.KeyUsageDataEncipherment | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{uri},
	}
	for _, h := range hosts {
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			if !ip.IsUnspecified() {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
		} else if !slices.Contains(tmpl.DNSNames, h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	for _, f := range []string{certFile, keyFile} {
		if err := os.MkdirAll(filepath.Dir(f), 0o750); err != nil {
			return nil, nil, err
		}
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	if err := atomicfile.Write(keyFile, keyPEM); err != nil {
		return nil, nil, fmt.Errorf("opcua.key_file: %w", err)
	}
	if err := os.Chmod(keyFile, 0o600); err != nil {
		return nil, nil, fmt.Errorf("opcua.key_file: %w", err)
	}
	if err := atomicfile.Write(certFile, der); err != nil {
		return nil, nil, fmt.Errorf("opcua.certificate_file: %w", err)
	}
	slog.Info("OPC UA server certificate created", "certificate", certFile, "key", keyFile, "application_uri", appURI)
	return der, key, nil
}
