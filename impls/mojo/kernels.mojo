# The float32 kernels of the forward pass and the sampler: dot product, the
# 4-row matmul over a range of rows, the row-range matvec that picks a matrix's
# kernel (float32 here, Q8_0 in q8_0.mojo, F16 and BF16 in half.mojo), the row split across workers, rmsnorm
# and softmax. Batch-1 decoding reads every weight once per token, so it is
# memory-bound: the matmul streams rows with wide SIMD loads, four rows at a time
# so each load of x serves four rows.

from std.math import exp, sqrt
from std.sys import simd_width_of
from model import FPtr, Matrix, QPtr, W_BF16, W_F16, W_Q8_0
from q8_0 import q8_matvec_rows
from half import half_matvec_rows

# SIMD lanes of one float32 register on the build machine (16 on AVX-512, 8 on
# AVX2, 4 on NEON): the generic vector code below adapts to it.
comptime NW = simd_width_of[DType.float32]()


@always_inline
def dot(a: FPtr, b: FPtr, n: Int) -> Float32:
    var acc0 = SIMD[DType.float32, NW](0)
    var acc1 = SIMD[DType.float32, NW](0)
    var i = 0
    while i + 2 * NW <= n:
        acc0 += a.unsafe_load[width=NW](i) * b.unsafe_load[width=NW](i)
        acc1 += a.unsafe_load[width=NW](i + NW) * b.unsafe_load[width=NW](i + NW)
        i += 2 * NW
    if i + NW <= n:
        acc0 += a.unsafe_load[width=NW](i) * b.unsafe_load[width=NW](i)
        i += NW
    var s = (acc0 + acc1).reduce_add()
    while i < n:
        s += a.unsafe_load(i) * b.unsafe_load(i)
        i += 1
    return s


@always_inline
def matmul_4rows(xout: FPtr, x: FPtr, w: FPtr, n: Int, r: Int):
    """xout[r..r+4) = w[r..r+4) @ x: one pass over x for four weight rows."""
    var a0 = w.unsafe_offset(r * n)
    var a1 = a0.unsafe_offset(n)
    var a2 = a1.unsafe_offset(n)
    var a3 = a2.unsafe_offset(n)
    var c0 = SIMD[DType.float32, NW](0)
    var c1 = SIMD[DType.float32, NW](0)
    var c2 = SIMD[DType.float32, NW](0)
    var c3 = SIMD[DType.float32, NW](0)
    var i = 0
    while i + NW <= n:
        var xv = x.unsafe_load[width=NW](i)
        c0 += a0.unsafe_load[width=NW](i) * xv
        c1 += a1.unsafe_load[width=NW](i) * xv
        c2 += a2.unsafe_load[width=NW](i) * xv
        c3 += a3.unsafe_load[width=NW](i) * xv
        i += NW
    var s0 = c0.reduce_add()
    var s1 = c1.reduce_add()
    var s2 = c2.reduce_add()
    var s3 = c3.reduce_add()
    while i < n:
        var xs = x.unsafe_load(i)
        s0 += a0.unsafe_load(i) * xs
        s1 += a1.unsafe_load(i) * xs
        s2 += a2.unsafe_load(i) * xs
        s3 += a3.unsafe_load(i) * xs
        i += 1
    xout.unsafe_store(r, s0)
    xout.unsafe_store(r + 1, s1)
    xout.unsafe_store(r + 2, s2)
    xout.unsafe_store(r + 3, s3)


def matmul_rows(xout: FPtr, x: FPtr, w: FPtr, n: Int, r0: Int, r1: Int):
    """xout[r] = w[r, :] . x for r in [r0, r1); w is (d, n)."""
    var r = r0
    while r + 4 <= r1:
        matmul_4rows(xout, x, w, n, r)
        r += 4
    while r < r1:
        xout.unsafe_store(r, dot(w.unsafe_offset(r * n), x, n))
        r += 1


@fieldwise_init
struct Input(TrivialRegisterPassable):
    """The input of a group of matmuls: x, and when one of them is Q8_0, x quantized
    (once for the group: q, k and v share it, and so do w1 and w3)."""

    var x: FPtr  # (n)
    var q: QPtr  # (n) int8 quants, valid when a matrix of the group is Q8_0
    var d: FPtr  # (n / 32) their scales
    var prefetch: Int  # Q8_0 rows ahead to prefetch


def matvec_rows(xout: FPtr, inp: Input, w: Matrix, n: Int, r0: Int, r1: Int):
    """xout[r] = W[r, :] . x for r in [r0, r1), by W's kernel."""
    if w.kind == W_Q8_0:
        q8_matvec_rows(xout, inp.q, inp.d, w.data, n, r0, r1, inp.prefetch)
    elif w.kind == W_F16:
        half_matvec_rows[W_F16](xout, inp.x, w.data, n, r0, r1)
    elif w.kind == W_BF16:
        half_matvec_rows[W_BF16](xout, inp.x, w.data, n, r0, r1)
    else:
        matmul_rows(xout, inp.x, w.floats(), n, r0, r1)


@always_inline
def split(total: Int, part: Int, parts: Int) -> Int:
    """Start of `part` of `parts` near-equal shares of [0, total), on 4-row bounds."""
    return ((total // 4) * part // parts) * 4 if part < parts else total


def rmsnorm(o: FPtr, x: FPtr, weight: FPtr, n: Int, eps: Float32):
    var ss = dot(x, x, n) / Float32(n) + eps
    var scale = Float32(1.0) / sqrt(ss)
    for i in range(n):
        o.unsafe_store(i, weight.unsafe_load(i) * (scale * x.unsafe_load(i)))


def softmax(x: FPtr, n: Int):
    var max_val = x.unsafe_load(0)
    for i in range(1, n):
        max_val = max(max_val, x.unsafe_load(i))
    var total = Float32(0)
    for i in range(n):
        var e = exp(x.unsafe_load(i) - max_val)
        x.unsafe_store(i, e)
        total += e
    for i in range(n):
        x.unsafe_store(i, x.unsafe_load(i) / total)
