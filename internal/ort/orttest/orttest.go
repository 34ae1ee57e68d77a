// Package orttest starts test binaries that need ONNX Runtime.
package orttest

import (
	"fmt"
	"os"
	"testing"

	"github.com/transformaly/transformaly/internal/ort"
)

// Main loads ONNX Runtime (found as the binary would find it) and runs the
// tests; without the library it says why and fails.
func Main(m *testing.M) {
	if err := ort.Init(""); err != nil {
		fmt.Fprintln(os.Stderr, "ONNX Runtime is needed for these tests (make deps):", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}
