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

// newQ8Batch is a q8Batch for T rows of d columns in ordinary memory.
func newQ8Batch(T, d int) *q8Batch {
	nb := d / q8Block
	return &q8Batch{qs: make([]int8, T*d), d: make([]float32, T*nb), packed: make([]byte, T*q8Groups(nb)*q8GroupX)}
}

func TestQ8GemmMatchesPlainLoop(t *testing.T) {
	rng := rand.New(rand.NewSource(5))
	withGemmKernels(t, func(t *testing.T, kernels string) {
		var scratch []byte
		for _, T := range []int{1, 7, 33} {
			for _, nb := range []int{1, 2, 7, 8, 9, 24, 27} {
				for _, n := range []int{13, 30, 4, 1} {
					d := nb * q8Block
					w := randomQ8(rng, n, nb)
					x := make([]float32, T*d)
					for i := range x {
						if (i/q8Block)%5 != 3 { // some all-zero blocks
							x[i] = float32(rng.NormFloat64()) * float32(math.Pow(10, float64(rng.Intn(5)-2)))
						}
					}
					a := newQ8Batch(T, d)
					a.quantize(nil, x, T, d)
					ldo := n + 2
					out := make([]float32, T*ldo)
					lo := n / 3
					q8Gemm(out, ldo, a, T, w, lo, n, &scratch)
					for tt := 0; tt < T; tt++ {
						for j := 0; j < ldo; j++ {
							var want float32
							var scale float64
							if j >= lo && j < n {
								want, scale = plainQ8Row(w, a.row(tt), j)
							}
							// the blocks' terms are summed in another order: nb roundings of the scale
							if d := math.Abs(float64(out[tt*ldo+j] - want)); !(d <= float64(nb)*6e-8*scale) {
								t.Fatalf("%s T %d nb %d n %d: out[%d][%d] = %v, want %v", kernels, T, nb, n, tt, j, out[tt*ldo+j], want)
							}
						}
					}
				}
			}
		}
	})
}

// TestQ8GemmExtremes: the largest quants on both sides (-128 in the weights, which a file may
// hold, and +-127 in the activation), where an offset or sign trick could overflow or saturate.
func TestQ8GemmExtremes(t *testing.T) {
	withGemmKernels(t, func(t *testing.T, kernels string) {
		for _, c := range []struct{ qw, qx int8 }{{-128, 127}, {-128, -127}, {127, 127}, {127, -127}, {-128, 0}} {
			T, n, nb := 3, 4, 9
			d := nb * q8Block
			w := make([]byte, n*nb*q8BlockBytes)
			a := newQ8Batch(T, d)
			for b := 0; b < n*nb; b++ {
				w[b*q8BlockBytes+1] = 0x3c // fp16 1.0
				for i := 0; i < q8Block; i++ {
					w[b*q8BlockBytes+2+i] = byte(c.qw)
				}
			}
			for i := range a.qs {
				a.qs[i] = c.qx
			}
			for i := range a.d {
				a.d[i] = 1
			}
			a.n = d
			for r := 0; r < T; r++ {
				packQ8X(a.packed[r*q8Groups(nb)*q8GroupX:], a.qs[r*d:(r+1)*d], a.d[r*nb:(r+1)*nb])
			}
			out := make([]float32, T*n)
			var scratch []byte
			q8Gemm(out, n, a, T, w, 0, n, &scratch)
			for i, v := range out {
				if want := float32(d * int(c.qw) * int(c.qx)); v != want {
					t.Fatalf("%s: %d x %d: out[%d] = %v, want %v", kernels, c.qw, c.qx, i, v, want)
				}
			}
		}
	})
}
