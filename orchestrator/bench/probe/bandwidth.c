/* Memory read bandwidth probe: the roofline of batch-1 decoding, which reads every weight once
 * per token. It must be a limit, not an estimate: a port that streams its weights faster than
 * this probe reads the same number of bytes would show as more than 100% of the roofline. So it
 * reads the way the fastest port reads, and then some:
 *   - the widest vector loads the CPU has, chosen at run time (AVX-512, AVX2; NEON on arm64;
 *     plain C elsewhere), several independent accumulators per stream so no add waits;
 *   - several streams per thread (rows of a blocked matvec), every stream count in
 *     STREAM_CHOICES tried, the best kept: CPUs differ in how many streams their prefetchers
 *     follow well;
 *   - a buffer mapped anonymously and asked for transparent huge pages, as the ports map their
 *     weights (POLYLLAMA_HUGEPAGES=0 keeps 4 KiB pages, as it does for the ports);
 *   - threads that live for the whole probe and wait at a barrier between passes, so a pass
 *     over a cache-sized buffer times the reads, not thread creation;
 *   - the best of many passes.
 * The buffer is as large as the model's weights, so a small model gets the bandwidth of the
 * cache level it actually lives in.
 *
 * usage: bandwidth <bytes> <threads> <passes> [streams]
 * prints: <threads> <GB/s (1e9 bytes)> <method>   (streams given: only that stream count)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#define MAX_THREADS 1024
#define MAX_STREAMS 8
static const int STREAM_CHOICES[] = {1, 2, 4, 8};
#define ALIGN (2u << 20) /* a huge page: slices and streams start on cache lines either way */
#define LINE 64

/* ------------------------------------------------------------------ kernels
 * sum_streams(p, len, streams): each of `streams` contiguous runs of `len` floats, read
 * side by side, 64 bytes per stream per step, two accumulators per stream. `len` is a multiple
 * of 32 floats (128 bytes); the tail of a slice is read by the portable loop. */
typedef float (*kernel_fn)(const float *p, size_t len, int streams);

static float sum_portable(const float *p, size_t len, int streams) {
    float acc[MAX_STREAMS][16] = {{0}};
    for (size_t i = 0; i < len; i += 16)
        for (int r = 0; r < streams; r++)
            for (int k = 0; k < 16; k++) acc[r][k] += p[r * len + i + k];
    float t = 0;
    for (int r = 0; r < streams; r++)
        for (int k = 0; k < 16; k++) t += acc[r][k];
    return t;
}

#if defined(__x86_64__) || defined(_M_X64)
__attribute__((target("avx512f"))) static float sum_avx512(const float *p, size_t len, int streams) {
    __m512 a[MAX_STREAMS][2];
    for (int r = 0; r < MAX_STREAMS; r++) a[r][0] = a[r][1] = _mm512_setzero_ps();
    for (size_t i = 0; i < len; i += 32)
        for (int r = 0; r < streams; r++) {
            const float *q = p + r * len + i;
            a[r][0] = _mm512_add_ps(a[r][0], _mm512_load_ps(q));
            a[r][1] = _mm512_add_ps(a[r][1], _mm512_load_ps(q + 16));
        }
    __m512 t = _mm512_setzero_ps();
    for (int r = 0; r < streams; r++) t = _mm512_add_ps(t, _mm512_add_ps(a[r][0], a[r][1]));
    return _mm512_reduce_add_ps(t);
}

__attribute__((target("avx2"))) static float sum_avx2(const float *p, size_t len, int streams) {
    __m256 a[MAX_STREAMS][4];
    for (int r = 0; r < MAX_STREAMS; r++)
        for (int k = 0; k < 4; k++) a[r][k] = _mm256_setzero_ps();
    for (size_t i = 0; i < len; i += 32)
        for (int r = 0; r < streams; r++) {
            const float *q = p + r * len + i;
            for (int k = 0; k < 4; k++) a[r][k] = _mm256_add_ps(a[r][k], _mm256_load_ps(q + 8 * k));
        }
    float out[8], t = 0;
    for (int r = 0; r < streams; r++) {
        _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a[r][0], a[r][1]), _mm256_add_ps(a[r][2], a[r][3])));
        for (int k = 0; k < 8; k++) t += out[k];
    }
    return t;
}
#elif defined(__aarch64__)
static float sum_neon(const float *p, size_t len, int streams) {
    float32x4_t a[MAX_STREAMS][4];
    for (int r = 0; r < MAX_STREAMS; r++)
        for (int k = 0; k < 4; k++) a[r][k] = vdupq_n_f32(0);
    for (size_t i = 0; i < len; i += 16)
        for (int r = 0; r < streams; r++) {
            const float *q = p + r * len + i;
            for (int k = 0; k < 4; k++) a[r][k] = vaddq_f32(a[r][k], vld1q_f32(q + 4 * k));
        }
    float t = 0;
    for (int r = 0; r < streams; r++)
        t += vaddvq_f32(vaddq_f32(vaddq_f32(a[r][0], a[r][1]), vaddq_f32(a[r][2], a[r][3])));
    return t;
}
#endif

static kernel_fn pick_kernel(const char **name) {
#if defined(__x86_64__) || defined(_M_X64)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) { *name = "avx512"; return sum_avx512; }
    if (__builtin_cpu_supports("avx2")) { *name = "avx2"; return sum_avx2; }
#elif defined(__aarch64__)
    *name = "neon";
    return sum_neon;
#endif
    *name = "portable";
    return sum_portable;
}

/* ------------------------------------------------------------------ buffer */
static int want_huge_pages(void) {
    const char *v = getenv("POLYLLAMA_HUGEPAGES");
    return !(v && strcmp(v, "0") == 0);
}

static float *map_buffer(size_t bytes, int *huge) {
    *huge = 0;
    size_t size = (bytes + ALIGN - 1) / ALIGN * ALIGN;
#if defined(__linux__)
    /* over-map by one huge page so the buffer can start on a huge-page boundary */
    uint8_t *raw = mmap(NULL, size + ALIGN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    uint8_t *p = (uint8_t *)(((uintptr_t)raw + ALIGN - 1) / ALIGN * ALIGN);
#ifdef MADV_HUGEPAGE
    if (want_huge_pages()) *huge = madvise(p, size, MADV_HUGEPAGE) == 0; /* a refusal only costs speed */
#endif
    return (float *)p;
#else
    void *p = NULL;
    return posix_memalign(&p, ALIGN, size) == 0 ? p : NULL;
#endif
}

/* kB of anonymous huge pages the process holds: whether the kernel granted the request */
static long anon_huge_kb(void) {
    long kb = 0;
#if defined(__linux__)
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (!f) return 0;
    char line[256];
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) break;
    fclose(f);
#endif
    return kb;
}

/* ------------------------------------------------------------------ threads
 * The main thread is worker 0. A pass starts when the main thread bumps `generation`; each
 * worker sums its slice and bumps `done`. Waiters spin: a sleeping worker would add wake-up
 * latency to every pass of a cache-sized buffer. They yield now and then, so that on a busy
 * machine a spinner does not hold the core that the thread it waits for needs. */
typedef struct {
    const float *p;
    size_t n;      /* floats in this slice */
    float sum;
} Slice;

static struct {
    Slice slice[MAX_THREADS];
    long threads;
    kernel_fn kernel;
    _Atomic int streams;
    _Atomic long generation;
    _Atomic long done;
    _Atomic int quit;
} G;

static void relax(unsigned *spins) {
    if (++*spins % 4096 == 0) sched_yield();
}

static float sum_slice(const Slice *s, int streams) {
    size_t len = s->n / (size_t)streams / 32 * 32; /* whole 128-byte steps per stream */
    float t = len ? G.kernel(s->p, len, streams) : 0;
    for (size_t j = (size_t)streams * len; j < s->n; j++) t += s->p[j];
    return t;
}

static void *worker(void *arg) {
    long id = (long)(intptr_t)arg, seen = 0;
    unsigned spins = 0;
    Slice *s = &G.slice[id];
    for (size_t i = 0; i < s->n; i += 1024) ((float *)s->p)[i] = 0; /* first touch by the reader */
    atomic_fetch_add(&G.done, 1);
    for (;;) {
        long g;
        while ((g = atomic_load_explicit(&G.generation, memory_order_acquire)) == seen) {
            if (atomic_load_explicit(&G.quit, memory_order_relaxed)) return NULL;
            relax(&spins);
        }
        seen = g;
        s->sum += sum_slice(s, atomic_load_explicit(&G.streams, memory_order_relaxed));
        atomic_fetch_add_explicit(&G.done, 1, memory_order_release);
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double one_pass(void) {
    atomic_store(&G.done, 0);
    double t0 = now();
    atomic_fetch_add_explicit(&G.generation, 1, memory_order_release);
    G.slice[0].sum += sum_slice(&G.slice[0], atomic_load(&G.streams));
    unsigned spins = 0;
    while (atomic_load_explicit(&G.done, memory_order_acquire) < G.threads - 1) relax(&spins);
    return now() - t0;
}

/* ------------------------------------------------------------------ main */
int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: bandwidth <bytes> <threads> <passes> [streams]\n");
        return 2;
    }
    long long bytes = atoll(argv[1]);
    long threads = atol(argv[2]), passes = atol(argv[3]), only = argc == 5 ? atol(argv[4]) : 0;
    if (bytes < 4096 || bytes > (64LL << 30) || threads < 1 || threads > MAX_THREADS || passes < 1 ||
        only < 0 || only > MAX_STREAMS || (only & (only - 1))) { /* a stream count is 1, 2, 4 or 8 */
        fprintf(stderr, "error: arguments out of range\n");
        return 2;
    }
    size_t n = (size_t)bytes / sizeof(float);
    int huge;
    float *buf = map_buffer(n * sizeof(float), &huge);
    if (!buf) { fprintf(stderr, "error: cannot allocate %lld bytes\n", bytes); return 1; }
    const char *kname;
    G.kernel = pick_kernel(&kname);
    G.threads = threads;
    for (long t = 0; t < threads; t++) {
        /* slices start on cache lines: an unaligned vector load would split lines */
        size_t lo = n * t / threads / (LINE / 4) * (LINE / 4), hi = t + 1 == threads ? n : n * (t + 1) / threads / (LINE / 4) * (LINE / 4);
        G.slice[t] = (Slice){buf + lo, hi - lo, 0};
    }
    pthread_t tid[MAX_THREADS];
    for (long t = 1; t < threads; t++) pthread_create(&tid[t], NULL, worker, (void *)(intptr_t)t);
    for (size_t i = 0; i < G.slice[0].n; i += 1024) buf[i] = 0;
    for (unsigned spins = 0; atomic_load(&G.done) < threads - 1;) relax(&spins);
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 7);

    double best = 1e30;
    int best_streams = 0;
    for (size_t c = 0; c < sizeof STREAM_CHOICES / sizeof *STREAM_CHOICES; c++) {
        int streams = STREAM_CHOICES[c];
        if (only && streams != only) continue;
        atomic_store(&G.streams, streams);
        one_pass(); /* warm: the first pass after a change pays for the caches' refill */
        for (long pass = 0; pass < passes; pass++) {
            double dt = one_pass();
            if (dt < best) { best = dt; best_streams = streams; }
        }
    }
    atomic_store(&G.quit, 1);
    for (long t = 1; t < threads; t++) pthread_join(tid[t], NULL);
    double sink = 0;
    for (long t = 0; t < threads; t++) sink += G.slice[t].sum;
    long hkb = anon_huge_kb();
    printf("%ld %.3f %s,%d-streams,%s\n", threads, (double)n * sizeof(float) / best / 1e9, kname, best_streams,
           hkb > 0 ? "huge-pages" : (huge ? "huge-pages-refused" : "4k-pages"));
    fprintf(stderr, "checksum %g, anonymous huge pages %ld kB\n", sink, hkb);
    return 0;
}
