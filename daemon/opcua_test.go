package daemon

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The opcua section's problems are named by key (--check-config):
// anonymous sessions off loopback need insecure, the users file must list
// users, certificate and key come together; relative files are taken from
// the configuration's folder.
func TestOPCUAConfigNamesItsKeys(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "line.tfy"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(dir, "users"), []byte("scada:s3cret\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "no-users"), []byte("# none yet\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "cert.der"), []byte("x"), 0o644)
	const cam = "defaults: {model: line.tfy}\ncameras: [{name: cam, source: 0}]\n"
	for _, c := range []struct {
		yaml, refused string // refused: the key named, "" when valid
	}{
		{"opcua: {address: \"opc.tcp://0.0.0.0:4840\", users_file: users, allow_changes: true}", ""},
		{"opcua: {address: \"0.0.0.0:4840\"}", "opcua.address"},
		{"opcua: {address: \"opc.tcp://0.0.0.0:70000\"}", "opcua.address"},
		{"opcua: {address: \"opc.tcp://0.0.0.0:4840\", allow_anonymous: true}", "opcua.allow_anonymous"},
		{"opcua: {address: \"opc.tcp://0.0.0.0:4840\", allow_anonymous: true, insecure: true}", ""},
		{"opcua: {address: \"opc.tcp://127.0.0.1:4840\", allow_anonymous: true}", ""},
		{"opcua: {address: \"opc.tcp://0.0.0.0:4840\", users_file: no-users}", "opcua.users_file"},
		{"opcua: {address: \"opc.tcp://0.0.0.0:4840\", users_file: missing}", "opcua.users_file"},
		{"opcua: {address: \"opc.tcp://0.0.0.0:4840\", certificate_file: cert.der}", "opcua.certificate_file"},
		{"opcua: {address: \"opc.tcp://0.0.0.0:4840\", certificate_file: cert.der, key_file: key.pem}", "opcua.key_file"},
		{"opcua: {address: \"opc.tcp://0.0.0.0:4840\", application_uri: \"no uri\"}", "opcua.application_uri"},
		{"opcua: {adress: \"opc.tcp://0.0.0.0:4840\"}", "opcua"},
	} {
		path := filepath.Join(dir, "config.yaml")
		os.WriteFile(path, []byte(cam+c.yaml+"\n"), 0o644)
		cfg, err := LoadConfig(path)
		if err == nil {
			err = errors.Join(cfg.Validate()...)
		}
		switch {
		case c.refused == "" && err != nil:
			t.Errorf("%q refused: %v", c.yaml, err)
		case c.refused != "" && (err == nil || !strings.Contains(err.Error(), c.refused)):
			t.Errorf("%q: %v; want an error naming %s", c.yaml, err, c.refused)
		}
		if c.refused == "" && cfg.OPCUA.UsersFile != "" && cfg.OPCUA.UsersFile != filepath.Join(dir, "users") {
			t.Errorf("users_file %q is not taken from the configuration's folder", cfg.OPCUA.UsersFile)
		}
	}
}
