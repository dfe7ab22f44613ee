/* Inference for Llama-2 Transformer models in pure C11: the polyllama C port.

   After karpathy/llama2.c's run.c, top to bottom: model (state, transformer), thread pool,
   forward pass (f32 matvec, Q8_0 kernels, matmul dispatch), batched forward pass (the prompt's
   matrix-matrix kernels), tokenizer, sampler, generation, command line. The model files (v0, v1, GGUF with F32, F16, BF16 or Q8_0 matrices, and tokenizer.bin) are
   read and validated in formats.c. The behaviour is defined by docs/port-contract.md and the
   numpy reference core in orchestrator/reference/.

   Speed comes from three things: the weights are memory-mapped and read exactly once per token;
   every matrix-vector product streams four weight rows at a time through FMA registers
   (AVX2/FMA on x86-64, NEON on arm64, plain loops the compiler vectorises elsewhere); and a
   persistent pool of workers (spinning briefly, then sleeping) splits every matmul and the
   attention heads, with the matmuls that share an input fused into one dispatch, so a token
   costs five synchronisations a layer. GGUF Q8_0 matrices (8-bit blocks) run as llama.cpp runs
   them, with integer SIMD: the activation quantized to int8 once per dispatch, exact int32
   block dot products (AVX2 maddubs or AVX-512/AVX VNNI dpbusd; NEON sdot or smull). F16 and
   BF16 matrices are read 2 bytes a weight and converted in registers (F16C/AVX-512 vcvtph2ps,
   NEON fcvtl; BF16 by a shift) into the f32 kernels' FMAs. The prompt
   (contract 2's prefill) runs in batches of positions through register-tiled matrix-matrix
   kernels, each weight read once per batch instead of once per position. */
#define _DEFAULT_SOURCE
#define _DARWIN_C_SOURCE // clock_gettime and friends on macOS
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "formats.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SIMD_AVX2 1
#elif defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#define SIMD_NEON 1
#endif
#if defined(__aarch64__) && !defined(SIMD_NEON)
// NEON is part of the arm64 baseline: a build without it (-mgeneral-regs-only) is a mistake
#error "arm64 build without NEON: the matvec would silently take the portable loops"
#endif

#define PORT_NAME "c"
#ifndef PREFETCH_DIST
#define PREFETCH_DIST 0 // floats ahead to prefetch each weight row; 0 = leave it to the hardware
#endif

static const char *USAGE =
    "usage: run <checkpoint> [-z tokenizer] [-t temperature] [-p topp] [-s seed] [-n steps] "
    "[-i prompt] [-j threads] [-m generate|logits] [-o file] [-k ids] [-e 0|1] [-b batch]";

// ----------------------------------------------------------------------------
// Errors: every failure is one `error: ...` line on stderr and a contract exit code (bad input
// files: die_file, in formats.c)

static void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (code == EXIT_USAGE) { fputs(USAGE, stderr); fputc('\n', stderr); }
    exit(code);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

// ----------------------------------------------------------------------------
// Transformer model: Config, TransformerWeights and Vocab are in formats.h

typedef struct {
    float *x;      // activation at current time stamp (dim,)
    float *xb;     // same, but inside a residual branch (dim,)
    float *q;      // query (dim,)
    float *hb;     // buffer for hidden dimension in the ffn (hidden_dim,)
    float *hb2;    // buffer for hidden dimension in the ffn (hidden_dim,)
    float *att;    // attention scores, one row per worker (n_threads, seq_len)
    float *logits; // output logits (vocab_size,)
    int8_t *xq;    // the input of the current Q8_0 matmuls, quantized (max(dim, hidden_dim),)
    float *xd;     // and its block scales (max(dim, hidden_dim) / 32,)
    float *rope_cos, *rope_sin; // this position's rotation per pair of a head (head_size / 2,)
    int cache_rows;     // positions the cache holds: the run's steps (or -k ids), not seq_len
    float *key_cache;   // (layer, cache_rows, kv_dim)
    float *value_cache; // (layer, cache_rows, kv_dim)
} RunState;

// rows of a tile in the batched kernels, at most (the attention's scratch is sized by it)
#define BATCH_TILE_MAX 6

// The batched forward pass's scratch (contract 2): one row per position of a batch, sized once
// at load for min(batch, seq_len) rows
typedef struct {
    int rows;      // capacity: the most positions one forward_batch takes
    float *x;      // the rows' residual streams (rows, dim)
    float *xb;     // rmsnorm'd rows, then the attention's output (rows, dim)
    float *q;      // queries (rows, dim); keys and values go straight into the cache
    float *hb;     // ffn hidden rows (rows, hidden_dim)
    float *hb2;    // (rows, hidden_dim)
    int8_t *xq;    // the input rows of the current Q8_0 products, quantized (rows, max(dim, hidden_dim))
    float *xd;     // and their block scales (rows, max(dim, hidden_dim) / 32)
    float *rope_cos, *rope_sin; // each row's rotation per pair of a head (rows, head_size / 2)
    float *att;    // attention scores: per worker, one row per row of a tile (n_threads, tile, cache_rows)
} BatchState;

typedef struct ThreadPool ThreadPool;

typedef struct {
    Config config;
    TransformerWeights weights;
    RunState state;
    BatchState batch;
    ThreadPool *pool;
    int has_vocab;  // GGUF: the tokenizer came with the model
    Vocab vocab;
    void *data;     // the memory-mapped checkpoint
    size_t file_size;
} Transformer;

// ----------------------------------------------------------------------------
// Thread pool: workers created once; each dispatch bumps a generation counter. Waiting, on
// either side, spins briefly (a dispatch then costs well under a microsecond), then sleeps on a
// condition variable, so a busy machine or an idle pool never has threads burning a core.

typedef void (*TaskFn)(void *ctx, int tid, int n_threads);

struct ThreadPool {
    int n_threads;          // workers including the calling thread
    pthread_t *threads;
    pthread_mutex_t lock;
    pthread_cond_t wake;    // workers wait here for the next generation
    pthread_cond_t done;    // the caller waits here for pending to reach 0
    atomic_uint generation; // bumped once per dispatch
    atomic_int pending;     // workers still running the current task
    atomic_int quit;
    TaskFn fn;
    void *ctx;
};

typedef struct { ThreadPool *pool; int tid; } WorkerArg;

// ~50 us of polling: longer than the gap between two matmuls of a token, far shorter than a
// scheduler time slice
#define SPIN_LIMIT 2000

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void *worker_main(void *arg) {
    WorkerArg wa = *(WorkerArg *)arg;
    free(arg);
    ThreadPool *pool = wa.pool;
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen) {
            if (++spins < SPIN_LIMIT) { cpu_relax(); continue; }
            pthread_mutex_lock(&pool->lock);
            while ((g = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen)
                pthread_cond_wait(&pool->wake, &pool->lock);
            pthread_mutex_unlock(&pool->lock);
            break;
        }
        seen = g;
        if (atomic_load_explicit(&pool->quit, memory_order_acquire)) return NULL;
        pool->fn(pool->ctx, wa.tid, pool->n_threads);
        if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel) == 1) {
            // the last one out wakes the caller in case it has gone to sleep
            pthread_mutex_lock(&pool->lock);
            pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->lock);
        }
    }
}

static ThreadPool *build_pool(int n_threads) {
    ThreadPool *pool = xcalloc(1, sizeof(ThreadPool));
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->pending, 0);
    atomic_init(&pool->quit, 0);
    pool->threads = xcalloc(n_threads, sizeof(pthread_t));
    for (int i = 1; i < n_threads; i++) { // the caller is worker 0: -j 1 starts no thread
        WorkerArg *wa = xcalloc(1, sizeof(WorkerArg));
        *wa = (WorkerArg){pool, i};
        if (pthread_create(&pool->threads[i], NULL, worker_main, wa) != 0)
            die(EXIT_RUNTIME, "cannot start worker thread %d of %d", i, n_threads);
    }
    return pool;
}

static void wake_workers(ThreadPool *pool) {
    pthread_mutex_lock(&pool->lock);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
}

// run fn(ctx, tid, n) on every worker, the caller included, and wait for all of them
static void pool_run(ThreadPool *pool, TaskFn fn, void *ctx) {
    if (pool->n_threads == 1) { fn(ctx, 0, 1); return; }
    pool->fn = fn;
    pool->ctx = ctx;
    atomic_store_explicit(&pool->pending, pool->n_threads - 1, memory_order_relaxed);
    wake_workers(pool);
    fn(ctx, 0, pool->n_threads);
    for (int spins = 0; atomic_load_explicit(&pool->pending, memory_order_acquire) > 0;) {
        if (++spins < SPIN_LIMIT) { cpu_relax(); continue; }
        pthread_mutex_lock(&pool->lock);
        while (atomic_load_explicit(&pool->pending, memory_order_acquire) > 0)
            pthread_cond_wait(&pool->done, &pool->lock);
        pthread_mutex_unlock(&pool->lock);
    }
}

static void free_pool(ThreadPool *pool) {
    atomic_store_explicit(&pool->quit, 1, memory_order_release);
    wake_workers(pool);
    for (int i = 1; i < pool->n_threads; i++) pthread_join(pool->threads[i], NULL);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->done);
    free(pool->threads);
    free(pool);
}

// ----------------------------------------------------------------------------
// Run state

// cache_rows: the positions the run can reach (contract 3), checked against the 4 GiB limit
static void build_state(RunState *s, const Config *c, int n_threads, int cache_rows) {
    size_t kv_dim = (size_t)c->n_kv_heads * (c->dim / c->n_heads);
    s->x = xcalloc(c->dim, sizeof(float));
    s->xb = xcalloc(c->dim, sizeof(float));
    s->q = xcalloc(c->dim, sizeof(float));
    s->hb = xcalloc(c->hidden_dim, sizeof(float));
    s->hb2 = xcalloc(c->hidden_dim, sizeof(float));
    s->att = xcalloc((size_t)n_threads * cache_rows, sizeof(float));
    s->logits = xcalloc(c->vocab_size, sizeof(float));
    int widest = c->dim > c->hidden_dim ? c->dim : c->hidden_dim;
    s->xq = xcalloc(widest, 1);
    s->xd = xcalloc(widest / Q8_BLOCK + 1, sizeof(float));
    s->rope_cos = xcalloc(c->dim / c->n_heads / 2, sizeof(float));
    s->rope_sin = xcalloc(c->dim / c->n_heads / 2, sizeof(float));
    s->cache_rows = cache_rows;
    s->key_cache = xcalloc((size_t)c->n_layers * cache_rows * kv_dim, sizeof(float));
    s->value_cache = xcalloc((size_t)c->n_layers * cache_rows * kv_dim, sizeof(float));
}

static void free_state(RunState *s) {
    free(s->x); free(s->xb); free(s->q); free(s->hb); free(s->hb2); free(s->att); free(s->logits);
    free(s->xq); free(s->xd);
    free(s->rope_cos); free(s->rope_sin); free(s->key_cache); free(s->value_cache);
}

// validate and map the checkpoint (formats.c): the weights are used in place, never copied
static void build_transformer(Transformer *t, const char *checkpoint_path) {
    memset(t, 0, sizeof *t);
    read_checkpoint(checkpoint_path, &t->config, &t->weights, &t->vocab, &t->data, &t->file_size);
    t->has_vocab = t->vocab.vocab_size > 0;
}

// rows: the prompt batch after clamping, 1..cache_rows
static void build_batch(BatchState *b, const Config *c, int rows, int n_threads, int cache_rows) {
    size_t r = (size_t)rows, half = (size_t)(c->dim / c->n_heads / 2);
    size_t widest = (size_t)(c->dim > c->hidden_dim ? c->dim : c->hidden_dim);
    b->rows = rows;
    b->x = xcalloc(r * c->dim, sizeof(float));
    b->xb = xcalloc(r * c->dim, sizeof(float));
    b->q = xcalloc(r * c->dim, sizeof(float));
    b->hb = xcalloc(r * c->hidden_dim, sizeof(float));
    b->hb2 = xcalloc(r * c->hidden_dim, sizeof(float));
    b->xq = xcalloc(r * widest, 1);
    b->xd = xcalloc(r * (widest / Q8_BLOCK + 1), sizeof(float));
    b->rope_cos = xcalloc(r * half, sizeof(float));
    b->rope_sin = xcalloc(r * half, sizeof(float));
    b->att = xcalloc((size_t)n_threads * BATCH_TILE_MAX * cache_rows, sizeof(float));
}

static void free_batch(BatchState *b) {
    free(b->x); free(b->xb); free(b->q); free(b->hb); free(b->hb2); free(b->xq); free(b->xd);
    free(b->rope_cos); free(b->rope_sin); free(b->att);
}

// cache_rows: the positions the run reaches (steps after clamping, or the -k ids), 1..seq_len;
// batch_rows: min(batch, seq_len), the batched pass's capacity (its scratch holds no more rows
// than the cache)
static void start_transformer(Transformer *t, int n_threads, int batch_rows, int cache_rows) {
    if (batch_rows > cache_rows) batch_rows = cache_rows;
    build_state(&t->state, &t->config, n_threads, cache_rows);
    build_batch(&t->batch, &t->config, batch_rows, n_threads, cache_rows);
    t->pool = build_pool(n_threads);
}

static void free_transformer(Transformer *t) {
    if (t->pool) free_pool(t->pool);
    free_state(&t->state);
    free_batch(&t->batch);
    free_checkpoint(&t->weights, &t->vocab, t->data, t->file_size);
}

// ----------------------------------------------------------------------------
// Neural net blocks; the dynamics of the Transformer

// eps: the file's (GGUF llama.attention.layer_norm_rms_epsilon), 1e-5 by default
static void rmsnorm(float *o, const float *x, const float *weight, int size, float eps) {
    float ss = 0.0f;
    for (int j = 0; j < size; j++) ss += x[j] * x[j];
    ss /= size;
    ss += eps;
    ss = 1.0f / sqrtf(ss);
    for (int j = 0; j < size; j++) o[j] = weight[j] * (ss * x[j]);
}

static void softmax(float *x, int size) {
    float max_val = x[0];
    for (int i = 1; i < size; i++)
        if (x[i] > max_val) max_val = x[i];
    float sum = 0.0f;
    for (int i = 0; i < size; i++) {
        x[i] = expf(x[i] - max_val);
        sum += x[i];
    }
    for (int i = 0; i < size; i++) x[i] /= sum;
}

#if SIMD_AVX2
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

#ifdef __AVX512F__
// the two 256-bit halves of z added: sixteen lanes folded into eight (through memory, once per
// four rows: GCC 12's extract and shuffle intrinsics warn of an uninitialized operand)
static inline __m256 fold512(__m512 z) {
    float lanes[16];
    _mm512_storeu_ps(lanes, z);
    return _mm256_add_ps(_mm256_loadu_ps(lanes), _mm256_loadu_ps(lanes + 8));
}
#endif

// The four-row kernels below take rows w0..w3 of W from column 0, write the four dot products
// with x of the columns they cover into s[0..3], and return the first column not covered; the
// caller finishes the row tails. Each is its own step so the paths read apart; static inline, so
// that matvec_rows compiles to the one loop it was written as.
#if SIMD_AVX2
#ifdef __AVX512F__
// where the build has AVX-512, one load is one whole cache line of a row (faster than the 256-bit
// loop alone at 42M and 110M, measured in the port's README); returns the first column left to
// the 256-bit loop, and the four rows' sums folded to eight lanes each in a[0..3]
static inline int dot4_avx512(const float *w0, const float *w1, const float *w2, const float *w3,
                              const float *x, int n, __m256 a[4]) {
    int j = 0;
    __m512 z0 = _mm512_setzero_ps(), z1 = z0, z2 = z0, z3 = z0, y0 = z0, y1 = z0, y2 = z0, y3 = z0;
    for (; j + 32 <= n; j += 32) {
        __m512 xa = _mm512_loadu_ps(x + j), xb = _mm512_loadu_ps(x + j + 16);
        z0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + j), xa, z0);
        z1 = _mm512_fmadd_ps(_mm512_loadu_ps(w1 + j), xa, z1);
        z2 = _mm512_fmadd_ps(_mm512_loadu_ps(w2 + j), xa, z2);
        z3 = _mm512_fmadd_ps(_mm512_loadu_ps(w3 + j), xa, z3);
        y0 = _mm512_fmadd_ps(_mm512_loadu_ps(w0 + j + 16), xb, y0);
        y1 = _mm512_fmadd_ps(_mm512_loadu_ps(w1 + j + 16), xb, y1);
        y2 = _mm512_fmadd_ps(_mm512_loadu_ps(w2 + j + 16), xb, y2);
        y3 = _mm512_fmadd_ps(_mm512_loadu_ps(w3 + j + 16), xb, y3);
    }
    a[0] = fold512(_mm512_add_ps(z0, y0));
    a[1] = fold512(_mm512_add_ps(z1, y1));
    a[2] = fold512(_mm512_add_ps(z2, y2));
    a[3] = fold512(_mm512_add_ps(z3, y3));
    return j;
}
#endif

// 16 columns a step, two accumulators a row (eight independent FMA chains), then 8 at a time
static inline int dot4_avx2(const float *w0, const float *w1, const float *w2, const float *w3,
                            const float *x, int n, float s[4]) {
#ifdef __AVX512F__
    __m256 a[4];
    int j = dot4_avx512(w0, w1, w2, w3, x, n, a);
    __m256 a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3], b0 = _mm256_setzero_ps(), b1 = b0, b2 = b0, b3 = b0;
#else
    int j = 0;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
#endif
    for (; j + 16 <= n; j += 16) {
#if PREFETCH_DIST
        _mm_prefetch((const char *)(w0 + j + PREFETCH_DIST), _MM_HINT_T0);
        _mm_prefetch((const char *)(w1 + j + PREFETCH_DIST), _MM_HINT_T0);
        _mm_prefetch((const char *)(w2 + j + PREFETCH_DIST), _MM_HINT_T0);
        _mm_prefetch((const char *)(w3 + j + PREFETCH_DIST), _MM_HINT_T0);
#endif
        __m256 xa = _mm256_loadu_ps(x + j), xb = _mm256_loadu_ps(x + j + 8);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + j), xa, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + j), xa, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + j), xa, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + j), xa, a3);
        b0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + j + 8), xb, b0);
        b1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + j + 8), xb, b1);
        b2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + j + 8), xb, b2);
        b3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + j + 8), xb, b3);
    }
    for (; j + 8 <= n; j += 8) {
        __m256 xa = _mm256_loadu_ps(x + j);
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + j), xa, a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + j), xa, a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + j), xa, a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + j), xa, a3);
    }
    s[0] = hsum256(_mm256_add_ps(a0, b0));
    s[1] = hsum256(_mm256_add_ps(a1, b1));
    s[2] = hsum256(_mm256_add_ps(a2, b2));
    s[3] = hsum256(_mm256_add_ps(a3, b3));
    return j;
}
#elif SIMD_NEON
static inline int dot4_neon(const float *w0, const float *w1, const float *w2, const float *w3,
                            const float *x, int n, float s[4]) {
    int j = 0;
    float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    for (; j + 8 <= n; j += 8) {
        float32x4_t xa = vld1q_f32(x + j), xb = vld1q_f32(x + j + 4);
        a0 = vfmaq_f32(a0, vld1q_f32(w0 + j), xa);
        a1 = vfmaq_f32(a1, vld1q_f32(w1 + j), xa);
        a2 = vfmaq_f32(a2, vld1q_f32(w2 + j), xa);
        a3 = vfmaq_f32(a3, vld1q_f32(w3 + j), xa);
        b0 = vfmaq_f32(b0, vld1q_f32(w0 + j + 4), xb);
        b1 = vfmaq_f32(b1, vld1q_f32(w1 + j + 4), xb);
        b2 = vfmaq_f32(b2, vld1q_f32(w2 + j + 4), xb);
        b3 = vfmaq_f32(b3, vld1q_f32(w3 + j + 4), xb);
    }
    s[0] = vaddvq_f32(vaddq_f32(a0, b0));
    s[1] = vaddvq_f32(vaddq_f32(a1, b1));
    s[2] = vaddvq_f32(vaddq_f32(a2, b2));
    s[3] = vaddvq_f32(vaddq_f32(a3, b3));
    return j;
}
#else
// portable: eight lanes per row that the compiler turns into vector registers
static inline int dot4_portable(const float *w0, const float *w1, const float *w2, const float *w3,
                                const float *x, int n, float s[4]) {
    int j = 0;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    float l0[8] = {0}, l1[8] = {0}, l2[8] = {0}, l3[8] = {0};
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; k++) {
            l0[k] += w0[j + k] * x[j + k];
            l1[k] += w1[j + k] * x[j + k];
            l2[k] += w2[j + k] * x[j + k];
            l3[k] += w3[j + k] * x[j + k];
        }
    for (int k = 0; k < 8; k++) { s0 += l0[k]; s1 += l1[k]; s2 += l2[k]; s3 += l3[k]; }
    s[0] = s0, s[1] = s1, s[2] = s2, s[3] = s3;
    return j;
}
#endif

// rows i..i+3: the widest kernel this build has, then the columns it left, one at a time
static inline void matvec_rows4(float *out, const float *x, const float *w, int n, int i, int accumulate) {
    const float *w0 = w + (size_t)i * n, *w1 = w0 + n, *w2 = w1 + n, *w3 = w2 + n;
    float s[4];
#if SIMD_AVX2
    int j = dot4_avx2(w0, w1, w2, w3, x, n, s);
#elif SIMD_NEON
    int j = dot4_neon(w0, w1, w2, w3, x, n, s);
#else
    int j = dot4_portable(w0, w1, w2, w3, x, n, s);
#endif
    float s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
    for (; j < n; j++) {
        s0 += w0[j] * x[j];
        s1 += w1[j] * x[j];
        s2 += w2[j] * x[j];
        s3 += w3[j] * x[j];
    }
    if (accumulate) { out[i] += s0; out[i + 1] += s1; out[i + 2] += s2; out[i + 3] += s3; }
    else { out[i] = s0; out[i + 1] = s1; out[i + 2] = s2; out[i + 3] = s3; }
}

// out[i] (+)= W[i, :] . x for rows i in [r0, r1); W is (rows, n) row-major.
// Four rows per pass: x is loaded once for four weight streams, and the 8 independent
// accumulators hide the FMA latency, so the loop runs at the speed memory delivers W.
static void matvec_rows(float *out, const float *x, const float *w, int n, int r0, int r1, int accumulate) {
    int i = r0;
    for (; i + 4 <= r1; i += 4) matvec_rows4(out, x, w, n, i, accumulate);
    for (; i < r1; i++) { // the last rows of a matrix whose height is not a multiple of 4
        const float *wr = w + (size_t)i * n;
        float s = 0.0f;
        for (int j = 0; j < n; j++) s += wr[j] * x[j];
        out[i] = accumulate ? out[i] + s : s;
    }
}

// a . b over n floats: the attention scores, one head's query against one cached key
static inline float dot(const float *a, const float *b, int n) {
    int i = 0;
    float s = 0.0f;
#if SIMD_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    s = hsum256(acc);
#elif SIMD_NEON
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (; i + 4 <= n; i += 4) acc = vfmaq_f32(acc, vld1q_f32(a + i), vld1q_f32(b + i));
    s = vaddvq_f32(acc);
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

// ----------------------------------------------------------------------------
// Q8_0 weights (GGUF type 8), computed as llama.cpp's CPU backend computes them: the activation
// is quantized to Q8_0 blocks too, each block's dot product is an exact int32 sum of int8
// products, and only the scale products and the sum over blocks are float32:
//   out[r] = sum_b float(isum[r][b]) * (fp32(d[r][b]) * dx[b])
// The activation is quantized once per dispatch (Q, K and V share it; so do W1 and W3).

// fp16 bits -> float, exactly: normals, subnormals, infinities and NaN
static inline float fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | man << 13;
    else if (exp) bits = sign | (exp + 112) << 23 | man << 13; // rebias 15 -> 127
    else { // zero or subnormal: man * 2^-24, exact in float
        float f = (float)man * 0x1p-24f;
        return sign ? -f : f;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// float -> fp16 bits, rounding to nearest even (what F16C, NEON and numpy's astype do)
static inline uint16_t fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return sign | 0x7e00;       // NaN stays NaN
    if (x >= 0x477ff000u) return sign | 0x7c00;      // 65520 and up round to infinity
    if (x < 0x38800000u) {                           // under 2^-14: a subnormal (or 2^-14 itself)
        float a;
        memcpy(&a, &x, 4);
        return sign | (uint16_t)nearbyintf(a * 0x1p24f); // the scaling is exact; rounds to even
    }
    x -= 0x38000000u;             // rebias 127 -> 15
    x += 0xfff + ((x >> 13) & 1); // round the 13 dropped bits to nearest, ties to the even result
    return sign | (uint16_t)(x >> 13);
}

// a block's scale: the first two bytes, little-endian, at any alignment
static inline float q8_scale(const unsigned char *block) {
    return fp16_to_fp32((uint16_t)(block[0] | block[1] << 8));
}

static inline size_t q8_row_bytes(int n) { return (size_t)(n / Q8_BLOCK) * Q8_BLOCK_BYTES; }

// x (n values, n a multiple of 32) as Q8_0 blocks, the way llama.cpp's SIMD quantize_row_q8_0
// does it: 127 / amax as the multiplier, rounding ties to even (rintf in the default rounding
// mode), and the scale used later is the fp16-rounded amax / 127
static void quantize_q8(int8_t *qx, float *dx, const float *x, int n) {
    for (int b = 0; b < n / Q8_BLOCK; b++) {
        const float *xb = x + b * Q8_BLOCK;
        float amax = 0.0f;
        for (int i = 0; i < Q8_BLOCK; i++) amax = fmaxf(amax, fabsf(xb[i]));
        dx[b] = fp16_to_fp32(fp32_to_fp16(amax / 127.0f));
        float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        for (int i = 0; i < Q8_BLOCK; i++) qx[b * Q8_BLOCK + i] = (int8_t)rintf(xb[i] * id);
    }
}

// one row of a Q8_0 matrix (an embedding), dequantized: d * q is exact in float
static void dequantize_row_q8(float *out, const unsigned char *row, int n) {
    for (int b = 0; b < n / Q8_BLOCK; b++, row += Q8_BLOCK_BYTES) {
        float d = q8_scale(row);
        const int8_t *q = (const int8_t *)(row + 2);
        for (int i = 0; i < Q8_BLOCK; i++) out[b * Q8_BLOCK + i] = d * (float)q[i];
    }
}

// one block's int32 dot product, the plain way. The quants are read as int8_t, not converted
// from unsigned char: GCC 12 with AVX-VNNI vectorizes `(int8_t)u8 * s8` into an unsigned-by-signed
// vpdpbusd and gets -128 * x wrong (found by test.c).
static inline int q8_block_isum(const unsigned char *wblock, const int8_t *qx) {
    const int8_t *q = (const int8_t *)(wblock + 2);
    int s = 0;
    for (int i = 0; i < Q8_BLOCK; i++) s += q[i] * qx[i];
    return s;
}

#if SIMD_AVX2
// the products of a weight block and an activation block as eight int32 partial sums.
// maddubs and dpbusd multiply unsigned bytes by signed ones: |w| is exact as unsigned even for
// w = -128, and x, which quantize_q8 keeps within +-127, takes w's sign without overflowing.
// Neither can saturate: a pair of products is at most 2 * 128 * 127 < 2^15.
static inline __m256i q8_block_dot(const unsigned char *wblock, const int8_t *qx) {
    __m256i w = _mm256_loadu_si256((const __m256i *)(wblock + 2)), x = _mm256_loadu_si256((const __m256i *)qx);
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
static inline __m256i q8_isums8(const __m256i v[8]) {
    __m256i s01 = _mm256_hadd_epi32(v[0], v[1]), s23 = _mm256_hadd_epi32(v[2], v[3]);
    __m256i s45 = _mm256_hadd_epi32(v[4], v[5]), s67 = _mm256_hadd_epi32(v[6], v[7]);
    __m256i s0123 = _mm256_hadd_epi32(s01, s23), s4567 = _mm256_hadd_epi32(s45, s67);
    // each 128-bit half now holds blocks 0-3 (or 4-7) summed over its own half of the lanes
    return _mm256_add_epi32(_mm256_permute2x128_si256(s0123, s4567, 0x20),
                            _mm256_permute2x128_si256(s0123, s4567, 0x31));
}

static inline int hsum256_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

// the scales of eight consecutive blocks (34 bytes apart)
static inline __m256 q8_scales8(const unsigned char *w) {
#ifdef __F16C__
    uint16_t h[8];
    for (int k = 0; k < 8; k++) h[k] = (uint16_t)(w[k * Q8_BLOCK_BYTES] | w[k * Q8_BLOCK_BYTES + 1] << 8);
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
#else
    float f[8];
    for (int k = 0; k < 8; k++) f[k] = q8_scale(w + k * Q8_BLOCK_BYTES);
    return _mm256_loadu_ps(f);
#endif
}
#elif SIMD_NEON
// one block's products as four int32 partial sums: sdot with the dotprod extension, else
// widening multiplies (int8 * int8 fits int16) added pairwise into int32
static inline int32x4_t q8_block_dot(const unsigned char *wblock, const int8_t *qx) {
    int8x16_t w0 = vld1q_s8((const int8_t *)wblock + 2), w1 = vld1q_s8((const int8_t *)wblock + 18);
    int8x16_t x0 = vld1q_s8(qx), x1 = vld1q_s8(qx + 16);
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
static inline float32x4_t q8_scales4(const unsigned char *w) {
    uint16_t h[4];
    for (int k = 0; k < 4; k++) h[k] = (uint16_t)(w[k * Q8_BLOCK_BYTES] | w[k * Q8_BLOCK_BYTES + 1] << 8);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
}
#endif

// one row of a Q8_0 matrix against the quantized activation (nb blocks). SIMD paths take eight
// (AVX2) or four (NEON) blocks at a time: their isums side by side in one register, scaled and
// summed lane-wise; the remaining blocks one by one.
static float q8_dot_row(const unsigned char *w, const int8_t *qx, const float *dx, int nb) {
    int b = 0;
    float s = 0.0f;
#if SIMD_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; b + 8 <= nb; b += 8) {
        const unsigned char *wb = w + (size_t)b * Q8_BLOCK_BYTES;
        __m256i v[8];
        for (int k = 0; k < 8; k++) v[k] = q8_block_dot(wb + k * Q8_BLOCK_BYTES, qx + (b + k) * Q8_BLOCK);
        __m256 isum = _mm256_cvtepi32_ps(q8_isums8(v)); // exact: |isum| < 2^24
        __m256 scale = _mm256_mul_ps(q8_scales8(wb), _mm256_loadu_ps(dx + b));
        acc = _mm256_add_ps(acc, _mm256_mul_ps(isum, scale)); // not fused: the product is rounded first
    }
    s = hsum256(acc);
    for (; b < nb; b++) {
        const unsigned char *wb = w + (size_t)b * Q8_BLOCK_BYTES;
        float term = (float)hsum256_epi32(q8_block_dot(wb, qx + b * Q8_BLOCK)) * (q8_scale(wb) * dx[b]);
        s += term;
    }
#elif SIMD_NEON
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (; b + 4 <= nb; b += 4) {
        const unsigned char *wb = w + (size_t)b * Q8_BLOCK_BYTES;
        int32x4_t p0 = q8_block_dot(wb, qx + b * Q8_BLOCK);
        int32x4_t p1 = q8_block_dot(wb + Q8_BLOCK_BYTES, qx + (b + 1) * Q8_BLOCK);
        int32x4_t p2 = q8_block_dot(wb + 2 * Q8_BLOCK_BYTES, qx + (b + 2) * Q8_BLOCK);
        int32x4_t p3 = q8_block_dot(wb + 3 * Q8_BLOCK_BYTES, qx + (b + 3) * Q8_BLOCK);
        float32x4_t isum = vcvtq_f32_s32(vpaddq_s32(vpaddq_s32(p0, p1), vpaddq_s32(p2, p3)));
        float32x4_t scale = vmulq_f32(q8_scales4(wb), vld1q_f32(dx + b));
        acc = vaddq_f32(acc, vmulq_f32(isum, scale));
    }
    s = vaddvq_f32(acc);
    for (; b < nb; b++) {
        const unsigned char *wb = w + (size_t)b * Q8_BLOCK_BYTES;
        float term = (float)vaddvq_s32(q8_block_dot(wb, qx + b * Q8_BLOCK)) * (q8_scale(wb) * dx[b]);
        s += term;
    }
#else
    for (; b < nb; b++) {
        const unsigned char *wb = w + (size_t)b * Q8_BLOCK_BYTES;
        float term = (float)q8_block_isum(wb, qx + b * Q8_BLOCK) * (q8_scale(wb) * dx[b]);
        s += term;
    }
#endif
    return s;
}

// out[i] (+)= W[i, :] . x for rows i in [r0, r1), W (rows, n) in Q8_0 and x quantized (qx, dx).
// Each row is one sequential stream of 34-byte blocks, read once, which the hardware prefetcher
// alone streams more slowly than the f32 kernel's four rows at a time; asking for every cache
// line of the row q8_prefetch_rows ahead closes most of that gap (measured in the port's README,
// "Performance levers"). POLYLLAMA_Q8_PREFETCH=0 turns it off, for before/after runs.
static int q8_prefetch_rows = 4;

static void q8_prefetch_from_env(void) {
    const char *v = getenv("POLYLLAMA_Q8_PREFETCH");
    if (v && strcmp(v, "0") == 0) q8_prefetch_rows = 0;
}

static void matvec_q8_rows(float *out, const int8_t *qx, const float *dx, const void *w, int n, int r0, int r1,
                           int accumulate) {
    const unsigned char *rows = w;
    size_t stride = q8_row_bytes(n);
    for (int i = r0; i < r1; i++) {
        if (q8_prefetch_rows && i + q8_prefetch_rows < r1) {
            const unsigned char *ahead = rows + (size_t)(i + q8_prefetch_rows) * stride;
            for (size_t o = 0; o < stride; o += 64) __builtin_prefetch(ahead + o, 0, 3);
        }
        float s = q8_dot_row(rows + (size_t)i * stride, qx, dx, n / Q8_BLOCK);
        out[i] = accumulate ? out[i] + s : s;
    }
}

// ----------------------------------------------------------------------------
// F16 and BF16 weights (GGUF types 1 and 30): the float32 product with every weight converted
// exactly and the activation left in float32 (the contract's choice over llama.cpp's rounding of
// the activation to 16 bits, which two summation orders cannot agree on). The kernels, below the
// batched pass's vector macros, convert the weights in registers: 2 bytes a value are read, and
// nothing is stored as float32.

// bf16 bits -> float: the top half of a float32
static inline float bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// value i of a 16-bit row of type `type`, exactly
static inline __attribute__((always_inline)) float w16_value(const uint16_t *w, size_t i, const int type) {
    return type == WEIGHT_F16 ? fp16_to_fp32(w[i]) : bf16_to_fp32(w[i]);
}

static void matvec16_rows(float *out, const float *x, const void *w, int n, int r0, int r1, int accumulate,
                          int type);

// ----------------------------------------------------------------------------
// Matmul dispatch: rows split across the pool, each matrix by its own kernel

// worker tid's share [lo, hi) of `rows`, in blocks of 16 rows (64 bytes of output) so that no
// two workers write the same cache line
static void split_rows(int rows, int tid, int n_threads, int *lo, int *hi) {
    int blocks = (rows + 15) / 16, per = blocks / n_threads, extra = blocks % n_threads;
    int b0 = tid * per + (tid < extra ? tid : extra), b1 = b0 + per + (tid < extra);
    *lo = b0 * 16 < rows ? b0 * 16 : rows;
    *hi = b1 * 16 < rows ? b1 * 16 : rows;
}

// a matmul's input, with its Q8_0 blocks when one of the matrices that share it is Q8_0
typedef struct {
    const float *x;   // (n,)
    const int8_t *xq; // (n,), or NULL
    const float *xd;  // (n / 32,)
} Input;

// quantize x into the state's buffers when any of the n_mats matrices needs it
static Input matmul_input(RunState *s, const float *x, int n, const Matrix *mats, int n_mats) {
    for (int k = 0; k < n_mats; k++)
        if (mats[k].type == WEIGHT_Q8_0) {
            quantize_q8(s->xq, s->xd, x, n);
            return (Input){x, s->xq, s->xd};
        }
    return (Input){x, NULL, NULL};
}

// rows [r0, r1) of W @ x, by W's kernel
static void matvec_any(float *out, const Input *in, Matrix w, int n, int r0, int r1, int accumulate) {
    if (w.type == WEIGHT_Q8_0) matvec_q8_rows(out, in->xq, in->xd, w.data, n, r0, r1, accumulate);
    else if (w.type == WEIGHT_F16 || w.type == WEIGHT_BF16)
        matvec16_rows(out, in->x, w.data, n, r0, r1, accumulate, w.type);
    else matvec_rows(out, in->x, w.data, n, r0, r1, accumulate);
}

// up to three matmuls sharing an input, split across workers as one stack of rows
typedef struct {
    Input in;
    int n, n_mats, accumulate;
    struct { Matrix w; float *out; int rows; } mats[3];
} MatmulTask;

/* A worker's share [lo, hi) of a stack of matrices' rows, as the rows [*a, *b) of the matrix
 * that starts at row `base` of the stack and has `rows` rows; 0 when it has none of them. */
static inline int stacked_share(int lo, int hi, int base, int rows, int *a, int *b) {
    *a = lo - base < 0 ? 0 : lo - base;
    *b = hi - base > rows ? rows : hi - base;
    return *a < *b;
}

static void matmul_task(void *ctx, int tid, int n_threads) {
    MatmulTask *m = ctx;
    int total = 0;
    for (int k = 0; k < m->n_mats; k++) total += m->mats[k].rows;
    int lo, hi, a, b;
    split_rows(total, tid, n_threads, &lo, &hi);
    for (int k = 0, base = 0; k < m->n_mats; base += m->mats[k].rows, k++)
        if (stacked_share(lo, hi, base, m->mats[k].rows, &a, &b))
            matvec_any(m->mats[k].out, &m->in, m->mats[k].w, m->n, a, b, m->accumulate);
}

static void matmul(ThreadPool *pool, RunState *s, float *out, const float *x, Matrix w, int n, int d,
                   int accumulate) {
    // W (d,n) @ x (n,) -> out (d,), or out += W @ x
    MatmulTask task = {matmul_input(s, x, n, &w, 1), n, 1, accumulate, {{w, out, d}}};
    pool_run(pool, matmul_task, &task);
}

// the FFN's gate and up projections and the SwiGLU between them: hb = silu(w1 @ xb) * (w3 @ xb)
typedef struct { Input in; Matrix w1, w3; float *hb, *hb2; int dim, hidden_dim; } FfnTask;

static void ffn_task(void *ctx, int tid, int n_threads) {
    FfnTask *f = ctx;
    int lo, hi;
    split_rows(f->hidden_dim, tid, n_threads, &lo, &hi);
    matvec_any(f->hb, &f->in, f->w1, f->dim, lo, hi, 0);
    matvec_any(f->hb2, &f->in, f->w3, f->dim, lo, hi, 0);
    for (int i = lo; i < hi; i++) {
        float val = f->hb[i];
        val *= (1.0f / (1.0f + expf(-val))); // silu(x) = x * sigmoid(x)
        f->hb[i] = val * f->hb2[i];
    }
}

// multihead attention over positions 0..pos, heads split across workers
typedef struct { Transformer *t; int layer, pos; } AttentionTask;

static void attention_task(void *ctx, int tid, int n_threads) {
    AttentionTask *a = ctx;
    const Config *p = &a->t->config;
    RunState *s = &a->t->state;
    int head_size = p->dim / p->n_heads, kv_dim = p->n_kv_heads * head_size, kv_mul = p->n_heads / p->n_kv_heads;
    size_t loff = (size_t)a->layer * s->cache_rows * kv_dim; // kv cache layer offset
    float scale = 1.0f / sqrtf((float)head_size);
    float *att = s->att + (size_t)tid * s->cache_rows;
    int h0 = p->n_heads * tid / n_threads, h1 = p->n_heads * (tid + 1) / n_threads;
    for (int h = h0; h < h1; h++) {
        const float *q = s->q + h * head_size;
        const float *kbase = s->key_cache + loff + (h / kv_mul) * head_size;
        const float *vbase = s->value_cache + loff + (h / kv_mul) * head_size;
        for (int t = 0; t <= a->pos; t++) {
            att[t] = dot(q, kbase + (size_t)t * kv_dim, head_size) * scale;
        }
        softmax(att, a->pos + 1);
        float *xb = s->xb + h * head_size; // weighted sum of the values
        memset(xb, 0, head_size * sizeof(float));
        for (int t = 0; t <= a->pos; t++) {
            const float *v = vbase + (size_t)t * kv_dim;
            float w = att[t];
            for (int i = 0; i < head_size; i++) xb[i] += w * v[i];
        }
    }
}

// RoPE: rotate each adjacent pair (v[i], v[i+1]) by its head-relative angle
static void rope(float *vec, int size, int head_size, const float *cos_t, const float *sin_t) {
    for (int i = 0; i < size; i += 2) {
        int pair = (i % head_size) / 2;
        float v0 = vec[i], v1 = vec[i + 1], fcr = cos_t[pair], fci = sin_t[pair];
        vec[i] = v0 * fcr - v1 * fci;
        vec[i + 1] = v0 * fci + v1 * fcr;
    }
}

// copy the token embedding into x (a Q8_0 table's row dequantized, an F16 or BF16 one converted)
static inline void embed(float *x, const Matrix *table, int token, int dim) {
    if (table->type == WEIGHT_Q8_0)
        dequantize_row_q8(x, (const unsigned char *)table->data + (size_t)token * q8_row_bytes(dim), dim);
    else if (table->type == WEIGHT_F16 || table->type == WEIGHT_BF16) {
        const uint16_t *row = (const uint16_t *)table->data + (size_t)token * dim;
        for (int i = 0; i < dim; i++) x[i] = w16_value(row, (size_t)i, table->type);
    } else memcpy(x, (const float *)table->data + (size_t)token * dim, dim * sizeof(float));
}

// this position's rotation angles, shared by every layer and head
// theta: the file's RoPE base (GGUF llama.rope.freq_base), 10000 by default
static inline void rope_table(float *rope_cos, float *rope_sin, int head_size, int pos, float theta) {
    for (int i = 0; i < head_size; i += 2) {
        float freq = 1.0f / powf(theta, (float)i / (float)head_size);
        float val = (float)pos * freq;
        rope_cos[i / 2] = cosf(val);
        rope_sin[i / 2] = sinf(val);
    }
}

static float *forward(Transformer *transformer, int token, int pos) {
    // a few convenience variables
    Config *p = &transformer->config;
    TransformerWeights *w = &transformer->weights;
    RunState *s = &transformer->state;
    ThreadPool *pool = transformer->pool;
    float *x = s->x;
    int dim = p->dim, hidden_dim = p->hidden_dim;
    int head_size = dim / p->n_heads, kv_dim = p->n_kv_heads * head_size;

    embed(x, &w->token_embedding, token, dim);
    rope_table(s->rope_cos, s->rope_sin, head_size, pos, p->rope_theta);

    for (int l = 0; l < p->n_layers; l++) {
        const LayerWeights *lw = &w->layers[l];
        // attention rmsnorm
        rmsnorm(s->xb, x, lw->rms_att, dim, p->norm_eps);

        // qkv matmuls for this position, k and v straight into the kv cache
        size_t loff = (size_t)l * s->cache_rows * kv_dim;
        float *k = s->key_cache + loff + (size_t)pos * kv_dim;
        float *v = s->value_cache + loff + (size_t)pos * kv_dim;
        Matrix wqkv[3] = {lw->wq, lw->wk, lw->wv};
        MatmulTask qkv = {matmul_input(s, s->xb, dim, wqkv, 3), dim, 3, 0,
                          {{lw->wq, s->q, dim}, {lw->wk, k, kv_dim}, {lw->wv, v, kv_dim}}};
        pool_run(pool, matmul_task, &qkv);

        rope(s->q, dim, head_size, s->rope_cos, s->rope_sin);
        rope(k, kv_dim, head_size, s->rope_cos, s->rope_sin);

        AttentionTask att = {transformer, l, pos};
        pool_run(pool, attention_task, &att);

        // final matmul to get the output of the attention, and the residual connection: x += wo @ xb
        matmul(pool, s, x, s->xb, lw->wo, dim, dim, 1);

        // ffn rmsnorm
        rmsnorm(s->xb, x, lw->rms_ffn, dim, p->norm_eps);

        // self.w2(F.silu(self.w1(x)) * self.w3(x)), then the residual connection
        Matrix w13[2] = {lw->w1, lw->w3};
        FfnTask ffn = {matmul_input(s, s->xb, dim, w13, 2), lw->w1, lw->w3, s->hb, s->hb2, dim, hidden_dim};
        pool_run(pool, ffn_task, &ffn);
        matmul(pool, s, x, s->hb, lw->w2, hidden_dim, dim, 1);
    }

    // final rmsnorm
    rmsnorm(x, x, w->rms_final, dim, p->norm_eps);

    // classifier into logits
    matmul(pool, s, s->logits, x, w->wcls, dim, p->vocab_size, 0);
    return s->logits;
}

// ----------------------------------------------------------------------------
// Batched forward pass (contract 2, section 6): the prompt's positions T at a time, every weight
// matrix read once per batch instead of once per position. The one-position path above is left
// as it is (token generation's speed is its speed); this section has its own kernels:
// out(T, n) = X(T, d) @ W(n, d)^T with W row-major as the file stores it (not repacked).
//
// f32: a register tile of MM_TILE_R weight rows by MM_TILE_C activation rows, one vector
// accumulator per pair running along d, summed horizontally once at the end of the tile: each
// weight vector loaded feeds MM_TILE_C FMAs, each activation vector MM_TILE_R. Activation rows
// come in blocks that stay in L2 while a worker's weight rows stream past them.
// Q8_0: one weight row against up to four activation rows at a time, the row's blocks (and their
// |w|, sign and scales) loaded once for all four; per block an exact int32 sum, then
// float(isum) * (fp32(dw) * dx) accumulated in float32, exactly as the one-position kernel.

#define MM_TILE_R 4
#if defined(__AVX512F__)
#define MM_TILE_C 6 // 24 zmm accumulators, 6 activation vectors and one weight vector: 31 of 32
typedef __m512 vecf;
#define VF_LANES 16
#define vf_zero() _mm512_setzero_ps()
#define vf_load(p) _mm512_loadu_ps(p)
#define vf_fma(a, b, c) _mm512_fmadd_ps(a, b, c)
#define vf_hsum(v) _mm512_reduce_add_ps(v)
#define vf_set1(f) _mm512_set1_ps(f)
#define vf_add(a, b) _mm512_add_ps(a, b)
#define vf_store(p, v) _mm512_storeu_ps(p, v)
// the four sums of a, b, c, e into out[0..3]: a transposing reduction costs a third of four
// separate horizontal sums
static inline void vf_hsum4(vecf a, vecf b, vecf c, vecf e, float *out) {
    __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b)); // per lane a b a b
    __m512 ce = _mm512_add_ps(_mm512_unpacklo_ps(c, e), _mm512_unpackhi_ps(c, e)); // per lane c e c e
    __m512 v = _mm512_add_ps(_mm512_shuffle_ps(ab, ce, 0x44), _mm512_shuffle_ps(ab, ce, 0xEE)); // a b c e
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4E));
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));
    _mm_storeu_ps(out, _mm512_castps512_ps128(v));
}
#elif SIMD_AVX2
#define MM_TILE_C 3 // 12 ymm accumulators, 3 activation vectors and one weight vector: 16 of 16
typedef __m256 vecf;
#define VF_LANES 8
#define vf_zero() _mm256_setzero_ps()
#define vf_load(p) _mm256_loadu_ps(p)
#define vf_fma(a, b, c) _mm256_fmadd_ps(a, b, c)
#define vf_hsum(v) hsum256(v)
#define vf_set1(f) _mm256_set1_ps(f)
#define vf_add(a, b) _mm256_add_ps(a, b)
#define vf_store(p, v) _mm256_storeu_ps(p, v)
static inline void vf_hsum4(vecf a, vecf b, vecf c, vecf e, float *out) {
    __m256 v = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, e)); // per 128-bit half: a b c e
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
}
#elif SIMD_NEON
#define MM_TILE_C 6 // 24 q accumulators, 6 activation vectors and one weight vector: 31 of 32
typedef float32x4_t vecf;
#define VF_LANES 4
#define vf_zero() vdupq_n_f32(0.0f)
#define vf_load(p) vld1q_f32(p)
#define vf_fma(a, b, c) vfmaq_f32(c, a, b)
#define vf_hsum(v) vaddvq_f32(v)
#define vf_set1(f) vdupq_n_f32(f)
#define vf_add(a, b) vaddq_f32(a, b)
#define vf_store(p, v) vst1q_f32(p, v)
static inline void vf_hsum4(vecf a, vecf b, vecf c, vecf e, float *out) {
    vst1q_f32(out, vpaddq_f32(vpaddq_f32(a, b), vpaddq_f32(c, e)));
}
#else
#define MM_TILE_C 4
#endif

#ifdef VF_LANES
// VF_LANES 16-bit weights from p as float32, exactly, converted in registers: F16 by the
// hardware conversion (F16C / AVX-512F vcvtph2ps, NEON fcvtl), BF16 by widening each value to 32
// bits and shifting it into the top half
static inline __attribute__((always_inline)) vecf vf_load16(const uint16_t *p, const int type) {
#if defined(__AVX512F__)
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    if (type == WEIGHT_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
#elif SIMD_AVX2
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (type == WEIGHT_F16) {
#ifdef __F16C__
        return _mm256_cvtph_ps(h);
#else
        float f[8];
        for (int k = 0; k < 8; k++) f[k] = fp16_to_fp32(p[k]);
        return _mm256_loadu_ps(f);
#endif
    }
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#else // NEON
    uint16x4_t h = vld1_u16(p);
    if (type == WEIGHT_F16) return vcvt_f32_f16(vreinterpret_f16_u16(h));
    return vreinterpretq_f32_u32(vshll_n_u16(h, 16));
#endif
}

// a weight vector at index i of a row of `type` (F32, F16 or BF16; a constant at every call)
static inline __attribute__((always_inline)) vecf vf_loadw(const void *w, size_t i, const int type) {
    if (type == WEIGHT_F32) return vf_load((const float *)w + i);
    return vf_load16((const uint16_t *)w + i, type);
}
#endif

// one weight value, for the scalar tails
static inline __attribute__((always_inline)) float w_value(const void *w, size_t i, const int type) {
    if (type == WEIGHT_F32) return ((const float *)w)[i];
    return w16_value((const uint16_t *)w, i, type);
}

// out[c * ldo + r] (+)= W[r, :d] . X[c, :d] for the tile's R weight rows (ldw values apart) and C
// activation rows. R, C and the weights' type WT (F32, F16 or BF16: the 16-bit weights are
// converted as they are loaded) are constants at every call (always inlined), so the loops over
// them unroll, the accumulators live in registers, and the F32 tile is what it was without WT.
static inline __attribute__((always_inline)) void mm_tile(const void *w, size_t ldw, int d, const float *x, size_t ldx,
                                                          float *out, size_t ldo, const int R, const int C,
                                                          int accumulate, const int WT) {
    float s[MM_TILE_C][MM_TILE_R]; // by activation row: a tile row of sums is four floats
    int j = 0;
#ifdef VF_LANES
    vecf acc[MM_TILE_R][MM_TILE_C];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = vf_zero();
    for (; j + VF_LANES <= d; j += VF_LANES) {
        vecf xv[MM_TILE_C];
        for (int c = 0; c < C; c++) xv[c] = vf_load(x + c * ldx + j);
        for (int r = 0; r < R; r++) {
            vecf wv = vf_loadw(w, (size_t)r * ldw + j, WT);
            for (int c = 0; c < C; c++) acc[r][c] = vf_fma(wv, xv[c], acc[r][c]);
        }
    }
#ifdef __AVX512F__
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    const int masked_tail = 1;
#else
    const int masked_tail = WT == WEIGHT_F32; // a masked 16-bit load needs AVX-512BW
#endif
    if (j < d && masked_tail) { // the last d % 16 columns as one masked step: masked-off lanes are not read
        __mmask16 m = (__mmask16)((1u << (d - j)) - 1);
        vecf xv[MM_TILE_C];
        for (int c = 0; c < C; c++) xv[c] = _mm512_maskz_loadu_ps(m, x + c * ldx + j);
        for (int r = 0; r < R; r++) {
            vecf wv;
            if (WT == WEIGHT_F32) wv = _mm512_maskz_loadu_ps(m, (const float *)w + (size_t)r * ldw + j);
#if defined(__AVX512BW__) && defined(__AVX512VL__)
            else {
                __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + (size_t)r * ldw + j);
                wv = WT == WEIGHT_F16 ? _mm512_cvtph_ps(h)
                                      : _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
            }
#else
            else wv = vf_zero(); // not reached: masked_tail is 0
#endif
            for (int c = 0; c < C; c++) acc[r][c] = vf_fma(wv, xv[c], acc[r][c]);
        }
        j = d;
    }
#endif
    for (int c = 0; c < C; c++) {
        if (R == 4) vf_hsum4(acc[0][c], acc[1][c], acc[2][c], acc[3][c], s[c]);
        else
            for (int r = 0; r < R; r++) s[c][r] = vf_hsum(acc[r][c]);
    }
#else
    for (int c = 0; c < C; c++)
        for (int r = 0; r < R; r++) s[c][r] = 0.0f;
#endif
    for (; j < d; j++) // the columns the vectors left (all of them in the portable build)
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C; c++) s[c][r] += w_value(w, (size_t)r * ldw + j, WT) * x[c * ldx + j];
    for (int c = 0; c < C; c++)
        for (int r = 0; r < R; r++) {
            float *o = out + c * ldo + r;
            *o = accumulate ? *o + s[c][r] : s[c][r];
        }
}

// R weight rows against activation rows [0, T): full tiles of MM_TILE_C, then the rest
static inline __attribute__((always_inline)) void mm_rows(const void *w, size_t ldw, int d, const float *x, size_t ldx,
                                                          float *out, size_t ldo, int T, const int R,
                                                          int accumulate, const int WT) {
    int t = 0;
    for (; t + MM_TILE_C <= T; t += MM_TILE_C)
        mm_tile(w, ldw, d, x + t * ldx, ldx, out + t * ldo, ldo, R, MM_TILE_C, accumulate, WT);
    const float *xt = x + t * ldx;
    float *ot = out + t * ldo;
    switch (T - t) { // at most MM_TILE_C - 1 rows
    case 1: mm_tile(w, ldw, d, xt, ldx, ot, ldo, R, 1, accumulate, WT); break;
    case 2: mm_tile(w, ldw, d, xt, ldx, ot, ldo, R, 2 < MM_TILE_C ? 2 : 1, accumulate, WT); break;
    case 3: mm_tile(w, ldw, d, xt, ldx, ot, ldo, R, 3 < MM_TILE_C ? 3 : 1, accumulate, WT); break;
    case 4: mm_tile(w, ldw, d, xt, ldx, ot, ldo, R, 4 < MM_TILE_C ? 4 : 1, accumulate, WT); break;
    case 5: mm_tile(w, ldw, d, xt, ldx, ot, ldo, R, 5 < MM_TILE_C ? 5 : 1, accumulate, WT); break;
    default: break;
    }
}

// activation rows per block: as many as fit in about 256 KiB (well inside any L2), a multiple
// of the tile, at least one tile
static int token_block(size_t row_bytes, int tile, int T) {
    size_t fit = ((size_t)256 << 10) / (row_bytes ? row_bytes : 1);
    int tb = fit > (size_t)T ? T : (int)fit;
    tb -= tb % tile;
    return tb < tile ? tile : tb;
}

// out[t * ldo + i] (+)= X[t, :] . W[i, :] for t in [0, T), weight rows i in [r0, r1); W (rows, d)
// row-major of type WT (F32, F16 or BF16), X rows ldx floats apart
static inline __attribute__((always_inline)) void matmat_rows_t(float *out, size_t ldo, const float *x, size_t ldx,
                                                                const void *w, int d, int T, int r0, int r1,
                                                                int accumulate, const int WT) {
    size_t wbytes = WT == WEIGHT_F32 ? 4 : 2;
    int tb = token_block((size_t)d * sizeof(float), MM_TILE_C, T);
    for (int t0 = 0; t0 < T; t0 += tb) {
        int nt = T - t0 < tb ? T - t0 : tb;
        const float *xt = x + (size_t)t0 * ldx;
        float *ot = out + (size_t)t0 * ldo;
        int i = r0;
        for (; i + MM_TILE_R <= r1; i += MM_TILE_R)
            mm_rows((const char *)w + (size_t)i * d * wbytes, (size_t)d, d, xt, ldx, ot + i, ldo, nt, MM_TILE_R,
                    accumulate, WT);
        for (; i < r1; i++)
            mm_rows((const char *)w + (size_t)i * d * wbytes, (size_t)d, d, xt, ldx, ot + i, ldo, nt, 1, accumulate, WT);
    }
}

// the f32 product
static void matmat_rows(float *out, size_t ldo, const float *x, size_t ldx, const float *w, int d, int T, int r0,
                        int r1, int accumulate) {
    matmat_rows_t(out, ldo, x, ldx, w, d, T, r0, r1, accumulate, WEIGHT_F32);
}

// the F16 or BF16 product
static void matmat16_rows(float *out, size_t ldo, const float *x, size_t ldx, const void *w, int d, int T, int r0,
                          int r1, int accumulate, int type) {
    if (type == WEIGHT_F16) matmat_rows_t(out, ldo, x, ldx, w, d, T, r0, r1, accumulate, WEIGHT_F16);
    else matmat_rows_t(out, ldo, x, ldx, w, d, T, r0, r1, accumulate, WEIGHT_BF16);
}

// out[i] (+)= W[i, :] . x for rows i in [r0, r1), W (rows, n) of 16-bit `WT`.
// As matvec_rows: four rows a pass against one load of x, two accumulators a row (eight FMA
// chains), so the loop keeps enough loads in flight to run at the speed memory delivers W; the
// weights are converted in registers, never stored as float32.
static inline __attribute__((always_inline)) void matvec16_rows_t(float *out, const float *x, const uint16_t *w, int n,
                                                                  int r0, int r1, int accumulate, const int WT) {
    int i = r0;
    for (; i + 4 <= r1; i += 4) {
        const uint16_t *w0 = w + (size_t)i * n, *w1 = w0 + n, *w2 = w1 + n, *w3 = w2 + n;
        float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        int j = 0;
#ifdef VF_LANES
        vecf a0 = vf_zero(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        for (; j + 2 * VF_LANES <= n; j += 2 * VF_LANES) {
            vecf xa = vf_load(x + j), xb = vf_load(x + j + VF_LANES);
            a0 = vf_fma(vf_load16(w0 + j, WT), xa, a0);
            a1 = vf_fma(vf_load16(w1 + j, WT), xa, a1);
            a2 = vf_fma(vf_load16(w2 + j, WT), xa, a2);
            a3 = vf_fma(vf_load16(w3 + j, WT), xa, a3);
            b0 = vf_fma(vf_load16(w0 + j + VF_LANES, WT), xb, b0);
            b1 = vf_fma(vf_load16(w1 + j + VF_LANES, WT), xb, b1);
            b2 = vf_fma(vf_load16(w2 + j + VF_LANES, WT), xb, b2);
            b3 = vf_fma(vf_load16(w3 + j + VF_LANES, WT), xb, b3);
        }
        for (; j + VF_LANES <= n; j += VF_LANES) {
            vecf xa = vf_load(x + j);
            a0 = vf_fma(vf_load16(w0 + j, WT), xa, a0);
            a1 = vf_fma(vf_load16(w1 + j, WT), xa, a1);
            a2 = vf_fma(vf_load16(w2 + j, WT), xa, a2);
            a3 = vf_fma(vf_load16(w3 + j, WT), xa, a3);
        }
        vf_hsum4(vf_add(a0, b0), vf_add(a1, b1), vf_add(a2, b2), vf_add(a3, b3), s);
#endif
        for (; j < n; j++) {
            s[0] += w16_value(w0, (size_t)j, WT) * x[j];
            s[1] += w16_value(w1, (size_t)j, WT) * x[j];
            s[2] += w16_value(w2, (size_t)j, WT) * x[j];
            s[3] += w16_value(w3, (size_t)j, WT) * x[j];
        }
        for (int r = 0; r < 4; r++) out[i + r] = accumulate ? out[i + r] + s[r] : s[r];
    }
    for (; i < r1; i++) { // the last rows of a matrix whose height is not a multiple of 4
        const uint16_t *wr = w + (size_t)i * n;
        float s = 0.0f;
        for (int j = 0; j < n; j++) s += w16_value(wr, (size_t)j, WT) * x[j];
        out[i] = accumulate ? out[i] + s : s;
    }
}

static void matvec16_rows(float *out, const float *x, const void *w, int n, int r0, int r1, int accumulate,
                          int type) {
    if (type == WEIGHT_F16) matvec16_rows_t(out, x, w, n, r0, r1, accumulate, WEIGHT_F16);
    else matvec16_rows_t(out, x, w, n, r0, r1, accumulate, WEIGHT_BF16);
}

_Static_assert(MM_TILE_C <= BATCH_TILE_MAX, "the attention's scratch holds BATCH_TILE_MAX rows a worker");

// one Q8_0 weight row (nb blocks) against C <= 4 quantized activation rows (qx rows ldq bytes
// apart, their scales dx rows ldd apart): s[c] = sum over blocks of float(isum) * (dw * dx)
#define Q8_TILE_C 4
static inline __attribute__((always_inline)) void q8_tile(const unsigned char *w, int nb, const int8_t *qx,
                                                          size_t ldq, const float *dx, size_t ldd, const int C,
                                                          float *s) {
    int b = 0;
#if SIMD_AVX2
    __m256 acc[Q8_TILE_C];
    for (int c = 0; c < C; c++) acc[c] = _mm256_setzero_ps();
    for (; b + 8 <= nb; b += 8) {
        const unsigned char *wb = w + (size_t)b * Q8_BLOCK_BYTES;
        __m256i wv[8], aw[8];
        for (int k = 0; k < 8; k++) {
            wv[k] = _mm256_loadu_si256((const __m256i *)(wb + k * Q8_BLOCK_BYTES + 2));
            aw[k] = _mm256_sign_epi8(wv[k], wv[k]);
        }
        __m256 ws = q8_scales8(wb);
        for (int c = 0; c < C; c++) {
            const int8_t *xc = qx + c * ldq + (size_t)b * Q8_BLOCK;
            __m256i v[8];
            for (int k = 0; k < 8; k++) {
                // as q8_block_dot: |w| unsigned, x carrying w's sign
                __m256i sx = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(xc + k * Q8_BLOCK)), wv[k]);
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
                v[k] = _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw[k], sx);
#elif defined(__AVXVNNI__)
                v[k] = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), aw[k], sx);
#else
                v[k] = _mm256_madd_epi16(_mm256_maddubs_epi16(aw[k], sx), _mm256_set1_epi16(1));
#endif
            }
            __m256 isum = _mm256_cvtepi32_ps(q8_isums8(v)); // exact: |isum| < 2^24
            __m256 scale = _mm256_mul_ps(ws, _mm256_loadu_ps(dx + c * ldd + b));
            acc[c] = _mm256_add_ps(acc[c], _mm256_mul_ps(isum, scale)); // not fused, as q8_dot_row
        }
    }
    for (int c = 0; c < C; c++) s[c] = hsum256(acc[c]);
    for (; b < nb; b++) {
        const unsigned char *wb = w + (size_t)b * Q8_BLOCK_BYTES;
        float dw = q8_scale(wb);
        for (int c = 0; c < C; c++) {
            int isum = hsum256_epi32(q8_block_dot(wb, qx + c * ldq + (size_t)b * Q8_BLOCK));
            s[c] += (float)isum * (dw * dx[c * ldd + b]);
        }
    }
#elif SIMD_NEON
    float32x4_t acc[Q8_TILE_C];
    for (int c = 0; c < C; c++) acc[c] = vdupq_n_f32(0.0f);
    for (; b + 4 <= nb; b += 4) {
        const unsigned char *wb = w + (size_t)b * Q8_BLOCK_BYTES;
        int8x16_t wl[4], wh[4];
        for (int k = 0; k < 4; k++) {
            wl[k] = vld1q_s8((const int8_t *)wb + k * Q8_BLOCK_BYTES + 2);
            wh[k] = vld1q_s8((const int8_t *)wb + k * Q8_BLOCK_BYTES + 18);
        }
        float32x4_t ws = q8_scales4(wb);
        for (int c = 0; c < C; c++) {
            const int8_t *xc = qx + c * ldq + (size_t)b * Q8_BLOCK;
            int32x4_t p[4];
            for (int k = 0; k < 4; k++) {
                int8x16_t xl = vld1q_s8(xc + k * Q8_BLOCK), xh = vld1q_s8(xc + k * Q8_BLOCK + 16);
#ifdef __ARM_FEATURE_DOTPROD
                p[k] = vdotq_s32(vdotq_s32(vdupq_n_s32(0), wl[k], xl), wh[k], xh);
#else
                int32x4_t a = vpaddlq_s16(vmull_s8(vget_low_s8(wl[k]), vget_low_s8(xl)));
                a = vpadalq_s16(a, vmull_high_s8(wl[k], xl));
                a = vpadalq_s16(a, vmull_s8(vget_low_s8(wh[k]), vget_low_s8(xh)));
                p[k] = vpadalq_s16(a, vmull_high_s8(wh[k], xh));
#endif
            }
            float32x4_t isum = vcvtq_f32_s32(vpaddq_s32(vpaddq_s32(p[0], p[1]), vpaddq_s32(p[2], p[3])));
            float32x4_t scale = vmulq_f32(ws, vld1q_f32(dx + c * ldd + b));
            acc[c] = vaddq_f32(acc[c], vmulq_f32(isum, scale));
        }
    }
    for (int c = 0; c < C; c++) s[c] = vaddvq_f32(acc[c]);
    for (; b < nb; b++) {
        const unsigned char *wb = w + (size_t)b * Q8_BLOCK_BYTES;
        float dw = q8_scale(wb);
        for (int c = 0; c < C; c++) {
            int isum = vaddvq_s32(q8_block_dot(wb, qx + c * ldq + (size_t)b * Q8_BLOCK));
            s[c] += (float)isum * (dw * dx[c * ldd + b]);
        }
    }
#else
    for (int c = 0; c < C; c++) s[c] = 0.0f;
    for (; b < nb; b++) {
        const unsigned char *wb = w + (size_t)b * Q8_BLOCK_BYTES;
        float dw = q8_scale(wb);
        for (int c = 0; c < C; c++)
            s[c] += (float)q8_block_isum(wb, qx + c * ldq + (size_t)b * Q8_BLOCK) * (dw * dx[c * ldd + b]);
    }
#endif
}

// as matmat_rows, W (rows, d) in Q8_0 and X quantized (qx rows ldq bytes apart, dx rows ldd
// floats apart). Weight rows are prefetched ahead as in matvec_q8_rows (same lever).
static void matmat_q8_rows(float *out, size_t ldo, const int8_t *qx, size_t ldq, const float *dx, size_t ldd,
                           const void *w, int d, int T, int r0, int r1, int accumulate) {
    const unsigned char *rows = w;
    size_t stride = q8_row_bytes(d);
    int nb = d / Q8_BLOCK;
    int tb = token_block((size_t)d + (size_t)nb * sizeof(float), Q8_TILE_C, T);
    for (int t0 = 0; t0 < T; t0 += tb) {
        int nt = T - t0 < tb ? T - t0 : tb;
        for (int i = r0; i < r1; i++) {
            if (q8_prefetch_rows && i + q8_prefetch_rows < r1) {
                const unsigned char *ahead = rows + (size_t)(i + q8_prefetch_rows) * stride;
                for (size_t o = 0; o < stride; o += 64) __builtin_prefetch(ahead + o, 0, 3);
            }
            const unsigned char *wr = rows + (size_t)i * stride;
            for (int t = t0; t < t0 + nt; t += Q8_TILE_C) {
                float s[Q8_TILE_C] = {0};
                const int8_t *xt = qx + (size_t)t * ldq;
                const float *dt = dx + (size_t)t * ldd;
                int C = t0 + nt - t < Q8_TILE_C ? t0 + nt - t : Q8_TILE_C;
                switch (C) {
                case 4: q8_tile(wr, nb, xt, ldq, dt, ldd, 4, s); break;
                case 3: q8_tile(wr, nb, xt, ldq, dt, ldd, 3, s); break;
                case 2: q8_tile(wr, nb, xt, ldq, dt, ldd, 2, s); break;
                default: q8_tile(wr, nb, xt, ldq, dt, ldd, 1, s); break;
                }
                for (int c = 0; c < C; c++) {
                    float *o = out + (size_t)(t + c) * ldo + i;
                    *o = accumulate ? *o + s[c] : s[c];
                }
            }
        }
    }
}

// a batched product's input: T rows of n floats, and their Q8_0 blocks when a matrix that shares
// it is Q8_0 (rows n bytes and n / 32 scales apart)
typedef struct {
    const float *x;
    const int8_t *xq; // or NULL
    const float *xd;
    int T, n;
} BatchInput;

typedef struct { BatchInput in; } QuantizeTask;

static void quantize_rows_task(void *ctx, int tid, int n_threads) {
    BatchInput *in = &((QuantizeTask *)ctx)->in;
    int nb = in->n / Q8_BLOCK;
    for (int t = tid; t < in->T; t += n_threads)
        quantize_q8((int8_t *)in->xq + (size_t)t * in->n, (float *)in->xd + (size_t)t * nb, in->x + (size_t)t * in->n,
                    in->n);
}

// the input rows, quantized (the rows split across the pool) when any of the matrices is Q8_0:
// once per group of products that share it
static BatchInput batch_input(Transformer *tr, const float *x, int T, int n, const Matrix *mats, int n_mats) {
    BatchInput in = {x, NULL, NULL, T, n};
    for (int k = 0; k < n_mats; k++)
        if (mats[k].type == WEIGHT_Q8_0) {
            in.xq = tr->batch.xq;
            in.xd = tr->batch.xd;
            QuantizeTask q = {in};
            pool_run(tr->pool, quantize_rows_task, &q);
            break;
        }
    return in;
}

// weight rows [r0, r1) of the product, by W's kernel
static void matmat_any(float *out, size_t ldo, const BatchInput *in, Matrix w, int r0, int r1, int accumulate) {
    if (w.type == WEIGHT_Q8_0)
        matmat_q8_rows(out, ldo, in->xq, (size_t)in->n, in->xd, (size_t)(in->n / Q8_BLOCK), w.data, in->n, in->T, r0, r1,
                       accumulate);
    else if (w.type == WEIGHT_F16 || w.type == WEIGHT_BF16)
        matmat16_rows(out, ldo, in->x, (size_t)in->n, w.data, in->n, in->T, r0, r1, accumulate, w.type);
    else matmat_rows(out, ldo, in->x, (size_t)in->n, w.data, in->n, in->T, r0, r1, accumulate);
}

// up to three products sharing an input, their weight rows split across workers as one stack:
// each worker streams its own rows once per block of activation rows
typedef struct {
    BatchInput in;
    int n_mats, accumulate;
    struct { Matrix w; float *out; size_t ldo; int rows; } mats[3];
} BatchMatmulTask;

static void batch_matmul_task(void *ctx, int tid, int n_threads) {
    BatchMatmulTask *m = ctx;
    int total = 0;
    for (int k = 0; k < m->n_mats; k++) total += m->mats[k].rows;
    int lo, hi, a, b;
    split_rows(total, tid, n_threads, &lo, &hi);
    for (int k = 0, base = 0; k < m->n_mats; base += m->mats[k].rows, k++)
        if (stacked_share(lo, hi, base, m->mats[k].rows, &a, &b))
            matmat_any(m->mats[k].out, m->mats[k].ldo, &m->in, m->mats[k].w, a, b, m->accumulate);
}

// out (T, rows, ldo apart) (+)= X @ W^T
static void batch_matmul(Transformer *tr, float *out, size_t ldo, const float *x, int T, int n, Matrix w, int rows,
                         int accumulate) {
    BatchMatmulTask task = {batch_input(tr, x, T, n, &w, 1), 1, accumulate, {{w, out, ldo, rows}}};
    pool_run(tr->pool, batch_matmul_task, &task);
}

// the FFN's gate and up products and the SwiGLU, by blocks of hidden rows
typedef struct { BatchInput in; Matrix w1, w3; float *hb, *hb2; int hidden_dim; } BatchFfnTask;

static void batch_ffn_task(void *ctx, int tid, int n_threads) {
    BatchFfnTask *f = ctx;
    int lo, hi, h = f->hidden_dim;
    split_rows(h, tid, n_threads, &lo, &hi);
    if (lo >= hi) return;
    matmat_any(f->hb, (size_t)h, &f->in, f->w1, lo, hi, 0);
    matmat_any(f->hb2, (size_t)h, &f->in, f->w3, lo, hi, 0);
    for (int t = 0; t < f->in.T; t++) {
        float *a = f->hb + (size_t)t * h, *b = f->hb2 + (size_t)t * h;
        for (int i = lo; i < hi; i++) {
            float val = a[i];
            val *= (1.0f / (1.0f + expf(-val))); // silu(x) = x * sigmoid(x)
            a[i] = val * b[i];
        }
    }
}

// softmax(x * scale) in place: softmax's arithmetic, its maximum taken in eight independent
// lanes (one serial chain of comparisons over a long row is slower than the exponentials)
static void scaled_softmax(float *x, int n, float scale) {
    float m[8];
    for (int k = 0; k < 8; k++) m[k] = -INFINITY;
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) {
            x[i + k] *= scale;
            m[k] = x[i + k] > m[k] ? x[i + k] : m[k];
        }
    for (; i < n; i++) {
        x[i] *= scale;
        m[0] = x[i] > m[0] ? x[i] : m[0];
    }
    float max_val = m[0];
    for (int k = 1; k < 8; k++) max_val = m[k] > max_val ? m[k] : max_val;
    float sum = 0.0f;
    for (i = 0; i < n; i++) {
        x[i] = expf(x[i] - max_val);
        sum += x[i];
    }
    for (i = 0; i < n; i++) x[i] /= sum;
}

// out[0..hs) = sum over u < n of p[u] * v[u * ldv + 0..hs): the sums stay in registers across
// the value rows instead of going through memory once per row
static void weighted_sum(float *out, const float *p, const float *v, size_t ldv, int n, int hs) {
    int i = 0;
#ifdef VF_LANES
    for (; i + 4 * VF_LANES <= hs; i += 4 * VF_LANES) {
        // two value rows a step into two sets of sums: eight independent FMA chains
        vecf a0 = vf_zero(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
        int u = 0;
        for (; u + 2 <= n; u += 2) {
            const float *vu = v + (size_t)u * ldv + i, *vn = vu + ldv;
            vecf pu = vf_set1(p[u]), pn = vf_set1(p[u + 1]);
            a0 = vf_fma(pu, vf_load(vu), a0);
            a1 = vf_fma(pu, vf_load(vu + VF_LANES), a1);
            a2 = vf_fma(pu, vf_load(vu + 2 * VF_LANES), a2);
            a3 = vf_fma(pu, vf_load(vu + 3 * VF_LANES), a3);
            b0 = vf_fma(pn, vf_load(vn), b0);
            b1 = vf_fma(pn, vf_load(vn + VF_LANES), b1);
            b2 = vf_fma(pn, vf_load(vn + 2 * VF_LANES), b2);
            b3 = vf_fma(pn, vf_load(vn + 3 * VF_LANES), b3);
        }
        if (u < n) {
            const float *vu = v + (size_t)u * ldv + i;
            vecf pu = vf_set1(p[u]);
            a0 = vf_fma(pu, vf_load(vu), a0);
            a1 = vf_fma(pu, vf_load(vu + VF_LANES), a1);
            a2 = vf_fma(pu, vf_load(vu + 2 * VF_LANES), a2);
            a3 = vf_fma(pu, vf_load(vu + 3 * VF_LANES), a3);
        }
        vf_store(out + i, vf_add(a0, b0));
        vf_store(out + i + VF_LANES, vf_add(a1, b1));
        vf_store(out + i + 2 * VF_LANES, vf_add(a2, b2));
        vf_store(out + i + 3 * VF_LANES, vf_add(a3, b3));
    }
    for (; i + VF_LANES <= hs; i += VF_LANES) {
        vecf a0 = vf_zero();
        for (int u = 0; u < n; u++) a0 = vf_fma(vf_set1(p[u]), vf_load(v + (size_t)u * ldv + i), a0);
        vf_store(out + i, a0);
    }
#endif
    for (; i < hs; i++) {
        float a = 0.0f;
        for (int u = 0; u < n; u++) a += p[u] * v[(size_t)u * ldv + i];
        out[i] = a;
    }
}

// causal attention for the batch's rows, split by (head, tile of MM_TILE_C rows) items dealt
// round-robin (later rows attend to more positions, so contiguous shares would be uneven). Row t
// at position p0 + t reads cache positions 0 .. p0 + t, all written before this task runs. A
// tile's scores against the keys are one small matrix product (mm_tile: the keys are the weight
// rows), so no score costs a horizontal sum of its own; scores past a row's own position are
// computed with the tile and never read.
typedef struct { Transformer *t; int layer, p0, T; } BatchAttentionTask;

static void batch_attention_task(void *ctx, int tid, int n_threads) {
    BatchAttentionTask *a = ctx;
    const Config *p = &a->t->config;
    RunState *s = &a->t->state;
    BatchState *bs = &a->t->batch;
    int head_size = p->dim / p->n_heads, kv_dim = p->n_kv_heads * head_size, kv_mul = p->n_heads / p->n_kv_heads;
    size_t loff = (size_t)a->layer * s->cache_rows * kv_dim, lda = (size_t)s->cache_rows;
    float scale = 1.0f / sqrtf((float)head_size);
    float *att = bs->att + (size_t)tid * MM_TILE_C * lda; // one row of scores per row of the tile
    int tiles = (a->T + MM_TILE_C - 1) / MM_TILE_C, items = tiles * p->n_heads;
    for (int item = tid; item < items; item += n_threads) {
        int t0 = item / p->n_heads * MM_TILE_C, h = item % p->n_heads;
        int nc = a->T - t0 < MM_TILE_C ? a->T - t0 : MM_TILE_C, first = a->p0 + t0, len = first + nc;
        const float *q = bs->q + (size_t)t0 * p->dim + h * head_size;
        const float *kbase = s->key_cache + loff + (h / kv_mul) * head_size;
        const float *vbase = s->value_cache + loff + (h / kv_mul) * head_size;
        int u = 0;
        for (; u + MM_TILE_R <= len; u += MM_TILE_R)
            mm_rows(kbase + (size_t)u * kv_dim, (size_t)kv_dim, head_size, q, (size_t)p->dim, att + u, lda, nc, MM_TILE_R,
                    0, WEIGHT_F32);
        for (; u < len; u++)
            mm_rows(kbase + (size_t)u * kv_dim, (size_t)kv_dim, head_size, q, (size_t)p->dim, att + u, lda, nc, 1, 0,
                    WEIGHT_F32);
        for (int c = 0; c < nc; c++) {
            float *row = att + c * lda;
            scaled_softmax(row, first + c + 1, scale);
            weighted_sum(bs->xb + (size_t)(t0 + c) * p->dim + h * head_size, row, vbase, (size_t)kv_dim, first + c + 1,
                         head_size);
        }
    }
}

enum { LOGITS_NONE, LOGITS_LAST, LOGITS_ALL };

// positions p0 .. p0+T-1 (T <= the batch's rows, p0 + T <= seq_len), row t being
// forward(tokens[t], p0 + t). want: LOGITS_NONE; LOGITS_LAST, the last row's logits into the
// state's logits (returned); LOGITS_ALL, every row's into all (T, vocab).
static float *forward_batch(Transformer *tr, const int *tokens, int T, int p0, int want, float *all) {
    Config *p = &tr->config;
    TransformerWeights *w = &tr->weights;
    RunState *s = &tr->state;
    BatchState *bs = &tr->batch;
    int dim = p->dim, hidden_dim = p->hidden_dim;
    int head_size = dim / p->n_heads, kv_dim = p->n_kv_heads * head_size, half = head_size / 2;

    for (int t = 0; t < T; t++) {
        embed(bs->x + (size_t)t * dim, &w->token_embedding, tokens[t], dim);
        rope_table(bs->rope_cos + (size_t)t * half, bs->rope_sin + (size_t)t * half, head_size, p0 + t, p->rope_theta);
    }

    for (int l = 0; l < p->n_layers; l++) {
        const LayerWeights *lw = &w->layers[l];
        for (int t = 0; t < T; t++)
            rmsnorm(bs->xb + (size_t)t * dim, bs->x + (size_t)t * dim, lw->rms_att, dim, p->norm_eps);

        // Q, K, V for every row, K and V straight into the cache rows p0 .. p0+T-1
        size_t loff = (size_t)l * s->cache_rows * kv_dim;
        float *k = s->key_cache + loff + (size_t)p0 * kv_dim;
        float *v = s->value_cache + loff + (size_t)p0 * kv_dim;
        Matrix wqkv[3] = {lw->wq, lw->wk, lw->wv};
        BatchMatmulTask qkv = {batch_input(tr, bs->xb, T, dim, wqkv, 3), 3, 0,
                               {{lw->wq, bs->q, (size_t)dim, dim}, {lw->wk, k, (size_t)kv_dim, kv_dim},
                                {lw->wv, v, (size_t)kv_dim, kv_dim}}};
        pool_run(tr->pool, batch_matmul_task, &qkv);

        for (int t = 0; t < T; t++) {
            const float *c = bs->rope_cos + (size_t)t * half, *sn = bs->rope_sin + (size_t)t * half;
            rope(bs->q + (size_t)t * dim, dim, head_size, c, sn);
            rope(k + (size_t)t * kv_dim, kv_dim, head_size, c, sn);
        }

        BatchAttentionTask att = {tr, l, p0, T};
        pool_run(tr->pool, batch_attention_task, &att);

        batch_matmul(tr, bs->x, (size_t)dim, bs->xb, T, dim, lw->wo, dim, 1);

        for (int t = 0; t < T; t++)
            rmsnorm(bs->xb + (size_t)t * dim, bs->x + (size_t)t * dim, lw->rms_ffn, dim, p->norm_eps);
        Matrix w13[2] = {lw->w1, lw->w3};
        BatchFfnTask ffn = {batch_input(tr, bs->xb, T, dim, w13, 2), lw->w1, lw->w3, bs->hb, bs->hb2, hidden_dim};
        pool_run(tr->pool, batch_ffn_task, &ffn);
        batch_matmul(tr, bs->x, (size_t)dim, bs->hb, T, hidden_dim, lw->w2, dim, 1);
    }

    if (want == LOGITS_LAST) { // the one-position classifier on the last row
        rmsnorm(s->x, bs->x + (size_t)(T - 1) * dim, w->rms_final, dim, p->norm_eps);
        matmul(tr->pool, s, s->logits, s->x, w->wcls, dim, p->vocab_size, 0);
        return s->logits;
    }
    if (want == LOGITS_ALL) {
        for (int t = 0; t < T; t++)
            rmsnorm(bs->x + (size_t)t * dim, bs->x + (size_t)t * dim, w->rms_final, dim, p->norm_eps);
        batch_matmul(tr, all, (size_t)p->vocab_size, bs->x, T, dim, w->wcls, p->vocab_size, 0);
        return all;
    }
    return NULL;
}

// ----------------------------------------------------------------------------
// The Byte Pair Encoding (BPE) Tokenizer that translates strings <-> tokens

typedef struct {
    Vocab *vocab;
    int *sorted;     // token ids ordered by piece bytes, then id: binary search finds the lowest id
    char *str_buffer; // room for two pieces, to try each merge
    int bos_id, eos_id; // 1 and 2, or the GGUF's tokenizer.ggml.bos_token_id and eos_token_id
} Tokenizer;

static const Vocab *g_sort_vocab; // qsort has no context argument in C11

static int compare_bytes(const char *a, int na, const char *b, int nb) {
    int r = memcmp(a, b, na < nb ? na : nb);
    return r ? r : (na > nb) - (na < nb);
}

static int compare_tokens(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    int r = compare_bytes(g_sort_vocab->pieces[x], g_sort_vocab->lengths[x], g_sort_vocab->pieces[y],
                          g_sort_vocab->lengths[y]);
    return r ? r : (x > y) - (x < y);
}

static void build_tokenizer(Tokenizer *t, Vocab *vocab, int bos_id, int eos_id) {
    t->vocab = vocab;
    t->bos_id = bos_id;
    t->eos_id = eos_id;
    t->sorted = xcalloc(vocab->vocab_size, sizeof(int));
    for (int i = 0; i < vocab->vocab_size; i++) t->sorted[i] = i;
    g_sort_vocab = vocab;
    qsort(t->sorted, vocab->vocab_size, sizeof(int), compare_tokens);
    t->str_buffer = xcalloc((size_t)vocab->max_token_length * 2 + 8, 1);
}

static void free_tokenizer(Tokenizer *t) {
    free(t->sorted);
    free(t->str_buffer);
}

// the lowest id whose piece is exactly these bytes, or -1
static int str_lookup(const Tokenizer *t, const char *str, int len) {
    const Vocab *v = t->vocab;
    int lo = 0, hi = v->vocab_size;
    while (lo < hi) { // first entry not less than str
        int mid = (lo + hi) / 2, id = t->sorted[mid];
        if (compare_bytes(v->pieces[id], v->lengths[id], str, len) < 0) lo = mid + 1;
        else hi = mid;
    }
    if (lo < v->vocab_size) {
        int id = t->sorted[lo];
        if (v->lengths[id] == len && memcmp(v->pieces[id], str, len) == 0) return id;
    }
    return -1;
}

// encode text (n bytes) into tokens (room for n + 3), returning the count
static int encode(const Tokenizer *t, const char *text, int n, int bos, int eos, int *tokens) {
    const Vocab *v = t->vocab;
    int n_tokens = 0;
    if (bos) tokens[n_tokens++] = t->bos_id;
    // add_dummy_prefix is true by default: a leading space, as sentencepiece does
    if (n > 0) {
        int dummy_prefix = str_lookup(t, " ", 1);
        if (dummy_prefix >= 0) tokens[n_tokens++] = dummy_prefix;
    }
    // UTF-8 code points, each a token when the vocabulary has it, its bytes otherwise
    for (int i = 0; i < n;) {
        int start = i++;
        while (i < n && ((unsigned char)text[i] & 0xC0) == 0x80 && i - start < 4) i++;
        int id = str_lookup(t, text + start, i - start);
        if (id >= 0) tokens[n_tokens++] = id;
        else // byte_fallback encoding: the first 3 vocab elements are <unk>, <s>, </s>
            for (int j = start; j < i; j++) tokens[n_tokens++] = (unsigned char)text[j] + 3;
    }
    // merge the best consecutive pair each iteration, according to the scores in vocab_scores
    for (;;) {
        float best_score = -INFINITY;
        int best_id = -1, best_idx = -1;
        for (int i = 0; i < n_tokens - 1; i++) {
            int a = tokens[i], b = tokens[i + 1];
            memcpy(t->str_buffer, v->pieces[a], v->lengths[a]);
            memcpy(t->str_buffer + v->lengths[a], v->pieces[b], v->lengths[b]);
            int id = str_lookup(t, t->str_buffer, v->lengths[a] + v->lengths[b]);
            if (id != -1 && v->scores[id] > best_score) {
                best_score = v->scores[id];
                best_id = id;
                best_idx = i;
            }
        }
        if (best_idx == -1) break;
        tokens[best_idx] = best_id;
        memmove(tokens + best_idx + 1, tokens + best_idx + 2, (n_tokens - best_idx - 2) * sizeof(int));
        n_tokens--;
    }
    if (eos) tokens[n_tokens++] = t->eos_id;
    return n_tokens;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// the bytes to print for `token` after `prev`; *len receives their count. `byte` holds a
// decoded raw byte token.
static const char *decode(const Tokenizer *t, int prev, int token, int *len, char *byte) {
    const char *piece = t->vocab->pieces[token];
    int n = t->vocab->lengths[token];
    // following BOS, sentencepiece strips the leading whitespace
    if (prev == t->bos_id && n > 0 && piece[0] == ' ') { piece++; n--; }
    // raw bytes are spelled <0x01>
    if (n == 6 && memcmp(piece, "<0x", 3) == 0 && piece[5] == '>' && hex_value(piece[3]) >= 0 &&
        hex_value(piece[4]) >= 0) {
        *byte = (char)(hex_value(piece[3]) * 16 + hex_value(piece[4]));
        *len = 1;
        return byte;
    }
    *len = n;
    return piece;
}

// the piece is written unless it is empty or a lone byte that is neither printable nor whitespace
static int safe_to_print(const char *piece, int len) {
    if (len == 0) return 0;
    if (len == 1) {
        unsigned char b = (unsigned char)piece[0];
        if (!((b >= 0x20 && b <= 0x7E) || (b >= '\t' && b <= '\r'))) return 0;
    }
    return 1;
}

static void safe_print(const char *piece, int len) {
    if (!safe_to_print(piece, len)) return;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
}

// ----------------------------------------------------------------------------
// The Sampler: greedy argmax, multinomial sampling and top-p sampling

typedef struct { float prob; int index; } ProbIndex; // struct used when sorting probabilities during top-p

typedef struct {
    int vocab_size;
    ProbIndex *probindex; // buffer used in top-p sampling
    float temperature;
    double topp;        // kept as given: only the comparisons below round it to float32
    unsigned long long rng_state;
} Sampler;

static int sample_argmax(const float *probabilities, int n) {
    // the index with the highest probability; the first of equal maxima
    int max_i = 0;
    float max_p = probabilities[0];
    for (int i = 1; i < n; i++)
        if (probabilities[i] > max_p) { max_i = i; max_p = probabilities[i]; }
    return max_i;
}

static int sample_mult(const float *probabilities, int n, float coin) {
    // sample index from probabilities (they must sum to 1!); coin is a random number in [0, 1)
    float cdf = 0.0f;
    for (int i = 0; i < n; i++) {
        cdf += probabilities[i];
        if (coin < cdf) return i;
    }
    return n - 1; // in case of rounding errors
}

static int compare_probs(const void *a, const void *b) {
    const ProbIndex *x = a, *y = b;
    if (x->prob > y->prob) return -1;
    if (x->prob < y->prob) return 1;
    return (x->index > y->index) - (x->index < y->index); // equal: the lower id first
}

static int sample_topp(const float *probabilities, int n, float topp, ProbIndex *probindex, float coin) {
    // top-p sampling (or "nucleus sampling") samples from the smallest set of tokens that exceed
    // probability topp; tokens below the cutoff cannot be part of it, so they are dropped first
    int n0 = 0;
    const float cutoff = (1.0f - topp) / (float)(n - 1);
    for (int i = 0; i < n; i++)
        if (probabilities[i] >= cutoff) { probindex[n0].index = i; probindex[n0].prob = probabilities[i]; n0++; }
    if (n0 == 0) { // a flat distribution and a tiny top-p: the most likely id
        int best = 0;
        for (int i = 1; i < n; i++) if (probabilities[i] > probabilities[best]) best = i;
        return best;
    }
    qsort(probindex, n0, sizeof(ProbIndex), compare_probs);

    // truncate the list where cumulative probability exceeds topp
    float cumulative_prob = 0.0f;
    int last_idx = n0 - 1; // in case of rounding errors consider all elements
    for (int i = 0; i < n0; i++) {
        cumulative_prob += probindex[i].prob;
        if (cumulative_prob > topp) { last_idx = i; break; }
    }

    // sample from the truncated list
    float r = coin * cumulative_prob;
    float cdf = 0.0f;
    for (int i = 0; i <= last_idx; i++) {
        cdf += probindex[i].prob;
        if (r < cdf) return probindex[i].index;
    }
    return probindex[last_idx].index; // in case of rounding errors
}

static void build_sampler(Sampler *s, int vocab_size, float temperature, double topp, unsigned long long seed) {
    s->vocab_size = vocab_size;
    s->temperature = temperature;
    s->topp = topp;
    s->rng_state = seed;
    s->probindex = xcalloc(vocab_size, sizeof(ProbIndex));
}

static void free_sampler(Sampler *s) { free(s->probindex); }

static unsigned int random_u32(unsigned long long *state) {
    // xorshift rng: https://en.wikipedia.org/wiki/Xorshift#xorshift.2A
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (unsigned int)((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float random_f32(unsigned long long *state) { // random float32 in [0,1)
    return (float)(random_u32(state) >> 8) / 16777216.0f;
}

// numpy's float32 sum (pairwise, eight lanes per block): the reference normalises its softmax
// with it, and the sampled text must match the reference's to the byte
static float pairwise_sum(const float *a, long n) {
    if (n < 8) {
        float res = 0.0f;
        for (long i = 0; i < n; i++) res += a[i];
        return res;
    }
    if (n <= 128) {
        float r[8];
        for (int k = 0; k < 8; k++) r[k] = a[k];
        long i;
        for (i = 8; i < n - (n % 8); i += 8)
            for (int k = 0; k < 8; k++) r[k] += a[i + k];
        float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; i++) res += a[i];
        return res;
    }
    long n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

// the reference's softmax, summed as numpy sums
static void softmax_probs(float *x, int n) {
    float max_val = x[0];
    for (int i = 1; i < n; i++)
        if (x[i] > max_val) max_val = x[i];
    for (int i = 0; i < n; i++) x[i] = expf(x[i] - max_val);
    float sum = pairwise_sum(x, n);
    for (int i = 0; i < n; i++) x[i] /= sum;
}

static int sample(Sampler *sampler, float *logits) {
    // sample the token given the logits and some hyperparameters
    if (sampler->temperature == 0.0f) return sample_argmax(logits, sampler->vocab_size);
    // apply the temperature to the logits, then softmax to get the probabilities for next token
    for (int q = 0; q < sampler->vocab_size; q++) logits[q] /= sampler->temperature;
    softmax_probs(logits, sampler->vocab_size);
    float coin = random_f32(&sampler->rng_state);
    if (sampler->topp <= 0 || sampler->topp >= 1) return sample_mult(logits, sampler->vocab_size, coin);
    return sample_topp(logits, sampler->vocab_size, (float)sampler->topp, sampler->probindex, coin);
}

// ----------------------------------------------------------------------------
// Generation loop and the statistics line

typedef struct {
    int prompt_tokens, generated_tokens, positions, prefilled;
    double ttft_s, prefill_s, decode_s;
} RunStats;

static void print_stats(int threads, int batch, double load_s, const RunStats *st) {
    double rate = st->generated_tokens > 1 && st->decode_s > 0 ? (st->generated_tokens - 1) / st->decode_s : 0.0;
    double prefill_rate = st->prefill_s > 0 ? st->prefilled / st->prefill_s : 0.0;
    fprintf(stderr,
            "polyllama-stats: {\"port\":\"%s\",\"prompt_tokens\":%d,\"generated_tokens\":%d,\"positions\":%d,"
            "\"threads\":%d,\"batch\":%d,\"load_s\":%.6f,\"ttft_s\":%.6f,\"prefill_s\":%.6f,\"prefill_tok_s\":%.4f,"
            "\"decode_s\":%.6f,\"decode_tok_s\":%.4f}\n",
            PORT_NAME, st->prompt_tokens, st->generated_tokens, st->positions, threads, batch, load_s, st->ttft_s,
            st->prefill_s, prefill_rate, st->decode_s, rate);
}

// positions [0, n) of tokens in consecutive batches of at most the batch state's rows; want as
// forward_batch's, for the last batch (LOGITS_LAST) or for every batch (LOGITS_ALL, into all).
// A batch of one position is run.c's forward.
static float *prefill(Transformer *tr, const int *tokens, int n, int want, float *all) {
    int vocab = tr->config.vocab_size;
    float *logits = NULL;
    for (int p0 = 0; p0 < n; p0 += tr->batch.rows) {
        int T = n - p0 < tr->batch.rows ? n - p0 : tr->batch.rows;
        int last = p0 + T == n;
        int w = want == LOGITS_ALL || (want == LOGITS_LAST && last) ? want : LOGITS_NONE;
        float *rows = want == LOGITS_ALL ? all + (size_t)p0 * vocab : NULL;
        if (T == 1) {
            logits = forward(tr, tokens[p0], p0);
            if (rows) memcpy(rows, logits, (size_t)vocab * sizeof(float));
        } else logits = forward_batch(tr, tokens + p0, T, p0, w, rows);
    }
    return logits;
}

static RunStats generate(Transformer *transformer, Tokenizer *tokenizer, Sampler *sampler, const char *prompt,
                         int steps, int ignore_bos) {
    RunStats st = {0};
    int n = (int)strlen(prompt);
    int *prompt_tokens = xcalloc((size_t)n + 3, sizeof(int)); // +3 for BOS, the dummy prefix, EOS
    int num_prompt_tokens = encode(tokenizer, prompt, n, 1, 0, prompt_tokens);
    st.prompt_tokens = num_prompt_tokens;

    double start = now_s(), first = -1.0;
    // the prompt's positions through the batched pass; the logits of its last position only when
    // all of it runs
    int n_prefill = num_prompt_tokens < steps ? num_prompt_tokens : steps;
    float *logits = prefill(transformer, prompt_tokens, n_prefill, n_prefill == num_prompt_tokens ? LOGITS_LAST : LOGITS_NONE,
                            NULL);
    st.positions = st.prefilled = n_prefill;
    st.prefill_s = now_s() - start;
    int token = prompt_tokens[0]; // kick off with the first token in the prompt
    for (int pos = 0; pos < steps; pos++) {
        if (pos >= n_prefill) { // past the prompt: one position at a time, as run.c
            logits = forward(transformer, token, pos);
            st.positions++;
        }
        int next;
        if (pos < num_prompt_tokens - 1) {
            // if we are still processing the input prompt, force the next prompt token
            next = prompt_tokens[pos + 1];
        } else {
            next = sample(sampler, logits);
            st.generated_tokens++;
            if (first < 0) first = now_s();
        }
        // data-dependent terminating condition: the BOS token (1, or the GGUF's) delimits sequences
        if (next == tokenizer->bos_id && !ignore_bos) break;
        char byte;
        int len;
        const char *piece = decode(tokenizer, token, next, &len, &byte);
        safe_print(piece, len);
        token = next;
    }
    double end = now_s();
    fputs("\n", stdout);
    fflush(stdout);
    st.ttft_s = (first >= 0 ? first : end) - start;
    st.decode_s = first >= 0 ? end - first : 0.0;
    free(prompt_tokens);
    return st;
}

static RunStats write_logits(Transformer *transformer, const int *ids, int n, const char *out_path) {
    RunStats st = {0};
    st.prompt_tokens = n;
    int vocab = transformer->config.vocab_size;
    float *all = xcalloc((size_t)n * vocab, sizeof(float));
    double start = now_s();
    prefill(transformer, ids, n, LOGITS_ALL, all);
    st.positions = st.prefilled = n;
    st.ttft_s = st.prefill_s = now_s() - start;
    FILE *f = fopen(out_path, "wb");
    if (!f) die(EXIT_RUNTIME, "%s: cannot write: %s", out_path, strerror(errno));
    // raw float32 little-endian rows; every host this builds for is little-endian
    size_t wrote = fwrite(all, sizeof(float), (size_t)n * vocab, f);
    if (wrote != (size_t)n * vocab || fclose(f) != 0) die(EXIT_RUNTIME, "%s: cannot write: %s", out_path, strerror(errno));
    free(all);
    return st;
}

// ----------------------------------------------------------------------------
// Command line: numbers are plain decimal (contract section 2): no inf, nan, '_', hex or spaces

// copy s into out when it holds only sign, digit, point and exponent characters; 0 otherwise
static int clean_number(const char *s, char *out, size_t cap) {
    size_t n = strlen(s);
    if (n == 0 || n >= cap || strspn(s, "0123456789+-.eE") != n) return 0;
    memcpy(out, s, n + 1);
    return 1;
}

// an integer `[+-]?[0-9]+` of any length, as sign and magnitude: 0 if not one; *overflow when
// it does not fit 64 bits
static int parse_int(const char *text, int *neg, unsigned long long *mag, int *overflow) {
    const char *p = text;
    *neg = 0;
    if (*p == '+' || *p == '-') *neg = *p++ == '-';
    if (!*p) return 0;
    unsigned long long v = 0;
    *overflow = 0;
    for (; *p; p++) {
        if (*p < '0' || *p > '9') return 0;
        unsigned d = (unsigned)(*p - '0');
        if (v > (ULLONG_MAX - d) / 10) *overflow = 1;
        else v = v * 10 + d;
    }
    *mag = v;
    return 1;
}

// an integer flag in [lo, hi] (lo >= 0), else a usage error
static unsigned long long parse_int_flag(const char *flag, const char *text, unsigned long long lo,
                                         unsigned long long hi) {
    int neg, overflow;
    unsigned long long v;
    if (!parse_int(text, &neg, &v, &overflow)) die(EXIT_USAGE, "%s expects a number, got '%s'", flag, text);
    if (overflow || (neg && v != 0) || v < lo || v > hi) die(EXIT_USAGE, "%s %s is out of range", flag, text);
    return v;
}

// -n: any number of digits; past 64 bits it saturates, and seq_len caps it anyway (clamp_steps)
static long long parse_steps(const char *text) {
    int neg, overflow;
    unsigned long long v;
    if (!parse_int(text, &neg, &v, &overflow)) die(EXIT_USAGE, "-n expects a number, got '%s'", text);
    if (neg && v != 0) die(EXIT_USAGE, "-n %s is out of range", text);
    return overflow || v > LLONG_MAX ? LLONG_MAX : (long long)v;
}

// the positions to run: 0, and anything past seq_len, mean seq_len
static int clamp_steps(long long steps, int seq_len) {
    return steps == 0 || steps > seq_len ? seq_len : (int)steps;
}

// -b: an integer >= 1 of any number of digits; past 64 bits it saturates, and seq_len caps it
// (clamp_batch)
static long long parse_batch(const char *text) {
    int neg, overflow;
    unsigned long long v;
    if (!parse_int(text, &neg, &v, &overflow)) die(EXIT_USAGE, "-b expects a number, got '%s'", text);
    if (neg || (!overflow && v == 0)) die(EXIT_USAGE, "-b %s is out of range", text);
    return overflow || v > LLONG_MAX ? LLONG_MAX : (long long)v;
}

static int clamp_batch(long long batch, int seq_len) { return batch > seq_len ? seq_len : (int)batch; }

static double parse_float(const char *flag, const char *text, double lo, double hi) {
    char buf[256];
    if (!clean_number(text, buf, sizeof buf))
        die(EXIT_USAGE, "%s expects a number, got '%s'", flag, text);
    char *end;
    double v = strtod(buf, &end);
    if (*end || v != v) die(EXIT_USAGE, "%s expects a number, got '%s'", flag, text);
    if (isinf(v) || v < lo || v > hi) die(EXIT_USAGE, "%s %s is out of range", flag, text);
    return v;
}

typedef struct {
    const char *checkpoint, *tokenizer, *prompt, *mode, *output;
    double temperature, topp;
    unsigned long long seed;
    long long steps;
    int threads, ignore_bos;
    long long batch; // -b, before clamping to seq_len
    long long *ids; // -k, or NULL; -1 marks an id that cannot be one (negative or huge)
    int n_ids;
} Args;

// -k: comma-separated integers; whether they fit the model is checked once it is loaded
static long long *parse_ids(const char *text, int *count) {
    size_t n = 1;
    for (const char *p = text; *p; p++) n += *p == ',';
    long long *ids = xcalloc(n, sizeof(long long));
    const char *p = text;
    for (size_t i = 0; i < n; i++) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char buf[256];
        int neg, overflow;
        unsigned long long v;
        if (len >= sizeof buf) len = sizeof buf - 1; // longer than any number: still not an id
        memcpy(buf, p, len);
        buf[len] = 0;
        if (!parse_int(buf, &neg, &v, &overflow))
            die(EXIT_USAGE, "-k expects comma-separated token ids, got '%s'", text);
        ids[i] = overflow || (neg && v != 0) || v > INT_MAX ? -1 : (long long)v;
        p = comma ? comma + 1 : p + len;
    }
    *count = n > INT_MAX ? INT_MAX : (int)n;
    return ids;
}

static Args parse_args(int argc, char **argv) {
    Args a = {NULL, NULL, "", "generate", NULL, 1.0, 0.9, 0, 256, 1, 0, 512, NULL, 0};
    if (argc < 2 || argv[1][0] == '-') die(EXIT_USAGE, "missing checkpoint");
    a.checkpoint = argv[1];
    if ((argc - 2) % 2) die(EXIT_USAGE, "flag %s has no value", argv[argc - 1]);
    for (int i = 2; i < argc; i += 2) {
        const char *flag = argv[i], *val = argv[i + 1];
        if (!strcmp(flag, "-z")) a.tokenizer = val;
        else if (!strcmp(flag, "-t")) a.temperature = parse_float(flag, val, 0.0, INFINITY);
        else if (!strcmp(flag, "-p")) a.topp = parse_float(flag, val, 0.0, 1.0);
        else if (!strcmp(flag, "-s")) a.seed = parse_int_flag(flag, val, 0, ULLONG_MAX);
        else if (!strcmp(flag, "-n")) a.steps = parse_steps(val);
        else if (!strcmp(flag, "-i")) a.prompt = val;
        else if (!strcmp(flag, "-j")) a.threads = (int)parse_int_flag(flag, val, 1, 4096);
        else if (!strcmp(flag, "-m")) {
            if (strcmp(val, "generate") && strcmp(val, "logits"))
                die(EXIT_USAGE, "-m expects generate or logits, got '%s'", val);
            a.mode = val;
        }
        else if (!strcmp(flag, "-o")) a.output = val;
        else if (!strcmp(flag, "-k")) { free(a.ids); a.ids = parse_ids(val, &a.n_ids); }
        else if (!strcmp(flag, "-e")) a.ignore_bos = parse_int_flag(flag, val, 0, 1) == 1;
        else if (!strcmp(flag, "-b")) a.batch = parse_batch(val);
        else die(EXIT_USAGE, "unknown flag %s", flag);
    }
    if (!strcmp(a.mode, "logits") && (!a.output || !a.ids)) die(EXIT_USAGE, "logits mode needs -o FILE and -k IDS");
    return a;
}

#ifndef POLYLLAMA_NO_MAIN
int main(int argc, char **argv) {
    double t0 = now_s();
    Args args = parse_args(argc, argv);
    q8_prefetch_from_env();

    Transformer transformer;
    build_transformer(&transformer, args.checkpoint);
    Vocab file_vocab = {0};
    Vocab *vocab = &transformer.vocab;
    if (!transformer.has_vocab) { // a .bin checkpoint: the tokenizer comes from -z
        if (!args.tokenizer) die(EXIT_USAGE, "-z tokenizer is required for a .bin checkpoint");
        read_vocab(&file_vocab, args.tokenizer, transformer.config.vocab_size);
        vocab = &file_vocab;
    }
    const Config *c = &transformer.config;
    Tokenizer tokenizer;
    build_tokenizer(&tokenizer, vocab, c->bos_id, c->eos_id);
    int logits_mode = !strcmp(args.mode, "logits");
    if (logits_mode) {
        int ok = args.n_ids >= 1 && args.n_ids <= c->seq_len;
        for (int i = 0; ok && i < args.n_ids; i++) ok = args.ids[i] >= 0 && args.ids[i] < c->vocab_size;
        if (!ok) die(EXIT_USAGE, "-k needs 1..%d ids in [0, %d)", c->seq_len, c->vocab_size);
    }
    // the KV cache holds the positions this run reaches, not the whole context: checked, then
    // allocated once, after the command line and the file
    int steps = clamp_steps(args.steps, c->seq_len), cache_rows = logits_mode ? args.n_ids : steps;
    check_kv_cache(args.checkpoint, c, cache_rows);
    int batch = clamp_batch(args.batch, c->seq_len);
    start_transformer(&transformer, args.threads, batch, cache_rows);
    double load_s = now_s() - t0;

    RunStats st;
    if (logits_mode) {
        int *ids = xcalloc(args.n_ids, sizeof(int));
        for (int i = 0; i < args.n_ids; i++) ids[i] = (int)args.ids[i];
        st = write_logits(&transformer, ids, args.n_ids, args.output);
        free(ids);
    } else {
        unsigned long long seed = args.seed > 0 ? args.seed : (unsigned long long)time(NULL);
        Sampler sampler;
        build_sampler(&sampler, c->vocab_size, (float)args.temperature, args.topp, seed);
        st = generate(&transformer, &tokenizer, &sampler, args.prompt, steps, args.ignore_bos);
        free_sampler(&sampler);
    }
    print_stats(args.threads, batch, load_s, &st);

    free(args.ids);
    free_tokenizer(&tokenizer);
    if (!transformer.has_vocab) free_vocab(&file_vocab);
    free_transformer(&transformer);
    return 0;
}
#endif
