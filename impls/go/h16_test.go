// F16 and BF16 weights: the conversions (every 16-bit pattern, F16 subnormals, BF16 NaN), the
// one-position and batched kernels against a plain scalar loop on odd sizes with every kernel
// set, and stories260K converted to F16 and BF16 in the test: its logits equal those of the F32
// model holding the same (widened) weights, one position at a time and batched.

package main

import (
	"math"
	"math/rand"
	"testing"
)

// widenRef is the contract's conversion by its bit formulas, independent of the kernels.
func widenRef(h uint16, bf16 bool) float32 {
	if bf16 {
		return math.Float32frombits(uint32(h) << 16)
	}
	return f16ToF32(h)
}

func sameFloat(a, b float32) bool {
	return math.Float32bits(a) == math.Float32bits(b) || (a != a && b != b)
}

func TestWiden16EveryValue(t *testing.T) {
	all := make([]uint16, 1<<16)
	for i := range all {
		all[i] = uint16(i)
	}
	withKernels(t, func(t *testing.T, kernels string) {
		for _, bf16 := range []bool{false, true} {
			got := make([]float32, len(all)-3) // not a multiple of 8: the tail in Go
			widen16Rows(got, all, bf16)
			for i, v := range got {
				if want := widenRef(uint16(i), bf16); !sameFloat(v, want) {
					t.Fatalf("%s bf16=%v: %#04x widens to %v (%#08x), want %v", kernels, bf16, i, v, math.Float32bits(v), want)
				}
			}
		}
	})
	// spot values: F16 subnormals and limits, BF16 NaN and infinity
	for _, c := range []struct {
		h    uint16
		bf16 bool
		want float32
	}{
		{0x0001, false, float32(math.Ldexp(1, -24))}, // the smallest F16 subnormal
		{0x03ff, false, float32(1023 * math.Ldexp(1, -24))},
		{0x8001, false, -float32(math.Ldexp(1, -24))},
		{0x0400, false, float32(math.Ldexp(1, -14))}, // the smallest normal
		{0x7bff, false, 65504},
		{0x7c00, false, float32(math.Inf(1))},
		{0x3f80, true, 1},
		{0xc040, true, -3},
		{0x7f80, true, float32(math.Inf(1))},
		{0x0001, true, math.Float32frombits(0x00010000)}, // a float32 subnormal
	} {
		if got := widen16(c.h, c.bf16); got != c.want {
			t.Errorf("widen16(%#04x, bf16=%v) = %v, want %v", c.h, c.bf16, got, c.want)
		}
	}
	for _, h := range []uint16{0x7fc0, 0x7f81, 0xffc1, 0x7c01, 0xfe00} {
		bf16 := h != 0x7c01 && h != 0xfe00
		if got := widen16(h, bf16); got == got {
			t.Errorf("widen16(%#04x, bf16=%v) = %v, want NaN", h, bf16, got)
		}
	}
}

// random16 is n random 16-bit weights of moderate size (F16: |w| < 2, some subnormal; BF16 the
// rounded float32), so that sums stay far from overflow.
func random16(rng *rand.Rand, n int, bf16 bool) []uint16 {
	w := make([]uint16, n)
	for i := range w {
		v := rng.Float32()*2 - 1
		if i%97 == 0 {
			v *= 1e-6 // an F16 subnormal
		}
		if bf16 {
			w[i] = uint16(math.Float32bits(v) >> 16)
		} else {
			w[i] = f32ToF16(v)
		}
	}
	return w
}

// plainDot16 is row r of w (d columns) against x in float64, with the sum of |products|.
func plainDot16(w []uint16, bf16 bool, r int, x []float32) (exact, scale float64) {
	d := len(x)
	for k := 0; k < d; k++ {
		p := float64(widenRef(w[r*d+k], bf16)) * float64(x[k])
		exact += p
		scale += math.Abs(p)
	}
	return exact, scale
}

func TestH16RowsMatchPlainLoop(t *testing.T) {
	rng := rand.New(rand.NewSource(16))
	withKernels(t, func(t *testing.T, kernels string) {
		for _, bf16 := range []bool{false, true} {
			for _, d := range []int{64, 96, 172, 288, 7, 8, 24, 1} {
				for _, n := range []int{13, 4, 1, 30} {
					w, x := random16(rng, n*d, bf16), randomRows(rng, d)
					out := make([]float32, n+2)
					lo := n / 4
					h16Rows(out, x, w, bf16, lo, n)
					for j := range out {
						var exact, scale float64
						if j >= lo && j < n {
							exact, scale = plainDot16(w, bf16, j, x)
						}
						if math.Abs(float64(out[j])-exact) > float64(d+1)*6e-8*scale {
							t.Fatalf("%s bf16=%v d %d n %d: out[%d] = %v, want %v", kernels, bf16, d, n, j, out[j], exact)
						}
					}
				}
			}
		}
	})
}

func TestH16GemmMatchesPlainLoop(t *testing.T) {
	rng := rand.New(rand.NewSource(17))
	withGemmKernels(t, func(t *testing.T, kernels string) {
		for _, bf16 := range []bool{false, true} {
			for _, T := range []int{1, 7, 33} {
				for _, d := range []int{64, 96, 172, 288, 7} {
					for _, n := range []int{13, 30, 4, 1} {
						w, x := random16(rng, n*d, bf16), randomRows(rng, T*d)
						ldo := n + 3
						out := make([]float32, T*ldo)
						lo := n / 3
						var scratch []float32
						h16Gemm(out, ldo, x, T, d, w, bf16, lo, n, &scratch)
						for tt := 0; tt < T; tt++ {
							for j := 0; j < ldo; j++ {
								var exact, scale float64
								if j >= lo && j < n {
									exact, scale = plainDot16(w, bf16, j, x[tt*d:(tt+1)*d])
								}
								if math.Abs(float64(out[tt*ldo+j])-exact) > float64(d+1)*6e-8*scale {
									t.Fatalf("%s bf16=%v T %d d %d n %d: out[%d][%d] = %v, want %v", kernels, bf16, T, d, n, tt, j, out[tt*ldo+j], exact)
								}
							}
						}
					}
				}
			}
		}
	})
}

// TestH16GemmBlocks: more weight rows than one widened block (f32RowBlockBytes), so a worker
// widens and sweeps several, the last one partial.
func TestH16GemmBlocks(t *testing.T) {
	rng := rand.New(rand.NewSource(18))
	d := 512
	n := 2*(f32RowBlockBytes/(4*d)) + 5
	withGemmKernels(t, func(t *testing.T, kernels string) {
		for _, bf16 := range []bool{false, true} {
			w, x := random16(rng, n*d, bf16), randomRows(rng, 7*d)
			out := make([]float32, 7*n)
			var scratch []float32
			h16Gemm(out, n, x, 7, d, w, bf16, 0, n, &scratch)
			for tt := 0; tt < 7; tt++ {
				for j := 0; j < n; j++ {
					exact, scale := plainDot16(w, bf16, j, x[tt*d:(tt+1)*d])
					if math.Abs(float64(out[tt*n+j])-exact) > float64(d+1)*6e-8*scale {
						t.Fatalf("%s bf16=%v: out[%d][%d] = %v, want %v", kernels, bf16, tt, j, out[tt*n+j], exact)
					}
				}
			}
		}
	})
}

// to16Model turns a loaded F32 model into a 16-bit one, every matrix converted (F16 ties to
// even, BF16 truncated: any 16-bit values do), and its F32 twin: the same model with each
// matrix replaced by its widened values, so that both compute the same sums.
func to16Model(tr *Transformer, bf16 bool) (twin Weights) {
	w := &tr.weights
	twin = *w
	conv := func(m *Matrix) (Matrix, Matrix) {
		h := make([]uint16, len(m.f32))
		f := make([]float32, len(m.f32))
		for i, v := range m.f32 {
			if bf16 {
				h[i] = uint16(math.Float32bits(v) >> 16)
			} else {
				h[i] = f32ToF16(v)
			}
			f[i] = widenRef(h[i], bf16)
		}
		return Matrix{h16: h, bf16: bf16}, Matrix{f32: f}
	}
	w.tokenEmbedding, twin.tokenEmbedding = conv(&w.tokenEmbedding)
	w.wcls, twin.wcls = w.tokenEmbedding, twin.tokenEmbedding
	for _, ms := range []struct{ m, t *[]Matrix }{
		{&w.wq, &twin.wq}, {&w.wk, &twin.wk}, {&w.wv, &twin.wv}, {&w.wo, &twin.wo},
		{&w.w1, &twin.w1}, {&w.w2, &twin.w2}, {&w.w3, &twin.w3},
	} {
		m16, m32 := make([]Matrix, len(*ms.m)), make([]Matrix, len(*ms.m))
		for l := range *ms.m {
			m16[l], m32[l] = conv(&(*ms.m)[l])
		}
		*ms.m, *ms.t = m16, m32
	}
	return twin
}

func TestH16Stories260K(t *testing.T) {
	for _, bf16 := range []bool{false, true} {
		tr, err := readCheckpoint(modelFile(t, "stories260K.bin"))
		if err != nil {
			t.Fatal(err)
		}
		twin := to16Model(tr, bf16)
		ids := []int{1}
		for i := 1; i < 40; i++ {
			ids = append(ids, (7*i+300)%tr.config.VocabSize)
		}
		w16 := tr.weights
		tr.weights = twin
		want := onePositionLogits(t, tr, ids)
		tr.weights = w16
		withGemmKernels(t, func(t *testing.T, kernels string) {
			name := kernels + map[bool]string{false: " f16", true: " bf16"}[bf16]
			got := onePositionLogits(t, tr, ids)
			for r := range ids {
				var amax, diff float64
				for i, v := range want[r] {
					amax = math.Max(amax, math.Abs(float64(v)))
					diff = math.Max(diff, math.Abs(float64(v-got[r][i])))
				}
				if diff > 1e-4*(1+amax) {
					t.Fatalf("%s: one-position logits at %d differ from the F32 twin's by %g", name, r, diff)
				}
			}
			checkBatchedLogits(t, tr, name, false)
		})
		tr.unmap()
	}
}
