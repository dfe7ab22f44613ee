// Contract 3's GGUF: the model's keys (RoPE base, epsilon, rotated dimensions, BOS/EOS ids) with
// their defaults, any numeric type, the refusals; F16 and BF16 tensors in the reader; the KV
// cache sized for the run.

package main

import (
	"encoding/binary"
	"math"
	"math/rand"
	"strings"
	"testing"
)

func (g *testGGUF) setKV(key string, typ uint32, value []byte) *testGGUF {
	for i := range g.kvs {
		if g.kvs[i].key == key {
			g.kvs[i] = ggufKV{key, typ, value}
			return g
		}
	}
	g.kvs = append(g.kvs, ggufKV{key, typ, value})
	return g
}

func lef32(v float32) []byte { return le32(math.Float32bits(v)) }
func lef64(v float64) []byte { return le64(math.Float64bits(v)) }

// randomized fills every (F32) tensor of g with random values in [-1, 1), so that a change of
// theta or epsilon shows in the logits.
func randomized(g *testGGUF, seed int64) *testGGUF {
	rng := rand.New(rand.NewSource(seed))
	for i := 0; i+4 <= len(g.data); i += 4 {
		binary.LittleEndian.PutUint32(g.data[i:], math.Float32bits(rng.Float32()*2-1))
	}
	return g
}

func TestGGUFKeysDefaultsAndTypes(t *testing.T) {
	tr, err := parseGGUF("tiny.gguf", tinyGGUF().bytes())
	if err != nil {
		t.Fatal(err)
	}
	if c := tr.config; c.RopeTheta != 10000 || c.NormEps != 1e-5 || c.BOS != 1 || c.EOS != 2 {
		t.Errorf("defaults: theta %v eps %v bos %d eos %d", c.RopeTheta, c.NormEps, c.BOS, c.EOS)
	}
	// each key in another numeric type than the converter's
	g := tinyGGUF().
		setKV("llama.rope.freq_base", ggufF64, lef64(500000)).
		setKV("llama.attention.layer_norm_rms_epsilon", ggufF32, lef32(1e-6)).
		setKV("llama.rope.dimension_count", ggufU64, le64(4)).
		setKV("tokenizer.ggml.bos_token_id", ggufI32, le32(259)).
		setKV("tokenizer.ggml.eos_token_id", ggufU16, []byte{7, 0}).
		setKV("llama.rope.scaling.type", ggufString, gstr("none")).
		setKV("llama.expert_count", ggufU32, le32(0))
	if tr, err = parseGGUF("keys.gguf", g.bytes()); err != nil {
		t.Fatal(err)
	}
	if c := tr.config; c.RopeTheta != 500000 || c.NormEps != float32(1e-6) || c.BOS != 259 || c.EOS != 7 {
		t.Errorf("read: theta %v eps %v bos %d eos %d", c.RopeTheta, c.NormEps, c.BOS, c.EOS)
	}
	// an integer theta, a float64 epsilon
	g = tinyGGUF().setKV("llama.rope.freq_base", ggufU32, le32(1000000)).
		setKV("llama.attention.layer_norm_rms_epsilon", ggufF64, lef64(1e-6))
	if tr, err = parseGGUF("keys.gguf", g.bytes()); err != nil || tr.config.RopeTheta != 1e6 || tr.config.NormEps != float32(1e-6) {
		t.Errorf("integer theta: %v, %+v", err, tr)
	}
	// a tokenizer takes the file's ids: encode's first id, decode's dropped space
	tok := buildTokenizer("keys.gguf", tr.vocab).withIDs(&Config{BOS: 259, EOS: 7})
	if got, _ := tok.encode([]byte("a"), true, true); got[0] != 259 || got[len(got)-1] != 7 {
		t.Errorf("encode with BOS 259, EOS 7 = %v", got)
	}
	if got := tok.decode(259, 259); string(got) != "" {
		t.Errorf("decode(BOS, ' ') = %q, want the space dropped", got)
	}
	if got := tok.decode(1, 259); string(got) != " " {
		t.Errorf("decode(1, ' ') with BOS 259 = %q, want the space kept", got)
	}
}

func TestGGUFKeysRefused(t *testing.T) {
	cases := []struct {
		key, want string
		typ       uint32
		value     []byte
	}{
		{"llama.rope.freq_base", "llama.rope.freq_base must be a number", ggufString, gstr("10000")},
		{"llama.rope.freq_base", "llama.rope.freq_base must be a number", ggufBool, []byte{1}},
		{"llama.rope.freq_base", "llama.rope.freq_base=1 must be finite and above 1", ggufF32, lef32(1)},
		{"llama.rope.freq_base", "llama.rope.freq_base", ggufF32, lef32(-5)},
		{"llama.rope.freq_base", "llama.rope.freq_base", ggufF64, lef64(math.NaN())},
		{"llama.rope.freq_base", "llama.rope.freq_base", ggufF32, lef32(float32(math.Inf(1)))},
		{"llama.attention.layer_norm_rms_epsilon", "llama.attention.layer_norm_rms_epsilon=0", ggufF32, lef32(0)},
		{"llama.attention.layer_norm_rms_epsilon", "llama.attention.layer_norm_rms_epsilon=1", ggufU8, []byte{1}},
		{"llama.attention.layer_norm_rms_epsilon", "llama.attention.layer_norm_rms_epsilon must be a number", ggufArray, append(le32(ggufF32), le64(0)...)},
		{"llama.rope.dimension_count", "llama.rope.dimension_count=2 differs from head_size=4", ggufU32, le32(2)},
		{"llama.rope.dimension_count", "llama.rope.dimension_count must be an integer", ggufF32, lef32(4)},
		{"tokenizer.ggml.bos_token_id", "tokenizer.ggml.bos_token_id=260 is outside the vocabulary [0, 260)", ggufU32, le32(260)},
		{"tokenizer.ggml.bos_token_id", "tokenizer.ggml.bos_token_id must be an integer", ggufF32, lef32(1)},
		{"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eos_token_id=-1 is outside", ggufI32, le32(math.MaxUint32)},
		{"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eos_token_id=9223372036854775807 is outside", ggufU64, le64(math.MaxUint64)},
		{"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eos_token_id must be an integer", ggufString, gstr("2")},
		{"llama.rope.scaling.type", "llama.rope.scaling.type=linear: RoPE scaling is not supported", ggufString, gstr("linear")},
		{"llama.rope.scaling.type", "llama.rope.scaling.type must be a string", ggufU32, le32(0)},
		{"llama.expert_count", "llama.expert_count=8: a mixture of experts is not supported", ggufU32, le32(8)},
		{"llama.expert_count", "llama.expert_count must be an integer", ggufString, gstr("0")},
	}
	for _, c := range cases {
		g := tinyGGUF().setKV(c.key, c.typ, c.value)
		_, err := parseGGUF("bad.gguf", g.bytes())
		if exitCode(err) != exitBadFile || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "bad.gguf: ") {
			t.Errorf("%s (type %d): got %v, want a bad-file error with %q", c.key, c.typ, err, c.want)
		}
	}
}

// tinyLogits runs the ids of a parsed tiny file one position at a time and batched, checks that
// both agree, and returns the one-position logits.
func tinyLogits(t *testing.T, data []byte, ids []int) [][]float32 {
	tr, err := parseGGUF("tiny.gguf", data)
	if err != nil {
		t.Fatal(err)
	}
	want := onePositionLogits(t, tr, ids)
	checkLogitsRows(t, tr, ids, want)
	return want
}

func checkLogitsRows(t *testing.T, tr *Transformer, ids []int, want [][]float32) {
	prepareRun(t, tr, 2, len(ids), true)
	defer func() { tr.pool.close(); tr.batch.free() }()
	got := tr.forwardBatch(ids, 0, logitsAll)
	v := tr.config.VocabSize
	for r := range ids {
		for i, w := range want[r] {
			if math.Abs(float64(got[r*v+i]-w)) > 1e-4*(1+math.Abs(float64(w))) {
				t.Fatalf("position %d: batched logit %d = %v, one-position %v", r, i, got[r*v+i], w)
			}
		}
	}
}

func maxDiff(a, b [][]float32) float64 {
	var d float64
	for r := range a {
		for i := range a[r] {
			d = math.Max(d, math.Abs(float64(a[r][i]-b[r][i])))
		}
	}
	return d
}

func TestGGUFThetaAndEpsChangeLogits(t *testing.T) {
	ids := []int{1, 100, 200, 259}
	base := tinyLogits(t, randomized(tinyGGUF(), 1).bytes(), ids)
	same := tinyLogits(t, randomized(tinyGGUF(), 1).setKV("llama.rope.freq_base", ggufF32, lef32(10000)).
		setKV("llama.attention.layer_norm_rms_epsilon", ggufF32, lef32(1e-5)).bytes(), ids)
	if d := maxDiff(base, same); d != 0 {
		t.Errorf("the default values written out move the logits by %g", d)
	}
	theta := tinyLogits(t, randomized(tinyGGUF(), 1).setKV("llama.rope.freq_base", ggufF32, lef32(3)).bytes(), ids)
	if d := maxDiff(base[:1], theta[:1]); d != 0 {
		t.Errorf("theta moved position 0 (no rotation there) by %g", d)
	}
	if d := maxDiff(base, theta); d < 1e-3 {
		t.Errorf("theta 3 moved the logits by only %g", d)
	}
	eps := tinyLogits(t, randomized(tinyGGUF(), 1).setKV("llama.attention.layer_norm_rms_epsilon", ggufF32, lef32(0.5)).bytes(), ids)
	if d := maxDiff(base[:1], eps[:1]); d < 1e-3 {
		t.Errorf("eps 0.5 moved the logits by only %g", d)
	}
}

// tiny16GGUF is the tiny model with its matrices of type typ (F16 or BF16), the norms F32 and
// token_embd as embd (F32 or typ).
func tiny16GGUF(typ, embd uint32) *testGGUF {
	g := tinyGGUF()
	g.data, g.tensors = nil, nil
	for _, info := range tinyGGUF().tensors {
		tt := typ
		if len(info.dims) == 1 || (info.name == "token_embd.weight" && embd == ggmlF32) {
			tt = ggmlF32
		}
		size := 4 * elements(info.dims)
		if tt != ggmlF32 {
			size = 2 * elements(info.dims)
		}
		g.addBytes(info.name, tt, size, info.dims)
	}
	return g
}

func TestGGUF16TinyModelLoads(t *testing.T) {
	for _, typ := range []uint32{ggmlF16, ggmlBF16} {
		for _, embd := range []uint32{typ, ggmlF32} {
			g := tiny16GGUF(typ, embd)
			g.addBytes("output.weight", typ, 2*8*260, []uint64{8, 260})
			tr, err := parseGGUF("tiny.gguf", g.bytes())
			if err != nil {
				t.Fatalf("type %d, embd %d: %v", typ, embd, err)
			}
			w := &tr.weights
			if !w.wq[0].is16() || w.wq[0].bf16 != (typ == ggmlBF16) || len(w.wq[0].h16) != 64 || len(w.w2[0].h16) != 128 ||
				!w.wcls.is16() || tr.config.Shared || w.tokenEmbedding.is16() != (embd == typ) {
				t.Errorf("type %d, embd %d: weights %+v", typ, embd, w.wq[0])
			}
			// the embedding row is widened
			row := make([]float32, 8)
			w.tokenEmbedding.row(row, 3)
			for _, v := range row {
				if v != 0 {
					t.Errorf("type %d: embedding row %v, want zeros", typ, row)
				}
			}
		}
	}
}

// TestGGUFRefusesBad16: the 16-bit tensors sized 2 bytes a value, refused where the contract says.
func TestGGUFRefusesBad16(t *testing.T) {
	cases := []struct {
		name, want string
		typ        uint32
		change     func(g *testGGUF)
	}{
		{"F16 norm", "blk.0.ffn_norm.weight has type 1 (F16); a norm must be F32", ggmlF16, func(g *testGGUF) {
			g.tensor("blk.0.ffn_norm.weight").typ = ggmlF16
		}},
		{"BF16 norm", "output_norm.weight has type 30 (BF16); a norm must be F32", ggmlBF16, func(g *testGGUF) {
			g.tensor("output_norm.weight").typ = ggmlBF16
		}},
		{"Q4_0", "blk.0.attn_k.weight has type 2; only F32 (0), F16 (1), Q8_0 (8) and BF16 (30)", ggmlF16, func(g *testGGUF) {
			g.tensor("blk.0.attn_k.weight").typ = 2
		}},
		{"truncated", "blk.0.ffn_up.weight lies outside the file", ggmlBF16, func(g *testGGUF) { g.data = g.data[:len(g.data)-1] }},
		{"inside another", "overlap", ggmlF16, func(g *testGGUF) {
			// attn_q is 8 x 8 halves, 128 bytes: 96 is a legal offset inside it
			g.tensor("blk.0.attn_k.weight").offset = g.tensor("blk.0.attn_q.weight").offset + 96
		}},
		{"sized as F32", "lies outside the file", ggmlF16, func(g *testGGUF) {
			// the last tensor claims F32: twice its bytes
			g.tensors[len(g.tensors)-1].typ = ggmlF32
		}},
	}
	for _, c := range cases {
		g := tiny16GGUF(c.typ, c.typ)
		c.change(g)
		_, err := parseGGUF("bad.gguf", g.bytes())
		if exitCode(err) != exitBadFile || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "bad.gguf: ") {
			t.Errorf("%s: got %v, want a bad-file error with %q", c.name, err, c.want)
		}
	}
}

func TestKVCacheSizedForTheRun(t *testing.T) {
	// a 7B shape at 4096 positions: 32 layers x 4096 x 4096 x 8 bytes = 4 GiB, at the limit
	c := &Config{Dim: 4096, HiddenDim: 11008, NLayers: 32, NHeads: 32, NKVHeads: 32, VocabSize: 32000, SeqLen: 4096}
	if err := c.checkKVCache("7b.gguf", 4096); err != nil {
		t.Errorf("4 GiB exactly: %v", err)
	}
	c.NLayers = 33
	err := c.checkKVCache("7b.gguf", 4096)
	if want := "7b.gguf: KV cache of 4429185024 bytes for 4096 positions exceeds the 4 GiB limit"; err == nil || err.Error() != want || exitCode(err) != exitBadFile {
		t.Errorf("got %v, want %q", err, want)
	}
	if err := c.checkKVCache("7b.gguf", 4); err != nil {
		t.Errorf("4 positions: %v", err)
	}
	s := buildRunState(&Config{Dim: 64, HiddenDim: 172, NLayers: 3, NHeads: 8, NKVHeads: 4, VocabSize: 512, SeqLen: 4096}, 1, 5)
	if len(s.keyCache) != 3*5*32 || len(s.valueCache) != 3*5*32 || s.kvRows != 5 {
		t.Errorf("a 5-position cache has %d and %d floats", len(s.keyCache), len(s.valueCache))
	}
}
