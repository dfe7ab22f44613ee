// Rough kernel throughput, in GFLOP per CPU-second (the CPU time, which neighbours on a shared
// machine disturb less than the wall clock): go test -run '^$' -bench Gemm

package main

import (
	"fmt"
	"math/rand"
	"syscall"
	"testing"
)

func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Sec) + float64(ru.Utime.Usec)/1e6
}

func benchGemm(b *testing.B, q8 bool) {
	for _, shape := range [][2]int{{768, 768}, {2048, 768}, {768, 2048}} {
		benchGemmShape(b, q8, shape[0], shape[1])
	}
}

func benchGemmShape(b *testing.B, q8 bool, n, d int) {
	rng := rand.New(rand.NewSource(4))
	const T = 512
	w, x := randomRows(rng, n*d), randomRows(rng, T*d)
	out := make([]float32, T*n)
	var wq, scratch []byte
	var qa *q8Batch
	if q8 {
		wq = quantizeRef(w)
	}
	withGemmKernels(&testing.T{}, func(_ *testing.T, kernels string) {
		if q8 {
			qa = newQ8Batch(T, d)
			qa.quantize(nil, x, T, d)
		}
		c0 := cpuSeconds()
		for i := 0; i < b.N; i++ {
			if q8 {
				q8Gemm(out, n, qa, T, wq, 0, n, &scratch)
			} else {
				f32Gemm(out, n, x, T, d, w, 0, n)
			}
		}
		c := cpuSeconds() - c0
		fmt.Printf("n %d d %d %s: %.1f GFLOP per CPU-second\n", n, d, kernels, 2*float64(T*d*n)*float64(b.N)/c/1e9)
	})
}

func BenchmarkF32Gemm(b *testing.B) { benchGemm(b, false) }
func BenchmarkQ8Gemm(b *testing.B)  { benchGemm(b, true) }
