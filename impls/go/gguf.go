// The GGUF fp32 reader: llama.cpp's "llama" architecture names, the tokenizer embedded.
//
// A hostile file must not turn into a crash or a huge allocation, so every count, length and
// offset is checked against the bytes that are really there before it is used.
package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"os"
)

// GGUF value types
const (
	ggufU8, ggufI8, ggufU16, ggufI16, ggufU32, ggufI32, ggufF32, ggufBool = 0, 1, 2, 3, 4, 5, 6, 7
	ggufString, ggufArray, ggufU64, ggufI64, ggufF64                      = 8, 9, 10, 11, 12
)

var ggufScalarSize = map[uint32]uint64{0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

// ggufValue is one metadata value. Arrays keep their raw bytes (scalars) or, for the
// vocabulary only, their strings: nothing is allocated from a count the file size has not
// already bounded.
type ggufValue struct {
	typ   uint32
	raw   []byte   // a scalar's bytes, or a scalar array's elements
	str   []byte   // a string
	etype uint32   // array element type
	count uint64   // array length
	strs  [][]byte // string array elements, kept for tokenizer.ggml.tokens only
}

func (v *ggufValue) isInt() bool {
	switch v.typ {
	case ggufU8, ggufI8, ggufU16, ggufI16, ggufU32, ggufI32, ggufU64, ggufI64:
		return true
	}
	return false
}

// scalarAt decodes element i of a numeric value of type typ as float64 (integers included).
func scalarAt(typ uint32, raw []byte, i uint64) float64 {
	switch typ {
	case ggufU8, ggufBool:
		return float64(raw[i])
	case ggufI8:
		return float64(int8(raw[i]))
	case ggufU16:
		return float64(binary.LittleEndian.Uint16(raw[2*i:]))
	case ggufI16:
		return float64(int16(binary.LittleEndian.Uint16(raw[2*i:])))
	case ggufU32:
		return float64(binary.LittleEndian.Uint32(raw[4*i:]))
	case ggufI32:
		return float64(int32(binary.LittleEndian.Uint32(raw[4*i:])))
	case ggufF32:
		return float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:])))
	case ggufU64:
		return float64(binary.LittleEndian.Uint64(raw[8*i:]))
	case ggufI64:
		return float64(int64(binary.LittleEndian.Uint64(raw[8*i:])))
	case ggufF64:
		return math.Float64frombits(binary.LittleEndian.Uint64(raw[8*i:]))
	}
	return 0
}

// intValue returns an integer key, clamped into int range (validation rejects huge values).
func (v *ggufValue) intValue() int {
	var x int64
	switch v.typ {
	case ggufU8, ggufU16, ggufU32, ggufU64:
		var u uint64
		switch v.typ {
		case ggufU8:
			u = uint64(v.raw[0])
		case ggufU16:
			u = uint64(binary.LittleEndian.Uint16(v.raw))
		case ggufU32:
			u = uint64(binary.LittleEndian.Uint32(v.raw))
		default:
			u = binary.LittleEndian.Uint64(v.raw)
		}
		if u > math.MaxInt32 {
			u = math.MaxInt32
		}
		x = int64(u)
	case ggufI8:
		x = int64(int8(v.raw[0]))
	case ggufI16:
		x = int64(int16(binary.LittleEndian.Uint16(v.raw)))
	case ggufI32:
		x = int64(int32(binary.LittleEndian.Uint32(v.raw)))
	case ggufI64:
		x = int64(binary.LittleEndian.Uint64(v.raw))
	}
	if x > math.MaxInt32 {
		x = math.MaxInt32
	} else if x < math.MinInt32 {
		x = math.MinInt32
	}
	return int(x)
}

// ggufCursor reads a GGUF header, checking every length against the bytes left.
type ggufCursor struct {
	path string
	data []byte
	off  uint64
}

func (g *ggufCursor) need(n uint64, what string) error {
	if n > uint64(len(g.data))-g.off {
		return fileError(g.path, "truncated or corrupt: %s runs past the end of the file", what)
	}
	return nil
}

func (g *ggufCursor) bytes(n uint64, what string) ([]byte, error) {
	if err := g.need(n, what); err != nil {
		return nil, err
	}
	b := g.data[g.off : g.off+n]
	g.off += n
	return b, nil
}

func (g *ggufCursor) u32(what string) (uint32, error) {
	b, err := g.bytes(4, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (g *ggufCursor) u64(what string) (uint64, error) {
	b, err := g.bytes(8, what)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(b), nil
}

func (g *ggufCursor) str(what string) ([]byte, error) {
	n, err := g.u64(what)
	if err != nil {
		return nil, err
	}
	return g.bytes(n, what)
}

func (g *ggufCursor) value(typ uint32, key string, keep bool) (ggufValue, error) {
	v := ggufValue{typ: typ}
	var err error
	if size, ok := ggufScalarSize[typ]; ok {
		v.raw, err = g.bytes(size, key)
		return v, err
	}
	switch typ {
	case ggufString:
		v.str, err = g.str(key)
		return v, err
	case ggufArray:
		if v.etype, err = g.u32(key); err != nil {
			return v, err
		}
		if v.count, err = g.u64(key); err != nil {
			return v, err
		}
		if size, ok := ggufScalarSize[v.etype]; ok {
			if v.count > uint64(len(g.data))/size {
				return v, g.need(math.MaxUint64, key)
			}
			v.raw, err = g.bytes(v.count*size, key)
			return v, err
		}
		if v.etype != ggufString {
			return v, fileError(g.path, "%s: unsupported array element type %d", oneLine(key), v.etype)
		}
		if v.count > uint64(len(g.data))/8 { // each string needs at least its length
			return v, g.need(math.MaxUint64, key)
		}
		if keep {
			if v.count > maxVocab {
				return v, fileError(g.path, "vocabulary of %d tokens exceeds the limit %d", v.count, maxVocab)
			}
			v.strs = make([][]byte, v.count)
		}
		for i := uint64(0); i < v.count; i++ {
			s, err := g.str(key)
			if err != nil {
				return v, err
			}
			if keep {
				v.strs[i] = s
			}
		}
		return v, nil
	}
	return v, fileError(g.path, "%s: unknown value type %d", oneLine(key), typ)
}

type ggufTensor struct {
	dims   []uint64 // innermost first
	typ    uint32
	offset uint64
}

// GGUF tensor names of the llama architecture; %d is the layer.
var ggufLayerNames = [...]string{"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_down", "ffn_up"}

const ggufSpace = "\u2581" // SentencePiece's spelling of a space

func readGGUF(path string, f *os.File, size int64) (*Transformer, error) {
	data, unmap, err := mapChecked(path, f, size)
	if err != nil {
		return nil, err
	}
	t, err := parseGGUF(path, data)
	if err != nil {
		unmap()
		return nil, err
	}
	t.unmap = unmap
	return t, nil
}

func parseGGUF(path string, data []byte) (*Transformer, error) {
	g := &ggufCursor{path: path, data: data, off: 4}
	version, err := g.u32("version")
	if err != nil {
		return nil, err
	}
	if version != 2 && version != 3 {
		return nil, fileError(path, "unsupported GGUF version %d (2 and 3 are read)", version)
	}
	nTensors, err := g.u64("tensor count")
	if err != nil {
		return nil, err
	}
	nKV, err := g.u64("kv count")
	if err != nil {
		return nil, err
	}
	if nTensors > maxEntries || nKV > maxEntries {
		return nil, fileError(path, "implausible counts: %d tensors, %d keys (limit %d)", nTensors, nKV, maxEntries)
	}
	kv := map[string]ggufValue{}
	for i := uint64(0); i < nKV; i++ {
		key, err := g.str("key")
		if err != nil {
			return nil, err
		}
		typ, err := g.u32("type of " + oneLine(string(key)))
		if err != nil {
			return nil, err
		}
		v, err := g.value(typ, string(key), string(key) == "tokenizer.ggml.tokens")
		if err != nil {
			return nil, err
		}
		kv[string(key)] = v
	}
	tensors := map[string]ggufTensor{}
	for i := uint64(0); i < nTensors; i++ {
		nameB, err := g.str("tensor name")
		if err != nil {
			return nil, err
		}
		name := oneLine(string(nameB))
		nDims, err := g.u32(name)
		if err != nil {
			return nil, err
		}
		if nDims > 4 {
			return nil, fileError(path, "tensor %s has %d dimensions", name, nDims)
		}
		info := ggufTensor{dims: make([]uint64, nDims)}
		for d := range info.dims {
			if info.dims[d], err = g.u64(name); err != nil {
				return nil, err
			}
		}
		if info.typ, err = g.u32(name); err != nil {
			return nil, err
		}
		if info.offset, err = g.u64(name); err != nil {
			return nil, err
		}
		tensors[string(nameB)] = info
	}

	if arch, ok := kv["general.architecture"]; !ok || arch.typ != ggufString || string(arch.str) != "llama" {
		return nil, fileError(path, "general.architecture is not 'llama'")
	}
	intKey := func(key string, def int) (int, error) {
		v, ok := kv[key]
		if !ok {
			if def != 0 {
				return def, nil
			}
			return 0, fileError(path, "missing required key %s", key)
		}
		if !v.isInt() {
			return 0, fileError(path, "key %s must be an integer", key)
		}
		return v.intValue(), nil
	}
	align, err := intKey("general.alignment", 32)
	if err != nil {
		return nil, err
	}
	if align <= 0 || align&(align-1) != 0 || align > 65536 {
		return nil, fileError(path, "general.alignment=%d is not a power of two up to 65536", align)
	}
	dataStart := (g.off + uint64(align) - 1) / uint64(align) * uint64(align)

	tokens, ok := kv["tokenizer.ggml.tokens"]
	if !ok || tokens.typ != ggufArray || tokens.etype != ggufString || tokens.count == 0 {
		return nil, fileError(path, "missing tokenizer.ggml.tokens")
	}
	scores, ok := kv["tokenizer.ggml.scores"]
	if _, numeric := ggufScalarSize[scores.etype]; !ok || scores.typ != ggufArray || !numeric || scores.count != tokens.count {
		return nil, fileError(path, "tokenizer.ggml.scores missing or not one per token")
	}
	c := Config{VocabSize: int(tokens.count)}
	if c.NHeads, err = intKey("llama.attention.head_count", 0); err != nil {
		return nil, err
	}
	for _, k := range []struct {
		key string
		dst *int
		def int
	}{
		{"llama.embedding_length", &c.Dim, 0}, {"llama.feed_forward_length", &c.HiddenDim, 0},
		{"llama.block_count", &c.NLayers, 0}, {"llama.attention.head_count_kv", &c.NKVHeads, c.NHeads},
		{"llama.context_length", &c.SeqLen, 0},
	} {
		if *k.dst, err = intKey(k.key, k.def); err != nil {
			return nil, err
		}
	}
	_, hasOutput := tensors["output.weight"]
	c.Shared = !hasOutput
	if err := c.validate(path); err != nil {
		return nil, err
	}

	tensor := func(name string, shape ...int) ([]float32, error) {
		info, ok := tensors[name]
		if !ok {
			return nil, fileError(path, "missing tensor %s", name)
		}
		if info.typ != 0 {
			return nil, fileError(path, "tensor %s has type %d; only F32 (0) is supported", name, info.typ)
		}
		same := len(info.dims) == len(shape)
		for i := 0; same && i < len(shape); i++ {
			same = info.dims[len(shape)-1-i] == uint64(shape[i])
		}
		if !same {
			want := make([]int, len(shape))
			for i := range shape {
				want[i] = shape[len(shape)-1-i]
			}
			return nil, fileError(path, "tensor %s has dims %v, expected %v", name, info.dims, want)
		}
		n := int64(1)
		for _, s := range shape {
			n *= int64(s)
		}
		size := uint64(len(data))
		if info.offset%4 != 0 || info.offset > size || dataStart > size-info.offset || uint64(4*n) > size-info.offset-dataStart {
			return nil, fileError(path, "tensor %s lies outside the file", name)
		}
		return floatsAt(data, int64(dataStart+info.offset), n), nil
	}
	d, kvd, hd, L := c.Dim, c.kvDim(), c.HiddenDim, c.NLayers
	w := Weights{}
	if w.tokenEmbedding, err = tensor("token_embd.weight", c.VocabSize, d); err != nil {
		return nil, err
	}
	if w.rmsFinal, err = tensor("output_norm.weight", d); err != nil {
		return nil, err
	}
	w.wcls = w.tokenEmbedding
	if !c.Shared {
		if w.wcls, err = tensor("output.weight", c.VocabSize, d); err != nil {
			return nil, err
		}
	}
	perLayer := []struct {
		dst   *[][]float32
		shape []int
	}{
		{&w.rmsAtt, []int{d}}, {&w.wq, []int{d, d}}, {&w.wk, []int{kvd, d}}, {&w.wv, []int{kvd, d}},
		{&w.wo, []int{d, d}}, {&w.rmsFFN, []int{d}}, {&w.w1, []int{hd, d}}, {&w.w2, []int{d, hd}}, {&w.w3, []int{hd, d}},
	}
	for i, p := range perLayer {
		*p.dst = make([][]float32, L)
		for l := 0; l < L; l++ {
			if (*p.dst)[l], err = tensor(fmt.Sprintf("blk.%d.%s.weight", l, ggufLayerNames[i]), p.shape...); err != nil {
				return nil, err
			}
		}
	}

	// the embedded tokenizer: spaces are spelled U+2581, control tokens <s> </s> as llama2.c's
	types, hasTypes := kv["tokenizer.ggml.token_type"]
	_, numericTypes := ggufScalarSize[types.etype]
	hasTypes = hasTypes && types.typ == ggufArray && numericTypes && types.count == tokens.count
	vocab := &Vocab{pieces: make([][]byte, c.VocabSize), scores: make([]float64, c.VocabSize)}
	for i, text := range tokens.strs {
		isControl := hasTypes && scalarAt(types.etype, types.raw, uint64(i)) == 3
		switch {
		case isControl && string(text) == "<s>":
			vocab.pieces[i] = []byte("\n<s>\n")
		case isControl && string(text) == "</s>":
			vocab.pieces[i] = []byte("\n</s>\n")
		default:
			vocab.pieces[i] = bytes.ReplaceAll(text, []byte(ggufSpace), []byte(" "))
		}
		vocab.scores[i] = scalarAt(scores.etype, scores.raw, uint64(i))
	}
	return &Transformer{config: c, weights: w, vocab: vocab}, nil
}
