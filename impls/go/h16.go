// GGUF's F16 and BF16 weights (docs/port-contract.md, "GGUF F16 and BF16"): 2 bytes a value,
// widened to float32 (exactly) as they are read and multiplied by the float32 activation as an
// F32 weight would be. The activation is not rounded to 16 bits as llama.cpp does: the contract
// explains why (such a rounding cannot be checked from the logits).

package main

import "math"

const (
	ggmlF16  = 1 // GGUF tensor types
	ggmlBF16 = 30
)

// f16Table widens every half: the portable kernels look weights up rather than decode their
// bits one by one.
var f16Table = func() *[1 << 16]float32 {
	var t [1 << 16]float32
	for h := range t {
		t[h] = f16ToF32(uint16(h))
	}
	return &t
}()

// widen16 is one 16-bit value as float32: a BF16 is the top half of a float32.
func widen16(h uint16, bf16 bool) float32 {
	if bf16 {
		return math.Float32frombits(uint32(h) << 16)
	}
	return f16Table[h]
}

// widen16Rows writes the 16-bit values src as float32 into dst (len(dst) values).
func widen16Rows(dst []float32, src []uint16, bf16 bool) {
	if simdKernels {
		widen16SIMD(dst, src, bf16)
		return
	}
	src = src[:len(dst)]
	for i, h := range src {
		dst[i] = widen16(h, bf16)
	}
}

// h16Rows computes out[r] = w[r] . x for rows lo..hi of a 16-bit matrix (rows of len(x)).
func h16Rows(out, x []float32, w []uint16, bf16 bool, lo, hi int) {
	if simdKernels {
		h16RowsSIMD(out, x, w, bf16, lo, hi)
		return
	}
	h16RowsGo(out, x, w, bf16, lo, hi)
}

// h16RowsGo is the portable loop, four rows per pass as matmulRowsGo, each weight widened as it
// is read (a table lookup for F16, a shift for BF16).
func h16RowsGo(out, x []float32, w []uint16, bf16 bool, lo, hi int) {
	n := len(x)
	i := lo
	for ; i+4 <= hi; i += 4 {
		r0 := w[i*n:][:len(x)]
		r1 := w[(i+1)*n:][:len(x)]
		r2 := w[(i+2)*n:][:len(x)]
		r3 := w[(i+3)*n:][:len(x)]
		var a0, a1, a2, a3 float32
		if bf16 {
			for j, xv := range x {
				a0 += math.Float32frombits(uint32(r0[j])<<16) * xv
				a1 += math.Float32frombits(uint32(r1[j])<<16) * xv
				a2 += math.Float32frombits(uint32(r2[j])<<16) * xv
				a3 += math.Float32frombits(uint32(r3[j])<<16) * xv
			}
		} else {
			t := f16Table
			for j, xv := range x {
				a0 += t[r0[j]] * xv
				a1 += t[r1[j]] * xv
				a2 += t[r2[j]] * xv
				a3 += t[r3[j]] * xv
			}
		}
		o := out[i : i+4 : i+4]
		o[0], o[1], o[2], o[3] = a0, a1, a2, a3
	}
	for ; i < hi; i++ {
		r := w[i*n:][:len(x)]
		var a float32
		for j, xv := range x {
			a += widen16(r[j], bf16) * xv
		}
		out[i] = a
	}
}

// h16Gemm is f32Gemm for a 16-bit W: out[t*ldo + j] = X[t, :] . W[j, :] for t < T and
// lo <= j < hi. The worker widens one block of its weight
// rows at a time into scratch (its own buffer, the size of f32Gemm's row block, so the f32
// tiles then sweep it from L2 as they sweep an F32 file's rows), and every weight is widened
// once per batch.
func h16Gemm(out []float32, ldo int, x []float32, T, d int, w []uint16, bf16 bool, lo, hi int, scratch *[]float32) {
	rowBlock := f32RowBlockBytes / (4 * d) &^ 3
	if rowBlock < 4 {
		rowBlock = 4
	}
	if T < f32TileRows(d) {
		// too few rows for a tile: the one-position kernel reads the 16-bit rows directly
		for t := 0; t < T; t++ {
			h16Rows(out[t*ldo:(t+1)*ldo], x[t*d:(t+1)*d], w, bf16, lo, hi)
		}
		return
	}
	if need := rowBlock * d; len(*scratch) < need {
		*scratch = make([]float32, need)
	}
	buf := *scratch
	for j0 := lo; j0 < hi; j0 += rowBlock {
		j1 := minInt(j0+rowBlock, hi)
		wf := buf[:(j1-j0)*d]
		widen16Rows(wf, w[j0*d:j1*d], bf16)
		f32Gemm(out[j0:], ldo, x, T, d, wf, 0, j1-j0)
	}
}
