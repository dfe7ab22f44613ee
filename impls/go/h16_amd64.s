// amd64 kernels for F16 and BF16 weights (h16_amd64.go says when they run). Plan 9 operand
// order: sources first, the destination last.
//
// The weights stay 16-bit in memory and are widened in registers: F16 by VCVTPH2PS (F16C),
// BF16 by zero-extending each half to 32 bits (VPMOVZXWD) and shifting it into the top half
// (VPSLLD $16), which is exact in both cases. A matrix-vector product reads every weight once,
// so halving the bytes read is the point; the widening costs one or two extra operations per
// eight weights, which the load of the next row hides.

#include "textflag.h"

// REDUCE4 adds the two chains of each row (Y0+Y4 .. Y3+Y7) and leaves the four row sums in
// out (R8), as dotRows4AVX2 does.
#define REDUCE4 \
	VADDPS Y4, Y0, Y0; \
	VADDPS Y5, Y1, Y1; \
	VADDPS Y6, Y2, Y2; \
	VADDPS Y7, Y3, Y3; \
	VHADDPS Y1, Y0, Y0; \
	VHADDPS Y3, Y2, Y2; \
	VHADDPS Y2, Y0, Y0; \
	VEXTRACTF128 $1, Y0, X1; \
	VADDPS X1, X0, X0; \
	VMOVUPS X0, (R8)

// ROWS4PROLOGUE loads the arguments (w *uint16, stride int, x *float32, n int, out *[4]float32)
// and clears the eight accumulators: rows at SI, R9, R10, R11, x at DI, n in CX, BX = n &^ 15.
#define ROWS4PROLOGUE \
	MOVQ w+0(FP), SI; \
	MOVQ stride+8(FP), DX; \
	SHLQ $1, DX; \
	MOVQ x+16(FP), DI; \
	MOVQ n+24(FP), CX; \
	MOVQ out+32(FP), R8; \
	LEAQ (SI)(DX*1), R9; \
	LEAQ (R9)(DX*1), R10; \
	LEAQ (R10)(DX*1), R11; \
	VXORPS Y0, Y0, Y0; \
	VXORPS Y1, Y1, Y1; \
	VXORPS Y2, Y2, Y2; \
	VXORPS Y3, Y3, Y3; \
	VXORPS Y4, Y4, Y4; \
	VXORPS Y5, Y5, Y5; \
	VXORPS Y6, Y6, Y6; \
	VXORPS Y7, Y7, Y7; \
	XORQ AX, AX; \
	MOVQ CX, BX; \
	ANDQ $-16, BX

// WIDEN_F16 and WIDEN_BF16 load eight 16-bit weights at off(base)(AX*2) as eight float32 in dst.
#define WIDEN_F16(off, base, dst) \
	VCVTPH2PS off(base)(AX*2), dst

#define WIDEN_BF16(off, base, dst) \
	VPMOVZXWD off(base)(AX*2), dst; \
	VPSLLD $16, dst, dst

// func dotRows4F16AVX2(w *uint16, stride int, x *float32, n int, out *[4]float32)
//
// dotRows4AVX2 with F16 rows: four rows share each load of x, two steps of 8 columns per pass
// give eight independent FMA chains; n is a positive multiple of 8.
TEXT ·dotRows4F16AVX2(SB), NOSPLIT, $0-40
	ROWS4PROLOGUE
	JZ f16_last8

f16_loop16:
	VMOVUPS (DI)(AX*4), Y8
	VMOVUPS 32(DI)(AX*4), Y9
	WIDEN_F16(0, SI, Y10)
	WIDEN_F16(16, SI, Y11)
	VFMADD231PS Y10, Y8, Y0
	VFMADD231PS Y11, Y9, Y4
	WIDEN_F16(0, R9, Y12)
	WIDEN_F16(16, R9, Y13)
	VFMADD231PS Y12, Y8, Y1
	VFMADD231PS Y13, Y9, Y5
	WIDEN_F16(0, R10, Y10)
	WIDEN_F16(16, R10, Y11)
	VFMADD231PS Y10, Y8, Y2
	VFMADD231PS Y11, Y9, Y6
	WIDEN_F16(0, R11, Y12)
	WIDEN_F16(16, R11, Y13)
	VFMADD231PS Y12, Y8, Y3
	VFMADD231PS Y13, Y9, Y7
	ADDQ $16, AX
	CMPQ AX, BX
	JB   f16_loop16

f16_last8:
	CMPQ AX, CX
	JAE  f16_sum
	VMOVUPS (DI)(AX*4), Y8
	WIDEN_F16(0, SI, Y10)
	VFMADD231PS Y10, Y8, Y0
	WIDEN_F16(0, R9, Y11)
	VFMADD231PS Y11, Y8, Y1
	WIDEN_F16(0, R10, Y12)
	VFMADD231PS Y12, Y8, Y2
	WIDEN_F16(0, R11, Y13)
	VFMADD231PS Y13, Y8, Y3

f16_sum:
	REDUCE4
	VZEROUPPER
	RET

// func dotRows4BF16AVX2(w *uint16, stride int, x *float32, n int, out *[4]float32)
//
// The same with BF16 rows.
TEXT ·dotRows4BF16AVX2(SB), NOSPLIT, $0-40
	ROWS4PROLOGUE
	JZ bf16_last8

bf16_loop16:
	VMOVUPS (DI)(AX*4), Y8
	VMOVUPS 32(DI)(AX*4), Y9
	WIDEN_BF16(0, SI, Y10)
	WIDEN_BF16(16, SI, Y11)
	VFMADD231PS Y10, Y8, Y0
	VFMADD231PS Y11, Y9, Y4
	WIDEN_BF16(0, R9, Y12)
	WIDEN_BF16(16, R9, Y13)
	VFMADD231PS Y12, Y8, Y1
	VFMADD231PS Y13, Y9, Y5
	WIDEN_BF16(0, R10, Y10)
	WIDEN_BF16(16, R10, Y11)
	VFMADD231PS Y10, Y8, Y2
	VFMADD231PS Y11, Y9, Y6
	WIDEN_BF16(0, R11, Y12)
	WIDEN_BF16(16, R11, Y13)
	VFMADD231PS Y12, Y8, Y3
	VFMADD231PS Y13, Y9, Y7
	ADDQ $16, AX
	CMPQ AX, BX
	JB   bf16_loop16

bf16_last8:
	CMPQ AX, CX
	JAE  bf16_sum
	VMOVUPS (DI)(AX*4), Y8
	WIDEN_BF16(0, SI, Y10)
	VFMADD231PS Y10, Y8, Y0
	WIDEN_BF16(0, R9, Y11)
	VFMADD231PS Y11, Y8, Y1
	WIDEN_BF16(0, R10, Y12)
	VFMADD231PS Y12, Y8, Y2
	WIDEN_BF16(0, R11, Y13)
	VFMADD231PS Y13, Y8, Y3

bf16_sum:
	REDUCE4
	VZEROUPPER
	RET

// func widenF16AVX2(dst *float32, src *uint16, n int)
//
// dst[i] = fp32(src[i]) for i < n, n a positive multiple of 8: a block of weight rows widened
// once for the batched product's f32 tiles.
TEXT ·widenF16AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	XORQ AX, AX

widen_f16_loop:
	WIDEN_F16(0, SI, Y0)
	VMOVUPS Y0, (DI)(AX*4)
	ADDQ $8, AX
	CMPQ AX, CX
	JB   widen_f16_loop
	VZEROUPPER
	RET

// func widenBF16AVX2(dst *float32, src *uint16, n int)
TEXT ·widenBF16AVX2(SB), NOSPLIT, $0-24
	MOVQ dst+0(FP), DI
	MOVQ src+8(FP), SI
	MOVQ n+16(FP), CX
	XORQ AX, AX

widen_bf16_loop:
	WIDEN_BF16(0, SI, Y0)
	VMOVUPS Y0, (DI)(AX*4)
	ADDQ $8, AX
	CMPQ AX, CX
	JB   widen_bf16_loop
	VZEROUPPER
	RET
