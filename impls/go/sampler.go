// The sampler: llama2.c's xorshift RNG, greedy argmax, multinomial and top-p sampling.

package main

import "sort"

// Rng is llama2.c's xorshift*, so that one seed gives the same draws in every port.
type Rng struct{ state uint64 }

func (r *Rng) nextU32() uint32 {
	r.state ^= r.state >> 12
	r.state ^= r.state << 25
	r.state ^= r.state >> 27
	return uint32((r.state * 0x2545F4914F6CDD1D) >> 32)
}

func (r *Rng) nextF32() float32 { return float32(r.nextU32()>>8) / 16777216.0 }

type Sampler struct {
	temperature float32
	topp        float32
	rng         Rng
	probIndex   []probIndex // top-p candidates, allocated once
}

type probIndex struct {
	prob  float32
	index int
}

func buildSampler(vocabSize int, temperature, topp float64, seed uint64) *Sampler {
	return &Sampler{float32(temperature), float32(topp), Rng{seed}, make([]probIndex, vocabSize)}
}

// argmax returns the lowest index among equal maxima.
func argmax(p []float32) int {
	best := 0
	for i, v := range p {
		if v > p[best] {
			best = i
		}
	}
	return best
}

// sampleMult returns the first index whose running probability exceeds coin.
func sampleMult(probs []float32, coin float32) int {
	var cdf float32
	for i, p := range probs {
		cdf += p
		if coin < cdf {
			return i
		}
	}
	return len(probs) - 1
}

// sampleTopp samples from the smallest set of most likely tokens whose probability exceeds
// topp; tokens below (1 - topp) / (n - 1) cannot be in it and are dropped before sorting.
func sampleTopp(probs []float32, topp, coin float32, buf []probIndex) int {
	cutoff := (1 - topp) / float32(len(probs)-1)
	cand := buf[:0]
	for i, p := range probs {
		if p >= cutoff {
			cand = append(cand, probIndex{p, i})
		}
	}
	sort.Slice(cand, func(a, b int) bool {
		if cand[a].prob != cand[b].prob {
			return cand[a].prob > cand[b].prob
		}
		return cand[a].index < cand[b].index
	})
	if len(cand) == 0 { // a flat distribution and a tiny top-p: the most likely id
		return argmax(probs)
	}
	last := len(cand) - 1
	var cum float32
	for i := range cand {
		cum += cand[i].prob
		if cum > topp {
			last = i
			break
		}
	}
	// cum is now the prefix's total (the whole list when no prefix exceeded topp)
	r := coin * cum
	var cdf float32
	for i := 0; i <= last; i++ {
		cdf += cand[i].prob
		if r < cdf {
			return cand[i].index
		}
	}
	return cand[last].index
}

func (s *Sampler) sample(logits []float32) int {
	if s.temperature == 0 {
		return argmax(logits)
	}
	for i := range logits {
		logits[i] /= s.temperature
	}
	softmax(logits)
	coin := s.rng.nextF32()
	if s.topp <= 0 || s.topp >= 1 {
		return sampleMult(logits, coin)
	}
	return sampleTopp(logits, s.topp, coin, s.probIndex)
}
