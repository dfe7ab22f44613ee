# The batched prefill's matrix-matrix kernels: out(T, n) = X(T, d) @ W(n, d)^T with
# W row-major as the file stores it, float32, F16/BF16 (half.mojo) or Q8_0 (q8_0.mojo). A prompt batch
# reads each weight once for all its rows, so unlike batch-1 decoding the product
# can be compute-bound: the kernels keep a register tile of weight rows x
# activation rows and reuse every load many times.
#
# Blocking: a block of activation rows (TOKEN_BLOCK_BYTES of them) stays in the
# caches while the worker's weight rows stream past it, TR rows at a time; each
# TR-row strip is then read from L1 once per tile of TC activation rows.

from std.memory import bitcast
from std.sys import llvm_intrinsic
from std.sys.info import CompilationTarget
from std.utils import StaticTuple
from kernels import NW
from model import BPtr, FPtr, Matrix, QPtr, W_BF16, W_F16, W_F32, W_Q8_0
from half import load_half
from q8_0 import Q8_BLOCK, Q8_BLOCK_BYTES, Q8_GROUP, block_isum, four_blocks, pair_sums, q8_row_bytes, q8_scale

# The f32 register tile: TR weight rows x TC activation rows, one vector accumulator
# each, plus TR weight vectors and one activation vector in flight. With 32 vector
# registers (AVX-512, NEON) 4 x 6 uses 29 of them; AVX2's 16 take 4 x 2 (13).
comptime TR = 4
comptime TC = 6 if NW != 8 else 2
# The Q8_0 tile: each pair of a weight row and an activation row needs its own
# reduction tree, so the tile is kept square and small; its point is that the
# weight blocks are read from memory once and from L1 for the other rows.
comptime QR = 4
comptime QC = 4
# Activation rows kept hot while the weights stream: about this many bytes of them
# (half a typical L2), and at least one tile.
comptime TOKEN_BLOCK_BYTES = 256 * 1024


@always_inline
def token_block(row_bytes: Int, tile: Int) -> Int:
    return max(tile, (TOKEN_BLOCK_BYTES // max(row_bytes, 1)) // tile * tile)


@always_inline
def hsum4(a: SIMD[DType.float32, NW], b: SIMD[DType.float32, NW], c: SIMD[DType.float32, NW],
          d: SIMD[DType.float32, NW]) -> SIMD[DType.float32, 4]:
    """[sum a, sum b, sum c, sum d]: adjacent lanes summed pairwise, two vectors
    interleaved at each level, until four lanes are left."""
    var ab = a.join(b).deinterleave()
    var cd = c.join(d).deinterleave()
    var x = ab[0] + ab[1]
    var y = cd[0] + cd[1]
    var xy = x.join(y).deinterleave()
    var z = xy[0] + xy[1]  # NW lanes: NW / 4 partial sums of a, then of b, c, d
    comptime if NW >= 8:
        var h = z.deinterleave()
        var z8 = h[0] + h[1]
        comptime if NW >= 16:
            var h2 = z8.deinterleave()
            return rebind[SIMD[DType.float32, 4]](h2[0] + h2[1])
        else:
            return rebind[SIMD[DType.float32, 4]](z8)
    else:
        return rebind[SIMD[DType.float32, 4]](z)


@always_inline
def wload[K: Int, W: Int](w: BPtr, i: Int) -> SIMD[DType.float32, W]:
    """Values i .. i + W of a weight row of type K (F32, F16 or BF16) as float32."""
    comptime if K == W_F32:
        return w.unsafe_bitcast[Float32]().unsafe_load[width=W](i)
    else:
        return load_half[K, W](w, i)


@always_inline
def f32_tile[R: Int, C: Int](dst: FPtr, ldo: Int, x: FPtr, ldx: Int, w: FPtr, ldw: Int, d: Int, r: Int, t: Int):
    """The float32 tile (w_tile with float32 weights; the attention's scores too)."""
    w_tile[R, C, W_F32](dst, ldo, x, ldx, w.unsafe_bitcast[UInt8](), ldw, d, r, t)


@always_inline
def w_tile[R: Int, C: Int, K: Int](dst: FPtr, ldo: Int, x: FPtr, ldx: Int, w: BPtr, ldw: Int, d: Int, r: Int,
                                   t: Int):
    """out[t + j, r + i] = w[r + i, :] . x[t + j, :] for i < R, j < C: each weight
    vector loaded once serves C rows, each activation vector R rows; the R * C
    horizontal sums come once, at the end. Rows of x are ldx apart, of w ldw
    values apart (the attention's keys lie kv_dim apart in the cache). w is of
    type K: a 16-bit weight vector is converted to float32 as it is loaded, once
    for the C rows that use it."""
    var acc = StaticTuple[SIMD[DType.float32, NW], R * C](fill=SIMD[DType.float32, NW](0))
    var k = 0
    while k + NW <= d:
        var wv = StaticTuple[SIMD[DType.float32, NW], R](fill=SIMD[DType.float32, NW](0))
        comptime for i in range(R):
            wv[i] = wload[K, NW](w, (r + i) * ldw + k)
        comptime for j in range(C):
            var xv = x.unsafe_load[width=NW]((t + j) * ldx + k)
            comptime for i in range(R):
                acc[i * C + j] = wv[i].fma(xv, acc[i * C + j])
        k += NW
    comptime if R == 4:
        # four rows' sums at once by pairwise sums across the accumulators (fewer
        # shuffles than four separate reductions), stored side by side
        comptime for j in range(C):
            var sums = hsum4(acc[j], acc[C + j], acc[2 * C + j], acc[3 * C + j])
            for kk in range(k, d):
                var xs = x.unsafe_load((t + j) * ldx + kk)
                comptime for i in range(R):
                    sums[i] += wload[K, 1](w, (r + i) * ldw + kk) * xs
            dst.unsafe_store((t + j) * ldo + r, sums)
    else:
        comptime for i in range(R):
            comptime for j in range(C):
                var s = acc[i * C + j].reduce_add()
                for kk in range(k, d):
                    s += wload[K, 1](w, (r + i) * ldw + kk) * x.unsafe_load((t + j) * ldx + kk)
                dst.unsafe_store((t + j) * ldo + r + i, s)


@always_inline
def w_strip[R: Int, K: Int](dst: FPtr, ldo: Int, x: FPtr, w: BPtr, d: Int, r: Int, t0: Int, t1: Int):
    """R weight rows against activation rows [t0, t1)."""
    var t = t0
    while t + TC <= t1:
        w_tile[R, TC, K](dst, ldo, x, d, w, d, d, r, t)
        t += TC
    while t < t1:
        w_tile[R, 1, K](dst, ldo, x, d, w, d, d, r, t)
        t += 1


def gemm_w_rows[K: Int](dst: FPtr, ldo: Int, x: FPtr, nrows: Int, w: BPtr, d: Int, r0: Int, r1: Int):
    """out[t, r] = w[r, :] . x[t, :] for t < nrows, r in [r0, r1); x (nrows, d) and
    w (rows, d) of type K (F32, F16, BF16) row-major, out rows ldo apart."""
    var tb = token_block(d * 4, TC)
    for t0 in range(0, nrows, tb):
        var t1 = min(nrows, t0 + tb)
        var r = r0
        while r + TR <= r1:
            w_strip[TR, K](dst, ldo, x, w, d, r, t0, t1)
            r += TR
        while r < r1:
            w_strip[1, K](dst, ldo, x, w, d, r, t0, t1)
            r += 1


def gemm_f32_rows(dst: FPtr, ldo: Int, x: FPtr, nrows: Int, w: FPtr, d: Int, r0: Int, r1: Int):
    """out[t, r] = w[r, :] . x[t, :] for t < nrows, r in [r0, r1); x (nrows, d) and
    w (rows, d) float32 row-major, out rows ldo apart."""
    gemm_w_rows[W_F32](dst, ldo, x, nrows, w.unsafe_bitcast[UInt8](), d, r0, r1)


@always_inline
def group_scales(blk: BPtr) -> SIMD[DType.float32, Q8_GROUP]:
    """The fp16 scales of Q8_GROUP consecutive blocks, as float32."""
    var bits = SIMD[DType.uint16, Q8_GROUP]()
    comptime for g in range(Q8_GROUP):
        var block = blk.unsafe_offset(g * Q8_BLOCK_BYTES)
        bits[g] = UInt16(block.unsafe_load(0)) | (UInt16(block.unsafe_load(1)) << 8)
    return bitcast[DType.float16, Q8_GROUP](bits).cast[DType.float32]()


# With AVX-512 VNNI, vpdpbusd multiplies unsigned bytes by signed ones in 64-byte
# registers, two blocks at a time. The activation is made unsigned exactly by adding
# 128 (x + 128 in 1..255, an xor of the sign bit), so each lane gets
# sum (x + 128) w = sum x w + 128 sum w; the second term depends on the weights only
# and is taken off by starting the accumulation at -128 sum w, computed once per
# weight block for all the tile's activation rows. No lane can overflow: four
# products of at most 255 * 128 each.
comptime VNNI512 = CompilationTarget.has_avx512f() and CompilationTarget.has_vnni()
comptime I8x64 = SIMD[DType.int8, 64]
comptime I32x16 = SIMD[DType.int32, 16]


@always_inline
def dpbusd512(acc: I32x16, u: I8x64, w: I8x64) -> I32x16:
    return llvm_intrinsic["llvm.x86.avx512.vpdpbusd.512", I32x16](acc, u, w)


@always_inline
def two_blocks(blk: BPtr) -> I8x64:
    """The quants of two consecutive 34-byte blocks in one register."""
    var a = bitcast[DType.int8, Q8_BLOCK](blk.unsafe_load[width=Q8_BLOCK](2))
    var b = bitcast[DType.int8, Q8_BLOCK](blk.unsafe_load[width=Q8_BLOCK](2 + Q8_BLOCK_BYTES))
    return a.join(b)


@always_inline
def pair_sums16(a: I32x16, b: I32x16) -> I32x16:
    """Adjacent lanes of a, then of b, summed."""
    var ab = a.join(b).deinterleave()
    return ab[0] + ab[1]


@always_inline
def q8_tile_vnni_single[R: Int, C: Int](dst: FPtr, ldo: Int, xq: QPtr, xd: FPtr, w: BPtr, d: Int, r: Int, t: Int):
    """q8_tile with 64-byte vpdpbusd: eight blocks are four registers, their
    partial sums (eight lanes a block) reduced to [isum_0 .. isum_7] by three levels
    of pairwise sums; the scaling and the float32 sums as in q8_tile."""
    var stride = q8_row_bytes(d)
    var nb = d // Q8_BLOCK
    var acc = StaticTuple[SIMD[DType.float32, Q8_GROUP], R * C](fill=SIMD[DType.float32, Q8_GROUP](0))
    var bias = I8x64(-128)
    var b = 0
    while b + Q8_GROUP <= nb:
        comptime for i in range(R):
            var blk = w.unsafe_offset((r + i) * stride + b * Q8_BLOCK_BYTES)
            var dw = group_scales(blk)
            var w0 = two_blocks(blk)
            var w1 = two_blocks(blk.unsafe_offset(2 * Q8_BLOCK_BYTES))
            var w2 = two_blocks(blk.unsafe_offset(4 * Q8_BLOCK_BYTES))
            var w3 = two_blocks(blk.unsafe_offset(6 * Q8_BLOCK_BYTES))
            # -128 sum w per lane: the bias bytes (0x80 = 128 unsigned) times w, negated
            var zero = I32x16(0)
            var c0 = zero - dpbusd512(zero, bias, w0)
            var c1 = zero - dpbusd512(zero, bias, w1)
            var c2 = zero - dpbusd512(zero, bias, w2)
            var c3 = zero - dpbusd512(zero, bias, w3)
            comptime for j in range(C):
                var xr = xq.unsafe_offset((t + j) * d + b * Q8_BLOCK)
                var p0 = dpbusd512(c0, xr.unsafe_load[width=64](0) ^ bias, w0)
                var p1 = dpbusd512(c1, xr.unsafe_load[width=64](64) ^ bias, w1)
                var p2 = dpbusd512(c2, xr.unsafe_load[width=64](128) ^ bias, w2)
                var p3 = dpbusd512(c3, xr.unsafe_load[width=64](192) ^ bias, w3)
                var q = pair_sums16(pair_sums16(p0, p1), pair_sums16(p2, p3)).deinterleave()
                var isum = q[0] + q[1]
                var dx = xd.unsafe_load[width=Q8_GROUP]((t + j) * nb + b)
                acc[i * C + j] += isum.cast[DType.float32]() * (dw * dx)
        b += Q8_GROUP
    comptime for i in range(R):
        comptime for j in range(C):
            var s = acc[i * C + j].reduce_add()
            for bb in range(b, nb):
                var block = w.unsafe_offset((r + i) * stride + bb * Q8_BLOCK_BYTES)
                var xr = xq.unsafe_offset((t + j) * d + bb * Q8_BLOCK)
                s += Float32(block_isum(block, xr)) * (q8_scale(block) * xd.unsafe_load((t + j) * nb + bb))
            dst.unsafe_store((t + j) * ldo + r + i, s)


@always_inline
def q8_tile_vnni[R: Int, C: Int](dst: FPtr, ldo: Int, xq: QPtr, xd: FPtr, w: BPtr, d: Int, r: Int, t: Int):
    """q8_tile with 64-byte vpdpbusd: eight blocks are four registers, their
    partial sums (eight lanes a block) reduced by pairwise sums; the last level is
    shared by two activation rows, whose [isum_0 .. isum_7] then fill one 16-lane
    register and are scaled and summed in it, lane for lane as q8_tile sums them."""
    comptime if C % 2 != 0:
        q8_tile_vnni_single[R, C](dst, ldo, xq, xd, w, d, r, t)
        return
    comptime H = C // 2
    var stride = q8_row_bytes(d)
    var nb = d // Q8_BLOCK
    var acc = StaticTuple[SIMD[DType.float32, 2 * Q8_GROUP], R * H](fill=SIMD[DType.float32, 2 * Q8_GROUP](0))
    var bias = I8x64(-128)
    var b = 0
    while b + Q8_GROUP <= nb:
        comptime for i in range(R):
            var blk = w.unsafe_offset((r + i) * stride + b * Q8_BLOCK_BYTES)
            var dw = group_scales(blk)
            var dw2 = dw.join(dw)
            var w0 = two_blocks(blk)
            var w1 = two_blocks(blk.unsafe_offset(2 * Q8_BLOCK_BYTES))
            var w2 = two_blocks(blk.unsafe_offset(4 * Q8_BLOCK_BYTES))
            var w3 = two_blocks(blk.unsafe_offset(6 * Q8_BLOCK_BYTES))
            # -128 sum w per lane: the bias bytes (0x80 = 128 unsigned) times w, negated
            var zero = I32x16(0)
            var c0 = zero - dpbusd512(zero, bias, w0)
            var c1 = zero - dpbusd512(zero, bias, w1)
            var c2 = zero - dpbusd512(zero, bias, w2)
            var c3 = zero - dpbusd512(zero, bias, w3)
            comptime for h in range(H):
                var lv = StaticTuple[I32x16, 2](fill=I32x16(0))
                comptime for e in range(2):
                    var xr = xq.unsafe_offset((t + 2 * h + e) * d + b * Q8_BLOCK)
                    var p0 = dpbusd512(c0, xr.unsafe_load[width=64](0) ^ bias, w0)
                    var p1 = dpbusd512(c1, xr.unsafe_load[width=64](64) ^ bias, w1)
                    var p2 = dpbusd512(c2, xr.unsafe_load[width=64](128) ^ bias, w2)
                    var p3 = dpbusd512(c3, xr.unsafe_load[width=64](192) ^ bias, w3)
                    lv[e] = pair_sums16(pair_sums16(p0, p1), pair_sums16(p2, p3))
                # [isum_0 .. isum_7] of row 2h, then of row 2h + 1
                var isum = pair_sums16(lv[0], lv[1])
                var dx = xd.unsafe_load[width=Q8_GROUP]((t + 2 * h) * nb + b).join(
                    xd.unsafe_load[width=Q8_GROUP]((t + 2 * h + 1) * nb + b))
                acc[i * H + h] += isum.cast[DType.float32]() * (dw2 * dx)
        b += Q8_GROUP
    comptime for i in range(R):
        comptime for h in range(H):
            comptime for e in range(2):
                var j = 2 * h + e
                var s = acc[i * H + h].slice[Q8_GROUP, offset=e * Q8_GROUP]().reduce_add()
                for bb in range(b, nb):
                    var block = w.unsafe_offset((r + i) * stride + bb * Q8_BLOCK_BYTES)
                    var xr = xq.unsafe_offset((t + j) * d + bb * Q8_BLOCK)
                    s += Float32(block_isum(block, xr)) * (q8_scale(block) * xd.unsafe_load((t + j) * nb + bb))
                dst.unsafe_store((t + j) * ldo + r + i, s)


@always_inline
def q8_tile[R: Int, C: Int](dst: FPtr, ldo: Int, xq: QPtr, xd: FPtr, w: BPtr, d: Int, r: Int, t: Int):
    """out[t + j, r + i] for i < R, j < C with Q8_0 weights and quantized activation
    rows (d bytes of quants and d / 32 scales each): per block the exact int32 dot
    product, then float(isum) * (dw * dx) summed in float32, eight blocks side by
    side in one vector as the one-row kernel (q8_dot) sums them."""
    var stride = q8_row_bytes(d)
    var nb = d // Q8_BLOCK
    var nd = nb
    var acc = StaticTuple[SIMD[DType.float32, Q8_GROUP], R * C](fill=SIMD[DType.float32, Q8_GROUP](0))
    var b = 0
    while b + Q8_GROUP <= nb:
        comptime for i in range(R):
            var blk = w.unsafe_offset((r + i) * stride + b * Q8_BLOCK_BYTES)
            var dw = group_scales(blk)
            comptime for j in range(C):
                var xr = xq.unsafe_offset((t + j) * d + b * Q8_BLOCK)
                var isum = pair_sums(four_blocks(blk, xr),
                                     four_blocks(blk.unsafe_offset(4 * Q8_BLOCK_BYTES), xr.unsafe_offset(4 * Q8_BLOCK)))
                var dx = xd.unsafe_load[width=Q8_GROUP]((t + j) * nd + b)
                acc[i * C + j] += isum.cast[DType.float32]() * (dw * dx)
        b += Q8_GROUP
    comptime for i in range(R):
        comptime for j in range(C):
            var s = acc[i * C + j].reduce_add()
            for bb in range(b, nb):
                var block = w.unsafe_offset((r + i) * stride + bb * Q8_BLOCK_BYTES)
                var xr = xq.unsafe_offset((t + j) * d + bb * Q8_BLOCK)
                s += Float32(block_isum(block, xr)) * (q8_scale(block) * xd.unsafe_load((t + j) * nd + bb))
            dst.unsafe_store((t + j) * ldo + r + i, s)


@always_inline
def q8_strip[R: Int](dst: FPtr, ldo: Int, xq: QPtr, xd: FPtr, w: BPtr, d: Int, r: Int, t0: Int, t1: Int):
    var t = t0
    while t + QC <= t1:
        comptime if VNNI512:
            q8_tile_vnni[R, QC](dst, ldo, xq, xd, w, d, r, t)
        else:
            q8_tile[R, QC](dst, ldo, xq, xd, w, d, r, t)
        t += QC
    while t < t1:
        comptime if VNNI512:
            q8_tile_vnni[R, 1](dst, ldo, xq, xd, w, d, r, t)
        else:
            q8_tile[R, 1](dst, ldo, xq, xd, w, d, r, t)
        t += 1


def gemm_q8_rows(dst: FPtr, ldo: Int, xq: QPtr, xd: FPtr, nrows: Int, w: BPtr, d: Int, r0: Int, r1: Int):
    """out[t, r] = W[r, :] . x[t, :] for t < nrows, r in [r0, r1); W (rows, d) in
    Q8_0, the activation rows quantized (quantize_rows)."""
    var tb = token_block(d + d // 8, QC)
    for t0 in range(0, nrows, tb):
        var t1 = min(nrows, t0 + tb)
        var r = r0
        while r + QR <= r1:
            q8_strip[QR](dst, ldo, xq, xd, w, d, r, t0, t1)
            r += QR
        while r < r1:
            q8_strip[1](dst, ldo, xq, xd, w, d, r, t0, t1)
            r += 1


@fieldwise_init
struct Rows(TrivialRegisterPassable):
    """The input of a group of products: nrows activation rows of d values, and when
    a matrix of the group is Q8_0 those rows quantized (once for the group)."""

    var x: FPtr  # (nrows, d)
    var q: QPtr  # (nrows, d) quants, valid when a matrix of the group is Q8_0
    var dq: FPtr  # (nrows, d / 32) their scales
    var nrows: Int
    var d: Int


def gemm_rows(dst: FPtr, ldo: Int, inp: Rows, w: Matrix, r0: Int, r1: Int):
    """Output columns [r0, r1) of inp @ W^T, by W's kernel."""
    if w.kind == W_Q8_0:
        gemm_q8_rows(dst, ldo, inp.q, inp.dq, inp.nrows, w.data, inp.d, r0, r1)
    elif w.kind == W_F16:
        gemm_w_rows[W_F16](dst, ldo, inp.x, inp.nrows, w.data, inp.d, r0, r1)
    elif w.kind == W_BF16:
        gemm_w_rows[W_BF16](dst, ldo, inp.x, inp.nrows, w.data, inp.d, r0, r1)
    else:
        gemm_f32_rows(dst, ldo, inp.x, inp.nrows, w.floats(), inp.d, r0, r1)


# ----------------------------------------------------------------------------
# Attention over a block of rows: the scores of one head for up to TC query rows are
# a small product of the same shape (keys as the weight rows), and the weighted sum
# of values keeps its output in registers while the values stream.


def scores_block(dst: FPtr, ldo: Int, q: FPtr, ldq: Int, k: FPtr, ldk: Int, hs: Int, nrows: Int, nkeys: Int):
    """dst[j, u] = q[j, :hs] . k[u, :hs] for j < nrows (at most TC), u < nkeys."""
    var u = 0
    while u + TR <= nkeys:
        if nrows == TC:
            f32_tile[TR, TC](dst, ldo, q, ldq, k, ldk, hs, u, 0)
        else:
            for j in range(nrows):
                f32_tile[TR, 1](dst, ldo, q, ldq, k, ldk, hs, u, j)
        u += TR
    while u < nkeys:
        if nrows == TC:
            f32_tile[1, TC](dst, ldo, q, ldq, k, ldk, hs, u, 0)
        else:
            for j in range(nrows):
                f32_tile[1, 1](dst, ldo, q, ldq, k, ldk, hs, u, j)
        u += 1


def weighted_sum(dst: FPtr, p: FPtr, v: FPtr, ldv: Int, hs: Int, n: Int):
    """dst[i] = sum over u < n of p[u] * v[u, i], i < hs: 4 vectors of the output
    at a time stay in registers over all n values, summed in u order."""
    var i = 0
    while i + 4 * NW <= hs:
        var a0 = SIMD[DType.float32, NW](0)
        var a1 = SIMD[DType.float32, NW](0)
        var a2 = SIMD[DType.float32, NW](0)
        var a3 = SIMD[DType.float32, NW](0)
        for u in range(n):
            var pu = SIMD[DType.float32, NW](p.unsafe_load(u))
            var row = v.unsafe_offset(u * ldv + i)
            a0 = row.unsafe_load[width=NW](0).fma(pu, a0)
            a1 = row.unsafe_load[width=NW](NW).fma(pu, a1)
            a2 = row.unsafe_load[width=NW](2 * NW).fma(pu, a2)
            a3 = row.unsafe_load[width=NW](3 * NW).fma(pu, a3)
        dst.unsafe_store(i, a0)
        dst.unsafe_store(i + NW, a1)
        dst.unsafe_store(i + 2 * NW, a2)
        dst.unsafe_store(i + 3 * NW, a3)
        i += 4 * NW
    while i + NW <= hs:
        var a = SIMD[DType.float32, NW](0)
        for u in range(n):
            a = v.unsafe_load[width=NW](u * ldv + i).fma(SIMD[DType.float32, NW](p.unsafe_load(u)), a)
        dst.unsafe_store(i, a)
        i += NW
    while i < hs:
        var a = Float32(0)
        for u in range(n):
            a += p.unsafe_load(u) * v.unsafe_load(u * ldv + i)
        dst.unsafe_store(i, a)
        i += 1
