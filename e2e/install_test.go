package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// make install into a temporary prefix gives a unit that systemd-analyze
// verify accepts, and an example config whose keys the daemon knows.
func TestInstallAndUnitVerify(t *testing.T) {
	dir := t.TempDir()
	out, err := exec.Command("make", "-C", "..", "install", "PREFIX="+dir+"/usr", "UNITDIR="+dir+"/units", "CONFDIR="+dir+"/etc").CombinedOutput()
	if err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for _, p := range []string{"usr/bin/transformaly", "usr/lib/transformaly/libonnxruntime.so.1", "units/transformaly.service", "etc/config.yaml"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("not installed: %s", p)
		}
	}
	unit, _ := os.ReadFile(filepath.Join(dir, "units/transformaly.service"))
	for _, want := range []string{"Type=notify", "WatchdogSec=", "DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes",
		"DevicePolicy=closed", "DeviceAllow=char-video4linux", "DeviceAllow=/dev/nvidiactl", "StateDirectory=", "CacheDirectory="} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %s", want)
		}
	}
	if strings.Contains(string(unit), "PrivateDevices=yes") {
		t.Error("PrivateDevices would hide the cameras and GPUs")
	}
	if analyze, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Log("systemd-analyze not installed: unit not verified")
	} else if out, err := exec.Command(analyze, "verify", filepath.Join(dir, "units/transformaly.service")).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	// The example config is valid once its model and camera exist.
	f := getDaemonFixture(t)
	example, _ := os.ReadFile(filepath.Join(dir, "etc/config.yaml"))
	cfg := strings.Replace(string(example), "/var/lib/transformaly/line.tfy", f.bundle, 1)
	cfg = strings.Replace(cfg, "source: /dev/video0", fmt.Sprintf("source: %s", f.video), 1)
	path := filepath.Join(dir, "config.yaml")
	os.WriteFile(path, []byte(cfg), 0o644)
	if r := runBinary(t, nil, "run", "--check-config", "--config", path); r.code != 0 {
		t.Errorf("example config: %s", r.stderr)
	}
}
