// polyllama C++ port: Llama 2 inference, after karpathy/llama2.c's run.c.
//
// Sections, top to bottom: thread pool, state, forward-pass kernels (float32, then Q8_0),
// forward pass, tokenizer, sampler, generation, command line; the model files are read in
// formats.cpp. The algorithm is the contract's (docs/port-contract.md); orchestrator/reference/
// is its executable definition.

#include "formats.hpp"

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <new>
#include <string_view>

#if defined(__AVX2__) && defined(__FMA__) && !defined(POLYLLAMA_SCALAR)
#include <immintrin.h>
#define POLYLLAMA_AVX2 1
#elif defined(__aarch64__) && defined(__ARM_NEON) && !defined(POLYLLAMA_SCALAR)
#include <arm_neon.h>
#define POLYLLAMA_NEON 1  // the Q8_0 kernels; the float32 ones are left to the compiler
#endif

namespace llama2 {

// ----------------------------------------------------------------------------
// Thread pool: workers spin briefly on a generation counter (the next job of a token is
// microseconds away), then sleep on it (futex), so an idle pool costs no CPU.

static inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

ThreadPool::ThreadPool(int n_workers) : n_workers_(std::max(1, n_workers)) {
    threads_.reserve(n_workers_ - 1);
    for (int i = 1; i < n_workers_; ++i) threads_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
    stop_.store(true, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    generation_.notify_all();
    for (auto& t : threads_) t.join();
}

void ThreadPool::run_tasks(int worker) {
    for (;;) {
        // fetch_add may run past n_tasks (no claim) but never into the high word
        std::uint64_t t = ticket_.fetch_add(1, std::memory_order_acq_rel);
        auto n = static_cast<std::uint32_t>(t >> 32), task = static_cast<std::uint32_t>(t);
        if (task >= n) return;
        job_(ctx_, static_cast<int>(task), worker);
        done_.fetch_add(1, std::memory_order_release);
    }
}

void ThreadPool::dispatch(int n_tasks, void* ctx, Job job) {
    ctx_ = ctx;
    job_ = job;
    done_.store(0, std::memory_order_relaxed);
    ticket_.store(static_cast<std::uint64_t>(n_tasks) << 32, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
    run_tasks(0);
    for (int spins = 0; done_.load(std::memory_order_acquire) != static_cast<std::uint32_t>(n_tasks); ++spins) {
        if (spins < 4096) cpu_relax();
        else std::this_thread::yield();  // a worker holding a task was descheduled: let it run
    }
}

void ThreadPool::worker_loop(int worker) {
    for (;;) {
        std::uint32_t seen = generation_.load(std::memory_order_acquire);
        if (stop_.load(std::memory_order_acquire)) return;
        run_tasks(worker);
        // the next job of a token is microseconds away: spin a little before sleeping
        auto start = std::chrono::steady_clock::now();
        for (int spins = 0; generation_.load(std::memory_order_acquire) == seen; ++spins) {
            if ((spins & 255) == 255 && std::chrono::steady_clock::now() - start > std::chrono::microseconds(500)) {
                generation_.wait(seen, std::memory_order_acquire);
                break;
            }
            if (spins < 4096) cpu_relax();
            else std::this_thread::yield();
        }
    }
}

// ----------------------------------------------------------------------------
// State

static void free_floats(void* p) { std::free(p); }

static std::unique_ptr<float[], void (*)(void*)> calloc_floats(std::int64_t n) {
    void* p = std::calloc(static_cast<std::size_t>(n), sizeof(float));
    if (!p) throw std::bad_alloc();
    return {static_cast<float*>(p), free_floats};
}

// the batch matrices' sizes in 64 bits: rows <= seq_len and the widths are bounded by the
// header checks, but their products are not small
static std::size_t cells(std::int64_t rows, std::int64_t width) { return static_cast<std::size_t>(rows * width); }

RunState::RunState(const Config& c, int rows, int logits_rows, int workers, int kv_rows)
    : x(c.dim), xb(c.dim), hb(c.hidden_dim), q(c.dim), att(static_cast<std::size_t>(c.n_heads) * kv_rows),
      logits(c.vocab_size), xq(std::max(c.dim, c.hidden_dim)), xd(std::max(c.dim, c.hidden_dim) / Q8_BLOCK + 1),
      rope_cos(c.head_size() / 2), rope_sin(c.head_size() / 2),
      bx(cells(rows, c.dim)), bxb(cells(rows, c.dim)), bq(cells(rows, c.dim)), bhb(cells(rows, c.hidden_dim)),
      bxq(cells(rows, std::max(c.dim, c.hidden_dim))), bxd(cells(rows, std::max(c.dim, c.hidden_dim) / Q8_BLOCK + 1)),
      brope_cos(cells(rows, c.head_size() / 2)), brope_sin(cells(rows, c.head_size() / 2)),
      batt(cells(std::int64_t{workers} * BATCH_TILE_ROWS, kv_rows)), blogits(cells(logits_rows, c.vocab_size)),
      key_cache(calloc_floats(std::int64_t{c.n_layers} * kv_rows * c.kv_dim())),
      value_cache(calloc_floats(std::int64_t{c.n_layers} * kv_rows * c.kv_dim())) {}

// ----------------------------------------------------------------------------
// Forward pass: kernels

// dot(a, b) over n floats.
static inline float dot(const float* a, const float* b, int n) {
    int j = 0;
    float sum = 0.0f;
#if POLYLLAMA_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; j + 16 <= n; j += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8), acc1);
    }
    for (; j + 8 <= n; j += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), acc0);
    __m256 acc = _mm256_add_ps(acc0, acc1);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    sum = _mm_cvtss_f32(s);
#else
    // eight independent partial sums: the compiler vectorises this without -ffast-math
    float acc[8] = {};
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; ++k) acc[k] += a[j + k] * b[j + k];
    sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
#endif
    for (; j < n; ++j) sum += a[j] * b[j];
    return sum;
}

#if POLYLLAMA_AVX2
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

#if POLYLLAMA_AVX2 && defined(__AVX512F__)
// the two 256-bit halves of z added: sixteen lanes folded into eight (through memory, once per
// four rows: GCC 12's extract and shuffle intrinsics warn of an uninitialized operand)
static inline __m256 fold512(__m512 z) {
    float lanes[16];
    _mm512_storeu_ps(lanes, z);
    return _mm256_add_ps(_mm256_loadu_ps(lanes), _mm256_loadu_ps(lanes + 8));
}
#endif

// For rows [begin, end) of W (d, n): store(i, W[i] . x). Four rows at a time share each load
// of x; the rows stream from memory, which is what a batch-1 matvec is bound by.
template <class Store>
static inline void matvec_rows(const float* w, const float* x, int n, int begin, int end, Store store) {
    int i = begin;
#if POLYLLAMA_AVX2
    for (; i + 4 <= end; i += 4) {
        const float* r0 = w + static_cast<std::size_t>(i) * n;
        const float *r1 = r0 + n, *r2 = r1 + n, *r3 = r2 + n;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        int j = 0;
#ifdef __AVX512F__
        // where the build has AVX-512, one load is one whole cache line of a row, and two
        // accumulators a row keep the FMAs independent (faster than the 256-bit loop alone,
        // measured in the README); the 256-bit loop below takes the rest
        __m512 z0 = _mm512_setzero_ps(), z1 = z0, z2 = z0, z3 = z0, y0 = z0, y1 = z0, y2 = z0, y3 = z0;
        for (; j + 32 <= n; j += 32) {
            __m512 xa = _mm512_loadu_ps(x + j), xb = _mm512_loadu_ps(x + j + 16);
            z0 = _mm512_fmadd_ps(_mm512_loadu_ps(r0 + j), xa, z0);
            z1 = _mm512_fmadd_ps(_mm512_loadu_ps(r1 + j), xa, z1);
            z2 = _mm512_fmadd_ps(_mm512_loadu_ps(r2 + j), xa, z2);
            z3 = _mm512_fmadd_ps(_mm512_loadu_ps(r3 + j), xa, z3);
            y0 = _mm512_fmadd_ps(_mm512_loadu_ps(r0 + j + 16), xb, y0);
            y1 = _mm512_fmadd_ps(_mm512_loadu_ps(r1 + j + 16), xb, y1);
            y2 = _mm512_fmadd_ps(_mm512_loadu_ps(r2 + j + 16), xb, y2);
            y3 = _mm512_fmadd_ps(_mm512_loadu_ps(r3 + j + 16), xb, y3);
        }
        a0 = fold512(_mm512_add_ps(z0, y0)), a1 = fold512(_mm512_add_ps(z1, y1));
        a2 = fold512(_mm512_add_ps(z2, y2)), a3 = fold512(_mm512_add_ps(z3, y3));
#endif
        for (; j + 8 <= n; j += 8) {
            __m256 xv = _mm256_loadu_ps(x + j);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0 + j), xv, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r1 + j), xv, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r2 + j), xv, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r3 + j), xv, a3);
        }
        float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);
        for (; j < n; ++j) {
            s0 += r0[j] * x[j], s1 += r1[j] * x[j], s2 += r2[j] * x[j], s3 += r3[j] * x[j];
        }
        store(i, s0), store(i + 1, s1), store(i + 2, s2), store(i + 3, s3);
    }
#endif
    for (; i < end; ++i) store(i, dot(w + static_cast<std::size_t>(i) * n, x, n));
}

// Matmuls are split into tasks of TASK_ROWS rows (a multiple of the kernel's four): a few
// dozen KB of weights each, large enough that claiming one costs nothing in comparison.
constexpr int TASK_ROWS = 32;
struct Range {
    int begin, end;
};
static inline int tasks_for(int rows) { return (rows + TASK_ROWS - 1) / TASK_ROWS; }
static inline Range task_rows(int task, int rows) {
    return {task * TASK_ROWS, std::min(rows, (task + 1) * TASK_ROWS)};
}

// ----------------------------------------------------------------------------
// Forward pass: Q8_0 kernels (llama2.hpp, namespace q8, says what they compute)

namespace q8 {

float fp16_to_fp32(std::uint16_t h) {
    std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in float
        float f = static_cast<float>(man) * 0x1p-24f;
        return sign ? -f : f;
    }
    std::uint32_t bits = exp == 0x1f ? sign | 0x7f800000u | man << 13   // infinity, NaN
                                     : sign | (exp + 112) << 23 | man << 13;  // rebias 15 -> 127
    return std::bit_cast<float>(bits);
}

std::uint16_t fp32_to_fp16(float f) {
    std::uint32_t x = std::bit_cast<std::uint32_t>(f);
    auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return sign | 0x7e00;   // NaN stays NaN
    if (x >= 0x477ff000u) return sign | 0x7c00;  // 65520 and up round to infinity
    if (x < 0x38800000u)  // under 2^-14: a subnormal (or 2^-14 itself); the scaling is exact
        return sign | static_cast<std::uint16_t>(std::nearbyint(std::bit_cast<float>(x) * 0x1p24f));
    x -= 0x38000000u;              // rebias 127 -> 15
    x += 0xfff + ((x >> 13) & 1);  // round the 13 dropped bits to nearest, ties to the even result
    return sign | static_cast<std::uint16_t>(x >> 13);
}

// a block's scale: its first two bytes, little-endian, at any alignment
static inline float scale_of(const std::uint8_t* block) {
    return fp16_to_fp32(static_cast<std::uint16_t>(block[0] | block[1] << 8));
}

// llama.cpp's SIMD quantize_row_q8_0: 127 / amax as the multiplier, ties rounded to even
// (std::rint in the default rounding mode), and the fp16-rounded amax / 127 as the scale
void quantize(const float* x, int n, std::int8_t* qx, float* dx) {
    for (int b = 0; b < n / Q8_BLOCK; ++b) {
        const float* xb = x + b * Q8_BLOCK;
        float amax = 0.0f;
        for (int i = 0; i < Q8_BLOCK; ++i) amax = std::max(amax, std::fabs(xb[i]));
        dx[b] = fp16_to_fp32(fp32_to_fp16(amax / 127.0f));
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        for (int i = 0; i < Q8_BLOCK; ++i) qx[b * Q8_BLOCK + i] = static_cast<std::int8_t>(std::rint(xb[i] * id));
    }
}

void dequantize_row(const std::uint8_t* row, int n, float* out) {
    for (int b = 0; b < n / Q8_BLOCK; ++b, row += Q8_BLOCK_BYTES) {
        const float d = scale_of(row);
        const auto* q = reinterpret_cast<const std::int8_t*>(row + 2);
        for (int i = 0; i < Q8_BLOCK; ++i) out[b * Q8_BLOCK + i] = d * static_cast<float>(q[i]);
    }
}

#if POLYLLAMA_AVX2
// The 32 products of a weight block and an input block as eight int32 partial sums. maddubs and
// dpbusd multiply unsigned bytes by signed ones: |w| is exact as unsigned even for w = -128, and
// x, which quantize() keeps within +-127, takes w's sign without overflowing; a pair of products
// is at most 2 * 128 * 127 < 2^15, so maddubs cannot saturate.
static inline __m256i block_dot(const std::uint8_t* block, const std::int8_t* qx) {
    __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 2));
    __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qx));
    __m256i aw = _mm256_sign_epi8(w, w), sx = _mm256_sign_epi8(x, w);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sx);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), aw, sx);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1));
#endif
}

// eight blocks' partial sums -> their eight isums, in block order
static inline __m256i isums8(const __m256i v[8]) {
    __m256i s01 = _mm256_hadd_epi32(v[0], v[1]), s23 = _mm256_hadd_epi32(v[2], v[3]);
    __m256i s45 = _mm256_hadd_epi32(v[4], v[5]), s67 = _mm256_hadd_epi32(v[6], v[7]);
    __m256i s0123 = _mm256_hadd_epi32(s01, s23), s4567 = _mm256_hadd_epi32(s45, s67);
    // each 128-bit half now holds blocks 0-3 (or 4-7) summed over its own half of the lanes
    return _mm256_add_epi32(_mm256_permute2x128_si256(s0123, s4567, 0x20),
                            _mm256_permute2x128_si256(s0123, s4567, 0x31));
}

static inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

// the scales of eight consecutive blocks (34 bytes apart)
static inline __m256 scales8(const std::uint8_t* w) {
#ifdef __F16C__
    alignas(16) std::uint16_t h[8];
    for (int k = 0; k < 8; ++k) h[k] = static_cast<std::uint16_t>(w[k * Q8_BLOCK_BYTES] | w[k * Q8_BLOCK_BYTES + 1] << 8);
    return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h)));
#else
    alignas(32) float f[8];
    for (int k = 0; k < 8; ++k) f[k] = scale_of(w + k * Q8_BLOCK_BYTES);
    return _mm256_load_ps(f);
#endif
}
#elif POLYLLAMA_NEON
// One block's products as four int32 partial sums: sdot with the dotprod extension, else
// widening multiplies (int8 * int8 fits int16) added pairwise into int32.
static inline int32x4_t block_dot(const std::uint8_t* block, const std::int8_t* qx) {
    const auto* w = reinterpret_cast<const std::int8_t*>(block + 2);
    int8x16_t w0 = vld1q_s8(w), w1 = vld1q_s8(w + 16), x0 = vld1q_s8(qx), x1 = vld1q_s8(qx + 16);
#ifdef __ARM_FEATURE_DOTPROD
    return vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, x0), w1, x1);
#else
    int32x4_t acc = vpaddlq_s16(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)));
    acc = vpadalq_s16(acc, vmull_high_s8(w0, x0));
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(w1), vget_low_s8(x1)));
    return vpadalq_s16(acc, vmull_high_s8(w1, x1));
#endif
}

// the scales of four consecutive blocks (34 bytes apart)
static inline float32x4_t scales4(const std::uint8_t* w) {
    std::uint16_t h[4];
    for (int k = 0; k < 4; ++k) h[k] = static_cast<std::uint16_t>(w[k * Q8_BLOCK_BYTES] | w[k * Q8_BLOCK_BYTES + 1] << 8);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}
#else
// The quants are read as int8_t, not converted from uint8_t: GCC 12 with AVX-VNNI vectorizes
// `(int8_t)u8 * s8` into an unsigned-by-signed vpdpbusd and gets -128 * x wrong.
static inline int block_isum(const std::uint8_t* block, const std::int8_t* qx) {
    const auto* w = reinterpret_cast<const std::int8_t*>(block + 2);
    int s = 0;
    for (int i = 0; i < Q8_BLOCK; ++i) s += w[i] * qx[i];
    return s;
}
#endif

// SIMD paths take eight (AVX2) or four (NEON) blocks at a time: their isums side by side in one
// register, scaled and summed lane-wise; the remaining blocks one by one. Each product is rounded
// before it is added (no FMA), as the definition has it.
float dot_row(const std::uint8_t* row, const std::int8_t* qx, const float* dx, int n_blocks) {
    int b = 0;
    float sum = 0.0f;
#if POLYLLAMA_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; b + 8 <= n_blocks; b += 8) {
        const std::uint8_t* w = row + static_cast<std::size_t>(b) * Q8_BLOCK_BYTES;
        __m256i v[8];
        for (int k = 0; k < 8; ++k) v[k] = block_dot(w + k * Q8_BLOCK_BYTES, qx + (b + k) * Q8_BLOCK);
        __m256 isum = _mm256_cvtepi32_ps(isums8(v));  // exact: |isum| < 2^24
        __m256 scale = _mm256_mul_ps(scales8(w), _mm256_loadu_ps(dx + b));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(isum, scale));
    }
    sum = hsum(acc);
    for (; b < n_blocks; ++b) {
        const std::uint8_t* w = row + static_cast<std::size_t>(b) * Q8_BLOCK_BYTES;
        float term = static_cast<float>(hsum_epi32(block_dot(w, qx + b * Q8_BLOCK))) * (scale_of(w) * dx[b]);
        sum += term;
    }
#elif POLYLLAMA_NEON
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (; b + 4 <= n_blocks; b += 4) {
        const std::uint8_t* w = row + static_cast<std::size_t>(b) * Q8_BLOCK_BYTES;
        int32x4_t p0 = block_dot(w, qx + b * Q8_BLOCK);
        int32x4_t p1 = block_dot(w + Q8_BLOCK_BYTES, qx + (b + 1) * Q8_BLOCK);
        int32x4_t p2 = block_dot(w + 2 * Q8_BLOCK_BYTES, qx + (b + 2) * Q8_BLOCK);
        int32x4_t p3 = block_dot(w + 3 * Q8_BLOCK_BYTES, qx + (b + 3) * Q8_BLOCK);
        float32x4_t isum = vcvtq_f32_s32(vpaddq_s32(vpaddq_s32(p0, p1), vpaddq_s32(p2, p3)));
        float32x4_t scale = vmulq_f32(scales4(w), vld1q_f32(dx + b));
        acc = vaddq_f32(acc, vmulq_f32(isum, scale));
    }
    sum = vaddvq_f32(acc);
    for (; b < n_blocks; ++b) {
        const std::uint8_t* w = row + static_cast<std::size_t>(b) * Q8_BLOCK_BYTES;
        float term = static_cast<float>(vaddvq_s32(block_dot(w, qx + b * Q8_BLOCK))) * (scale_of(w) * dx[b]);
        sum += term;
    }
#else
    for (; b < n_blocks; ++b) {
        const std::uint8_t* w = row + static_cast<std::size_t>(b) * Q8_BLOCK_BYTES;
        float term = static_cast<float>(block_isum(w, qx + b * Q8_BLOCK)) * (scale_of(w) * dx[b]);
        sum += term;
    }
#endif
    return sum;
}

}  // namespace q8

// ----------------------------------------------------------------------------
// Forward pass: F16 and BF16 kernels (llama2.hpp, namespace h16, says what they compute)
//
// A 16-bit matvec is bound by memory like the f32 one, with half the bytes a row: the weights
// are converted to float32 in registers as they are loaded (F16: vcvtph2ps, AVX-512F or F16C,
// NEON fcvtl; BF16: zero-extended and shifted left 16; both exact) and multiplied with the
// float32 input, as in the f32 kernel. Nothing is converted ahead or kept: the file's 2 bytes a
// value are all that is read.

#if defined(__F16C__) || defined(__AVX512F__)
#define POLYLLAMA_F16C 1
#else
#define POLYLLAMA_F16C 0
#endif

namespace h16 {

float bf16_to_fp32(std::uint16_t h) { return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16); }

// value i of a row of 16-bit values, at any alignment
static inline std::uint16_t u16_at(const std::uint8_t* p, std::size_t i) {
    std::uint16_t v;
    std::memcpy(&v, p + 2 * i, 2);
    return v;
}

template <WType T>
static inline float value_at(const std::uint8_t* p, std::size_t i) {
    if constexpr (T == WType::f16) return q8::fp16_to_fp32(u16_at(p, i));
    else return bf16_to_fp32(u16_at(p, i));
}

// whether this build converts type T in vector registers (F16 on x86 needs F16C or AVX-512F)
#if POLYLLAMA_NEON
template <WType>
constexpr bool simd = true;
#else
template <WType T>
constexpr bool simd = T == WType::bf16 || POLYLLAMA_F16C;
#endif

#if POLYLLAMA_AVX2 && defined(__AVX512F__)
template <WType T>
static inline __m512 load16(const std::uint8_t* p) {
    // the zero-masked forms (all lanes): GCC 12 warns that the plain ones' undefined pass-through
    // operand is uninitialized
    constexpr __mmask16 all = 0xffff;
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    if constexpr (T == WType::f16) return _mm512_maskz_cvtph_ps(all, v);
    else return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(all, _mm512_maskz_cvtepu16_epi32(all, v), 16));
}
#endif
#if POLYLLAMA_AVX2
template <WType T>
static inline __m256 load8(const std::uint8_t* p) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
#if POLYLLAMA_F16C
    if constexpr (T == WType::f16) return _mm256_cvtph_ps(v);
    else
#endif
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}
#elif POLYLLAMA_NEON
template <WType T>
static inline float32x4_t load4(const std::uint8_t* p) {
    const uint16x4_t v = vreinterpret_u16_u8(vld1_u8(p));
    if constexpr (T == WType::f16) return vcvt_f32_f16(vreinterpret_f16_u16(v));
    else return vreinterpretq_f32_u32(vshll_n_u16(v, 16));
}
#endif

// one row against x, n values: eight partial sums (vectorised where the conversion is plain
// integer work, BF16; F16 goes through the bit formula on builds without a vector conversion)
template <WType T>
static inline float dot(const std::uint8_t* w, const float* x, int n) {
    int j = 0;
    float sum = 0.0f;
#if POLYLLAMA_AVX2
    if constexpr (simd<T>) {
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        for (; j + 16 <= n; j += 16) {
            a0 = _mm256_fmadd_ps(load8<T>(w + 2 * j), _mm256_loadu_ps(x + j), a0);
            a1 = _mm256_fmadd_ps(load8<T>(w + 2 * j + 16), _mm256_loadu_ps(x + j + 8), a1);
        }
        for (; j + 8 <= n; j += 8) a0 = _mm256_fmadd_ps(load8<T>(w + 2 * j), _mm256_loadu_ps(x + j), a0);
        sum = hsum(_mm256_add_ps(a0, a1));
    }
#elif POLYLLAMA_NEON
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = vdupq_n_f32(0.0f);
    for (; j + 8 <= n; j += 8) {
        a0 = vfmaq_f32(a0, load4<T>(w + 2 * j), vld1q_f32(x + j));
        a1 = vfmaq_f32(a1, load4<T>(w + 2 * j + 8), vld1q_f32(x + j + 4));
    }
    sum = vaddvq_f32(vaddq_f32(a0, a1));
#else
    float acc[8] = {};
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; ++k) acc[k] += value_at<T>(w, j + k) * x[j + k];
    sum = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
#endif
    for (; j < n; ++j) sum += value_at<T>(w, j) * x[j];
    return sum;
}

// For rows [begin, end) of W (rows of n 16-bit values): store(i, W[i] . x).
// Four rows at a time share each load of x and keep four weight streams in flight, as the f32
// kernel does; with AVX-512 two accumulators a row keep the FMAs independent.
template <WType T, class Store>
static inline void matvec_rows(const std::uint8_t* w, const float* x, int n, int begin, int end, Store store) {
    const std::size_t row_bytes = static_cast<std::size_t>(n) * 2;
    int i = begin;
#if POLYLLAMA_AVX2 && defined(__AVX512F__)
    for (; i + 4 <= end; i += 4) {
        const std::uint8_t* r0 = w + static_cast<std::size_t>(i) * row_bytes;
        const std::uint8_t *r1 = r0 + row_bytes, *r2 = r1 + row_bytes, *r3 = r2 + row_bytes;
        __m512 z0 = _mm512_setzero_ps(), z1 = z0, z2 = z0, z3 = z0, y0 = z0, y1 = z0, y2 = z0, y3 = z0;
        int j = 0;
        for (; j + 32 <= n; j += 32) {
            const __m512 xa = _mm512_loadu_ps(x + j), xb = _mm512_loadu_ps(x + j + 16);
            z0 = _mm512_fmadd_ps(load16<T>(r0 + 2 * j), xa, z0);
            z1 = _mm512_fmadd_ps(load16<T>(r1 + 2 * j), xa, z1);
            z2 = _mm512_fmadd_ps(load16<T>(r2 + 2 * j), xa, z2);
            z3 = _mm512_fmadd_ps(load16<T>(r3 + 2 * j), xa, z3);
            y0 = _mm512_fmadd_ps(load16<T>(r0 + 2 * j + 32), xb, y0);
            y1 = _mm512_fmadd_ps(load16<T>(r1 + 2 * j + 32), xb, y1);
            y2 = _mm512_fmadd_ps(load16<T>(r2 + 2 * j + 32), xb, y2);
            y3 = _mm512_fmadd_ps(load16<T>(r3 + 2 * j + 32), xb, y3);
        }
        for (; j + 16 <= n; j += 16) {
            const __m512 xa = _mm512_loadu_ps(x + j);
            z0 = _mm512_fmadd_ps(load16<T>(r0 + 2 * j), xa, z0);
            z1 = _mm512_fmadd_ps(load16<T>(r1 + 2 * j), xa, z1);
            z2 = _mm512_fmadd_ps(load16<T>(r2 + 2 * j), xa, z2);
            z3 = _mm512_fmadd_ps(load16<T>(r3 + 2 * j), xa, z3);
        }
        float s0 = hsum(fold512(_mm512_add_ps(z0, y0))), s1 = hsum(fold512(_mm512_add_ps(z1, y1)));
        float s2 = hsum(fold512(_mm512_add_ps(z2, y2))), s3 = hsum(fold512(_mm512_add_ps(z3, y3)));
        for (; j < n; ++j) {
            s0 += value_at<T>(r0, j) * x[j], s1 += value_at<T>(r1, j) * x[j];
            s2 += value_at<T>(r2, j) * x[j], s3 += value_at<T>(r3, j) * x[j];
        }
        store(i, s0), store(i + 1, s1), store(i + 2, s2), store(i + 3, s3);
    }
#elif POLYLLAMA_AVX2
    if constexpr (simd<T>) {
        for (; i + 4 <= end; i += 4) {
            const std::uint8_t* r0 = w + static_cast<std::size_t>(i) * row_bytes;
            const std::uint8_t *r1 = r0 + row_bytes, *r2 = r1 + row_bytes, *r3 = r2 + row_bytes;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            int j = 0;
            for (; j + 8 <= n; j += 8) {
                const __m256 xv = _mm256_loadu_ps(x + j);
                a0 = _mm256_fmadd_ps(load8<T>(r0 + 2 * j), xv, a0);
                a1 = _mm256_fmadd_ps(load8<T>(r1 + 2 * j), xv, a1);
                a2 = _mm256_fmadd_ps(load8<T>(r2 + 2 * j), xv, a2);
                a3 = _mm256_fmadd_ps(load8<T>(r3 + 2 * j), xv, a3);
            }
            float s0 = hsum(a0), s1 = hsum(a1), s2 = hsum(a2), s3 = hsum(a3);
            for (; j < n; ++j) {
                s0 += value_at<T>(r0, j) * x[j], s1 += value_at<T>(r1, j) * x[j];
                s2 += value_at<T>(r2, j) * x[j], s3 += value_at<T>(r3, j) * x[j];
            }
            store(i, s0), store(i + 1, s1), store(i + 2, s2), store(i + 3, s3);
        }
    }
#elif POLYLLAMA_NEON
    for (; i + 4 <= end; i += 4) {
        const std::uint8_t* r0 = w + static_cast<std::size_t>(i) * row_bytes;
        const std::uint8_t *r1 = r0 + row_bytes, *r2 = r1 + row_bytes, *r3 = r2 + row_bytes;
        float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
        int j = 0;
        for (; j + 4 <= n; j += 4) {
            const float32x4_t xv = vld1q_f32(x + j);
            a0 = vfmaq_f32(a0, load4<T>(r0 + 2 * j), xv);
            a1 = vfmaq_f32(a1, load4<T>(r1 + 2 * j), xv);
            a2 = vfmaq_f32(a2, load4<T>(r2 + 2 * j), xv);
            a3 = vfmaq_f32(a3, load4<T>(r3 + 2 * j), xv);
        }
        float s0 = vaddvq_f32(a0), s1 = vaddvq_f32(a1), s2 = vaddvq_f32(a2), s3 = vaddvq_f32(a3);
        for (; j < n; ++j) {
            s0 += value_at<T>(r0, j) * x[j], s1 += value_at<T>(r1, j) * x[j];
            s2 += value_at<T>(r2, j) * x[j], s3 += value_at<T>(r3, j) * x[j];
        }
        store(i, s0), store(i + 1, s1), store(i + 2, s2), store(i + 3, s3);
    }
#endif
    for (; i < end; ++i) store(i, dot<T>(w + static_cast<std::size_t>(i) * row_bytes, x, n));
}

void matvec(WType type, const std::uint8_t* w, int rows, int n, const float* x, float* out) {
    auto put = [out](int i, float v) { out[i] = v; };
    if (type == WType::f16) matvec_rows<WType::f16>(w, x, n, 0, rows, put);
    else matvec_rows<WType::bf16>(w, x, n, 0, rows, put);
}

}  // namespace h16

// The matmul's input: x, and its Q8_0 blocks when one of the matrices that share it is Q8_0
// (F16 and BF16 matrices take x as it is).
struct Input {
    const float* x;
    const std::int8_t* xq = nullptr;
    const float* xd = nullptr;
};

// x quantized into the state's buffers when any of `mats` needs it
static Input input_for(RunState& s, const float* x, int n, std::initializer_list<const Matrix*> mats) {
    for (const Matrix* m : mats)
        if (m->quantized()) {
            q8::quantize(x, n, s.xq.data(), s.xd.data());
            return {x, s.xq.data(), s.xd.data()};
        }
    return {x};
}

// Each Q8_0 row is one sequential stream of 34-byte blocks, read once, which the hardware
// prefetcher alone streams more slowly than the f32 kernel's four rows at a time. Asking for
// every cache line of the row this many ahead closes most of that gap (measured in the README,
// "Performance levers"); POLYLLAMA_Q8_PREFETCH=0 turns it off, for before/after runs.
static const int q8_prefetch_rows = [] {
    const char* v = std::getenv("POLYLLAMA_Q8_PREFETCH");
    return v && std::string_view(v) == "0" ? 0 : 4;
}();

// For rows [begin, end) of W (d, n), by W's type: store(i, W[i] . x).
template <class Store>
static inline void matvec(const Matrix& w, const Input& in, int n, int begin, int end, Store store) {
    if (w.type == WType::f32) {
        matvec_rows(w.f32.data(), in.x, n, begin, end, store);
        return;
    }
    if (w.type == WType::f16) return h16::matvec_rows<WType::f16>(w.h16.data(), in.x, n, begin, end, store);
    if (w.type == WType::bf16) return h16::matvec_rows<WType::bf16>(w.h16.data(), in.x, n, begin, end, store);
    const std::size_t row_bytes = static_cast<std::size_t>(n / Q8_BLOCK) * Q8_BLOCK_BYTES;
    for (int i = begin; i < end; ++i) {
        if (q8_prefetch_rows && i + q8_prefetch_rows < end) {
            const std::uint8_t* ahead = w.q8.data() + (i + q8_prefetch_rows) * row_bytes;
            for (std::size_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(ahead + o, 0, 3);
        }
        store(i, q8::dot_row(w.q8.data() + i * row_bytes, in.xq, in.xd, n / Q8_BLOCK));
    }
}

// ----------------------------------------------------------------------------
// Forward pass: batched kernels (the prompt's matrix-matrix products)
//
// out(t, i) = X[t] . W[i] for the T rows of X (T, d) and a range of rows of W (n, d), both
// row-major with rows contiguous along d, as the file stores W (nothing is repacked). A register
// tile of MM_R weight rows by MM_C activation rows keeps MM_R * MM_C vector accumulators along d:
// each weight vector loaded is used MM_C times and each activation vector MM_R times, so the
// loop is bound by the FMA ports rather than by loads; the tile's sums are folded horizontally
// once, at its end. A task owns a block of weight rows (mm_task_rows) small enough to stay in L2
// while every activation tile of the batch passes over it: the weights stream from memory once
// per batch, the activations (a few hundred KB) are re-read from the cache.

#if POLYLLAMA_AVX2 && defined(__AVX512F__)
constexpr int MM_R = 4, MM_C = 6;  // 24 zmm accumulators + 4 weight vectors + 1 input of 32 registers
#elif POLYLLAMA_AVX2
constexpr int MM_R = 4, MM_C = 3;  // 12 ymm accumulators + 3 inputs + 1 weight vector of 16 registers
#else
constexpr int MM_R = 4, MM_C = 4;  // NEON: 16 of 32 registers; portable: a dot per pair
#endif
static_assert(MM_C <= BATCH_TILE_ROWS, "the attention scratch holds a tile's rows");

// The tile (R <= MM_R weight rows from w with row stride ldw, C <= MM_C activation rows from x
// with row stride ldx, each row d long) into out[r][c]. T is the weights' type: float32, or F16 /
// BF16 converted to float32 as each vector is loaded (ldw then counts 16-bit values). Not inlined: inlined into the product's loops, GCC keeps
// the rows' addresses on the stack and reloads them in the inner loop; on its own it keeps all
// in registers.
template <int R, int C, WType T = WType::f32>
[[gnu::noinline]] static void mm_tile(const void* wp, std::size_t ldw, const float* x, std::size_t ldx, int d,
                                      float (&out)[MM_R][MM_C]) {
    [[maybe_unused]] const float* wf = static_cast<const float*>(wp);
    [[maybe_unused]] const std::uint8_t* wb = static_cast<const std::uint8_t*>(wp);
    // weight value k of row r, as a float (the tails)
    [[maybe_unused]] auto w_at = [&](int r, int k) -> float {
        if constexpr (T == WType::f32) return wf[r * ldw + k];
        else return h16::value_at<T>(wb, r * ldw + k);
    };
#if POLYLLAMA_AVX2 && defined(__AVX512F__)
    auto wload = [&](int r, int j) {
        if constexpr (T == WType::f32) return _mm512_loadu_ps(wf + r * ldw + j);
        else return h16::load16<T>(wb + 2 * (r * ldw + j));
    };
    __m512 acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
    int j = 0;
    for (; j + 16 <= d; j += 16) {
        __m512 wv[R];
        for (int r = 0; r < R; ++r) wv[r] = wload(r, j);
        for (int c = 0; c < C; ++c) {
            __m512 xv = _mm512_loadu_ps(x + c * ldx + j);
            for (int r = 0; r < R; ++r) acc[r][c] = _mm512_fmadd_ps(wv[r], xv, acc[r][c]);
        }
    }
    if (j < d) {  // the last 1..15 values: masked loads read nothing past the row
        const __mmask16 m = static_cast<__mmask16>((1u << (d - j)) - 1);
        __m512 wv[R];
        for (int r = 0; r < R; ++r) {
            if constexpr (T == WType::f32) {
                wv[r] = _mm512_maskz_loadu_ps(m, wf + r * ldw + j);
            } else {  // through a zeroed copy: 16-bit values have no masked load in AVX-512F
                alignas(32) std::uint8_t tail[32] = {};
                std::memcpy(tail, wb + 2 * (r * ldw + j), 2 * static_cast<std::size_t>(d - j));
                wv[r] = h16::load16<T>(tail);
            }
        }
        for (int c = 0; c < C; ++c) {
            __m512 xv = _mm512_maskz_loadu_ps(m, x + c * ldx + j);
            for (int r = 0; r < R; ++r) acc[r][c] = _mm512_fmadd_ps(wv[r], xv, acc[r][c]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) out[r][c] = hsum(fold512(acc[r][c]));
#elif POLYLLAMA_AVX2
    if constexpr (T == WType::f32 || h16::simd<T>) {
        auto wload = [&](int r, int j) {
            if constexpr (T == WType::f32) return _mm256_loadu_ps(wf + r * ldw + j);
            else return h16::load8<T>(wb + 2 * (r * ldw + j));
        };
        __m256 acc[R][C];
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
        int j = 0;
        for (; j + 8 <= d; j += 8) {
            __m256 xv[C];
            for (int c = 0; c < C; ++c) xv[c] = _mm256_loadu_ps(x + c * ldx + j);
            for (int r = 0; r < R; ++r) {
                __m256 wv = wload(r, j);
                for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
            }
        }
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < C; ++c) {
                float s = hsum(acc[r][c]);
                for (int k = j; k < d; ++k) s += w_at(r, k) * x[c * ldx + k];
                out[r][c] = s;
            }
    } else {  // F16 without F16C
        for (int r = 0; r < R; ++r)
            for (int c = 0; c < C; ++c) out[r][c] = h16::dot<T>(wb + 2 * r * ldw, x + c * ldx, d);
    }
#elif POLYLLAMA_NEON
    auto wload = [&](int r, int j) {
        if constexpr (T == WType::f32) return vld1q_f32(wf + r * ldw + j);
        else return h16::load4<T>(wb + 2 * (r * ldw + j));
    };
    float32x4_t acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = vdupq_n_f32(0.0f);
    int j = 0;
    for (; j + 4 <= d; j += 4) {
        float32x4_t xv[C];
        for (int c = 0; c < C; ++c) xv[c] = vld1q_f32(x + c * ldx + j);
        for (int r = 0; r < R; ++r) {
            float32x4_t wv = wload(r, j);
            for (int c = 0; c < C; ++c) acc[r][c] = vfmaq_f32(acc[r][c], wv, xv[c]);
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) {
            float s = vaddvq_f32(acc[r][c]);
            for (int k = j; k < d; ++k) s += w_at(r, k) * x[c * ldx + k];
            out[r][c] = s;
        }
#else
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) {
            if constexpr (T == WType::f32) out[r][c] = dot(wf + r * ldw, x + c * ldx, d);
            else out[r][c] = h16::dot<T>(wb + 2 * r * ldw, x + c * ldx, d);
        }
#endif
}

// The Q8_0 tile: each pair is q8::dot_row, the one-position kernel, so a batched product sums
// exactly as the one-position one does; the tile keeps the R weight rows in L1 while the C
// activation rows pass over them.
template <int R, int C>
static inline void q8_tile(const std::uint8_t* w, std::size_t row_bytes, const std::int8_t* xq, const float* xd,
                           int d, float (&out)[MM_R][MM_C]) {
    const int nb = d / Q8_BLOCK;
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c)
            out[r][c] = q8::dot_row(w + r * row_bytes, xq + static_cast<std::size_t>(c) * d,
                                    xd + static_cast<std::size_t>(c) * nb, nb);
}

// mm_tile / q8_tile with R and C known at compile time: full tiles, and the tails of any size
template <int R, int C0 = 1>
static inline void tile_any(WType type, int c, const void* w, std::size_t row_bytes, const float* x,
                            const std::int8_t* xq, const float* xd, int d, float (&out)[MM_R][MM_C]) {
    if constexpr (C0 <= MM_C) {
        if (c != C0) return tile_any<R, C0 + 1>(type, c, w, row_bytes, x, xq, xd, d, out);
        const auto ld = static_cast<std::size_t>(d);
        switch (type) {
        case WType::q8_0: q8_tile<R, C0>(static_cast<const std::uint8_t*>(w), row_bytes, xq, xd, d, out); break;
        case WType::f16: mm_tile<R, C0, WType::f16>(w, ld, x, ld, d, out); break;
        case WType::bf16: mm_tile<R, C0, WType::bf16>(w, ld, x, ld, d, out); break;
        default: mm_tile<R, C0>(w, ld, x, ld, d, out); break;
        }
    }
}

// mm_tile for any r <= MM_R and c <= MM_C known at run time only
template <int R, int C0 = 1>
static inline void f32_tile_c(int c, const float* w, std::size_t ldw, const float* x, std::size_t ldx, int d,
                              float (&out)[MM_R][MM_C]) {
    if constexpr (C0 <= MM_C) {
        if (c != C0) return f32_tile_c<R, C0 + 1>(c, w, ldw, x, ldx, d, out);
        mm_tile<R, C0>(w, ldw, x, ldx, d, out);
    }
}

static inline void f32_tile(int r, int c, const float* w, std::size_t ldw, const float* x, std::size_t ldx, int d,
                            float (&out)[MM_R][MM_C]) {
    static_assert(MM_R == 4);
    switch (r) {
    case 4: f32_tile_c<4>(c, w, ldw, x, ldx, d, out); break;
    case 3: f32_tile_c<3>(c, w, ldw, x, ldx, d, out); break;
    case 2: f32_tile_c<2>(c, w, ldw, x, ldx, d, out); break;
    default: f32_tile_c<1>(c, w, ldw, x, ldx, d, out); break;
    }
}

// The activations of a batched product: rows of d floats, and their Q8_0 blocks when one of the
// matrices that share them is Q8_0 (xu: the quants plus 128, as unsigned bytes, for the VNNI
// kernel below).
struct BatchInput {
    const float* x;
    const std::int8_t* xq = nullptr;
    const float* xd = nullptr;
    const std::uint8_t* xu = nullptr;
};

#if POLYLLAMA_AVX2 && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define POLYLLAMA_Q8_VNNI512 1
// The Q8_0 product with AVX-512 VNNI. A block's isum is a sum of 32 products; vpdpbusd adds four
// u8 x s8 products into each int32 lane, so with 16 weight rows side by side in a register (4
// bytes of each row per lane) eight vpdpbusd leave the 16 rows' isums of one block in the 16
// lanes, with no horizontal sum. The task's weight rows are repacked that way (q8_pack) into the
// worker's scratch, once per batch, then every activation tile of the batch passes over them.
// vpdpbusd multiplies unsigned by signed bytes: the activations go in as q + 128 (0..255) and
// 128 * sum(w) per row and block, computed at packing, is taken off, so isum is exact.
// Per block: float(isum) * (fp32(dw) * dx), rounded, then added, as in q8::dot_row.
constexpr int Q8_LANES = 16;
// the packed bytes of one group of 16 rows per block: quants, then scales, then corrections
constexpr std::size_t Q8_PACK_BLOCK = Q8_LANES * Q8_BLOCK + Q8_LANES * sizeof(float) + Q8_LANES * sizeof(std::int32_t);

static inline std::size_t q8_pack_bytes(int rows, int d) {
    return static_cast<std::size_t>((rows + Q8_LANES - 1) / Q8_LANES) * (d / Q8_BLOCK) * Q8_PACK_BLOCK;
}

// rows [begin, end) of the Q8_0 matrix w (row_bytes each) into pack: group by group of 16 rows
// (the last one padded with zero rows), block by block: 512 bytes of quants (group of 4 bytes
// k, row j at (k * 16 + j) * 4), 16 float scales, 16 int32 corrections
static void q8_pack(const std::uint8_t* w, std::size_t row_bytes, int begin, int end, int d, std::uint8_t* pack) {
    const int nb = d / Q8_BLOCK;
    for (int g0 = begin; g0 < end; g0 += Q8_LANES) {
        for (int b = 0; b < nb; ++b, pack += Q8_PACK_BLOCK) {
            auto* dw = reinterpret_cast<float*>(pack + Q8_LANES * Q8_BLOCK);
            auto* corr = reinterpret_cast<std::int32_t*>(dw + Q8_LANES);
            for (int j = 0; j < Q8_LANES; ++j) {
                const int r = g0 + j;
                if (r >= end) {
                    for (int k = 0; k < Q8_BLOCK / 4; ++k) std::memset(pack + (k * Q8_LANES + j) * 4, 0, 4);
                    dw[j] = 0.0f, corr[j] = 0;
                    continue;
                }
                const std::uint8_t* block = w + static_cast<std::size_t>(r) * row_bytes + static_cast<std::size_t>(b) * Q8_BLOCK_BYTES;
                const auto* q = reinterpret_cast<const std::int8_t*>(block + 2);
                for (int k = 0; k < Q8_BLOCK / 4; ++k) std::memcpy(pack + (k * Q8_LANES + j) * 4, q + k * 4, 4);
                std::int32_t sum = 0;
                for (int i = 0; i < Q8_BLOCK; ++i) sum += q[i];
                dw[j] = q8::scale_of(block), corr[j] = 128 * sum;
            }
        }
    }
}

// J groups of 16 packed rows (stride group_bytes apart) against C activation rows (xu: d bytes
// each, xd: d / 32 scales each): out[c * 32 + j * 16 + lane]
template <int J, int C>
[[gnu::noinline]] static void q8_vnni_tile(const std::uint8_t* pack, std::size_t group_bytes, const std::uint8_t* xu,
                                           const float* xd, int d, float* out) {
    const int nb = d / Q8_BLOCK;
    __m512 acc[J][C];
    for (int j = 0; j < J; ++j)
        for (int c = 0; c < C; ++c) acc[j][c] = _mm512_setzero_ps();
    for (int b = 0; b < nb; ++b) {
        const std::uint8_t* pb = pack + static_cast<std::size_t>(b) * Q8_PACK_BLOCK;
        __m512i isum[J][C];
        for (int j = 0; j < J; ++j)
            for (int c = 0; c < C; ++c) isum[j][c] = _mm512_setzero_si512();
        for (int k = 0; k < Q8_BLOCK / 4; ++k) {
            __m512i wv[J];
            for (int j = 0; j < J; ++j) wv[j] = _mm512_loadu_si512(pb + j * group_bytes + k * Q8_LANES * 4);
            for (int c = 0; c < C; ++c) {
                std::int32_t four;
                std::memcpy(&four, xu + static_cast<std::size_t>(c) * d + b * Q8_BLOCK + k * 4, 4);
                const __m512i xv = _mm512_set1_epi32(four);
                for (int j = 0; j < J; ++j) isum[j][c] = _mm512_dpbusd_epi32(isum[j][c], xv, wv[j]);
            }
        }
        for (int j = 0; j < J; ++j) {
            const auto* dwp = reinterpret_cast<const float*>(pb + j * group_bytes + Q8_LANES * Q8_BLOCK);
            const __m512 dw = _mm512_loadu_ps(dwp);
            const __m512i corr = _mm512_loadu_si512(dwp + Q8_LANES);
            for (int c = 0; c < C; ++c) {
                // exact: |isum| < 2^24; the zero-masked form because GCC 12 warns that the plain
                // one's undefined pass-through operand is uninitialized
                const __m512 f = _mm512_maskz_cvtepi32_ps(static_cast<__mmask16>(0xffff), _mm512_sub_epi32(isum[j][c], corr));
                const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(xd[static_cast<std::size_t>(c) * nb + b]));
                acc[j][c] = _mm512_add_ps(acc[j][c], _mm512_mul_ps(f, scale));
            }
        }
    }
    for (int j = 0; j < J; ++j)
        for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + c * 2 * Q8_LANES + j * Q8_LANES, acc[j][c]);
}

template <int J, int C0 = 1>
static inline void q8_vnni_any(int c, const std::uint8_t* pack, std::size_t group_bytes, const std::uint8_t* xu,
                               const float* xd, int d, float* out) {
    if constexpr (C0 <= MM_C) {
        if (c != C0) return q8_vnni_any<J, C0 + 1>(c, pack, group_bytes, xu, xd, d, out);
        q8_vnni_tile<J, C0>(pack, group_bytes, xu, xd, d, out);
    }
}

// rows [begin, end) of the Q8_0 matrix against the T rows of the input, through pack
template <class Store>
static inline void q8_matmul_vnni(const Matrix& w, const BatchInput& in, int T, int d, int begin, int end,
                                  std::uint8_t* pack, Store store) {
    const std::size_t row_bytes = static_cast<std::size_t>(d / Q8_BLOCK) * Q8_BLOCK_BYTES;
    const std::size_t group_bytes = static_cast<std::size_t>(d / Q8_BLOCK) * Q8_PACK_BLOCK;
    q8_pack(w.q8.data(), row_bytes, begin, end, d, pack);
    alignas(64) float out[MM_C * 2 * Q8_LANES];
    for (int t0 = 0; t0 < T; t0 += MM_C) {
        const int c = std::min(MM_C, T - t0);
        const std::uint8_t* xu = in.xu + static_cast<std::size_t>(t0) * d;
        const float* xd = in.xd + static_cast<std::size_t>(t0) * (d / Q8_BLOCK);
        for (int i = begin, g = 0; i < end; i += 2 * Q8_LANES, g += 2) {
            const int r = std::min(2 * Q8_LANES, end - i);
            const std::uint8_t* pg = pack + static_cast<std::size_t>(g) * group_bytes;
            if (r > Q8_LANES) q8_vnni_any<2>(c, pg, group_bytes, xu, xd, d, out);
            else q8_vnni_any<1>(c, pg, group_bytes, xu, xd, d, out);
            for (int cc = 0; cc < c; ++cc)
                for (int rr = 0; rr < r; ++rr) store(t0 + cc, i + rr, out[cc * 2 * Q8_LANES + rr]);
        }
    }
}
#endif

// For rows [begin, end) of W (n, d), by W's type, and the T rows of the input:
// store(t, i, X[t] . W[i]). pack: the running worker's scratch for the VNNI kernel (q8_pack_bytes
// of the rows), or null where the build or the input has no VNNI path.
template <class Store>
static inline void matmul(const Matrix& w, const BatchInput& in, int T, int d, int begin, int end, Store store,
                          std::uint8_t* pack = nullptr) {
    const bool quantized = w.quantized();
    const WType type = w.type;
#if POLYLLAMA_Q8_VNNI512
    if (quantized && pack && in.xu) return q8_matmul_vnni(w, in, T, d, begin, end, pack, store);
#else
    (void)pack;
#endif
    const std::size_t row_bytes = quantized ? static_cast<std::size_t>(d / Q8_BLOCK) * Q8_BLOCK_BYTES
                                  : w.half() ? static_cast<std::size_t>(d) * 2
                                             : static_cast<std::size_t>(d) * sizeof(float);
    const auto* base = static_cast<const std::uint8_t*>(w.data());
    float out[MM_R][MM_C];
    auto tile = [&](int i, int t0) {
        const int c = std::min(MM_C, T - t0);
        const float* x = in.x + static_cast<std::size_t>(t0) * d;
        const std::int8_t* xq = quantized ? in.xq + static_cast<std::size_t>(t0) * d : nullptr;
        const float* xd = quantized ? in.xd + static_cast<std::size_t>(t0) * (d / Q8_BLOCK) : nullptr;
        const int r = std::min(MM_R, end - i);
        const void* wr = base + static_cast<std::size_t>(i) * row_bytes;
        switch (r) {
        case 4: tile_any<4>(type, c, wr, row_bytes, x, xq, xd, d, out); break;
        case 3: tile_any<3>(type, c, wr, row_bytes, x, xq, xd, d, out); break;
        case 2: tile_any<2>(type, c, wr, row_bytes, x, xq, xd, d, out); break;
        default: tile_any<1>(type, c, wr, row_bytes, x, xq, xd, d, out); break;
        }
        for (int rr = 0; rr < r; ++rr)
            for (int cc = 0; cc < c; ++cc) store(t0 + cc, i + rr, out[rr][cc]);
    };
    // the activation tile in L1 while the task's weight rows pass over it from L2 (the other
    // order, each weight group in L1 while the activations stream from L2, was slower)
    for (int t0 = 0; t0 < T; t0 += MM_C)
        for (int i = begin; i < end; i += MM_R) tile(i, t0);
}

// Rows of W per task of a batched product: about 256 KB of weights (a block that stays in L2
// while the batch passes over it; 64 and 128 KB were slower), a multiple of the tile's rows,
// 16 to 256 rows.
static inline int mm_task_rows(WType type, int d) {
    std::size_t row_bytes = type == WType::q8_0 ? static_cast<std::size_t>(d / Q8_BLOCK) * Q8_BLOCK_BYTES
                            : type == WType::f32 ? static_cast<std::size_t>(d) * sizeof(float)
                                                 : static_cast<std::size_t>(d) * 2;
    std::size_t rows = std::clamp<std::size_t>((256u << 10) / row_bytes, 16, 256);
    return static_cast<int>(rows / MM_R * MM_R);
}

namespace batched {

void matmul_f32(const float* w, int n, int d, const float* x, int T, float* out) {
    Matrix m(std::span<const float>(w, static_cast<std::size_t>(n) * d));
    matmul(m, {x}, T, d, 0, n, [&](int t, int i, float v) { out[static_cast<std::size_t>(t) * n + i] = v; });
}

void matmul_h16(WType type, const std::uint8_t* w, int n, int d, const float* x, int T, float* out) {
    Matrix m = Matrix::half(type, {w, static_cast<std::size_t>(n) * d * 2});
    matmul(m, {x}, T, d, 0, n, [&](int t, int i, float v) { out[static_cast<std::size_t>(t) * n + i] = v; });
}

void matmul_q8(const std::uint8_t* w, int n, int d, const std::int8_t* xq, const float* xd, int T, float* out) {
    Matrix m = Matrix::q8_0({w, static_cast<std::size_t>(n) * (d / Q8_BLOCK) * Q8_BLOCK_BYTES});
    auto put = [&](int t, int i, float v) { out[static_cast<std::size_t>(t) * n + i] = v; };
#if POLYLLAMA_Q8_VNNI512  // the kernel the forward pass runs on this build: the VNNI one
    std::vector<std::uint8_t> xu(static_cast<std::size_t>(T) * d), pack(q8_pack_bytes(n, d));
    for (std::size_t i = 0; i < xu.size(); ++i) xu[i] = static_cast<std::uint8_t>(xq[i]) ^ 0x80u;
    matmul(m, {nullptr, xq, xd, xu.data()}, T, d, 0, n, put, pack.data());
#else
    matmul(m, {nullptr, xq, xd}, T, d, 0, n, put);
#endif
}

}  // namespace batched

static void rmsnorm(float* out, const float* x, std::span<const float> weight, float eps) {
    int n = static_cast<int>(weight.size());
    float ss = dot(x, x, n) / static_cast<float>(n) + eps;
    float inv = 1.0f / std::sqrt(ss);
    for (int i = 0; i < n; ++i) out[i] = weight[i] * (x[i] * inv);
}

void softmax(std::span<float> x) {
    float max = *std::max_element(x.begin(), x.end());
    for (float& v : x) v = std::exp(v - max);
    float sum = pairwise_sum(x.data(), x.size());
    for (float& v : x) v /= sum;
}

// Rotate adjacent pairs (v[i], v[i+1]) by the angle of their position within the head.
static void rope(float* v, int n, int head_size, const float* cos, const float* sin) {
    for (int i = 0; i < n; i += 2) {
        int k = (i % head_size) / 2;
        float v0 = v[i], v1 = v[i + 1];
        v[i] = v0 * cos[k] - v1 * sin[k];
        v[i + 1] = v0 * sin[k] + v1 * cos[k];
    }
}

// ----------------------------------------------------------------------------
// Forward pass

Transformer::Transformer(const Model& model, ThreadPool& pool, int batch, bool all_logits, int kv_rows)
    : config_(model.config), w_(model.weights), pool_(pool), batch_(clamp_batch(batch, model.config.seq_len)),
      kv_rows_(kv_rows > 0 && kv_rows < model.config.seq_len ? kv_rows : model.config.seq_len),
      s_(model.config, batch_, all_logits ? batch_ : 0, pool.size(), kv_rows_) {
#if POLYLLAMA_Q8_VNNI512
    // the VNNI kernel's buffers, when some matrix is Q8_0: enough for any task of any product
    bool any_q8 = w_.wcls.quantized();
    for (const LayerWeights& l : w_.layers)
        for (const Matrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3}) any_q8 |= m->quantized();
    if (any_q8) {
        const Config& c = config_;
        const int width = std::max(c.dim, c.hidden_dim);
        s_.bxu.resize(cells(batch_, width));
        for (int d : {c.dim, c.hidden_dim})
            if (d % Q8_BLOCK == 0) pack_stride_ = std::max(pack_stride_, q8_pack_bytes(mm_task_rows(WType::q8_0, d), d));
        s_.bpack.resize(cells(pool.size(), static_cast<std::int64_t>(pack_stride_)));
    }
#endif
}

// The steps of forward(), in its order. Each is called once per token (or layer) from forward()
// alone, and is inline so that the compiler folds it back into forward().

// x = the token's embedding (a Q8_0 table's row dequantized, a 16-bit one's converted)
inline void Transformer::embed(int token) {
    const int dim = config_.dim;
    float* x = s_.x.data();
    const Matrix& e = w_.token_embedding;
    if (e.quantized()) {
        const std::size_t row_bytes = static_cast<std::size_t>(dim / Q8_BLOCK) * Q8_BLOCK_BYTES;
        q8::dequantize_row(e.q8.data() + token * row_bytes, dim, x);
    } else if (e.half()) {
        const std::uint8_t* row = e.h16.data() + static_cast<std::size_t>(token) * dim * 2;
        for (int i = 0; i < dim; ++i)
            x[i] = e.type == WType::f16 ? q8::fp16_to_fp32(h16::u16_at(row, i)) : h16::bf16_to_fp32(h16::u16_at(row, i));
    } else {
        std::copy_n(w_.token_embedding.f32.data() + static_cast<std::size_t>(token) * dim, dim, x);
    }
}

// the rotation depends on the position within a head only: one table for every layer
inline void Transformer::rope_table(int pos) {
    const int hs = config_.head_size();
    for (int k = 0; k < hs / 2; ++k) {
        float freq = 1.0f / std::pow(config_.rope_theta, static_cast<float>(2 * k) / static_cast<float>(hs));
        float angle = static_cast<float>(pos) * freq;
        s_.rope_cos[k] = std::cos(angle);
        s_.rope_sin[k] = std::sin(angle);
    }
}

// attention rmsnorm, then q, k, v in one job (k and v land straight in the cache at pos), rotated
inline void Transformer::qkv(const LayerWeights& lw, float* k, float* v) {
    RunState& s = s_;
    const int dim = config_.dim, kv_dim = config_.kv_dim(), hs = config_.head_size();
    float* q = s.q.data();
    rmsnorm(s.xb.data(), s.x.data(), lw.rms_att, config_.norm_eps);
    const Input qkv_in = input_for(s, s.xb.data(), dim, {&lw.wq, &lw.wk, &lw.wv});
    const int q_tasks = tasks_for(dim), kv_tasks = tasks_for(kv_dim);
    pool_.parallel_for(q_tasks + 2 * kv_tasks, [&](int task) {
        auto put = [](float* out) { return [out](int i, float val) { out[i] = val; }; };
        if (task < q_tasks) {
            Range r = task_rows(task, dim);
            matvec(lw.wq, qkv_in, dim, r.begin, r.end, put(q));
        } else if (task < q_tasks + kv_tasks) {
            Range r = task_rows(task - q_tasks, kv_dim);
            matvec(lw.wk, qkv_in, dim, r.begin, r.end, put(k));
        } else {
            Range r = task_rows(task - q_tasks - kv_tasks, kv_dim);
            matvec(lw.wv, qkv_in, dim, r.begin, r.end, put(v));
        }
    });
    rope(q, dim, hs, s.rope_cos.data(), s.rope_sin.data());
    rope(k, kv_dim, hs, s.rope_cos.data(), s.rope_sin.data());
}

// multi-head attention of q over positions 0..pos of this layer's cache, into xb; one task per head
inline void Transformer::attention(const float* key_cache, const float* value_cache, int pos) {
    const Config& p = config_;
    RunState& s = s_;
    const int kv_dim = p.kv_dim(), hs = p.head_size(), kv_mul = p.n_heads / p.n_kv_heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
    const float* q = s.q.data();
    float* xb = s.xb.data();
    pool_.parallel_for(p.n_heads, [&](int h) {
        const float* qh = q + h * hs;
        float* att = s.att.data() + static_cast<std::size_t>(h) * kv_rows_;  // (pos + 1)
        const std::size_t kv_off = static_cast<std::size_t>(h / kv_mul) * hs;  // this head's KV head
        for (int t = 0; t <= pos; ++t)
            att[t] = dot(qh, key_cache + static_cast<std::size_t>(t) * kv_dim + kv_off, hs) * scale;
        softmax({att, static_cast<std::size_t>(pos) + 1});
        float* out = xb + h * hs;  // (head_size)
        std::fill_n(out, hs, 0.0f);
        for (int t = 0; t <= pos; ++t) {
            const float* vt = value_cache + static_cast<std::size_t>(t) * kv_dim + kv_off;
            const float a = att[t];
            for (int i = 0; i < hs; ++i) out[i] += a * vt[i];
        }
    });
}

// x += wo @ attention output: each row belongs to one task, so add in place
inline void Transformer::attention_out(const LayerWeights& lw) {
    const int dim = config_.dim;
    float* x = s_.x.data();
    const Input wo_in = input_for(s_, s_.xb.data(), dim, {&lw.wo});
    pool_.parallel_for(tasks_for(dim), [&](int task) {
        Range r = task_rows(task, dim);
        matvec(lw.wo, wo_in, dim, r.begin, r.end, [x](int i, float val) { x[i] += val; });
    });
}

// ffn rmsnorm, then x += w2 @ SwiGLU(w1 @ xb, w3 @ xb); a task owns the same rows of w1 and w3,
// so SwiGLU fuses in
inline void Transformer::feed_forward(const LayerWeights& lw) {
    RunState& s = s_;
    const int dim = config_.dim, hidden = config_.hidden_dim;
    float* x = s.x.data();
    float* xb = s.xb.data();
    float* hb = s.hb.data();
    rmsnorm(xb, x, lw.rms_ffn, config_.norm_eps);
    const Input ffn_in = input_for(s, xb, dim, {&lw.w1, &lw.w3});
    pool_.parallel_for(tasks_for(hidden), [&](int task) {
        Range r = task_rows(task, hidden);
        matvec(lw.w1, ffn_in, dim, r.begin, r.end, [hb](int i, float val) { hb[i] = val; });
        matvec(lw.w3, ffn_in, dim, r.begin, r.end, [hb](int i, float up) {
            float gate = hb[i];
            hb[i] = gate / (1.0f + std::exp(-gate)) * up;
        });
    });
    const Input w2_in = input_for(s, hb, hidden, {&lw.w2});
    pool_.parallel_for(tasks_for(dim), [&](int task) {
        Range r = task_rows(task, dim);
        matvec(lw.w2, w2_in, hidden, r.begin, r.end, [x](int i, float val) { x[i] += val; });
    });
}

// final rmsnorm, then the classifier into logits
inline void Transformer::classify() {
    const Config& p = config_;
    const int dim = p.dim;
    float* x = s_.x.data();
    rmsnorm(x, x, w_.rms_final, config_.norm_eps);
    float* logits = s_.logits.data();
    const Input cls_in = input_for(s_, x, dim, {&w_.wcls});
    pool_.parallel_for(tasks_for(p.vocab_size), [&](int task) {
        Range r = task_rows(task, p.vocab_size);
        matvec(w_.wcls, cls_in, dim, r.begin, r.end, [logits](int i, float val) { logits[i] = val; });
    });
}

std::span<float> Transformer::forward(int token, int pos) {
    const Config& p = config_;
    const int kv_dim = p.kv_dim();
    if (pos < 0 || pos >= kv_rows_)
        throw RuntimeError("forward: position " + std::to_string(pos) + " is outside the KV cache's " +
                           std::to_string(kv_rows_) + " positions");
    embed(token);
    rope_table(pos);
    for (int l = 0; l < p.n_layers; ++l) {
        const LayerWeights& lw = w_.layers[l];
        std::size_t layer_off = static_cast<std::size_t>(l) * kv_rows_ * kv_dim;
        float* key_cache = s_.key_cache.get() + layer_off;      // (kv_rows, kv_dim) of this layer
        float* value_cache = s_.value_cache.get() + layer_off;  // (kv_rows, kv_dim)
        qkv(lw, key_cache + static_cast<std::size_t>(pos) * kv_dim, value_cache + static_cast<std::size_t>(pos) * kv_dim);
        attention(key_cache, value_cache, pos);
        attention_out(lw);
        feed_forward(lw);
    }
    classify();
    return s_.logits;
}

// ----------------------------------------------------------------------------
// Forward pass, batched: forward() for n positions at once (the prompt). Row t of the batch
// matrices is position p0 + t; each weight matrix is one product over all rows, so it is read
// once per batch rather than once per position.

// the rows' inputs quantized into the batch buffers when any of `mats` needs them: row by row,
// blocks of 32 along each row, as q8::quantize does for one position
static BatchInput batch_input_for(RunState& s, const float* x, int n, int d, std::initializer_list<const Matrix*> mats) {
    for (const Matrix* m : mats)
        if (m->quantized()) {
            for (int t = 0; t < n; ++t)
                q8::quantize(x + static_cast<std::size_t>(t) * d, d, s.bxq.data() + static_cast<std::size_t>(t) * d,
                             s.bxd.data() + static_cast<std::size_t>(t) * (d / Q8_BLOCK));
            if (s.bxu.empty()) return {x, s.bxq.data(), s.bxd.data()};
            const std::size_t cells = static_cast<std::size_t>(n) * d;  // q + 128: the sign bit flipped
            for (std::size_t i = 0; i < cells; ++i) s.bxu[i] = static_cast<std::uint8_t>(s.bxq[i]) ^ 0x80u;
            return {x, s.bxq.data(), s.bxd.data(), s.bxu.data()};
        }
    return {x};
}

// attention rmsnorm, then q, k, v for every row in one job (k and v land straight in the cache
// at p0 + t), then every row rotated: all of the batch's keys are in the cache before any row
// attends
inline void Transformer::batch_qkv(const LayerWeights& lw, float* key_cache, float* value_cache, int n, int p0) {
    RunState& s = s_;
    const int dim = config_.dim, kv_dim = config_.kv_dim(), hs = config_.head_size();
    for (int t = 0; t < n; ++t)
        rmsnorm(s.bxb.data() + static_cast<std::size_t>(t) * dim, s.bx.data() + static_cast<std::size_t>(t) * dim,
                lw.rms_att, config_.norm_eps);
    const BatchInput in = batch_input_for(s, s.bxb.data(), n, dim, {&lw.wq, &lw.wk, &lw.wv});
    const int q_rows = mm_task_rows(lw.wq.type, dim), k_rows = mm_task_rows(lw.wk.type, dim), v_rows = mm_task_rows(lw.wv.type, dim);
    const int q_tasks = (dim + q_rows - 1) / q_rows, k_tasks = (kv_dim + k_rows - 1) / k_rows,
              v_tasks = (kv_dim + v_rows - 1) / v_rows;
    float* q = s.bq.data();
    float* k = key_cache + static_cast<std::size_t>(p0) * kv_dim;
    float* v = value_cache + static_cast<std::size_t>(p0) * kv_dim;
    pool_.parallel_for(q_tasks + k_tasks + v_tasks, [&](int task, int worker) {
        auto put = [](float* out, int width) {
            return [out, width](int t, int i, float val) { out[static_cast<std::size_t>(t) * width + i] = val; };
        };
        if (task < q_tasks) {
            matmul(lw.wq, in, n, dim, task * q_rows, std::min(dim, (task + 1) * q_rows), put(q, dim), pack(worker));
        } else if ((task -= q_tasks) < k_tasks) {
            matmul(lw.wk, in, n, dim, task * k_rows, std::min(kv_dim, (task + 1) * k_rows), put(k, kv_dim), pack(worker));
        } else {
            task -= k_tasks;
            matmul(lw.wv, in, n, dim, task * v_rows, std::min(kv_dim, (task + 1) * v_rows), put(v, kv_dim), pack(worker));
        }
    });
    for (int t = 0; t < n; ++t) {
        const float* cos = s.brope_cos.data() + static_cast<std::size_t>(t) * (hs / 2);
        const float* sin = s.brope_sin.data() + static_cast<std::size_t>(t) * (hs / 2);
        rope(q + static_cast<std::size_t>(t) * dim, dim, hs, cos, sin);
        rope(k + static_cast<std::size_t>(t) * kv_dim, kv_dim, hs, cos, sin);
    }
}

// out[c] = sum over i <= last of att[c][i] * v[i], for the C <= MM_C rows of att (row stride
// lda) and v's rows (stride ldv, hs long): each value vector loaded once for all C rows, the
// outputs held in registers along hs (up to 64 values of each row at once, so that a load of v
// feeds C FMAs and the broadcast of a score feeds up to 4).
template <int C>
static void weighted_sum(const float* att, std::size_t lda, const float* v, std::size_t ldv, int last, int hs,
                         float* out, std::size_t ldo) {
    int k0 = 0;
#if POLYLLAMA_AVX2 && defined(__AVX512F__)
    for (; k0 + 64 <= hs; k0 += 64) {
        __m512 acc[C][4];
        for (int cc = 0; cc < C; ++cc)
            for (int q = 0; q < 4; ++q) acc[cc][q] = _mm512_setzero_ps();
        for (int i = 0; i <= last; ++i) {
            __m512 vi[4];
            for (int q = 0; q < 4; ++q) vi[q] = _mm512_loadu_ps(v + i * ldv + k0 + 16 * q);
            for (int cc = 0; cc < C; ++cc) {
                const __m512 a = _mm512_set1_ps(att[cc * lda + i]);
                for (int q = 0; q < 4; ++q) acc[cc][q] = _mm512_fmadd_ps(a, vi[q], acc[cc][q]);
            }
        }
        for (int cc = 0; cc < C; ++cc)
            for (int q = 0; q < 4; ++q) _mm512_storeu_ps(out + cc * ldo + k0 + 16 * q, acc[cc][q]);
    }
    for (; k0 + 16 <= hs; k0 += 16) {
        __m512 acc[C];
        for (int cc = 0; cc < C; ++cc) acc[cc] = _mm512_setzero_ps();
        for (int i = 0; i <= last; ++i) {
            __m512 vi = _mm512_loadu_ps(v + i * ldv + k0);
            for (int cc = 0; cc < C; ++cc) acc[cc] = _mm512_fmadd_ps(_mm512_set1_ps(att[cc * lda + i]), vi, acc[cc]);
        }
        for (int cc = 0; cc < C; ++cc) _mm512_storeu_ps(out + cc * ldo + k0, acc[cc]);
    }
#elif POLYLLAMA_AVX2
    for (; k0 + 8 <= hs; k0 += 8) {
        __m256 acc[C];
        for (int cc = 0; cc < C; ++cc) acc[cc] = _mm256_setzero_ps();
        for (int i = 0; i <= last; ++i) {
            __m256 vi = _mm256_loadu_ps(v + i * ldv + k0);
            for (int cc = 0; cc < C; ++cc) acc[cc] = _mm256_fmadd_ps(_mm256_set1_ps(att[cc * lda + i]), vi, acc[cc]);
        }
        for (int cc = 0; cc < C; ++cc) _mm256_storeu_ps(out + cc * ldo + k0, acc[cc]);
    }
#endif
    if (k0 < hs) {  // what the vectors left (all of it on other targets): row by row
        for (int cc = 0; cc < C; ++cc) {
            float* o = out + cc * ldo;
            std::fill(o + k0, o + hs, 0.0f);
            for (int i = 0; i <= last; ++i) {
                const float a = att[cc * lda + i];
                const float* vi = v + i * ldv;
                for (int k = k0; k < hs; ++k) o[k] += a * vi[k];
            }
        }
    }
}

template <int C0 = 1>
static inline void weighted_sum_any(int c, const float* att, std::size_t lda, const float* v, std::size_t ldv, int last,
                                    int hs, float* out, std::size_t ldo) {
    if constexpr (C0 <= MM_C) {
        if (c != C0) return weighted_sum_any<C0 + 1>(c, att, lda, v, ldv, last, hs, out, ldo);
        weighted_sum<C0>(att, lda, v, ldv, last, hs, out, ldo);
    }
}

// softmax() with the maximum taken in eight independent lanes (the same maximum: the order
// does not matter to it) instead of one serial chain, which held up the attention's rows
static void softmax_row(float* x, std::size_t n) {
    float m[8];
    std::fill_n(m, 8, x[0]);
    std::size_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; ++k) m[k] = std::max(m[k], x[i + k]);
    for (; i < n; ++i) m[0] = std::max(m[0], x[i]);
    const float max = std::max(std::max(std::max(m[0], m[1]), std::max(m[2], m[3])),
                               std::max(std::max(m[4], m[5]), std::max(m[6], m[7])));
    for (std::size_t k = 0; k < n; ++k) x[k] = std::exp(x[k] - max);
    const float sum = pairwise_sum(x, n);
    for (std::size_t k = 0; k < n; ++k) x[k] /= sum;
}

// causal multi-head attention: row t attends to cache positions 0 .. p0 + t. A task is one head
// and a tile of MM_C consecutive rows (MM_C (row, head) pairs): their scores against the keys
// are one product (the keys as the weight rows, through the matmul tile), each row's softmax
// runs over its own positions, and the scores past a row's position are zero in the weighted
// sum of the values; the scores live in the running worker's scratch.
inline void Transformer::batch_attention(const float* key_cache, const float* value_cache, int n, int p0) {
    const Config& p = config_;
    RunState& s = s_;
    const int dim = p.dim, kv_dim = p.kv_dim(), hs = p.head_size(), kv_mul = p.n_heads / p.n_kv_heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
    const int row_tiles = (n + MM_C - 1) / MM_C;
    const std::size_t lda = static_cast<std::size_t>(kv_rows_);
    pool_.parallel_for(row_tiles * p.n_heads, [&](int task, int worker) {
        const int h = task % p.n_heads, t0 = task / p.n_heads * MM_C, c = std::min(MM_C, n - t0);
        const int last = p0 + t0 + c - 1;  // the tile's last row's position
        const float* q = s.bq.data() + static_cast<std::size_t>(t0) * dim + h * hs;
        const std::size_t kv_off = static_cast<std::size_t>(h / kv_mul) * hs;  // this head's KV head
        float* att = s.batt.data() + static_cast<std::size_t>(worker) * BATCH_TILE_ROWS * lda;  // (MM_C, kv_rows)
        float out[MM_R][MM_C];
        for (int i = 0; i <= last; i += MM_R) {
            const int r = std::min(MM_R, last + 1 - i);
            f32_tile(r, c, key_cache + static_cast<std::size_t>(i) * kv_dim + kv_off, kv_dim, q, dim, hs, out);
            for (int rr = 0; rr < r; ++rr)
                for (int cc = 0; cc < c; ++cc) att[cc * lda + i + rr] = out[rr][cc] * scale;
        }
        for (int cc = 0; cc < c; ++cc) {
            const int pos = p0 + t0 + cc;
            softmax_row(att + cc * lda, static_cast<std::size_t>(pos) + 1);
            std::fill(att + cc * lda + pos + 1, att + cc * lda + last + 1, 0.0f);
        }
        weighted_sum_any(c, att, lda, value_cache + kv_off, kv_dim, last, hs,
                     s.bxb.data() + static_cast<std::size_t>(t0) * dim + h * hs, dim);
    });
}

// X += attention output @ wo^T: each element belongs to one task, so add in place
inline void Transformer::batch_attention_out(const LayerWeights& lw, int n) {
    RunState& s = s_;
    const int dim = config_.dim;
    float* x = s.bx.data();
    const BatchInput in = batch_input_for(s, s.bxb.data(), n, dim, {&lw.wo});
    const int rows = mm_task_rows(lw.wo.type, dim);
    pool_.parallel_for((dim + rows - 1) / rows, [&](int task, int worker) {
        matmul(lw.wo, in, n, dim, task * rows, std::min(dim, (task + 1) * rows),
               [x, dim](int t, int i, float val) { x[static_cast<std::size_t>(t) * dim + i] += val; }, pack(worker));
    });
}

// ffn rmsnorm, then X += SwiGLU(XB @ w1^T, XB @ w3^T) @ w2^T; a task owns the same rows of w1
// and w3, so SwiGLU fuses in
inline void Transformer::batch_feed_forward(const LayerWeights& lw, int n) {
    RunState& s = s_;
    const int dim = config_.dim, hidden = config_.hidden_dim;
    float* x = s.bx.data();
    float* hb = s.bhb.data();
    for (int t = 0; t < n; ++t)
        rmsnorm(s.bxb.data() + static_cast<std::size_t>(t) * dim, x + static_cast<std::size_t>(t) * dim, lw.rms_ffn, config_.norm_eps);
    const BatchInput ffn_in = batch_input_for(s, s.bxb.data(), n, dim, {&lw.w1, &lw.w3});
    const int rows = std::min(mm_task_rows(lw.w1.type, dim), mm_task_rows(lw.w3.type, dim));
    pool_.parallel_for((hidden + rows - 1) / rows, [&](int task, int worker) {
        const int begin = task * rows, end = std::min(hidden, (task + 1) * rows);
        matmul(lw.w1, ffn_in, n, dim, begin, end,
               [hb, hidden](int t, int i, float val) { hb[static_cast<std::size_t>(t) * hidden + i] = val; }, pack(worker));
        matmul(lw.w3, ffn_in, n, dim, begin, end, [hb, hidden](int t, int i, float up) {
            float& h = hb[static_cast<std::size_t>(t) * hidden + i];
            h = h / (1.0f + std::exp(-h)) * up;
        }, pack(worker));
    });
    const BatchInput w2_in = batch_input_for(s, hb, n, hidden, {&lw.w2});
    const int w2_rows = mm_task_rows(lw.w2.type, hidden);
    pool_.parallel_for((dim + w2_rows - 1) / w2_rows, [&](int task, int worker) {
        matmul(lw.w2, w2_in, n, hidden, task * w2_rows, std::min(dim, (task + 1) * w2_rows),
               [x, dim](int t, int i, float val) { x[static_cast<std::size_t>(t) * dim + i] += val; }, pack(worker));
    });
}

std::span<float> Transformer::forward_batch(std::span<const int> tokens, int p0, Logits want) {
    const Config& p = config_;
    const int n = static_cast<int>(tokens.size()), dim = p.dim, kv_dim = p.kv_dim(), hs = p.head_size();
    if (n < 1 || n > batch_ || p0 < 0 || p0 + n > kv_rows_ || (want == Logits::all && s_.blogits.empty()))
        throw RuntimeError("forward_batch: " + std::to_string(n) + " rows at position " + std::to_string(p0) +
                           " do not fit the batch buffers");
    if (n == 1) {  // one position: the matrix-vector path is the faster one
        std::span<float> logits = forward(tokens[0], p0);
        if (want != Logits::all) return logits;
        std::copy(logits.begin(), logits.end(), s_.blogits.begin());
        return {s_.blogits.data(), logits.size()};
    }
    for (int t = 0; t < n; ++t) {  // the embeddings, and each row's rotation (as rope_table)
        embed(tokens[t]);
        std::copy_n(s_.x.data(), dim, s_.bx.data() + static_cast<std::size_t>(t) * dim);
        for (int k = 0; k < hs / 2; ++k) {
            float freq = 1.0f / std::pow(config_.rope_theta, static_cast<float>(2 * k) / static_cast<float>(hs));
            float angle = static_cast<float>(p0 + t) * freq;
            s_.brope_cos[static_cast<std::size_t>(t) * (hs / 2) + k] = std::cos(angle);
            s_.brope_sin[static_cast<std::size_t>(t) * (hs / 2) + k] = std::sin(angle);
        }
    }
    for (int l = 0; l < p.n_layers; ++l) {
        const LayerWeights& lw = w_.layers[l];
        std::size_t layer_off = static_cast<std::size_t>(l) * kv_rows_ * kv_dim;
        float* key_cache = s_.key_cache.get() + layer_off;
        float* value_cache = s_.value_cache.get() + layer_off;
        batch_qkv(lw, key_cache, value_cache, n, p0);
        batch_attention(key_cache, value_cache, n, p0);
        batch_attention_out(lw, n);
        batch_feed_forward(lw, n);
    }
    if (want == Logits::none) return {};
    if (want == Logits::last) {  // the last row through forward()'s own classifier
        std::copy_n(s_.bx.data() + static_cast<std::size_t>(n - 1) * dim, dim, s_.x.data());
        classify();
        return s_.logits;
    }
    float* x = s_.bx.data();
    for (int t = 0; t < n; ++t) rmsnorm(x + static_cast<std::size_t>(t) * dim, x + static_cast<std::size_t>(t) * dim, w_.rms_final, config_.norm_eps);
    const BatchInput in = batch_input_for(s_, x, n, dim, {&w_.wcls});
    const int vocab = p.vocab_size, rows = mm_task_rows(w_.wcls.type, dim);
    float* logits = s_.blogits.data();
    pool_.parallel_for((vocab + rows - 1) / rows, [&](int task, int worker) {
        matmul(w_.wcls, in, n, dim, task * rows, std::min(vocab, (task + 1) * rows),
               [logits, vocab](int t, int i, float val) { logits[static_cast<std::size_t>(t) * vocab + i] = val; },
               pack(worker));
    });
    return {logits, static_cast<std::size_t>(n) * vocab};
}

// ----------------------------------------------------------------------------
// Tokenizer

Tokenizer::Tokenizer(Vocab vocab, int bos, int eos) : vocab_(std::move(vocab)), bos_(bos), eos_(eos) {
    ids_.reserve(vocab_.pieces.size());
    for (std::size_t i = 0; i < vocab_.pieces.size(); ++i)
        ids_.emplace(vocab_.pieces[i], static_cast<int>(i));  // emplace keeps the lower id of a duplicate
    byte_pieces_.resize(256);
    for (int b = 0; b < 256; ++b) byte_pieces_[b] = static_cast<char>(b);
}

std::optional<int> Tokenizer::lookup(std::string_view piece) const {
    auto it = ids_.find(piece);
    if (it == ids_.end()) return std::nullopt;
    return it->second;
}

std::vector<int> Tokenizer::encode(std::string_view text, bool bos, bool eos) const {
    std::vector<int> tokens;
    tokens.reserve(text.size() + 3);
    if (bos) tokens.push_back(bos_);
    if (!text.empty()) {
        // the dummy prefix: sentencepiece's add_dummy_prefix
        auto space = lookup(" ");
        if (!space) throw RuntimeError("the tokenizer has no piece for \" \" (the dummy prefix)");
        tokens.push_back(*space);
    }
    // UTF-8 code points as groups of up to four bytes; unknown ones fall back to byte tokens
    std::string group;
    for (std::size_t i = 0; i < text.size(); ++i) {
        auto b = static_cast<unsigned char>(text[i]);
        if ((b & 0xC0) != 0x80) group.clear();
        group.push_back(static_cast<char>(b));
        unsigned char next = i + 1 < text.size() ? static_cast<unsigned char>(text[i + 1]) : 0;
        if ((next & 0xC0) == 0x80 && group.size() < 4) continue;
        if (auto id = lookup(group)) {
            tokens.push_back(*id);
        } else {
            for (unsigned char c : group) tokens.push_back(c + 3);  // <0x00> is id 3
        }
        group.clear();
    }
    for (int t : tokens)
        if (t >= vocab_size())
            throw RuntimeError("token id " + std::to_string(t) + " from the prompt is outside the tokenizer's " +
                               std::to_string(vocab_size()) + "-token vocabulary");

    // merge the best-scoring adjacent pair until none merges; the leftmost wins ties
    std::string merged;
    for (;;) {
        float best_score = -INFINITY;
        int best_id = -1;
        std::size_t best_i = 0;
        for (std::size_t i = 0; i + 1 < tokens.size(); ++i) {
            merged.assign(vocab_.pieces[tokens[i]]).append(vocab_.pieces[tokens[i + 1]]);
            auto id = lookup(merged);
            if (id && vocab_.scores[*id] > best_score) {
                best_score = vocab_.scores[*id];
                best_id = *id;
                best_i = i;
            }
        }
        if (best_id < 0) break;
        tokens[best_i] = best_id;
        tokens.erase(tokens.begin() + static_cast<std::ptrdiff_t>(best_i) + 1);
    }
    if (eos) tokens.push_back(eos_);
    return tokens;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

std::string_view Tokenizer::decode(int prev, int token) const {
    std::string_view piece = vocab_.pieces[token];
    // sentencepiece drops the leading space of the first piece after BOS
    if (prev == bos_ && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
    // raw byte tokens, exactly "<0xHH>", stand for that byte
    if (piece.size() == 6 && piece.starts_with("<0x") && piece[5] == '>') {
        int hi = hex_digit(piece[3]), lo = hex_digit(piece[4]);
        if (hi >= 0 && lo >= 0) return std::string_view(byte_pieces_).substr(hi * 16 + lo, 1);
    }
    return piece;
}

std::string_view safe_piece(std::string_view piece) {
    if (piece.empty()) return {};
    if (piece.size() == 1) {
        auto b = static_cast<unsigned char>(piece[0]);
        bool printable = b >= 0x20 && b <= 0x7E;
        bool space = b == '\t' || b == '\n' || b == '\v' || b == '\f' || b == '\r';
        if (!printable && !space) return {};
    }
    return piece;
}

// ----------------------------------------------------------------------------
// Sampler

std::uint32_t Rng::next_u32() {
    state_ ^= state_ >> 12;
    state_ ^= state_ << 25;
    state_ ^= state_ >> 27;
    return static_cast<std::uint32_t>((state_ * 0x2545F4914F6CDD1DULL) >> 32);
}

float Rng::next_f32() { return static_cast<float>(next_u32() >> 8) / 16777216.0f; }

float pairwise_sum(const float* a, std::size_t n) {
    if (n < 8) {
        float res = 0.0f;
        for (std::size_t i = 0; i < n; ++i) res += a[i];
        return res;
    }
    if (n <= 128) {
        float r[8];
        for (int k = 0; k < 8; ++k) r[k] = a[k];
        std::size_t i = 8;
        for (; i < n - n % 8; i += 8)
            for (int k = 0; k < 8; ++k) r[k] += a[i + k];
        float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) res += a[i];
        return res;
    }
    std::size_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

int sample_argmax(std::span<const float> logits) {
    return static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());  // first maximum
}

int sample_mult(std::span<const float> probs, float coin) {
    float cdf = 0.0f;
    for (std::size_t i = 0; i < probs.size(); ++i) {
        cdf += probs[i];
        if (coin < cdf) return static_cast<int>(i);
    }
    return static_cast<int>(probs.size()) - 1;  // rounding left the sum below coin
}

int sample_topp(std::span<const float> probs, float topp, float coin, std::vector<ProbIndex>& scratch) {
    const int n = static_cast<int>(probs.size());
    if (n == 1) return 0;
    // ids below the cutoff cannot be in the nucleus: dropping them first keeps the sort short
    const float cutoff = (1.0f - topp) / static_cast<float>(n - 1);
    scratch.clear();
    for (int i = 0; i < n; ++i)
        if (probs[i] >= cutoff) scratch.push_back({probs[i], i});
    if (scratch.empty())  // a flat distribution and a tiny top-p: the most likely id
        return static_cast<int>(std::max_element(probs.begin(), probs.end()) - probs.begin());
    std::sort(scratch.begin(), scratch.end(), [](const ProbIndex& a, const ProbIndex& b) {
        return a.prob > b.prob || (a.prob == b.prob && a.index < b.index);
    });
    float cumulative = 0.0f;
    std::size_t last = scratch.size() - 1;
    for (std::size_t i = 0; i < scratch.size(); ++i) {
        cumulative += scratch[i].prob;
        if (cumulative > topp) {
            last = i;
            break;
        }
    }
    const float r = coin * cumulative;
    float cdf = 0.0f;
    for (std::size_t i = 0; i <= last; ++i) {
        cdf += scratch[i].prob;
        if (r < cdf) return scratch[i].index;
    }
    return scratch[last].index;
}

Sampler::Sampler(float temperature, float topp, std::uint64_t seed)
    : temperature_(temperature), topp_(topp), rng_(seed) {}

int Sampler::sample(std::span<float> logits) {
    if (temperature_ == 0.0f) return sample_argmax(logits);
    for (float& l : logits) l /= temperature_;
    softmax(logits);
    float coin = rng_.next_f32();
    if (topp_ <= 0.0f || topp_ >= 1.0f) return sample_mult(logits, coin);
    return sample_topp(logits, topp_, coin, scratch_);
}

// ----------------------------------------------------------------------------
// Generation

using Clock = std::chrono::steady_clock;

static double seconds(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
}

struct RunStats {
    std::int64_t prompt_tokens = 0, generated_tokens = 0, positions = 0, prefilled = 0;
    double ttft_s = 0, prefill_s = 0, decode_s = 0;
};

static void emit(std::string_view piece) {
    if (piece.empty()) return;
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
}

static RunStats generate(Transformer& transformer, const Tokenizer& tokenizer, Sampler& sampler,
                         std::string_view prompt, int steps, bool ignore_bos) {
    std::vector<int> prompt_tokens = tokenizer.encode(prompt, true, false);
    RunStats stats;
    const int n_prompt = static_cast<int>(prompt_tokens.size());
    stats.prompt_tokens = n_prompt;
    auto start = Clock::now();
    // prefill: the prompt's positions in batches; logits only after the last prompt token
    const int n_prefill = std::min(n_prompt, steps), batch = transformer.batch();
    std::span<float> logits;
    for (int p0 = 0; p0 < n_prefill; p0 += batch) {
        const int n = std::min(batch, n_prefill - p0);
        const bool last = p0 + n == n_prefill && n_prefill == n_prompt;
        logits = transformer.forward_batch(std::span<const int>(prompt_tokens).subspan(p0, n), p0,
                                           last ? Logits::last : Logits::none);
    }
    stats.positions = stats.prefilled = n_prefill;
    stats.prefill_s = seconds(start, Clock::now());
    // decode, as run.c's loop: the prompt's positions were the prefill's
    int token = prompt_tokens[0];
    std::optional<Clock::time_point> first;
    for (int pos = 0; pos < steps; ++pos) {
        int next;
        if (pos < n_prompt - 1) {
            next = prompt_tokens[pos + 1];  // still forcing the prompt
        } else {
            if (pos >= n_prompt) {
                logits = transformer.forward(token, pos);
                ++stats.positions;
            }
            next = sampler.sample(logits);
            ++stats.generated_tokens;
            if (!first) first = Clock::now();
        }
        if (next == tokenizer.bos() && !ignore_bos) break;  // BOS delimits sequences
        emit(safe_piece(tokenizer.decode(token, next)));
        token = next;
    }
    auto end = Clock::now();
    stats.ttft_s = seconds(start, first.value_or(end));
    stats.decode_s = first ? seconds(*first, end) : 0.0;
    return stats;
}

// The logits after each of `ids`, written as raw float32 rows to `path`.
static RunStats write_logits(Transformer& transformer, const std::vector<int>& ids, const std::string& path) {
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> out(std::fopen(path.c_str(), "wb"), std::fclose);
    if (!out) throw RuntimeError(path + ": cannot write: " + std::strerror(errno));
    RunStats stats;
    const int n_ids = static_cast<int>(ids.size()), batch = transformer.batch();
    stats.prompt_tokens = stats.positions = stats.prefilled = n_ids;
    auto start = Clock::now();
    for (int p0 = 0; p0 < n_ids; p0 += batch) {
        const int n = std::min(batch, n_ids - p0);
        std::span<float> logits = transformer.forward_batch(std::span<const int>(ids).subspan(p0, n), p0, Logits::all);
        if (std::fwrite(logits.data(), sizeof(float), logits.size(), out.get()) != logits.size())
            throw RuntimeError(path + ": cannot write: " + std::strerror(errno));
    }
    stats.ttft_s = stats.prefill_s = seconds(start, Clock::now());
    if (std::fflush(out.get()) != 0) throw RuntimeError(path + ": cannot write: " + std::strerror(errno));
    return stats;
}

// ----------------------------------------------------------------------------
// Command line

constexpr const char* USAGE =
    "usage: run <checkpoint> [-z tokenizer] [-t temperature] [-p topp] [-s seed] [-n steps] "
    "[-i prompt] [-j threads] [-m generate|logits] [-o file] [-k ids] [-e 0|1] [-b batch]";

static std::string_view trim(std::string_view s) {
    auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; };
    while (!s.empty() && ws(s.front())) s.remove_prefix(1);
    while (!s.empty() && ws(s.back())) s.remove_suffix(1);
    return s;
}

// A decimal integer `[+-]?[0-9]+`. The contract allows nothing else; -k's ids, which the
// reference reads with Python's int(), may also carry surrounding spaces.
struct ParsedInt {
    bool negative = false;
    std::uint64_t magnitude = 0;
    bool overflow = false;  // more than 64 bits: out of every range here
};

static std::optional<ParsedInt> parse_integer(std::string_view s) {
    ParsedInt v;
    if (!s.empty() && (s[0] == '+' || s[0] == '-')) {
        v.negative = s[0] == '-';
        s.remove_prefix(1);
    }
    if (s.empty()) return std::nullopt;
    for (char c : s) {
        if (c < '0' || c > '9') return std::nullopt;
        auto digit = static_cast<std::uint64_t>(c - '0');
        if (v.magnitude > (UINT64_MAX - digit) / 10) v.overflow = true;
        else v.magnitude = v.magnitude * 10 + digit;
    }
    return v;
}

// An integer flag in [lo, hi], lo >= 0.
template <class T>
static T integer_flag(std::string_view flag, std::string_view text, std::uint64_t lo, std::uint64_t hi) {
    auto v = parse_integer(text);
    if (!v) throw UsageError(std::string(flag) + " expects an integer, got '" + std::string(text) + "'");
    bool negative = v->negative && v->magnitude != 0;
    if (v->overflow || negative || v->magnitude < lo || v->magnitude > hi)
        throw UsageError(std::string(flag) + " " + std::string(text) + " is out of range");
    return static_cast<T>(v->magnitude);
}

// -n and -b: any number of digits; past 64 bits they saturate, and seq_len caps them anyway
// (clamp_steps, clamp_batch). -n takes 0 (seq_len), -b starts at 1.
static std::int64_t count_flag(std::string_view flag, std::string_view text, std::uint64_t lo) {
    auto v = parse_integer(text);
    if (!v) throw UsageError(std::string(flag) + " expects an integer, got '" + std::string(text) + "'");
    if ((v->negative && v->magnitude != 0) || (!v->overflow && v->magnitude < lo))
        throw UsageError(std::string(flag) + " " + std::string(text) + " is out of range");
    return v->overflow || v->magnitude > INT64_MAX ? INT64_MAX : static_cast<std::int64_t>(v->magnitude);
}

int clamp_steps(std::int64_t steps, int seq_len) {
    return steps == 0 || steps > seq_len ? seq_len : static_cast<int>(steps);
}

int clamp_batch(std::int64_t batch, int seq_len) {
    return batch > seq_len ? seq_len : static_cast<int>(std::max<std::int64_t>(batch, 1));
}

// Whether text is a plain decimal float: [+-]?([0-9]+.?[0-9]*|.[0-9]+)([eE][+-]?[0-9]+)?
static bool plain_float(std::string_view s) {
    auto digits = [&s] {
        std::size_t n = 0;
        while (n < s.size() && s[n] >= '0' && s[n] <= '9') ++n;
        s.remove_prefix(n);
        return n;
    };
    if (!s.empty() && (s[0] == '+' || s[0] == '-')) s.remove_prefix(1);
    std::size_t whole = digits(), fraction = 0;
    if (!s.empty() && s[0] == '.') {
        s.remove_prefix(1);
        fraction = digits();
    }
    if (whole == 0 && fraction == 0) return false;
    if (!s.empty() && (s[0] == 'e' || s[0] == 'E')) {
        s.remove_prefix(1);
        if (!s.empty() && (s[0] == '+' || s[0] == '-')) s.remove_prefix(1);
        if (digits() == 0) return false;
    }
    return s.empty();
}

static double float_flag(std::string_view flag, std::string_view text, double lo, double hi) {
    if (!plain_float(text)) throw UsageError(std::string(flag) + " expects a number, got '" + std::string(text) + "'");
    double v = std::strtod(std::string(text).c_str(), nullptr);  // the C locale: '.' is the point
    if (std::isinf(v) || v < lo || v > hi)
        throw UsageError(std::string(flag) + " " + std::string(text) + " is out of range");
    return v;
}

Args parse_args(int argc, const char* const* argv) {
    if (argc < 2 || argv[1][0] == '-') throw UsageError("missing checkpoint");
    Args a;
    a.checkpoint = argv[1];
    if ((argc - 2) % 2) throw UsageError(std::string("flag ") + argv[argc - 1] + " has no value");
    for (int i = 2; i + 1 < argc; i += 2) {
        std::string_view flag = argv[i], value = argv[i + 1];
        if (flag == "-z") a.tokenizer = std::string(value);
        else if (flag == "-t") a.temperature = float_flag(flag, value, 0.0, INFINITY);
        else if (flag == "-p") a.topp = float_flag(flag, value, 0.0, 1.0);
        else if (flag == "-s") a.seed = integer_flag<std::uint64_t>(flag, value, 0, UINT64_MAX);
        else if (flag == "-n") a.steps = count_flag(flag, value, 0);
        else if (flag == "-b") a.batch = count_flag(flag, value, 1);
        else if (flag == "-i") a.prompt = std::string(value);
        else if (flag == "-j") a.threads = integer_flag<int>(flag, value, 1, 4096);
        else if (flag == "-m") {
            if (value != "generate" && value != "logits")
                throw UsageError("-m expects generate or logits, got '" + std::string(value) + "'");
            a.logits_mode = value == "logits";
        } else if (flag == "-o") a.output = std::string(value);
        else if (flag == "-k") {
            std::vector<std::int64_t> ids;
            std::size_t startpos = 0;
            for (;;) {
                std::size_t comma = value.find(',', startpos);
                auto id = parse_integer(trim(value.substr(startpos, comma == std::string_view::npos ? comma : comma - startpos)));
                if (!id) throw UsageError("-k expects comma-separated token ids, got '" + std::string(value) + "'");
                // anything outside int32 fails the range check after loading anyway
                bool huge = id->overflow || id->magnitude > (std::uint64_t{1} << 40);
                auto magnitude = static_cast<std::int64_t>(huge ? std::uint64_t{1} << 40 : id->magnitude);
                ids.push_back(id->negative ? -magnitude : magnitude);
                if (comma == std::string_view::npos) break;
                startpos = comma + 1;
            }
            a.ids = std::move(ids);
        } else if (flag == "-e") a.ignore_bos = integer_flag<int>(flag, value, 0, 1) == 1;
        else throw UsageError("unknown flag " + std::string(flag));
    }
    if (a.logits_mode && (!a.output || !a.ids)) throw UsageError("logits mode needs -o FILE and -k IDS");
    return a;
}

static std::string json_number(double v, int decimals) {
    if (!std::isfinite(v)) v = 0;
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
    return buf;
}

static void print_stats(const RunStats& st, int threads, int batch, double load_s) {
    double tok_s = st.generated_tokens > 1 && st.decode_s > 0 ? (st.generated_tokens - 1) / st.decode_s : 0.0;
    double prefill_tok_s = st.prefill_s > 0 ? static_cast<double>(st.prefilled) / st.prefill_s : 0.0;
    std::fprintf(stderr,
                 "polyllama-stats: {\"port\":\"cpp\",\"prompt_tokens\":%lld,\"generated_tokens\":%lld,"
                 "\"positions\":%lld,\"threads\":%d,\"batch\":%d,\"load_s\":%s,\"ttft_s\":%s,\"prefill_s\":%s,"
                 "\"prefill_tok_s\":%s,\"decode_s\":%s,\"decode_tok_s\":%s}\n",
                 static_cast<long long>(st.prompt_tokens), static_cast<long long>(st.generated_tokens),
                 static_cast<long long>(st.positions), threads, batch, json_number(load_s, 6).c_str(),
                 json_number(st.ttft_s, 6).c_str(), json_number(st.prefill_s, 6).c_str(),
                 json_number(prefill_tok_s, 4).c_str(), json_number(st.decode_s, 6).c_str(),
                 json_number(tok_s, 4).c_str());
}

static int run(const Args& args) {
    auto t0 = Clock::now();
    Model model = read_model(args.checkpoint);
    Vocab vocab;
    if (model.vocab) vocab = std::move(*model.vocab);
    else if (!args.tokenizer) throw UsageError("-z tokenizer is required for a .bin checkpoint");
    else vocab = read_tokenizer(*args.tokenizer, model.config.vocab_size);
    const Config& c = model.config;
    Tokenizer tokenizer(std::move(vocab), c.bos_id, c.eos_id);
    if (args.logits_mode) {
        const auto& ids = *args.ids;
        bool ok = !ids.empty() && ids.size() <= static_cast<std::size_t>(c.seq_len) &&
                  std::all_of(ids.begin(), ids.end(), [&](std::int64_t t) { return t >= 0 && t < c.vocab_size; });
        if (!ok)
            throw UsageError("-k needs 1.." + std::to_string(c.seq_len) + " ids in [0, " + std::to_string(c.vocab_size) + ")");
    }
    // the KV cache holds the positions this run reaches, no more: the ids, or the steps
    const int steps = clamp_steps(args.steps, c.seq_len);
    const int kv_rows = args.logits_mode ? static_cast<int>(args.ids->size()) : steps;
    check_kv_cache(c, kv_rows, args.checkpoint);
    ThreadPool pool(args.threads);
    // the batch matrices hold no more rows than the run has positions (logits mode keeps every
    // row's logits)
    const int batch = clamp_batch(args.batch, c.seq_len);
    const int rows = std::min(batch, kv_rows);
    Transformer transformer(model, pool, rows, args.logits_mode, kv_rows);
    double load_s = seconds(t0, Clock::now());

    RunStats stats;
    if (args.logits_mode) {
        const auto& ids = *args.ids;
        stats = write_logits(transformer, std::vector<int>(ids.begin(), ids.end()), *args.output);
    } else {
        std::uint64_t seed = args.seed > 0 ? args.seed : static_cast<std::uint64_t>(std::time(nullptr));
        Sampler sampler(static_cast<float>(args.temperature), static_cast<float>(args.topp), seed);
        stats = generate(transformer, tokenizer, sampler, args.prompt, steps, args.ignore_bos);
        emit("\n");
    }
    print_stats(stats, pool.size(), batch, load_s);
    return 0;
}

int run_main(int argc, const char* const* argv) {
    try {
        return run(parse_args(argc, argv));
    } catch (const UsageError& e) {
        std::fprintf(stderr, "error: %s\n%s\n", e.what(), USAGE);
        return 2;
    } catch (const FormatError& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 3;
    } catch (const std::bad_alloc&) {
        std::fprintf(stderr, "error: out of memory\n");
        return 1;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
}

}  // namespace llama2
