// llama2.c checkpoints and tokenizer.bin headers: every malformed header is a bad-file error.

package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

func TestBadHeadersAreFileErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, ints ...int32) string {
		p := filepath.Join(dir, name)
		b := make([]byte, 4*len(ints))
		for i, v := range ints {
			binary.LittleEndian.PutUint32(b[4*i:], uint32(v))
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for name, path := range map[string]string{
		"missing":    filepath.Join(dir, "nope.bin"),
		"directory":  dir,
		"short":      write("short.bin", 1, 2),
		"zero dim":   write("zero.bin", 0, 8, 1, 1, 1, 10, 4),
		"huge dim":   write("huge.bin", 1<<30, 8, 1, 1, 1, 10, 4),
		"odd head":   write("odd.bin", 6, 8, 1, 2, 1, 10, 4),
		"kv heads":   write("kv.bin", 8, 8, 1, 2, 4, 10, 4),
		"truncated":  write("trunc.bin", 8, 8, 1, 2, 2, 10, 4, 0, 0),
		"bad v1":     write("v1.bin", v1Magic, 2),
		"gguf trunc": write("g.bin", 0x46554747, 3, -1, -1),
	} {
		if _, err := readCheckpoint(path); exitCode(err) != exitBadFile {
			t.Errorf("%s: got %v, want a bad-file error", name, err)
		}
	}
	if _, err := readVocab(write("tok.bin", 0), 3); exitCode(err) != exitBadFile {
		t.Errorf("max_token_length 0: got %v", err)
	}
}
