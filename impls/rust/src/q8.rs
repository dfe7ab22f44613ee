//! GGUF Q8_0: matrices stored as blocks of 32 int8 values sharing one fp16 scale, and
//! their matrix-vector product as llama.cpp's CPU backend computes it.
//!
//! A block is 34 bytes: the scale `d` (fp16, little-endian), then 32 int8 `qs`; value i is
//! fp32(d) * qs[i]. The blocks stay where the file was loaded; at 34 bytes a block's scale lands
//! on any byte, so scales are read a byte pair at a time, never through a wider pointer.
//!
//! The product quantizes the activation x to Q8_0 too (once per group of matmuls that share x),
//! so that each block's dot product is an exact int32 sum of int8 products; only the scaling and
//! the sum over blocks are float: out[r] = sum_b float(isum[r][b]) * (fp32(dw[r][b]) * dx[b]).
//! The integer part is where the SIMD is: AVX-512 VNNI or AVX2 on x86-64, NEON (with the dot
//! product instructions where the CPU has them) on arm64, a plain loop elsewhere; the kernel is
//! picked once at run time, so every one the CPU runs can be tested against the plain loop.

use std::ops::Range;
use std::sync::OnceLock;

/// Values per block.
pub const BLOCK: usize = 32;
/// Bytes per block: the fp16 scale, then the 32 quants.
pub const BLOCK_BYTES: usize = 34;

/// Bytes of a Q8_0 row of `cols` values (a multiple of BLOCK).
pub fn row_bytes(cols: usize) -> usize {
    cols / BLOCK * BLOCK_BYTES
}

// ----------------------------------------------------------------------------
// fp16, in software: Rust's f16 is not stable, and conversions happen once per block of 32

/// The fp16 value with bits `h`, exactly (every fp16 is an f32).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = (h as u32 & 0x8000) << 16;
    let exp = (h as u32 >> 10) & 0x1f;
    let man = h as u32 & 0x3ff;
    match exp {
        0 => {
            // zero or subnormal: man * 2^-24, exact
            let v = man as f32 * (1.0 / 16_777_216.0);
            f32::from_bits(sign | v.to_bits())
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (man << 13)), // infinity, NaN
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)), // rebias 15 -> 127
    }
}

/// x rounded to the nearest fp16, ties to even (what numpy's astype(float16) and F16C do).
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let a = bits & 0x7fff_ffff;
    if a > 0x7f80_0000 {
        return sign | 0x7e00; // NaN stays NaN
    }
    if a >= 0x477f_f000 {
        return sign | 0x7c00; // 65520 and up: past the midpoint above the largest fp16, 65504
    }
    if a < 0x3880_0000 {
        // below 2^-14, fp16 is subnormal: a multiple of 2^-24. Scaling by 2^24 is exact, and a
        // result of 1024 is the smallest normal's bit pattern, as it should be.
        return sign | (f32::from_bits(a) * 16_777_216.0).round_ties_even() as u16;
    }
    // normal: rebias the exponent (127 -> 15), keep 10 of 23 mantissa bits, round the other 13;
    // a carry out of the mantissa correctly bumps the exponent
    let mut h = (a >> 13) - (112 << 10);
    let rest = a & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && h & 1 == 1) {
        h += 1;
    }
    sign | h as u16
}

/// The scale of the block starting at `block[0]`, as f32.
#[inline(always)]
fn block_scale(block: &[u8]) -> f32 {
    f16_to_f32(u16::from_le_bytes([block[0], block[1]]))
}

/// Row `r` of a Q8_0 matrix of `cols` columns, dequantized into `out` (cols long).
pub fn dequantize_row(w: &[u8], r: usize, out: &mut [f32]) {
    let n = row_bytes(out.len());
    for (block, vals) in w[r * n..(r + 1) * n].chunks_exact(BLOCK_BYTES).zip(out.chunks_exact_mut(BLOCK)) {
        let d = block_scale(block);
        for (v, &q) in vals.iter_mut().zip(&block[2..]) {
            *v = d * q as i8 as f32;
        }
    }
}

// ----------------------------------------------------------------------------
// The activation, quantized

/// Buffers for an activation vector quantized to Q8_0, allocated once (run state).
pub struct Activation {
    qs: Vec<i8>,
    d: Vec<f32>,
}

/// A quantized activation: the quants, and per block the scale the dot product uses.
#[derive(Clone, Copy)]
pub struct Quantized<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
}

impl Activation {
    /// Room for vectors of up to `n` values.
    pub fn with_capacity(n: usize) -> Activation {
        Activation { qs: vec![0; n], d: vec![0.0; n / BLOCK] }
    }

    /// x (whole blocks) as llama.cpp's SIMD `quantize_row_q8_0` does it, which the reference
    /// follows: amax = max |x|, the scale dx = fp16(amax / 127) used as f32, and q = x * (127 /
    /// amax) rounded to nearest, ties to even (the vector instructions' rounding mode; the
    /// weights' quantizer rounds ties away from zero instead).
    pub fn quantize(&mut self, x: &[f32]) -> Quantized<'_> {
        let n = x.len() / BLOCK * BLOCK;
        debug_assert_eq!(n, x.len(), "a Q8_0 activation is whole blocks");
        let (qs, ds) = (&mut self.qs[..n], &mut self.d[..n / BLOCK]);
        for ((xs, q), d) in x.chunks_exact(BLOCK).zip(qs.chunks_exact_mut(BLOCK)).zip(ds.iter_mut()) {
            *d = quantize_block(xs, q);
        }
        Quantized { qs: &self.qs[..n], d: &self.d[..n / BLOCK] }
    }
}

/// One block of 32 activations into `q`, its scale back (`Activation::quantize`'s rule; the
/// batched pass quantizes each row of its activation matrices with it too).
#[inline(always)]
pub fn quantize_block(xs: &[f32], q: &mut [i8]) -> f32 {
    // NaN wins, as in numpy's max: a NaN activation must give NaN logits, not zeros
    let amax = xs.iter().fold(0.0f32, |m, v| if v.abs() > m || v.is_nan() { v.abs() } else { m });
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for (qi, &v) in q.iter_mut().zip(xs) {
        *qi = (v * id).round_ties_even() as i8; // |v * id| <= 127 (rounded): no saturation
    }
    f16_to_f32(f32_to_f16(amax / 127.0))
}

// ----------------------------------------------------------------------------
// The product

/// The integer kernels, by instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// plain Rust, any target
    Portable,
    /// x86-64: vpsignb + vpmaddubsw + vpmaddwd on 256-bit vectors
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// x86-64: the sign trick, then vpdpbusd (AVX-512 VNNI, 256-bit form) on 256-bit vectors
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// arm64: smull + sadalp
    #[cfg(target_arch = "aarch64")]
    Neon,
    /// arm64 with the dot product extension: sdot
    #[cfg(target_arch = "aarch64")]
    NeonDot,
}

impl Kernel {
    /// Every kernel this CPU can run, best last.
    pub fn available() -> Vec<Kernel> {
        #[allow(unused_mut)]
        let mut ks = vec![Kernel::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
                ks.push(Kernel::Avx2);
                if is_x86_feature_detected!("avx512vnni") && is_x86_feature_detected!("avx512vl") {
                    ks.push(Kernel::Avx512Vnni);
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            ks.push(Kernel::Neon); // NEON is part of the arm64 baseline
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                ks.push(Kernel::NeonDot);
            }
        }
        ks
    }

    /// The best kernel here, detected once.
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| *Kernel::available().last().unwrap_or(&Kernel::Portable))
    }

    /// One row of W (its blocks) times the quantized x.
    #[inline]
    pub fn row_dot(self, w: &[u8], x: Quantized) -> f32 {
        let nb = x.d.len();
        assert!(w.len() == nb * BLOCK_BYTES && x.qs.len() == nb * BLOCK, "Q8_0 row and activation sizes agree");
        // SAFETY (every arm): the sizes are checked above, and a kernel is only in `available()`
        // when the CPU has the instructions it is compiled for
        match self {
            Kernel::Portable => row_dot_portable(w, x),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { x86::row_dot_avx2(w.as_ptr(), x.qs.as_ptr(), x.d.as_ptr(), nb) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => unsafe { x86::row_dot_vnni(w.as_ptr(), x.qs.as_ptr(), x.d.as_ptr(), nb) },
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => unsafe { arm::row_dot_neon(w.as_ptr(), x.qs.as_ptr(), x.d.as_ptr(), nb) },
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonDot => unsafe { arm::row_dot_sdot(w.as_ptr(), x.qs.as_ptr(), x.d.as_ptr(), nb) },
        }
    }
}

/// W[r] . x for each row r in `rows` of the Q8_0 matrix W, handed to `put(r - rows.start, value)`.
pub fn matvec_rows(w: &[u8], x: Quantized, rows: Range<usize>, mut put: impl FnMut(usize, f32)) {
    let n = x.d.len() * BLOCK_BYTES;
    let kernel = Kernel::best();
    let ahead = prefetch_rows();
    for r in rows.clone() {
        if ahead > 0 && r + ahead < rows.end {
            for line in w[(r + ahead) * n..(r + ahead + 1) * n].chunks(64) {
                prefetch(line.as_ptr());
            }
        }
        put(r - rows.start, kernel.row_dot(&w[r * n..(r + 1) * n], x));
    }
}

/// How many rows ahead `matvec_rows` asks for every cache line of a row: each row is one
/// sequential stream of 34-byte blocks, read once, and the hardware prefetcher alone left the
/// 110M shape at about 10 GB/s where the f32 kernel (four rows at a time) streams 15; the lever
/// is measured in docs/journal.md. `POLYLLAMA_Q8_PREFETCH=0` turns it off, for before/after runs.
fn prefetch_rows() -> usize {
    static ROWS: OnceLock<usize> = OnceLock::new();
    *ROWS.get_or_init(|| if std::env::var_os("POLYLLAMA_Q8_PREFETCH").is_some_and(|v| v == "0") { 0 } else { 4 })
}

/// A hint to bring the cache line at `p` into L1; it never faults, and does nothing elsewhere.
#[inline(always)]
fn prefetch(p: *const u8) {
    // SAFETY: prefetches are hints that do not fault, whatever the address
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p as *const i8)
    };
    #[cfg(target_arch = "aarch64")]
    unsafe {
        std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) p, options(nostack, readonly, preserves_flags))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    let _ = p;
}

/// The exact int32 dot product of one block's quants with 32 activation quants.
#[inline(always)]
fn block_isum(qw: &[u8], qx: &[i8]) -> i32 {
    qw.iter().zip(qx).map(|(&w, &x)| w as i8 as i32 * x as i32).sum()
}

/// The definition, block after block.
fn row_dot_portable(w: &[u8], x: Quantized) -> f32 {
    let mut sum = 0.0f32;
    for ((block, qx), &dx) in w.chunks_exact(BLOCK_BYTES).zip(x.qs.chunks_exact(BLOCK)).zip(x.d) {
        sum += block_isum(&block[2..], qx) as f32 * (block_scale(block) * dx);
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! One block per 256-bit register. |w| (unsigned) times x with w's sign is the signed product
    //! that vpmaddubsw and vpdpbusd (unsigned x signed) can take: exact, since |w| <= 128 and
    //! |x| <= 127 keep even vpmaddubsw's pairs (<= 32512) clear of its int16 saturation.
    //! Eight blocks' int32 lanes are then reduced to eight exact sums, scaled and summed in
    //! float eight at a time.
    use super::{block_scale, BLOCK, BLOCK_BYTES};
    use std::arch::x86_64::*;

    /// The eight int32 partial sums of one block (their total is the block's isum).
    #[inline(always)]
    unsafe fn block_lanes<const VNNI: bool>(w: *const u8, x: *const i8) -> __m256i {
        let qw = _mm256_loadu_si256(w as *const __m256i);
        let qx = _mm256_loadu_si256(x as *const __m256i);
        let aw = _mm256_sign_epi8(qw, qw); // |w|; -128 stays 0x80, which is 128 unsigned
        let sx = _mm256_sign_epi8(qx, qw); // x * sign(w), 0 where w is 0
        if VNNI {
            _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sx)
        } else {
            _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1))
        }
    }

    /// The total of the eight lanes of v.
    #[inline(always)]
    unsafe fn lane_total(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_hadd_epi32(s, s);
        _mm_cvtsi128_si32(_mm_hadd_epi32(s, s))
    }

    /// [total(v[0]), ..., total(v[7])], by horizontal adds: exact int32 throughout.
    #[inline(always)]
    unsafe fn totals8(v: [__m256i; 8]) -> __m256i {
        // per 128-bit half: pairs, then quads; the low halves hold lanes 0-3 of each block, the
        // high halves lanes 4-7
        let q0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
        let q1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
        let lo = _mm256_permute2x128_si256(q0, q1, 0x20);
        let hi = _mm256_permute2x128_si256(q0, q1, 0x31);
        _mm256_add_epi32(lo, hi)
    }

    #[inline(always)]
    unsafe fn row_dot<const VNNI: bool>(w: *const u8, qx: *const i8, dx: *const f32, nb: usize) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut b = 0;
        while b + 8 <= nb {
            let blocks = w.add(b * BLOCK_BYTES);
            let mut lanes = [_mm256_setzero_si256(); 8];
            let mut halves = [0u16; 8]; // the eight scales, two bytes each at a 34-byte stride
            for k in 0..8 {
                let block = blocks.add(k * BLOCK_BYTES);
                lanes[k] = block_lanes::<VNNI>(block.add(2), qx.add((b + k) * BLOCK));
                halves[k] = u16::from_le_bytes([*block, *block.add(1)]);
            }
            let isum = _mm256_cvtepi32_ps(totals8(lanes));
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(halves.as_ptr() as *const __m128i));
            let scale = _mm256_mul_ps(dw, _mm256_loadu_ps(dx.add(b)));
            acc = _mm256_add_ps(acc, _mm256_mul_ps(isum, scale));
            b += 8;
        }
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let mut sum = _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
        for b in b..nb {
            let block = std::slice::from_raw_parts(w.add(b * BLOCK_BYTES), BLOCK_BYTES);
            let isum = lane_total(block_lanes::<VNNI>(block[2..].as_ptr(), qx.add(b * BLOCK)));
            sum += isum as f32 * (block_scale(block) * *dx.add(b));
        }
        sum
    }

    /// SAFETY: w holds nb blocks, qx nb * 32 quants, dx nb scales; the CPU has AVX2 and F16C.
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn row_dot_avx2(w: *const u8, qx: *const i8, dx: *const f32, nb: usize) -> f32 {
        row_dot::<false>(w, qx, dx, nb)
    }

    /// SAFETY: as row_dot_avx2, and the CPU has AVX-512 VNNI and VL.
    #[target_feature(enable = "avx2,f16c,avx512vnni,avx512vl")]
    pub unsafe fn row_dot_vnni(w: *const u8, qx: *const i8, dx: *const f32, nb: usize) -> f32 {
        row_dot::<true>(w, qx, dx, nb)
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    //! One block as two 16-byte registers. Without the dot product extension: smull (int8 x int8
    //! -> int16, exact: |w x| <= 128 * 127) and sadalp (pairwise into int32). With it: sdot, four
    //! products per int32 lane. Four blocks' lanes are reduced to four exact sums by pairwise
    //! adds, then scaled and summed in float four at a time.
    use super::{block_scale, BLOCK, BLOCK_BYTES};
    use std::arch::aarch64::*;

    /// The four int32 partial sums of one block (their total is the block's isum).
    #[inline(always)]
    unsafe fn block_lanes<const DOT: bool>(w: *const u8, x: *const i8) -> int32x4_t {
        let (w0, w1) = (vld1q_s8(w as *const i8), vld1q_s8(w.add(16) as *const i8));
        let (x0, x1) = (vld1q_s8(x), vld1q_s8(x.add(16)));
        if DOT {
            sdot(sdot(vdupq_n_s32(0), w0, x0), w1, x1)
        } else {
            let mut acc = vpaddlq_s16(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)));
            acc = vpadalq_s16(acc, vmull_high_s8(w0, x0));
            acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w1), vget_low_s8(x1)));
            vpadalq_s16(acc, vmull_high_s8(w1, x1))
        }
    }

    /// acc + the dot products of each group of four int8 in a and b. Written as the instruction
    /// itself because Rust's vdotq_s32 is not stable yet (stdarch_neon_dotprod).
    #[inline(always)]
    unsafe fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
        acc
    }

    #[inline(always)]
    unsafe fn row_dot<const DOT: bool>(w: *const u8, qx: *const i8, dx: *const f32, nb: usize) -> f32 {
        let mut acc = vdupq_n_f32(0.0);
        let mut b = 0;
        while b + 4 <= nb {
            let blocks = w.add(b * BLOCK_BYTES);
            let mut l = [vdupq_n_s32(0); 4];
            let mut dw = [0.0f32; 4];
            for k in 0..4 {
                let block = blocks.add(k * BLOCK_BYTES);
                l[k] = block_lanes::<DOT>(block.add(2), qx.add((b + k) * BLOCK));
                dw[k] = block_scale(std::slice::from_raw_parts(block, 2));
            }
            let isum = vcvtq_f32_s32(vpaddq_s32(vpaddq_s32(l[0], l[1]), vpaddq_s32(l[2], l[3])));
            let scale = vmulq_f32(vld1q_f32(dw.as_ptr()), vld1q_f32(dx.add(b)));
            acc = vaddq_f32(acc, vmulq_f32(isum, scale));
            b += 4;
        }
        let mut sum = vaddvq_f32(acc);
        for b in b..nb {
            let block = std::slice::from_raw_parts(w.add(b * BLOCK_BYTES), BLOCK_BYTES);
            let isum = vaddvq_s32(block_lanes::<DOT>(block[2..].as_ptr(), qx.add(b * BLOCK)));
            sum += isum as f32 * (block_scale(block) * *dx.add(b));
        }
        sum
    }

    /// SAFETY: w holds nb blocks, qx nb * 32 quants, dx nb scales.
    #[target_feature(enable = "neon")]
    pub unsafe fn row_dot_neon(w: *const u8, qx: *const i8, dx: *const f32, nb: usize) -> f32 {
        row_dot::<false>(w, qx, dx, nb)
    }

    /// SAFETY: as row_dot_neon, and the CPU has the dot product extension.
    #[target_feature(enable = "neon,dotprod")]
    pub unsafe fn row_dot_sdot(w: *const u8, qx: *const i8, dx: *const f32, nb: usize) -> f32 {
        row_dot::<true>(w, qx, dx, nb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: test data that is the same on every run and target.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// uniform in [-1, 1)
        fn float(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        }
    }

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

    #[test]
    fn fp16_to_f32_is_exact_and_f32_to_fp16_gives_every_value_back() {
        for h in 0..=u16::MAX {
            let (want, got) = (half_value(h), f16_to_f32(h));
            if want.is_nan() {
                assert!(got.is_nan() && f32_to_f16(got) & 0x7fff > 0x7c00, "{h:#06x}");
                continue;
            }
            assert_eq!(got as f64, want, "{h:#06x}");
            assert_eq!(got.is_sign_negative(), h & 0x8000 != 0, "{h:#06x}");
            assert_eq!(f32_to_f16(got), h, "{h:#06x}");
        }
    }

    #[test]
    fn f32_to_fp16_rounds_to_nearest_ties_to_even() {
        // the midpoint between neighbours (exact in f32) goes to the even one; a float either
        // side of it goes to the nearer one
        for h in 0..0x7bffu16 {
            let mid = ((half_value(h) + half_value(h + 1)) / 2.0) as f32;
            let even = if h % 2 == 0 { h } else { h + 1 };
            for (x, want) in [(mid, even), (mid.next_down(), h), (mid.next_up(), h + 1)] {
                assert_eq!(f32_to_f16(x), want, "{x:e}");
                assert_eq!(f32_to_f16(-x), want | 0x8000, "{:e}", -x);
            }
        }
        assert_eq!(f32_to_f16(65504.0), 0x7bff);
        assert_eq!(f32_to_f16(65519.99), 0x7bff);
        assert_eq!(f32_to_f16(65520.0), 0x7c00);
        assert_eq!(f32_to_f16(-1e9), 0xfc00);
        assert_eq!(f32_to_f16(f32::INFINITY), 0x7c00);
        assert_eq!(f32_to_f16(1e-9), 0); // below half the smallest subnormal
        assert_eq!(f32_to_f16(-0.0), 0x8000);
    }

    /// Against the hardware's conversion (F16C, round to nearest even), on random floats.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn f32_to_fp16_agrees_with_f16c() {
        use std::arch::x86_64::*;
        #[target_feature(enable = "f16c")]
        unsafe fn hardware(x: f32) -> u16 {
            _mm_extract_epi16(_mm_cvtps_ph(_mm_set1_ps(x), _MM_FROUND_TO_NEAREST_INT), 0) as u16
        }
        if !is_x86_feature_detected!("f16c") {
            return;
        }
        let mut rng = Rng(16);
        for _ in 0..1_000_000 {
            let x = f32::from_bits(rng.next() as u32);
            if !x.is_nan() {
                // SAFETY: F16C is there
                assert_eq!(f32_to_f16(x), unsafe { hardware(x) }, "{x:e}");
            }
        }
    }

    #[test]
    fn activations_quantize_with_ties_to_even_and_an_fp16_scale() {
        let mut x = vec![0.0f32; 3 * BLOCK];
        // block 0 all zero (amax 0); block 1: amax 127, so 127 / amax = 1 and x * id is x itself,
        // with exact .5 ties; block 2: a scale that fp16 rounds
        x[BLOCK + 1] = -0.0;
        let ties = [127.0, 0.5, 1.5, 2.5, -0.5, -2.5, -3.5, 126.5, -127.0];
        x[BLOCK..BLOCK + ties.len()].copy_from_slice(&ties);
        x[2 * BLOCK..2 * BLOCK + 3].copy_from_slice(&[1.0, -0.25, 0.1]);
        let mut buf = Activation::with_capacity(4 * BLOCK);
        let q = buf.quantize(&x);
        assert_eq!((q.qs.len(), q.d.len()), (3 * BLOCK, 3));
        assert!(q.qs[..BLOCK].iter().all(|&v| v == 0) && q.d[0] == 0.0);
        assert_eq!(q.qs[BLOCK..BLOCK + ties.len()], [127, 0, 2, 2, 0, -2, -4, 126, -127]);
        assert_eq!(q.d[1], 1.0);
        let d = 1.0f32 / 127.0;
        assert_eq!(q.d[2], f16_to_f32(f32_to_f16(d)));
        assert_ne!(q.d[2], d);
        // 0.1 * 127 = 12.7 -> 13; -0.25 * 127 = -31.75 -> -32
        assert_eq!(q.qs[2 * BLOCK..2 * BLOCK + 3], [127, -32, 13]);
    }

    #[test]
    fn a_nan_activation_is_not_quantized_away() {
        let mut x = vec![0.5f32; BLOCK];
        x[7] = f32::NAN;
        let mut buf = Activation::with_capacity(BLOCK);
        assert!(buf.quantize(&x).d[0].is_nan());
    }

    /// A Q8_0 block from a scale's fp16 bits and 32 quants.
    fn push_block(w: &mut Vec<u8>, d: u16, qs: impl IntoIterator<Item = i8>) {
        w.extend(d.to_le_bytes());
        w.extend(qs.into_iter().map(|q| q as u8));
        assert_eq!(w.len() % BLOCK_BYTES, 0);
    }

    /// The definition, with the sum over blocks in f64: (value, sum of |terms|).
    fn plain_row_dot(w: &[u8], x: Quantized) -> (f64, f64) {
        let (mut sum, mut magnitude) = (0.0f64, 0.0f64);
        for (b, block) in w.chunks_exact(BLOCK_BYTES).enumerate() {
            let mut isum = 0i64;
            for i in 0..BLOCK {
                isum += block[2 + i] as i8 as i64 * x.qs[b * BLOCK + i] as i64;
            }
            let dw = f16_to_f32(u16::from_le_bytes([block[0], block[1]]));
            let term = isum as f32 * (dw * x.d[b]);
            sum += term as f64;
            magnitude += term.abs() as f64;
        }
        (sum, magnitude)
    }

    /// Row lengths from 1 to 25 blocks leave every possible tail after the SIMD groups (8 blocks
    /// on x86, 4 on arm64). Weights take every byte value, -128 (which no quantizer writes, but a
    /// file may hold) included.
    #[test]
    fn every_kernel_computes_the_block_dot_product() {
        let kernels = Kernel::available();
        let mut rng = Rng(7);
        let mut buf = Activation::with_capacity(25 * BLOCK);
        const ROWS: usize = 5;
        for nb in 1..=25 {
            let n = nb * BLOCK;
            // exact: scales 1.0, and activation blocks whose amax is 127, so that dx = 1 and
            // qx = x: every term is an integer and every partial sum is below 2^24, so any order
            // of summation gives the exact integer
            let mut w = Vec::new();
            for r in 0..ROWS {
                for _ in 0..nb {
                    let q = (0..BLOCK).map(|_| match r {
                        0 => -128,
                        1 => 127,
                        _ => rng.next() as i8,
                    });
                    push_block(&mut w, 0x3c00, q);
                }
            }
            let x: Vec<f32> = (0..n)
                .map(|i| match (i / BLOCK % 3, i % BLOCK) {
                    (0, j) => {
                        if j % 2 == 0 {
                            127.0
                        } else {
                            -127.0
                        }
                    }
                    (_, 0) => 127.0,
                    _ => (rng.next() % 255) as f32 - 127.0,
                })
                .collect();
            let q = buf.quantize(&x);
            assert!(q.d.iter().all(|&d| d == 1.0) && q.qs.iter().zip(&x).all(|(&a, &b)| a as f32 == b));
            for &k in &kernels {
                for r in 0..ROWS {
                    let row = &w[r * nb * BLOCK_BYTES..(r + 1) * nb * BLOCK_BYTES];
                    assert_eq!(k.row_dot(row, q) as f64, plain_row_dot(row, q).0, "{k:?}, {nb} blocks, row {r}");
                }
            }

            // general: random scales of both signs and random activations, block 1 all zero
            // (amax 0); the same up to the float rounding of a sum in another order
            let mut w = Vec::new();
            for _ in 0..ROWS * nb {
                let d = (0x1000 + rng.next() % 0x3000) as u16 | if rng.next() % 2 == 1 { 0x8000 } else { 0 };
                let q: Vec<i8> = (0..BLOCK).map(|_| rng.next() as i8).collect();
                push_block(&mut w, d, q);
            }
            let x: Vec<f32> = (0..n).map(|i| if i / BLOCK == 1 { 0.0 } else { rng.float() * 4.0 }).collect();
            let q = buf.quantize(&x);
            for &k in &kernels {
                for r in 0..ROWS {
                    let row = &w[r * nb * BLOCK_BYTES..(r + 1) * nb * BLOCK_BYTES];
                    let (want, magnitude) = plain_row_dot(row, q);
                    let got = k.row_dot(row, q) as f64;
                    let bound = nb as f64 * f32::EPSILON as f64 * magnitude;
                    assert!((got - want).abs() <= bound, "{k:?}, {nb} blocks, row {r}: {got} vs {want}");
                }
            }
            // the rows of a range, each where `put` is told
            let mut out = [f32::NAN; ROWS];
            matvec_rows(&w, q, 1..4, |i, v| out[1 + i] = v);
            let best = Kernel::best();
            for r in 0..ROWS {
                let row = &w[r * nb * BLOCK_BYTES..(r + 1) * nb * BLOCK_BYTES];
                assert!(if (1..4).contains(&r) { out[r] == best.row_dot(row, q) } else { out[r].is_nan() });
            }
        }
    }

    #[test]
    fn the_best_kernel_uses_the_vector_unit() {
        let best = Kernel::best();
        assert_eq!(Some(&best), Kernel::available().last());
        #[cfg(target_arch = "aarch64")]
        assert!(matches!(best, Kernel::Neon | Kernel::NeonDot));
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c") {
            assert_ne!(best, Kernel::Portable);
        }
    }

    #[test]
    fn a_row_dequantizes_to_scale_times_quants() {
        let mut w = Vec::new();
        push_block(&mut w, 0x3800, (0..32).map(|i| i as i8 - 16)); // d = 0.5
        push_block(&mut w, 0xbc00, (0..32).map(|i| if i == 0 { -128 } else { 127 })); // d = -1
        push_block(&mut w, 0x0000, (0..32).map(|_| 5)); // d = 0
        push_block(&mut w, 0x0001, (0..32).map(|_| 1)); // d = 2^-24, subnormal
        let mut row = vec![0.0f32; 2 * BLOCK];
        dequantize_row(&w, 0, &mut row);
        assert_eq!(row[0], -8.0);
        assert_eq!(row[31], 7.5);
        assert_eq!((row[32], row[33]), (128.0, -127.0));
        dequantize_row(&w, 1, &mut row);
        assert!(row[..32].iter().all(|&v| v == 0.0));
        assert!(row[32..].iter().all(|&v| v == 2f32.powi(-24)));
    }
}
