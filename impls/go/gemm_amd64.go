// The amd64 kernels of the batched products (gemm_amd64.s) and the AVX-512 check: the AVX2
// ones run where simdKernels does (simd_amd64.go), the AVX-512 ones where the CPU also has
// AVX-512 F, DQ, BW and VL and the OS saves the ZMM state, unless POLYLLAMA_GO_AVX512=0.

package main

import "os"

var hasAVX512 = detectAVX512() && os.Getenv("POLYLLAMA_GO_AVX512") != "0"

// hasVNNI: AVX-512 VNNI (VPDPBUSD on zmm), for the batched Q8_0 tile.
var hasVNNI = hasAVX512 && detectVNNI() && os.Getenv("POLYLLAMA_GO_VNNI") != "0"

func detectVNNI() bool {
	_, _, ecx7, _ := cpuid(7, 0)
	return ecx7&(1<<11) != 0
}

// detectAVX512 reports AVX-512 F, DQ, BW and VL in the CPU, and the opmask and all 32 ZMM
// registers saved by the OS (XCR0 bits 5-7 besides SSE and AVX).
func detectAVX512() bool {
	if !detectAVX2() {
		return false
	}
	if xcr0, _ := xgetbv(); xcr0&0xe6 != 0xe6 {
		return false
	}
	_, ebx7, _, _ := cpuid(7, 0)
	const f, dq, bw, vl = 1 << 16, 1 << 17, 1 << 30, 1 << 31
	return ebx7&(f|dq|bw|vl) == f|dq|bw|vl
}

// gemm4x6AVX512: out[c*ldo + r] = W[r] . X[c] (d columns) for 4 weight rows wstride floats
// apart and 6 activation rows xstride apart; n16 = d &^ 15 and mask = 1<<(d - n16) - 1.
//
//go:noescape
func gemm4x6AVX512(w *float32, wstride int, x *float32, xstride int, n16 int, mask uint16, out *float32, ldo int)

// gemm4x3AVX2: the same for 4 weight rows and 3 activation rows over the first n8 = d &^ 7
// columns.
//
//go:noescape
func gemm4x3AVX2(w *float32, wstride int, x *float32, xstride int, n8 int, out *float32, ldo int)

// q8gemm4x3VNNI: 4 interleaved weight rows (wstride bytes apart) by 3 interleaved activation
// rows (xstride apart), groups groups of eight blocks each, into out[c*ldo + r].
//
//go:noescape
func q8gemm4x3VNNI(w *byte, wstride int, x *byte, xstride int, groups int, out *float32, ldo int)

// swigluAVX512: h[i] = h[i] / (1 + exp(-h[i])) * u[i] for i < n (n >= 1).
//
//go:noescape
func swigluAVX512(h *float32, u *float32, n int)

// expSumAVX512: x[i] = exp(x[i] - m) for i < n (n >= 1), returning their sum.
//
//go:noescape
func expSumAVX512(x *float32, n int, m float32) float32
