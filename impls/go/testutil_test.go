// Test helpers: model files from the store's search path, exit codes, an in-memory writer.

package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// modelDirs is the model store's search path as the orchestrator has it: the directories of
// POLYLLAMA_MODEL_PATH, then the repository's models/ (POLYLLAMA_ROOT's, else the one two
// levels above this package, where `go test` runs).
func modelDirs() []string {
	root := os.Getenv("POLYLLAMA_ROOT")
	if root == "" {
		root = filepath.Join("..", "..")
	}
	return append(filepath.SplitList(os.Getenv("POLYLLAMA_MODEL_PATH")), filepath.Join(root, "models"))
}

// findModelFile is the first file called name in the search path, or "".
func findModelFile(name string) string {
	for _, dir := range modelDirs() {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, name)
		if info, err := os.Stat(p); err == nil && info.Mode().IsRegular() {
			return p
		}
	}
	return ""
}

// modelFile is findModelFile for a test that needs the file: without it the test is skipped,
// with the reason, except under CI, where a missing model is a failure.
func modelFile(t *testing.T, name string) string {
	t.Helper()
	if p := findModelFile(name); p != "" {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found in %q (POLYLLAMA_MODEL_PATH, then the repository's models/); CI=true needs it",
			name, modelDirs())
	}
	t.Skipf("%s not found in %q: set POLYLLAMA_MODEL_PATH to the shared models (CI=true fails instead)",
		name, modelDirs())
	return ""
}

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return -1
}

// golden is a text of tests/data/golden/ (written by the reference): a run's whole stdout, of
// which generate writes all but the closing newline.
func golden(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "tests", "data", "golden", name))
	if err != nil {
		t.Fatalf("the golden text: %v", err)
	}
	return strings.TrimSuffix(string(b), "\n")
}

type bytesWriter []byte

func (b *bytesWriter) Write(p []byte) (int, error) { *b = append(*b, p...); return len(p), nil }

// prepareRun gives a loaded model its run state (a KV cache for the whole context, so that any
// run fits), a batch of batch rows (clamped to seq_len) and a pool of workers, as main does.
func prepareRun(t *testing.T, tr *Transformer, workers, batch int, allLogits bool) {
	t.Helper()
	tr.state = buildRunState(&tr.config, workers, tr.config.SeqLen)
	var err error
	if tr.batch, err = buildBatchState(&tr.config, clampBatch(int64(batch), tr.config.SeqLen), workers, tr.config.SeqLen, allLogits); err != nil {
		t.Fatal(err)
	}
	tr.pool = newPool(workers)
}
