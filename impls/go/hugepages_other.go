//go:build !linux

// Loading the weights off Linux: the file mapping, as only Linux gets the huge-page copy
// (hugepages_linux.go).

package main

import "os"

// loadCopies: off Linux the file is always mapped.
func loadCopies() bool { return false }

// loadFile maps the checkpoint.
func loadFile(path string, f *os.File, size int64) ([]byte, func(), error) {
	return mapWhole(path, f, size)
}
