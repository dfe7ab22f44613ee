// amd64 kernels (simd_amd64.go says when they run). Plan 9 operand order: sources first, the
// destination last, so "VFMADD231PS m, Y8, Y0" is Y0 += Y8 * m.

#include "textflag.h"

// func cpuid(eaxArg, ecxArg uint32) (eax, ebx, ecx, edx uint32)
TEXT ·cpuid(SB), NOSPLIT, $0-24
	MOVL eaxArg+0(FP), AX
	MOVL ecxArg+4(FP), CX
	CPUID
	MOVL AX, eax+8(FP)
	MOVL BX, ebx+12(FP)
	MOVL CX, ecx+16(FP)
	MOVL DX, edx+20(FP)
	RET

// func xgetbv() (eax, edx uint32)
TEXT ·xgetbv(SB), NOSPLIT, $0-8
	MOVL $0, CX
	XGETBV
	MOVL AX, eax+0(FP)
	MOVL DX, edx+4(FP)
	RET

// func dotRows4AVX2(w *float32, stride int, x *float32, n int, out *[4]float32)
//
// Four rows share each load of x. Two steps of 8 columns per pass give eight independent FMA
// chains (Y0-Y7: row r in Yr and Yr+4), enough to cover the FMA latency; one lone step of 8
// follows when n is an odd multiple of 8.
TEXT ·dotRows4AVX2(SB), NOSPLIT, $0-40
	MOVQ w+0(FP), SI
	MOVQ stride+8(FP), DX
	SHLQ $2, DX
	MOVQ x+16(FP), DI
	MOVQ n+24(FP), CX
	MOVQ out+32(FP), R8
	LEAQ (SI)(DX*1), R9
	LEAQ (R9)(DX*1), R10
	LEAQ (R10)(DX*1), R11
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	XORQ AX, AX
	MOVQ CX, BX
	ANDQ $-16, BX
	JZ   rows4_last8

rows4_loop16:
	VMOVUPS (DI)(AX*4), Y8
	VMOVUPS 32(DI)(AX*4), Y9
	VFMADD231PS (SI)(AX*4), Y8, Y0
	VFMADD231PS 32(SI)(AX*4), Y9, Y4
	VFMADD231PS (R9)(AX*4), Y8, Y1
	VFMADD231PS 32(R9)(AX*4), Y9, Y5
	VFMADD231PS (R10)(AX*4), Y8, Y2
	VFMADD231PS 32(R10)(AX*4), Y9, Y6
	VFMADD231PS (R11)(AX*4), Y8, Y3
	VFMADD231PS 32(R11)(AX*4), Y9, Y7
	ADDQ $16, AX
	CMPQ AX, BX
	JB   rows4_loop16

rows4_last8:
	CMPQ AX, CX
	JAE  rows4_sum
	VMOVUPS (DI)(AX*4), Y8
	VFMADD231PS (SI)(AX*4), Y8, Y0
	VFMADD231PS (R9)(AX*4), Y8, Y1
	VFMADD231PS (R10)(AX*4), Y8, Y2
	VFMADD231PS (R11)(AX*4), Y8, Y3

rows4_sum:
	VADDPS Y4, Y0, Y0
	VADDPS Y5, Y1, Y1
	VADDPS Y6, Y2, Y2
	VADDPS Y7, Y3, Y3
	// pairwise sums within each 128-bit half, rows interleaved: after three VHADDPS the low half
	// holds rows 0-3 over columns 0-3 of every 8, the high half over columns 4-7
	VHADDPS Y1, Y0, Y0
	VHADDPS Y3, Y2, Y2
	VHADDPS Y2, Y0, Y0
	VEXTRACTF128 $1, Y0, X1
	VADDPS X1, X0, X0
	VMOVUPS X0, (R8)
	VZEROUPPER
	RET

// Q8BLOCK leaves in dst the eight int32 partial sums of one block's 32 products qw * qx: qw
// (32 int8 at woff(SI)) against qx (at xoff(R12)). VPMADDUBSW multiplies unsigned by signed
// bytes, so the sign of qw moves onto qx (VPSIGNB, which also zeroes qx where qw is 0) and |qw|
// is taken as unsigned: |-128| reads as 128. No pair sum can saturate: 2 * 128 * 127 < 32767.
// VPMADDWD against ones (Y15) then adds the int16 pairs into int32, exactly.
#define Q8BLOCK(woff, xoff, dst) \
	VMOVDQU woff(SI), Y1; \
	VMOVDQU xoff(R12), Y2; \
	VPSIGNB Y1, Y1, Y3; \
	VPSIGNB Y1, Y2, Y2; \
	VPMADDUBSW Y2, Y3, Y3; \
	VPMADDWD Y15, Y3, dst

// func q8RowsAVX2(out *float32, w *byte, rows int, nb int, qx *int8, dx *float32)
//
// The contract's product, row after row (consecutive rows are consecutive blocks, so SI just
// runs on): out[r] = sum over blocks b of float(isum[b]) * (fp32(dw[b]) * dx[b]), isum exact in
// int32. Blocks go eight at a time: a VPHADDD tree adds each block's eight partial sums into one
// lane (exact, in int32), and one FMA scales and accumulates the eight blocks, one per lane of
// Y14. The blocks past the last group of eight each reduce their lanes alone and accumulate in
// X0 (a scalar: a VEX scalar op would clear Y14's upper half). With ahead > 0, each group first
// prefetches the 272 bytes `ahead` bytes past it (the caller passes four rows' worth).
TEXT ·q8RowsAVX2(SB), NOSPLIT, $0-56
	MOVQ out+0(FP), DI
	MOVQ w+8(FP), SI
	MOVQ rows+16(FP), CX
	MOVQ nb+24(FP), BX
	MOVQ qx+32(FP), R8
	MOVQ dx+40(FP), R9
	MOVQ ahead+48(FP), R14
	MOVQ BX, R11
	ANDQ $-8, R11
	VPCMPEQW Y15, Y15, Y15
	VPSRLW $15, Y15, Y15

q8_row:
	VXORPS Y14, Y14, Y14
	VXORPS X0, X0, X0
	MOVQ R8, R12
	MOVQ R9, R13
	XORQ R10, R10
	CMPQ R10, R11
	JAE  q8_tail

q8_group:
	TESTQ R14, R14
	JZ   q8_loaded
	PREFETCHT0 0(SI)(R14*1)
	PREFETCHT0 64(SI)(R14*1)
	PREFETCHT0 128(SI)(R14*1)
	PREFETCHT0 192(SI)(R14*1)
	PREFETCHT0 256(SI)(R14*1)

q8_loaded:
	Q8BLOCK(2, 0, Y5)
	Q8BLOCK(36, 32, Y6)
	Q8BLOCK(70, 64, Y7)
	Q8BLOCK(104, 96, Y8)
	Q8BLOCK(138, 128, Y9)
	Q8BLOCK(172, 160, Y10)
	Q8BLOCK(206, 192, Y11)
	Q8BLOCK(240, 224, Y12)
	// Y5..Y12 hold blocks 0..7; the tree leaves block k's sum in lane k of Y6
	VPHADDD Y6, Y5, Y5
	VPHADDD Y8, Y7, Y7
	VPHADDD Y7, Y5, Y5
	VPHADDD Y10, Y9, Y9
	VPHADDD Y12, Y11, Y11
	VPHADDD Y11, Y9, Y9
	VPERM2I128 $0x20, Y9, Y5, Y6
	VPERM2I128 $0x31, Y9, Y5, Y7
	VPADDD Y7, Y6, Y6
	VCVTDQ2PS Y6, Y6
	// the eight blocks' fp16 scales (34 bytes apart) into one vector, then fp32(dw) * dx
	VPINSRW $0, 0(SI), X13, X13
	VPINSRW $1, 34(SI), X13, X13
	VPINSRW $2, 68(SI), X13, X13
	VPINSRW $3, 102(SI), X13, X13
	VPINSRW $4, 136(SI), X13, X13
	VPINSRW $5, 170(SI), X13, X13
	VPINSRW $6, 204(SI), X13, X13
	VPINSRW $7, 238(SI), X13, X13
	VCVTPH2PS X13, Y13
	VMULPS (R13), Y13, Y13
	VFMADD231PS Y13, Y6, Y14
	ADDQ $272, SI
	ADDQ $256, R12
	ADDQ $32, R13
	ADDQ $8, R10
	CMPQ R10, R11
	JB   q8_group

q8_tail:
	CMPQ R10, BX
	JAE  q8_store
	Q8BLOCK(2, 0, Y5)
	VEXTRACTI128 $1, Y5, X6
	VPADDD X6, X5, X5
	VPSHUFD $0x4E, X5, X6
	VPADDD X6, X5, X5
	VPSHUFD $0xB1, X5, X6
	VPADDD X6, X5, X5
	VCVTDQ2PS X5, X5
	VPINSRW $0, (SI), X13, X13
	VCVTPH2PS X13, X13
	VMULSS (R13), X13, X13
	VFMADD231SS X13, X5, X0
	ADDQ $34, SI
	ADDQ $32, R12
	ADDQ $4, R13
	INCQ R10
	JMP  q8_tail

q8_store:
	VEXTRACTF128 $1, Y14, X1
	VADDPS X1, X14, X1
	VHADDPS X1, X1, X1
	VHADDPS X1, X1, X1
	VADDSS X0, X1, X1
	VMOVSS X1, (DI)
	ADDQ $4, DI
	DECQ CX
	JNZ  q8_row
	VZEROUPPER
	RET
