//go:build !linux

package main

import "os"

// loadFile maps the checkpoint; only Linux gets the huge-page copy (hugepages_linux.go).
func loadFile(path string, f *os.File, size int64) ([]byte, func(), error) {
	return mapWhole(path, f, size)
}
