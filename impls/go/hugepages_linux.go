//go:build linux

// Loading the weights on Linux: read into anonymous memory marked for transparent huge pages.

package main

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// loadCopies says whether loadFile reads the file into memory rather than mapping it.
func loadCopies() bool { return os.Getenv("POLYLLAMA_HUGEPAGES") != "0" }

// loadFile reads the whole checkpoint into anonymous memory marked for transparent huge pages.
// Where THP is in "madvise" mode (Debian's default) a file mapping stays in 4 KiB pages, and a
// forward pass over hundreds of MB of weights then misses the TLB on nearly every page; 2 MiB
// pages cover the same weights with 512 times fewer entries. The file is read straight into the
// region (not mapped and copied), so the process holds one copy. POLYLLAMA_HUGEPAGES=0 keeps
// the plain file mapping, for before/after runs.
func loadFile(path string, f *os.File, size int64) ([]byte, func(), error) {
	if !loadCopies() {
		return mapWhole(path, f, size)
	}
	data, err := syscall.Mmap(-1, 0, int(size),
		syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, nil, fileError(path, "cannot allocate %d bytes: %v", size, err)
	}
	free := func() { _ = syscall.Munmap(data) }
	// a refusal (THP off, an old kernel) only costs speed
	_ = syscall.Madvise(data, syscall.MADV_HUGEPAGE)
	if _, err := f.ReadAt(data, 0); err != nil {
		free()
		var pe *fs.PathError
		switch {
		case errors.Is(err, io.EOF):
			return nil, nil, fileError(path, "cannot read: the file shrank while it was read")
		case errors.As(err, &pe):
			return nil, nil, fileError(path, "cannot read: %v", pe.Err)
		}
		return nil, nil, fileError(path, "cannot read: %v", err)
	}
	// read-only, as the file mapping is: a stray write faults instead of corrupting a weight
	_ = syscall.Mprotect(data, syscall.PROT_READ)
	return data, free, nil
}
