/* The C port's input files: llama2.c checkpoints (v0 and v1), GGUF, and tokenizer.bin.

   Every reader validates before it trusts (docs/port-contract.md, sections 4 and 5): nothing is
   sized from a header value before the file is known to hold it, and every failure is one
   `error: <path>: <problem>` line and exit 3. The types below are what run.c computes with. */

#ifndef POLYLLAMA_FORMATS_H
#define POLYLLAMA_FORMATS_H

#include <stddef.h>

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2
#define EXIT_BAD_FILE 3

typedef struct {
    int dim;        // transformer dimension
    int hidden_dim; // for ffn layers
    int n_layers;
    int n_heads;    // number of query heads
    int n_kv_heads; // number of key/value heads (can be < query heads because of multiquery)
    int vocab_size; // always positive here; sharing is its own flag
    int seq_len;    // max sequence length
    int shared_classifier;
    // from a GGUF file's keys (contract 3), llama2.c's constants for v0/v1 and where absent
    float rope_theta; // RoPE base
    float norm_eps;   // rmsnorm's epsilon
    int bos_id, eos_id;
} Config;

// A matrix as the file stores it, row-major: float32; GGUF's F16 (ggml type 1, IEEE binary16) or
// BF16 (type 30, a float32's top 16 bits), 2 bytes a value; or Q8_0 (type 8), where each row is
// cols/32 blocks of an fp16 scale d and 32 int8 values q (value = d * q). A block is 34 bytes, so
// past a row's first block nothing is aligned: scales are read byte-wise.
enum { WEIGHT_F32 = 0, WEIGHT_F16 = 1, WEIGHT_Q8_0 = 8, WEIGHT_BF16 = 30 };
#define Q8_BLOCK 32
#define Q8_BLOCK_BYTES 34

typedef struct {
    const void *data;
    int type; // WEIGHT_F32, WEIGHT_F16, WEIGHT_BF16 or WEIGHT_Q8_0
} Matrix;

// One layer's weights. Pointers, not offsets: GGUF stores each layer's tensors separately.
typedef struct {
    const float *rms_att; // (dim,)
    Matrix wq;            // (dim, n_heads * head_size)
    Matrix wk;            // (kv_dim, dim)
    Matrix wv;            // (kv_dim, dim)
    Matrix wo;            // (dim, n_heads * head_size)
    const float *rms_ffn; // (dim,)
    Matrix w1;            // (hidden_dim, dim)
    Matrix w2;            // (dim, hidden_dim)
    Matrix w3;            // (hidden_dim, dim)
} LayerWeights;

typedef struct {
    Matrix token_embedding; // (vocab_size, dim)
    LayerWeights *layers;   // (n_layers,)
    const float *rms_final; // (dim,)
    Matrix wcls;            // (vocab_size, dim): token_embedding when shared
} TransformerWeights;

// The vocabulary as read from tokenizer.bin or from a GGUF file's metadata.
typedef struct {
    int vocab_size;
    char **pieces;   // not NUL-terminated: a piece may hold any byte
    int *lengths;
    float *scores;
    int max_token_length;
    void *arena;     // owns the bytes the pieces point into
} Vocab;

// a bad input file: `error: <path>: <problem>`, exit 3
_Noreturn void die_file(const char *path, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// calloc, or `error: cannot allocate` and exit 1
void *xcalloc(size_t n, size_t size);

// Sniff, validate and map a checkpoint. The weights point into *data (file_size bytes). A GGUF
// file brings its tokenizer: then *vocab is filled, otherwise vocab->vocab_size is 0.
void read_checkpoint(const char *path, Config *config, TransformerWeights *weights, Vocab *vocab, void **data,
                     size_t *file_size);
// the KV cache for `rows` positions (a run's steps, not seq_len) within the 4 GiB limit, else exit 3
void check_kv_cache(const char *path, const Config *c, long long rows);
void free_checkpoint(TransformerWeights *weights, Vocab *vocab, void *data, size_t file_size);

// tokenizer.bin, which must hold exactly vocab_size tokens
void read_vocab(Vocab *v, const char *path, int vocab_size);
void free_vocab(Vocab *v);

#endif
