// Model files: opening and mapping them, sniffing the format, and llama2.c's v0 and v1
// checkpoints (GGUF is in gguf.go).
//
// A v0 and a v1 file differ only in their header and in the order of their tensors, so both
// go through one header reader and one size check; only the tensor layout is per version.

package main

import (
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"math"
	"os"
	"unsafe"
)

const (
	v1Magic       = 0x616b3432
	v0HeaderBytes = 28
	v1HeaderBytes = 256
)

// ----------------------------------------------------------------------------
// Files

// openRegular opens a file for reading, refusing directories and devices (a FIFO would hang).
func openRegular(path string) (*os.File, int64, error) {
	info, err := os.Stat(path)
	if err == nil && info.IsDir() {
		return nil, 0, fileError(path, "cannot open: is a directory")
	}
	if err == nil && !info.Mode().IsRegular() {
		return nil, 0, fileError(path, "cannot open: not a regular file")
	}
	var f *os.File
	if err == nil {
		f, err = os.Open(path)
	}
	if err != nil {
		switch {
		case errors.Is(err, fs.ErrNotExist):
			return nil, 0, fileError(path, "cannot open: no such file")
		case errors.Is(err, fs.ErrPermission):
			return nil, 0, fileError(path, "cannot open: permission denied")
		}
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return nil, 0, fileError(path, "cannot open: %v", pe.Err)
		}
		return nil, 0, fileError(path, "cannot open: %v", err)
	}
	return f, info.Size(), nil
}

// mapChecked brings the whole file into memory for the weights to point into: on Linux a
// huge-page copy (hugepages_linux.go), elsewhere the file mapping. The returned func frees it.
func mapChecked(path string, f *os.File, size int64) ([]byte, func(), error) {
	if size <= 0 || uint64(size) > uint64(math.MaxInt) {
		return nil, nil, fileError(path, "cannot map a file of %d bytes", size)
	}
	return loadFile(path, f, size)
}

// mapWhole is the plain path: the file mapped read-only (mmap_unix.go) or read once.
func mapWhole(path string, f *os.File, size int64) ([]byte, func(), error) {
	data, unmap, err := mapFile(f, size)
	if err != nil {
		return nil, nil, fileError(path, "cannot map: %v", err)
	}
	return data, unmap, nil
}

// floatsAt views n float32s of data at byte offset off; the mapping is page-aligned and every
// caller passes a multiple of 4, except GGUF with a small alignment, which gets a copy.
func floatsAt(data []byte, off, n int64) []float32 {
	if n == 0 {
		return nil
	}
	b := data[off : off+4*n]
	if uintptr(unsafe.Pointer(&b[0]))%4 != 0 {
		out := make([]float32, n)
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
		return out
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n)
}

// halvesAt views n 16-bit values of data at byte offset off, or copies them where the offset is
// odd (possible with general.alignment 1).
func halvesAt(data []byte, off, n int64) []uint16 {
	b := data[off : off+2*n]
	if uintptr(unsafe.Pointer(&b[0]))%2 != 0 {
		out := make([]uint16, n)
		for i := range out {
			out[i] = binary.LittleEndian.Uint16(b[2*i:])
		}
		return out
	}
	return unsafe.Slice((*uint16)(unsafe.Pointer(&b[0])), n)
}

// readCheckpoint sniffs the format from the first bytes and reads the model.
func readCheckpoint(path string) (*Transformer, error) {
	f, size, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	head := make([]byte, v1HeaderBytes)
	n, err := io.ReadFull(f, head)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, fileError(path, "cannot read: %v", err)
	}
	head = head[:n]
	if n >= 4 && string(head[:4]) == "GGUF" {
		return readGGUF(path, f, size)
	}
	return readLlama2c(path, f, size, head)
}

// ----------------------------------------------------------------------------
// llama2.c v0 and v1

// llama2cHeader is what a v0 or v1 header says.
type llama2cHeader struct {
	version int   // 0 (legacy, no magic) or 1
	size    int64 // bytes before the first tensor
	config  Config
}

// readHeader parses and validates a v0 or v1 header: a v1 file starts with the magic, anything
// else is read as v0.
func readHeader(path string, head []byte) (llama2cHeader, error) {
	h := llama2cHeader{version: 0, size: v0HeaderBytes}
	if len(head) >= 4 && binary.LittleEndian.Uint32(head) == v1Magic {
		h.version, h.size = 1, v1HeaderBytes
	}
	if int64(len(head)) < h.size {
		return h, fileError(path, "truncated: %d bytes, a v%d header needs %d", len(head), h.version, h.size)
	}
	fields := head
	if h.version == 1 {
		if version := int32(binary.LittleEndian.Uint32(head[4:])); version != 1 {
			return h, fileError(path, "unsupported llama2.c format version %d (only 0 and 1 are fp32)", version)
		}
		if shared := head[36]; shared > 1 {
			return h, fileError(path, "shared_classifier flag is %d, expected 0 or 1", shared)
		}
		fields = head[8:]
	}
	var v [7]int
	for i := range v {
		v[i] = int(int32(binary.LittleEndian.Uint32(fields[4*i:])))
	}
	h.config = Config{Dim: v[0], HiddenDim: v[1], NLayers: v[2], NHeads: v[3], NKVHeads: v[4], VocabSize: v[5], SeqLen: v[6]}.withDefaults()
	if h.version == 1 {
		h.config.Shared = head[36] == 1
	} else {
		// v0 flags an unshared classifier (after the RoPE tables) with a negative vocab_size
		h.config.Shared = v[5] > 0
		if h.config.VocabSize < 0 {
			h.config.VocabSize = -h.config.VocabSize
		}
	}
	return h, h.config.validate(path)
}

// ropeTableFloats is the size of v0's legacy freq_cis_real and freq_cis_imag, (seq_len, head_size / 2) each.
func ropeTableFloats(c *Config) int64 {
	return 2 * int64(c.SeqLen) * int64(c.headSize()/2)
}

// fileBytes is the exact size a file with this header must have.
func (h *llama2cHeader) fileBytes() int64 {
	n := h.config.weightFloats()
	if h.version == 0 {
		n += ropeTableFloats(&h.config)
	}
	return h.size + 4*n
}

func readLlama2c(path string, f *os.File, size int64, head []byte) (*Transformer, error) {
	h, err := readHeader(path, head)
	if err != nil {
		return nil, err
	}
	c := &h.config
	if expected := h.fileBytes(); size != expected {
		kind := "truncated"
		if size > expected {
			kind = "oversized"
		}
		return nil, fileError(path, "%s: file is %d bytes, header (%s) implies %d", kind, size, c.describe(), expected)
	}
	data, unmap, err := mapChecked(path, f, size)
	if err != nil {
		return nil, err
	}
	tc := &tensorCursor{data, h.size}
	var w Weights
	if h.version == 0 {
		w = v0Weights(tc, c)
	} else {
		w = v1Weights(tc, c)
	}
	return &Transformer{config: *c, weights: w, unmap: unmap}, nil
}

// tensorCursor hands out consecutive tensors of a v0/v1 file, whose size is already checked.
type tensorCursor struct {
	data []byte
	off  int64
}

func (tc *tensorCursor) take(n int) []float32 {
	out := floatsAt(tc.data, tc.off, int64(n))
	tc.off += 4 * int64(n)
	return out
}

func (tc *tensorCursor) layers(layers, n int) [][]float32 {
	out := make([][]float32, layers)
	for l := range out {
		out[l] = tc.take(n)
	}
	return out
}

// matrix and matrices are take and layers for matrices, which are F32 in these formats.
func (tc *tensorCursor) matrix(n int) Matrix { return Matrix{f32: tc.take(n)} }

func (tc *tensorCursor) matrices(layers, n int) []Matrix {
	out := make([]Matrix, layers)
	for l := range out {
		out[l] = tc.matrix(n)
	}
	return out
}

// v0Weights follows run.c's order: the embedding, each per-layer kind, rms_final, RoPE tables.
func v0Weights(tc *tensorCursor, c *Config) Weights {
	d, kv, hd, L := c.Dim, c.kvDim(), c.HiddenDim, c.NLayers
	w := Weights{}
	w.tokenEmbedding = tc.matrix(c.VocabSize * d)
	w.rmsAtt = tc.layers(L, d)
	w.wq = tc.matrices(L, d*d)
	w.wk = tc.matrices(L, kv*d)
	w.wv = tc.matrices(L, kv*d)
	w.wo = tc.matrices(L, d*d)
	w.rmsFFN = tc.layers(L, d)
	w.w1 = tc.matrices(L, hd*d)
	w.w2 = tc.matrices(L, d*hd)
	w.w3 = tc.matrices(L, hd*d)
	w.rmsFinal = tc.take(d)
	tc.off += 4 * ropeTableFloats(c) // RoPE is computed instead
	w.wcls = w.tokenEmbedding
	if !c.Shared {
		w.wcls = tc.matrix(c.VocabSize * d)
	}
	return w
}

// v1Weights: export.py version 1 writes the small vectors first, then the matrices.
func v1Weights(tc *tensorCursor, c *Config) Weights {
	d, kv, hd, L := c.Dim, c.kvDim(), c.HiddenDim, c.NLayers
	w := Weights{}
	w.rmsAtt = tc.layers(L, d)
	w.rmsFFN = tc.layers(L, d)
	w.rmsFinal = tc.take(d)
	w.tokenEmbedding = tc.matrix(c.VocabSize * d)
	w.wq = tc.matrices(L, d*d)
	w.wk = tc.matrices(L, kv*d)
	w.wv = tc.matrices(L, kv*d)
	w.wo = tc.matrices(L, d*d)
	w.w1 = tc.matrices(L, hd*d)
	w.w2 = tc.matrices(L, d*hd)
	w.w3 = tc.matrices(L, hd*d)
	w.wcls = w.tokenEmbedding
	if !c.Shared {
		w.wcls = tc.matrix(c.VocabSize * d)
	}
	return w
}
