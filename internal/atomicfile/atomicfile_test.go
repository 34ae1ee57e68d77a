package atomicfile

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A path naming a FIFO, a device or a folder is refused by Write and
// Writable and left as it was (fit --out /dev/null replaced /dev/null with
// a file); a regular file is replaced whole.
func TestRefusesWhatIsNoRegularFile(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// A device only for Writable, which writes beside it at most: a test
	// run on code without the check must not replace the system's
	// /dev/null.
	if err := Writable(os.DevNull); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("Writable(%s): %v", os.DevNull, err)
	}
	for _, c := range []struct{ path, want string }{
		{fifo, "not a regular file"},
		{dir, "is a folder"},
	} {
		if err := Writable(c.path); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Writable(%s): %v, want %q", c.path, err, c.want)
		}
		if err := Write(c.path, []byte("x")); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Write(%s): %v, want %q", c.path, err, c.want)
		}
	}
	if st, err := os.Lstat(fifo); err != nil || st.Mode().Type() != os.ModeNamedPipe {
		t.Errorf("the FIFO was replaced: %v %v", st.Mode(), err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left beside the refused paths: %v", entries)
	}

	file := filepath.Join(dir, "out.bin")
	for _, content := range []string{"first", "second"} {
		if err := Writable(file); err != nil {
			t.Fatal(err)
		}
		if err := Write(file, []byte(content)); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(file); string(got) != content {
			t.Errorf("file holds %q, want %q", got, content)
		}
	}
}
