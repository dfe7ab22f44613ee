// The GGUF reader: a tiny model built in the test (F32, and Q8_0 mixed with F32), then broken
// one way at a time: the files llama.cpp refuses, the tokenizer rules, the Q8_0 refusals.

package main

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"testing"
)

// ggufKV is one metadata entry of a test file: its key, value type and encoded value.
type ggufKV struct {
	key   string
	typ   uint32
	value []byte
}

// ggufInfo is one tensor info of a test file.
type ggufInfo struct {
	name   string
	dims   []uint64
	typ    uint32 // ggmlF32 or ggmlQ8_0 (or anything, to break a file)
	offset uint64
}

// testGGUF is a GGUF file under construction, valid until a test breaks it.
type testGGUF struct {
	kvs     []ggufKV
	tensors []ggufInfo
	data    []byte
}

func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
func gstr(s string) []byte { return append(le64(uint64(len(s))), s...) }

// tinyGGUF is a one-layer model (dim 8, hidden 16, 2 heads, seq_len 4) with the smallest legal
// vocabulary: <unk>, <s>, </s>, the 256 byte tokens and "▁", 260 tokens.
func tinyGGUF() *testGGUF { return tinyGGUFShape(8, 16, false) }

// tinyQ8GGUF is the same model with dim 32 and hidden 48, its matrices in Q8_0 as the
// converter writes them: all but ffn_down, whose rows of 48 stay F32 (as stories260K's).
func tinyQ8GGUF() *testGGUF { return tinyGGUFShape(32, 48, true) }

func tinyGGUFShape(dim, hidden uint64, q8 bool) *testGGUF {
	g := &testGGUF{}
	u32 := func(key string, v uint32) { g.kvs = append(g.kvs, ggufKV{key, ggufU32, le32(v)}) }
	g.kvs = append(g.kvs, ggufKV{"general.architecture", ggufString, gstr("llama")})
	u32("llama.embedding_length", uint32(dim))
	u32("llama.feed_forward_length", uint32(hidden))
	u32("llama.block_count", 1)
	u32("llama.attention.head_count", 2)
	u32("llama.context_length", 4)
	pieces := []string{"<unk>", "<s>", "</s>"}
	for b := 0; b < 256; b++ {
		pieces = append(pieces, fmt.Sprintf("<0x%02X>", b))
	}
	pieces = append(pieces, ggufSpace)
	tokens := append(le32(ggufString), le64(uint64(len(pieces)))...)
	scores := append(le32(ggufF32), le64(uint64(len(pieces)))...)
	for i, p := range pieces {
		tokens = append(tokens, gstr(p)...)
		scores = append(scores, le32(math.Float32bits(float32(-i)))...)
	}
	g.kvs = append(g.kvs, ggufKV{"tokenizer.ggml.tokens", ggufArray, tokens}, ggufKV{"tokenizer.ggml.scores", ggufArray, scores})
	matrix := func(name string, dims ...uint64) {
		if q8 && dims[0]%q8Block == 0 {
			g.addQ8(name, dims...)
		} else {
			g.add(name, dims...)
		}
	}
	matrix("token_embd.weight", dim, 260)
	g.add("output_norm.weight", dim)
	for _, name := range ggufLayerNames {
		switch name {
		case "attn_norm", "ffn_norm":
			g.add("blk.0."+name+".weight", dim)
		case "ffn_gate", "ffn_up":
			matrix("blk.0."+name+".weight", dim, hidden)
		case "ffn_down":
			matrix("blk.0."+name+".weight", hidden, dim)
		default:
			matrix("blk.0."+name+".weight", dim, dim)
		}
	}
	return g
}

// add appends a zero F32 tensor (dims innermost first) at the next 32-byte boundary of the data.
func (g *testGGUF) add(name string, dims ...uint64) {
	g.addBytes(name, ggmlF32, 4*elements(dims), dims)
}

// addQ8 appends a Q8_0 tensor of zero blocks; the rows (dims[0]) are whole blocks.
func (g *testGGUF) addQ8(name string, dims ...uint64) {
	g.addBytes(name, ggmlQ8_0, elements(dims)/q8Block*q8BlockBytes, dims)
}

func (g *testGGUF) addBytes(name string, typ uint32, size uint64, dims []uint64) {
	g.data = append(g.data, make([]byte, (32-len(g.data)%32)%32)...)
	g.tensors = append(g.tensors, ggufInfo{name, dims, typ, uint64(len(g.data))})
	g.data = append(g.data, make([]byte, size)...)
}

// tensor finds a tensor info by name.
func (g *testGGUF) tensor(name string) *ggufInfo {
	for i := range g.tensors {
		if g.tensors[i].name == name {
			return &g.tensors[i]
		}
	}
	panic("no tensor " + name)
}

func (g *testGGUF) bytes() []byte {
	out := append([]byte("GGUF"), le32(3)...)
	out = append(out, le64(uint64(len(g.tensors)))...)
	out = append(out, le64(uint64(len(g.kvs)))...)
	for _, kv := range g.kvs {
		out = append(append(append(out, gstr(kv.key)...), le32(kv.typ)...), kv.value...)
	}
	for _, t := range g.tensors {
		out = append(append(out, gstr(t.name)...), le32(uint32(len(t.dims)))...)
		for _, d := range t.dims {
			out = append(out, le64(d)...)
		}
		out = append(append(out, le32(t.typ)...), le64(t.offset)...)
	}
	out = append(out, make([]byte, (32-len(out)%32)%32)...)
	return append(out, g.data...)
}

func (g *testGGUF) kv(key string) *ggufKV {
	for i := range g.kvs {
		if g.kvs[i].key == key {
			return &g.kvs[i]
		}
	}
	panic("no key " + key)
}

// setScore overwrites score i of tokenizer.ggml.scores (after the element type and count).
func (g *testGGUF) setScore(i int, v float32) {
	binary.LittleEndian.PutUint32(g.kv("tokenizer.ggml.scores").value[12+4*i:], math.Float32bits(v))
}

func TestGGUFTinyModelLoads(t *testing.T) {
	tr, err := parseGGUF("tiny.gguf", tinyGGUF().bytes())
	if err != nil {
		t.Fatal(err)
	}
	if c := tr.config; c.Dim != 8 || c.NKVHeads != 2 || c.VocabSize != 260 || !c.Shared {
		t.Errorf("config = %s", c.describe())
	}
	if got := buildTokenizer("tiny.gguf", tr.vocab).lookup[" "]; got != 259 {
		t.Errorf("the space piece is id %d, want 259", got)
	}
}

// TestGGUFRefusesWhatLlamaCppRefuses: contract section 4, the files llama.cpp's loader refuses,
// and the tokenizer rules of section 5 for the embedded tokenizer.
func TestGGUFRefusesWhatLlamaCppRefuses(t *testing.T) {
	cases := []struct {
		name, want string
		change     func(g *testGGUF)
	}{
		{"empty key", "is empty", func(g *testGGUF) { g.kv("llama.context_length").key = "" }},
		{"duplicate key", "llama.block_count appears twice", func(g *testGGUF) { g.kvs = append(g.kvs, *g.kv("llama.block_count")) }},
		{"duplicate tokenizer key", "tokenizer.ggml.scores appears twice", func(g *testGGUF) { g.kvs = append(g.kvs, *g.kv("tokenizer.ggml.scores")) }},
		{"duplicate tensor", "blk.0.attn_q.weight appears twice", func(g *testGGUF) { g.tensors = append(g.tensors, g.tensors[3]) }},
		{"unknown tensor", "unexpected tensor extra.weight", func(g *testGGUF) { g.add("extra.weight", 8) }},
		{"second layer's tensor", "unexpected tensor blk.1.attn_norm.weight", func(g *testGGUF) { g.add("blk.1.attn_norm.weight", 8) }},
		{"unaligned offset", "not a multiple of general.alignment=32", func(g *testGGUF) {
			g.tensors[len(g.tensors)-1].offset += 4
			g.data = append(g.data, make([]byte, 64)...)
		}},
		{"overlapping tensors", "overlap", func(g *testGGUF) { g.tensors[3].offset = g.tensors[2].offset }},
		{"NaN score", "token 5 has a NaN score", func(g *testGGUF) { g.setScore(5, float32(math.NaN())) }},
		{"infinite score", "token 7 has an infinite score", func(g *testGGUF) { g.setScore(7, float32(math.Inf(-1))) }},
		{"no space piece", "no piece \" \"", func(g *testGGUF) {
			v := g.kv("tokenizer.ggml.tokens")
			v.value = []byte(strings.Replace(string(v.value), ggufSpace, "\u2582", 1))
		}},
	}
	for _, c := range cases {
		g := tinyGGUF()
		c.change(g)
		_, err := parseGGUF("bad.gguf", g.bytes())
		if exitCode(err) != exitBadFile || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "bad.gguf: ") {
			t.Errorf("%s: got %v, want a bad-file error with %q", c.name, err, c.want)
		}
	}
}

func TestGGUFQ8TinyModelLoads(t *testing.T) {
	tr, err := parseGGUF("tiny.gguf", tinyQ8GGUF().bytes())
	if err != nil {
		t.Fatal(err)
	}
	w := &tr.weights
	if !w.tokenEmbedding.isQ8() || !w.wq[0].isQ8() || !w.w1[0].isQ8() || w.w2[0].isQ8() {
		t.Errorf("types: token_embd %v, attn_q %v, ffn_gate %v, ffn_down %v: want Q8_0 but ffn_down",
			w.tokenEmbedding.isQ8(), w.wq[0].isQ8(), w.w1[0].isQ8(), w.w2[0].isQ8())
	}
	if len(w.wq[0].q8) != 32*34 || len(w.w2[0].f32) != 32*48 {
		t.Errorf("sizes: attn_q %d bytes, ffn_down %d floats", len(w.wq[0].q8), len(w.w2[0].f32))
	}
}

// TestGGUFRefusesBadQ8: what only a reader that sizes Q8_0 tensors by their blocks notices.
func TestGGUFRefusesBadQ8(t *testing.T) {
	cases := []struct {
		name, want string
		tiny       func() *testGGUF
		change     func(g *testGGUF)
	}{
		{"rows not whole blocks", "blk.0.attn_q.weight is Q8_0 with rows of 8 values, not a multiple of 32", tinyGGUF,
			func(g *testGGUF) { g.tensor("blk.0.attn_q.weight").typ = ggmlQ8_0 }},
		{"Q8_0 norm", "blk.0.ffn_norm.weight has type 8 (Q8_0); a norm must be F32", tinyQ8GGUF,
			func(g *testGGUF) { g.tensor("blk.0.ffn_norm.weight").typ = ggmlQ8_0 }},
		{"Q8_1", "blk.0.attn_v.weight has type 9", tinyQ8GGUF,
			func(g *testGGUF) { g.tensor("blk.0.attn_v.weight").typ = 9 }},
		{"truncated blocks", "blk.0.ffn_up.weight lies outside the file", tinyQ8GGUF,
			func(g *testGGUF) { g.data = g.data[:len(g.data)-1] }},
		{"a tensor inside another's blocks", "overlap", tinyQ8GGUF, func(g *testGGUF) {
			// attn_q's 32 rows of one block end 1088 bytes on; 1056 is a legal offset inside
			g.tensor("blk.0.attn_k.weight").offset = g.tensor("blk.0.attn_q.weight").offset + 1056
		}},
	}
	for _, c := range cases {
		g := c.tiny()
		c.change(g)
		_, err := parseGGUF("bad.gguf", g.bytes())
		if exitCode(err) != exitBadFile || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "bad.gguf: ") {
			t.Errorf("%s: got %v, want a bad-file error with %q", c.name, err, c.want)
		}
	}
}
