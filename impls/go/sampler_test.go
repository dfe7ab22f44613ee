// The sampler: the RNG's draws, argmax ties, multinomial and top-p picks.

package main

import "testing"

func TestRngDraws(t *testing.T) {
	r := Rng{42}
	want := []uint32{1456360119, 3359763283, 3393612768, 4054632243, 3283045847}
	for i, w := range want {
		if got := r.nextU32(); got != w {
			t.Fatalf("draw %d for seed 42 = %d, want %d", i, got, w)
		}
	}
	r = Rng{42}
	for i, w := range []float32{0.3390852212905884, 0.7822558283805847, 0.790136992931366} {
		if got := r.nextF32(); got != w {
			t.Fatalf("f32 draw %d for seed 42 = %v, want %v", i, got, w)
		}
	}
}

func TestArgmaxFirstMaximum(t *testing.T) {
	if got := argmax([]float32{1, 3, 2, 3}); got != 1 {
		t.Errorf("argmax = %d, want 1 (first maximum)", got)
	}
	s := buildSampler(3, 0, 0.9, 7)
	if got := s.sample([]float32{-1, 5, 5}); got != 1 || s.rng.state != 7 {
		t.Errorf("greedy sample = %d (rng state %d): want 1 and no draw", got, s.rng.state)
	}
}

func TestSampleMultAndTopp(t *testing.T) {
	p := []float32{0.1, 0.4, 0.2, 0.3}
	for coin, want := range map[float32]int{0: 0, 0.1: 1, 0.49: 1, 0.5: 2, 0.99: 3} {
		if got := sampleMult(p, coin); got != want {
			t.Errorf("sampleMult(coin %v) = %d, want %d", coin, got, want)
		}
	}
	buf := make([]probIndex, len(p))
	for _, c := range []struct {
		topp, coin float32
		want       int
	}{{0.5, 0, 1}, {0.5, 0.5, 1}, {0.5, 0.6, 3}, {0.5, 0.99, 3}, {0.9, 0, 1}, {0.9, 0.45, 3}, {0.9, 0.7, 3}, {0.9, 0.99, 2}} {
		if got := sampleTopp(p, c.topp, c.coin, buf); got != c.want {
			t.Errorf("sampleTopp(topp %v, coin %v) = %d, want %d", c.topp, c.coin, got, c.want)
		}
	}
	// equal probabilities sort by id
	if got := sampleTopp([]float32{0.25, 0.25, 0.25, 0.25}, 0.3, 0, buf); got != 0 {
		t.Errorf("sampleTopp ties = %d, want 0", got)
	}
}
