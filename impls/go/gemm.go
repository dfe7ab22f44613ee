// The batched products: out (T, n) = X (T, d) @ W^T for the weight rows lo..hi of W (n, d),
// W row-major as the file stores it (never repacked), F32 here and Q8_0 in q8gemm.go.
//
// Each output element is the dot product of a weight row and an activation row, both
// contiguous, so a tile of R weight rows by C activation rows keeps R*C accumulators along d
// and loads each of its R + C vectors once per step: R*C multiply-adds per R + C loads, where
// the one-position matvec has 1 per 1. The tile is 4x6 in AVX-512 (24 zmm accumulators), 4x3
// in AVX2 (12 ymm), 4x4 in the portable Go loop; each tile's sums are reduced horizontally
// once, at the end of the row.
//
// Cache blocking: a worker's weight rows go in blocks of about half an L2 cache; for each block
// the activation tiles sweep it, so a tile's C rows stay in L1 while the block's weight rows
// stream from L2, and the weights come from memory once per batch.

package main

// f32RowBlockBytes is the size of a block of weight rows that the activation tiles sweep.
const f32RowBlockBytes = 256 << 10

// f32TileRows is the activation rows of the tile in use: 6 (AVX-512), 3 (AVX2) or 4 (Go).
func f32TileRows(d int) int {
	switch {
	case simdKernels && hasAVX512:
		return 6
	case simdKernels && d >= 8:
		return 3
	}
	return 4
}

// f32Gemm writes out[t*ldo + j] = X[t, :] . W[j, :] for t < T and lo <= j < hi.
func f32Gemm(out []float32, ldo int, x []float32, T, d int, w []float32, lo, hi int) {
	tileC := f32TileRows(d)
	rowBlock := f32RowBlockBytes / (4 * d) &^ 3
	if rowBlock < 4 {
		rowBlock = 4
	}
	if T < tileC {
		// too few rows for a tile: the one-position kernel, row by row
		for t := 0; t < T; t++ {
			matmulRows(out[t*ldo:(t+1)*ldo], x[t*d:(t+1)*d], w, lo, hi)
		}
		return
	}
	for j0 := lo; j0 < hi; j0 += rowBlock {
		j1 := minInt(j0+rowBlock, hi)
		jFull := j0 + (j1-j0)&^3
		for t := 0; t < T; t += tileC {
			// the last tile ends at T, overlapping the one before: the rows they share are
			// computed twice, identically, by this worker
			t = minInt(t, T-tileC)
			xt := x[t*d : (t+tileC)*d]
			for j := j0; j < jFull; j += 4 {
				f32Tile(out[t*ldo+j:], ldo, xt, d, tileC, d, w[j*d:(j+4)*d], d)
			}
		}
		// the rows past the last group of four
		for j := jFull; j < j1; j++ {
			for t := 0; t < T; t++ {
				out[t*ldo+j] = dot(w[j*d:(j+1)*d], x[t*d:(t+1)*d])
			}
		}
	}
}

// f32Tile computes a tile of 4 weight rows (w, wstride floats apart) by tileC activation rows
// (x, xstride apart), d columns each, into out[c*ldo + r].
func f32Tile(out []float32, ldo int, x []float32, xstride, tileC, d int, w []float32, wstride int) {
	x = x[:(tileC-1)*xstride+d]
	w = w[:3*wstride+d]
	out = out[:(tileC-1)*ldo+4]
	switch tileC {
	case 6:
		n16 := d &^ 15
		gemm4x6AVX512(&w[0], wstride, &x[0], xstride, n16, uint16(1)<<(d-n16)-1, &out[0], ldo)
	case 3:
		n8 := d &^ 7
		gemm4x3AVX2(&w[0], wstride, &x[0], xstride, n8, &out[0], ldo)
		for c := 0; c < 3; c++ {
			o := out[c*ldo : c*ldo+4]
			for k := n8; k < d; k++ {
				xv := x[c*xstride+k]
				o[0] += w[k] * xv
				o[1] += w[wstride+k] * xv
				o[2] += w[2*wstride+k] * xv
				o[3] += w[3*wstride+k] * xv
			}
		}
	default:
		gemm4x4Go(out, ldo, x, xstride, d, w, wstride)
	}
}

// gemm4x4Go is the portable tile: 16 scalar accumulators, each activation value loaded once for
// four rows and each weight value once for four activation rows. Every row is resliced to d so
// the compiler drops the bounds checks from the loop.
func gemm4x4Go(out []float32, ldo int, x []float32, xstride, d int, w []float32, wstride int) {
	w0, w1, w2, w3 := w[:d], w[wstride:][:d], w[2*wstride:][:d], w[3*wstride:][:d]
	x0, x1, x2, x3 := x[:d], x[xstride:][:d], x[2*xstride:][:d], x[3*xstride:][:d]
	var a00, a01, a02, a03, a10, a11, a12, a13, a20, a21, a22, a23, a30, a31, a32, a33 float32
	for k := range w0 {
		u0, u1, u2, u3 := w0[k], w1[k], w2[k], w3[k]
		v := x0[k]
		a00 += u0 * v
		a01 += u1 * v
		a02 += u2 * v
		a03 += u3 * v
		v = x1[k]
		a10 += u0 * v
		a11 += u1 * v
		a12 += u2 * v
		a13 += u3 * v
		v = x2[k]
		a20 += u0 * v
		a21 += u1 * v
		a22 += u2 * v
		a23 += u3 * v
		v = x3[k]
		a30 += u0 * v
		a31 += u1 * v
		a32 += u2 * v
		a33 += u3 * v
	}
	o := out[:4]
	o[0], o[1], o[2], o[3] = a00, a01, a02, a03
	o = out[ldo : ldo+4]
	o[0], o[1], o[2], o[3] = a10, a11, a12, a13
	o = out[2*ldo : 2*ldo+4]
	o[0], o[1], o[2], o[3] = a20, a21, a22, a23
	o = out[3*ldo : 3*ldo+4]
	o[0], o[1], o[2], o[3] = a30, a31, a32, a33
}
