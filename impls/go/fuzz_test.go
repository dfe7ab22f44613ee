// Coverage-guided fuzzing of the model-file readers with Go's native fuzzer: each
// target hands arbitrary bytes to one reader, which must return a model or an error: never
// panic, hang, or allocate from a size it has not checked against the file. Seeds are the tiny
// files the unit tests build, and the real stories260K files when the model search path has them.
//
//	go test -run '^$' -fuzz '^FuzzParseGGUF$' -fuzztime 60s      (one target at a time)
//
// Without -fuzz, `go test` runs each target once over its seeds and testdata/fuzz/<Target>/,
// where the fuzzer writes any input that failed: those stay as regression tests.

package main

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// realSeed adds a file from the model search path to the corpus when it is there.
func realSeed(f *testing.F, name string) {
	if p := findModelFile(name); p != "" {
		if data, err := os.ReadFile(p); err == nil {
			f.Add(data)
		}
	}
}

func scratch(t *testing.T, name string, data []byte) string {
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func FuzzParseGGUF(f *testing.F) {
	f.Add(tinyGGUF().bytes())
	f.Add([]byte("GGUF"))
	// Q8_0: F32 and Q8_0 matrices mixed in one layer, and one whose rows are not whole blocks
	f.Add(tinyQ8GGUF().bytes())
	bad := tinyQ8GGUF()
	bad.tensor("blk.0.ffn_down.weight").typ = ggmlQ8_0
	f.Add(bad.bytes())
	// contract 3: F16 and BF16 matrices (token_embd F32 in one), and the model's keys set
	f.Add(tiny16GGUF(ggmlF16, ggmlF32).bytes())
	f.Add(tiny16GGUF(ggmlBF16, ggmlBF16).setKV("llama.rope.freq_base", ggufF32, lef32(500000)).
		setKV("tokenizer.ggml.bos_token_id", ggufU32, le32(1)).setKV("llama.rope.scaling.type", ggufString, gstr("none")).bytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		if m, err := parseGGUF("fuzz.gguf", data); err == nil && m == nil {
			t.Fatal("no model and no error")
		}
	})
}

func FuzzReadCheckpoint(f *testing.F) {
	header := make([]byte, 0, 28)
	for _, v := range []uint32{8, 16, 1, 2, 2, 260, 4} {
		header = binary.LittleEndian.AppendUint32(header, v)
	}
	f.Add(header)
	realSeed(f, "stories260K.bin")
	f.Fuzz(func(t *testing.T, data []byte) {
		if m, err := readCheckpoint(scratch(t, "m.bin", data)); err == nil && m == nil {
			t.Fatal("no model and no error")
		}
	})
}

func FuzzReadVocab(f *testing.F) {
	f.Add(tokenizerBytes(func(p []string, s []float32) ([]string, []float32) { return p, s }), 260)
	f.Add([]byte{8, 0, 0, 0}, 1)
	f.Fuzz(func(t *testing.T, data []byte, vocab int) {
		if vocab < 1 || vocab > 1<<20 {
			return // the model's header limits the vocabulary before a tokenizer is read
		}
		if v, err := readVocab(scratch(t, "tok.bin", data), vocab); err == nil && v == nil {
			t.Fatal("no vocabulary and no error")
		}
	})
}
