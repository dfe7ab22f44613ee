/* Memory read bandwidth probe: the roofline of batch-1 fp32 decoding, which reads every
 * weight once per token. The buffer is as large as the model's weights, so a small model gets
 * the bandwidth of the cache level it actually lives in. Each thread streams its own slice the
 * way a blocked matvec reads its rows: several rows (streams) at once, each summed into its own
 * accumulators. The best of several passes is reported, as GB/s (1e9 bytes).
 *
 * usage: bandwidth <bytes> <threads> <passes> <streams>   prints: <threads> <GB/s>
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define MAX_STREAMS 16
#define ACC 32 /* accumulators per stream: enough vector registers' worth that adds never wait */

typedef struct { const float *p; size_t n; int streams; float sum; } Slice;

static void *sum_slice(void *arg) {
    Slice *s = arg;
    size_t len = s->n / s->streams; /* each stream is one contiguous run, like one matrix row block */
    float acc[MAX_STREAMS][ACC] = {{0}};
    size_t i = 0;
    for (; i + ACC <= len; i += ACC)
        for (int r = 0; r < s->streams; r++)
            for (int k = 0; k < ACC; k++) acc[r][k] += s->p[r * len + i + k];
    float t = 0;
    for (size_t j = (size_t)s->streams * len; j < s->n; j++) t += s->p[j];
    for (int r = 0; r < s->streams; r++) {
        for (size_t j = i; j < len; j++) t += s->p[r * len + j];
        for (int k = 0; k < ACC; k++) t += acc[r][k];
    }
    s->sum = t;
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: bandwidth <bytes> <threads> <passes> <streams>\n"); return 2; }
    long long bytes = atoll(argv[1]);
    long threads = atol(argv[2]), passes = atol(argv[3]), streams = atol(argv[4]);
    if (bytes < 4096 || bytes > (64LL << 30) || threads < 1 || threads > 1024 || passes < 1 ||
        streams < 1 || streams > MAX_STREAMS) {
        fprintf(stderr, "error: arguments out of range\n");
        return 2;
    }
    size_t n = (size_t)bytes / sizeof(float);
    float *buf = malloc(n * sizeof(float));
    if (!buf) { fprintf(stderr, "error: cannot allocate %lld bytes\n", bytes); return 1; }
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 7);
    pthread_t tid[1024];
    Slice sl[1024];
    double best = 1e30, sink = 0;
    for (long pass = 0; pass < passes; pass++) {
        double t0 = now();
        for (long t = 0; t < threads; t++) {
            size_t lo = n * t / threads, hi = n * (t + 1) / threads;
            sl[t] = (Slice){buf + lo, hi - lo, (int)streams, 0};
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
