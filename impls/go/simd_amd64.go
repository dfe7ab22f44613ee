// The amd64 assembler kernels (simd_amd64.s): the f32 matvec with AVX2 and FMA, and the Q8_0
// block dot product with AVX2 (VPMADDUBSW, VPMADDWD) and F16C. Go has no SIMD intrinsics and
// its compiler does not vectorise, so these are what make the inner loops memory-bound. The CPU
// is asked once, at start-up, with CPUID and XGETBV (standard library only); any CPU or OS
// without the features, and POLYLLAMA_GO_ASM=0, use the portable Go loops of kernels.go and q8.go.

package main

import "os"

// simdKernels is true when the kernels below may run; tests switch it to compare both paths.
var simdKernels = detectAVX2() && os.Getenv("POLYLLAMA_GO_ASM") != "0"

const simdName = "AVX2+FMA+F16C"

// cpuid returns the registers of CPUID leaf eaxArg, subleaf ecxArg.
func cpuid(eaxArg, ecxArg uint32) (eax, ebx, ecx, edx uint32)

// xgetbv returns XCR0, the register state the OS saves on a context switch.
func xgetbv() (eax, edx uint32)

// detectAVX2 reports AVX2, FMA and F16C in the CPU and YMM state saved by the OS: without the
// OS's support (OSXSAVE and XCR0's SSE and AVX bits) the upper halves would be lost on a switch.
func detectAVX2() bool {
	maxLeaf, _, _, _ := cpuid(0, 0)
	if maxLeaf < 7 {
		return false
	}
	_, _, ecx1, _ := cpuid(1, 0)
	const fma, osxsave, avx, f16c = 1 << 12, 1 << 27, 1 << 28, 1 << 29
	if ecx1&(fma|osxsave|avx|f16c) != fma|osxsave|avx|f16c {
		return false
	}
	if xcr0, _ := xgetbv(); xcr0&6 != 6 {
		return false
	}
	_, ebx7, _, _ := cpuid(7, 0)
	const avx2 = 1 << 5
	return ebx7&avx2 != 0
}

// dotRows4AVX2 writes to out the dot products of x with the four rows of w that start at w,
// stride floats apart; n is a positive multiple of 8, and the caller adds the rest.
//
//go:noescape
func dotRows4AVX2(w *float32, stride int, x *float32, n int, out *[4]float32)

// q8RowsAVX2 writes out[r] for rows consecutive Q8_0 rows of nb blocks each, starting at w,
// against the quantized activation qx (nb*32 int8) with its scales dx (nb), prefetching `ahead`
// bytes in front of the blocks it reads (0: none; a prefetch never faults, even past the end).
//
//go:noescape
func q8RowsAVX2(out *float32, w *byte, rows int, nb int, qx *int8, dx *float32, ahead int)

// q8PrefetchRows: each Q8_0 row is one sequential stream of 34-byte blocks, read once, and the
// hardware prefetcher alone leaves a large model well below the memory's bandwidth, so the
// kernel asks for the bytes this many rows ahead (measured in the port's README).
// POLYLLAMA_Q8_PREFETCH=0 turns it off, for before/after runs.
var q8PrefetchRows = q8PrefetchFromEnv()

func q8PrefetchFromEnv() int {
	if os.Getenv("POLYLLAMA_Q8_PREFETCH") == "0" {
		return 0
	}
	return 4
}

// matmulRowsSIMD is matmulRowsGo with four rows at a time in dotRows4AVX2; the columns past
// the last multiple of 8 and the rows past the last multiple of 4 are added in Go.
func matmulRowsSIMD(out, x, w []float32, lo, hi int) {
	n := len(x)
	n8 := n &^ 7
	i := lo
	if n8 > 0 {
		for ; i+4 <= hi; i += 4 {
			rows := w[i*n : (i+4)*n] // all four rows are inside w
			o := (*[4]float32)(out[i : i+4])
			dotRows4AVX2(&rows[0], n, &x[0], n8, o)
			for j := n8; j < n; j++ {
				xv := x[j]
				o[0] += rows[j] * xv
				o[1] += rows[n+j] * xv
				o[2] += rows[2*n+j] * xv
				o[3] += rows[3*n+j] * xv
			}
		}
	}
	for ; i < hi; i++ {
		out[i] = dot(w[i*n:][:n], x)
	}
}

// q8RowsSIMD is q8RowsGo in q8RowsAVX2, after the bounds checks that the assembler cannot make.
func q8RowsSIMD(out []float32, w []byte, a *q8Vec, lo, hi int) {
	nb := len(a.d)
	rowBytes := nb * q8BlockBytes
	if lo >= hi {
		return
	}
	rows := w[lo*rowBytes : hi*rowBytes]
	o := out[lo:hi]
	qs := a.qs[:nb*q8Block]
	q8RowsAVX2(&o[0], &rows[0], hi-lo, nb, &qs[0], &a.d[0], q8PrefetchRows*rowBytes)
}
