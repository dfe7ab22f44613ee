// The GGUF reader (F32, F16, BF16 and Q8_0 tensors): llama.cpp's "llama" architecture names, the tokenizer embedded.
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
	"sort"
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
	// off starts past the magic, so data (a fuzz input) may be shorter than off
	if g.off > uint64(len(g.data)) || n > uint64(len(g.data))-g.off {
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
		return v, g.strings(&v, key, keep)
	}
	return v, fileError(g.path, "%s: unknown value type %d", oneLine(key), typ)
}

// strings reads the elements of a string array, keeping them only when keep is set.
func (g *ggufCursor) strings(v *ggufValue, key string, keep bool) error {
	if v.count > uint64(len(g.data))/8 { // each string needs at least its length
		return g.need(math.MaxUint64, key)
	}
	if keep {
		if v.count > maxVocab {
			return fileError(g.path, "vocabulary of %d tokens exceeds the limit %d", v.count, maxVocab)
		}
		v.strs = make([][]byte, v.count)
	}
	for i := uint64(0); i < v.count; i++ {
		s, err := g.str(key)
		if err != nil {
			return err
		}
		if keep {
			v.strs[i] = s
		}
	}
	return nil
}

// ----------------------------------------------------------------------------
// Header, key-value section and tensor infos

// header reads the version and the two counts that follow the magic.
func (g *ggufCursor) header() (nTensors, nKV uint64, err error) {
	version, err := g.u32("version")
	if err != nil {
		return 0, 0, err
	}
	if version != 2 && version != 3 {
		return 0, 0, fileError(g.path, "unsupported GGUF version %d (2 and 3 are read)", version)
	}
	if nTensors, err = g.u64("tensor count"); err != nil {
		return 0, 0, err
	}
	if nKV, err = g.u64("kv count"); err != nil {
		return 0, 0, err
	}
	if nTensors > maxEntries || nKV > maxEntries {
		return 0, 0, fileError(g.path, "implausible counts: %d tensors, %d keys (limit %d)", nTensors, nKV, maxEntries)
	}
	return nTensors, nKV, nil
}

// keyValues reads the metadata. llama.cpp refuses an empty key and a key given twice, and so
// does this reader: which of two values would be meant is anyone's guess.
func (g *ggufCursor) keyValues(n uint64) (map[string]ggufValue, error) {
	kv := map[string]ggufValue{}
	for i := uint64(0); i < n; i++ {
		keyB, err := g.str("key")
		if err != nil {
			return nil, err
		}
		key := string(keyB)
		if key == "" {
			return nil, fileError(g.path, "key %d of %d is empty", i+1, n)
		}
		if _, dup := kv[key]; dup {
			return nil, fileError(g.path, "key %s appears twice", oneLine(key))
		}
		typ, err := g.u32("type of " + oneLine(key))
		if err != nil {
			return nil, err
		}
		if kv[key], err = g.value(typ, key, key == "tokenizer.ggml.tokens"); err != nil {
			return nil, err
		}
	}
	return kv, nil
}

type ggufTensor struct {
	name   string
	dims   []uint64 // innermost first
	typ    uint32
	offset uint64 // from the start of the data section
}

// tensorInfos reads the tensor table in file order; a name given twice is refused.
func (g *ggufCursor) tensorInfos(n uint64) ([]ggufTensor, map[string]int, error) {
	infos := make([]ggufTensor, 0, n)
	index := make(map[string]int, n)
	for i := uint64(0); i < n; i++ {
		nameB, err := g.str("tensor name")
		if err != nil {
			return nil, nil, err
		}
		info := ggufTensor{name: string(nameB)}
		shown := oneLine(info.name)
		if _, dup := index[info.name]; dup {
			return nil, nil, fileError(g.path, "tensor %s appears twice", shown)
		}
		nDims, err := g.u32(shown)
		if err != nil {
			return nil, nil, err
		}
		if nDims > 4 {
			return nil, nil, fileError(g.path, "tensor %s has %d dimensions", shown, nDims)
		}
		info.dims = make([]uint64, nDims)
		for d := range info.dims {
			if info.dims[d], err = g.u64(shown); err != nil {
				return nil, nil, err
			}
		}
		if info.typ, err = g.u32(shown); err != nil {
			return nil, nil, err
		}
		if info.offset, err = g.u64(shown); err != nil {
			return nil, nil, err
		}
		index[info.name] = len(infos)
		infos = append(infos, info)
	}
	return infos, index, nil
}

// ----------------------------------------------------------------------------
// The model: config from the keys, weights from the tensor table, the embedded tokenizer

// readGGUF checks the file in a plain mapping first when the loader would read it into memory
// (the huge-page copy): a GGUF's size is only known once its tables are read, and a bad file of
// many GB (a sparse one, a huge offset) must be refused without reading it all. The tables are
// then parsed again over the loaded bytes, which the weights point into.
func readGGUF(path string, f *os.File, size int64) (*Transformer, error) {
	if loadCopies() {
		if size <= 0 || uint64(size) > uint64(math.MaxInt) {
			return nil, fileError(path, "cannot map a file of %d bytes", size)
		}
		data, unmap, err := mapWhole(path, f, size)
		if err != nil {
			return nil, err
		}
		_, err = parseGGUF(path, data)
		unmap()
		if err != nil {
			return nil, err
		}
	}
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
	nTensors, nKV, err := g.header()
	if err != nil {
		return nil, err
	}
	kv, err := g.keyValues(nKV)
	if err != nil {
		return nil, err
	}
	infos, index, err := g.tensorInfos(nTensors)
	if err != nil {
		return nil, err
	}
	if arch, ok := kv["general.architecture"]; !ok || arch.typ != ggufString || string(arch.str) != "llama" {
		return nil, fileError(path, "general.architecture is not 'llama'")
	}
	align, err := ggufInt(path, kv, "general.alignment", 32)
	if err != nil {
		return nil, err
	}
	if align <= 0 || align&(align-1) != 0 || align > 65536 {
		return nil, fileError(path, "general.alignment=%d is not a power of two up to 65536", align)
	}
	_, hasOutput := index["output.weight"]
	c, err := ggufConfig(path, kv, !hasOutput)
	if err != nil {
		return nil, err
	}
	table := &ggufTable{path: path, data: data, infos: infos, index: index, align: uint64(align),
		dataStart: (g.off + uint64(align) - 1) / uint64(align) * uint64(align)}
	w, err := table.weights(&c)
	if err != nil {
		return nil, err
	}
	vocab, err := ggufVocab(path, kv)
	if err != nil {
		return nil, err
	}
	return &Transformer{config: c, weights: w, vocab: vocab}, nil
}

// ggufInt reads an integer key of any integer type; def != 0 is the value of an absent key.
func ggufInt(path string, kv map[string]ggufValue, key string, def int) (int, error) {
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

// ggufConfig reads the llama.* keys; the vocabulary is the token list's length.
func ggufConfig(path string, kv map[string]ggufValue, shared bool) (Config, error) {
	tokens, ok := kv["tokenizer.ggml.tokens"]
	if !ok || tokens.typ != ggufArray || tokens.etype != ggufString || tokens.count == 0 {
		return Config{}, fileError(path, "missing tokenizer.ggml.tokens")
	}
	scores, ok := kv["tokenizer.ggml.scores"]
	if _, numeric := ggufScalarSize[scores.etype]; !ok || scores.typ != ggufArray || !numeric || scores.count != tokens.count {
		return Config{}, fileError(path, "tokenizer.ggml.scores missing or not one per token")
	}
	c := Config{VocabSize: int(tokens.count), Shared: shared}.withDefaults()
	var err error
	if c.NHeads, err = ggufInt(path, kv, "llama.attention.head_count", 0); err != nil {
		return c, err
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
		if *k.dst, err = ggufInt(path, kv, k.key, k.def); err != nil {
			return c, err
		}
	}
	if err := c.validate(path); err != nil {
		return c, err
	}
	return ggufModelKeys(path, kv, c.withDefaults())
}

// ggufModelKeys reads the hyperparameters llama.cpp takes from the file (contract 3), each with
// its default when absent, and refuses what this architecture does not compute: a partial
// rotation, a RoPE scaling, a mixture of experts. c's shape is already validated.
func ggufModelKeys(path string, kv map[string]ggufValue, c Config) (Config, error) {
	theta, err := ggufFloat(path, kv, "llama.rope.freq_base", defaultRopeTheta)
	if err != nil {
		return c, err
	}
	if !(theta > 1) {
		return c, fileError(path, "llama.rope.freq_base=%g must be finite and above 1", theta)
	}
	eps, err := ggufFloat(path, kv, "llama.attention.layer_norm_rms_epsilon", defaultNormEps)
	if err != nil {
		return c, err
	}
	if !(eps > 0 && eps < 1) {
		return c, fileError(path, "llama.attention.layer_norm_rms_epsilon=%g must be above 0 and below 1", eps)
	}
	c.RopeTheta, c.NormEps = float32(theta), float32(eps)
	rot, err := ggufIntKey(path, kv, "llama.rope.dimension_count", int64(c.headSize()))
	if err != nil {
		return c, err
	}
	if rot != int64(c.headSize()) {
		return c, fileError(path, "llama.rope.dimension_count=%d differs from head_size=%d (partial rotation is not this architecture)", rot, c.headSize())
	}
	for _, id := range []struct {
		key string
		dst *int
		def int64
	}{{"tokenizer.ggml.bos_token_id", &c.BOS, tokBOS}, {"tokenizer.ggml.eos_token_id", &c.EOS, tokEOS}} {
		v, err := ggufIntKey(path, kv, id.key, id.def)
		if err != nil {
			return c, err
		}
		if v < 0 || v >= int64(c.VocabSize) {
			return c, fileError(path, "%s=%d is outside the vocabulary [0, %d)", id.key, v, c.VocabSize)
		}
		*id.dst = int(v)
	}
	if v, ok := kv["llama.rope.scaling.type"]; ok {
		if v.typ != ggufString {
			return c, fileError(path, "key llama.rope.scaling.type must be a string")
		}
		if string(v.str) != "none" {
			return c, fileError(path, "llama.rope.scaling.type=%s: RoPE scaling is not supported", oneLine(string(v.str)))
		}
	}
	experts, err := ggufIntKey(path, kv, "llama.expert_count", 0)
	if err != nil {
		return c, err
	}
	if experts > 0 {
		return c, fileError(path, "llama.expert_count=%d: a mixture of experts is not supported", experts)
	}
	return c, nil
}

// ggufFloat reads a float key of any numeric type (float or integer), def when absent.
func ggufFloat(path string, kv map[string]ggufValue, key string, def float64) (float64, error) {
	v, ok := kv[key]
	if !ok {
		return def, nil
	}
	if !v.isInt() && v.typ != ggufF32 && v.typ != ggufF64 {
		return 0, fileError(path, "key %s must be a number", key)
	}
	x := scalarAt(v.typ, v.raw, 0)
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return 0, fileError(path, "key %s=%g must be finite", key, x)
	}
	return x, nil
}

// ggufIntKey reads an integer key of any integer type without clamping, def when absent; a
// value beyond int64 (a huge u64) reads as the largest int64, out of every range.
func ggufIntKey(path string, kv map[string]ggufValue, key string, def int64) (int64, error) {
	v, ok := kv[key]
	if !ok {
		return def, nil
	}
	if !v.isInt() {
		return 0, fileError(path, "key %s must be an integer", key)
	}
	switch v.typ {
	case ggufU64:
		u := binary.LittleEndian.Uint64(v.raw)
		if u > math.MaxInt64 {
			return math.MaxInt64, nil
		}
		return int64(u), nil
	case ggufI64:
		return int64(binary.LittleEndian.Uint64(v.raw)), nil
	}
	return int64(scalarAt(v.typ, v.raw, 0)), nil
}

// ggufTable turns the tensor infos into weights: each tensor found by name, checked for type,
// shape, alignment and bounds, then the table as a whole for tensors that are not the model's
// and for overlapping data.
type ggufTable struct {
	path      string
	data      []byte
	infos     []ggufTensor
	index     map[string]int // name -> infos index
	align     uint64
	dataStart uint64
	used      []bool // (len(infos)) taken by the model
}

// GGUF tensor names of the llama architecture, per layer; %d is the layer.
var ggufLayerNames = [...]string{"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_down", "ffn_up"}

func (t *ggufTable) weights(c *Config) (Weights, error) {
	t.used = make([]bool, len(t.infos))
	d, kvd, hd, L := c.Dim, c.kvDim(), c.HiddenDim, c.NLayers
	w := Weights{}
	var err error
	if w.tokenEmbedding, err = t.matrix("token_embd.weight", c.VocabSize, d); err != nil {
		return w, err
	}
	if w.rmsFinal, err = t.tensor("output_norm.weight", d); err != nil {
		return w, err
	}
	w.wcls = w.tokenEmbedding
	if !c.Shared {
		if w.wcls, err = t.matrix("output.weight", c.VocabSize, d); err != nil {
			return w, err
		}
	}
	// in ggufLayerNames' order: a norm, or a matrix and its (rows, cols)
	perLayer := []struct {
		norm       *[][]float32
		matrix     *[]Matrix
		rows, cols int
	}{
		{norm: &w.rmsAtt}, {matrix: &w.wq, rows: d, cols: d}, {matrix: &w.wk, rows: kvd, cols: d},
		{matrix: &w.wv, rows: kvd, cols: d}, {matrix: &w.wo, rows: d, cols: d}, {norm: &w.rmsFFN},
		{matrix: &w.w1, rows: hd, cols: d}, {matrix: &w.w2, rows: d, cols: hd}, {matrix: &w.w3, rows: hd, cols: d},
	}
	for i, p := range perLayer {
		if p.norm != nil {
			*p.norm = make([][]float32, L)
		} else {
			*p.matrix = make([]Matrix, L)
		}
		for l := 0; l < L; l++ {
			name := fmt.Sprintf("blk.%d.%s.weight", l, ggufLayerNames[i])
			if p.norm != nil {
				(*p.norm)[l], err = t.tensor(name, d)
			} else {
				(*p.matrix)[l], err = t.matrix(name, p.rows, p.cols)
			}
			if err != nil {
				return w, err
			}
		}
	}
	if err := t.checkUnused(L); err != nil {
		return w, err
	}
	return w, t.checkOverlap()
}

// tensor returns the named F32 vector of n floats.
func (t *ggufTable) tensor(name string, n int) ([]float32, error) {
	_, off, err := t.find(name, n)
	if err != nil {
		return nil, err
	}
	return floatsAt(t.data, off, int64(n)), nil
}

// matrix returns the named (rows, cols) matrix, F32, F16, BF16 or Q8_0; a Q8_0 one stays its
// blocks, a 16-bit one its halves.
func (t *ggufTable) matrix(name string, rows, cols int) (Matrix, error) {
	info, off, err := t.find(name, rows, cols)
	if err != nil {
		return Matrix{}, err
	}
	switch info.typ {
	case ggmlQ8_0:
		end := off + int64(tensorBytes(info))
		return Matrix{q8: t.data[off:end:end]}, nil
	case ggmlF16, ggmlBF16:
		return Matrix{h16: halvesAt(t.data, off, int64(rows)*int64(cols)), bf16: info.typ == ggmlBF16}, nil
	}
	return Matrix{f32: floatsAt(t.data, off, int64(rows)*int64(cols))}, nil
}

// find checks the named tensor of shape (rows, cols) or (n): its type (F16, BF16 and Q8_0 only
// for a matrix, Q8_0 only with rows of whole blocks), shape, alignment and extent, all in
// 64-bit, and returns its byte offset.
func (t *ggufTable) find(name string, shape ...int) (*ggufTensor, int64, error) {
	i, ok := t.index[name]
	if !ok {
		return nil, 0, fileError(t.path, "missing tensor %s", name)
	}
	info := &t.infos[i]
	typeName := map[uint32]string{ggmlF16: "F16", ggmlQ8_0: "Q8_0", ggmlBF16: "BF16"}[info.typ]
	switch {
	case info.typ != ggmlF32 && info.typ != ggmlQ8_0 && info.typ != ggmlF16 && info.typ != ggmlBF16:
		return nil, 0, fileError(t.path, "tensor %s has type %d; only F32 (0), F16 (1), Q8_0 (8) and BF16 (30) are supported", name, info.typ)
	case info.typ != ggmlF32 && len(shape) != 2:
		return nil, 0, fileError(t.path, "tensor %s has type %d (%s); a norm must be F32 (0)", name, info.typ, typeName)
	}
	if !sameShape(info.dims, shape) {
		want := make([]int, len(shape))
		for i := range shape {
			want[i] = shape[len(shape)-1-i]
		}
		return nil, 0, fileError(t.path, "tensor %s has dims %v, expected %v", name, info.dims, want)
	}
	if info.typ == ggmlQ8_0 && shape[1]%q8Block != 0 {
		return nil, 0, fileError(t.path, "tensor %s is Q8_0 with rows of %d values, not a multiple of %d", name, shape[1], q8Block)
	}
	if info.offset%t.align != 0 {
		return nil, 0, fileError(t.path, "tensor %s has offset %d, not a multiple of general.alignment=%d", name, info.offset, t.align)
	}
	size, bytes := uint64(len(t.data)), tensorBytes(info)
	if (info.typ == ggmlF32 && info.offset%4 != 0) || info.offset > size || t.dataStart > size-info.offset || bytes > size-info.offset-t.dataStart {
		return nil, 0, fileError(t.path, "tensor %s lies outside the file", name)
	}
	t.used[i] = true
	return info, int64(t.dataStart + info.offset), nil
}

// tensorBytes is the size of a tensor whose type and shape are checked (so nothing overflows):
// 4 bytes a value for F32, 2 for F16 and BF16, 34 bytes a block of 32 for Q8_0.
func tensorBytes(info *ggufTensor) uint64 {
	switch info.typ {
	case ggmlQ8_0:
		return elements(info.dims) / q8Block * q8BlockBytes
	case ggmlF16, ggmlBF16:
		return 2 * elements(info.dims)
	}
	return 4 * elements(info.dims)
}

// sameShape: GGUF lists dims innermost first, so (rows, cols) is [cols, rows].
func sameShape(dims []uint64, shape []int) bool {
	if len(dims) != len(shape) {
		return false
	}
	for i := range shape {
		if dims[len(shape)-1-i] != uint64(shape[i]) {
			return false
		}
	}
	return true
}

// checkUnused refuses a tensor the model does not have: llama.cpp insists that the file holds
// exactly the tensors of its block_count.
func (t *ggufTable) checkUnused(layers int) error {
	for i, used := range t.used {
		if !used {
			return fileError(t.path, "unexpected tensor %s: a %d-layer model has %d tensors, the file %d",
				oneLine(t.infos[i].name), layers, countTrue(t.used), len(t.infos))
		}
	}
	return nil
}

func countTrue(b []bool) int {
	n := 0
	for _, v := range b {
		if v {
			n++
		}
	}
	return n
}

// checkOverlap refuses tensors whose bytes [offset, offset + size) intersect.
func (t *ggufTable) checkOverlap() error {
	order := make([]int, len(t.infos))
	for i := range order {
		order[i] = i
	}
	sort.Slice(order, func(a, b int) bool { return t.infos[order[a]].offset < t.infos[order[b]].offset })
	for k := 1; k < len(order); k++ {
		prev, cur := &t.infos[order[k-1]], &t.infos[order[k]]
		if cur.offset < prev.offset+tensorBytes(prev) {
			return fileError(t.path, "tensors %s and %s overlap", oneLine(prev.name), oneLine(cur.name))
		}
	}
	return nil
}

// elements of a tensor already checked to lie inside the file (so the product cannot overflow).
func elements(dims []uint64) uint64 {
	n := uint64(1)
	for _, d := range dims {
		n *= d
	}
	return n
}

const ggufSpace = "\u2581" // SentencePiece's spelling of a space

// ggufVocab builds the embedded tokenizer (its arrays checked by ggufConfig): spaces are
// spelled U+2581, control tokens <s> </s> as llama2.c's.
func ggufVocab(path string, kv map[string]ggufValue) (*Vocab, error) {
	tokens, scores := kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.scores"]
	types, hasTypes := kv["tokenizer.ggml.token_type"]
	_, numericTypes := ggufScalarSize[types.etype]
	hasTypes = hasTypes && types.typ == ggufArray && numericTypes && types.count == tokens.count
	vocab := &Vocab{pieces: make([][]byte, tokens.count), scores: make([]float64, tokens.count)}
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
	return vocab, vocab.check(path)
}
