// The batched Q8_0 product: out (T, n) = X (T, d) @ W^T with W's rows in Q8_0 blocks and X's
// rows quantized as section 4 quantizes one activation vector. Per block, isum is the exact
// int32 dot product of the quants and float(isum) * (fp32(dw) * dx) is summed in float32, as in
// the one-position kernel; only the loop order differs.
//
// With AVX-512 VNNI the products run in a 4x3 register tile (q8gemm4x3VNNI, gemm_amd64.s) whose
// int32 lanes are blocks, so no horizontal sum is needed per block: both operands are
// interleaved for it. A group of eight blocks is four steps of 64 bytes; in step s, dword lane k
// holds quants 16*(k%2) + 4s .. +3 of block k/2, so after four VPDPBUSD the lane pair (2m,
// 2m+1) holds block m's sum in two halves, added exactly at the group's end. The activation is
// interleaved once per product group (beside its scales and quant sums), the weights per block
// of rows by the worker that owns them, into a small buffer of its own: the file's weights stay
// as they are. Without VNNI (AVX2, other CPUs, arm64) each activation row runs through the
// one-position kernel against the worker's rows, in the same row blocks.

package main

import (
	"encoding/binary"
	"math"
)

const (
	q8GroupBlocks = 8              // blocks per group of the interleaved layout
	q8GroupW      = 4*64 + 64      // bytes per group of an interleaved weight row: quants, scales
	q8GroupX      = 4*64 + 64 + 64 // of an activation row: quants, scales, 128 * quant sums
	q8RowBlock    = 256 << 10      // bytes of interleaved weight rows swept by the activation tiles
)

func q8Groups(nb int) int { return (nb + q8GroupBlocks - 1) / q8GroupBlocks }

// packQ8X writes one quantized activation row (qs, d: nb blocks) in the interleaved layout;
// dst has q8Groups(nb) * q8GroupX bytes. Blocks past nb are zero.
func packQ8X(dst []byte, qs []int8, d []float32) {
	nb := len(d)
	for g := 0; g < q8Groups(nb); g++ {
		grp := dst[g*q8GroupX : (g+1)*q8GroupX]
		for k := 0; k < 16; k++ {
			b, h := g*q8GroupBlocks+k/2, k%2
			var scale float32
			var corr int32
			if b < nb {
				q := qs[b*q8Block : (b+1)*q8Block]
				for s := 0; s < 4; s++ {
					v := q[16*h+4*s : 16*h+4*s+4]
					o := grp[s*64+k*4 : s*64+k*4+4]
					o[0], o[1], o[2], o[3] = byte(v[0]), byte(v[1]), byte(v[2]), byte(v[3])
				}
				if h == 0 {
					scale = d[b]
					for _, v := range q {
						corr += int32(v)
					}
					corr *= 128
				}
			} else {
				for s := 0; s < 4; s++ {
					binary.LittleEndian.PutUint32(grp[s*64+k*4:], 0)
				}
			}
			binary.LittleEndian.PutUint32(grp[256+4*k:], math.Float32bits(scale))
			binary.LittleEndian.PutUint32(grp[320+4*k:], uint32(corr))
		}
	}
}

// packQ8W writes one Q8_0 weight row (nb blocks of 34 bytes) in the interleaved layout, each
// quant as the unsigned byte w + 128; dst has q8Groups(nb) * q8GroupW bytes.
func packQ8W(dst []byte, row []byte, nb int) {
	for g := 0; g < q8Groups(nb); g++ {
		grp := dst[g*q8GroupW : (g+1)*q8GroupW]
		for k := 0; k < 16; k++ {
			b, h := g*q8GroupBlocks+k/2, k%2
			var scale float32
			if b < nb {
				blk := row[b*q8BlockBytes : (b+1)*q8BlockBytes]
				q := blk[2+16*h : 2+16*h+16]
				for s := 0; s < 4; s++ {
					// four quants at once, each plus 128 (the sign bit flipped)
					binary.LittleEndian.PutUint32(grp[s*64+k*4:], binary.LittleEndian.Uint32(q[4*s:])^0x80808080)
				}
				if h == 0 {
					scale = f16ToF32(uint16(blk[0]) | uint16(blk[1])<<8)
				}
			} else {
				for s := 0; s < 4; s++ {
					binary.LittleEndian.PutUint32(grp[s*64+k*4:], 0)
				}
			}
			binary.LittleEndian.PutUint32(grp[256+4*k:], math.Float32bits(scale))
		}
	}
}

// useVNNI says whether the batched Q8_0 product runs in the VNNI tile.
func useVNNI() bool { return simdKernels && hasAVX512 && hasVNNI }

// q8Gemm writes out[t*ldo + j] for t < T and lo <= j < hi, W's rows Q8_0 (nb = a.n / 32 blocks
// each); scratch is the calling worker's buffer for interleaved weight rows.
func q8Gemm(out []float32, ldo int, a *q8Batch, T int, w []byte, lo, hi int, scratch *[]byte) {
	nb := a.n / q8Block
	rowBytes := nb * q8BlockBytes
	if !useVNNI() || T < 3 {
		rowBlock := maxInt(1, q8RowBlock/rowBytes)
		for j0 := lo; j0 < hi; j0 += rowBlock {
			j1 := minInt(j0+rowBlock, hi)
			for t := 0; t < T; t++ {
				q8Rows(out[t*ldo:(t+1)*ldo], w, a.row(t), j0, j1)
			}
		}
		return
	}
	ws, xs := q8Groups(nb)*q8GroupW, q8Groups(nb)*q8GroupX
	rowBlock := maxInt(4, q8RowBlock/ws&^3)
	if need := rowBlock * ws; len(*scratch) < need {
		*scratch = make([]byte, need)
	}
	buf := *scratch
	for j0 := lo; j0 < hi; j0 += rowBlock {
		j1 := minInt(j0+rowBlock, hi)
		jFull := j0 + (j1-j0)&^3
		for j := j0; j < jFull; j++ {
			packQ8W(buf[(j-j0)*ws:(j-j0+1)*ws], w[j*rowBytes:(j+1)*rowBytes], nb)
		}
		for t := 0; t < T; t += 3 {
			t = minInt(t, T-3) // the last tile ends at T, overlapping the one before (f32Gemm)
			xt := a.packed[t*xs : (t+3)*xs]
			for j := j0; j < jFull; j += 4 {
				o := out[t*ldo+j : (t+2)*ldo+j+4]
				wt := buf[(j-j0)*ws : (j-j0+4)*ws]
				q8gemm4x3VNNI(&wt[0], ws, &xt[0], xs, ws/q8GroupW, &o[0], ldo)
			}
		}
		// the rows past the last group of four
		if jFull < j1 {
			for t := 0; t < T; t++ {
				q8Rows(out[t*ldo:(t+1)*ldo], w, a.row(t), jFull, j1)
			}
		}
	}
}

func maxInt(a, b int) int {
	if a > b {
		return a
	}
	return b
}
