// A float32 exponential for the batched pass's SwiGLU and softmax, which compute tens of
// millions of them per prompt: math.Exp works in float64 with a general-purpose reduction, this
// one in float32 with the accuracy a float32 result needs (within 2 ulp; tested against
// math.Exp), and in 16 lanes with AVX-512 (gemm_amd64.s). The one-position pass keeps math.Exp.

package main

import "math"

func expf(x float32) float32 {
	if !(x >= -87.33654) { // below the smallest normal float32 (a subnormal at most), or NaN
		if x != x {
			return x
		}
		return 0
	}
	if x > 88.72283 {
		return float32(math.Inf(1))
	}
	// x = n ln2 + r, |r| <= ln2/2, with ln2 split in two so that n*ln2Hi is exact; n is
	// rounded by conversion (towards zero) after adding +-1/2, which needs no math.Floor call
	const log2e, ln2Hi, ln2Lo = 1.442695, 0.693145751953125, 1.428606765330187e-06
	t := x * log2e
	var n int32
	if t >= 0 {
		n = int32(t + 0.5)
	} else {
		n = int32(t - 0.5)
	}
	fn := float32(n)
	r := (x - fn*ln2Hi) - fn*ln2Lo
	// Taylor to r^7: the next term is below 2e-8 relative for |r| <= 0.347
	p := float32(1.0 / 5040)
	p = p*r + 1.0/720
	p = p*r + 1.0/120
	p = p*r + 1.0/24
	p = p*r + 1.0/6
	p = p*r + 0.5
	p = p*r + 1
	p = p*r + 1
	if n > 127 { // 2^128 is not a float32: scale in two steps
		return p * 2 * math.Float32frombits(uint32(n-1+127)<<23)
	}
	return p * math.Float32frombits(uint32(n+127)<<23)
}

// softmaxExpf is softmax with expf, or with its AVX-512 form (gemm_amd64.s).
func softmaxExpf(x []float32) {
	maxVal := x[0]
	for _, v := range x[1:] {
		if v > maxVal {
			maxVal = v
		}
	}
	var sum float32
	if simdKernels && hasAVX512 {
		sum = expSumAVX512(&x[0], len(x), maxVal)
	} else {
		for i, v := range x {
			e := expf(v - maxVal)
			x[i] = e
			sum += e
		}
	}
	inv := 1 / sum
	for i := range x {
		x[i] *= inv
	}
}

// swiglu sets h[i] = silu(h[i]) * u[i], silu(g) = g / (1 + exp(-g)).
func swiglu(h, u []float32) {
	if len(h) == 0 {
		return
	}
	u = u[:len(h)]
	if simdKernels && hasAVX512 {
		swigluAVX512(&h[0], &u[0], len(h))
		return
	}
	for i, g := range h {
		h[i] = g / (1 + expf(-g)) * u[i]
	}
}
