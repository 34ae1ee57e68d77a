package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The demo shows the console: it names the URL, serves the page while the
// line runs, and with --keep-running loops the line with changes allowed
// until Ctrl-C, then exits cleanly.
func TestDemoKeepsTheLineRunningWithTheConsole(t *testing.T) {
	consolePort := freePort(t)
	cmd := exec.Command(binary, "demo", "--dir", filepath.Join(t.TempDir(), "demo"), "--normal", "40", "--epochs", "1", "--image-size", "48",
		"--keep-running", "--mqtt-port", fmt.Sprint(freePort(t)), "--console-port", fmt.Sprint(consolePort))
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("demo output:\n%s", out.String())
		}
	})
	url := fmt.Sprintf("http://127.0.0.1:%d/", consolePort)
	eventually(t, "the demo to name its console", 120*time.Second, func() bool { return strings.Contains(out.String(), url) })
	eventually(t, "the looping line", 120*time.Second, func() bool { return strings.Contains(out.String(), "Ctrl-C stops it") })
	scored := func() int {
		resp, err := http.Get(url + "api/cameras/line1/scores?since=0")
		if err != nil {
			return 0
		}
		defer resp.Body.Close()
		var pts []json.RawMessage
		json.NewDecoder(resp.Body).Decode(&pts)
		return len(pts)
	}
	eventually(t, "scores on the console of the looping line", 30*time.Second, func() bool { return scored() > 10 })
	resp, err := http.Get(url + "api/cameras")
	if err != nil {
		t.Fatal(err)
	}
	var cams struct {
		AllowChanges bool `json:"allow_changes"`
	}
	json.NewDecoder(resp.Body).Decode(&cams)
	resp.Body.Close()
	if !cams.AllowChanges {
		t.Error("the demo's console (on loopback) does not allow changes")
	}
	cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Errorf("the demo exited with %v after Ctrl-C", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the demo did not stop within 30 s of Ctrl-C")
	}
}
