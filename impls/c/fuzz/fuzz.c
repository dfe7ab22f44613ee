/* The harnesses' shared part: the hooks that formats.o calls in the fuzz build (see fuzz.h),
   the in-memory input file, and the checks on an accepted file. */

#define _GNU_SOURCE // memfd_create, fmemopen

#include "fuzz.h"

#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

// ----------------------------------------------------------------------------
// Findings

void fuzz_check(int cond, const char *what) {
    if (cond) return;
    fprintf(stderr, "fuzz: %s\n", what);
    abort();
}

// ----------------------------------------------------------------------------
// The hooks: formats.o's exit, calloc, free, mmap, munmap, open, close and stderr

#define TRACK_MAX 64 // a reader holds a dozen resources at most at any one time

static jmp_buf back;          // where exit() returns to, while a reader runs
static int armed, exit_code;
static void *blocks[TRACK_MAX];
static int n_blocks;
static struct { void *addr; size_t len; } maps[TRACK_MAX];
static int n_maps;
static int fds[TRACK_MAX];
static int n_fds;
static char err_text[4096];
FILE *fuzz_stderr; // formats.o's stderr: the error line lands in err_text

_Noreturn void fuzz_exit(int code) {
    fuzz_check(armed, "exit() outside a reader");
    exit_code = code;
    longjmp(back, 1);
}

void *fuzz_calloc(size_t n, size_t size) {
    void *p = calloc(n, size);
    if (p) {
        fuzz_check(n_blocks < TRACK_MAX, "a reader holds too many allocations");
        blocks[n_blocks++] = p;
    }
    return p;
}

void fuzz_free(void *p) {
    if (!p) return;
    for (int i = 0; i < n_blocks; i++)
        if (blocks[i] == p) {
            blocks[i] = blocks[--n_blocks];
            free(p);
            return;
        }
    fuzz_check(0, "free() of a block the reader did not allocate");
}

void *fuzz_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    void *p = mmap(addr, len, prot, flags, fd, off);
    if (p != MAP_FAILED) {
        fuzz_check(n_maps < TRACK_MAX, "a reader holds too many mappings");
        maps[n_maps].addr = p;
        maps[n_maps++].len = len;
    }
    return p;
}

int fuzz_munmap(void *addr, size_t len) {
    for (int i = 0; i < n_maps; i++)
        if (maps[i].addr == addr) {
            fuzz_check(maps[i].len == len, "munmap() with another length than mmap()");
            maps[i] = maps[--n_maps];
            return munmap(addr, len);
        }
    fuzz_check(0, "munmap() of a mapping the reader did not make");
    return -1;
}

int fuzz_open(const char *path, int flags, ...) {
    mode_t mode = 0;
    if (flags & O_CREAT) {
        va_list ap;
        va_start(ap, flags);
        mode = (mode_t)va_arg(ap, int);
        va_end(ap);
    }
    int fd = open(path, flags, mode);
    if (fd >= 0) {
        fuzz_check(n_fds < TRACK_MAX, "a reader holds too many descriptors");
        fds[n_fds++] = fd;
    }
    return fd;
}

int fuzz_close(int fd) {
    for (int i = 0; i < n_fds; i++)
        if (fds[i] == fd) {
            fds[i] = fds[--n_fds];
            return close(fd);
        }
    fuzz_check(0, "close() of a descriptor the reader did not open");
    return -1;
}

// what a refused input left behind: in the program, exit() releases it
static void release_all(void) {
    while (n_blocks) free(blocks[--n_blocks]);
    while (n_maps) { n_maps--; munmap(maps[n_maps].addr, maps[n_maps].len); }
    while (n_fds) close(fds[--n_fds]);
}

void fuzz_released(void) {
    fuzz_check(n_blocks == 0, "free_* left an allocation behind");
    fuzz_check(n_maps == 0, "free_* left the mapping behind");
    fuzz_check(n_fds == 0, "an accepted file's descriptor was left open");
}

// ----------------------------------------------------------------------------
// One input: written to a memfd, read through its /proc path (the readers take a path)

static int input_fd = -1;
static char input_path[64];

static void setup(void) {
    if (input_fd >= 0) return;
    input_fd = memfd_create("fuzz-input", 0);
    fuzz_check(input_fd >= 0, "memfd_create failed");
    snprintf(input_path, sizeof input_path, "/proc/self/fd/%d", input_fd);
    fuzz_stderr = fmemopen(err_text, sizeof err_text, "w");
    fuzz_check(fuzz_stderr != NULL, "fmemopen failed");
    setvbuf(fuzz_stderr, NULL, _IONBF, 0);
}

static void write_input(const uint8_t *data, size_t size) {
    fuzz_check(ftruncate(input_fd, 0) == 0 && ftruncate(input_fd, (off_t)size) == 0, "ftruncate failed");
    for (size_t done = 0; done < size;) {
        ssize_t n = pwrite(input_fd, data + done, size - done, (off_t)done);
        fuzz_check(n > 0, "writing the input failed");
        done += (size_t)n;
    }
}

// the contract's one line: `error: <path>: <problem>\n`, nothing else
static void check_error_line(void) {
    long n = ftell(fuzz_stderr);
    fuzz_check(n > 0 && (size_t)n < sizeof err_text - 1, "a refused file printed no error line, or a huge one");
    char prefix[96];
    int k = snprintf(prefix, sizeof prefix, "error: %s: ", input_path);
    fuzz_check((long)k < n && memcmp(err_text, prefix, (size_t)k) == 0, "the error line does not start `error: <path>: `");
    fuzz_check(memchr(err_text, '\n', (size_t)n) == err_text + n - 1, "the error is not exactly one line");
}

int fuzz_read(const uint8_t *data, size_t size, FuzzReader reader, void *ctx) {
    setup();
    write_input(data, size);
    fseek(fuzz_stderr, 0, SEEK_SET);
    armed = 1;
    if (setjmp(back) == 0) {
        reader(input_path, ctx);
        armed = 0;
        fuzz_check(ftell(fuzz_stderr) == 0, "an accepted file printed to stderr");
        return 1;
    }
    armed = 0;
    if (exit_code != EXIT_BAD_FILE) {
        fprintf(stderr, "fuzz: the reader exited with %d, not %d: %.*s", exit_code, EXIT_BAD_FILE,
                (int)ftell(fuzz_stderr), err_text);
        abort();
    }
    check_error_line();
    release_all();
    return 0;
}

// ----------------------------------------------------------------------------
// Checks on what a reader accepted

static volatile float sink; // reads that the compiler may not drop: the bytes must be there

void fuzz_check_floats(const float *p, size_t n, const void *base, size_t size, const char *what) {
    uintptr_t b = (uintptr_t)base, q = (uintptr_t)p;
    if (q % sizeof(float) || q < b || q - b > size || n > (size - (q - b)) / sizeof(float)) {
        fprintf(stderr, "fuzz: tensor %s (%zu floats at +%lld) is not inside the %zu-byte file\n", what, n,
                (long long)(q - b), size);
        abort();
    }
    float s = 0;
    for (size_t i = 0; i < n; i++) s += p[i];
    sink = s;
}

void fuzz_check_matrix(Matrix m, size_t rows, size_t cols, const void *base, size_t size, const char *what) {
    if (m.type == WEIGHT_F32) {
        fuzz_check_floats(m.data, rows * cols, base, size, what);
        return;
    }
    int half = m.type == WEIGHT_F16 || m.type == WEIGHT_BF16;
    fuzz_check(m.type == WEIGHT_Q8_0 || half, "a matrix of a type other than F32, F16, BF16 and Q8_0 was accepted");
    fuzz_check(half || cols % Q8_BLOCK == 0, "a Q8_0 matrix whose rows are not whole blocks was accepted");
    uintptr_t b = (uintptr_t)base, q = (uintptr_t)m.data;
    size_t n = half ? 2 * rows * cols : rows * (cols / Q8_BLOCK) * Q8_BLOCK_BYTES;
    if (q < b || q - b > size || n > size - (q - b)) {
        fprintf(stderr, "fuzz: %s tensor %s (%zu bytes at +%lld) is not inside the %zu-byte file\n",
                half ? "16-bit" : "Q8_0", what, n, (long long)(q - b), size);
        abort();
    }
    const unsigned char *p = m.data;
    unsigned s = 0;
    for (size_t i = 0; i < n; i++) s += p[i];
    sink = (float)s;
}

void fuzz_check_vocab(const Vocab *v) {
    int space = 0;
    unsigned sum = 0;
    fuzz_check(v->vocab_size >= 259, "a vocabulary of under 259 tokens was accepted");
    for (int i = 0; i < v->vocab_size; i++) {
        fuzz_check(v->lengths[i] >= 0 && v->lengths[i] <= v->max_token_length, "a piece is longer than max_token_length");
        for (int j = 0; j < v->lengths[i]; j++) sum += (unsigned char)v->pieces[i][j];
        fuzz_check(isfinite(v->scores[i]), "a non-finite score was accepted");
        space |= v->lengths[i] == 1 && v->pieces[i][0] == ' ';
    }
    fuzz_check(space, "a vocabulary without \" \" was accepted");
    sink = (float)sum;
}

// ----------------------------------------------------------------------------
// A checkpoint (v0, v1 or GGUF): read_checkpoint, then every tensor checked to lie in the file

typedef struct {
    Config c;
    TransformerWeights w;
    Vocab v;
    void *data;
    size_t size;
} Loaded;

static void read_it(const char *path, void *ctx) {
    Loaded *m = ctx;
    read_checkpoint(path, &m->c, &m->w, &m->v, &m->data, &m->size);
}

static void check_config(const Config *c) {
    fuzz_check(c->dim > 0 && c->hidden_dim > 0 && c->n_layers > 0 && c->n_heads > 0 && c->n_kv_heads > 0 &&
                   c->vocab_size > 0 && c->seq_len > 0,
               "a header value that is not positive was accepted");
    fuzz_check(c->dim % c->n_heads == 0 && (c->dim / c->n_heads) % 2 == 0 && c->n_kv_heads <= c->n_heads &&
                   c->n_heads % c->n_kv_heads == 0,
               "inconsistent head counts were accepted");
}

static void check_weights(const Loaded *m) {
    const Config *c = &m->c;
    const TransformerWeights *w = &m->w;
    size_t d = c->dim, h = c->hidden_dim, v = c->vocab_size, kv = (size_t)c->n_kv_heads * (d / c->n_heads);
    fuzz_check_matrix(w->token_embedding, v, d, m->data, m->size, "token_embedding");
    fuzz_check_floats(w->rms_final, d, m->data, m->size, "rms_final");
    fuzz_check_matrix(w->wcls, v, d, m->data, m->size, "wcls");
    fuzz_check(!c->shared_classifier ||
                   (w->wcls.data == w->token_embedding.data && w->wcls.type == w->token_embedding.type),
               "a shared classifier is not the embedding");
    for (int l = 0; l < c->n_layers; l++) {
        const LayerWeights *lw = &w->layers[l];
        fuzz_check_floats(lw->rms_att, d, m->data, m->size, "rms_att");
        fuzz_check_matrix(lw->wq, d, d, m->data, m->size, "wq");
        fuzz_check_matrix(lw->wk, kv, d, m->data, m->size, "wk");
        fuzz_check_matrix(lw->wv, kv, d, m->data, m->size, "wv");
        fuzz_check_matrix(lw->wo, d, d, m->data, m->size, "wo");
        fuzz_check_floats(lw->rms_ffn, d, m->data, m->size, "rms_ffn");
        fuzz_check_matrix(lw->w1, h, d, m->data, m->size, "w1");
        fuzz_check_matrix(lw->w2, d, h, m->data, m->size, "w2");
        fuzz_check_matrix(lw->w3, h, d, m->data, m->size, "w3");
    }
}

void fuzz_checkpoint(const uint8_t *data, size_t size) {
    Loaded m;
    memset(&m, 0, sizeof m);
    if (!fuzz_read(data, size, read_it, &m)) return;
    fuzz_check(m.size == size, "the mapping is not the whole file");
    check_config(&m.c);
    check_weights(&m);
    if (m.v.vocab_size) { // a GGUF file's own tokenizer
        fuzz_check(m.v.vocab_size == m.c.vocab_size, "the GGUF vocabulary is not the model's");
        fuzz_check_vocab(&m.v);
    }
    free_checkpoint(&m.w, &m.v, m.data, m.size);
    fuzz_released();
}
