// The batched products: out (T, n) = X (T, d) @ W^T for the weight rows lo..hi of W (n, d),
// W row-major as the file stores it, F32 here and Q8_0 in q8gemm.go.

package main

// f32Gemm writes out[t*ldo + j] = X[t, :] . W[j, :] for t < T and lo <= j < hi.
func f32Gemm(out []float32, ldo int, x []float32, T, d int, w []float32, lo, hi int) {
	for t := 0; t < T; t++ {
		matmulRows(out[t*ldo:(t+1)*ldo], x[t*d:(t+1)*d], w, lo, hi)
	}
}

// q8Gemm is f32Gemm for a Q8_0 W against the quantized rows of a.
func q8Gemm(out []float32, ldo int, a *q8Batch, T int, w []byte, lo, hi int) {
	for t := 0; t < T; t++ {
		q8Rows(out[t*ldo:(t+1)*ldo], w, a.row(t), lo, hi)
	}
}
