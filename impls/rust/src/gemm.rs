//! The batched forward pass's float32 product: out(T, n) = X(T, d) @ W(n, d)^T, with W row-major
//! as the file stores it (never repacked) and X the batch's activation rows.
//!
//! A prompt batch turns decoding's memory-bound matrix-vector products into compute-bound ones:
//! each weight row is loaded once and used against every activation row of the batch. The
//! kernel is a register tile of R = 4 weight rows x C activation rows, R * C vector accumulators
//! along d, each summed horizontally once at the end of the row. Around it, cache blocking: a
//! block of weight rows (about 256 KiB, so it stays in L2) is swept by every tile of activation
//! rows in turn, and within the sweep a tile's C activation rows stay in L1 while the block's
//! weight rows stream past them; so every weight row comes from memory once per batch and each
//! activation tile once per weight block.
//!
//! Kernels, picked once at run time: AVX-512F (4 x 6 zmm accumulators, masked loads for the
//! tail of d), AVX2 + FMA (4 x 3 ymm accumulators: with x's three vectors and one weight vector
//! that is all 16 registers), and a portable one of fixed-size lane arrays that the compiler
//! vectorises for whatever the target has (NEON on arm64). Where the CPU has AVX-512F and the
//! batch has at least PACK_MIN_T rows, `packed` replaces the dot-product tile: the weight block
//! is copied into transposed panels once per call and the kernel is outer products, with no
//! horizontal sums and half the L2 traffic per FMA.

use std::ops::Range;
use std::sync::OnceLock;

/// Weight rows per register tile.
pub const R: usize = 4;
/// The most activation rows a tile of any kernel takes.
const C_MAX: usize = 6;

/// The float32 tile kernels, by instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// fixed-size lane arrays, vectorised by the compiler for the target
    Portable,
    /// x86-64 AVX2 + FMA, 4 x 3 tiles of 256-bit accumulators
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// x86-64 AVX-512F, 4 x 6 tiles of 512-bit accumulators
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// x86-64 AVX-512F on packed panels: 32 weight rows x 12 activation rows of outer products
    /// (Avx512 below PACK_MIN_T activation rows)
    #[cfg(target_arch = "x86_64")]
    Avx512Packed,
}

impl Kernel {
    /// Every kernel this CPU can run, best last.
    pub fn available() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut ks = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                ks.push(Kernel::Avx2);
            }
            if is_x86_feature_detected!("avx512f") {
                ks.push(Kernel::Avx512);
                ks.push(Kernel::Avx512Packed);
            }
        }
        ks
    }

    /// The best kernel here, detected once.
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| *Kernel::available().last().unwrap_or(&Kernel::Portable))
    }

    /// Activation rows per tile.
    fn cols(self) -> usize {
        match self {
            Kernel::Portable => 4,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => 3,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Avx512Packed => 6,
        }
    }

    /// The dot products of 4 weight rows with `c` activation rows, each `d` long: out[i][j] =
    /// w[i] . x[j], for j < c.
    ///
    /// # Safety
    /// Each pointer reads d floats; the kernel is in `available()`.
    #[inline(always)]
    unsafe fn tile(self, w: &[*const f32; R], x: &[*const f32; C_MAX], c: usize, d: usize) -> [[f32; C_MAX]; R] {
        macro_rules! by_cols {
            ($f:ident) => {
                match c {
                    1 => $f::<1>(w, x, d),
                    2 => $f::<2>(w, x, d),
                    3 => $f::<3>(w, x, d),
                    4 => $f::<4>(w, x, d),
                    5 => $f::<5>(w, x, d),
                    _ => $f::<6>(w, x, d),
                }
            };
        }
        unsafe {
            match self {
                Kernel::Portable => by_cols!(tile_portable),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => by_cols!(tile_avx2),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512 | Kernel::Avx512Packed => by_cols!(tile_avx512),
            }
        }
    }
}

/// Weight rows per cache block: about 256 KiB of them, a multiple of R.
pub fn row_block(d: usize) -> usize {
    ((65536 / d.max(1)).clamp(R, 256) / R) * R
}

/// For the weight rows `rows` of W (n, d) and the `t` activation rows of X (t, d):
/// `put(token, r - rows.start, W[r] . X[token])` for every pair, each exactly once.
#[inline(always)]
pub fn gemm_rows(
    k: Kernel,
    w: &[f32],
    x: &[f32],
    d: usize,
    t: usize,
    rows: Range<usize>,
    put: impl FnMut(usize, usize, f32),
) {
    gemm_rows_strided(k, (w, d), (x, d), d, t, rows, put)
}

/// gemm_rows with rows `w_stride` and `x_stride` floats apart (attention's keys in the cache,
/// one head's queries in the batch's rows).
pub fn gemm_rows_strided(
    k: Kernel,
    (w, w_stride): (&[f32], usize),
    (x, x_stride): (&[f32], usize),
    d: usize,
    t: usize,
    rows: Range<usize>,
    mut put: impl FnMut(usize, usize, f32),
) {
    let ends = |n: usize, stride: usize, len: usize| n == 0 || (n - 1) * stride + d <= len;
    assert!(
        d > 0 && ends(rows.end, w_stride, w.len()) && ends(t, x_stride, x.len()),
        "W and X hold the rows asked for"
    );
    if rows.is_empty() || t == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if k == Kernel::Avx512Packed && t >= PACK_MIN_T {
        // SAFETY: the sizes are asserted above; Avx512Packed is only available with AVX-512F
        unsafe { packed::gemm((w, w_stride), (x, x_stride), d, t, rows, &mut put) };
        return;
    }
    let cols = k.cols();
    let block = row_block(d);
    let mut b0 = rows.start;
    while b0 < rows.end {
        let b1 = (b0 + block).min(rows.end);
        let mut t0 = 0;
        while t0 < t {
            let c = (t - t0).min(cols);
            // SAFETY: rows t0 .. t0 + c of X are inside x (asserted above)
            let xp: [*const f32; C_MAX] =
                std::array::from_fn(|j| unsafe { x.as_ptr().add((t0 + j.min(c - 1)) * x_stride) });
            let mut r = b0;
            while r < b1 {
                let nr = (b1 - r).min(R);
                // a short last group repeats its last row; those results are dropped
                // SAFETY: rows r .. r + nr of W are inside w (asserted above)
                let wp: [*const f32; R] =
                    std::array::from_fn(|i| unsafe { w.as_ptr().add((r + i.min(nr - 1)) * w_stride) });
                // SAFETY: every pointer reads d floats of W or X; k came from available()
                let s = unsafe { k.tile(&wp, &xp, c, d) };
                for (i, si) in s.iter().enumerate().take(nr) {
                    for (j, &v) in si.iter().enumerate().take(c) {
                        put(t0 + j, r + i - rows.start, v);
                    }
                }
                r += R;
            }
            t0 += c;
        }
        b0 = b1;
    }
}

/// Activation rows from which the packed kernel pays for its packing.
#[cfg(target_arch = "x86_64")]
const PACK_MIN_T: usize = 16;

/// The packed AVX-512 kernel: outer products instead of dot products, so no horizontal sums.
/// A block of weight rows is copied, transposed, into panels of 32 rows (panel[k] = the 32 rows'
/// values at column k, 128 bytes), and a tile of 12 activation rows into tile[k] = their 12
/// values at k. Then for each k: two weight vectors, 12 broadcasts, 24 FMAs into 24 zmm
/// accumulators, each holding 16 weight rows' sums for one activation row. The panels stay in
/// L2 while every activation tile sweeps them; each output is one FMA chain along d, so the
/// sums are sequential rather than in 16 lanes.
#[cfg(target_arch = "x86_64")]
mod packed {
    use std::arch::x86_64::*;
    use std::cell::RefCell;
    use std::ops::Range;

    const PANEL: usize = 32;
    const TILE: usize = 12;

    thread_local! {
        /// This thread's packed weight block, then its packed activation tile.
        static PACK: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }

    /// Weight rows per block: about 256 KiB of them, whole panels.
    fn block_rows(d: usize) -> usize {
        ((65536 / d.max(1)).clamp(PANEL, 1024) / PANEL) * PANEL
    }

    #[inline(always)]
    unsafe fn tile<const C: usize>(panel: *const f32, xt: *const f32, d: usize, out: &mut [[f32; PANEL]; TILE]) {
        let mut acc = [[_mm512_setzero_ps(); 2]; C];
        for k in 0..d {
            // SAFETY: the panel holds d * 32 floats, the tile d * 12
            unsafe {
                let w0 = _mm512_loadu_ps(panel.add(k * PANEL));
                let w1 = _mm512_loadu_ps(panel.add(k * PANEL + 16));
                for c in 0..C {
                    let xv = _mm512_set1_ps(*xt.add(k * TILE + c));
                    acc[c][0] = _mm512_fmadd_ps(w0, xv, acc[c][0]);
                    acc[c][1] = _mm512_fmadd_ps(w1, xv, acc[c][1]);
                }
            }
        }
        for c in 0..C {
            // SAFETY: out[c] holds 32 floats
            unsafe {
                _mm512_storeu_ps(out[c].as_mut_ptr(), acc[c][0]);
                _mm512_storeu_ps(out[c].as_mut_ptr().add(16), acc[c][1]);
            }
        }
    }

    /// As gemm_rows_strided.
    ///
    /// # Safety
    /// The CPU has AVX-512F; W and X hold the rows asked for (the caller asserts it).
    #[target_feature(enable = "avx512f")]
    pub unsafe fn gemm(
        (w, ws): (&[f32], usize),
        (x, xs): (&[f32], usize),
        d: usize,
        t: usize,
        rows: Range<usize>,
        put: &mut impl FnMut(usize, usize, f32),
    ) {
        let block = block_rows(d);
        PACK.with(|cell| {
            let mut bufs = cell.borrow_mut();
            let (wp, xp) = &mut *bufs;
            if wp.len() < block * d {
                wp.resize(block * d, 0.0);
            }
            let tiles = t.div_ceil(TILE);
            if xp.len() < tiles * TILE * d {
                xp.resize(tiles * TILE * d, 0.0);
            }
            // every activation tile packed once: tile q, column k, row j at (q * d + k) * 12 + j
            for q in 0..tiles {
                let dst = &mut xp[q * d * TILE..(q + 1) * d * TILE];
                for j in 0..TILE.min(t - q * TILE) {
                    let row = &x[(q * TILE + j) * xs..(q * TILE + j) * xs + d];
                    for (k, &v) in row.iter().enumerate() {
                        dst[k * TILE + j] = v;
                    }
                }
            }
            let xp = &*xp;
            let mut out = [[0.0f32; PANEL]; TILE];
            let mut b0 = rows.start;
            while b0 < rows.end {
                let b1 = (b0 + block).min(rows.end);
                let panels = (b1 - b0).div_ceil(PANEL);
                for p in 0..panels {
                    let dst = &mut wp[p * d * PANEL..(p + 1) * d * PANEL];
                    let src: [&[f32]; PANEL] = std::array::from_fn(|l| {
                        let r = b0 + p * PANEL + l;
                        if r < b1 {
                            &w[r * ws..r * ws + d]
                        } else {
                            &[]
                        }
                    });
                    // a whole panel line (32 floats) at a time; rows past the block are zeros
                    for (k, line) in dst.chunks_exact_mut(PANEL).enumerate() {
                        for (v, row) in line.iter_mut().zip(&src) {
                            *v = row.get(k).copied().unwrap_or(0.0);
                        }
                    }
                }
                let mut t0 = 0;
                while t0 < t {
                    let c = (t - t0).min(TILE);
                    let xt = xp[t0 * d..].as_ptr(); // tile t0 / 12
                    for p in 0..panels {
                        let panel = wp[p * d * PANEL..].as_ptr();
                        // SAFETY: the panel and the tile are packed above, d columns each
                        unsafe {
                            match c {
                                1 => tile::<1>(panel, xt, d, &mut out),
                                2 => tile::<2>(panel, xt, d, &mut out),
                                3 => tile::<3>(panel, xt, d, &mut out),
                                4 => tile::<4>(panel, xt, d, &mut out),
                                5 => tile::<5>(panel, xt, d, &mut out),
                                6 => tile::<6>(panel, xt, d, &mut out),
                                7 => tile::<7>(panel, xt, d, &mut out),
                                8 => tile::<8>(panel, xt, d, &mut out),
                                9 => tile::<9>(panel, xt, d, &mut out),
                                10 => tile::<10>(panel, xt, d, &mut out),
                                11 => tile::<11>(panel, xt, d, &mut out),
                                _ => tile::<12>(panel, xt, d, &mut out),
                            }
                        }
                        let r0 = b0 + p * PANEL;
                        for (j, o) in out.iter().enumerate().take(c) {
                            for (l, &v) in o.iter().enumerate().take(PANEL.min(b1 - r0)) {
                                put(t0 + j, r0 + l - rows.start, v);
                            }
                        }
                    }
                    t0 += c;
                }
                b0 = b1;
            }
        });
    }
}

#[inline(always)]
fn fmadd(a: f32, b: f32, c: f32) -> f32 {
    crate::kernels::fmadd(a, b, c)
}

/// 8 lanes per accumulator, in plain arrays the compiler keeps in vector registers.
#[inline(always)]
unsafe fn tile_portable<const C: usize>(w: &[*const f32; R], x: &[*const f32; C_MAX], d: usize) -> [[f32; C_MAX]; R] {
    const L: usize = 8;
    // SAFETY (every read below): each pointer holds d floats and j + L <= d, or j < d
    let (ws, xs): ([&[f32]; R], [&[f32]; C]) = unsafe {
        (
            std::array::from_fn(|i| std::slice::from_raw_parts(w[i], d)),
            std::array::from_fn(|j| std::slice::from_raw_parts(x[j], d)),
        )
    };
    let mut acc = [[[0.0f32; L]; C]; R];
    let whole = d - d % L;
    let mut j = 0;
    while j < whole {
        for c in 0..C {
            let xv = &xs[c][j..j + L];
            for i in 0..R {
                let wv = &ws[i][j..j + L];
                for l in 0..L {
                    acc[i][c][l] = fmadd(wv[l], xv[l], acc[i][c][l]);
                }
            }
        }
        j += L;
    }
    let mut out = [[0.0f32; C_MAX]; R];
    for i in 0..R {
        for c in 0..C {
            let a = acc[i][c];
            let mut s = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
            for k in whole..d {
                s = fmadd(ws[i][k], xs[c][k], s);
            }
            out[i][c] = s;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const C: usize>(w: &[*const f32; R], x: &[*const f32; C_MAX], d: usize) -> [[f32; C_MAX]; R] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    let mut j = 0;
    // SAFETY (every load): each pointer holds d floats and j + 8 <= d
    unsafe {
        while j + 8 <= d {
            let mut xv = [_mm256_setzero_ps(); C];
            for c in 0..C {
                xv[c] = _mm256_loadu_ps(x[c].add(j));
            }
            for i in 0..R {
                let wv = _mm256_loadu_ps(w[i].add(j));
                for c in 0..C {
                    acc[i][c] = _mm256_fmadd_ps(wv, xv[c], acc[i][c]);
                }
            }
            j += 8;
        }
    }
    let mut out = [[0.0f32; C_MAX]; R];
    for i in 0..R {
        for c in 0..C {
            let a = acc[i][c];
            let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let mut s = _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
            for k in j..d {
                // SAFETY: k < d
                s = unsafe { (*w[i].add(k)).mul_add(*x[c].add(k), s) };
            }
            out[i][c] = s;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const C: usize>(w: &[*const f32; R], x: &[*const f32; C_MAX], d: usize) -> [[f32; C_MAX]; R] {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut j = 0;
    // SAFETY (every load): each pointer holds d floats; a full load has j + 16 <= d, the masked
    // one touches only the d - j floats left
    unsafe {
        while j + 16 <= d {
            let mut wv = [_mm512_setzero_ps(); R];
            for i in 0..R {
                wv[i] = _mm512_loadu_ps(w[i].add(j));
            }
            for c in 0..C {
                let xv = _mm512_loadu_ps(x[c].add(j));
                for i in 0..R {
                    acc[i][c] = _mm512_fmadd_ps(wv[i], xv, acc[i][c]);
                }
            }
            j += 16;
        }
        if j < d {
            let m: __mmask16 = ((1u32 << (d - j)) - 1) as u16;
            let mut wv = [_mm512_setzero_ps(); R];
            for i in 0..R {
                wv[i] = _mm512_maskz_loadu_ps(m, w[i].add(j));
            }
            for c in 0..C {
                let xv = _mm512_maskz_loadu_ps(m, x[c].add(j));
                for i in 0..R {
                    acc[i][c] = _mm512_fmadd_ps(wv[i], xv, acc[i][c]);
                }
            }
        }
    }
    // the R * C horizontal sums, 16 at a time through one reduction tree
    let mut flat = [_mm512_setzero_ps(); 32];
    for i in 0..R {
        for c in 0..C {
            flat[i * C + c] = acc[i][c];
        }
    }
    let mut sums = [0.0f32; 32];
    for g in 0..(R * C).div_ceil(16) {
        // SAFETY: g * 16 + 16 <= 32 for R * C <= 24
        unsafe { sums16(&*(flat.as_ptr().add(16 * g) as *const [__m512; 16]), &mut sums[16 * g..16 * g + 16]) };
    }
    let mut out = [[0.0f32; C_MAX]; R];
    for i in 0..R {
        for c in 0..C {
            out[i][c] = sums[i * C + c];
        }
    }
    out
}

/// out[k] = the sum of v[k]'s 16 lanes, for 16 vectors at once: four levels that each add two
/// registers' halves, quarters, pairs and lanes, 30 shuffles and 15 adds where a reduction per
/// vector takes about 128 instructions; for short rows (attention's head_size) it is most of a
/// tile's work.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn sums16(v: &[std::arch::x86_64::__m512; 16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    // 128-bit lanes [a0+a2, a1+a3, b0+b2, b1+b3]
    let mut s = [_mm512_setzero_ps(); 8];
    for k in 0..8 {
        let (a, b) = (v[2 * k], v[2 * k + 1]);
        s[k] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
    }
    // 128-bit lane j holds 4 partial sums of v[4m + j]
    let mut u = [_mm512_setzero_ps(); 4];
    for m in 0..4 {
        let (a, b) = (s[2 * m], s[2 * m + 1]);
        u[m] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
    }
    // lane j: two partials of v[8p + j], then two of v[8p + 4 + j]
    let mut z = [_mm512_setzero_ps(); 2];
    for p in 0..2 {
        let (a, b) = (u[2 * p], u[2 * p + 1]);
        z[p] = _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x88), _mm512_shuffle_ps(a, b, 0xDD));
    }
    // element 4j + e is the total of v[j + 4e]
    let f = _mm512_add_ps(_mm512_shuffle_ps(z[0], z[1], 0x88), _mm512_shuffle_ps(z[0], z[1], 0xDD));
    let mut t = [0.0f32; 16];
    unsafe { _mm512_storeu_ps(t.as_mut_ptr(), f) };
    for j in 0..4 {
        for e in 0..4 {
            out[j + 4 * e] = t[4 * j + e];
        }
    }
}

/// A (rows, stride) float matrix that a pool job's threads write in disjoint columns.
#[derive(Clone, Copy)]
pub struct OutMat {
    ptr: *mut f32,
    len: usize,
    stride: usize,
}

// SAFETY: every job writes elements no other thread touches during that job (its own weight rows,
// or its own (row, head) pairs).
unsafe impl Sync for OutMat {}
unsafe impl Send for OutMat {}

impl OutMat {
    pub fn new(v: &mut [f32], stride: usize) -> OutMat {
        OutMat { ptr: v.as_mut_ptr(), len: v.len(), stride }
    }

    /// Element (row, col).
    ///
    /// # Safety
    /// No other thread touches that element during the job.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn at(&self, row: usize, col: usize) -> &mut f32 {
        let i = row * self.stride + col;
        assert!(col < self.stride && i < self.len);
        unsafe { &mut *self.ptr.add(i) }
    }

    /// Columns `cols` of row `row`.
    ///
    /// # Safety
    /// No other thread touches them during the job.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, row: usize, cols: Range<usize>) -> &mut [f32] {
        let i = row * self.stride + cols.start;
        assert!(cols.start <= cols.end && cols.end <= self.stride && i + cols.len() <= self.len);
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i), cols.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Lcg;

    /// Every kernel the CPU has against a float64 loop, with tails in every dimension: T across a
    /// tile's width, n not a multiple of R nor of a block, d with and without a vector tail.
    #[test]
    fn every_kernel_agrees_with_a_plain_loop() {
        let mut rng = Lcg(11);
        for d in [1, 7, 16, 64, 96, 172, 288] {
            for t in [1, 2, 5, 7, 16, 33] {
                let n = 4 * 3 + 3 + if d == 7 { row_block(d) } else { 0 };
                let w: Vec<f32> = (0..n * d).map(|_| rng.float()).collect();
                let x: Vec<f32> = (0..t * d).map(|_| rng.float()).collect();
                for &k in &Kernel::available() {
                    for rows in [0..n, 3..n - 1] {
                        let mut out = vec![f32::NAN; t * n];
                        let mut seen = vec![0u32; t * n];
                        gemm_rows(k, &w, &x, d, t, rows.clone(), |tok, i, v| {
                            out[tok * n + rows.start + i] = v;
                            seen[tok * n + rows.start + i] += 1;
                        });
                        for tok in 0..t {
                            for r in 0..n {
                                let got = out[tok * n + r];
                                if !rows.contains(&r) {
                                    assert!(got.is_nan() && seen[tok * n + r] == 0, "{k:?} wrote outside its rows");
                                    continue;
                                }
                                assert_eq!(seen[tok * n + r], 1, "{k:?}: each element once");
                                let (want, mag) = (0..d).fold((0.0f64, 0.0f64), |(s, m), j| {
                                    let p = w[r * d + j] as f64 * x[tok * d + j] as f64;
                                    (s + p, m + p.abs())
                                });
                                let bound = 2.0 * d as f64 * f32::EPSILON as f64 * mag + 1e-30;
                                assert!(
                                    (got as f64 - want).abs() <= bound,
                                    "{k:?} d={d} t={t} row {r} token {tok}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_best_kernel_uses_the_vector_unit() {
        assert_eq!(Some(&Kernel::best()), Kernel::available().last());
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx512f") {
            assert_eq!(Kernel::best(), Kernel::Avx512Packed);
        }
    }
}
