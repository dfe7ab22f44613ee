/* Compute peak probe: the roofline of a batched prefill, which multiplies matrices and is bound
 * by arithmetic, not by memory. Like the bandwidth probe it must be a limit, not an estimate, so
 * it runs the one instruction a matrix kernel is made of, as fast as the core can issue it:
 *   - f32: fused multiply-adds on the widest vectors the CPU has (AVX-512, AVX2+FMA, NEON),
 *     chosen at run time, on CHAINS independent accumulators so no FMA waits for the previous
 *     one (a core with two FMA units and a 4-cycle latency needs 8 in flight);
 *   - int8: the widest 8-bit dot-product instruction (AVX-512 VNNI vpdpbusd, AVX-VNNI, AVX2's
 *     vpmaddubsw + vpmaddwd + vpaddd, NEON sdot), the same way;
 *   - one thread per core asked for, each spinning on registers only, the best of several passes.
 * A pass runs each thread for a fixed number of iterations; the result is operations per second
 * over the slowest thread of the pass.
 *
 * usage: peak <f32|int8> <threads> <passes>
 * prints: <threads> <G ops/s> <method>   (f32: 2 flops per FMA lane; int8: 2 ops per multiply-add)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#define MAX_THREADS 1024
#define CHAINS 16
#define ITERS 4000000L /* per pass and thread: long enough (tens of ms) to dwarf the start */

/* ------------------------------------------------------------------ kernels
 * Each kernel runs `iters` rounds of CHAINS independent operations and returns the number of
 * arithmetic operations done, with a value derived from the accumulators stored so that the
 * compiler cannot drop the loop. */
typedef double (*kernel_fn)(long iters, volatile float *sink);

static double f32_portable(long iters, volatile float *sink) {
    float acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = (float)c;
    const float a = 0.999999f, b = 1e-7f;
    for (long i = 0; i < iters; i++)
        for (int c = 0; c < CHAINS; c++) acc[c] = acc[c] * a + b;
    float t = 0;
    for (int c = 0; c < CHAINS; c++) t += acc[c];
    *sink = t;
    return 2.0 * CHAINS * (double)iters;
}

#if defined(__x86_64__) || defined(_M_X64)
#define FMA_ROUND(fma, acc, a, b)                                                             \
    for (int c = 0; c < CHAINS; c++) acc[c] = fma(acc[c], a, b)

__attribute__((target("avx512f"))) static double f32_avx512(long iters, volatile float *sink) {
    __m512 acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_ps((float)c);
    const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-7f);
    for (long i = 0; i < iters; i++) FMA_ROUND(_mm512_fmadd_ps, acc, a, b);
    __m512 t = acc[0];
    for (int c = 1; c < CHAINS; c++) t = _mm512_add_ps(t, acc[c]);
    *sink = _mm512_reduce_add_ps(t);
    return 2.0 * 16 * CHAINS * (double)iters;
}

__attribute__((target("avx2,fma"))) static double f32_avx2(long iters, volatile float *sink) {
    __m256 acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_set1_ps((float)c);
    const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-7f);
    for (long i = 0; i < iters; i++) FMA_ROUND(_mm256_fmadd_ps, acc, a, b);
    __m256 t = acc[0];
    for (int c = 1; c < CHAINS; c++) t = _mm256_add_ps(t, acc[c]);
    float lanes[8];
    _mm256_storeu_ps(lanes, t);
    *sink = lanes[0] + lanes[7];
    return 2.0 * 8 * CHAINS * (double)iters;
}

/* vpdpbusd: 4 u8 x s8 products summed into each int32 lane, 64 multiply-adds per zmm */
__attribute__((target("avx512f,avx512vnni"))) static double int8_avx512vnni(long iters, volatile float *sink) {
    __m512i acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_set1_epi32(c);
    const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-2);
    for (long i = 0; i < iters; i++)
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm512_dpbusd_epi32(acc[c], a, b);
    __m512i t = acc[0];
    for (int c = 1; c < CHAINS; c++) t = _mm512_add_epi32(t, acc[c]);
    *sink = (float)_mm512_reduce_add_epi32(t);
    return 2.0 * 64 * CHAINS * (double)iters;
}

__attribute__((target("avx2,avxvnni"))) static double int8_avxvnni(long iters, volatile float *sink) {
    __m256i acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_set1_epi32(c);
    const __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-2);
    for (long i = 0; i < iters; i++)
        for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_dpbusd_avx_epi32(acc[c], a, b);
    __m256i t = acc[0];
    for (int c = 1; c < CHAINS; c++) t = _mm256_add_epi32(t, acc[c]);
    *sink = (float)_mm256_extract_epi32(t, 0);
    return 2.0 * 32 * CHAINS * (double)iters;
}

/* without VNNI a 32-byte dot product takes three instructions: maddubs (u8 x s8 pairs to
 * int16), madd with ones (pairs to int32), add */
__attribute__((target("avx2"))) static double int8_avx2(long iters, volatile float *sink) {
    __m256i acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = _mm256_set1_epi32(c);
    const __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-2), ones = _mm256_set1_epi16(1);
    for (long i = 0; i < iters; i++)
        for (int c = 0; c < CHAINS; c++)
            acc[c] = _mm256_add_epi32(acc[c], _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones));
    __m256i t = acc[0];
    for (int c = 1; c < CHAINS; c++) t = _mm256_add_epi32(t, acc[c]);
    *sink = (float)_mm256_extract_epi32(t, 0);
    return 2.0 * 32 * CHAINS * (double)iters;
}
#endif

#if defined(__aarch64__)
static double f32_neon(long iters, volatile float *sink) {
    float32x4_t acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = vdupq_n_f32((float)c);
    const float32x4_t a = vdupq_n_f32(0.999999f), b = vdupq_n_f32(1e-7f);
    for (long i = 0; i < iters; i++)
        for (int c = 0; c < CHAINS; c++) acc[c] = vfmaq_f32(b, acc[c], a);
    float32x4_t t = acc[0];
    for (int c = 1; c < CHAINS; c++) t = vaddq_f32(t, acc[c]);
    *sink = vaddvq_f32(t);
    return 2.0 * 4 * CHAINS * (double)iters;
}

#if defined(__ARM_FEATURE_DOTPROD)
static double int8_sdot(long iters, volatile float *sink) {
    int32x4_t acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = vdupq_n_s32(c);
    const int8x16_t a = vdupq_n_s8(3), b = vdupq_n_s8(-2);
    for (long i = 0; i < iters; i++)
        for (int c = 0; c < CHAINS; c++) acc[c] = vdotq_s32(acc[c], a, b);
    int32x4_t t = acc[0];
    for (int c = 1; c < CHAINS; c++) t = vaddq_s32(t, acc[c]);
    *sink = (float)vaddvq_s32(t);
    return 2.0 * 16 * CHAINS * (double)iters;
}
#endif
#endif

static double int8_portable(long iters, volatile float *sink) {
    int32_t acc[CHAINS];
    for (int c = 0; c < CHAINS; c++) acc[c] = c;
    const int8_t a = 3, b = -2;
    for (long i = 0; i < iters; i++)
        for (int c = 0; c < CHAINS; c++) acc[c] += (int32_t)a * b;
    int32_t t = 0;
    for (int c = 0; c < CHAINS; c++) t += acc[c];
    *sink = (float)t;
    return 2.0 * CHAINS * (double)iters;
}

static kernel_fn pick(const char *kind, const char **name) {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    if (strcmp(kind, "f32") == 0) {
        if (__builtin_cpu_supports("avx512f")) { *name = "avx512-fma"; return f32_avx512; }
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) { *name = "avx2-fma"; return f32_avx2; }
    } else {
        if (__builtin_cpu_supports("avx512vnni")) { *name = "avx512-vnni"; return int8_avx512vnni; }
        if (__builtin_cpu_supports("avxvnni")) { *name = "avx-vnni"; return int8_avxvnni; }
        if (__builtin_cpu_supports("avx2")) { *name = "avx2-maddubs"; return int8_avx2; }
    }
#elif defined(__aarch64__)
    if (strcmp(kind, "f32") == 0) { *name = "neon-fma"; return f32_neon; }
#if defined(__ARM_FEATURE_DOTPROD)
    *name = "neon-sdot";
    return int8_sdot;
#endif
#endif
    *name = "portable";
    return strcmp(kind, "f32") == 0 ? f32_portable : int8_portable;
}

/* ------------------------------------------------------------------ threads */
typedef struct {
    kernel_fn fn;
    double ops, seconds;
    float sink;
} job_t;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void *work(void *arg) {
    job_t *j = arg;
    double t0 = now();
    j->ops = j->fn(ITERS, &j->sink);
    j->seconds = now() - t0;
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4 || (strcmp(argv[1], "f32") && strcmp(argv[1], "int8"))) {
        fprintf(stderr, "usage: peak <f32|int8> <threads> <passes>\n");
        return 2;
    }
    long threads = strtol(argv[2], NULL, 10), passes = strtol(argv[3], NULL, 10);
    if (threads < 1 || threads > MAX_THREADS || passes < 1 || passes > 1000) {
        fprintf(stderr, "error: threads in [1, %d], passes in [1, 1000]\n", MAX_THREADS);
        return 2;
    }
    const char *name;
    kernel_fn fn = pick(argv[1], &name);
    static job_t jobs[MAX_THREADS];
    static pthread_t tid[MAX_THREADS];
    double best = 0;
    for (long p = 0; p < passes; p++) {
        for (long t = 0; t < threads; t++) jobs[t] = (job_t){.fn = fn};
        for (long t = 1; t < threads; t++) pthread_create(&tid[t], NULL, work, &jobs[t]);
        work(&jobs[0]);
        for (long t = 1; t < threads; t++) pthread_join(tid[t], NULL);
        double ops = 0, slowest = 0;
        for (long t = 0; t < threads; t++) {
            ops += jobs[t].ops;
            if (jobs[t].seconds > slowest) slowest = jobs[t].seconds;
        }
        if (slowest > 0 && ops / slowest > best) best = ops / slowest;
    }
    printf("%ld %.3f %s,%d-chains\n", threads, best / 1e9, name, CHAINS);
    return 0;
}
