// Generation: greedy stories260K runs through the whole pipeline, against the golden texts.

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
	prepareRun(t, tr, 2, 512, false)
	defer tr.free()
	runs := []struct {
		golden, prompt string
		steps          int
	}{{"stories260K.f32.greedy.txt", "", 256}, {"stories260K.f32.prompt.txt", "Once upon a time, there was a", 96}}
	for _, r := range runs {
		var out bytesWriter
		smp := buildSampler(tr.config.VocabSize, 0, 0.9, 1)
		if _, err := generate(tr, buildTokenizer("tok512.bin", v), smp, []byte(r.prompt), r.steps, false, &out); err != nil {
			t.Fatal(err)
		}
		if want := golden(t, r.golden); string(out) != want {
			t.Errorf("%s: greedy text = %q", r.golden, out)
		}
	}
}
