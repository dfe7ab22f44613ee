//go:build !amd64

// No assembler kernels off amd64 (arm64 included): the portable Go loops of kernels.go and
// q8.go run, and as simdKernels is a constant false the compiler drops every call below.

package main

const simdKernels = false

const simdName = ""

func matmulRowsSIMD(out, x, w []float32, lo, hi int) { panic("no SIMD kernels on this architecture") }

func q8RowsSIMD(out []float32, w []byte, a *q8Vec, lo, hi int) {
	panic("no SIMD kernels on this architecture")
}

const hasAVX512 = false

func gemm4x6AVX512(w *float32, wstride int, x *float32, xstride int, n16 int, mask uint16, out *float32, ldo int) {
	panic("no SIMD kernels on this architecture")
}

func gemm4x3AVX2(w *float32, wstride int, x *float32, xstride int, n8 int, out *float32, ldo int) {
	panic("no SIMD kernels on this architecture")
}

const hasVNNI = false

func q8gemm4x3VNNI(w *byte, wstride int, x *byte, xstride int, groups int, out *float32, ldo int) {
	panic("no SIMD kernels on this architecture")
}

func swigluAVX512(h *float32, u *float32, n int) { panic("no SIMD kernels on this architecture") }

func expSumAVX512(x *float32, n int, m float32) float32 {
	panic("no SIMD kernels on this architecture")
}

func h16RowsSIMD(out, x []float32, w []uint16, bf16 bool, lo, hi int) {
	panic("no SIMD kernels on this architecture")
}

func widen16SIMD(dst []float32, src []uint16, bf16 bool) {
	panic("no SIMD kernels on this architecture")
}
