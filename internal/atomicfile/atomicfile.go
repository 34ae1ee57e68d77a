// Package atomicfile writes files so that readers see either the old content
// or the whole new content, never a half-written file.
package atomicfile

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Write writes data to a temporary file beside path, syncs it and renames it
// over path. On any error the temporary file is removed.
func Write(path string, data []byte) error {
	return WriteFunc(path, func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
}

// WriteFunc is Write for content too large to hold in memory at once: write
// streams it (buffered) into the temporary file.
func WriteFunc(path string, write func(io.Writer) error) (err error) {
	if err := replaceable(path); err != nil {
		return err
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temporary file for %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	buf := bufio.NewWriterSize(tmp, 1<<20)
	if err = write(buf); err == nil {
		err = buf.Flush()
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err = tmp.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err = tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err = os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp.Name(), path, err)
	}
	return nil
}

// Writable says whether Write could put a file at path: its folder exists
// and takes new files. For checking an output before long work.
func Writable(path string) error {
	if err := replaceable(path); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".check-*")
	if err != nil {
		return err
	}
	tmp.Close()
	return os.Remove(tmp.Name())
}

// replaceable refuses a path that names something other than a regular
// file: the rename would put a file in place of a folder's name, a FIFO or
// a device (fit --out /dev/null as root replaced the system's /dev/null).
func replaceable(path string) error {
	st, err := os.Stat(path)
	switch {
	case err != nil: // nothing there yet (or nothing Stat can see): Write finds out
		return nil
	case st.IsDir():
		return fmt.Errorf("%s is a folder, not a file name", path)
	case !st.Mode().IsRegular():
		return fmt.Errorf("%s exists and is not a regular file (%s): not replacing it", path, st.Mode().Type())
	}
	return nil
}
