# GGUF's 16-bit weights, ggml types F16 (IEEE binary16) and BF16 (the top half of
# a float32), as docs/port-contract.md ("GGUF F16 and BF16") computes them: every
# weight converted to float32 exactly, the activation left in float32, and the
# product and its sum float32 as for an F32 matrix:
#   out[r] = sum over i of float32(w[r, i]) * x[i]
# The kernels convert the weights in registers as they stream past; nothing is
# unpacked into memory.

from std.memory import Pointer, bitcast
from std.sys import simd_width_of
from model import BPtr, FPtr, W_BF16, W_F16

comptime HPtr = Pointer[UInt16, MutUntrackedOrigin]
# float32 lanes of one register, as kernels.mojo's NW (not imported: kernels.mojo
# imports this module)
comptime HW = simd_width_of[DType.float32]()


@always_inline
def widen[K: Int, W: Int](bits: SIMD[DType.uint16, W]) -> SIMD[DType.float32, W]:
    """W stored 16-bit values of type K as float32, exactly: F16 through the
    target's conversion (F16C vcvtph2ps, NEON fcvtl; subnormals, infinities and
    NaN included), BF16 by putting the bits on top of a float32."""
    comptime if K == W_F16:
        return bitcast[DType.float16, W](bits).cast[DType.float32]()
    else:
        return bitcast[DType.float32, W](bits.cast[DType.uint32]() << 16)


@always_inline
def load_half[K: Int, W: Int](w: BPtr, i: Int) -> SIMD[DType.float32, W]:
    """Values i .. i + W of a 16-bit row (2-byte aligned: the reader checks it)."""
    return widen[K, W](w.unsafe_bitcast[UInt16]().unsafe_load[width=W](i))


def widen_row[K: Int](dst: FPtr, row: BPtr, n: Int):
    """A 16-bit row as float32 (the token embedding)."""
    var i = 0
    while i + HW <= n:
        dst.unsafe_store(i, load_half[K, HW](row, i))
        i += HW
    while i < n:
        dst.unsafe_store(i, load_half[K, 1](row, i))
        i += 1


@always_inline
def half_4rows[K: Int](xout: FPtr, x: FPtr, w: BPtr, n: Int, r: Int):
    """xout[r..r+4) = w[r..r+4) @ x with 16-bit rows: four rows per pass over x, as the float32 kernel, each row read 2 * HW values
    (a 64-byte line with AVX-512) per step, so that every row has as many bytes in
    flight as a float32 row has."""
    var row = w.unsafe_offset(2 * r * n)
    var a0 = row
    var a1 = row.unsafe_offset(2 * n)
    var a2 = row.unsafe_offset(4 * n)
    var a3 = row.unsafe_offset(6 * n)
    var c0 = SIMD[DType.float32, HW](0)
    var c1 = SIMD[DType.float32, HW](0)
    var c2 = SIMD[DType.float32, HW](0)
    var c3 = SIMD[DType.float32, HW](0)
    var e0 = SIMD[DType.float32, HW](0)
    var e1 = SIMD[DType.float32, HW](0)
    var e2 = SIMD[DType.float32, HW](0)
    var e3 = SIMD[DType.float32, HW](0)
    var i = 0
    while i + 2 * HW <= n:
        var xv = x.unsafe_load[width=HW](i)
        var xw = x.unsafe_load[width=HW](i + HW)
        c0 = load_half[K, HW](a0, i).fma(xv, c0)
        c1 = load_half[K, HW](a1, i).fma(xv, c1)
        c2 = load_half[K, HW](a2, i).fma(xv, c2)
        c3 = load_half[K, HW](a3, i).fma(xv, c3)
        e0 = load_half[K, HW](a0, i + HW).fma(xw, e0)
        e1 = load_half[K, HW](a1, i + HW).fma(xw, e1)
        e2 = load_half[K, HW](a2, i + HW).fma(xw, e2)
        e3 = load_half[K, HW](a3, i + HW).fma(xw, e3)
        i += 2 * HW
    if i + HW <= n:
        var xv = x.unsafe_load[width=HW](i)
        c0 = load_half[K, HW](a0, i).fma(xv, c0)
        c1 = load_half[K, HW](a1, i).fma(xv, c1)
        c2 = load_half[K, HW](a2, i).fma(xv, c2)
        c3 = load_half[K, HW](a3, i).fma(xv, c3)
        i += HW
    var s0 = (c0 + e0).reduce_add()
    var s1 = (c1 + e1).reduce_add()
    var s2 = (c2 + e2).reduce_add()
    var s3 = (c3 + e3).reduce_add()
    while i < n:
        var xs = x.unsafe_load(i)
        s0 += load_half[K, 1](a0, i) * xs
        s1 += load_half[K, 1](a1, i) * xs
        s2 += load_half[K, 1](a2, i) * xs
        s3 += load_half[K, 1](a3, i) * xs
        i += 1
    xout.unsafe_store(r, s0)
    xout.unsafe_store(r + 1, s1)
    xout.unsafe_store(r + 2, s2)
    xout.unsafe_store(r + 3, s3)


@always_inline
def half_dot[K: Int](row: BPtr, x: FPtr, n: Int) -> Float32:
    var acc = SIMD[DType.float32, HW](0)
    var i = 0
    while i + HW <= n:
        acc = load_half[K, HW](row, i).fma(x.unsafe_load[width=HW](i), acc)
        i += HW
    var s = acc.reduce_add()
    while i < n:
        s += load_half[K, 1](row, i) * x.unsafe_load(i)
        i += 1
    return s


def half_matvec_rows[K: Int](xout: FPtr, x: FPtr, w: BPtr, n: Int, r0: Int, r1: Int):
    """xout[r] = W[r, :] . x for r in [r0, r1); W (rows, n) of 16-bit type K, x the
    float32 activation."""
    var r = r0
    while r + 4 <= r1:
        half_4rows[K](xout, x, w, n, r)
        r += 4
    while r < r1:
        xout.unsafe_store(r, half_dot[K](w.unsafe_offset(2 * r * n), x, n))
        r += 1
