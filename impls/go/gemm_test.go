// The batched products against a plain scalar loop, with every kernel set this machine has:
// odd token counts, row counts that are not a multiple of the tile, and d with tails.

package main

import (
	"math"
	"math/rand"
	"testing"
)

// withGemmKernels runs f with the portable kernels, the AVX2 ones and the AVX-512 ones, as
// far as this machine has them.
func withGemmKernels(t *testing.T, f func(t *testing.T, name string)) {
	saved, saved512 := simdKernels, hasAVX512
	defer func() { setSIMD(saved); setAVX512(saved512) }()
	setSIMD(false)
	setAVX512(false)
	f(t, "go")
	if saved {
		setSIMD(true)
		f(t, simdName)
		if saved512 {
			setAVX512(true)
			f(t, "AVX-512")
		}
	}
}

func randomRows(rng *rand.Rand, n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = rng.Float32()*2 - 1
	}
	return v
}

func TestF32GemmMatchesPlainLoop(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	withGemmKernels(t, func(t *testing.T, kernels string) {
		for _, T := range []int{1, 7, 33} {
			for _, d := range []int{64, 96, 172, 7, 16, 300} {
				for _, n := range []int{13, 30, 4, 1} {
					w, x := randomRows(rng, n*d), randomRows(rng, T*d)
					ldo := n + 3 // a wider output than the product: the padding stays untouched
					out := make([]float32, T*ldo)
					lo := n / 3
					f32Gemm(out, ldo, x, T, d, w, lo, n)
					for tt := 0; tt < T; tt++ {
						for j := 0; j < ldo; j++ {
							var exact, scale float64
							if j >= lo && j < n {
								for k := 0; k < d; k++ {
									p := float64(w[j*d+k]) * float64(x[tt*d+k])
									exact += p
									scale += math.Abs(p)
								}
							}
							if math.Abs(float64(out[tt*ldo+j])-exact) > float64(d+1)*6e-8*scale {
								t.Fatalf("%s T %d d %d n %d: out[%d][%d] = %v, want %v", kernels, T, d, n, tt, j, out[tt*ldo+j], exact)
							}
						}
					}
				}
			}
		}
	})
}
