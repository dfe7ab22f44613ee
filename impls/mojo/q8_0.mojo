# GGUF's Q8_0 weights (ggml type 8), computed as llama.cpp's CPU backend computes
# them: a row of n values is n/32 blocks of 34 bytes (an fp16 scale d, then 32
# int8 quants), the activation is quantized to the same blocks, each block's dot
# product is an exact int32 sum of int8 products, and only the scale products and
# the sum over blocks are float32 (docs/port-contract.md, "GGUF Q8_0"):
#   out[r] = sum over blocks b of Float32(isum[r, b]) * (fp32(d[r, b]) * dx[b])

from std.memory import Pointer, bitcast
from std.sys import llvm_intrinsic
from std.sys.info import CompilationTarget
from std.sys.intrinsics import PrefetchOptions, prefetch
from model import BPtr, FPtr, QPtr

comptime Q8_BLOCK = 32  # values per block
comptime Q8_BLOCK_BYTES = 34  # fp16 scale + 32 int8
# Blocks whose sums are gathered into one vector: one float32 multiply-add scales
# them all, and their horizontal sums share one shuffle tree.
comptime Q8_GROUP = 8
# Each row is one sequential stream of 34-byte blocks, read once, and the hardware
# prefetcher alone streams it well below what the f32 kernel (four rows at a time)
# gets: asking for every cache line of the row this many ahead is the lever
# measured in the port's README.
comptime Q8_PREFETCH_ROWS = 4


@always_inline
def q8_row_bytes(n: Int) -> Int:
    return (n // Q8_BLOCK) * Q8_BLOCK_BYTES


@always_inline
def fp16_bits_to_f32(bits: UInt16) -> Float32:
    """Exact: every fp16 (subnormals, infinities, NaN) is a float32."""
    return bitcast[DType.float16, 1](bits).cast[DType.float32]()


@always_inline
def f32_to_fp16_f32(x: Float32) -> Float32:
    """x rounded to fp16 (to nearest, ties to even: what F16C, NEON and numpy do) and
    back: the activation scale the dot product uses."""
    return x.cast[DType.float16]().cast[DType.float32]()


@always_inline
def q8_scale(block: BPtr) -> Float32:
    """A block's scale from its first two bytes, little-endian. The blocks are 34
    bytes long, so the scale is at any alignment: it is read byte by byte, never
    through a wider pointer."""
    return fp16_bits_to_f32(UInt16(block.unsafe_load(0)) | (UInt16(block.unsafe_load(1)) << 8))


@always_inline
def q8_quants(block: BPtr) -> SIMD[DType.int8, Q8_BLOCK]:
    return bitcast[DType.int8, Q8_BLOCK](block.unsafe_load[width=Q8_BLOCK](2))


def quantize_activation(qx: QPtr, dx: FPtr, x: FPtr, n: Int):
    """x (n values, n a multiple of 32) as Q8_0 blocks, the way llama.cpp's SIMD
    quantize_row_q8_0 does it: multiplied by 127 / amax (not by 1 / d, as the weights'
    reference quantizer does), rounded to nearest with ties to even (the vector
    instructions' mode; Mojo's `round` is roundeven), and the scale kept is the
    fp16-rounded amax / 127."""
    for b in range(n // Q8_BLOCK):
        var v = x.unsafe_load[width=Q8_BLOCK](b * Q8_BLOCK)
        var amax = abs(v).reduce_max()
        dx.unsafe_store(b, f32_to_fp16_f32(amax / Float32(127)))
        var id = Float32(127) / amax if amax != 0 else Float32(0)
        # |v * id| <= 127 (x / amax <= 1 and 127 is exact), so the cast cannot wrap
        qx.unsafe_store(b * Q8_BLOCK, round(v * id).cast[DType.int8]())


def dequantize_row(dst: FPtr, row: BPtr, n: Int):
    """A Q8_0 row as float32 (the token embedding): d * q is exact, an 11-bit scale
    times a 7-bit integer."""
    for b in range(n // Q8_BLOCK):
        var block = row.unsafe_offset(b * Q8_BLOCK_BYTES)
        var q = q8_quants(block).cast[DType.float32]()
        dst.unsafe_store(b * Q8_BLOCK, q8_scale(block) * q)


@always_inline
def block_partials_portable(w: SIMD[DType.int8, Q8_BLOCK], x: SIMD[DType.int8, Q8_BLOCK]) -> SIMD[DType.int32, 8]:
    """A block's 32 products as eight int32 partial sums, in plain SIMD arithmetic:
    widened to int32 (int16 would hold a product, but LLVM makes no better code of
    it), multiplied, and summed down to eight lanes. Which products land in which
    lane does not matter: the lanes are summed in the end."""
    return (w.cast[DType.int32]() * x.cast[DType.int32]()).reduce_add[8]()


@always_inline
def block_partials(block: BPtr, qx: QPtr) -> SIMD[DType.int32, 8]:
    """A block's 32 products as eight int32 partial sums, by the build target's integer
    dot product (LLVM does not make these instructions of the plain form by itself).
    x86's byte dot products (maddubs, dpbusd) multiply unsigned bytes by signed ones:
    |w| is exact as an unsigned byte even for w = -128, and x, which
    quantize_activation keeps within +-127, takes w's sign without overflowing
    (psign). maddubs cannot saturate: a pair of products is at most 2 * 128 * 127 <
    2^15."""
    var w = q8_quants(block)
    var x = qx.unsafe_load[width=Q8_BLOCK]()
    comptime if CompilationTarget.has_avx2():
        var aw = llvm_intrinsic["llvm.x86.avx2.psign.b", SIMD[DType.int8, Q8_BLOCK]](w, w)
        var sx = llvm_intrinsic["llvm.x86.avx2.psign.b", SIMD[DType.int8, Q8_BLOCK]](x, w)
        comptime if CompilationTarget.has_vnni():
            return llvm_intrinsic["llvm.x86.avx512.vpdpbusd.256", SIMD[DType.int32, 8]](
                SIMD[DType.int32, 8](0), aw, sx
            )
        else:
            var pairs = llvm_intrinsic["llvm.x86.avx2.pmadd.ub.sw", SIMD[DType.int16, 16]](aw, sx)
            return llvm_intrinsic["llvm.x86.avx2.pmadd.wd", SIMD[DType.int32, 8]](pairs, SIMD[DType.int16, 16](1))
    elif CompilationTarget.has_neon_int8_dotprod():
        var lo = llvm_intrinsic["llvm.aarch64.neon.sdot.v4i32.v16i8", SIMD[DType.int32, 4]](
            SIMD[DType.int32, 4](0), w.slice[16](), x.slice[16]()
        )
        var hi = llvm_intrinsic["llvm.aarch64.neon.sdot.v4i32.v16i8", SIMD[DType.int32, 4]](
            SIMD[DType.int32, 4](0), w.slice[16, offset=16](), x.slice[16, offset=16]()
        )
        return lo.join(hi)
    else:
        return block_partials_portable(w, x)


@always_inline
def pair_sums(a: SIMD[DType.int32, 8], b: SIMD[DType.int32, 8]) -> SIMD[DType.int32, 8]:
    """Adjacent lanes of a, then of b, summed: [a0+a1, a2+a3, .., b6+b7] (x86 hadd)."""
    var ab = a.join(b).deinterleave()
    return ab[0] + ab[1]


@always_inline
def four_blocks(blk: BPtr, xq: QPtr) -> SIMD[DType.int32, 8]:
    """Four consecutive blocks' partials summed down to two lanes each, in block order."""
    var p0 = block_partials(blk, xq)
    var p1 = block_partials(blk.unsafe_offset(Q8_BLOCK_BYTES), xq.unsafe_offset(Q8_BLOCK))
    var p2 = block_partials(blk.unsafe_offset(2 * Q8_BLOCK_BYTES), xq.unsafe_offset(2 * Q8_BLOCK))
    var p3 = block_partials(blk.unsafe_offset(3 * Q8_BLOCK_BYTES), xq.unsafe_offset(3 * Q8_BLOCK))
    return pair_sums(pair_sums(p0, p1), pair_sums(p2, p3))


@always_inline
def block_isum(block: BPtr, qx: QPtr) -> Int32:
    """One block's dot product, exact: |sum| <= 32 * 128 * 127 < 2^31."""
    return block_partials(block, qx).reduce_add()


def q8_dot(row: BPtr, qx: QPtr, dx: FPtr, nb: Int) -> Float32:
    """Row (nb blocks) . quantized activation. Eight blocks at a time, their eight
    isums side by side in one vector: three levels of pairwise sums turn the eight
    blocks' partials into [isum_0, .., isum_7] in block order, which are then scaled
    and summed lane-wise. The other blocks one by one."""
    var acc = SIMD[DType.float32, Q8_GROUP](0)
    var b = 0
    while b + Q8_GROUP <= nb:
        var blk = row.unsafe_offset(b * Q8_BLOCK_BYTES)
        var xq = qx.unsafe_offset(b * Q8_BLOCK)
        var bits = SIMD[DType.uint16, Q8_GROUP]()
        comptime for k in range(Q8_GROUP):
            var block = blk.unsafe_offset(k * Q8_BLOCK_BYTES)
            bits[k] = UInt16(block.unsafe_load(0)) | (UInt16(block.unsafe_load(1)) << 8)
        var isum = pair_sums(four_blocks(blk, xq), four_blocks(blk.unsafe_offset(4 * Q8_BLOCK_BYTES),
                                                             xq.unsafe_offset(4 * Q8_BLOCK)))
        var dw = bitcast[DType.float16, Q8_GROUP](bits).cast[DType.float32]()
        # |isum| < 2^24, so its float32 is exact; the scale product is rounded first
        acc += isum.cast[DType.float32]() * (dw * dx.unsafe_load[width=Q8_GROUP](b))
        b += Q8_GROUP
    var s = acc.reduce_add()
    while b < nb:
        var block = row.unsafe_offset(b * Q8_BLOCK_BYTES)
        s += Float32(block_isum(block, qx.unsafe_offset(b * Q8_BLOCK))) * (q8_scale(block) * dx.unsafe_load(b))
        b += 1
    return s


def q8_matvec_rows(xout: FPtr, qx: QPtr, dx: FPtr, w: BPtr, n: Int, r0: Int, r1: Int, ahead: Int = 0):
    """xout[r] = W[r, :] . x for r in [r0, r1); W (rows, n) in Q8_0, x quantized.
    With `ahead` > 0, every cache line of row r + ahead is prefetched first."""
    comptime opts = PrefetchOptions().for_read().high_locality().to_data_cache()
    var stride = q8_row_bytes(n)
    var nb = n // Q8_BLOCK
    for r in range(r0, r1):
        if ahead > 0 and r + ahead < r1:
            var row = w.unsafe_offset((r + ahead) * stride)
            for o in range(0, stride, 64):
                prefetch[opts](row.unsafe_offset(o))
        xout.unsafe_store(r, q8_dot(w.unsafe_offset(r * stride), qx, dx, nb))
