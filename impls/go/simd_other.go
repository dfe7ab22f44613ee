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
