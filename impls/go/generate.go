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
	promptTokens, generatedTokens, positions, prefilled int
	ttft, prefill, decode                               float64
}

func clampSteps(steps int64, seqLen int) int {
	if steps == 0 || steps > int64(seqLen) {
		return seqLen
	}
	return int(steps)
}

func minInt(a, b int) int {
	if a < b {
		return a
	}
	return b
}

// clampBatch is -b as used: at most seq_len rows in a batch.
func clampBatch(batch int64, seqLen int) int {
	if batch > int64(seqLen) {
		return seqLen
	}
	return int(batch)
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
	start := time.Now()

	// the prefill: the prompt's positions in batches; only the prompt's last position, when it
	// is reached, needs logits
	nPrefill := minInt(len(promptTokens), steps)
	var logits []float32
	for b0 := 0; b0 < nPrefill; b0 += t.batch.rows {
		b1 := minInt(b0+t.batch.rows, nPrefill)
		want := logitsNone
		if b1 == len(promptTokens) {
			want = logitsLast
		}
		logits = t.forwardBatch(promptTokens[b0:b1], b0, want)
	}
	st.positions, st.prefilled = nPrefill, nPrefill
	st.prefill = time.Since(start).Seconds()

	token := promptTokens[0]
	var first time.Time
	for pos := 0; pos < steps; pos++ {
		var next int
		if pos < len(promptTokens)-1 {
			next = promptTokens[pos+1] // still forcing the prompt; its forward pass was the prefill's
		} else {
			if pos >= len(promptTokens) { // the prompt's last position has the prefill's logits
				logits = t.forward(token, pos)
				st.positions++
			}
			next = smp.sample(logits)
			st.generatedTokens++
			if first.IsZero() {
				first = time.Now()
			}
		}
		if next == tok.bos && !ignoreBOS {
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

// logitsRun writes the (len(ids), vocab) logits as little-endian float32, row i after position
// i, the positions run in batches with every row's logits.
func logitsRun(t *Transformer, ids []int, path string) (runStats, error) {
	st := runStats{promptTokens: len(ids)}
	f, err := os.Create(path)
	if err != nil {
		return st, writeError(path, err)
	}
	defer f.Close()
	out := bufio.NewWriter(f)
	vocab := t.config.VocabSize
	row := make([]byte, 0, 4*vocab)
	var elapsed time.Duration // the forward passes only, not the writes
	loopStart := time.Now()
	for b0 := 0; b0 < len(ids); b0 += t.batch.rows {
		b1 := minInt(b0+t.batch.rows, len(ids))
		start := time.Now()
		logits := t.forwardBatch(ids[b0:b1], b0, logitsAll)
		elapsed += time.Since(start)
		st.positions += b1 - b0
		for r := 0; r < b1-b0; r++ {
			row = row[:0]
			for _, v := range logits[r*vocab : (r+1)*vocab] {
				row = binary.LittleEndian.AppendUint32(row, math.Float32bits(v))
			}
			if _, err := out.Write(row); err != nil {
				return st, writeError(path, err)
			}
		}
	}
	st.prefilled = st.positions
	st.ttft = time.Since(loopStart).Seconds() // no token is sampled: the whole loop
	st.prefill = elapsed.Seconds()
	if err := out.Flush(); err != nil {
		return st, writeError(path, err)
	}
	if err := f.Close(); err != nil {
		return st, writeError(path, err)
	}
	return st, nil
}

func statsLine(threads, batch int, loadS float64, st runStats) string {
	tokS, preS := 0.0, 0.0
	if st.generatedTokens > 1 && st.decode > 0 {
		tokS = float64(st.generatedTokens-1) / st.decode
	}
	if st.prefill > 0 {
		preS = float64(st.prefilled) / st.prefill
	}
	f := func(v float64, prec int) string { return strconv.FormatFloat(v, 'f', prec, 64) }
	return fmt.Sprintf(`polyllama-stats: {"port":%q,"prompt_tokens":%d,"generated_tokens":%d,"positions":%d,"threads":%d,"batch":%d,"load_s":%s,"ttft_s":%s,"prefill_s":%s,"prefill_tok_s":%s,"decode_s":%s,"decode_tok_s":%s}`,
		portName, st.promptTokens, st.generatedTokens, st.positions, threads, batch,
		f(loadS, 6), f(st.ttft, 6), f(st.prefill, 6), f(preS, 4), f(st.decode, 6), f(tokS, 4))
}
