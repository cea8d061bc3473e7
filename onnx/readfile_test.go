package onnx

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestReadFileLimited(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.bin")
	if err := os.WriteFile(good, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty.bin")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.bin")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}

	for _, p := range []string{good, link} {
		data, err := ReadFileLimited(p, 5)
		if err != nil || !bytes.Equal(data, []byte("hello")) {
			t.Errorf("ReadFileLimited(%s, 5) = %q, %v; want hello", p, data, err)
		}
	}
	refused := []struct {
		path string
		max  int64
		want string
	}{
		{"/dev/zero", MaxModelSize, "/dev/zero: not a regular file (a character device)"},
		{fifo, 0, fifo + ": not a regular file (a named pipe)"}, // must not block opening it
		{dir, 0, dir + ": is a directory"},
		{empty, 0, empty + ": is empty"},
		{good, 4, good + ": is 5 bytes, more than the 4 allowed"},
	}
	for _, c := range refused {
		_, err := ReadFileLimited(c.path, c.max)
		if err == nil || !strings.HasPrefix(err.Error(), c.want) || !errors.Is(err, ErrFileRefused) {
			t.Errorf("ReadFileLimited(%s, %d) error = %v; want %q… matching ErrFileRefused", c.path, c.max, err, c.want)
		}
	}
	if _, err := ReadFileLimited(filepath.Join(dir, "missing"), 0); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: error %v, want os.ErrNotExist", err)
	}
}
