//! GGUF F16 and BF16 matrices: 2 bytes a value, widened exactly to float32, and their products.
//!
//! Both widen to float32 exactly: F16 (IEEE binary16, subnormals included) by its bit formula or
//! F16C's `vcvtph2ps`, BF16 (the top half of a float32) by a shift left of 16. A product `W @ x`
//! is then the float32 product with x as it is: llama.cpp rounds x to the weight's type first,
//! but two correct implementations of that rounding part by more than the logits tolerance
//! (activations within float32 noise of a 16-bit midpoint round either way), so the contract
//! keeps x in float32 and every port agrees to float32 rounding. Only the order of the sum
//! differs between kernels.
//!
//! The one-position product is memory-bound: the weights are widened in registers as they
//! stream past, four rows at a time like the float32 kernel (AVX-512F, AVX2 + F16C, or plain
//! lane arrays the compiler vectorises, NEON on arm64), picked once at run time. The batched
//! product widens one cache block of weight rows at a time into float32 scratch and hands it to
//! the float32 tile kernels (gemm.rs): each weight is read from memory and widened once per
//! batch, then used against every activation row.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

use crate::gemm;
#[cfg(test)]
use crate::q8::{f16_to_f32, f32_to_f16};

/// Which 16-bit type a matrix is stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    /// IEEE binary16 (ggml type 1)
    F16,
    /// bfloat16, the top 16 bits of a float32 (ggml type 30)
    Bf16,
}

impl Half {
    pub fn name(self) -> &'static str {
        match self {
            Half::F16 => "F16",
            Half::Bf16 => "BF16",
        }
    }

    /// The stored value `h` as float32, exactly.
    #[cfg(test)]
    pub fn widen(self, h: u16) -> f32 {
        match self {
            Half::F16 => f16_bits_to_f32(h),
            Half::Bf16 => bf16_to_f32(h),
        }
    }
}

/// F16 bits to float32 without branches, so that loops over rows vectorise: the exponent and
/// mantissa moved into float32's places and scaled by 2^112 (rebiasing 15 to 127 also turns a
/// subnormal into the right normal float32); infinities and NaNs kept apart.
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = (h & 0x7fff) << 13;
    let scaled = (f32::from_bits(em) * f32::from_bits(0x7780_0000)).to_bits(); // * 2^112
    let bits = if h & 0x7c00 == 0x7c00 { em | 0x7f80_0000 } else { scaled };
    f32::from_bits(bits | sign)
}

#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Value `i` of a row of 16-bit values stored at any byte.
#[inline(always)]
fn value(w: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([w[2 * i], w[2 * i + 1]])
}

/// Row `r` of a matrix of `out.len()` columns, widened into `out` (the embedding lookup, and the
/// batched product's weight blocks).
pub fn widen_row(ty: Half, w: &[u8], r: usize, out: &mut [f32]) {
    let n = out.len();
    widen_rows(ty, &w[2 * r * n..2 * (r + 1) * n], out);
}

/// Every value of `w` (2 bytes each) into `out`.
fn widen_rows(ty: Half, w: &[u8], out: &mut [f32]) {
    let src = &w[..2 * out.len()];
    match ty {
        Half::F16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        Half::Bf16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
    }
}

// ----------------------------------------------------------------------------
// The one-position product

/// The matrix-vector kernels, by instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// fixed-size lane arrays, vectorised by the compiler for the target
    Portable,
    /// x86-64 AVX2 + FMA + F16C: 8 values a row per step
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// x86-64 AVX-512F: 16 values a row per step
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    /// Every kernel this CPU can run, best last.
    pub fn available() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut ks = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            {
                ks.push(Kernel::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                ks.push(Kernel::Avx512);
            }
        }
        ks
    }

    /// The best kernel here, detected once.
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| *Kernel::available().last().unwrap_or(&Kernel::Portable))
    }

    /// The four rows `rows` (each x.len() values of `ty`, 2 bytes apiece, at any byte) times x.
    #[inline(always)]
    fn dot4(self, ty: Half, rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
        let n = x.len();
        assert!(rows.iter().all(|r| r.len() >= 2 * n), "four rows of x's length");
        #[cfg(target_arch = "x86_64")]
        let p = rows.map(|r| r.as_ptr());
        // SAFETY (x86 arms): each row holds 2n bytes (asserted above), and a kernel is only in
        // `available()` when the CPU has its instructions
        match (self, ty) {
            (Kernel::Portable, Half::F16) => dot4_portable::<false>(rows, x),
            (Kernel::Portable, Half::Bf16) => dot4_portable::<true>(rows, x),
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, Half::F16) => unsafe { x86::dot4_avx2::<false>(p, x) },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx2, Half::Bf16) => unsafe { x86::dot4_avx2::<true>(p, x) },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512, Half::F16) => unsafe { x86::dot4_avx512::<false>(p, x) },
            #[cfg(target_arch = "x86_64")]
            (Kernel::Avx512, Half::Bf16) => unsafe { x86::dot4_avx512::<true>(p, x) },
        }
    }
}

/// W[r] . x for each row r in `rows` of the 16-bit matrix W (.., x.len()), handed to
/// `put(r - rows.start, value)`.
#[inline(always)]
pub fn matvec_rows(ty: Half, w: &[u8], x: &[f32], rows: Range<usize>, put: impl FnMut(usize, f32)) {
    matvec_rows_with(Kernel::best(), ty, w, x, rows, put)
}

fn matvec_rows_with(k: Kernel, ty: Half, w: &[u8], x: &[f32], rows: Range<usize>, mut put: impl FnMut(usize, f32)) {
    let rb = 2 * x.len();
    let row = |r: usize| &w[r * rb..(r + 1) * rb];
    let mut r = rows.start;
    while r + 4 <= rows.end {
        let s = k.dot4(ty, [row(r), row(r + 1), row(r + 2), row(r + 3)], x);
        for (i, v) in s.into_iter().enumerate() {
            put(r + i - rows.start, v);
        }
        r += 4;
    }
    // the last rows one at a time: the same kernel over the row four times, one result kept
    for r in r..rows.end {
        put(r - rows.start, k.dot4(ty, [row(r); 4], x)[0]);
    }
}

#[inline(always)]
fn widen_as<const BF: bool>(h: u16) -> f32 {
    if BF {
        bf16_to_f32(h)
    } else {
        f16_bits_to_f32(h)
    }
}

/// 16 lanes a row in plain arrays: with the branch-free widening the compiler vectorises it.
#[inline(always)]
fn dot4_portable<const BF: bool>(rows: [&[u8]; 4], x: &[f32]) -> [f32; 4] {
    const K: usize = 16;
    let n = x.len();
    let mut acc = [[0.0f32; K]; 4];
    let whole = n - n % K;
    let mut j = 0;
    while j < whole {
        let xs = &x[j..j + K];
        for (a, row) in acc.iter_mut().zip(&rows) {
            let ws = &row[2 * j..2 * (j + K)];
            for l in 0..K {
                let h = u16::from_le_bytes([ws[2 * l], ws[2 * l + 1]]);
                a[l] = crate::kernels::fmadd(widen_as::<BF>(h), xs[l], a[l]);
            }
        }
        j += K;
    }
    let mut s = [0.0f32; 4];
    for (k, (si, a)) in s.iter_mut().zip(&acc).enumerate() {
        let e: [f32; 8] = std::array::from_fn(|i| a[i] + a[i + 8]);
        *si = ((e[0] + e[4]) + (e[2] + e[6])) + ((e[1] + e[5]) + (e[3] + e[7]));
        for i in whole..n {
            *si = crate::kernels::fmadd(widen_as::<BF>(value(rows[k], i)), x[i], *si);
        }
    }
    s
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The weights widened in registers as they stream past: F16 with `vcvtph2ps`, BF16 by
    //! zero-extending to 32 bits and shifting left 16; one accumulator a row, four rows at once
    //! (more memory streams in flight than one), the tail of a row in scalar code.
    use super::{value, widen_as};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX-512F; each row holds 2 * x.len() bytes.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot4_avx512<const BF: bool>(w: [*const u8; 4], x: &[f32]) -> [f32; 4] {
        let n = x.len();
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut j = 0;
        // SAFETY: every load reads 16 values at j, j + 16 <= n, inside x and each row
        unsafe {
            while j + 16 <= n {
                let xa = _mm512_loadu_ps(x.as_ptr().add(j));
                for k in 0..4 {
                    let raw = _mm256_loadu_si256(w[k].add(2 * j) as *const __m256i);
                    let wv = if BF {
                        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(raw)))
                    } else {
                        _mm512_cvtph_ps(raw)
                    };
                    acc[k] = _mm512_fmadd_ps(wv, xa, acc[k]);
                }
                j += 16;
            }
        }
        let mut s = acc.map(|a| _mm512_reduce_add_ps(a));
        for (k, sk) in s.iter_mut().enumerate() {
            // SAFETY: the row holds 2n bytes
            let row = unsafe { std::slice::from_raw_parts(w[k], 2 * n) };
            for i in j..n {
                *sk = widen_as::<BF>(value(row, i)).mul_add(x[i], *sk);
            }
        }
        s
    }

    /// # Safety
    /// The CPU has AVX2, FMA and F16C; each row holds 2 * x.len() bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot4_avx2<const BF: bool>(w: [*const u8; 4], x: &[f32]) -> [f32; 4] {
        let n = x.len();
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut j = 0;
        // SAFETY: every load reads 8 values at j, j + 8 <= n, inside x and each row
        unsafe {
            while j + 8 <= n {
                let xa = _mm256_loadu_ps(x.as_ptr().add(j));
                for k in 0..4 {
                    let raw = _mm_loadu_si128(w[k].add(2 * j) as *const __m128i);
                    let wv = if BF {
                        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(raw)))
                    } else {
                        _mm256_cvtph_ps(raw)
                    };
                    acc[k] = _mm256_fmadd_ps(wv, xa, acc[k]);
                }
                j += 8;
            }
        }
        let mut s = acc.map(|a| {
            let h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps::<1>(h, h)))
        });
        for (k, sk) in s.iter_mut().enumerate() {
            // SAFETY: the row holds 2n bytes
            let row = unsafe { std::slice::from_raw_parts(w[k], 2 * n) };
            for i in j..n {
                *sk = widen_as::<BF>(value(row, i)).mul_add(x[i], *sk);
            }
        }
        s
    }
}

// ----------------------------------------------------------------------------
// The batched product

/// Floats of weight rows widened at once (16 MiB), at most.
const WIDE_FLOATS: usize = 1 << 22;

thread_local! {
    /// This thread's block of weight rows, widened to float32.
    static WIDE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// For the weight rows `rows` of the 16-bit W (n, d) and the `t` activation rows of X (t, d):
/// `put(token, r - rows.start, W[r] . X[token])` for every pair,
/// each exactly once. A block of weight rows at a time (up to 16 MiB of them) is widened into
/// float32 scratch and swept by every activation row on the float32 kernel.
pub fn gemm_rows(ty: Half, w: &[u8], x: &[f32], d: usize, t: usize, rows: Range<usize>, put: impl FnMut(usize, usize, f32)) {
    gemm_rows_with(gemm::Kernel::best(), ty, w, x, d, t, rows, put)
}

#[allow(clippy::too_many_arguments)]
fn gemm_rows_with(
    k: gemm::Kernel,
    ty: Half,
    w: &[u8],
    x: &[f32],
    d: usize,
    t: usize,
    rows: Range<usize>,
    mut put: impl FnMut(usize, usize, f32),
) {
    assert!(rows.end * 2 * d <= w.len() && t * d <= x.len(), "W and X hold the rows asked for");
    if rows.is_empty() || t == 0 {
        return;
    }
    // large blocks: the float32 kernel blocks for the caches itself, but the packed one copies
    // every activation row once per call, which must stay small beside the block's products
    let block = gemm::row_block(d).max(WIDE_FLOATS / d.max(1)).min(rows.len());
    WIDE.with(|cell| {
        let mut wide = cell.borrow_mut();
        if wide.len() < block * d {
            wide.resize(block * d, 0.0);
        }
        let mut b0 = rows.start;
        while b0 < rows.end {
            let b1 = (b0 + block).min(rows.end);
            let nb = b1 - b0;
            widen_rows(ty, &w[2 * b0 * d..2 * b1 * d], &mut wide[..nb * d]);
            let base = b0 - rows.start;
            gemm::gemm_rows(k, &wide[..nb * d], x, d, t, 0..nb, |tok, i, v| put(tok, base + i, v));
            b0 = b1;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Lcg;

    /// The value of fp16 bits h from the format's definition, in f64.
    fn half_value(h: u16) -> f64 {
        let (exp, man) = ((h >> 10) & 0x1f, (h & 0x3ff) as f64);
        let v = match exp {
            0 => man * 2f64.powi(-24),
            0x1f if man == 0.0 => f64::INFINITY,
            0x1f => f64::NAN,
            e => (1024.0 + man) * 2f64.powi(e as i32 - 25),
        };
        if h & 0x8000 != 0 {
            -v
        } else {
            v
        }
    }

    /// Every F16 pattern, subnormals, infinities and NaNs included, widens to its value; the
    /// branch-free formula agrees with the table-free one q8.rs uses for scales.
    #[test]
    fn f16_widens_exactly() {
        for h in 0..=u16::MAX {
            let (got, want) = (f16_bits_to_f32(h), half_value(h));
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
                continue;
            }
            assert_eq!(got as f64, want, "{h:#06x}");
            assert_eq!(got.is_sign_negative(), h & 0x8000 != 0, "{h:#06x}");
            assert_eq!(got.to_bits(), f16_to_f32(h).to_bits(), "{h:#06x}");
        }
        assert_eq!(f16_bits_to_f32(0x0001), 2f32.powi(-24)); // the smallest subnormal
        assert_eq!(f16_bits_to_f32(0x03ff), 1023.0 * 2f32.powi(-24)); // the largest
        assert_eq!(f16_bits_to_f32(0x7c00), f32::INFINITY);
    }

    #[test]
    fn bf16_widens_by_a_shift() {
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc000), -2.0);
        assert_eq!(bf16_to_f32(0x0001), f32::from_bits(0x0001_0000)); // a float32 subnormal
        assert_eq!(bf16_to_f32(0xff80), f32::NEG_INFINITY);
        // NaNs stay NaN, quiet or signalling, whatever their sign
        for h in [0x7fc0u16, 0x7f81, 0xffc1, 0xff81] {
            assert!(bf16_to_f32(h).is_nan(), "{h:#06x}");
        }
        for h in 0..=u16::MAX {
            assert_eq!(bf16_to_f32(h).to_bits(), (h as u32) << 16);
        }
    }

    /// A random matrix of `ty` values (finite, with F16 subnormals among them) and its widened copy.
    fn random_matrix(rng: &mut Lcg, ty: Half, n: usize, d: usize) -> (Vec<u8>, Vec<f32>) {
        let mut bytes = Vec::with_capacity(2 * n * d);
        let mut wide = Vec::with_capacity(n * d);
        for i in 0..n * d {
            let v = rng.float() * 2.0;
            let h = match ty {
                Half::F16 if i % 7 == 3 => (rng.float().abs() * 1023.0) as u16 | ((i as u16 & 8) << 12), // subnormal
                Half::F16 => f32_to_f16(v),
                Half::Bf16 => (v.to_bits() >> 16) as u16,
            };
            bytes.extend(h.to_le_bytes());
            wide.push(ty.widen(h));
        }
        (bytes, wide)
    }

    /// The product by its definition: the widened weights times x, summed in float64, and the
    /// sum of the products' magnitudes for the rounding bound.
    fn plain(w: &[f32], x: &[f32], d: usize, r: usize, tok: usize) -> (f64, f64) {
        (0..d).fold((0.0, 0.0), |(s, m), j| {
            let p = w[r * d + j] as f64 * x[tok * d + j] as f64;
            (s + p, m + p.abs())
        })
    }

    /// Every one-position kernel against the plain loop, rows not a multiple of 4, d with and
    /// without a vector tail.
    #[test]
    fn every_matvec_kernel_agrees_with_a_plain_loop() {
        let mut rng = Lcg(29);
        for ty in [Half::F16, Half::Bf16] {
            for d in [1, 7, 16, 64, 96, 172, 288] {
                let n = 4 * 3 + 3;
                let (w, wide) = random_matrix(&mut rng, ty, n, d);
                let xr: Vec<f32> = (0..d).map(|_| rng.float() * 3.0).collect();
                for &k in &Kernel::available() {
                    for rows in [0..n, 3..n - 1] {
                        let mut out = vec![f32::NAN; n];
                        matvec_rows_with(k, ty, &w, &xr, rows.clone(), |i, v| out[rows.start + i] = v);
                        for (r, &got) in out.iter().enumerate() {
                            if !rows.contains(&r) {
                                assert!(got.is_nan(), "{k:?} wrote outside its rows");
                                continue;
                            }
                            let (want, mag) = plain(&wide, &xr, d, r, 0);
                            let bound = d as f64 * f32::EPSILON as f64 * mag + 1e-30;
                            assert!((got as f64 - want).abs() <= bound, "{ty:?} {k:?} d={d} row {r}: {got} vs {want}");
                        }
                    }
                }
            }
        }
    }

    /// Every batched kernel (each float32 tile kernel behind the widening) against the plain
    /// loop: rows not a multiple of the tile nor of a block, T across tile widths.
    #[test]
    fn every_batched_kernel_agrees_with_a_plain_loop() {
        let mut rng = Lcg(31);
        for ty in [Half::F16, Half::Bf16] {
            for d in [64, 96, 172, 288] {
                for t in [1, 7, 33] {
                    let n = 4 * 3 + 3 + if d == 96 { gemm::row_block(d) } else { 0 };
                    let (w, wide) = random_matrix(&mut rng, ty, n, d);
                    let xr: Vec<f32> = (0..t * d).map(|_| rng.float() * 3.0).collect();
                    for &k in &gemm::Kernel::available() {
                        for rows in [0..n, 3..n - 1] {
                            let mut out = vec![f32::NAN; t * n];
                            let mut seen = vec![0u32; t * n];
                            gemm_rows_with(k, ty, &w, &xr, d, t, rows.clone(), |tok, i, v| {
                                out[tok * n + rows.start + i] = v;
                                seen[tok * n + rows.start + i] += 1;
                            });
                            for tok in 0..t {
                                for r in 0..n {
                                    let got = out[tok * n + r];
                                    if !rows.contains(&r) {
                                        assert!(seen[tok * n + r] == 0, "{k:?} wrote outside its rows");
                                        continue;
                                    }
                                    assert_eq!(seen[tok * n + r], 1, "{k:?}: each element once");
                                    let (want, mag) = plain(&wide, &xr, d, r, tok);
                                    let bound = 2.0 * d as f64 * f32::EPSILON as f64 * mag + 1e-30;
                                    assert!(
                                        (got as f64 - want).abs() <= bound,
                                        "{ty:?} {k:?} d={d} t={t} row {r} token {tok}: {got} vs {want}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rows_widen_for_the_embedding() {
        let mut w = Vec::new();
        for h in [0x3c00u16, 0xc000, 0x0001, 0x7bff, 0x3555, 0x8000] {
            w.extend(h.to_le_bytes());
        }
        let mut row = [0.0f32; 3];
        widen_row(Half::F16, &w, 1, &mut row);
        assert_eq!(row, [65504.0, f16_bits_to_f32(0x3555), -0.0]);
        widen_row(Half::Bf16, &w, 0, &mut row);
        assert_eq!(row[1], bf16_to_f32(0xc000));
    }

    #[test]
    fn the_best_kernel_uses_the_vector_unit() {
        assert_eq!(Some(&Kernel::best()), Kernel::available().last());
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            assert_eq!(Kernel::best(), Kernel::Avx512);
        }
    }
}
