// The tokenizer: Llama 2's encodings, byte fallback and decode, the vocabulary rules at load.

package main

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

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
