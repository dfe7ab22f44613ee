/* Memory read bandwidth probe: the roofline of batch-1 fp32 decoding, which reads every
 * weight once per token. Each thread sums its own slice of one large float buffer, the way a
 * matvec streams its rows; the best of several passes is reported, as GB/s (1e9 bytes).
 *
 * usage: bandwidth <MiB> <threads> <passes>   prints: <threads> <GB/s>
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef struct { const float *p; size_t n; float sum; } Slice;

static void *sum_slice(void *arg) {
    Slice *s = arg;
    /* 64 independent accumulators: several vector registers' worth even at 512 bits, so the
       adds never wait on each other's latency and only memory sets the pace */
    float acc[64] = {0};
    size_t i = 0;
    for (; i + 64 <= s->n; i += 64)
        for (int k = 0; k < 64; k++) acc[k] += s->p[i + k];
    for (; i < s->n; i++) acc[0] += s->p[i];
    float t = 0;
    for (int k = 0; k < 64; k++) t += acc[k];
    s->sum = t;
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: bandwidth <MiB> <threads> <passes>\n"); return 2; }
    long mib = atol(argv[1]), threads = atol(argv[2]), passes = atol(argv[3]);
    if (mib < 1 || mib > 65536 || threads < 1 || threads > 1024 || passes < 1) {
        fprintf(stderr, "error: arguments out of range\n");
        return 2;
    }
    size_t n = (size_t)mib * 1024 * 1024 / sizeof(float);
    float *buf = malloc(n * sizeof(float));
    if (!buf) { fprintf(stderr, "error: cannot allocate %ld MiB\n", mib); return 1; }
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 7);
    pthread_t tid[1024];
    Slice sl[1024];
    double best = 1e30, sink = 0;
    for (long pass = 0; pass < passes; pass++) {
        double t0 = now();
        for (long t = 0; t < threads; t++) {
            size_t lo = n * t / threads, hi = n * (t + 1) / threads;
            sl[t] = (Slice){buf + lo, hi - lo, 0};
            if (t) pthread_create(&tid[t], NULL, sum_slice, &sl[t]);
        }
        sum_slice(&sl[0]);
        for (long t = 1; t < threads; t++) pthread_join(tid[t], NULL);
        double dt = now() - t0;
        for (long t = 0; t < threads; t++) sink += sl[t].sum;
        if (dt < best) best = dt;
    }
    printf("%ld %.3f\n", threads, (double)n * sizeof(float) / best / 1e9);
    fprintf(stderr, "checksum %g\n", sink);
    free(buf);
    return 0;
}
