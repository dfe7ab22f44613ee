// The command line: strict flags, each taking exactly one value, numbers in plain decimal.

package main

import (
	"errors"
	"math"
	"math/big"
	"regexp"
	"strconv"
	"strings"
)

const usageText = "usage: run <checkpoint> [-z tokenizer] [-t temperature] [-p topp] [-s seed] [-n steps] " +
	"[-i prompt] [-j threads] [-m generate|logits] [-o file] [-k ids] [-e 0|1] [-b batch]"

type Args struct {
	checkpoint  string
	tokenizer   string
	temperature float64
	topp        float64
	seed        uint64
	steps       int64
	prompt      []byte
	threads     int
	mode        string
	output      string
	ids         []int // -1 marks an id too large to represent, refused with the others
	hasIDs      bool
	ignoreBOS   bool
	batch       int64 // prompt batch before clamping to seq_len (clampBatch)
}

// Numbers on the command line are plain decimal (contract section 2): no inf, nan,
// underscores, hex or surrounding spaces.
var (
	plainInt   = regexp.MustCompile(`^[+-]?[0-9]+$`)
	plainFloat = regexp.MustCompile(`^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$`)
)

func parseInt(flag, text string, lo, hi *big.Int) (*big.Int, error) {
	v, ok := new(big.Int), plainInt.MatchString(text)
	if ok {
		_, ok = v.SetString(text, 10)
	}
	if !ok {
		return nil, usageError("%s expects an integer, got %q", flag, text)
	}
	if (lo != nil && v.Cmp(lo) < 0) || (hi != nil && v.Cmp(hi) > 0) {
		return nil, usageError("%s %s is out of range", flag, text)
	}
	return v, nil
}

func parseFloat(flag, text string, lo, hi float64) (float64, error) {
	if !plainFloat.MatchString(text) {
		return 0, usageError("%s expects a number, got %q", flag, text)
	}
	v, err := strconv.ParseFloat(text, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return 0, usageError("%s expects a number, got %q", flag, text)
	}
	if math.IsInf(v, 0) || v < lo || v > hi { // 1e999 overflows to infinity: out of range

		return 0, usageError("%s %s is out of range", flag, text)
	}
	return v, nil
}

func parseArgs(argv []string) (*Args, error) {
	if len(argv) == 0 || strings.HasPrefix(argv[0], "-") {
		return nil, usageError("missing checkpoint")
	}
	a := &Args{checkpoint: argv[0], temperature: 1.0, topp: 0.9, steps: 256, threads: 1, mode: "generate", batch: 512}
	rest := argv[1:]
	if len(rest)%2 != 0 {
		return nil, usageError("flag %s has no value", oneLine(rest[len(rest)-1]))
	}
	for i := 0; i < len(rest); i += 2 {
		if err := a.set(rest[i], rest[i+1]); err != nil {
			return nil, err
		}
	}
	if a.mode == "logits" && (a.output == "" || !a.hasIDs) {
		return nil, usageError("logits mode needs -o FILE and -k IDS")
	}
	return a, nil
}

// set applies one flag and its value.
func (a *Args) set(flag, value string) error {
	zero, one := big.NewInt(0), big.NewInt(1)
	var err error
	var v *big.Int
	switch flag {
	case "-z":
		a.tokenizer = value
	case "-t":
		a.temperature, err = parseFloat(flag, value, 0, math.Inf(1))
	case "-p":
		a.topp, err = parseFloat(flag, value, 0, 1)
	case "-s":
		if v, err = parseInt(flag, value, zero, new(big.Int).SetUint64(math.MaxUint64)); err == nil {
			a.seed = v.Uint64()
		}
	case "-n":
		// any number of digits: everything above seq_len means seq_len
		if v, err = parseInt(flag, value, zero, nil); err == nil {
			a.steps = math.MaxInt64
			if v.IsInt64() {
				a.steps = v.Int64()
			}
		}
	case "-i":
		a.prompt = []byte(value)
	case "-j":
		if v, err = parseInt(flag, value, one, big.NewInt(4096)); err == nil {
			a.threads = int(v.Int64())
		}
	case "-m":
		if value != "generate" && value != "logits" {
			err = usageError("-m expects generate or logits, got %q", value)
		}
		a.mode = value
	case "-o":
		a.output = value
	case "-k":
		a.ids, err = parseIDs(value)
		a.hasIDs = true
	case "-b":
		// any number of digits: everything above seq_len means seq_len
		if v, err = parseInt(flag, value, one, nil); err == nil {
			a.batch = math.MaxInt64
			if v.IsInt64() {
				a.batch = v.Int64()
			}
		}
	case "-e":
		if v, err = parseInt(flag, value, zero, one); err == nil {
			a.ignoreBOS = v.Int64() == 1
		}
	default:
		err = usageError("unknown flag %s", oneLine(flag))
	}
	return err
}

// parseIDs reads -k's comma-separated ids; an id too large to represent becomes -1, which the
// range check refuses with the others once the vocabulary is known.
func parseIDs(value string) ([]int, error) {
	var ids []int
	for _, part := range strings.Split(value, ",") {
		id, ok := new(big.Int), plainInt.MatchString(part)
		if ok {
			_, ok = id.SetString(part, 10)
		}
		if !ok {
			return nil, usageError("-k expects comma-separated token ids, got %q", value)
		}
		if !id.IsInt64() || id.Int64() > math.MaxInt32 {
			id.SetInt64(-1)
		}
		ids = append(ids, int(id.Int64()))
	}
	return ids, nil
}
