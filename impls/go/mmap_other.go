//go:build !unix

// "Mapping" a model file where the system has no mmap: one read into memory.

package main

import (
	"errors"
	"io"
	"os"
)

// mapFile reads the whole file once where mmap is not available; the weights are still never
// copied per token.
func mapFile(f *os.File, size int64) ([]byte, func(), error) {
	data := make([]byte, size)
	if _, err := io.ReadFull(io.NewSectionReader(f, 0, size), data); err != nil {
		return nil, nil, err
	}
	return data, func() {}, nil
}

// allocScratch allocates the batch scratch where there is no anonymous mmap.
func allocScratch(bytes int64) ([]byte, func(), error) {
	if bytes <= 0 || bytes != int64(int(bytes)) || bytes > 1<<40 {
		return nil, nil, errors.New("too large")
	}
	return make([]byte, bytes), func() {}, nil
}
