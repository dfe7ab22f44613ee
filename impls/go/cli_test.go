// The command line: refused flags and values, and the limits of the number flags.

package main

import (
	"math"
	"reflect"
	"testing"
)

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

// TestBatchFlag: -b is an integer >= 1 with any number of digits, clamped to seq_len; 0,
// negatives, non-numbers and a missing value are usage errors.
func TestBatchFlag(t *testing.T) {
	if a, err := parseArgs([]string{"m.bin"}); err != nil || a.batch != 512 {
		t.Errorf("default -b: %+v, %v", a, err)
	}
	for _, c := range []struct {
		value string
		want  int
	}{{"1", 1}, {"7", 7}, {"256", 256}, {"257", 256}, {"+3", 3}, {"99999999999999999999999999", 256}, {"4294967297", 256}} {
		a, err := parseArgs([]string{"m.bin", "-b", c.value})
		if err != nil || clampBatch(a.batch, 256) != c.want {
			t.Errorf("-b %s: %v, %+v", c.value, err, a)
		}
	}
	for _, argv := range [][]string{{"m.bin", "-b", "0"}, {"m.bin", "-b", "-1"}, {"m.bin", "-b", "x"}, {"m.bin", "-b"},
		{"m.bin", "-b", ""}, {"m.bin", "-b", "1.5"}, {"m.bin", "-b", " 4"}, {"m.bin", "-b", "-0"}} {
		if _, err := parseArgs(argv); exitCode(err) != exitUsage {
			t.Errorf("parseArgs(%q) = %v, want a usage error", argv, err)
		}
	}
}
