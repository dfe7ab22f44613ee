// Inference for Llama 2 in Go, after karpathy/llama2.c's run.c (its inner loops also in amd64
// assembler, simd_amd64.s).
//
// The weights of a llama2.c v0/v1 checkpoint or a GGUF file (F32 or Q8_0 matrices) are loaded
// once (on Linux into transparent huge pages, else memory-mapped) and read in place; one
// sequence is decoded token by token with a KV cache. The command line, the output and every
// validation rule follow polyllama's docs/port-contract.md.
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"time"
	"unsafe"
)

const portName = "go"

func run(argv []string) error {
	start := time.Now()
	args, err := parseArgs(argv)
	if err != nil {
		return err
	}
	// the process uses as many CPUs as it has workers, and -j 1 exactly one
	runtime.GOMAXPROCS(args.threads)

	t, err := readCheckpoint(args.checkpoint)
	if err != nil {
		return err
	}
	tok, err := loadTokenizer(args, t)
	if err != nil {
		t.free()
		return err
	}
	// the KV cache holds the positions this run can reach, checked before it is allocated
	steps := clampSteps(args.steps, t.config.SeqLen)
	kvRows := steps
	if args.mode == "logits" {
		n := len(args.ids)
		ok := n >= 1 && n <= t.config.SeqLen
		for _, id := range args.ids {
			ok = ok && id >= 0 && id < t.config.VocabSize
		}
		if !ok {
			t.free()
			return usageError("-k needs 1..%d ids in [0, %d)", t.config.SeqLen, t.config.VocabSize)
		}
		kvRows = n
	}
	if err := t.config.checkKVCache(args.checkpoint, kvRows); err != nil {
		t.free()
		return err
	}
	t.state = buildRunState(&t.config, args.threads, kvRows)
	batch := clampBatch(args.batch, t.config.SeqLen)
	if t.batch, err = buildBatchState(&t.config, batch, args.threads, kvRows, args.mode == "logits"); err != nil {
		t.free()
		return err
	}
	t.pool = newPool(args.threads)
	defer t.free()
	loadS := time.Since(start).Seconds()

	var st runStats
	if args.mode == "logits" {
		if st, err = logitsRun(t, args.ids, args.output); err != nil {
			return err
		}
	} else {
		seed := args.seed
		if seed == 0 {
			seed = uint64(time.Now().Unix())
		}
		smp := buildSampler(t.config.VocabSize, args.temperature, args.topp, seed)
		out := os.Stdout // unbuffered: each piece is written at once, as run.c's fflush
		if st, err = generate(t, tok, smp, args.prompt, steps, args.ignoreBOS, out); err != nil {
			return err
		}
		if _, err := out.Write([]byte("\n")); err != nil {
			return &exitError{exitRuntime, fmt.Sprintf("cannot write to stdout: %v", err)}
		}
	}
	fmt.Fprintln(os.Stderr, statsLine(args.threads, batch, loadS, st))
	return nil
}

// loadTokenizer reads -z, or takes the tokenizer a GGUF file embeds; either is checked as it
// is read, before any prompt.
func loadTokenizer(args *Args, t *Transformer) (*Tokenizer, error) {
	if t.vocab != nil {
		return buildTokenizer(args.checkpoint, t.vocab).withIDs(&t.config), nil
	}
	if args.tokenizer == "" {
		return nil, usageError("-z tokenizer is required for a .bin checkpoint")
	}
	vocab, err := readVocab(args.tokenizer, t.config.VocabSize)
	if err != nil {
		return nil, err
	}
	return buildTokenizer(args.tokenizer, vocab).withIDs(&t.config), nil
}

func main() {
	defer crashHandler()
	debug.SetPanicOnFault(true)
	if one := uint16(1); *(*byte)(unsafe.Pointer(&one)) != 1 {
		fmt.Fprintln(os.Stderr, "error: this port reads little-endian floats in place and needs a little-endian CPU")
		os.Exit(exitRuntime)
	}
	if err := run(os.Args[1:]); err != nil {
		code := exitRuntime
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
		}
		fmt.Fprintf(os.Stderr, "error: %s\n", err)
		if code == exitUsage {
			fmt.Fprintln(os.Stderr, usageText)
		}
		os.Exit(code)
	}
}
