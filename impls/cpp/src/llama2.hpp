// polyllama C++ port: Llama 2 inference for the llama2.c model family.
//
// The declarations that run.cpp (and, for the model files, formats.cpp) implement and the unit
// tests exercise.
// Everything a user can get wrong surfaces as one of the three exception types below;
// main() turns each into one `error:` line and the contract's exit code.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <vector>

static_assert(std::endian::native == std::endian::little, "the file formats are little-endian");

namespace llama2 {

// ----------------------------------------------------------------------------
// Errors: each maps to one exit code (docs/port-contract.md, section 3)

struct UsageError : std::runtime_error {  // exit 2
    using std::runtime_error::runtime_error;
};

struct FormatError : std::runtime_error {  // exit 3: "<path>: <problem>"
    FormatError(const std::string& path, const std::string& problem)
        : std::runtime_error(path + ": " + problem) {}
};

struct RuntimeError : std::runtime_error {  // exit 1
    using std::runtime_error::runtime_error;
};

// ----------------------------------------------------------------------------
// Model: config, weights, state

// A whole file's bytes, read-only, in one mapping that the weights point into. On Linux they
// are read into anonymous memory asked for transparent huge pages (formats.cpp says why);
// with POLYLLAMA_HUGEPAGES=0, and elsewhere, the mapping is the file itself.
class MappedFile {
public:
    explicit MappedFile(const std::string& path);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    std::span<const std::uint8_t> bytes() const { return {data_, size_}; }
    const std::string& path() const { return path_; }
    // Fault the pages of [offset, offset + length) in now, so that the first forward pass
    // measures compute rather than page faults (bytes read in are resident already).
    void prefault(std::size_t offset, std::size_t length) const;

private:
    std::string path_;
    const std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0;
    bool resident_ = false;  // read in rather than mapped from the file
};

struct Config {
    int dim = 0;         // transformer width
    int hidden_dim = 0;  // feed-forward width
    int n_layers = 0;
    int n_heads = 0;     // query heads
    int n_kv_heads = 0;  // key/value heads (< n_heads: grouped-query attention)
    int vocab_size = 0;  // always positive; sharing is its own flag
    int seq_len = 0;     // maximum sequence length
    bool shared_classifier = true;
    // GGUF's own hyperparameters (llama.cpp's defaults, which are llama2.c's constants, for .bin
    // files and for keys a GGUF leaves out)
    float rope_theta = 10000.0f;  // llama.rope.freq_base
    float norm_eps = 1e-5f;       // llama.attention.layer_norm_rms_epsilon
    int bos_id = 1;               // tokenizer.ggml.bos_token_id
    int eos_id = 2;               // tokenizer.ggml.eos_token_id

    int head_size() const { return dim / n_heads; }
    int kv_dim() const { return n_kv_heads * head_size(); }
    std::int64_t weight_count() const;  // floats in all tensors (no legacy RoPE tables)
    // the KV cache for `rows` positions (both caches, all layers)
    std::int64_t kv_cache_bytes(std::int64_t rows) const;
    std::string describe() const;
};

// GGUF's Q8_0 (ggml type 8): a row of n values is n/32 blocks of 34 bytes, an fp16 scale d
// (little-endian) then 32 int8 quants q; value = d * q. Nothing past a row's first block is
// aligned, so the scales are read byte-wise.
inline constexpr int Q8_BLOCK = 32;
inline constexpr int Q8_BLOCK_BYTES = 34;
inline constexpr std::uint32_t GGML_F32 = 0, GGML_F16 = 1, GGML_Q8_0 = 8, GGML_BF16 = 30;

// How a matrix's values are stored.
enum class WType : std::uint8_t { f32, q8_0, f16, bf16 };

// A weight matrix as the file stores it, row-major: float32 rows, Q8_0 blocks, or 16-bit values
// (F16 or BF16, 2 bytes each, little-endian; GGUF only, where each matrix has its own type).
struct Matrix {
    Matrix() = default;
    Matrix(std::span<const float> rows) : f32(rows) {}  // a float tensor is a matrix: implicit
    static Matrix q8_0(std::span<const std::uint8_t> blocks) {
        Matrix m;
        m.type = WType::q8_0;
        m.q8 = blocks;
        return m;
    }
    // F16 or BF16 values; their bytes need no alignment (they are read with unaligned loads)
    static Matrix half(WType type, std::span<const std::uint8_t> values) {
        Matrix m;
        m.type = type;
        m.h16 = values;
        return m;
    }
    bool quantized() const { return type == WType::q8_0; }
    bool half() const { return type == WType::f16 || type == WType::bf16; }
    const void* data() const {
        return quantized() ? static_cast<const void*>(q8.data()) : half() ? static_cast<const void*>(h16.data()) : f32.data();
    }

    WType type = WType::f32;
    std::span<const float> f32;         // (rows * cols) floats, or empty
    std::span<const std::uint8_t> q8;   // (rows * cols / 32 * 34) bytes, or empty
    std::span<const std::uint8_t> h16;  // (rows * cols * 2) bytes, or empty
};

struct LayerWeights {
    std::span<const float> rms_att;  // (dim)
    Matrix wq;                       // (dim, dim)
    Matrix wk;                       // (kv_dim, dim)
    Matrix wv;                       // (kv_dim, dim)
    Matrix wo;                       // (dim, dim)
    std::span<const float> rms_ffn;  // (dim)
    Matrix w1;                       // (hidden_dim, dim)
    Matrix w2;                       // (dim, hidden_dim)
    Matrix w3;                       // (hidden_dim, dim)
};

struct TransformerWeights {
    Matrix token_embedding;            // (vocab, dim)
    std::vector<LayerWeights> layers;  // (n_layers)
    std::span<const float> rms_final;  // (dim)
    Matrix wcls;                       // (vocab, dim); token_embedding when shared
};

// A tokenizer's pieces and merge scores, from tokenizer.bin or a GGUF file.
struct Vocab {
    std::vector<std::string> pieces;
    std::vector<float> scores;
};

// A loaded checkpoint: the mapping keeps the weights alive. formats.hpp declares the readers.
struct Model {
    Config config;
    std::unique_ptr<MappedFile> file;
    TransformerWeights weights;
    std::optional<Vocab> vocab;  // GGUF embeds its tokenizer
    std::string format;          // "v0", "v1", "gguf", or the tensor types it needs ("gguf-q8_0", "gguf-f16+gguf-bf16", ...)
};

// A fixed team of workers created once; the caller is worker 0, so a pool of 1 starts no
// thread at all. parallel_for(n, fn) runs fn(task) for task = 0..n-1 across the team and
// returns when all are done. Tasks are claimed one at a time from a shared counter rather
// than split up front: on a machine shared with other processes a descheduled worker then
// delays only the task it holds, not a fixed share of every matmul.
class ThreadPool {
public:
    explicit ThreadPool(int n_workers);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_workers_; }

    // fn(task), or fn(task, worker) with worker in [0, size()) the team member running it (for
    // scratch memory of its own: no two tasks run at once on one worker)
    template <class F>
    void parallel_for(int n_tasks, F&& fn) {
        using Fn = std::remove_reference_t<F>;
        constexpr bool with_worker = std::is_invocable_v<Fn&, int, int>;
        if (n_workers_ == 1 || n_tasks <= 1) {
            for (int t = 0; t < n_tasks; ++t) {
                if constexpr (with_worker) fn(t, 0);
                else fn(t);
            }
            return;
        }
        dispatch(n_tasks, const_cast<void*>(static_cast<const void*>(&fn)), [](void* ctx, int task, int worker) {
            if constexpr (with_worker) (*static_cast<Fn*>(ctx))(task, worker);
            else (*static_cast<Fn*>(ctx))(task);
        });
    }

private:
    using Job = void (*)(void*, int, int);
    void dispatch(int n_tasks, void* ctx, Job job);
    void run_tasks(int worker);  // claim and run tasks of the current job until none is left
    void worker_loop(int worker);

    int n_workers_;
    void* ctx_ = nullptr;  // written only between jobs, read only while holding a task
    Job job_ = nullptr;
    // (n_tasks << 32 | next task): one word, so that a claim is valid for the job it read
    alignas(64) std::atomic<std::uint64_t> ticket_{0};
    alignas(64) std::atomic<std::uint32_t> done_{0};        // tasks finished in the current job
    alignas(64) std::atomic<std::uint32_t> generation_{0};  // bumped per job; idle workers sleep on it
    std::atomic<bool> stop_{false};
#if defined(__cpp_lib_jthread)
    std::vector<std::jthread> threads_;
#else
    std::vector<std::thread> threads_;
#endif
};

// Rows of a tile of the batched kernels at most (run.cpp's MM_C): an attention task's rows.
inline constexpr int BATCH_TILE_ROWS = 8;

// Scratch buffers and the KV cache of one sequence.
struct RunState {
    // rows: the most positions one forward_batch takes (min(batch, seq_len), checked by the
    // caller); logits_rows: rows of logits it keeps (rows in logits mode, else 0: the last row
    // uses `logits`); workers: the pool's size (attention scratch per worker)
    // kv_rows: the positions the KV cache holds (the run's, at most seq_len)
    RunState(const Config& c, int rows, int logits_rows, int workers, int kv_rows);
    std::vector<float> x;       // (dim) activation at the current position
    std::vector<float> xb;      // (dim) normed input / attention output
    std::vector<float> hb;      // (hidden_dim) feed-forward hidden state
    std::vector<float> q;       // (dim)
    std::vector<float> att;     // (n_heads, kv_rows) attention scores
    std::vector<float> logits;  // (vocab)
    // the input of the current Q8_0 matmuls, quantized: (max(dim, hidden_dim)) quants and
    // (max(dim, hidden_dim) / 32) scales
    std::vector<std::int8_t> xq;
    std::vector<float> xd;
    std::vector<float> rope_cos, rope_sin;  // (head_size / 2) rotation at the current position
    // forward_batch's matrices, one row per position of the batch: (rows, width)
    std::vector<float> bx, bxb, bq;         // (rows, dim) residual stream, normed input / attention output, q
    std::vector<float> bhb;                 // (rows, hidden_dim)
    std::vector<std::int8_t> bxq;           // (rows, max(dim, hidden_dim)) an input's Q8_0 quants, row by row
    std::vector<float> bxd;                 // (rows, max(dim, hidden_dim) / 32) their scales
    // AVX-512 VNNI builds with a Q8_0 matrix: the quants plus 128 as unsigned bytes (as bxq), and
    // each worker's repacked weight rows (workers, pack_stride); otherwise empty
    std::vector<std::uint8_t> bxu, bpack;
    std::vector<float> brope_cos, brope_sin;  // (rows, head_size / 2)
    std::vector<float> batt;                // (workers, BATCH_TILE_ROWS, kv_rows) attention scores
    std::vector<float> blogits;             // (logits_rows, vocab)
    // (layer, kv_rows, kv_dim), calloc'ed so that untouched positions cost no memory
    std::unique_ptr<float[], void (*)(void*)> key_cache, value_cache;
};

// Which logits forward_batch computes: none, the last row's, or every row's.
enum class Logits { none, last, all };

class Transformer {
public:
    // batch: the most positions forward_batch takes at once (clamped to seq_len);
    // all_logits: forward_batch may be asked for every row's logits (logits mode);
    // kv_rows: the positions the run reaches, which the KV cache holds (0: seq_len)
    Transformer(const Model& model, ThreadPool& pool, int batch = 512, bool all_logits = false, int kv_rows = 0);
    // The logits after `token` at position `pos`: (vocab), valid until the next call.
    std::span<float> forward(int token, int pos);
    // Positions p0 .. p0 + tokens.size() - 1 at once (1 <= tokens.size() <= batch()), each row
    // as forward() computes it: the last row's logits (vocab), every row's (rows, vocab), or
    // nothing, valid until the next call.
    std::span<float> forward_batch(std::span<const int> tokens, int p0, Logits want);
    const Config& config() const { return config_; }
    int batch() const { return batch_; }
    int kv_rows() const { return kv_rows_; }

private:
    // forward()'s steps (run.cpp)
    void embed(int token);
    void rope_table(int pos);
    void qkv(const LayerWeights& lw, float* k, float* v);
    void attention(const float* key_cache, const float* value_cache, int pos);
    void attention_out(const LayerWeights& lw);
    void feed_forward(const LayerWeights& lw);
    void classify();
    // forward_batch's steps, for rows [0, n) of the batch matrices at positions p0 + row
    void batch_qkv(const LayerWeights& lw, float* key_cache, float* value_cache, int n, int p0);
    void batch_attention(const float* key_cache, const float* value_cache, int n, int p0);
    void batch_attention_out(const LayerWeights& lw, int n);
    void batch_feed_forward(const LayerWeights& lw, int n);

    Config config_;
    const TransformerWeights& w_;
    ThreadPool& pool_;
    int batch_;
    int kv_rows_;
    RunState s_;
    std::size_t pack_stride_ = 0;  // bytes of s_.bpack per worker
    std::uint8_t* pack(int worker) { return s_.bpack.empty() ? nullptr : s_.bpack.data() + worker * pack_stride_; }
};

// ----------------------------------------------------------------------------
// The batched products (run.cpp; declared for the tests): out (T, n) = X (T, d) @ W (n, d)^T,
// W row-major as stored, out row-major with row stride n; single-threaded (the forward pass
// splits W's rows across the pool). The Q8_0 one takes X's rows quantized, each row d values
// (d a multiple of 32) as q8::quantize writes them: quants (T, d), scales (T, d / 32).
namespace batched {
void matmul_f32(const float* w, int n, int d, const float* x, int T, float* out);
void matmul_q8(const std::uint8_t* w, int n, int d, const std::int8_t* xq, const float* xd, int T, float* out);
// W as F16 or BF16 values (n * d * 2 bytes)
void matmul_h16(WType type, const std::uint8_t* w, int n, int d, const float* x, int T, float* out);
}  // namespace batched

// ----------------------------------------------------------------------------
// F16 and BF16 matrices (run.cpp; declared for the tests): each weight converted to float32
// exactly (F16 as q8::fp16_to_fp32, BF16 as its bits shifted left 16), the input float32 as it
// is (the contract's choice: llama.cpp rounds it to the weight's type, which no tolerance can
// check), products and sum in float32:
//   out[r] = sum_i float(w[r][i]) * x[i]
namespace h16 {

float bf16_to_fp32(std::uint16_t h);  // exact: the top 16 bits of a float, NaN and infinity included
// one-position product rows [0, rows) of W (rows, n): out[r] = W[r] . x
void matvec(WType type, const std::uint8_t* w, int rows, int n, const float* x, float* out);

}  // namespace h16

// ----------------------------------------------------------------------------
// Q8_0 arithmetic, as llama.cpp's CPU backend does it (run.cpp; declared for the tests): the
// matmul's input is quantized to Q8_0 too, each block's dot product is an exact int32 sum, and
// only the scale products and the sum over blocks are float32:
//   out[r] = sum_b float(isum[r][b]) * (fp32(d[r][b]) * dx[b])
namespace q8 {

float fp16_to_fp32(std::uint16_t h);   // exact, subnormals, infinities and NaN included
std::uint16_t fp32_to_fp16(float f);   // round to nearest, ties to even
// x (n values, n a multiple of 32) as blocks: dx = fp32(fp16(amax / 127)), q = rint(x * 127 / amax)
void quantize(const float* x, int n, std::int8_t* qx, float* dx);
// one row (n values) of a Q8_0 matrix as floats: d * q, exact
void dequantize_row(const std::uint8_t* row, int n, float* out);
// one row of n_blocks blocks against a quantized input: the kernel every Q8_0 matmul runs
float dot_row(const std::uint8_t* row, const std::int8_t* qx, const float* dx, int n_blocks);

}  // namespace q8

// ----------------------------------------------------------------------------
// Tokenizer

inline constexpr int BOS = 1;  // the defaults; a GGUF may name others (Config::bos_id, eos_id)
inline constexpr int EOS = 2;

class Tokenizer {
public:
    explicit Tokenizer(Vocab vocab, int bos = BOS, int eos = EOS);
    int bos() const { return bos_; }
    int eos() const { return eos_; }
    std::vector<int> encode(std::string_view text, bool bos, bool eos) const;
    // The bytes that token prints after prev (run.c's decode).
    std::string_view decode(int prev, int token) const;
    int vocab_size() const { return static_cast<int>(vocab_.pieces.size()); }

private:
    std::optional<int> lookup(std::string_view piece) const;
    Vocab vocab_;
    int bos_, eos_;
    std::unordered_map<std::string_view, int> ids_;  // piece -> lowest id spelling it
    std::string byte_pieces_;                        // 256 single-byte strings for <0xHH>
};

// What run.c's safe_printf prints of a piece: nothing for empty or lone control bytes.
std::string_view safe_piece(std::string_view piece);

// ----------------------------------------------------------------------------
// Sampler

class Rng {  // llama2.c's xorshift*, so that one seed gives the same draws in every port
public:
    explicit Rng(std::uint64_t seed) : state_(seed) {}
    std::uint32_t next_u32();
    float next_f32();

private:
    std::uint64_t state_;
};

struct ProbIndex {
    float prob;
    int index;
};

int sample_argmax(std::span<const float> logits);
int sample_mult(std::span<const float> probs, float coin);
int sample_topp(std::span<const float> probs, float topp, float coin, std::vector<ProbIndex>& scratch);
void softmax(std::span<float> x);
// numpy's pairwise float32 sum, so that probabilities match the reference to the last bit.
float pairwise_sum(const float* a, std::size_t n);

class Sampler {
public:
    Sampler(float temperature, float topp, std::uint64_t seed);
    int sample(std::span<float> logits);  // overwrites logits with probabilities

private:
    float temperature_, topp_;
    Rng rng_;
    std::vector<ProbIndex> scratch_;
};

// ----------------------------------------------------------------------------
// Command line

struct Args {
    std::string checkpoint;
    std::optional<std::string> tokenizer;
    double temperature = 1.0;
    double topp = 0.9;
    std::uint64_t seed = 0;
    std::int64_t steps = 256;
    std::string prompt;
    int threads = 1;
    bool logits_mode = false;
    std::optional<std::string> output;
    std::optional<std::vector<std::int64_t>> ids;
    bool ignore_bos = false;
    std::int64_t batch = 512;  // -b, before clamping to seq_len
};

Args parse_args(int argc, const char* const* argv);  // throws UsageError
int clamp_steps(std::int64_t steps, int seq_len);     // -n 0, and past seq_len, mean seq_len
int clamp_batch(std::int64_t batch, int seq_len);     // -b past seq_len means seq_len
int run_main(int argc, const char* const* argv);      // the whole program; returns the exit code

}  // namespace llama2
