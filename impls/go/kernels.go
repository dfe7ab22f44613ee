// The kernels of the forward pass: rmsnorm, softmax, the f32 dot product and matvec (the
// portable Go loop; the amd64 assembler one is in simd_amd64.go), and the matmuls split over
// the pool, F32 or Q8_0 (q8.go) per matrix.

package main

import "math"

// rmsnorm: o = weight * x / sqrt(mean(x^2) + eps), eps the model's (1e-5 unless a GGUF says).
func rmsnorm(o, x, weight []float32, eps float32) {
	var ss float32
	for _, v := range x {
		ss += v * v
	}
	ss /= float32(len(x))
	ss += eps
	ss = 1 / float32(math.Sqrt(float64(ss)))
	weight = weight[:len(x)]
	o = o[:len(x)]
	for j, v := range x {
		o[j] = weight[j] * (ss * v)
	}
}

func softmax(x []float32) {
	maxVal := x[0]
	for _, v := range x[1:] {
		if v > maxVal {
			maxVal = v
		}
	}
	var sum float32
	for i, v := range x {
		e := float32(math.Exp(float64(v - maxVal)))
		x[i] = e
		sum += e
	}
	for i := range x {
		x[i] /= sum
	}
}

// dot is the inner product of two equally long vectors, over 8 independent accumulators so
// that the adds overlap (Go has no SIMD intrinsics; this is what keeps the FPU busy).
func dot(a, b []float32) float32 {
	n := len(a)
	b = b[:n]
	var s0, s1, s2, s3, s4, s5, s6, s7 float32
	i := 0
	for ; i <= n-8; i += 8 {
		aa, bb := a[i:i+8:i+8], b[i:i+8:i+8]
		s0 += aa[0] * bb[0]
		s1 += aa[1] * bb[1]
		s2 += aa[2] * bb[2]
		s3 += aa[3] * bb[3]
		s4 += aa[4] * bb[4]
		s5 += aa[5] * bb[5]
		s6 += aa[6] * bb[6]
		s7 += aa[7] * bb[7]
	}
	for ; i < n; i++ {
		s0 += a[i] * b[i]
	}
	return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
}

// matmulRows computes out[i] = W[i, :] . x for rows lo..hi of W (rows, n): in the amd64
// assembler kernel where the CPU has AVX2 and FMA (simd_amd64.go), else in portable Go.
func matmulRows(out, x, w []float32, lo, hi int) {
	if simdKernels {
		matmulRowsSIMD(out, x, w, lo, hi)
		return
	}
	matmulRowsGo(out, x, w, lo, hi)
}

// matmulRowsGo is the portable loop, four rows per pass: each x element loaded serves four
// rows, and the four sums are independent chains that keep the adder busy. Reslicing every row
// to len(x) lets the compiler drop the bounds checks from the inner loop.
func matmulRowsGo(out, x, w []float32, lo, hi int) {
	n := len(x)
	i := lo
	for ; i+4 <= hi; i += 4 {
		r0 := w[i*n:][:len(x)]
		r1 := w[(i+1)*n:][:len(x)]
		r2 := w[(i+2)*n:][:len(x)]
		r3 := w[(i+3)*n:][:len(x)]
		var a0, a1, a2, a3 float32
		for j, xv := range x {
			a0 += r0[j] * xv
			a1 += r1[j] * xv
			a2 += r2[j] * xv
			a3 += r3[j] * xv
		}
		o := out[i : i+4 : i+4]
		o[0], o[1], o[2], o[3] = a0, a1, a2, a3
	}
	for ; i < hi; i++ {
		out[i] = dot(w[i*n:][:len(x)], x)
	}
}

// activation is the input of a group of products in every form its matrices need: as computed
// (F32, and F16 and BF16, whose weights are widened and meet the float32 activation), and
// quantized once for all the Q8_0 ones.
type activation struct {
	x  []float32
	q8 *q8Vec
}

// rows computes rows lo..hi of out = m @ x, x in the form m needs.
func (m *Matrix) rows(out []float32, a *activation, lo, hi int) {
	switch {
	case m.isQ8():
		q8Rows(out, m.q8, a.q8, lo, hi)
	case m.is16():
		h16Rows(out, a.x, m.h16, m.bf16, lo, hi)
	default:
		matmulRows(out, a.x, m.f32, lo, hi)
	}
}

// prepare makes x ready for the matrices ws before the workers start: quantized once for all
// the Q8_0 ones, so every product of the group reads the same blocks.
func (t *Transformer) prepare(x []float32, ws ...*Matrix) *activation {
	s := &t.state
	a := &s.act
	*a = activation{x: x}
	for _, w := range ws {
		if w.isQ8() {
			s.qx.quantize(&s.qbuf, x)
			a.q8 = &s.qx
			break
		}
	}
	return a
}

// matmul is out = W @ x with W (len(out), len(x)), split across the pool.
func (t *Transformer) matmul(out, x []float32, w *Matrix) {
	a := t.prepare(x, w)
	t.pool.run(len(out), 4, func(_, lo, hi int) { w.rows(out, a, lo, hi) })
}

// matmulShared computes several matmuls that share their input in one pass over the pool (q, k,
// v; then w1, w3), so the workers synchronise once instead of per matrix.
func (t *Transformer) matmulShared(x []float32, outs [][]float32, ws []*Matrix) {
	a := t.prepare(x, ws...)
	total := 0
	for _, o := range outs {
		total += len(o)
	}
	t.pool.run(total, 4, func(_, lo, hi int) {
		base := 0
		for m, o := range outs {
			a0, b := lo-base, hi-base
			if a0 < 0 {
				a0 = 0
			}
			if b > len(o) {
				b = len(o)
			}
			if a0 < b {
				ws[m].rows(o, a, a0, b)
			}
			base += len(o)
		}
	})
}
