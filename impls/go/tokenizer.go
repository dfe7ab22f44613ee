// The Byte Pair Encoding tokenizer: tokenizer.bin, the rules every vocabulary follows (from
// tokenizer.bin or GGUF), and llama2.c's encode, decode and safe printing.

package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
)

const (
	tokBOS   = 1
	tokEOS   = 2
	minVocab = 259 // <unk>, BOS, EOS and the 256 byte tokens
)

// Vocab is a tokenizer's pieces and merge scores, from tokenizer.bin or a GGUF file.
type Vocab struct {
	pieces [][]byte
	scores []float64
}

type Tokenizer struct {
	path   string // the file it came from, for error messages
	vocab  *Vocab
	lookup map[string]int // piece -> lowest id spelling it
	bos    int            // BOS and EOS ids: 1 and 2, or a GGUF file's (withIDs)
	eos    int
}

// readVocab reads tokenizer.bin, which must hold exactly the model's vocabulary.
func readVocab(path string, vocabSize int) (*Vocab, error) {
	f, size, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// more bytes than the longest legal vocabulary of this size: refuse before reading
	if size > 4+int64(vocabSize)*(8+maxTokenLen) {
		return nil, fileError(path, "is %d bytes, too large for a vocabulary of %d", size, vocabSize)
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(f, data); err != nil {
		return nil, fileError(path, "cannot read: %v", err)
	}
	if len(data) < 4 {
		return nil, fileError(path, "truncated: no max_token_length header")
	}
	maxLen := int64(int32(binary.LittleEndian.Uint32(data)))
	if maxLen < 1 || maxLen > maxTokenLen {
		return nil, fileError(path, "max_token_length=%d outside 1..%d", maxLen, maxTokenLen)
	}
	v := &Vocab{pieces: make([][]byte, vocabSize), scores: make([]float64, vocabSize)}
	off := int64(4)
	for i := 0; i < vocabSize; i++ {
		if off+8 > size {
			return nil, fileError(path, "has only %d tokens, the model's vocabulary is %d", i, vocabSize)
		}
		score := math.Float32frombits(binary.LittleEndian.Uint32(data[off:]))
		length := int64(int32(binary.LittleEndian.Uint32(data[off+4:])))
		off += 8
		if length < 0 || length > maxLen {
			return nil, fileError(path, "token %d has length %d, outside 0..%d", i, length, maxLen)
		}
		if off+length > size {
			return nil, fileError(path, "truncated inside token %d", i)
		}
		v.pieces[i] = data[off : off+length : off+length]
		v.scores[i] = float64(score)
		off += length
	}
	if off != size {
		return nil, fileError(path, "has %d bytes after token %d: its vocabulary is larger than the model's %d",
			size-off, vocabSize-1, vocabSize)
	}
	return v, v.check(path)
}

// check applies the rules every vocabulary follows, from tokenizer.bin or GGUF alike: <unk>,
// BOS, EOS and the 256 byte tokens that byte fallback emits; the " " piece that starts every
// prompt; finite scores, which the merge rule compares.
func (v *Vocab) check(path string) error {
	if len(v.pieces) < minVocab {
		return fileError(path, "has %d tokens; a tokenizer needs at least %d (<unk>, BOS, EOS and 256 byte tokens)",
			len(v.pieces), minVocab)
	}
	space := false
	for i, score := range v.scores {
		if math.IsNaN(score) {
			return fileError(path, "token %d has a NaN score", i)
		}
		if math.IsInf(score, 0) {
			return fileError(path, "token %d has an infinite score", i)
		}
		space = space || string(v.pieces[i]) == " "
	}
	if !space {
		return fileError(path, "has no piece \" \" (the dummy prefix that starts every prompt)")
	}
	return nil
}

func buildTokenizer(path string, v *Vocab) *Tokenizer {
	t := &Tokenizer{path: oneLine(path), vocab: v, lookup: make(map[string]int, len(v.pieces)), bos: tokBOS, eos: tokEOS}
	for i, p := range v.pieces {
		if _, dup := t.lookup[string(p)]; !dup { // a duplicated piece keeps its lower id
			t.lookup[string(p)] = i
		}
	}
	return t
}

// withIDs takes the model's BOS and EOS ids (a GGUF file may name others than 1 and 2).
func (t *Tokenizer) withIDs(c *Config) *Tokenizer {
	t.bos, t.eos = c.BOS, c.EOS
	return t
}

// encode turns text into token ids: dummy prefix, UTF-8 code points or byte fallback, then
// the highest-scoring merges until none applies. It fails only for a vocabulary too small to
// hold the byte tokens that the fallback needs.
func (t *Tokenizer) encode(text []byte, bos, eos bool) ([]int, error) {
	tokens := make([]int, 0, len(text)+3)
	if bos {
		tokens = append(tokens, t.bos)
	}
	if len(text) > 0 {
		tokens = append(tokens, t.lookup[" "]) // the dummy prefix: Vocab.check made sure it is there
	}
	for i := 0; i < len(text); {
		// a code point: a lead byte and up to three continuation bytes
		j := i + 1
		for j < len(text) && text[j]&0xC0 == 0x80 && j-i < 4 {
			j++
		}
		if id, ok := t.lookup[string(text[i:j])]; ok {
			tokens = append(tokens, id)
		} else {
			for _, b := range text[i:j] {
				tokens = append(tokens, int(b)+3) // byte fallback: <0x00> is id 3
			}
		}
		i = j
	}
	for _, id := range tokens {
		if id >= len(t.vocab.pieces) {
			return nil, fmt.Errorf("the vocabulary of %d tokens has no token %d, needed to encode the prompt", len(t.vocab.pieces), id)
		}
	}
	var buf []byte
	for {
		bestScore, bestID, bestIdx := math.Inf(-1), -1, -1
		for i := 0; i+1 < len(tokens); i++ {
			buf = append(append(buf[:0], t.piece(tokens[i])...), t.piece(tokens[i+1])...)
			if id, ok := t.lookup[string(buf)]; ok && t.vocab.scores[id] > bestScore {
				bestScore, bestID, bestIdx = t.vocab.scores[id], id, i
			}
		}
		if bestIdx < 0 {
			break
		}
		tokens[bestIdx] = bestID
		tokens = append(tokens[:bestIdx+1], tokens[bestIdx+2:]...)
	}
	if eos {
		tokens = append(tokens, t.eos)
	}
	return tokens, nil
}

// piece is the text of an id; ids past the vocabulary (byte fallback in a tiny vocabulary)
// have none, and the caller refuses to run them.
func (t *Tokenizer) piece(id int) []byte {
	if id < 0 || id >= len(t.vocab.pieces) {
		return nil
	}
	return t.vocab.pieces[id]
}

func (t *Tokenizer) decode(prev, token int) []byte {
	piece := t.piece(token)
	if prev == t.bos && len(piece) > 0 && piece[0] == ' ' {
		piece = piece[1:] // the dummy prefix after BOS is not printed
	}
	if b, ok := rawByte(piece); ok {
		return []byte{b}
	}
	return piece
}

// rawByte parses a byte token <0xHH>.
func rawByte(piece []byte) (byte, bool) {
	if len(piece) != 6 || string(piece[:3]) != "<0x" || piece[5] != '>' {
		return 0, false
	}
	hi, ok1 := hexDigit(piece[3])
	lo, ok2 := hexDigit(piece[4])
	return hi<<4 | lo, ok1 && ok2
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// safePiece is what run.c's safe_printf prints: nothing for a lone unprintable byte.
func safePiece(piece []byte) []byte {
	if len(piece) == 1 {
		b := piece[0]
		if !(0x20 <= b && b <= 0x7E) && !(b == '\t' || b == '\n' || b == '\v' || b == '\f' || b == '\r') {
			return nil
		}
	}
	return piece
}
