// Loading on Linux: the huge-page copy and the file mapping hold the file's bytes, and a file
// that shrinks while it is read is a bad file.

package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadFileBothPaths checks that the huge-page copy and the file mapping hold the same bytes.
func TestLoadFileBothPaths(t *testing.T) {
	want := make([]byte, 3<<20+5) // over one 2 MiB page, not a multiple of any page size
	for i := range want {
		want[i] = byte(i * 7)
	}
	path := filepath.Join(t.TempDir(), "w.bin")
	if err := os.WriteFile(path, want, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, env := range []string{"", "0"} {
		t.Setenv("POLYLLAMA_HUGEPAGES", env)
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		data, free, err := mapChecked(path, f, int64(len(want)))
		f.Close()
		if err != nil {
			t.Fatalf("POLYLLAMA_HUGEPAGES=%q: %v", env, err)
		}
		if !bytes.Equal(data, want) {
			t.Errorf("POLYLLAMA_HUGEPAGES=%q: the loaded bytes differ from the file", env)
		}
		free()
	}
}

// TestLoadFileShrunk: a file cut short after its size was taken is a bad file, not a crash.
func TestLoadFileShrunk(t *testing.T) {
	t.Setenv("POLYLLAMA_HUGEPAGES", "")
	path := filepath.Join(t.TempDir(), "w.bin")
	if err := os.WriteFile(path, make([]byte, 1000), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Truncate(path, 10); err != nil {
		t.Fatal(err)
	}
	_, _, err = mapChecked(path, f, 1000)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != exitBadFile || !strings.Contains(ee.msg, "shrank") {
		t.Fatalf("err = %v, want a bad-file error about the file shrinking", err)
	}
}
