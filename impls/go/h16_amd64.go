// The amd64 kernels of F16 and BF16 weights (h16_amd64.s): they run where simdKernels does
// (AVX2, FMA and F16C, simd_amd64.go).

package main

// dotRows4F16AVX2 writes to out the dot products of x with the four F16 rows that start at w,
// stride values apart; n is a positive multiple of 8, and the caller adds the rest.
//
//go:noescape
func dotRows4F16AVX2(w *uint16, stride int, x *float32, n int, out *[4]float32)

// dotRows4BF16AVX2 is the same with BF16 rows.
//
//go:noescape
func dotRows4BF16AVX2(w *uint16, stride int, x *float32, n int, out *[4]float32)

// widenF16AVX2 and widenBF16AVX2: dst[i] = fp32(src[i]) for i < n, n a positive multiple of 8.
//
//go:noescape
func widenF16AVX2(dst *float32, src *uint16, n int)

//go:noescape
func widenBF16AVX2(dst *float32, src *uint16, n int)

// h16RowsSIMD is h16RowsGo with four rows at a time in the assembler kernel; the columns past
// the last multiple of 8 and the rows past the last multiple of 4 are added in Go.
func h16RowsSIMD(out, x []float32, w []uint16, bf16 bool, lo, hi int) {
	n := len(x)
	n8 := n &^ 7
	i := lo
	if n8 > 0 {
		for ; i+4 <= hi; i += 4 {
			rows := w[i*n : (i+4)*n] // all four rows are inside w
			o := (*[4]float32)(out[i : i+4])
			if bf16 {
				dotRows4BF16AVX2(&rows[0], n, &x[0], n8, o)
			} else {
				dotRows4F16AVX2(&rows[0], n, &x[0], n8, o)
			}
			for j := n8; j < n; j++ {
				xv := x[j]
				o[0] += widen16(rows[j], bf16) * xv
				o[1] += widen16(rows[n+j], bf16) * xv
				o[2] += widen16(rows[2*n+j], bf16) * xv
				o[3] += widen16(rows[3*n+j], bf16) * xv
			}
		}
	}
	if i < hi {
		h16RowsGo(out, x, w, bf16, i, hi)
	}
}

// widen16SIMD is widen16Rows's conversion in the assembler kernels, the tail in Go.
func widen16SIMD(dst []float32, src []uint16, bf16 bool) {
	n := len(dst)
	src = src[:n]
	n8 := n &^ 7
	if n8 > 0 {
		if bf16 {
			widenBF16AVX2(&dst[0], &src[0], n8)
		} else {
			widenF16AVX2(&dst[0], &src[0], n8)
		}
	}
	for i := n8; i < n; i++ {
		dst[i] = widen16(src[i], bf16)
	}
}
