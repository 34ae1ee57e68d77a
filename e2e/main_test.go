// Package e2e runs the built transformaly binary the way users do: real
// files, real OpenCV decoding, real ONNX Runtime.
package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// binary is the transformaly executable built once for the whole suite.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "transformaly-e2e-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "transformaly")
	args := []string{"build", "-o", binary}
	if os.Getenv("E2E_RACE") != "" { // E2E_RACE=1: the binary under the race detector
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, "../cmd/transformaly")...)
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		println("building the binary failed:", err.Error())
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if fixtureDir != "" {
		os.RemoveAll(fixtureDir)
	}
	os.Exit(code)
}

// result is what one run of the binary printed and how it exited.
type result struct {
	stdout, stderr string
	code           int
}

func runBinary(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return result{out.String(), errOut.String(), code}
}
