// Generation: a greedy stories260K run through the whole pipeline.

package main

import "testing"

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
