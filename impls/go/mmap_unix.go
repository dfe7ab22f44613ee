//go:build unix

// Mapping a model file where the system has mmap.

package main

import (
	"os"
	"syscall"
)

// mapFile maps the whole file read-only: the weights are paged in by the kernel on first use
// and shared with the page cache, never copied.
func mapFile(f *os.File, size int64) ([]byte, func(), error) {
	data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, err
	}
	return data, func() { _ = syscall.Munmap(data) }, nil
}
