// Generation and logits loops, timed for the statistics line.

package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"time"
)

type runStats struct {
	promptTokens, generatedTokens, positions int
	ttft, decode                             float64
}

func clampSteps(steps int64, seqLen int) int {
	if steps == 0 || steps > int64(seqLen) {
		return seqLen
	}
	return int(steps)
}

func generate(t *Transformer, tok *Tokenizer, smp *Sampler, prompt []byte, steps int, ignoreBOS bool, out io.Writer) (runStats, error) {
	promptTokens, err := tok.encode(prompt, true, false)
	if err == nil && promptTokens[0] >= t.config.VocabSize {
		err = fmt.Errorf("the vocabulary of %d tokens has no BOS token", t.config.VocabSize)
	}
	if err != nil {
		return runStats{}, &exitError{exitBadFile, tok.path + ": " + err.Error()}
	}
	st := runStats{promptTokens: len(promptTokens)}
	token := promptTokens[0]
	start := time.Now()
	var first time.Time
	for pos := 0; pos < steps; pos++ {
		logits := t.forward(token, pos)
		st.positions++
		var next int
		if pos < len(promptTokens)-1 {
			next = promptTokens[pos+1] // still forcing the prompt
		} else {
			next = smp.sample(logits)
			st.generatedTokens++
			if first.IsZero() {
				first = time.Now()
			}
		}
		if next == tokBOS && !ignoreBOS {
			break // BOS delimits sequences
		}
		if piece := safePiece(tok.decode(token, next)); len(piece) > 0 {
			if _, err := out.Write(piece); err != nil {
				return st, &exitError{exitRuntime, fmt.Sprintf("cannot write to stdout: %v", err)}
			}
		}
		token = next
	}
	end := time.Now()
	if first.IsZero() {
		st.ttft = end.Sub(start).Seconds()
	} else {
		st.ttft = first.Sub(start).Seconds()
		st.decode = end.Sub(first).Seconds()
	}
	return st, nil
}

// logitsRun writes the (len(ids), vocab) logits as little-endian float32, row i after position i.
func logitsRun(t *Transformer, ids []int, path string) (runStats, error) {
	st := runStats{promptTokens: len(ids)}
	f, err := os.Create(path)
	if err != nil {
		return st, writeError(path, err)
	}
	defer f.Close()
	out := bufio.NewWriter(f)
	row := make([]byte, 0, 4*t.config.VocabSize)
	start := time.Now()
	for pos, id := range ids {
		row = row[:0]
		for _, v := range t.forward(id, pos) {
			row = binary.LittleEndian.AppendUint32(row, math.Float32bits(v))
		}
		st.positions++
		if _, err := out.Write(row); err != nil {
			return st, writeError(path, err)
		}
	}
	st.ttft = time.Since(start).Seconds()
	if err := out.Flush(); err != nil {
		return st, writeError(path, err)
	}
	if err := f.Close(); err != nil {
		return st, writeError(path, err)
	}
	return st, nil
}

func statsLine(threads int, loadS float64, st runStats) string {
	tokS := 0.0
	if st.generatedTokens > 1 && st.decode > 0 {
		tokS = float64(st.generatedTokens-1) / st.decode
	}
	f := func(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }
	return fmt.Sprintf(`polyllama-stats: {"port":%q,"prompt_tokens":%d,"generated_tokens":%d,"positions":%d,"threads":%d,"load_s":%s,"ttft_s":%s,"decode_s":%s,"decode_tok_s":%s}`,
		portName, st.promptTokens, st.generatedTokens, st.positions, threads,
		f(loadS, 6), f(st.ttft, 6), f(st.decode, 6), f(tokS, 4))
}
