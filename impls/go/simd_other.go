//go:build !amd64

package main

// Elsewhere (arm64 included) the portable Go loops of main.go run; the compiler drops every
// call below, as simdKernels is a constant false.
const simdKernels = false

const simdName = ""

func matmulRowsSIMD(out, x, w []float32, lo, hi int) { panic("no SIMD kernels on this architecture") }

func q8RowsSIMD(out []float32, w []byte, a *q8Vec, lo, hi int) {
	panic("no SIMD kernels on this architecture")
}
