package onnx

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrFileRefused is matched (errors.Is) by the errors OpenFileLimited and
// ReadFileLimited return for a path that is not a regular file, is empty,
// is larger than the limit or changed while it was read.
var ErrFileRefused = errors.New("file refused")

// FileError is a file refused by OpenFileLimited or ReadFileLimited. It
// reads "PATH: REASON", e.g. "/dev/zero: not a regular file (mode Dc)".
type FileError struct {
	Path   string
	Reason string
}

func (e *FileError) Error() string { return e.Path + ": " + e.Reason }

// Is makes errors.Is(err, ErrFileRefused) true.
func (e *FileError) Is(target error) bool { return target == ErrFileRefused }

// OpenFileLimited opens path for reading without trusting it: the path
// must name a regular file (symbolic links are followed; devices such as
// /dev/zero, FIFOs, sockets and directories are refused), not empty and,
// when max > 0, no larger than max bytes. The path is checked with Stat
// before it is opened, because opening a FIFO blocks until a writer
// appears, and the opened file is checked again (same file, still regular,
// still within the limits), because the path may be replaced in between.
// The returned FileInfo is the opened file's; the caller closes the file.
// Errors for refused files are *FileError.
func OpenFileLimited(path string, max int64) (*os.File, os.FileInfo, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, nil, err
	}
	if err := checkFile(path, st, max); err != nil {
		return nil, nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	fst, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !os.SameFile(st, fst) {
		f.Close()
		return nil, nil, &FileError{path, "the file was replaced while it was opened"}
	}
	if err := checkFile(path, fst, max); err != nil {
		f.Close()
		return nil, nil, err
	}
	return f, fst, nil
}

// ReadFileLimited reads the whole file at path after the checks of
// OpenFileLimited (regular, non-empty, at most max bytes when max > 0). It
// reads at most size+1 bytes, size being the opened file's size, and
// refuses the file unless exactly size bytes were read, so a file growing
// underneath can never make it buffer more than the limit.
func ReadFileLimited(path string, max int64) ([]byte, error) {
	f, st, err := OpenFileLimited(path, max)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size := st.Size()
	data := make([]byte, size+1)
	n, err := io.ReadFull(f, data)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if int64(n) != size {
		return nil, &FileError{path, fmt.Sprintf("read %d bytes but the file is %d bytes: it changed while it was read", n, size)}
	}
	return data[:n:n], nil
}

// checkFile checks a file's type and size before it is read.
func checkFile(path string, st os.FileInfo, max int64) error {
	switch mode := st.Mode(); {
	case mode.IsDir():
		return &FileError{path, "is a directory, not a file"}
	case !mode.IsRegular():
		return &FileError{path, fmt.Sprintf("not a regular file (%s); only regular files are read", fileKind(mode))}
	case st.Size() == 0:
		return &FileError{path, "is empty"}
	case max > 0 && st.Size() > max:
		return &FileError{path, fmt.Sprintf("is %d bytes, more than the %d allowed", st.Size(), max)}
	}
	return nil
}

// fileKind names the type of a file that is not regular.
func fileKind(mode os.FileMode) string {
	switch {
	case mode&os.ModeCharDevice != 0:
		return "a character device"
	case mode&os.ModeDevice != 0:
		return "a block device"
	case mode&os.ModeNamedPipe != 0:
		return "a named pipe"
	case mode&os.ModeSocket != 0:
		return "a socket"
	}
	return fmt.Sprintf("mode %v", mode.Type())
}
