// GGUF's Q8_0 weights (docs/port-contract.md, "GGUF Q8_0"): blocks of 32 int8 quants that share
// one fp16 scale, multiplied by an activation quantized the same way, as llama.cpp's CPU
// backend does: each block's dot product is an exact int32, only the scaling and the sum over
// blocks are float32.

package main

import "math"

const (
	q8Block      = 32 // values per block
	q8BlockBytes = 34 // fp16 scale, then 32 int8
	ggmlF32      = 0  // GGUF tensor types
	ggmlQ8_0     = 8
)

// Matrix is a (rows, cols) weight matrix inside the loaded file, stored either way: rows are
// len(out) of the product that uses it.
type Matrix struct {
	f32  []float32 // rows * cols floats, for an F32 tensor
	q8   []byte    // rows * cols/32 blocks of q8BlockBytes, for a Q8_0 tensor
	h16  []uint16  // rows * cols halves, for an F16 or BF16 tensor (h16.go)
	bf16 bool      // h16 holds BF16 values, not F16
}

func (m *Matrix) isQ8() bool   { return m.q8 != nil }
func (m *Matrix) is16() bool   { return m.h16 != nil }
func (m *Matrix) isF16() bool  { return m.h16 != nil && !m.bf16 }
func (m *Matrix) isBF16() bool { return m.h16 != nil && m.bf16 }

// row writes row r of a matrix of n columns into dst (n): a copy, or the Q8_0 row dequantized,
// fp32(d) * q, which is exact.
func (m *Matrix) row(dst []float32, r int) {
	n := len(dst)
	if m.is16() {
		widen16Rows(dst, m.h16[r*n:(r+1)*n], m.bf16)
		return
	}
	if !m.isQ8() {
		copy(dst, m.f32[r*n:(r+1)*n])
		return
	}
	rowBytes := n / q8Block * q8BlockBytes
	blocks := m.q8[r*rowBytes : (r+1)*rowBytes]
	for b := 0; b < n/q8Block; b++ {
		blk := blocks[b*q8BlockBytes : (b+1)*q8BlockBytes]
		d := f16ToF32(uint16(blk[0]) | uint16(blk[1])<<8)
		out := dst[b*q8Block : (b+1)*q8Block]
		for i, q := range blk[2:] {
			out[i] = d * float32(int8(q))
		}
	}
}

// q8Vec is an activation quantized for Q8_0 products: the quants of each block of 32 and the
// block's scale, already rounded through fp16 as the product uses it.
type q8Vec struct {
	qs []int8
	d  []float32
}

// quantize fills a (sized len(x)/32 blocks from its buffers) with x the way llama.cpp's SIMD
// quantize_row_q8_0 does: dx = fp32(fp16(amax / 127)), q = x * (127 / amax) rounded to the
// nearest integer, ties to even. len(x) is a multiple of 32.
func (a *q8Vec) quantize(buf *q8Vec, x []float32) {
	nb := len(x) / q8Block
	a.qs, a.d = buf.qs[:nb*q8Block], buf.d[:nb]
	quantizeBlocks(a.qs, a.d, x)
}

// quantizeBlocks quantizes x (len(d) blocks) into qs and d.
func quantizeBlocks(qs []int8, d []float32, x []float32) {
	for b := range d {
		blk := x[b*q8Block : (b+1)*q8Block]
		var amax float32
		for _, v := range blk {
			if av := float32(math.Abs(float64(v))); av > amax {
				amax = av
			}
		}
		d[b] = f16ToF32(f32ToF16(amax / 127))
		var id float32
		if amax != 0 {
			id = 127 / amax
		}
		q := qs[b*q8Block : (b+1)*q8Block]
		for i, v := range blk {
			// float32(): the product is rounded to float32 before it is rounded to an integer
			q[i] = int8(math.RoundToEven(float64(float32(v * id))))
		}
	}
}

// q8Rows computes out[r] for rows lo..hi of a Q8_0 matrix against the quantized activation.
func q8Rows(out []float32, w []byte, a *q8Vec, lo, hi int) {
	if simdKernels {
		q8RowsSIMD(out, w, a, lo, hi)
		return
	}
	q8RowsGo(out, w, a, lo, hi)
}

// q8RowsGo is the portable kernel: per block, four independent int32 chains over the 32
// products (exact: |sum| <= 32 * 128 * 127), then float(isum) * (fp32(dw) * dx).
func q8RowsGo(out []float32, w []byte, a *q8Vec, lo, hi int) {
	nb := len(a.d)
	rowBytes := nb * q8BlockBytes
	for r := lo; r < hi; r++ {
		row := w[r*rowBytes : (r+1)*rowBytes]
		var sum float32
		for b, dx := range a.d {
			blk := row[b*q8BlockBytes : (b+1)*q8BlockBytes : (b+1)*q8BlockBytes]
			qw := blk[2:q8BlockBytes]
			qx := a.qs[b*q8Block : (b+1)*q8Block : (b+1)*q8Block]
			var s0, s1, s2, s3 int32
			for i := 0; i < q8Block; i += 4 {
				s0 += int32(int8(qw[i])) * int32(qx[i])
				s1 += int32(int8(qw[i+1])) * int32(qx[i+1])
				s2 += int32(int8(qw[i+2])) * int32(qx[i+2])
				s3 += int32(int8(qw[i+3])) * int32(qx[i+3])
			}
			dw := f16ToF32(uint16(blk[0]) | uint16(blk[1])<<8)
			sum += float32(s0+s1+s2+s3) * (dw * dx)
		}
		out[r] = sum
	}
}

// f16ToF32 widens an IEEE half (exact: every half is a float32).
func f16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	man := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f: // infinity, NaN
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	case exp != 0:
		return math.Float32frombits(sign | (exp+127-15)<<23 | man<<13)
	}
	v := float32(man) * (1.0 / (1 << 24)) // zero or subnormal: man * 2^-24
	if sign != 0 {
		v = -v
	}
	return v
}

// f32ToF16 rounds a float32 to the nearest IEEE half, ties to even (as numpy's astype and
// F16C's VCVTPS2PH do); too large is infinity, too small a subnormal or zero.
func f32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int32(b>>23) & 0xff
	man := b & 0x7fffff
	if exp == 0xff {
		if man != 0 {
			return sign | 0x7e00 // a quiet NaN
		}
		return sign | 0x7c00
	}
	e := exp - 127 + 15 // the half's biased exponent
	if e >= 0x1f {
		return sign | 0x7c00
	}
	var r, rem, half uint32
	if e > 0 {
		r, rem, half = uint32(e)<<10|man>>13, man&0x1fff, 0x1000
	} else {
		if e < -10 { // below half the smallest subnormal, 2^-25
			return sign
		}
		// a subnormal half counts units of 2^-24: the significand with its leading 1, shifted
		m := man | 0x800000
		shift := uint32(14 - e)
		r, rem, half = m>>shift, m&(1<<shift-1), 1<<(shift-1)
	}
	if rem > half || (rem == half && r&1 == 1) {
		r++ // a carry out of the significand steps the exponent, up to infinity: still right
	}
	return sign | uint16(r)
}
