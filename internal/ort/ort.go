// Package ort finds and loads the ONNX Runtime shared library once per
// process and opens sessions with settings that suit this project (no
// spinning thread pools, full graph optimisation).
package ort

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

// EnvLibrary is the environment variable naming the library, consulted after
// an explicit path and before the usual places.
const EnvLibrary = "TRANSFORMALY_ORT_LIB"

// MinVersion is the oldest ONNX Runtime whose C API (version 29) the
// onnxruntime_go binding we build with can use.
const MinVersion = "1.29"

// libraryNames are the file names tried in each directory, newest-style first.
var libraryNames = []string{"libonnxruntime.so.1", "libonnxruntime.so"}

var (
	initOnce sync.Once
	initErr  error
	loaded   string
)

// Init loads the library at path, or if path is empty the first one found in
// $TRANSFORMALY_ORT_LIB, next to the executable, in the project's deps folder
// (.deps/onnxruntime in the executable's or working directory's ancestors),
// then /usr/local/lib and /usr/lib. It is safe to call more than once; every
// call after the first returns the first call's result.
func Init(path string) error {
	initOnce.Do(func() {
		loaded, initErr = load(path)
	})
	return initErr
}

// Library is the path of the loaded library ("" before a successful Init).
func Library() string { return loaded }

// Version is the loaded library's version string.
func Version() string { return ort.GetVersion() }

func load(explicit string) (string, error) {
	candidates, source := Candidates(explicit)
	var found string
	for _, c := range candidates {
		if st, err := os.Stat(c); err == nil && !st.IsDir() {
			found = c
			break
		}
	}
	if found == "" {
		return "", fmt.Errorf("ONNX Runtime library not found (%s); looked for: %s; run `make deps` or pass --ort-lib",
			source, strings.Join(candidates, ", "))
	}
	ort.SetSharedLibraryPath(found)
	// ONNX Runtime 1.29+ builds (npm's among them) send usage telemetry
	// to Microsoft, keep a database and device id under ~/.cache/Microsoft
	// and an empty /tmp/mat-debug-<pid>.log per process. An inspection box
	// has no business phoning out; the variable, read when the library
	// initialises, turns all of it off. A value the user set is kept.
	if _, set := os.LookupEnv("ORT_DISABLE_TELEMETRY"); !set {
		os.Setenv("ORT_DISABLE_TELEMETRY", "1")
	}
	if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
		if v := ort.GetVersion(); v != "" && strings.Contains(err.Error(), "API base") {
			return "", fmt.Errorf("ONNX Runtime library %s is version %s, too old: need %s or newer (C API 29)", found, v, MinVersion)
		}
		return "", fmt.Errorf("load ONNX Runtime library %s: %w", found, err)
	}
	return found, nil
}

// Candidates lists the library paths Init would try, in order, and says
// where the list came from.
func Candidates(explicit string) ([]string, string) {
	if explicit != "" {
		return []string{explicit}, "given by --ort-lib"
	}
	if env := os.Getenv(EnvLibrary); env != "" {
		return []string{env}, "given by $" + EnvLibrary
	}
	var dirs []string
	if exe, err := os.Executable(); err == nil {
		exeDir := filepath.Dir(exe)
		dirs = append(dirs, exeDir)
		dirs = append(dirs, depsDirs(exeDir)...)
	}
	if wd, err := os.Getwd(); err == nil {
		dirs = append(dirs, depsDirs(wd)...)
	}
	dirs = append(dirs, "/usr/local/lib", "/usr/lib", "/usr/lib/x86_64-linux-gnu")
	var out []string
	seen := map[string]bool{}
	for _, d := range dirs {
		for _, n := range libraryNames {
			p := filepath.Join(d, n)
			if !seen[p] {
				seen[p] = true
				out = append(out, p)
			}
		}
	}
	return out, "searched the usual places"
}

// depsDirs returns the first .deps/onnxruntime found walking up from dir.
func depsDirs(dir string) []string {
	for d := dir; ; d = filepath.Dir(d) {
		p := filepath.Join(d, ".deps", "onnxruntime")
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			return []string{p}
		}
		if filepath.Dir(d) == d {
			return nil
		}
	}
}

// MaxThreads bounds the intra-op threads asked for: --threads 100000 hung
// creating them. Flags and configuration keys are checked against it.
const MaxThreads = 1024

// SessionOptions are the CPU settings every session of ours starts from:
// all graph optimisations and no spinning thread pools (two spinning pools in
// one process were measured to slow each other down 35-95%). threads <= 0
// lets ORT pick one per core.
func SessionOptions(threads int) (*ort.SessionOptions, error) {
	if err := Init(""); err != nil {
		return nil, err
	}
	o, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("create ORT session options: %w", err)
	}
	settings := []error{
		o.SetGraphOptimizationLevel(ort.GraphOptimizationLevelEnableAll),
		o.AddSessionConfigEntry("session.intra_op.allow_spinning", "0"),
		o.AddSessionConfigEntry("session.inter_op.allow_spinning", "0"),
	}
	if threads > 0 {
		settings = append(settings, o.SetIntraOpNumThreads(threads))
	}
	if err := errors.Join(settings...); err != nil {
		o.Destroy()
		return nil, fmt.Errorf("set ORT session options: %w", err)
	}
	return o, nil
}
