package main

import (
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// modelFile finds a file of the shared model store through POLYLLAMA_MODEL_PATH; without it the
// test is skipped, except under CI, where a missing model is a failure.
func modelFile(t *testing.T, name string) string {
	t.Helper()
	for _, dir := range filepath.SplitList(os.Getenv("POLYLLAMA_MODEL_PATH")) {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found in POLYLLAMA_MODEL_PATH=%q", name, os.Getenv("POLYLLAMA_MODEL_PATH"))
	}
	t.Skipf("%s not found in POLYLLAMA_MODEL_PATH", name)
	return ""
}

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return -1
}

func TestEncodeLlama2Vectors(t *testing.T) {
	v, err := readVocab(modelFile(t, "tokenizer.bin"), 32000)
	if err != nil {
		t.Fatal(err)
	}
	tok := buildTokenizer("test", v)
	cases := map[string][]int{
		"I believe the meaning of life is": {1, 306, 4658, 278, 6593, 310, 2834, 338},
		"Once upon a time":                 {1, 9038, 2501, 263, 931},
		"":                                 {1},
	}
	for text, want := range cases {
		if got, err := tok.encode([]byte(text), true, false); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("encode(%q) = %v, want %v", text, got, want)
		}
	}
	if got, _ := tok.encode([]byte("Once upon a time"), false, true); !reflect.DeepEqual(got, []int{9038, 2501, 263, 931, 2}) {
		t.Errorf("encode without BOS, with EOS = %v", got)
	}
	// decode drops the dummy-prefix space after BOS only
	if got := string(tok.decode(1, 9038)); got != "Once" {
		t.Errorf("decode(BOS, 9038) = %q", got)
	}
	if got := string(tok.decode(9038, 2501)); got != " upon" {
		t.Errorf("decode(9038, 2501) = %q", got)
	}
}

func TestTokenizerByteFallbackAndDecode(t *testing.T) {
	// a tiny vocabulary: <unk>, BOS, EOS, the 256 byte tokens, then " ", "a", "b", "ab", " ab"
	v := &Vocab{}
	add := func(p string, s float64) { v.pieces = append(v.pieces, []byte(p)); v.scores = append(v.scores, s) }
	add("<unk>", 0)
	add("\n<s>\n", 0)
	add("\n</s>\n", 0)
	for b := 0; b < 256; b++ {
		add(string([]byte{'<', '0', 'x', "0123456789ABCDEF"[b>>4], "0123456789ABCDEF"[b&15], '>'}), 0)
	}
	add(" ", -1)   // 259
	add("a", -2)   // 260
	add("b", -3)   // 261
	add("ab", -4)  // 262
	add(" ab", -5) // 263
	add("a", -9)   // 264: a duplicate keeps the lower id
	tok := buildTokenizer("test", v)
	if got, _ := tok.encode([]byte("ab"), true, false); !reflect.DeepEqual(got, []int{1, 263}) {
		t.Errorf("encode(ab) = %v", got)
	}
	// é is not a piece: its two UTF-8 bytes fall back to byte tokens
	if got, _ := tok.encode([]byte("é"), false, false); !reflect.DeepEqual(got, []int{259, 0xC3 + 3, 0xA9 + 3}) {
		t.Errorf("encode(é) = %v", got)
	}
	small := buildTokenizer("small", &Vocab{pieces: v.pieces[:100], scores: v.scores[:100]})
	if _, err := small.encode([]byte("\xff"), true, false); err == nil {
		t.Error("encode into a vocabulary without byte token 0xFF succeeded")
	}
	if got := tok.decode(5, 3+0x41); string(got) != "A" {
		t.Errorf("decode(<0x41>) = %q", got)
	}
	if got := tok.decode(1, 263); string(got) != "ab" {
		t.Errorf("decode(BOS, ' ab') = %q", got)
	}
	for piece, want := range map[string]string{"\x01": "", "\n": "\n", "A": "A", "": "", "\xC3\xA9": "\xC3\xA9", "\x80": ""} {
		if got := string(safePiece([]byte(piece))); got != want {
			t.Errorf("safePiece(%q) = %q, want %q", piece, got, want)
		}
	}
	if _, ok := rawByte([]byte("<0xG1>")); ok {
		t.Error("rawByte accepted a non-hex digit")
	}
}

func TestRngDraws(t *testing.T) {
	r := Rng{42}
	want := []uint32{1456360119, 3359763283, 3393612768, 4054632243, 3283045847}
	for i, w := range want {
		if got := r.nextU32(); got != w {
			t.Fatalf("draw %d for seed 42 = %d, want %d", i, got, w)
		}
	}
	r = Rng{42}
	for i, w := range []float32{0.3390852212905884, 0.7822558283805847, 0.790136992931366} {
		if got := r.nextF32(); got != w {
			t.Fatalf("f32 draw %d for seed 42 = %v, want %v", i, got, w)
		}
	}
}

func TestArgmaxFirstMaximum(t *testing.T) {
	if got := argmax([]float32{1, 3, 2, 3}); got != 1 {
		t.Errorf("argmax = %d, want 1 (first maximum)", got)
	}
	s := buildSampler(3, 0, 0.9, 7)
	if got := s.sample([]float32{-1, 5, 5}); got != 1 || s.rng.state != 7 {
		t.Errorf("greedy sample = %d (rng state %d): want 1 and no draw", got, s.rng.state)
	}
}

func TestSampleMultAndTopp(t *testing.T) {
	p := []float32{0.1, 0.4, 0.2, 0.3}
	for coin, want := range map[float32]int{0: 0, 0.1: 1, 0.49: 1, 0.5: 2, 0.99: 3} {
		if got := sampleMult(p, coin); got != want {
			t.Errorf("sampleMult(coin %v) = %d, want %d", coin, got, want)
		}
	}
	buf := make([]probIndex, len(p))
	for _, c := range []struct {
		topp, coin float32
		want       int
	}{{0.5, 0, 1}, {0.5, 0.5, 1}, {0.5, 0.6, 3}, {0.5, 0.99, 3}, {0.9, 0, 1}, {0.9, 0.45, 3}, {0.9, 0.7, 3}, {0.9, 0.99, 2}} {
		if got := sampleTopp(p, c.topp, c.coin, buf); got != c.want {
			t.Errorf("sampleTopp(topp %v, coin %v) = %d, want %d", c.topp, c.coin, got, c.want)
		}
	}
	// equal probabilities sort by id
	if got := sampleTopp([]float32{0.25, 0.25, 0.25, 0.25}, 0.3, 0, buf); got != 0 {
		t.Errorf("sampleTopp ties = %d, want 0", got)
	}
}

func TestGenerationIsDeterministic(t *testing.T) {
	model := modelFile(t, "stories260K.bin")
	tr, err := readCheckpoint(model)
	if err != nil {
		t.Fatal(err)
	}
	v, err := readVocab(modelFile(t, "tok512.bin"), tr.config.VocabSize)
	if err != nil {
		t.Fatal(err)
	}
	tr.state = buildRunState(&tr.config, 2)
	tr.pool = newPool(2)
	defer tr.free()
	var out bytesWriter
	if _, err := generate(tr, buildTokenizer("tok512.bin", v), buildSampler(tr.config.VocabSize, 0, 0.9, 1), nil, 40, false, &out); err != nil {
		t.Fatal(err)
	}
	const want = "Once upon a time, there was a little girl named Lily."
	if len(out) < len(want) || string(out[:len(want)]) != want {
		t.Errorf("greedy text = %q", out)
	}
}

type bytesWriter []byte

func (b *bytesWriter) Write(p []byte) (int, error) { *b = append(*b, p...); return len(p), nil }

func TestMatmulMatchesNaive(t *testing.T) {
	for _, rows := range []int{1, 3, 4, 7, 13} {
		for _, workers := range []int{1, 2, 3} {
			n := 9
			w := make([]float32, rows*n)
			x := make([]float32, n)
			for i := range w {
				w[i] = float32(i%5) - 2
			}
			for i := range x {
				x[i] = float32(i) * 0.5
			}
			tr := &Transformer{pool: newPool(workers)}
			out := make([]float32, rows)
			tr.matmul(out, x, &Matrix{f32: w})
			tr.pool.close()
			for r := 0; r < rows; r++ {
				var want float32
				for j := 0; j < n; j++ {
					want += w[r*n+j] * x[j]
				}
				if math.Abs(float64(out[r]-want)) > 1e-4 {
					t.Fatalf("rows %d workers %d: out[%d] = %v, want %v", rows, workers, r, out[r], want)
				}
			}
		}
	}
}

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

func TestUsageErrors(t *testing.T) {
	for _, argv := range [][]string{
		{}, {"-t", "1"}, {"m.bin", "-t"}, {"m.bin", "-t", "abc"}, {"m.bin", "-t", "nan"}, {"m.bin", "-j", "0"},
		{"m.bin", "-n", "-3"}, {"m.bin", "-p", "2"}, {"m.bin", "-x", "1"}, {"m.bin", "-m", "chat"},
		{"m.bin", "-m", "logits", "-o", "f"}, {"m.bin", "-k", "1,a"}, {"m.bin", "-e", "2"}, {"m.bin", "-s", "18446744073709551616"},
		{"m.bin", "-t", "inf"}, {"m.bin", "-n", "1_0"}, {"m.bin", "-n", " 5"}, {"m.bin", "-t", "0x1p0"}, {"m.bin", "-k", "1, 2"},
	} {
		if _, err := parseArgs(argv); exitCode(err) != exitUsage {
			t.Errorf("parseArgs(%q) = %v, want a usage error", argv, err)
		}
	}
	a, err := parseArgs([]string{"m.bin", "-t", "0.5", "-s", "18446744073709551615", "-n", "0", "-k", "1,+2", "-e", "1"})
	if err != nil || a.temperature != 0.5 || a.seed != math.MaxUint64 || a.steps != 0 || !reflect.DeepEqual(a.ids, []int{1, 2}) || !a.ignoreBOS {
		t.Errorf("parseArgs = %+v, %v", a, err)
	}
}

// TestPoolManyJobs hands out many tiny jobs back to back, the pattern of a forward pass, and
// checks that every index is covered exactly once and that no wake-up is lost (a hang).
func TestPoolManyJobs(t *testing.T) {
	for _, workers := range []int{2, 3, 5} {
		p := newPool(workers)
		counts := make([]int32, 64)
		for iter := 0; iter < 20000; iter++ {
			n := 1 + iter%64
			p.run(n, 1+iter%4, func(_, lo, hi int) {
				for i := lo; i < hi; i++ {
					counts[i]++
				}
			})
			if iter%1000 == 999 {
				time.Sleep(time.Millisecond) // let the helpers park
			}
		}
		p.close()
		var total int32
		for _, c := range counts {
			total += c
		}
		want := int32(0)
		for iter := 0; iter < 20000; iter++ {
			want += int32(1 + iter%64)
		}
		if total != want {
			t.Fatalf("workers %d: %d indices run, want %d", workers, total, want)
		}
	}
}

// tokenizerBytes is a tokenizer.bin of the smallest legal vocabulary (<unk>, <s>, </s>, the 256
// byte tokens and " "), after change has had its way with pieces and scores.
func tokenizerBytes(change func(pieces []string, scores []float32) ([]string, []float32)) []byte {
	pieces := []string{"<unk>", "\n<s>\n", "\n</s>\n"}
	for b := 0; b < 256; b++ {
		pieces = append(pieces, string([]byte{'<', '0', 'x', "0123456789ABCDEF"[b>>4], "0123456789ABCDEF"[b&15], '>'}))
	}
	pieces = append(pieces, " ")
	scores := make([]float32, len(pieces))
	pieces, scores = change(pieces, scores)
	out := binary.LittleEndian.AppendUint32(nil, 8)
	for i, p := range pieces {
		out = binary.LittleEndian.AppendUint32(out, math.Float32bits(scores[i]))
		out = binary.LittleEndian.AppendUint32(out, uint32(len(p)))
		out = append(out, p...)
	}
	return out
}

// writeTokenizer writes tokenizerBytes(change) to a scratch file and returns its path.
func writeTokenizer(t *testing.T, change func(pieces []string, scores []float32) ([]string, []float32)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tok.bin")
	if err := os.WriteFile(path, tokenizerBytes(change), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestTokenizerRulesAtLoad: section 5's rules for tokenizer.bin, checked when it is read.
func TestTokenizerRulesAtLoad(t *testing.T) {
	same := func(p []string, s []float32) ([]string, []float32) { return p, s }
	if _, err := readVocab(writeTokenizer(t, same), 260); err != nil {
		t.Fatalf("the smallest legal tokenizer: %v", err)
	}
	cases := []struct {
		name, want string
		change     func(p []string, s []float32) ([]string, []float32)
	}{
		{"no space piece", `no piece " "`, func(p []string, s []float32) ([]string, []float32) { p[259] = "@@"; return p, s }},
		{"NaN score", "token 4 has a NaN score", func(p []string, s []float32) ([]string, []float32) {
			s[4] = float32(math.NaN())
			return p, s
		}},
		{"infinite score", "token 9 has an infinite score", func(p []string, s []float32) ([]string, []float32) {
			s[9] = float32(math.Inf(1))
			return p, s
		}},
		{"fewer than 259 tokens", "at least 259", func(p []string, s []float32) ([]string, []float32) {
			return append(p[:200], " "), s[:201]
		}},
	}
	for _, c := range cases {
		path := writeTokenizer(t, c.change)
		n := 260
		if c.name == "fewer than 259 tokens" {
			n = 201
		}
		_, err := readVocab(path, n)
		if exitCode(err) != exitBadFile || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), path+": ") {
			t.Errorf("%s: got %v, want a bad-file error with %q", c.name, err, c.want)
		}
	}
}

// TestNumberFlagLimits: -n takes any number of digits and clamps to seq_len; -j is in
// [1, 4096]; -s is in [0, 2^64 - 1].
func TestNumberFlagLimits(t *testing.T) {
	for _, n := range []string{"1099511627776", "99999999999999999999999999", "4294967297"} {
		a, err := parseArgs([]string{"m.bin", "-n", n})
		if err != nil || clampSteps(a.steps, 256) != 256 {
			t.Errorf("-n %s: %v, steps %v", n, err, a)
		}
	}
	if a, err := parseArgs([]string{"m.bin", "-n", "7"}); err != nil || clampSteps(a.steps, 256) != 7 {
		t.Errorf("-n 7: %v", err)
	}
	if a, err := parseArgs([]string{"m.bin", "-j", "4096", "-s", "18446744073709551615"}); err != nil || a.threads != 4096 || a.seed != math.MaxUint64 {
		t.Errorf("-j 4096 -s 2^64-1: %+v, %v", a, err)
	}
	for _, argv := range [][]string{{"m.bin", "-j", "4097"}, {"m.bin", "-s", "18446744073709551616"}, {"m.bin", "-n", "-1"}} {
		if _, err := parseArgs(argv); exitCode(err) != exitUsage {
			t.Errorf("parseArgs(%q) = %v, want a usage error", argv, err)
		}
	}
}
