package fit

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// records holds n records of one size: in memory while they fit the
// budget, else in a temporary file (read back through the page cache), so
// a fit over tens of thousands of images stays within bounded memory.
// Records may be written from several goroutines at once, each its own.
type records struct {
	size int
	mem  []byte   // in memory ...
	file *os.File // ... or spilled to disk
}

// newRecords makes room for n records of size bytes; what names them in
// logs and errors, and the spill file in dir.
func newRecords(n, size int, budget int64, dir, what string) (*records, error) {
	r := &records{size: size}
	total := int64(n) * int64(size)
	if total <= budget {
		r.mem = make([]byte, total)
		return r, nil
	}
	f, err := os.CreateTemp(dir, ".transformaly-"+strings.ReplaceAll(what, " ", "-")+"-*")
	if err != nil {
		return nil, fmt.Errorf("%s need %d MB, over the %d MB memory budget, and no spill file can be made: %w", what, total>>20, budget>>20, err)
	}
	r.file = f
	slog.Info(what+" go to a temporary file", "mb", total>>20, "budget_mb", budget>>20, "file", f.Name())
	return r, nil
}

// inMemory is the bytes the records hold in memory.
func (r *records) inMemory() int64 { return int64(len(r.mem)) }

func (r *records) put(i int, b []byte) error {
	if r.file == nil {
		copy(r.mem[i*r.size:(i+1)*r.size], b)
		return nil
	}
	if _, err := r.file.WriteAt(b[:r.size], int64(i)*int64(r.size)); err != nil {
		return fmt.Errorf("write to %s: %w", r.file.Name(), err)
	}
	return nil
}

func (r *records) get(i int, dst []byte) error {
	if r.file == nil {
		copy(dst, r.mem[i*r.size:(i+1)*r.size])
		return nil
	}
	if _, err := r.file.ReadAt(dst[:r.size], int64(i)*int64(r.size)); err != nil {
		return fmt.Errorf("read back from %s: %w", r.file.Name(), err)
	}
	return nil
}

// close frees the memory or removes the spill file.
func (r *records) close() error {
	r.mem = nil
	if r.file == nil {
		return nil
	}
	name := r.file.Name()
	r.file.Close()
	r.file = nil
	return os.Remove(name)
}
