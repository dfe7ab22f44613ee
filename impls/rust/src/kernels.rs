//! The kernels of the forward pass and the sampler: dot products, matmuls split across the
//! pool (float32 here, Q8_0 in q8.rs), rmsnorm, softmax.
//!
//! Batch-1 decoding streams every weight once per token, so the matmul must keep the memory bus
//! busy: four weight rows at a time (dot4), 16 independent float lanes each. Plain fixed-size
//! loops that the compiler vectorises on any target (AVX2 with -C target-cpu=native, NEON on
//! arm64), and one target-specific kernel: explicit AVX-512 where the CPU has it (`avx512`).

use std::ops::Range;

use crate::half::{self, Half};
use crate::pool::{Out, Pool};
use crate::q8::{self, Activation, Quantized};

#[inline(always)]
pub fn fmadd(a: f32, b: f32, c: f32) -> f32 {
    // a real fused multiply-add where the hardware has one; a libm call would be far slower
    #[cfg(any(target_feature = "fma", target_arch = "aarch64"))]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(any(target_feature = "fma", target_arch = "aarch64")))]
    {
        a * b + c
    }
}

/// a . b with K independent lanes: K = 32 for long rows, 8 for attention's head-sized vectors
/// (a wide accumulator would spend more on its final reduction than on an 8-float head).
#[inline(always)]
pub fn dot_lanes<const K: usize>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; K];
    let (ac, bc) = (a.chunks_exact(K), b.chunks_exact(K));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..K {
            acc[i] = fmadd(x[i], y[i], acc[i]);
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ar.iter().zip(br) {
        tail = fmadd(*x, *y, tail);
    }
    lane_sum(acc) + tail
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes::<32>(a, b)
}

/// Four rows of W against x at once: x is loaded once for four weight streams, and the four
/// streams keep more memory requests in flight than one (about 1.4x the bandwidth of a
/// row-at-a-time loop on the Xeon this was tuned on). 16 lanes per row = 8 vector accumulators.
#[inline(always)]
fn dot4(w: &[f32], x: &[f32]) -> [f32; 4] {
    const K: usize = 16;
    let n = x.len();
    let (w0, rest) = w.split_at(n);
    let (w1, rest) = rest.split_at(n);
    let (w2, w3) = rest.split_at(n);
    let w3 = &w3[..n];
    let (mut a0, mut a1, mut a2, mut a3) = ([0.0f32; K], [0.0f32; K], [0.0f32; K], [0.0f32; K]);
    let lanes = x
        .chunks_exact(K)
        .zip(w0.chunks_exact(K))
        .zip(w1.chunks_exact(K))
        .zip(w2.chunks_exact(K))
        .zip(w3.chunks_exact(K));
    for ((((xs, r0), r1), r2), r3) in lanes {
        for i in 0..K {
            a0[i] = fmadd(r0[i], xs[i], a0[i]);
            a1[i] = fmadd(r1[i], xs[i], a1[i]);
            a2[i] = fmadd(r2[i], xs[i], a2[i]);
            a3[i] = fmadd(r3[i], xs[i], a3[i]);
        }
    }
    let mut s = [lane_sum(a0), lane_sum(a1), lane_sum(a2), lane_sum(a3)];
    for j in n - n % K..n {
        for (si, wr) in s.iter_mut().zip([w0, w1, w2, w3]) {
            *si = fmadd(wr[j], x[j], *si);
        }
    }
    s
}

/// The sum of K lanes (K a multiple of 8): folded to 8 lanes, then a fixed tree that compiles
/// to a few shuffles.
#[inline(always)]
fn lane_sum<const K: usize>(a: [f32; K]) -> f32 {
    let mut e = [0.0f32; 8];
    for (i, v) in a.iter().enumerate() {
        e[i % 8] += v;
    }
    let f = [e[0] + e[4], e[1] + e[5], e[2] + e[6], e[3] + e[7]];
    (f[0] + f[2]) + (f[1] + f[3])
}

/// dot4 with explicit 512-bit vectors where the CPU has AVX-512: LLVM's tuning for these Xeons
/// prefers 256-bit vectors, so the plain loops above never get one load per cache line. One
/// accumulator a row, like Mojo's kernel: with two (which LLVM then unrolled to 64 floats a
/// pass) 42M ran 99 tok/s against 109 with one, in one interleaved run (docs/journal.md).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    /// # Safety
    /// The CPU has AVX-512F (`available()`).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot4(w: &[f32], x: &[f32]) -> [f32; 4] {
        let n = x.len();
        assert!(w.len() == 4 * n, "four rows of x's length");
        let rows = [0, 1, 2, 3].map(|k| w[k * n..].as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut j = 0;
        // SAFETY: every load reads 16 floats at j, j + 16 <= n, inside x and each row
        unsafe {
            while j + 16 <= n {
                let xa = _mm512_loadu_ps(x.as_ptr().add(j));
                for k in 0..4 {
                    acc[k] = _mm512_fmadd_ps(_mm512_loadu_ps(rows[k].add(j)), xa, acc[k]);
                }
                j += 16;
            }
        }
        let mut s = acc.map(|a| _mm512_reduce_add_ps(a));
        for (k, sk) in s.iter_mut().enumerate() {
            for i in j..n {
                *sk = super::fmadd(w[k * n + i], x[i], *sk);
            }
        }
        s
    }
}

/// W[r] . x for each row r in `rows` of W (.., x.len()), handed to `put(r - rows.start, value)`.
#[inline(always)]
pub fn matvec_rows(w: &[f32], x: &[f32], rows: Range<usize>, mut put: impl FnMut(usize, f32)) {
    let n = x.len();
    let mut r = rows.start;
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        while r + 4 <= rows.end {
            // SAFETY: available() said the CPU has AVX-512F
            let s = unsafe { avx512::dot4(&w[r * n..(r + 4) * n], x) };
            for (k, v) in s.into_iter().enumerate() {
                put(r + k - rows.start, v);
            }
            r += 4;
        }
    }
    while r + 4 <= rows.end {
        for (k, v) in dot4(&w[r * n..(r + 4) * n], x).into_iter().enumerate() {
            put(r + k - rows.start, v);
        }
        r += 4;
    }
    for r in r..rows.end {
        put(r - rows.start, dot(&w[r * n..(r + 1) * n], x));
    }
}

/// A weight matrix (rows, cols) as the file stores it, row after row.
#[derive(Clone, Copy)]
pub enum Matrix<'a> {
    F32(&'a [f32]),
    /// Q8_0 blocks (q8.rs), cols / 32 per row
    Q8(&'a [u8]),
    /// F16 or BF16 values (half.rs), 2 bytes each, at any byte
    Half(Half, &'a [u8]),
}

impl<'a> Matrix<'a> {
    pub fn is_q8(&self) -> bool {
        matches!(self, Matrix::Q8(_))
    }

    /// The float32 data, when that is how it is stored.
    #[cfg(test)]
    pub fn f32(&self) -> Option<&'a [f32]> {
        match self {
            Matrix::F32(w) => Some(w),
            Matrix::Q8(_) | Matrix::Half(..) => None,
        }
    }

    /// Row r as floats into `out` (cols long): copied, or dequantized (the embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let n = out.len();
        match self {
            Matrix::F32(w) => out.copy_from_slice(&w[r * n..(r + 1) * n]),
            Matrix::Q8(w) => q8::dequantize_row(w, r, out),
            Matrix::Half(ty, w) => half::widen_row(*ty, w, r, out),
        }
    }

    /// W[r] . x for each row r in `rows`, handed to `put(r - rows.start, value)`.
    #[inline(always)]
    pub fn rows(&self, x: Input, rows: Range<usize>, put: impl FnMut(usize, f32)) {
        match self {
            Matrix::F32(w) => matvec_rows(w, x.x, rows, put),
            Matrix::Q8(w) => q8::matvec_rows(w, x.quantized.expect("a Q8_0 matrix gets a quantized input"), rows, put),
            Matrix::Half(ty, w) => half::matvec_rows(*ty, w, x.x, rows, put),
        }
    }
}

/// The input of a group of matmuls: x, and x quantized when a matrix of the group is Q8_0
/// (F16 and BF16 matrices take x as it is).
#[derive(Clone, Copy)]
pub struct Input<'a> {
    pub x: &'a [f32],
    pub quantized: Option<Quantized<'a>>,
}

impl<'a> Input<'a> {
    /// x for the matrices `group`: quantized into `buf` once, for all of them, when one is Q8_0.
    pub fn new(x: &'a [f32], buf: &'a mut Activation, group: &[Matrix]) -> Input<'a> {
        let quantized = group.iter().any(Matrix::is_q8).then(|| buf.quantize(x));
        Input { x, quantized }
    }

    /// x for float32 matrices only.
    #[cfg(test)]
    pub fn f32(x: &'a [f32]) -> Input<'a> {
        Input { x, quantized: None }
    }
}

/// Output rows per claimable chunk are a multiple of this: whole 64-byte lines of output per
/// thread, and whole groups of four rows for dot4.
pub const ROW_GRAIN: usize = 16;

/// out += W @ x, rows split across the pool (the residual connection fused in).
pub fn matvec_add(pool: &Pool, out: &mut [f32], w: Matrix, x: Input) {
    let o = Out::new(out);
    pool.run(out.len(), ROW_GRAIN, &|r| {
        // SAFETY: this thread owns rows r
        let dst = unsafe { o.part(r.clone()) };
        w.rows(x, r, |i, v| dst[i] += v);
    });
}

/// out = W @ x, rows split across the pool.
pub fn matvec(pool: &Pool, out: &mut [f32], w: Matrix, x: Input) {
    let o = Out::new(out);
    pool.run(out.len(), ROW_GRAIN, &|r| {
        // SAFETY: this thread owns rows r
        let dst = unsafe { o.part(r.clone()) };
        w.rows(x, r, |i, v| dst[i] = v);
    });
}

pub fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let ss = dot(x, x) / x.len() as f32 + eps;
    let inv = 1.0 / ss.sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = wi * (xi * inv);
    }
}

pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = (*v - max).exp();
    }
    let sum = pairwise_sum(x);
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// numpy's float32 summation order (pairwise, 8 lanes, blocks of 128). The sampler compares a
/// random coin with running sums of 32000 tiny probabilities; summing in the reference's order
/// keeps near-flat distributions from drifting onto a neighbouring token.
fn pairwise_sum(a: &[f32]) -> f32 {
    let n = a.len();
    if n < 8 {
        return a.iter().fold(0.0f32, |s, &v| s + v);
    }
    if n <= 128 {
        let mut r = [0.0f32; 8];
        r.copy_from_slice(&a[..8]);
        let whole = n - n % 8;
        for chunk in a[8..whole].chunks_exact(8) {
            for j in 0..8 {
                r[j] += chunk[j];
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &a[whole..] {
            res += v;
        }
        return res;
    }
    let half = n / 2 - (n / 2) % 8;
    pairwise_sum(&a[..half]) + pairwise_sum(&a[half..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_sum_matches_numpy_order() {
        // np.float32 sums of these arrays, computed by numpy
        let a: Vec<f32> = (0..1000).map(|i| 1.0 / (i as f32 + 1.0)).collect();
        assert_eq!(pairwise_sum(&a).to_bits(), EXPECT_PAIRWISE_BITS);
        assert_eq!(pairwise_sum(&[1.0, 2.0, 3.0]), 6.0);
    }

    const EXPECT_PAIRWISE_BITS: u32 = 1089439996;

    /// Every row of matvec_rows (the AVX-512 four-row kernel where the CPU has it, the plain one
    /// otherwise, single rows at the end) against a float64 dot product, with lengths that leave
    /// each kernel a remainder.
    #[test]
    fn matvec_rows_agrees_with_a_plain_dot_product() {
        let mut seed = 7u32;
        let mut next = || {
            seed = seed.wrapping_mul(1664525).wrapping_add(1013904223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for n in [1, 15, 16, 31, 32, 33, 63, 64, 172, 288, 512, 768] {
            let rows = 11;
            let w: Vec<f32> = (0..rows * n).map(|_| next()).collect();
            let x: Vec<f32> = (0..n).map(|_| next()).collect();
            let mut out = vec![f32::NAN; rows];
            matvec_rows(&w, &x, 0..rows, |i, v| out[i] = v);
            for (r, got) in out.iter().enumerate() {
                let want: f64 = (0..n).map(|j| w[r * n + j] as f64 * x[j] as f64).sum();
                assert!((*got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()), "n={n} row {r}: {got} vs {want}");
            }
        }
    }
}
