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

// allocScratch maps bytes of zeroed anonymous memory for the batch scratch: unlike make, whose
// failure kills the process with a stack trace, a refused mapping is an error to report.
func allocScratch(bytes int64) ([]byte, func(), error) {
	if bytes <= 0 || bytes != int64(int(bytes)) {
		return nil, nil, syscall.ENOMEM
	}
	data, err := syscall.Mmap(-1, 0, int(bytes), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, nil, err
	}
	return data, func() { _ = syscall.Munmap(data) }, nil
}
