//! The batched forward pass's Q8_0 product: out(T, n) = X(T, d) @ W(n, d)^T with W in Q8_0
//! blocks as the file stores them, and each row of X quantized to Q8_0 exactly as the one-token
//! path quantizes its vector (q8::quantize_block), once per group of products sharing it.
//!
//! Each output element is the one-token path's arithmetic: per block the exact int32 sum of
//! the 32 int8 products, then float(isum) * (fp32(dw) * dx) added to a float32 sum. Only the
//! loop order changes: a tile of weight rows x 4 activation rows takes one block at a time, so a
//! weight block is loaded once for 4 activation rows and an activation block once for all the
//! tile's weight rows.
//!
//! On x86-64 the 8 (row, token) pairs of two weight rows x 4 tokens make one 256-bit register of
//! int32 block sums: each pair's int8 products go into 8 int32 lanes (vpdpbusd, or AVX2's
//! vpmaddubsw + vpmaddwd), and a reduction tree of blends and in-lane shuffles (written as 7
//! shuffles for 8 pairs where horizontal adds take 14; LLVM is free to re-form parts of it as
//! vphaddd, and does) turns the 8 registers into one register of the 8 exact sums, which is converted and scaled as 8 floats at once. vpdpbusd multiplies unsigned
//! by signed bytes: the activation is made unsigned by adding 128 (x ^ 0x80), and 128 * sum(w)
//! per weight block, computed once per weight block for the whole batch, is subtracted from the
//! exact sum afterwards. AVX2's vpmaddubsw would saturate on (x + 128) * w pairs, so that path
//! keeps the sign trick (|w| times x with w's sign). Elsewhere (arm64, or an x86 CPU without
//! AVX2) each weight row meets each activation row in q8.rs's one-row kernels (NEON sdot/smull,
//! portable), the weight row still read from memory once per batch.

use std::ops::Range;
use std::sync::OnceLock;

use crate::errors::{Fail, Res};
use crate::pool::Pool;
use crate::q8::{self, quantize_block, Quantized, BLOCK, BLOCK_BYTES};

/// Activation rows per tile.
const TOKENS: usize = 4;

// ----------------------------------------------------------------------------
// The activation rows, quantized

/// Buffers for up to `rows` activation rows of up to `cols` values quantized to Q8_0, allocated
/// once (run state).
pub struct Rows {
    qs: Vec<i8>,
    d: Vec<f32>,  // (row, block)
    dt: Vec<f32>, // (block, row), rows padded to a multiple of TOKENS: a tile's 4 scales in a row
    rows: usize,
    cols: usize,
}

/// Quantized activation rows: quants row after row, and the scales both ways.
#[derive(Clone, Copy)]
pub struct QRows<'a> {
    qs: &'a [i8],
    d: &'a [f32],
    dt: &'a [f32],
    t: usize,
    cols: usize,
    tpad: usize,
}

fn buffer<T: Copy + Default>(n: usize) -> Res<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Fail::Runtime(format!("cannot allocate {n} activation values")))?;
    v.resize(n, T::default());
    Ok(v)
}

impl Rows {
    pub fn with_capacity(rows: usize, cols: usize) -> Res<Rows> {
        let nb = cols / BLOCK;
        Ok(Rows {
            qs: buffer(rows * cols)?,
            d: buffer(rows * nb)?,
            dt: buffer(nb * rows.next_multiple_of(TOKENS))?,
            rows,
            cols,
        })
    }

    /// The t rows of x (t, cols), each quantized as the one-token path quantizes a vector; rows
    /// split across the pool.
    pub fn quantize(&mut self, pool: &Pool, x: &[f32], t: usize, cols: usize) -> QRows<'_> {
        assert!(t <= self.rows && cols <= self.cols && cols % BLOCK == 0 && x.len() >= t * cols);
        let (nb, tpad) = (cols / BLOCK, t.next_multiple_of(TOKENS));
        let (qs, d, dt) = (Ptr(self.qs.as_mut_ptr()), Ptr(self.d.as_mut_ptr()), Ptr(self.dt.as_mut_ptr()));
        pool.run(t, 1, &|mine: Range<usize>| {
            for r in mine {
                for b in 0..nb {
                    let xs = &x[r * cols + b * BLOCK..][..BLOCK];
                    // SAFETY: row r's quants and scales are this thread's alone, and inside the
                    // buffers (asserted above: t <= rows, cols <= the capacity's cols)
                    unsafe {
                        let q = std::slice::from_raw_parts_mut(qs.at(r * cols + b * BLOCK), BLOCK);
                        let s = quantize_block(xs, q);
                        *d.at(r * nb + b) = s;
                        *dt.at(b * tpad + r) = s;
                    }
                }
            }
        });
        QRows { qs: &self.qs[..t * cols], d: &self.d[..t * nb], dt: &self.dt[..nb * tpad], t, cols, tpad }
    }
}

#[derive(Clone, Copy)]
struct Ptr<T>(*mut T);
// SAFETY: threads write disjoint rows through it (Rows::quantize)
unsafe impl<T> Sync for Ptr<T> {}
unsafe impl<T> Send for Ptr<T> {}

impl<T> Ptr<T> {
    /// SAFETY: i is inside the buffer and no other thread touches element i during the job
    unsafe fn at(self, i: usize) -> *mut T {
        unsafe { self.0.add(i) }
    }
}

impl<'a> QRows<'a> {
    /// Row `r` as the one-token kernels take it.
    pub fn row(&self, r: usize) -> Quantized<'a> {
        let nb = self.cols / BLOCK;
        Quantized { qs: &self.qs[r * self.cols..(r + 1) * self.cols], d: &self.d[r * nb..(r + 1) * nb] }
    }
}

// ----------------------------------------------------------------------------
// The product

/// The batched integer kernels, by instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// each weight row against each activation row with q8.rs's best one-row kernel
    Rows,
    /// x86-64 AVX2: vpsignb + vpmaddubsw + vpmaddwd, tiles of 2 weight rows x 4 tokens
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// x86-64 AVX-VNNI (VEX vpdpbusd), tiles of 2 weight rows x 4 tokens
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// x86-64 AVX-512 VNNI on 256-bit registers (32 of them), tiles of 4 weight rows x 4 tokens
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Kernel {
    /// Every kernel this CPU can run, best last.
    pub fn available() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut ks = vec![Kernel::Rows];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") {
                ks.push(Kernel::Avx2);
                if is_x86_feature_detected!("avxvnni") {
                    ks.push(Kernel::AvxVnni);
                }
                if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                    ks.push(Kernel::Avx512Vnni);
                }
            }
        }
        ks
    }

    /// The best kernel here, detected once.
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| *Kernel::available().last().unwrap_or(&Kernel::Rows))
    }
}

/// For the weight rows `rows` of the Q8_0 matrix W (n, x's cols) and every row of x:
/// `put(token, r - rows.start, W[r] . x[token])`, each pair exactly once.
pub fn gemm_rows(k: Kernel, w: &[u8], x: QRows, rows: Range<usize>, mut put: impl FnMut(usize, usize, f32)) {
    let rb = q8::row_bytes(x.cols);
    assert!(x.cols > 0 && rows.end * rb <= w.len(), "W holds the rows asked for");
    if rows.is_empty() || x.t == 0 {
        return;
    }
    // SAFETY (every arm): sizes are asserted above and in QRows; a kernel is only in
    // `available()` when the CPU has its instructions
    match k {
        Kernel::Rows => {
            let one = q8::Kernel::best();
            for r in rows.clone() {
                let row = &w[r * rb..(r + 1) * rb];
                for t in 0..x.t {
                    put(t, r - rows.start, one.row_dot(row, x.row(t)));
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => unsafe { x86::gemm_avx2(w, x, rows, &mut put) },
        #[cfg(target_arch = "x86_64")]
        Kernel::AvxVnni => unsafe { x86::gemm_avxvnni(w, x, rows, &mut put) },
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => unsafe { x86::gemm_avx512vnni(w, x, rows, &mut put) },
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{QRows, BLOCK, BLOCK_BYTES, TOKENS};
    use crate::q8::{self, f16_to_f32};
    use std::arch::x86_64::*;
    use std::cell::RefCell;
    use std::ops::Range;

    /// How a block's int8 products are summed.
    const SIGN: u8 = 0; // AVX2: |w| x (x with w's sign), vpmaddubsw + vpmaddwd
    const VNNI512: u8 = 1; // vpdpbusd (EVEX), (x + 128) x w
    const VNNI: u8 = 2; // vpdpbusd (VEX), (x + 128) x w

    thread_local! {
        /// Per pair of weight rows of the current weight block and per block: the two rows'
        /// scales as floats [dw0 x4, dw1 x4], and 128 * their quants' sums [c0 x4, c1 x4].
        static PREP: RefCell<(Vec<f32>, Vec<i32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }

    /// The 8 lanes of one pair's int32 partial sums for one block.
    #[inline(always)]
    unsafe fn lanes<const MODE: u8>(w: __m256i, aw: __m256i, x: __m256i) -> __m256i {
        match MODE {
            SIGN => _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w)), _mm256_set1_epi16(1)),
            VNNI512 => _mm256_dpbusd_epi32(_mm256_setzero_si256(), x, w),
            _ => _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), x, w),
        }
    }

    /// [total(v[0]), ..., total(v[7])]: adjacent lanes, then adjacent pairs, then the two
    /// 128-bit halves, each level a blend of two registers plus a swap of one, exact int32.
    #[inline(always)]
    unsafe fn totals8(v: &[__m256i; 8]) -> __m256i {
        #[inline(always)]
        unsafe fn pairs(a: __m256i, b: __m256i) -> __m256i {
            // even lanes: a's adjacent sums; odd lanes: b's
            let keep = _mm256_blend_epi32(a, b, 0b1010_1010);
            let swap = _mm256_shuffle_epi32(_mm256_blend_epi32(b, a, 0b1010_1010), 0b1011_0001);
            _mm256_add_epi32(keep, swap)
        }
        #[inline(always)]
        unsafe fn quads(a: __m256i, b: __m256i) -> __m256i {
            // per 128-bit half: [a's two, b's two] -> lanes 0, 1 from a, 2, 3 from b
            let keep = _mm256_blend_epi32(a, b, 0b1100_1100);
            let swap = _mm256_shuffle_epi32(_mm256_blend_epi32(b, a, 0b1100_1100), 0b0100_1110);
            _mm256_add_epi32(keep, swap)
        }
        let q0 = quads(pairs(v[0], v[1]), pairs(v[2], v[3]));
        let q1 = quads(pairs(v[4], v[5]), pairs(v[6], v[7]));
        // q0 holds v0..v3's half-sums in each 128-bit half, q1 v4..v7's
        let keep = _mm256_blend_epi32(q0, q1, 0b1111_0000);
        let swap = _mm256_permute2x128_si256(q0, q1, 0x21);
        _mm256_add_epi32(keep, swap)
    }

    /// One tile: RG pairs of weight rows x 4 activation rows over all nb blocks. Lane l of
    /// result g is weight row 2g + l / 4 against token l % 4.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile<const MODE: u8, const RG: usize>(
        w: &[*const u8; 4],
        x: &[*const i8; TOKENS],
        dt: *const f32,
        tpad: usize,
        dw: &[*const f32; 2],
        corr: &[*const i32; 2],
        nb: usize,
    ) -> [__m256; 2] {
        let mut acc = [_mm256_setzero_ps(); 2];
        let flip = _mm256_set1_epi8(-128);
        for b in 0..nb {
            let mut xv = [_mm256_setzero_si256(); TOKENS];
            for c in 0..TOKENS {
                xv[c] = _mm256_loadu_si256(x[c].add(b * BLOCK) as *const __m256i);
                if MODE != SIGN {
                    xv[c] = _mm256_xor_si256(xv[c], flip); // x + 128, as unsigned bytes
                }
            }
            let d4 = _mm_loadu_ps(dt.add(b * tpad));
            let dx = _mm256_set_m128(d4, d4);
            for g in 0..RG {
                let mut v = [_mm256_setzero_si256(); 8];
                for h in 0..2 {
                    let wv = _mm256_loadu_si256(w[2 * g + h].add(b * BLOCK_BYTES + 2) as *const __m256i);
                    let aw = if MODE == SIGN { _mm256_sign_epi8(wv, wv) } else { wv };
                    for c in 0..TOKENS {
                        v[4 * h + c] = lanes::<MODE>(wv, aw, xv[c]);
                    }
                }
                let mut isum = totals8(&v);
                if MODE != SIGN {
                    isum = _mm256_sub_epi32(isum, _mm256_loadu_si256(corr[g].add(8 * b) as *const __m256i));
                }
                let scale = _mm256_mul_ps(_mm256_loadu_ps(dw[g].add(8 * b)), dx);
                acc[g] = _mm256_add_ps(acc[g], _mm256_mul_ps(_mm256_cvtepi32_ps(isum), scale));
            }
        }
        acc
    }

    /// The blocked loop: weight blocks of about 128 KiB (L2), swept by every 4-token tile.
    #[inline(always)]
    unsafe fn gemm<const MODE: u8, const RG: usize>(
        w: &[u8],
        x: QRows,
        rows: Range<usize>,
        put: &mut impl FnMut(usize, usize, f32),
    ) {
        let nb = x.cols / BLOCK;
        let rb = q8::row_bytes(x.cols);
        let tile_rows = 2 * RG;
        let block = ((131072 / rb).clamp(tile_rows, 512) / tile_rows) * tile_rows;
        PREP.with(|cell| {
            let mut prep = cell.borrow_mut();
            let (dws, corrs) = &mut *prep;
            let need = block.div_ceil(2) * nb * 8;
            if dws.len() < need {
                dws.resize(need, 0.0);
                corrs.resize(need, 0);
            }
            let mut b0 = rows.start;
            while b0 < rows.end {
                let b1 = (b0 + block).min(rows.end);
                let pairs = (b1 - b0).div_ceil(2);
                for p in 0..pairs {
                    for h in 0..2 {
                        let r = (b0 + 2 * p + h).min(b1 - 1);
                        for (k, blk) in w[r * rb..(r + 1) * rb].chunks_exact(BLOCK_BYTES).enumerate() {
                            let s: i32 = blk[2..].iter().map(|&q| q as i8 as i32).sum();
                            let at = (p * nb + k) * 8 + 4 * h;
                            dws[at..at + 4].fill(f16_to_f32(u16::from_le_bytes([blk[0], blk[1]])));
                            corrs[at..at + 4].fill(128 * s);
                        }
                    }
                }
                let mut t0 = 0;
                while t0 < x.t {
                    let xp: [*const i8; TOKENS] =
                        std::array::from_fn(|c| x.qs.as_ptr().add((t0 + c).min(x.t - 1) * x.cols));
                    let dt = x.dt.as_ptr().add(t0);
                    let mut r = b0;
                    while r < b1 {
                        let p = (r - b0) / 2;
                        let wp: [*const u8; 4] = std::array::from_fn(|i| w.as_ptr().add((r + i).min(b1 - 1) * rb));
                        let dw: [*const f32; 2] =
                            std::array::from_fn(|g| dws.as_ptr().add((p + g).min(pairs - 1) * nb * 8));
                        let corr: [*const i32; 2] =
                            std::array::from_fn(|g| corrs.as_ptr().add((p + g).min(pairs - 1) * nb * 8));
                        let acc = tile::<MODE, RG>(&wp, &xp, dt, x.tpad, &dw, &corr, nb);
                        for (g, a) in acc.iter().enumerate().take(RG) {
                            let mut out = [0.0f32; 8];
                            _mm256_storeu_ps(out.as_mut_ptr(), *a);
                            for (l, &v) in out.iter().enumerate() {
                                let (row, tok) = (r + 2 * g + l / 4, t0 + l % 4);
                                if row < b1 && tok < x.t {
                                    put(tok, row - rows.start, v);
                                }
                            }
                        }
                        r += tile_rows;
                    }
                    t0 += TOKENS;
                }
                b0 = b1;
            }
        });
    }

    /// SAFETY: the CPU has AVX2; w holds rows.end rows of x.cols values.
    #[target_feature(enable = "avx2")]
    pub unsafe fn gemm_avx2(w: &[u8], x: QRows, rows: Range<usize>, put: &mut impl FnMut(usize, usize, f32)) {
        gemm::<SIGN, 1>(w, x, rows, put)
    }

    /// SAFETY: as gemm_avx2, and the CPU has AVX-VNNI.
    #[target_feature(enable = "avx2,avxvnni")]
    pub unsafe fn gemm_avxvnni(w: &[u8], x: QRows, rows: Range<usize>, put: &mut impl FnMut(usize, usize, f32)) {
        gemm::<VNNI, 1>(w, x, rows, put)
    }

    /// SAFETY: as gemm_avx2, and the CPU has AVX-512 VNNI and VL.
    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    pub unsafe fn gemm_avx512vnni(w: &[u8], x: QRows, rows: Range<usize>, put: &mut impl FnMut(usize, usize, f32)) {
        gemm::<VNNI512, 2>(w, x, rows, put)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{quantize_q8_0, Lcg};

    /// Every kernel against the definition in float64 (exact int sums, scaled per block) and
    /// against the one-token kernel, T across the tile's width, n not a multiple of a tile.
    #[test]
    fn every_kernel_agrees_with_a_plain_loop() {
        let mut rng = Lcg(5);
        let pool = Pool::build(1).expect("a pool of one");
        for d in [32, 64, 96, 288] {
            let nb = d / BLOCK;
            for t in [1, 3, 7, 33] {
                let n = 4 * 3 + 3;
                let wf: Vec<f32> = (0..n * d).map(|_| rng.float()).collect();
                let w = quantize_q8_0(&wf);
                // row 1, block 0 all zero (amax 0), the rest across a few magnitudes
                let x: Vec<f32> =
                    (0..t * d).map(|i| if i / d == 1 && i % d < BLOCK { 0.0 } else { rng.float() * 3.0 }).collect();
                let mut buf = Rows::with_capacity(33, 288).expect("small buffers");
                let q = buf.quantize(&pool, &x, t, d);
                let mut one = q8::Activation::with_capacity(d);
                for tok in 0..t {
                    let single = one.quantize(&x[tok * d..(tok + 1) * d]);
                    assert!(single.qs == q.row(tok).qs && single.d == q.row(tok).d, "rows quantize as one vector does");
                }
                for &k in &Kernel::available() {
                    for rows in [0..n, 3..n - 2] {
                        let mut out = vec![f32::NAN; t * n];
                        let mut seen = vec![0u32; t * n];
                        gemm_rows(k, &w, q, rows.clone(), |tok, i, v| {
                            out[tok * n + rows.start + i] = v;
                            seen[tok * n + rows.start + i] += 1;
                        });
                        for tok in 0..t {
                            let xr = q.row(tok);
                            for r in 0..n {
                                let got = out[tok * n + r];
                                if !rows.contains(&r) {
                                    assert!(got.is_nan() && seen[tok * n + r] == 0, "{k:?} wrote outside its rows");
                                    continue;
                                }
                                assert_eq!(seen[tok * n + r], 1, "{k:?}: each element once");
                                let row = &w[r * nb * BLOCK_BYTES..(r + 1) * nb * BLOCK_BYTES];
                                let (mut want, mut mag) = (0.0f64, 0.0f64);
                                for b in 0..nb {
                                    let blk = &row[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
                                    let isum: i32 =
                                        (0..BLOCK).map(|i| blk[2 + i] as i8 as i32 * xr.qs[b * BLOCK + i] as i32).sum();
                                    let dw = q8::f16_to_f32(u16::from_le_bytes([blk[0], blk[1]]));
                                    let term = isum as f32 as f64 * (dw * xr.d[b]) as f64;
                                    want += term;
                                    mag += term.abs();
                                }
                                let bound = 2.0 * nb as f64 * f32::EPSILON as f64 * mag + 1e-30;
                                assert!(
                                    (got as f64 - want).abs() <= bound,
                                    "{k:?} d={d} t={t} row {r} tok {tok}: {got} vs {want}"
                                );
                                let single = q8::Kernel::best().row_dot(row, xr) as f64;
                                assert!(
                                    (got as f64 - single).abs() <= 2.0 * bound,
                                    "{k:?} against the one-token kernel"
                                );
                            }
                        }
                    }
                }
            }
        }
        pool.free();
    }

    #[test]
    fn the_best_kernel_is_tiled_where_the_cpu_can() {
        assert_eq!(Some(&Kernel::best()), Kernel::available().last());
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
            assert_eq!(Kernel::best(), Kernel::Avx512Vnni);
        }
    }
}
