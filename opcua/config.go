package opcua

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
)

// Config is the daemon configuration's opcua section.
type Config struct {
	// Address is the endpoint, opc.tcp://host:port ("": off).
	Address string `yaml:"address"`
	// ApplicationURI names the server in the certificate it creates
	// (default urn:<hostname>:transformaly).
	ApplicationURI string `yaml:"application_uri"`
	// CertificateFile and KeyFile are the server's certificate and key,
	// created when both are absent (default <state_directory>/opcua/own/
	// cert.der and key.pem).
	CertificateFile string `yaml:"certificate_file"`
	KeyFile         string `yaml:"key_file"`
	// TrustedCertificates is the folder of client certificates allowed to
	// connect (default <state_directory>/opcua/trusted); a refused one is
	// kept in RejectedCertificates (default <state_directory>/opcua/
	// rejected) to review and move there.
	TrustedCertificates  string `yaml:"trusted_certificates"`
	RejectedCertificates string `yaml:"rejected_certificates"`
	// UsersFile lists the users allowed, username:password a line.
	UsersFile string `yaml:"users_file"`
	// AllowChanges lets sessions write Detect and Threshold.
	AllowChanges bool `yaml:"allow_changes"`
	// AllowAnonymous adds anonymous sessions and the None security policy:
	// refused on an address that is not loopback unless Insecure.
	AllowAnonymous bool `yaml:"allow_anonymous"`
	Insecure       bool `yaml:"insecure"`
}

// Check names what is wrong with the section, key by key (only called
// with an address).
func (c Config) Check(bad func(key, format string, args ...any)) {
	host, err := parseAddress(c.Address)
	if err != nil {
		bad("opcua.address", "%v", err)
	} else if c.AllowAnonymous && !c.Insecure && !loopbackHost(host) {
		bad("opcua.allow_anonymous", "anonymous sessions without encryption would be open to the network at %s: serve them on a loopback address, or accept that with opcua.insecure: true", c.Address)
	}
	if c.ApplicationURI != "" {
		if u, err := url.Parse(c.ApplicationURI); err != nil || u.Scheme == "" {
			bad("opcua.application_uri", "%q is not a URI (urn:host:transformaly, say)", c.ApplicationURI)
		}
	}
	if (c.CertificateFile == "") != (c.KeyFile == "") {
		bad("opcua.certificate_file", "give both certificate_file and key_file, or neither (then both are created in the state directory)")
	}
	_, certErr := os.Stat(c.CertificateFile)
	_, keyErr := os.Stat(c.KeyFile)
	if c.CertificateFile != "" && c.KeyFile != "" && errors.Is(certErr, fs.ErrNotExist) != errors.Is(keyErr, fs.ErrNotExist) {
		bad("opcua.key_file", "one of %s and %s exists: both are created only when both are absent", c.CertificateFile, c.KeyFile)
	}
	if c.UsersFile != "" {
		if users, err := LoadUsers(c.UsersFile); err != nil {
			bad("opcua.users_file", "%v", err)
		} else if len(users) == 0 {
			bad("opcua.users_file", "%s lists no user", c.UsersFile)
		}
	}
	if c.TrustedCertificates != "" {
		if st, err := os.Stat(c.TrustedCertificates); err == nil && !st.IsDir() {
			bad("opcua.trusted_certificates", "%s is not a folder", c.TrustedCertificates)
		}
	}
}

// Options are the server's options from the section, with the default
// files in the state directory and the users read.
func (c Config) Options(stateDirectory string) (Options, error) {
	dir := filepath.Join(stateDirectory, "opcua")
	or := func(v, def string) string {
		if v != "" {
			return v
		}
		return def
	}
	o := Options{Address: c.Address, ApplicationURI: c.ApplicationURI,
		CertificateFile: or(c.CertificateFile, filepath.Join(dir, "own", "cert.der")), KeyFile: or(c.KeyFile, filepath.Join(dir, "own", "key.pem")),
		TrustedDir: or(c.TrustedCertificates, filepath.Join(dir, "trusted")), RejectedDir: or(c.RejectedCertificates, filepath.Join(dir, "rejected")),
		AllowChanges: c.AllowChanges, AllowAnonymous: c.AllowAnonymous}
	if err := os.MkdirAll(o.TrustedDir, 0o750); err != nil {
		return o, fmt.Errorf("opcua.trusted_certificates: %w", err)
	}
	if c.UsersFile != "" {
		users, err := LoadUsers(c.UsersFile)
		if err != nil {
			return o, fmt.Errorf("opcua.users_file: %w", err)
		}
		o.Users = users
	}
	return o, nil
}

// parseAddress checks an opc.tcp://host:port address and gives its host.
func parseAddress(address string) (string, error) {
	u, err := url.Parse(address)
	if err != nil || u.Scheme != "opc.tcp" || u.Hostname() == "" || u.Port() == "" || (u.Path != "" && u.Path != "/") {
		return "", fmt.Errorf("%q: want opc.tcp://host:port (opc.tcp://0.0.0.0:4840 for every address)", address)
	}
	if n, err := strconv.Atoi(u.Port()); err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("%q: port %s is not 1 to 65535", address, u.Port())
	}
	return u.Hostname(), nil
}

func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
