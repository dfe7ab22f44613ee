/* The C port's input files: llama2.c checkpoints (v0, v1), GGUF (v2/v3; F32, and F16, BF16 and
   Q8_0 matrices; the model keys of contract 3) and tokenizer.bin.

   Top to bottom: errors and file access, the config and its limits, the llama2.c header (one
   path for v0 and v1) and tensor layouts, the GGUF reader (preamble, kv section, tensor infos,
   config, tensor table -> weights, embedded vocabulary), tokenizer.bin, and the rules every
   tokenizer must meet. The rules are docs/port-contract.md's, sections 4 and 5. */

#define _DEFAULT_SOURCE
#define _DARWIN_C_SOURCE // pread and MAP_* on macOS
#define _POSIX_C_SOURCE 200809L

#include "formats.h"

#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

// ----------------------------------------------------------------------------
// Errors and file access

void die_file(const char *path, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: %s: ", path);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(EXIT_BAD_FILE);
}

void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "error: cannot allocate %zu bytes\n", n * size);
        exit(EXIT_RUNTIME);
    }
    return p;
}

static int read_le32(const unsigned char *p) {
    return (int)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24);
}

static uint64_t read_le64(const unsigned char *p) {
    return (uint64_t)(uint32_t)read_le32(p) | (uint64_t)(uint32_t)read_le32(p + 4) << 32;
}

// open a file we are about to trust, refusing anything that is not a readable regular file
static int open_input(const char *path, size_t *size) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) die_file(path, "cannot open: %s", errno == ENOENT ? "no such file" : strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) die_file(path, "cannot open: %s", strerror(errno));
    if (S_ISDIR(st.st_mode)) die_file(path, "cannot open: is a directory");
    if (!S_ISREG(st.st_mode)) die_file(path, "cannot open: not a regular file");
    *size = (size_t)st.st_size;
    return fd;
}

static void read_exact(const char *path, int fd, void *buf, size_t n, off_t at) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, (char *)buf + got, n - got, at + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) die_file(path, "cannot read: %s", r < 0 ? strerror(errno) : "unexpected end of file");
        got += (size_t)r;
    }
}

static void *map_file(const char *path, int fd, size_t size) {
    int flags = MAP_PRIVATE;
#ifdef MAP_POPULATE
    flags |= MAP_POPULATE; // fault the weights in now, so load_s and not the first token pays
#endif
    void *data = mmap(NULL, size, PROT_READ, flags, fd, 0);
    if (data == MAP_FAILED) die_file(path, "cannot map: %s", strerror(errno));
    return data;
}

// Where the kernel offers transparent huge pages only on request (Linux's usual "madvise"
// setting), a file mapping stays in 4 KiB pages, and a forward pass that streams hundreds of MB
// of weights misses the TLB on every page. An anonymous copy asked for huge pages removes those
// misses (measured in the port's README, "Performance levers"). POLYLLAMA_HUGEPAGES=0 keeps the
// plain mapping, for that before/after comparison.
static int want_huge_pages(void) {
    const char *v = getenv("POLYLLAMA_HUGEPAGES");
    return !(v && strcmp(v, "0") == 0);
}

static void *load_file(const char *path, int fd, size_t size) {
#ifdef MADV_HUGEPAGE
    if (want_huge_pages()) {
        void *data = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (data == MAP_FAILED) die_file(path, "cannot allocate %zu bytes: %s", size, strerror(errno));
        madvise(data, size, MADV_HUGEPAGE); // a refusal only costs speed
        read_exact(path, fd, data, size, 0);
        mprotect(data, size, PROT_READ); // the weights stay read-only, as in the file mapping
        return data;
    }
#endif
    return map_file(path, fd, size);
}

// ----------------------------------------------------------------------------
// Config: the header values, checked against the contract's limits before anything is sized

#define MAX_DIM 65536
#define MAX_HIDDEN 262144
#define MAX_LAYERS 1024
#define MAX_VOCAB (1 << 20)
#define MAX_SEQ 65536
#define MAX_KV_BYTES (4LL << 30)
// what llama2.c hard-codes, and llama.cpp's defaults for a GGUF that does not say
#define DEFAULT_ROPE_THETA 10000.0f
#define DEFAULT_NORM_EPS 1e-5f
#define DEFAULT_BOS 1
#define DEFAULT_EOS 2

static void validate_config(const char *path, const Config *c) {
    const char *names[] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
    long long values[] = {c->dim, c->hidden_dim, c->n_layers, c->n_heads, c->n_kv_heads, c->vocab_size, c->seq_len};
    long long limits[] = {MAX_DIM, MAX_HIDDEN, MAX_LAYERS, c->dim, -1, MAX_VOCAB, MAX_SEQ};
    for (int i = 0; i < 7; i++)
        if (values[i] <= 0) die_file(path, "header value %s=%lld must be positive", names[i], values[i]);
    for (int i = 0; i < 7; i++)
        if (limits[i] >= 0 && values[i] > limits[i])
            die_file(path, "header value %s=%lld exceeds the limit %lld", names[i], values[i], limits[i]);
    if (c->dim % c->n_heads) die_file(path, "dim=%d is not a multiple of n_heads=%d", c->dim, c->n_heads);
    int head_size = c->dim / c->n_heads;
    if (head_size % 2) die_file(path, "head_size=%d must be even for RoPE", head_size);
    if (c->n_kv_heads > c->n_heads || c->n_heads % c->n_kv_heads)
        die_file(path, "n_heads=%d is not a multiple of n_kv_heads=%d", c->n_heads, c->n_kv_heads);
}

// the KV cache a run needs: rows positions (the steps it can reach, not seq_len), under 4 GiB
void check_kv_cache(const char *path, const Config *c, long long rows) {
    long long kv_dim = (long long)c->n_kv_heads * (c->dim / c->n_heads);
    long long kv_bytes = (long long)c->n_layers * rows * kv_dim * 2 * 4; // under 2^62 by the limits
    if (kv_bytes > MAX_KV_BYTES)
        die_file(path, "KV cache of %lld bytes for %lld positions exceeds the 4 GiB limit", kv_bytes, rows);
}

static long long weight_floats(const Config *c) {
    long long d = c->dim, h = c->hidden_dim, L = c->n_layers, v = c->vocab_size;
    long long kv = (long long)c->n_kv_heads * (c->dim / c->n_heads);
    long long n = v * d + L * (2 * d + d * d + 2 * kv * d + d * d + 3 * h * d) + d;
    return c->shared_classifier ? n : n + v * d;
}

// ----------------------------------------------------------------------------
// llama2.c checkpoints: v0 (legacy) and v1

#define V1_MAGIC 0x616b3432u
#define V1_HEADER_BYTES 256
#define V0_HEADER_BYTES 28

// The header, v0 (7 x int32) or v1 (magic, version, the same 7 x int32, the shared flag, zero
// padding), read and validated before anything is mapped. Returns its size in bytes.
static long long read_llama2c_header(const char *path, int fd, size_t size, int v1, Config *c) {
    int header_bytes = v1 ? V1_HEADER_BYTES : V0_HEADER_BYTES;
    unsigned char head[V1_HEADER_BYTES];
    if (size < (size_t)header_bytes)
        die_file(path, "truncated: %zu bytes, a v%d header needs %d", size, v1, header_bytes);
    read_exact(path, fd, head, (size_t)header_bytes, 0);
    const unsigned char *h7 = v1 ? head + 8 : head;
    int vocab = read_le32(h7 + 20), shared = vocab > 0; // v0: a negative vocab means wcls follows
    if (v1) {
        int version = read_le32(head + 4);
        if (version != 1) die_file(path, "unsupported llama2.c format version %d (only 0 and 1 are fp32)", version);
        if (head[36] > 1) die_file(path, "shared_classifier flag is %d, expected 0 or 1", head[36]);
        shared = head[36];
    } else {
        vocab = vocab == INT32_MIN ? 0 : abs(vocab);
    }
    *c = (Config){read_le32(h7), read_le32(h7 + 4), read_le32(h7 + 8), read_le32(h7 + 12),
                  read_le32(h7 + 16), vocab, read_le32(h7 + 24), shared,
                  DEFAULT_ROPE_THETA, DEFAULT_NORM_EPS, DEFAULT_BOS, DEFAULT_EOS};
    validate_config(path, c);
    return header_bytes;
}

static void check_size(const char *path, size_t actual, long long expected) {
    if ((long long)actual != expected)
        die_file(path, "%s: file is %zu bytes, header implies %lld",
                 (long long)actual < expected ? "truncated" : "oversized", actual, expected);
}

static Matrix f32_matrix(const float *p) { return (Matrix){p, WEIGHT_F32}; }

// point the per-layer weights into one run of stacked tensors (v0 and v1 files)
static void layer_pointers(const Config *c, TransformerWeights *w, const float *rms_att, const float *rms_ffn,
                           const float *wq, const float *wk, const float *wv, const float *wo,
                           const float *w1, const float *w2, const float *w3) {
    size_t d = c->dim, h = c->hidden_dim, kv = (size_t)c->n_kv_heads * (c->dim / c->n_heads);
    w->layers = xcalloc(c->n_layers, sizeof(LayerWeights));
    for (size_t l = 0; l < (size_t)c->n_layers; l++) {
        LayerWeights *lw = &w->layers[l];
        lw->rms_att = rms_att + l * d;
        lw->rms_ffn = rms_ffn + l * d;
        lw->wq = f32_matrix(wq + l * d * d);
        lw->wk = f32_matrix(wk + l * kv * d);
        lw->wv = f32_matrix(wv + l * kv * d);
        lw->wo = f32_matrix(wo + l * d * d);
        lw->w1 = f32_matrix(w1 + l * h * d);
        lw->w2 = f32_matrix(w2 + l * d * h);
        lw->w3 = f32_matrix(w3 + l * h * d);
    }
}

// v0: the embedding, the layers' tensors in forward order, rms_final, the RoPE tables, wcls
static void v0_weights(const Config *c, TransformerWeights *w, const float *p, size_t freq_floats) {
    size_t d = c->dim, h = c->hidden_dim, L = c->n_layers, v = c->vocab_size;
    size_t kv = (size_t)c->n_kv_heads * (c->dim / c->n_heads);
    w->token_embedding = f32_matrix(p); p += v * d;
    const float *rms_att = p; p += L * d;
    const float *wq = p; p += L * d * d;
    const float *wk = p; p += L * kv * d;
    const float *wv = p; p += L * kv * d;
    const float *wo = p; p += L * d * d;
    const float *rms_ffn = p; p += L * d;
    const float *w1 = p; p += L * h * d;
    const float *w2 = p; p += L * d * h;
    const float *w3 = p; p += L * h * d;
    w->rms_final = p; p += d;
    p += freq_floats; // legacy RoPE tables, recomputed in forward
    w->wcls = c->shared_classifier ? w->token_embedding : f32_matrix(p);
    layer_pointers(c, w, rms_att, rms_ffn, wq, wk, wv, wo, w1, w2, w3);
}

// v1 stores the small vectors first, then the matrices
static void v1_weights(const Config *c, TransformerWeights *w, const float *p) {
    size_t d = c->dim, h = c->hidden_dim, L = c->n_layers, v = c->vocab_size;
    size_t kv = (size_t)c->n_kv_heads * (c->dim / c->n_heads);
    const float *rms_att = p; p += L * d;
    const float *rms_ffn = p; p += L * d;
    w->rms_final = p; p += d;
    w->token_embedding = f32_matrix(p); p += v * d;
    const float *wq = p; p += L * d * d;
    const float *wk = p; p += L * kv * d;
    const float *wv = p; p += L * kv * d;
    const float *wo = p; p += L * d * d;
    const float *w1 = p; p += L * h * d;
    const float *w2 = p; p += L * d * h;
    const float *w3 = p; p += L * h * d;
    w->wcls = c->shared_classifier ? w->token_embedding : f32_matrix(p);
    layer_pointers(c, w, rms_att, rms_ffn, wq, wk, wv, wo, w1, w2, w3);
}

static void read_llama2c(const char *path, int fd, size_t size, int v1, Config *c, TransformerWeights *w,
                         void **data) {
    long long header_bytes = read_llama2c_header(path, fd, size, v1, c);
    long long head_size = c->dim / c->n_heads;
    long long freq_floats = v1 ? 0 : 2LL * c->seq_len * (head_size / 2); // v0's freq_cis_real, _imag
    check_size(path, size, header_bytes + 4 * (weight_floats(c) + freq_floats));
    *data = load_file(path, fd, size);
    const float *p = (const float *)((const char *)*data + header_bytes);
    if (v1) v1_weights(c, w, p);
    else v0_weights(c, w, p, (size_t)freq_floats);
}

// ----------------------------------------------------------------------------
// GGUF (v2/v3; norms F32, matrices F32 or Q8_0): a bounded cursor over the mapped file, so
// that no count or length is trusted before it is known to fit in the bytes that remain.

enum { G_U8, G_I8, G_U16, G_I16, G_U32, G_I32, G_F32, G_BOOL, G_STRING, G_ARRAY, G_U64, G_I64, G_F64 };
#define GGUF_MAX_ENTRIES 65536
#define SHOWN_MAX 300

typedef struct {
    const char *path;
    const unsigned char *data;
    size_t size, off;
} Cursor;

typedef struct { const unsigned char *p; uint64_t n; } Str;

typedef struct {
    int present;
    uint32_t type;             // value type
    uint32_t etype;            // element type, for arrays
    uint64_t count;            // element count, for arrays
    const unsigned char *at;   // the value (or an array's first element)
} KvValue;

typedef struct {
    Str name;
    uint32_t n_dims;
    uint64_t dims[4];
    uint32_t type;
    uint64_t offset;
    int used;        // bound to a weight: a tensor left unused is not one of the model's
    uint64_t nbytes; // its data's size, once bound
} TensorInfo;

// the keys the reader looks at, by index
enum { K_ARCH, K_ALIGN, K_TOKENS, K_SCORES, K_TYPES, K_DIM, K_FFN, K_BLOCKS, K_HEADS, K_KV_HEADS, K_CTX,
       K_ROPE_BASE, K_EPS, K_ROPE_DIM, K_BOS, K_EOS, K_ROPE_SCALING, K_EXPERTS, K_N };
static const char *GGUF_KEYS[K_N] = {
    "general.architecture", "general.alignment", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type", "llama.embedding_length", "llama.feed_forward_length", "llama.block_count",
    "llama.attention.head_count", "llama.attention.head_count_kv", "llama.context_length",
    "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "llama.rope.dimension_count",
    "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "llama.rope.scaling.type", "llama.expert_count"};

static int scalar_size(uint32_t t) {
    static const int sizes[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    return t <= G_F64 ? sizes[t] : 0;
}

static void cur_need(Cursor *c, uint64_t n, const char *what) {
    if (n > c->size - c->off)
        die_file(c->path, "truncated or corrupt: %s runs past the end of the file", what);
}

static uint32_t cur_u32(Cursor *c, const char *what) {
    cur_need(c, 4, what);
    uint32_t v = (uint32_t)read_le32(c->data + c->off);
    c->off += 4;
    return v;
}

static uint64_t cur_u64(Cursor *c, const char *what) {
    cur_need(c, 8, what);
    uint64_t v = read_le64(c->data + c->off);
    c->off += 8;
    return v;
}

static Str cur_string(Cursor *c, const char *what) {
    uint64_t n = cur_u64(c, what);
    cur_need(c, n, what);
    Str s = {c->data + c->off, n};
    c->off += n;
    return s;
}

static int str_is(Str s, const char *text) { return s.n == strlen(text) && memcmp(s.p, text, s.n) == 0; }

static int str_cmp(Str a, Str b) {
    int r = memcmp(a.p, b.p, a.n < b.n ? a.n : b.n);
    return r ? r : (a.n > b.n) - (a.n < b.n);
}

static int cmp_str(const void *a, const void *b) { return str_cmp(*(const Str *)a, *(const Str *)b); }

// a name from the file, fit for a one-line message: other than printable ASCII as \xHH, cut short
static const char *shown(Str s, char out[SHOWN_MAX]) {
    size_t m = 0;
    for (uint64_t i = 0; i < s.n; i++) {
        if (i == 64) { memcpy(out + m, "...", 3); m += 3; break; }
        unsigned char b = s.p[i];
        if (b >= 0x20 && b < 0x7F && b != '\\') out[m++] = (char)b;
        else m += (size_t)snprintf(out + m, SHOWN_MAX - m, "\\x%02x", b);
    }
    out[m] = 0;
    return out;
}

// read (and bound) one value of type `type`, remembering where it lies
static KvValue cur_value(Cursor *c, uint32_t type, const char *what) {
    KvValue v = {1, type, 0, 0, c->data + c->off};
    if (scalar_size(type)) {
        cur_need(c, (uint64_t)scalar_size(type), what);
        c->off += scalar_size(type);
    } else if (type == G_STRING) {
        cur_string(c, what);
    } else if (type == G_ARRAY) {
        v.etype = cur_u32(c, what);
        v.count = cur_u64(c, what);
        v.at = c->data + c->off;
        int es = scalar_size(v.etype);
        if (!es && v.etype != G_STRING) die_file(c->path, "%s: unsupported array element type %u", what, v.etype);
        if (v.count > (c->size - c->off) / (uint64_t)(es ? es : 8))
            die_file(c->path, "truncated or corrupt: %s runs past the end of the file", what);
        if (es) c->off += v.count * (uint64_t)es;
        else for (uint64_t i = 0; i < v.count; i++) cur_string(c, what);
    } else {
        die_file(c->path, "%s: unknown value type %u", what, type);
    }
    return v;
}

// an integer-valued scalar as int64 (huge unsigned values saturate, to fail the limits later)
static int scalar_as_int(uint32_t type, const unsigned char *p, long long *out) {
    switch (type) {
    case G_U8: case G_BOOL: *out = p[0]; return 1;
    case G_I8: *out = (int8_t)p[0]; return 1;
    case G_U16: *out = (uint16_t)(p[0] | p[1] << 8); return 1;
    case G_I16: *out = (int16_t)(uint16_t)(p[0] | p[1] << 8); return 1;
    case G_U32: *out = (uint32_t)read_le32(p); return 1;
    case G_I32: *out = read_le32(p); return 1;
    case G_U64: { uint64_t u = read_le64(p); *out = u > INT64_MAX ? INT64_MAX : (long long)u; return 1; }
    case G_I64: *out = (long long)read_le64(p); return 1;
    default: return 0;
    }
}

static double scalar_as_double(uint32_t type, const unsigned char *p) {
    long long i;
    if (scalar_as_int(type, p, &i)) return (double)i;
    if (type == G_F32) { uint32_t u = (uint32_t)read_le32(p); float f; memcpy(&f, &u, 4); return f; }
    uint64_t u = read_le64(p);
    double d;
    memcpy(&d, &u, 8);
    return d;
}

// a header value clamped into int range: out-of-range values then fail validate_config
static int int_key(const char *path, const KvValue *v, const char *key, int fallback, int has_fallback) {
    long long x;
    if (!v->present) {
        if (has_fallback) return fallback;
        die_file(path, "missing required key %s", key);
    }
    if (!scalar_as_int(v->type, v->at, &x)) die_file(path, "key %s must be an integer", key);
    return x > INT32_MAX ? INT32_MAX : x < INT32_MIN ? INT32_MIN : (int)x;
}

// after the magic: the version and the two counts, bounded before anything is sized from them
static void gguf_preamble(Cursor *cur, uint64_t *n_tensors, uint64_t *n_kv) {
    uint32_t version = cur_u32(cur, "version");
    if (version != 2 && version != 3) die_file(cur->path, "unsupported GGUF version %u (2 and 3 are read)", version);
    *n_tensors = cur_u64(cur, "tensor count");
    *n_kv = cur_u64(cur, "kv count");
    if (*n_tensors > GGUF_MAX_ENTRIES || *n_kv > GGUF_MAX_ENTRIES)
        die_file(cur->path, "implausible counts: %llu tensors, %llu keys (limit %d)", (unsigned long long)*n_tensors,
                 (unsigned long long)*n_kv, GGUF_MAX_ENTRIES);
}

// the kv section: the values of GGUF_KEYS, by index. llama.cpp refuses an empty key and a key
// that appears twice (tokenizer keys included), so this reader does too.
static void gguf_kv_section(Cursor *cur, uint64_t n_kv, KvValue kv[K_N]) {
    Str *keys = xcalloc(n_kv, sizeof(Str));
    for (uint64_t i = 0; i < n_kv; i++) {
        Str key = cur_string(cur, "key");
        if (key.n == 0) die_file(cur->path, "key %llu of %llu is empty", (unsigned long long)i + 1,
                                 (unsigned long long)n_kv);
        uint32_t type = cur_u32(cur, "value type");
        KvValue v = cur_value(cur, type, "value");
        for (int k = 0; k < K_N; k++)
            if (str_is(key, GGUF_KEYS[k])) kv[k] = v;
        keys[i] = key;
    }
    qsort(keys, n_kv, sizeof(Str), cmp_str);
    char name[SHOWN_MAX];
    for (uint64_t i = 1; i < n_kv; i++)
        if (str_cmp(keys[i - 1], keys[i]) == 0) die_file(cur->path, "key %s appears twice", shown(keys[i], name));
    free(keys);
}

static int cmp_tensor_info(const void *a, const void *b) {
    return str_cmp(((const TensorInfo *)a)->name, ((const TensorInfo *)b)->name);
}

// the tensor infos, sorted by name for lookup; a name that appears twice is refused
static TensorInfo *gguf_tensor_infos(Cursor *cur, uint64_t n) {
    TensorInfo *infos = xcalloc(n, sizeof(TensorInfo));
    char name[SHOWN_MAX];
    for (uint64_t i = 0; i < n; i++) {
        TensorInfo *ti = &infos[i];
        ti->name = cur_string(cur, "tensor name");
        ti->n_dims = cur_u32(cur, "tensor dims");
        if (ti->n_dims > 4) die_file(cur->path, "tensor %s has %u dimensions", shown(ti->name, name), ti->n_dims);
        for (uint32_t d = 0; d < ti->n_dims; d++) ti->dims[d] = cur_u64(cur, "tensor dims");
        ti->type = cur_u32(cur, "tensor type");
        ti->offset = cur_u64(cur, "tensor offset");
    }
    qsort(infos, n, sizeof(TensorInfo), cmp_tensor_info);
    for (uint64_t i = 1; i < n; i++)
        if (str_cmp(infos[i - 1].name, infos[i].name) == 0)
            die_file(cur->path, "tensor %s appears twice", shown(infos[i].name, name));
    return infos;
}

static TensorInfo *find_tensor(TensorInfo *infos, int n, const char *name) {
    Str key = {(const unsigned char *)name, strlen(name)};
    int lo = 0, hi = n;
    while (lo < hi) { // the first entry not less than name
        int mid = (lo + hi) / 2;
        if (str_cmp(infos[mid].name, key) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && str_cmp(infos[lo].name, key) == 0 ? &infos[lo] : NULL;
}

// general.architecture and general.alignment: where the tensor data starts, after the infos
static uint64_t gguf_data_start(const Cursor *cur, const KvValue kv[K_N], uint64_t *alignment) {
    if (!kv[K_ARCH].present || kv[K_ARCH].type != G_STRING ||
        !str_is((Str){kv[K_ARCH].at + 8, read_le64(kv[K_ARCH].at)}, "llama"))
        die_file(cur->path, "general.architecture is not 'llama'");
    long long align = 32;
    if (kv[K_ALIGN].present && !scalar_as_int(kv[K_ALIGN].type, kv[K_ALIGN].at, &align))
        die_file(cur->path, "key general.alignment must be an integer");
    if (align <= 0 || (align & (align - 1)) || align > 65536)
        die_file(cur->path, "general.alignment=%lld is not a power of two up to 65536", align);
    *alignment = (uint64_t)align;
    return (cur->off + (uint64_t)align - 1) / (uint64_t)align * (uint64_t)align;
}

// a number key of any integer or float type (not bool, not a string or array) as a double;
// absent: 0, and *out untouched
static int number_key(const char *path, const KvValue kv[K_N], int k, double *out) {
    const KvValue *v = &kv[k];
    if (!v->present) return 0;
    if (!scalar_size(v->type) || v->type == G_BOOL) die_file(path, "key %s must be a number", GGUF_KEYS[k]);
    *out = scalar_as_double(v->type, v->at);
    return 1;
}

// a float key, as float32 (what the forward pass computes with), within (lo, hi), finite
static float float_key(const char *path, const KvValue kv[K_N], int k, float fallback, double lo, double hi) {
    double d;
    if (!number_key(path, kv, k, &d)) return fallback;
    float f = (float)d;
    if (!isfinite(f) || !(f > lo) || !(f < hi))
        die_file(path, "key %s=%g is outside its range (finite, > %g and < %g)", GGUF_KEYS[k], d, lo, hi);
    return f;
}

// an integer key that must be a whole number (a float holding one is accepted, as llama.cpp's
// loader converts), within [lo, hi]
static long long whole_key(const char *path, const KvValue kv[K_N], int k, long long fallback, long long lo,
                           long long hi) {
    const KvValue *v = &kv[k];
    if (!v->present) return fallback;
    long long x;
    if (!scalar_as_int(v->type, v->at, &x) || v->type == G_BOOL) {
        double d;
        number_key(path, kv, k, &d); // refuses what is not a number
        if (!(d >= -9e18 && d <= 9e18) || d != (double)(long long)d)
            die_file(path, "key %s=%g must be a whole number", GGUF_KEYS[k], d);
        x = (long long)d;
    }
    if (x < lo || x > hi) die_file(path, "key %s=%lld is outside its range [%lld, %lld]", GGUF_KEYS[k], x, lo, hi);
    return x;
}

// contract 3's model keys: RoPE base, rmsnorm epsilon, rotated dimensions, BOS and EOS; and what
// this architecture does not compute (RoPE scaling, experts), refused rather than run wrongly
static void gguf_model_keys(const char *path, const KvValue kv[K_N], Config *c) {
    int head_size = c->dim / c->n_heads;
    c->rope_theta = float_key(path, kv, K_ROPE_BASE, DEFAULT_ROPE_THETA, 1.0, INFINITY);
    c->norm_eps = float_key(path, kv, K_EPS, DEFAULT_NORM_EPS, 0.0, 1.0);
    long long rot = whole_key(path, kv, K_ROPE_DIM, head_size, LLONG_MIN, LLONG_MAX);
    if (rot != head_size)
        die_file(path, "key %s=%lld must equal head_size=%d (partial rotation is not this architecture)",
                 GGUF_KEYS[K_ROPE_DIM], rot, head_size);
    c->bos_id = (int)whole_key(path, kv, K_BOS, DEFAULT_BOS, 0, c->vocab_size - 1);
    c->eos_id = (int)whole_key(path, kv, K_EOS, DEFAULT_EOS, 0, c->vocab_size - 1);
    const KvValue *scaling = &kv[K_ROPE_SCALING];
    if (scaling->present) {
        if (scaling->type != G_STRING) die_file(path, "key %s must be a string", GGUF_KEYS[K_ROPE_SCALING]);
        Str s = {scaling->at + 8, read_le64(scaling->at)};
        char shown_value[SHOWN_MAX];
        if (!str_is(s, "none"))
            die_file(path, "key %s is '%s'; only 'none' is this architecture", GGUF_KEYS[K_ROPE_SCALING],
                     shown(s, shown_value));
    }
    long long experts = whole_key(path, kv, K_EXPERTS, 0, LLONG_MIN, LLONG_MAX);
    if (experts > 0)
        die_file(path, "key %s=%lld: a mixture of experts is not this architecture", GGUF_KEYS[K_EXPERTS], experts);
}

// the hyperparameters, from the llama.* keys; the vocabulary is the token list's length
static void gguf_config(const char *path, const KvValue kv[K_N], int shared_classifier, Config *c) {
    const KvValue *tokens = &kv[K_TOKENS], *scores = &kv[K_SCORES];
    if (!tokens->present || tokens->type != G_ARRAY || tokens->etype != G_STRING || tokens->count == 0)
        die_file(path, "missing tokenizer.ggml.tokens");
    if (!scores->present || scores->type != G_ARRAY || !scalar_size(scores->etype) || scores->count != tokens->count)
        die_file(path, "tokenizer.ggml.scores missing or not one per token");
    int heads = int_key(path, &kv[K_HEADS], GGUF_KEYS[K_HEADS], 0, 0);
    c->dim = int_key(path, &kv[K_DIM], GGUF_KEYS[K_DIM], 0, 0);
    c->hidden_dim = int_key(path, &kv[K_FFN], GGUF_KEYS[K_FFN], 0, 0);
    c->n_layers = int_key(path, &kv[K_BLOCKS], GGUF_KEYS[K_BLOCKS], 0, 0);
    c->n_heads = heads;
    c->n_kv_heads = int_key(path, &kv[K_KV_HEADS], GGUF_KEYS[K_KV_HEADS], heads, 1);
    c->vocab_size = tokens->count > INT32_MAX ? INT32_MAX : (int)tokens->count;
    c->seq_len = int_key(path, &kv[K_CTX], GGUF_KEYS[K_CTX], 0, 0);
    c->shared_classifier = shared_classifier;
    validate_config(path, c);
    gguf_model_keys(path, kv, c);
}

typedef struct {
    const char *path;
    const unsigned char *data;
    size_t size;
    uint64_t data_start, alignment;
    TensorInfo *infos;
    int n_infos;
} GgufTensors;

static const char *type_name(uint32_t type) {
    return type == WEIGHT_F16 ? "F16" : type == WEIGHT_BF16 ? "BF16" : type == WEIGHT_Q8_0 ? "Q8_0" : "F32";
}

// the tensor `name` of shape (rows, cols), or (cols) when rows == 0, checked to lie in the file:
// F32, or for a matrix F16, BF16 or Q8_0 as well (Q8_0: rows of whole 32-value blocks), as
// llama.cpp's converter writes them (norms, and stories260K's ffn_down with rows of 172, stay F32
// in a Q8_0 file). Sizes and offsets are 64-bit: a 7B file's tensors lie beyond 4 GiB.
static Matrix gguf_tensor(const GgufTensors *g, const char *name, uint64_t rows, uint64_t cols) {
    TensorInfo *ti = find_tensor(g->infos, g->n_infos, name);
    if (!ti) die_file(g->path, "missing tensor %s", name);
    if (ti->type != WEIGHT_F32 && ti->type != WEIGHT_Q8_0 && ti->type != WEIGHT_F16 && ti->type != WEIGHT_BF16)
        die_file(g->path, "tensor %s has type %u; only F32 (0), F16 (1), BF16 (30) and Q8_0 (8) are supported", name,
                 ti->type);
    int q8 = ti->type == WEIGHT_Q8_0, half = ti->type == WEIGHT_F16 || ti->type == WEIGHT_BF16;
    if ((q8 || half) && !rows)
        die_file(g->path, "tensor %s is %s; only matrices may be, norms are F32", name, type_name(ti->type));
    uint32_t want_dims = rows ? 2 : 1;
    if (ti->n_dims != want_dims || ti->dims[0] != cols || (rows && ti->dims[1] != rows)) {
        if (rows) die_file(g->path, "tensor %s has the wrong dims, expected [%llu, %llu]", name,
                           (unsigned long long)cols, (unsigned long long)rows);
        die_file(g->path, "tensor %s has the wrong dims, expected [%llu]", name, (unsigned long long)cols);
    }
    if (q8 && cols % Q8_BLOCK)
        die_file(g->path, "tensor %s is Q8_0 with rows of %llu values, not a multiple of the block size %d", name,
                 (unsigned long long)cols, Q8_BLOCK);
    if (ti->offset % g->alignment)
        die_file(g->path, "tensor %s has offset %llu, not a multiple of general.alignment=%llu", name,
                 (unsigned long long)ti->offset, (unsigned long long)g->alignment);
    // bounded by the config's limits: under 2^37 bytes either way
    uint64_t nbytes = q8 ? rows * (cols / Q8_BLOCK) * Q8_BLOCK_BYTES : (half ? 2 : 4) * cols * (rows ? rows : 1);
    uint64_t value_align = q8 ? 1 : half ? 2 : 4;
    if (ti->offset % value_align || ti->offset > g->size || g->data_start > g->size - ti->offset ||
        nbytes > g->size - g->data_start - ti->offset)
        die_file(g->path, "tensor %s lies outside the file", name);
    ti->used = 1;
    ti->nbytes = nbytes;
    return (Matrix){g->data + g->data_start + ti->offset, (int)ti->type};
}

// a norm: F32 only (gguf_tensor refuses the other types for a vector)
static const float *gguf_vector(const GgufTensors *g, const char *name, uint64_t n) {
    return gguf_tensor(g, name, 0, n).data;
}

static const char *GGUF_LAYER_NAMES[9] = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                          "ffn_norm", "ffn_gate", "ffn_down", "ffn_up"};

// the tensor table -> weights, each tensor found by its llama.cpp name
static void gguf_weights(const GgufTensors *g, const Config *c, TransformerWeights *w) {
    uint64_t d = c->dim, h = c->hidden_dim, kvd = (uint64_t)c->n_kv_heads * (c->dim / c->n_heads);
    w->token_embedding = gguf_tensor(g, "token_embd.weight", c->vocab_size, d);
    w->rms_final = gguf_vector(g, "output_norm.weight", d);
    w->wcls = c->shared_classifier ? w->token_embedding : gguf_tensor(g, "output.weight", c->vocab_size, d);
    w->layers = xcalloc(c->n_layers, sizeof(LayerWeights));
    // (rows, cols) of attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate, ffn_down, ffn_up
    uint64_t shapes[9][2] = {{0, d}, {d, d}, {kvd, d}, {kvd, d}, {d, d}, {0, d}, {h, d}, {d, h}, {h, d}};
    for (int k = 0; k < 9; k++) {
        for (int l = 0; l < c->n_layers; l++) {
            char name[64];
            snprintf(name, sizeof name, "blk.%d.%s.weight", l, GGUF_LAYER_NAMES[k]);
            LayerWeights *lw = &w->layers[l];
            if (!shapes[k][0]) { // the two norms
                *(k == 0 ? &lw->rms_att : &lw->rms_ffn) = gguf_vector(g, name, shapes[k][1]);
                continue;
            }
            Matrix *slot[9] = {NULL, &lw->wq, &lw->wk, &lw->wv, &lw->wo, NULL, &lw->w1, &lw->w2, &lw->w3};
            *slot[k] = gguf_tensor(g, name, shapes[k][0], shapes[k][1]);
        }
    }
}

typedef struct { uint64_t start, end; Str name; } ByteRange;

static int cmp_range(const void *a, const void *b) {
    const ByteRange *x = a, *y = b;
    if (x->start != y->start) return (x->start > y->start) - (x->start < y->start);
    return str_cmp(x->name, y->name); // a message that does not depend on qsort's order
}

// after gguf_weights: no tensor that is not the model's (so the count is exactly the model's),
// and no two tensors whose data [offset, offset + nbytes) intersect
static void gguf_check_table(const GgufTensors *g, const Config *c) {
    char a[SHOWN_MAX], b[SHOWN_MAX];
    int expected = 2 + 9 * c->n_layers + !c->shared_classifier;
    for (int i = 0; i < g->n_infos; i++)
        if (!g->infos[i].used)
            die_file(g->path, "unexpected tensor %s: a %d-layer model has %d tensors, the file %d",
                     shown(g->infos[i].name, a), c->n_layers, expected, g->n_infos);
    ByteRange *ranges = xcalloc(g->n_infos, sizeof(ByteRange));
    for (int i = 0; i < g->n_infos; i++) {
        const TensorInfo *ti = &g->infos[i];
        ranges[i] = (ByteRange){ti->offset, ti->offset + ti->nbytes, ti->name}; // bounded: it lies in the file
    }
    qsort(ranges, g->n_infos, sizeof(ByteRange), cmp_range);
    for (int i = 1; i < g->n_infos; i++)
        if (ranges[i].start < ranges[i - 1].end)
            die_file(g->path, "tensors %s and %s overlap", shown(ranges[i - 1].name, a), shown(ranges[i].name, b));
    free(ranges);
}

// one GGUF token as llama2.c bytes: U+2581 (E2 96 81) is a space; the control tokens <s> and
// </s> are llama2.c's BOS and EOS pieces. Returns the length written to out (at most len + 3).
static size_t gguf_piece(char *out, const unsigned char *s, uint64_t len, int control) {
    if (control && len == 3 && memcmp(s, "<s>", 3) == 0) { memcpy(out, "\n<s>\n", 5); return 5; }
    if (control && len == 4 && memcmp(s, "</s>", 4) == 0) { memcpy(out, "\n</s>\n", 6); return 6; }
    size_t m = 0;
    for (uint64_t j = 0; j < len; j++) {
        if (j + 2 < len && s[j] == 0xE2 && s[j + 1] == 0x96 && s[j + 2] == 0x81) { out[m++] = ' '; j += 2; }
        else out[m++] = (char)s[j];
    }
    return m;
}

static void gguf_vocab(Vocab *v, const KvValue *tokens, const KvValue *scores, const KvValue *types) {
    int n = (int)tokens->count;
    v->vocab_size = n;
    v->pieces = xcalloc(n, sizeof(char *));
    v->lengths = xcalloc(n, sizeof(int));
    v->scores = xcalloc(n, sizeof(float));
    int use_types = types->present && types->type == G_ARRAY && scalar_size(types->etype) &&
                    types->count == tokens->count;
    // a piece is at most 2 bytes longer than its token (<s> -> \n<s>\n), plus its NUL
    size_t total = 0;
    const unsigned char *p = tokens->at;
    for (int i = 0; i < n; i++) {
        uint64_t len = read_le64(p);
        total += len + 3;
        p += 8 + len;
    }
    char *arena = xcalloc(total + 16, 1);
    v->arena = arena;
    int es = use_types ? scalar_size(types->etype) : 0;
    int ss = scalar_size(scores->etype);
    p = tokens->at;
    v->max_token_length = 1;
    for (int i = 0; i < n; i++) {
        uint64_t len = read_le64(p);
        // token type 3 (control), read the way the reference's int() reads it, even from a float
        double ttype = use_types ? scalar_as_double(types->etype, types->at + (size_t)i * es) : -1.0;
        size_t m = gguf_piece(arena, p + 8, len, ttype >= 3.0 && ttype < 4.0);
        p += 8 + len;
        v->pieces[i] = arena;
        v->lengths[i] = (int)m;
        arena += m + 1;
        if ((int)m > v->max_token_length) v->max_token_length = (int)m;
        v->scores[i] = (float)scalar_as_double(scores->etype, scores->at + (size_t)i * ss);
    }
}

static void check_vocab(const char *path, const Vocab *v);

static void read_gguf(const char *path, int fd, size_t size, Config *c, TransformerWeights *w, Vocab *vocab,
                      void **data) {
    if (size < 8) die_file(path, "truncated or corrupt: version runs past the end of the file");
    *data = load_file(path, fd, size);
    Cursor cur = {path, *data, size, 4};
    uint64_t n_tensors, n_kv;
    gguf_preamble(&cur, &n_tensors, &n_kv);
    KvValue kv[K_N] = {{0}};
    gguf_kv_section(&cur, n_kv, kv);
    TensorInfo *infos = gguf_tensor_infos(&cur, n_tensors);
    uint64_t alignment;
    uint64_t data_start = gguf_data_start(&cur, kv, &alignment);
    int shared = find_tensor(infos, (int)n_tensors, "output.weight") == NULL;
    gguf_config(path, kv, shared, c);
    GgufTensors g = {path, *data, size, data_start, alignment, infos, (int)n_tensors};
    gguf_weights(&g, c, w);
    gguf_check_table(&g, c);
    gguf_vocab(vocab, &kv[K_TOKENS], &kv[K_SCORES], &kv[K_TYPES]);
    check_vocab(path, vocab);
    free(infos);
}

// ----------------------------------------------------------------------------
// A checkpoint of any format: sniffed by its first bytes, validated, then mapped

void read_checkpoint(const char *path, Config *config, TransformerWeights *weights, Vocab *vocab, void **data,
                     size_t *file_size) {
    size_t size;
    int fd = open_input(path, &size);
    unsigned char magic[4] = {0};
    if (size >= 4) read_exact(path, fd, magic, 4, 0);
    memset(vocab, 0, sizeof *vocab);
    if (size >= 4 && memcmp(magic, "GGUF", 4) == 0) read_gguf(path, fd, size, config, weights, vocab, data);
    else read_llama2c(path, fd, size, size >= 4 && (uint32_t)read_le32(magic) == V1_MAGIC, config, weights, data);
    *file_size = size;
    close(fd); // the mapping outlives the descriptor
}

void free_checkpoint(TransformerWeights *weights, Vocab *vocab, void *data, size_t file_size) {
    free(weights->layers);
    free_vocab(vocab);
    if (data) munmap(data, file_size);
}

// ----------------------------------------------------------------------------
// tokenizer.bin, and the rules for every tokenizer

// the contract's rules for any vocabulary, from tokenizer.bin or GGUF alike: <unk>, BOS, EOS and
// the 256 byte tokens that byte fallback emits; the " " piece that every prompt starts with; and
// finite scores, which the merge rule compares
static void check_vocab(const char *path, const Vocab *v) {
    if (v->vocab_size < 259)
        die_file(path, "has %d tokens; a tokenizer needs at least 259 (<unk>, BOS, EOS and 256 byte tokens)",
                 v->vocab_size);
    int space = 0;
    for (int i = 0; i < v->vocab_size; i++) {
        if (isnan(v->scores[i])) die_file(path, "token %d has a NaN score", i);
        if (isinf(v->scores[i])) die_file(path, "token %d has an infinite score", i);
        space |= v->lengths[i] == 1 && v->pieces[i][0] == ' ';
    }
    if (!space) die_file(path, "has no piece \" \" (the dummy prefix that starts every prompt)");
}

void free_vocab(Vocab *v) {
    free(v->pieces);
    free(v->lengths);
    free(v->scores);
    free(v->arena);
}

void read_vocab(Vocab *v, const char *path, int vocab_size) {
    size_t size;
    int fd = open_input(path, &size);
    unsigned char *data = xcalloc(size + 1, 1);
    read_exact(path, fd, data, size, 0);
    close(fd);
    if (size < 4) die_file(path, "truncated: no max_token_length header");
    int max_len = read_le32(data);
    if (max_len < 1 || max_len > 1024) die_file(path, "max_token_length=%d outside 1..1024", max_len);
    v->vocab_size = vocab_size;
    v->max_token_length = max_len;
    v->pieces = xcalloc(vocab_size, sizeof(char *));
    v->lengths = xcalloc(vocab_size, sizeof(int));
    v->scores = xcalloc(vocab_size, sizeof(float));
    v->arena = data;
    size_t off = 4;
    for (int i = 0; i < vocab_size; i++) {
        if (size - off < 8) die_file(path, "has only %d tokens, the model's vocabulary is %d", i, vocab_size);
        float score;
        memcpy(&score, data + off, 4); // little-endian hosts only, as every target of this port
        int len = read_le32(data + off + 4);
        off += 8;
        if (len < 0 || len > max_len) die_file(path, "token %d has length %d, outside 0..%d", i, len, max_len);
        if ((size_t)len > size - off) die_file(path, "truncated inside token %d", i);
        v->pieces[i] = (char *)data + off;
        v->lengths[i] = len;
        v->scores[i] = score;
        off += (size_t)len;
    }
    if (off != size)
        die_file(path, "has %zu bytes after token %d: its vocabulary is larger than the model's %d",
                 size - off, vocab_size - 1, vocab_size);
    check_vocab(path, v);
}
