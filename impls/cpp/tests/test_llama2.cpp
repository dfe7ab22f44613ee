// Unit tests: tokenizer vectors, sampler determinism, command-line and file validation.
//
// Model files are found through POLYLLAMA_MODEL_PATH (':'-separated directories). When they
// are missing the tests that need them fail under CI=true and are skipped otherwise.
#include "formats.hpp"
#include "llama2.hpp"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>

namespace fs = std::filesystem;
using namespace llama2;

namespace {

std::optional<std::string> find_model_file(const std::string& name) {
    const char* env = std::getenv("POLYLLAMA_MODEL_PATH");
    std::string dirs = env ? env : "";
    std::size_t start = 0;
    while (start <= dirs.size()) {
        std::size_t colon = dirs.find(':', start);
        std::string dir = dirs.substr(start, colon == std::string::npos ? std::string::npos : colon - start);
        if (!dir.empty() && fs::exists(fs::path(dir) / name)) return (fs::path(dir) / name).string();
        if (colon == std::string::npos) break;
        start = colon + 1;
    }
    return std::nullopt;
}

bool in_ci() {
    const char* ci = std::getenv("CI");
    return ci && std::string(ci) == "true";
}

// A golden text (tests/data/golden/, written by the reference): the whole stdout of a run.
std::string golden(const std::string& name) {
    std::ifstream in(fs::path(POLYLLAMA_GOLDEN_DIR) / name, std::ios::binary);
    EXPECT_TRUE(in.good()) << "tests/data/golden/" << name << " is missing";
    return std::string(std::istreambuf_iterator<char>(in), {});
}

// What the port prints for a greedy run: generate()'s loop (force the prompt, argmax, stop at
// BOS, safe pieces), then the closing newline.
std::string greedy_text(Transformer& tr, const Tokenizer& tok, std::string_view prompt, int steps) {
    std::vector<int> ids = tok.encode(prompt, true, false);
    std::string text;
    int token = ids[0];
    for (int pos = 0; pos < steps; ++pos) {
        std::span<float> logits = tr.forward(token, pos);
        int next = pos < static_cast<int>(ids.size()) - 1 ? ids[pos + 1] : sample_argmax(logits);
        if (next == BOS) break;
        text += safe_piece(tok.decode(token, next));
        token = next;
    }
    return text + "\n";
}

// The same with the prompt through forward_batch in batches of `batch` positions (the contract's
// generate mode): only the last prompt position's logits are asked for.
std::string greedy_text_batched(Transformer& tr, const Tokenizer& tok, std::string_view prompt, int steps, int batch) {
    std::vector<int> ids = tok.encode(prompt, true, false);
    const int n_prompt = static_cast<int>(ids.size()), n_prefill = std::min(n_prompt, steps);
    std::span<float> logits;
    for (int p0 = 0; p0 < n_prefill; p0 += batch) {
        const int n = std::min(batch, n_prefill - p0);
        bool last = p0 + n == n_prefill && n_prefill == n_prompt;
        logits = tr.forward_batch(std::span<const int>(ids).subspan(p0, n), p0, last ? Logits::last : Logits::none);
    }
    std::string text;
    int token = ids[0];
    for (int pos = 0; pos < steps; ++pos) {
        if (pos >= n_prompt) logits = tr.forward(token, pos);
        int next = pos < n_prompt - 1 ? ids[pos + 1] : sample_argmax(logits);
        if (next == BOS) break;
        text += safe_piece(tok.decode(token, next));
        token = next;
    }
    return text + "\n";
}

#define REQUIRE_MODEL_FILE(var, name)                                                          \
    auto var##_found = find_model_file(name);                                                  \
    if (!var##_found) {                                                                        \
        if (in_ci()) FAIL() << name << " not found on POLYLLAMA_MODEL_PATH";                   \
        GTEST_SKIP() << name << " not found on POLYLLAMA_MODEL_PATH";                          \
    }                                                                                          \
    const std::string var = *var##_found

// A scratch file under the system temp folder, removed at the end of the test.
struct TempFile {
    fs::path path;
    explicit TempFile(const std::string& bytes) {
        static int counter = 0;
        path = fs::temp_directory_path() / ("polyllama-cpp-test-" + std::to_string(::getpid()) + "-" +
                                            std::to_string(counter++));
        std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
    ~TempFile() { fs::remove(path); }
};

template <class T>
void put(std::string& out, T value) {
    out.append(reinterpret_cast<const char*>(&value), sizeof value);
}

std::string v0_header(int dim, int hidden, int layers, int heads, int kv_heads, int vocab, int seq) {
    std::string s;
    for (int v : {dim, hidden, layers, heads, kv_heads, vocab, seq}) put(s, v);
    return s;
}

}  // namespace

// ---------------------------------------------------------------- tokenizer

TEST(Tokenizer, EncodesKnownVectors) {
    REQUIRE_MODEL_FILE(path, "tokenizer.bin");
    Tokenizer t(read_tokenizer(path, 32000));
    EXPECT_EQ(t.encode("I believe the meaning of life is", true, false),
              (std::vector<int>{1, 306, 4658, 278, 6593, 310, 2834, 338}));
    EXPECT_EQ(t.encode("Once upon a time", true, false), (std::vector<int>{1, 9038, 2501, 263, 931}));
    EXPECT_EQ(t.encode("", true, false), (std::vector<int>{1}));
    EXPECT_EQ(t.encode("a", true, true), (std::vector<int>{1, 263, 2}));
    // non-ASCII, and a control byte that falls back to its byte token
    EXPECT_EQ(t.encode("Zo\xc3\xab \xe6\x97\xa5\xe6\x9c\xac", true, false),
              (std::vector<int>{1, 17421, 30083, 29871, 30325, 30346}));
    EXPECT_EQ(t.encode("Hello\x01world", true, false), (std::vector<int>{1, 15043, 4, 11526}));
}

TEST(Tokenizer, ByteFallbackWithSmallVocab) {
    REQUIRE_MODEL_FILE(path, "tok512.bin");
    Tokenizer t(read_tokenizer(path, 512));
    EXPECT_EQ(t.encode("Once upon a time", true, false), (std::vector<int>{1, 403, 407, 261, 378}));
    EXPECT_EQ(t.encode("Zo\xc3\xab \xe6\x97\xa5\xe6\x9c\xac", true, false),
              (std::vector<int>{1, 410, 469, 414, 198, 174, 410, 233, 154, 168, 233, 159, 175}));
}

TEST(Tokenizer, Decodes) {
    REQUIRE_MODEL_FILE(path, "tokenizer.bin");
    Tokenizer t(read_tokenizer(path, 32000));
    EXPECT_EQ(t.decode(BOS, 9038), "Once");  // leading space dropped after BOS
    EXPECT_EQ(t.decode(9038, 2501), " upon");
    EXPECT_EQ(t.decode(5, 13), "\n");       // <0x0A>
    EXPECT_EQ(t.decode(5, 0x41 + 3), "A");  // <0x41>
}

TEST(Tokenizer, SafePiece) {
    EXPECT_EQ(safe_piece(""), "");
    EXPECT_EQ(safe_piece("\x01"), "");
    EXPECT_EQ(safe_piece("\x7f"), "");
    EXPECT_EQ(safe_piece("\n"), "\n");
    EXPECT_EQ(safe_piece("a"), "a");
    EXPECT_EQ(safe_piece("\xc3\xab"), "\xc3\xab");
}

TEST(Tokenizer, LowerIdWinsForDuplicatePieces) {
    Vocab v;
    v.pieces = {"<unk>", "<s>", "</s>", " ", "a", "a", " a"};
    v.scores = {0, 0, 0, -1, -2, -3, -4};
    Tokenizer t(v);
    EXPECT_EQ(t.encode("a", true, false), (std::vector<int>{1, 6}));
    EXPECT_EQ(t.encode("aa", false, false), (std::vector<int>{6, 4}));
}

TEST(Tokenizer, RejectsIdsOutsideTheVocabulary) {
    Vocab v;
    v.pieces = {"<unk>", "<s>", "</s>", " "};
    v.scores = {0, 0, 0, 0};
    Tokenizer t(v);
    EXPECT_THROW(t.encode("z", true, false), RuntimeError);  // byte fallback 'z' + 3 >= 4
}

// ---------------------------------------------------------------- sampler

TEST(Sampler, XorshiftDrawsForSeed) {
    Rng r(42);
    std::vector<std::uint32_t> got;
    for (int i = 0; i < 5; ++i) got.push_back(r.next_u32());
    EXPECT_EQ(got, (std::vector<std::uint32_t>{1456360119u, 3359763283u, 3393612768u, 4054632243u, 3283045847u}));
    Rng f(42);
    EXPECT_FLOAT_EQ(f.next_f32(), 0.3390852212905884f);
    EXPECT_FLOAT_EQ(f.next_f32(), 0.7822558283805847f);
    Rng one(1);
    EXPECT_EQ(one.next_u32(), 1206177355u);
}

TEST(Sampler, ArgmaxTakesTheFirstMaximum) {
    std::vector<float> logits{0.5f, 2.0f, -1.0f, 2.0f};
    EXPECT_EQ(sample_argmax(logits), 1);
    Sampler greedy(0.0f, 0.9f, 7);
    EXPECT_EQ(greedy.sample(logits), 1);
}

TEST(Sampler, Multinomial) {
    std::vector<float> probs{0.1f, 0.2f, 0.3f, 0.4f};
    EXPECT_EQ(sample_mult(probs, 0.35f), 2);
    EXPECT_EQ(sample_mult(probs, 0.0f), 0);
    EXPECT_EQ(sample_mult(probs, 0.9999f), 3);
}

TEST(Sampler, TopP) {
    std::vector<float> probs{0.1f, 0.2f, 0.3f, 0.4f};
    std::vector<ProbIndex> scratch;
    EXPECT_EQ(sample_topp(probs, 0.5f, 0.3f, scratch), 3);
    EXPECT_EQ(sample_topp(probs, 0.5f, 0.7f, scratch), 2);
    EXPECT_EQ(sample_topp(probs, 0.9f, 0.99f, scratch), 1);
    // equal probabilities: the lower id comes first
    std::vector<float> ties{0.25f, 0.25f, 0.25f, 0.25f};
    EXPECT_EQ(sample_topp(ties, 0.5f, 0.1f, scratch), 0);
    EXPECT_EQ(sample_topp(ties, 0.5f, 0.9f, scratch), 2);  // 0.5 is not > 0.5: three ids
}

TEST(Sampler, SameSeedSameTokens) {
    std::vector<float> logits(100);
    for (int i = 0; i < 100; ++i) logits[i] = std::sin(static_cast<float>(i)) * 3.0f;
    auto draw = [&](std::uint64_t seed) {
        Sampler s(0.8f, 0.9f, seed);
        std::vector<int> out;
        for (int i = 0; i < 20; ++i) {
            auto copy = logits;
            out.push_back(s.sample(copy));
        }
        return out;
    };
    EXPECT_EQ(draw(42), draw(42));
    EXPECT_NE(draw(42), draw(43));
}

TEST(Sampler, PairwiseSumMatchesNumpyBlocking) {
    std::vector<float> ones(1000, 1.0f);
    EXPECT_EQ(pairwise_sum(ones.data(), ones.size()), 1000.0f);
    std::vector<float> x(300);
    std::iota(x.begin(), x.end(), 0.0f);
    EXPECT_EQ(pairwise_sum(x.data(), x.size()), 44850.0f);
}

// ---------------------------------------------------------------- command line

namespace {
Args parse(std::vector<const char*> argv) {
    argv.insert(argv.begin(), "run");
    return parse_args(static_cast<int>(argv.size()), argv.data());
}
}  // namespace

TEST(CommandLine, Defaults) {
    Args a = parse({"model.bin"});
    EXPECT_EQ(a.checkpoint, "model.bin");
    EXPECT_DOUBLE_EQ(a.temperature, 1.0);
    EXPECT_DOUBLE_EQ(a.topp, 0.9);
    EXPECT_EQ(a.steps, 256);
    EXPECT_EQ(a.threads, 1);
    EXPECT_FALSE(a.logits_mode);
}

TEST(CommandLine, ParsesEveryFlag) {
    Args a = parse({"m.bin", "-z", "tok.bin", "-t", "0.8", "-p", "0.5", "-s", "18446744073709551615", "-n", "7",
                    "-i", "-dash", "-j", "2", "-m", "logits", "-o", "out.f32", "-k", "1, 2,3", "-e", "1"});
    EXPECT_EQ(*a.tokenizer, "tok.bin");
    EXPECT_DOUBLE_EQ(a.temperature, 0.8);
    EXPECT_EQ(a.seed, UINT64_MAX);
    EXPECT_EQ(a.prompt, "-dash");
    EXPECT_EQ(*a.ids, (std::vector<std::int64_t>{1, 2, 3}));
    EXPECT_TRUE(a.ignore_bos && a.logits_mode);
}

TEST(CommandLine, PlainDecimalNumbers) {
    EXPECT_DOUBLE_EQ(parse({"m.bin", "-t", ".5"}).temperature, 0.5);
    EXPECT_DOUBLE_EQ(parse({"m.bin", "-t", "5."}).temperature, 5.0);
    EXPECT_DOUBLE_EQ(parse({"m.bin", "-t", "+1e-3"}).temperature, 1e-3);
    EXPECT_EQ(parse({"m.bin", "-n", "+7"}).steps, 7);
    EXPECT_EQ(parse({"m.bin", "-n", "-0"}).steps, 0);
}

TEST(CommandLine, FlagRanges) {
    EXPECT_EQ(parse({"m.bin", "-n", "1099511627776"}).steps, 1099511627776);
    EXPECT_EQ(parse({"m.bin", "-n", "99999999999999999999999999"}).steps, INT64_MAX);
    std::string digits(400, '9');
    EXPECT_EQ(parse({"m.bin", "-n", digits.c_str()}).steps, INT64_MAX);
    EXPECT_EQ(clamp_steps(INT64_MAX, 512), 512);
    EXPECT_EQ(clamp_steps(0, 512), 512);
    EXPECT_EQ(clamp_steps(7, 512), 7);
    EXPECT_EQ(parse({"m.bin", "-j", "4096"}).threads, 4096);
    EXPECT_THROW(parse({"m.bin", "-j", "4097"}), UsageError);
    EXPECT_EQ(parse({"m.bin", "-s", "18446744073709551615"}).seed, UINT64_MAX);
    EXPECT_THROW(parse({"m.bin", "-s", "18446744073709551616"}), UsageError);
    EXPECT_THROW(parse({"m.bin", "-n", "-1"}), UsageError);
}

TEST(CommandLine, Batch) {
    EXPECT_EQ(parse({"m.bin"}).batch, 512);
    EXPECT_EQ(parse({"m.bin", "-b", "1"}).batch, 1);
    EXPECT_EQ(parse({"m.bin", "-b", "+64"}).batch, 64);
    EXPECT_EQ(parse({"m.bin", "-b", "99999999999999999999999999"}).batch, INT64_MAX);
    std::string digits(400, '9');
    EXPECT_EQ(parse({"m.bin", "-b", digits.c_str()}).batch, INT64_MAX);
    EXPECT_EQ(clamp_batch(INT64_MAX, 512), 512);
    EXPECT_EQ(clamp_batch(513, 512), 512);
    EXPECT_EQ(clamp_batch(7, 512), 7);
    EXPECT_EQ(clamp_batch(1, 512), 1);
}

TEST(CommandLine, UsageErrors) {
    const std::vector<std::vector<const char*>> bad = {
        {},
        {"-z", "tok.bin"},
        {"m.bin", "-t"},
        {"m.bin", "-t", "abc"},
        {"m.bin", "-t", "nan"},
        {"m.bin", "-t", "inf"},
        {"m.bin", "-t", "0x1p3"},
        {"m.bin", "-t", "."},
        {"m.bin", "-t", "1e"},
        {"m.bin", "-t", " 1"},
        {"m.bin", "-n", "1_0"},
        {"m.bin", "-n", " 5"},
        {"m.bin", "-j", "x"},
        {"m.bin", "-t", "-0.5"},
        {"m.bin", "-p", "2"},
        {"m.bin", "-j", "0"},
        {"m.bin", "-n", "-3"},
        {"m.bin", "-s", "18446744073709551616"},
        {"m.bin", "-e", "2"},
        {"m.bin", "-m", "chat"},
        {"m.bin", "-x", "1"},
        {"m.bin", "-m", "logits", "-o", "f"},
        {"m.bin", "-k", "1,,2"},
        {"m.bin", "-b", "0"},
        {"m.bin", "-b", "-1"},
        {"m.bin", "-b", "x"},
        {"m.bin", "-b", ""},
        {"m.bin", "-b", "1.5"},
        {"m.bin", "-b"},
        {"m.bin", "-n", "5", "-b"},
    };
    for (const auto& argv : bad) EXPECT_THROW(parse(argv), UsageError) << (argv.empty() ? "" : argv.back());
}

// ---------------------------------------------------------------- files

TEST(Files, MissingFileIsAFormatError) {
    EXPECT_THROW(read_model("/nonexistent/model.bin"), FormatError);
    EXPECT_THROW(read_model(fs::temp_directory_path().string()), FormatError);
}

TEST(Files, RejectsBadHeaders) {
    TempFile empty("");
    EXPECT_THROW(read_model(empty.path.string()), FormatError);
    TempFile negative(v0_header(-64, 172, 5, 8, 4, 512, 512));
    EXPECT_THROW(read_model(negative.path.string()), FormatError);
    TempFile huge(v0_header(65536, 262144, 1024, 1, 1, 1 << 20, 65536));
    EXPECT_THROW(read_model(huge.path.string()), FormatError);
    TempFile odd_head(v0_header(63, 172, 5, 9, 3, 512, 512));
    EXPECT_THROW(read_model(odd_head.path.string()), FormatError);
    TempFile truncated(v0_header(64, 172, 5, 8, 4, 512, 512) + std::string(100, '\0'));
    EXPECT_THROW(read_model(truncated.path.string()), FormatError);
    std::string v1;
    put(v1, 0x616b3432u);
    put(v1, 2);
    v1.resize(256, '\0');
    TempFile version(v1);
    EXPECT_THROW(read_model(version.path.string()), FormatError);
    TempFile gguf(std::string("GGUF") + std::string(4, '\x03'));
    EXPECT_THROW(read_model(gguf.path.string()), FormatError);
}

TEST(Files, TokenizerMustMatchTheVocabulary) {
    REQUIRE_MODEL_FILE(path, "tok512.bin");
    EXPECT_NO_THROW(read_tokenizer(path, 512));
    EXPECT_THROW(read_tokenizer(path, 511), FormatError);
    EXPECT_THROW(read_tokenizer(path, 513), FormatError);
}

// ---------------------------------------------------------------- tokenizer and GGUF rules

namespace {

// `fn` throws a FormatError "<path>: ..." that holds `problem`
template <class F>
void expect_refused(F fn, const fs::path& path, const std::string& problem) {
    try {
        fn();
        ADD_FAILURE() << path << " was accepted, expected: " << problem;
    } catch (const FormatError& e) {
        std::string what = e.what();
        EXPECT_EQ(what.rfind(path.string() + ": ", 0), 0u) << what;
        EXPECT_NE(what.find(problem), std::string::npos) << what;
        EXPECT_EQ(what.find('\n'), std::string::npos) << what;
    }
}

// The test vocabulary: <unk>, BOS, EOS, the 256 byte tokens, then " ", "a", " a" (262 tokens).
constexpr int TEST_VOCAB = 262;

std::string test_piece(int i, const std::string& space) {
    static const char* named[3] = {"<unk>", "\n<s>\n", "\n</s>\n"};
    if (i < 3) return named[i];
    if (i < 259) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "<0x%02X>", i - 3);
        return hex;
    }
    return i == 259 ? space : i == 260 ? "a" : space + "a";
}

std::string tokenizer_bin(int n, const std::string& space, float bad_score = 0) {
    std::string s;
    put(s, std::int32_t{8});
    for (int i = 0; i < n; ++i) {
        std::string piece = test_piece(i, space);
        put(s, i == 5 && bad_score != 0 ? bad_score : -static_cast<float>(i));
        put(s, static_cast<std::int32_t>(piece.size()));
        s += piece;
    }
    return s;
}

enum class Defect { none, empty_key, dup_key, dup_tokenizer_key, dup_tensor, extra_tensor, unaligned, overlap,
                    nan_score, inf_score, no_space, truncated, q8_overlap };

// The test model's dims and its tensors' types: bit i of q8 (f16, bf16) makes tensor i
// (gguf_model's order) Q8_0 (F16, BF16), and attn_q_type, when not 0, is attn_q's type. kvs:
// more key/value pairs, n_kvs of them, written after the required ones.
struct Shape {
    std::uint64_t dim = 8, hidden = 16;
    unsigned q8 = 0;
    std::uint32_t attn_q_type = 0;
    unsigned f16 = 0, bf16 = 0;
    std::string kvs = {};
    int n_kvs = 0;
};

void put_str(std::string& s, const std::string& text) {
    put(s, static_cast<std::uint64_t>(text.size()));
    s += text;
}

void put_kv_u32(std::string& s, int& n, const std::string& key, std::uint32_t v) {
    put_str(s, key), put(s, std::uint32_t{4}), put(s, v), ++n;
}

void put_kv_scores(std::string& s, int& n, Defect defect) {
    put_str(s, "tokenizer.ggml.scores"), put(s, std::uint32_t{9}), put(s, std::uint32_t{6});
    put(s, static_cast<std::uint64_t>(TEST_VOCAB));
    for (int i = 0; i < TEST_VOCAB; ++i) {
        float score = -static_cast<float>(i);
        if (i == 5 && defect == Defect::nan_score) score = NAN;
        if (i == 5 && defect == Defect::inf_score) score = INFINITY;
        put(s, score);
    }
    ++n;
}

int gguf_kvs(std::string& s, Defect defect, const Shape& shape) {
    int n = 0;
    put_str(s, "general.architecture"), put(s, std::uint32_t{8}), put_str(s, "llama"), ++n;
    put_str(s, defect == Defect::empty_key ? "" : "general.name"), put(s, std::uint32_t{8}), put_str(s, "test"), ++n;
    put_kv_u32(s, n, "llama.embedding_length", static_cast<std::uint32_t>(shape.dim));
    put_kv_u32(s, n, "llama.feed_forward_length", static_cast<std::uint32_t>(shape.hidden));
    put_kv_u32(s, n, "llama.block_count", 1);
    put_kv_u32(s, n, "llama.attention.head_count", 2);
    put_kv_u32(s, n, "llama.context_length", 8);
    put_str(s, "tokenizer.ggml.tokens"), put(s, std::uint32_t{9}), put(s, std::uint32_t{8});
    put(s, static_cast<std::uint64_t>(TEST_VOCAB));
    for (int i = 0; i < TEST_VOCAB; ++i) {
        std::string piece = test_piece(i, defect == Defect::no_space ? "\xE2\x96\x82" : "\xE2\x96\x81");
        if (i == 1 || i == 2) piece = i == 1 ? "<s>" : "</s>";
        put_str(s, piece);
    }
    ++n;
    put_kv_scores(s, n, defect);
    if (defect == Defect::dup_key) put_kv_u32(s, n, "llama.block_count", 1);
    if (defect == Defect::dup_tokenizer_key) put_kv_scores(s, n, Defect::none);
    s += shape.kvs;
    return n + shape.n_kvs;
}

// A GGUF model (dim 8, hidden 16, or the Shape's, one layer, two heads, seq_len 8) with the test
// vocabulary.
std::string gguf_model(Defect defect, const Shape& shape = {}) {
    struct Tensor {
        std::string name;
        std::vector<std::uint64_t> dims;  // innermost first: a (rows, cols) matrix is [cols, rows]
        std::uint64_t offset = 0, size = 0;
        std::uint32_t type = GGML_F32;
    };
    const std::uint64_t d = shape.dim, h = shape.hidden;
    std::vector<Tensor> tensors = {
        {"token_embd.weight", {d, TEST_VOCAB}}, {"output_norm.weight", {d}},  {"blk.0.attn_norm.weight", {d}},
        {"blk.0.attn_q.weight", {d, d}},         {"blk.0.attn_k.weight", {d, d}}, {"blk.0.attn_v.weight", {d, d}},
        {"blk.0.attn_output.weight", {d, d}},    {"blk.0.ffn_norm.weight", {d}},  {"blk.0.ffn_gate.weight", {d, h}},
        {"blk.0.ffn_down.weight", {h, d}},       {"blk.0.ffn_up.weight", {d, h}}};
    for (std::size_t i = 0; i < tensors.size(); ++i)
        if (shape.q8 >> i & 1) tensors[i].type = GGML_Q8_0;
        else if (shape.f16 >> i & 1) tensors[i].type = GGML_F16;
        else if (shape.bf16 >> i & 1) tensors[i].type = GGML_BF16;
    if (shape.attn_q_type) tensors[3].type = shape.attn_q_type;
    if (defect == Defect::dup_tensor) tensors.push_back({"blk.0.attn_q.weight", {d, d}});
    if (defect == Defect::extra_tensor) tensors.push_back({"extra.weight", {d}});
    std::uint64_t end = 0;
    for (auto& t : tensors) {
        std::uint64_t n = std::accumulate(t.dims.begin(), t.dims.end(), std::uint64_t{1}, std::multiplies<>());
        t.size = t.type == GGML_Q8_0 ? n / Q8_BLOCK * Q8_BLOCK_BYTES
                 : t.type == GGML_F16 || t.type == GGML_BF16 ? 2 * n : 4 * n;
        t.offset = end;
        end += (t.size + 31) / 32 * 32;
    }
    if (defect == Defect::unaligned) tensors.back().offset += 4;
    if (defect == Defect::overlap) tensors[2].offset = tensors[1].offset;
    if (defect == Defect::q8_overlap) tensors[4].offset = tensors[3].offset + 32;  // inside attn_q's blocks
    std::string kvs;
    int n_kv = gguf_kvs(kvs, defect, shape);
    std::string s = "GGUF";
    put(s, std::uint32_t{3}), put(s, static_cast<std::uint64_t>(tensors.size())), put(s, static_cast<std::uint64_t>(n_kv));
    s += kvs;
    for (const auto& t : tensors) {
        put_str(s, t.name), put(s, static_cast<std::uint32_t>(t.dims.size()));
        for (auto dim : t.dims) put(s, dim);
        put(s, t.type), put(s, t.offset);
    }
    s.resize((s.size() + 31) / 32 * 32, '\0');
    const std::size_t data_start = s.size();
    for (std::uint64_t i = 0; i < end / 4 + 16; ++i) put(s, static_cast<float>(i % 7) * 0.01f);
    // Q8_0 blocks of scale 1/64 (fp16 0x2400) and quants -6..6
    for (const auto& t : tensors)
        for (std::uint64_t at = 0; t.type == GGML_Q8_0 && at + Q8_BLOCK_BYTES <= t.size; at += Q8_BLOCK_BYTES) {
            char* block = s.data() + data_start + t.offset + at;
            block[0] = 0x00, block[1] = 0x24;
            for (int k = 0; k < Q8_BLOCK; ++k) block[2 + k] = static_cast<char>(static_cast<int>((k + at) % 13) - 6);
        }
    // 16-bit values (k % 13 - 6) / 64, exact in both types
    for (const auto& t : tensors)
        for (std::uint64_t k = 0; (t.type == GGML_F16 || t.type == GGML_BF16) && 2 * k + 2 <= t.size; ++k) {
            const float v = static_cast<float>(static_cast<int>(k % 13) - 6) / 64.0f;
            const std::uint16_t h = t.type == GGML_F16 ? q8::fp32_to_fp16(v)
                                                       : static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(v) >> 16);
            std::memcpy(s.data() + data_start + t.offset + 2 * k, &h, 2);
        }
    if (defect == Defect::truncated) s.resize(data_start + tensors.back().offset + tensors.back().size - 10);
    return s;
}

}  // namespace

TEST(Files, TokenizerNeedsSpacePieceFiniteScoresAndByteTokens) {
    TempFile good(tokenizer_bin(TEST_VOCAB, " "));
    EXPECT_EQ(read_tokenizer(good.path.string(), TEST_VOCAB).pieces[259], " ");
    TempFile no_space(tokenizer_bin(TEST_VOCAB, "@"));
    expect_refused([&] { read_tokenizer(no_space.path.string(), TEST_VOCAB); }, no_space.path, "no piece \" \"");
    TempFile nan(tokenizer_bin(TEST_VOCAB, " ", NAN));
    expect_refused([&] { read_tokenizer(nan.path.string(), TEST_VOCAB); }, nan.path, "token 5 has a NaN score");
    TempFile inf(tokenizer_bin(TEST_VOCAB, " ", -INFINITY));
    expect_refused([&] { read_tokenizer(inf.path.string(), TEST_VOCAB); }, inf.path, "token 5 has an infinite score");
    TempFile small(tokenizer_bin(100, " "));
    expect_refused([&] { read_tokenizer(small.path.string(), 100); }, small.path, "at least 259");
}

TEST(Files, GgufTestModelLoads) {
    TempFile good(gguf_model(Defect::none));
    Model m = read_model(good.path.string());
    EXPECT_EQ(m.config.dim, 8);
    EXPECT_TRUE(m.config.shared_classifier);
    ASSERT_TRUE(m.vocab.has_value());
    EXPECT_EQ(m.vocab->pieces[259], " ");
    EXPECT_EQ(m.vocab->pieces[261], " a");
}

TEST(Files, GgufRefusesWhatLlamaCppRefuses) {
    const std::pair<Defect, std::string> cases[] = {
        {Defect::empty_key, "key 2 of 9 is empty"},
        {Defect::dup_key, "key llama.block_count appears twice"},
        {Defect::dup_tokenizer_key, "key tokenizer.ggml.scores appears twice"},
        {Defect::dup_tensor, "tensor blk.0.attn_q.weight appears twice"},
        {Defect::extra_tensor, "unexpected tensor extra.weight: a 1-layer model has 11 tensors, the file 12"},
        {Defect::unaligned, "not a multiple of general.alignment=32"},
        {Defect::overlap, "tensors blk.0.attn_norm.weight and output_norm.weight overlap"},
        {Defect::nan_score, "token 5 has a NaN score"},
        {Defect::inf_score, "token 5 has an infinite score"},
        {Defect::no_space, "no piece \" \""},
    };
    for (const auto& [defect, problem] : cases) {
        TempFile bad(gguf_model(defect));
        expect_refused([&] { read_model(bad.path.string()); }, bad.path, problem);
    }
}

TEST(Files, NoSpacePieceIsExit3BeforeAnyPrompt) {
    TempFile bad(gguf_model(Defect::no_space));
    std::string path = bad.path.string();
    const char* argv[] = {"run", path.c_str(), "-n", "1", "-t", "0"};
    EXPECT_EQ(run_main(6, argv), 3);
}

// ---------------------------------------------------------------- Q8_0
namespace {

// the fp16 value of bits h, from its definition
double half_value(std::uint16_t h) {
    int exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    double v = exp == 0x1f ? (man ? NAN : INFINITY) : exp ? std::ldexp(1024 + man, exp - 25) : std::ldexp(man, -24);
    return h & 0x8000 ? -v : v;
}

// f rounded to the nearest fp16, ties to the even bit pattern, found by search over the values
std::uint16_t half_nearest(float f) {
    double a = std::fabs(static_cast<double>(f));
    std::uint16_t sign = std::signbit(f) ? 0x8000 : 0, lo = 0, hi = 0x7c00;  // the values rise with the bits
    while (hi - lo > 1) {  // the largest finite h with value <= a
        auto mid = static_cast<std::uint16_t>((lo + hi) / 2);
        (half_value(mid) <= a ? lo : hi) = mid;
    }
    if (a >= 65520.0) return sign | 0x7c00;  // past the last midpoint: infinity
    double below = half_value(lo), above = lo == 0x7bff ? 65536.0 : half_value(static_cast<std::uint16_t>(lo + 1));
    bool down = a - below < above - a || (a - below == above - a && lo % 2 == 0);
    return sign | static_cast<std::uint16_t>(down ? lo : lo + 1);
}

// the matvec row by its definition: exact int32 block sums, each scaled in float, summed in
// double; *magnitude is the sum of the terms' sizes
double dot_row_plain(const std::uint8_t* row, const std::int8_t* qx, const float* dx, int n_blocks,
                     double* magnitude) {
    double sum = 0;
    *magnitude = 0;
    for (int b = 0; b < n_blocks; ++b) {
        const std::uint8_t* block = row + b * Q8_BLOCK_BYTES;
        const auto* q = reinterpret_cast<const std::int8_t*>(block + 2);  // int8_t: see run.cpp's block_isum
        int isum = 0;
        for (int i = 0; i < Q8_BLOCK; ++i) isum += q[i] * qx[b * Q8_BLOCK + i];
        float d = q8::fp16_to_fp32(static_cast<std::uint16_t>(block[0] | block[1] << 8));
        float term = static_cast<float>(isum) * (d * dx[b]);
        sum += term;
        *magnitude += std::fabs(term);
    }
    return sum;
}

// llama.cpp's quantize_row_q8_0_ref, as the converter (and the gguf package) quantizes weights:
// d = amax / 127, q = round-half-away-from-zero(x / d), d stored as fp16
std::vector<std::uint8_t> quantize_weights(std::span<const float> x) {
    std::vector<std::uint8_t> out(x.size() / Q8_BLOCK * Q8_BLOCK_BYTES);
    for (std::size_t b = 0; b < x.size() / Q8_BLOCK; ++b) {
        const float* xb = x.data() + b * Q8_BLOCK;
        std::uint8_t* block = out.data() + b * Q8_BLOCK_BYTES;
        float amax = 0;
        for (int i = 0; i < Q8_BLOCK; ++i) amax = std::max(amax, std::fabs(xb[i]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        std::uint16_t h = q8::fp32_to_fp16(d);
        block[0] = static_cast<std::uint8_t>(h), block[1] = static_cast<std::uint8_t>(h >> 8);
        for (int i = 0; i < Q8_BLOCK; ++i)
            block[2 + i] = static_cast<std::uint8_t>(static_cast<std::int8_t>(std::round(xb[i] * id)));
    }
    return out;
}

constexpr unsigned Q8_MATRICES = 1u << 0 | 1u << 3 | 1u << 4 | 1u << 5 | 1u << 6 | 1u << 8 | 1u << 10;  // not ffn_down

}  // namespace

TEST(Q8, Fp16Conversions) {
    int bad_to = 0, bad_back = 0, bad_round = 0;
    for (std::uint32_t h = 0; h < 0x10000; ++h) {
        double want = half_value(static_cast<std::uint16_t>(h));
        float got = q8::fp16_to_fp32(static_cast<std::uint16_t>(h));
        if (std::isnan(want)) {
            bad_to += !std::isnan(got);
            continue;
        }
        bad_to += static_cast<double>(got) != want || std::signbit(got) != std::signbit(want);
        bad_back += q8::fp32_to_fp16(got) != h;
    }
    EXPECT_EQ(bad_to, 0) << "fp16 -> fp32 is exact on all 65536 patterns";
    EXPECT_EQ(bad_back, 0) << "fp32 -> fp16 gives every fp16 value back";
    // the midpoints between neighbours (ties: to even), a float either side of them, random floats
    for (std::uint16_t h = 0; h < 0x7bff; ++h) {
        auto mid = static_cast<float>((half_value(h) + half_value(static_cast<std::uint16_t>(h + 1))) / 2);  // exact
        for (float f : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, INFINITY)})
            bad_round += (q8::fp32_to_fp16(f) != half_nearest(f)) + (q8::fp32_to_fp16(-f) != half_nearest(-f));
    }
    Rng rng(16);
    for (int i = 0; i < 200000; ++i) {
        float f = std::bit_cast<float>(rng.next_u32());
        if (!std::isnan(f)) bad_round += q8::fp32_to_fp16(f) != half_nearest(f);
    }
    EXPECT_EQ(bad_round, 0) << "fp32 -> fp16 rounds to nearest, ties to even";
    EXPECT_EQ(q8::fp32_to_fp16(65504.0f), 0x7bff);
    EXPECT_EQ(q8::fp32_to_fp16(65519.99f), 0x7bff);
    EXPECT_EQ(q8::fp32_to_fp16(65520.0f), 0x7c00);
    EXPECT_EQ(q8::fp32_to_fp16(-1e9f), 0xfc00);
    EXPECT_GT(q8::fp32_to_fp16(NAN) & 0x7fff, 0x7c00);
}

TEST(Q8, ActivationQuantization) {
    // block 0: all zero (scale 0, quants 0); block 1: amax 127, so 127 / amax is exactly 1 and
    // x * id lands on exact .5 ties, which round to even; block 2: a scale that fp16 rounds
    std::vector<float> x(3 * Q8_BLOCK, 0.0f);
    x[1] = -0.0f;
    const float ties[] = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -2.5f, -3.5f, 126.5f, -127.0f};
    std::copy(std::begin(ties), std::end(ties), x.begin() + Q8_BLOCK);
    x[2 * Q8_BLOCK] = 1.0f, x[2 * Q8_BLOCK + 1] = -0.25f, x[2 * Q8_BLOCK + 2] = 0.1f;
    std::vector<std::int8_t> q(x.size());
    float dx[3];
    q8::quantize(x.data(), static_cast<int>(x.size()), q.data(), dx);
    EXPECT_TRUE(std::all_of(q.begin(), q.begin() + Q8_BLOCK, [](std::int8_t v) { return v == 0; }));
    EXPECT_EQ(dx[0], 0.0f);
    EXPECT_EQ(std::vector<int>(q.begin() + Q8_BLOCK, q.begin() + Q8_BLOCK + 9),
              (std::vector<int>{127, 0, 2, 2, 0, -2, -4, 126, -127}));
    EXPECT_EQ(dx[1], 1.0f);
    EXPECT_EQ(dx[2], q8::fp16_to_fp32(q8::fp32_to_fp16(1.0f / 127.0f)));
    EXPECT_NE(dx[2], 1.0f / 127.0f);
    // 0.1 * 127 = 12.7 -> 13; -0.25 * 127 = -31.75 -> -32
    EXPECT_EQ(q[2 * Q8_BLOCK], 127);
    EXPECT_EQ(q[2 * Q8_BLOCK + 1], -32);
    EXPECT_EQ(q[2 * Q8_BLOCK + 2], 13);
}

// The kernel (AVX2, NEON or portable, whichever this build has) against the definition, over
// row lengths that leave 0 to 7 blocks after the SIMD groups; weights take every byte value,
// -128 included.
TEST(Q8, DotRowMatchesThePlainLoop) {
    Rng rng(7);
    for (int n_blocks : {1, 2, 3, 4, 8, 9, 11, 25}) {
        const int n = n_blocks * Q8_BLOCK, rows = 19;
        std::vector<std::uint8_t> w(static_cast<std::size_t>(rows) * n_blocks * Q8_BLOCK_BYTES);
        std::vector<float> x(n), dx(n_blocks);
        std::vector<std::int8_t> qx(n);
        auto block = [&](int r, int b) { return w.data() + (static_cast<std::size_t>(r) * n_blocks + b) * Q8_BLOCK_BYTES; };
        // exact: scales 1 and input blocks whose amax is 127 (so dx = 1, qx = x): every term is an
        // integer and every partial sum stays below 2^24, so any order of the sum is exact
        for (int r = 0; r < rows; ++r)
            for (int b = 0; b < n_blocks; ++b) {
                block(r, b)[0] = 0x00, block(r, b)[1] = 0x3c;  // fp16 1.0
                for (int i = 0; i < Q8_BLOCK; ++i)
                    block(r, b)[2 + i] = r == 0 ? 0x80 : r == 1 ? 0x7f : static_cast<std::uint8_t>(rng.next_u32());
            }
        for (int b = 0; b < n_blocks; ++b)
            for (int i = 0; i < Q8_BLOCK; ++i) {
                float any = static_cast<float>(static_cast<int>(rng.next_u32() % 255) - 127);
                x[b * Q8_BLOCK + i] = b % 3 == 0 ? (i % 2 ? -127.0f : 127.0f) : i == 0 ? 127.0f : any;
            }
        q8::quantize(x.data(), n, qx.data(), dx.data());
        for (int r = 0; r < rows; ++r) {
            double magnitude;
            EXPECT_EQ(q8::dot_row(block(r, 0), qx.data(), dx.data(), n_blocks),
                      dot_row_plain(block(r, 0), qx.data(), dx.data(), n_blocks, &magnitude))
                << n_blocks << " blocks, row " << r;
        }
        // general: random scales and inputs (block 1 all zero: amax 0), equal up to the rounding
        // of a float sum taken in another order
        for (int r = 0; r < rows; ++r)
            for (int b = 0; b < n_blocks; ++b) {
                auto h = static_cast<std::uint16_t>(0x1000 + rng.next_u32() % 0x3000);  // about 2^-11 .. 2^4
                if (rng.next_u32() % 2) h |= 0x8000;
                block(r, b)[0] = static_cast<std::uint8_t>(h), block(r, b)[1] = static_cast<std::uint8_t>(h >> 8);
            }
        for (int i = 0; i < n; ++i) x[i] = i / Q8_BLOCK == 1 ? 0.0f : (rng.next_f32() - 0.5f) * 8.0f;
        q8::quantize(x.data(), n, qx.data(), dx.data());
        for (int r = 0; r < rows; ++r) {
            double magnitude, want = dot_row_plain(block(r, 0), qx.data(), dx.data(), n_blocks, &magnitude);
            EXPECT_LE(std::fabs(q8::dot_row(block(r, 0), qx.data(), dx.data(), n_blocks) - want), 1e-6 * magnitude)
                << n_blocks << " blocks, row " << r;
        }
    }
}

TEST(Q8, MixedGgufLoadsAndRuns) {
    TempFile good(gguf_model(Defect::none, {32, 64, Q8_MATRICES}));
    Model m = read_model(good.path.string());
    const auto& w = m.weights;
    const auto& l = w.layers[0];
    EXPECT_EQ(m.format, "gguf-q8_0");
    EXPECT_TRUE(w.token_embedding.quantized() && w.wcls.quantized() && l.wq.quantized() && l.wk.quantized() &&
                l.wv.quantized() && l.wo.quantized() && l.w1.quantized() && l.w3.quantized());
    EXPECT_FALSE(l.w2.quantized());
    EXPECT_EQ(w.wcls.data(), w.token_embedding.data());
    EXPECT_EQ(w.token_embedding.q8.size(), std::size_t{TEST_VOCAB} * Q8_BLOCK_BYTES);
    // token 5's embedding row: the written scale 1/64 times each quant
    const std::uint8_t* row = w.token_embedding.q8.data() + 5 * Q8_BLOCK_BYTES;
    float emb[32];
    q8::dequantize_row(row, 32, emb);
    for (int i = 0; i < 32; ++i) EXPECT_EQ(emb[i], static_cast<float>(static_cast<std::int8_t>(row[2 + i])) / 64.0f);
    ThreadPool pool(2);
    Transformer tr(m, pool);
    std::span<float> logits;
    for (int pos = 0; pos < 4; ++pos) logits = tr.forward(5 + pos, pos);
    EXPECT_TRUE(std::all_of(logits.begin(), logits.end(), [](float v) { return std::isfinite(v); }));
}

TEST(Q8, GgufRefusals) {
    const Shape mixed{32, 64, Q8_MATRICES};
    const std::tuple<Defect, Shape, std::string> cases[] = {
        {Defect::none, {32, 64, Q8_MATRICES | 1u << 2}, "tensor blk.0.attn_norm.weight is Q8_0; only matrices may be"},
        {Defect::none, {8, 16, 1u << 3},
         "tensor blk.0.attn_q.weight is Q8_0 with rows of 8 values, not a multiple of the block size 32"},
        {Defect::none, {32, 48, 1u << 9}, "tensor blk.0.ffn_down.weight is Q8_0 with rows of 48 values"},
        {Defect::truncated, mixed, "tensor blk.0.ffn_up.weight lies outside the file"},
        {Defect::q8_overlap, mixed, "tensors blk.0.attn_q.weight and blk.0.attn_k.weight overlap"},
        {Defect::none, {32, 64, 0, 2},
         "tensor blk.0.attn_q.weight has type 2; only F32 (0), F16 (1), Q8_0 (8) and BF16 (30) are supported"},
        {Defect::none, {32, 64, 0, 29}, "tensor blk.0.attn_q.weight has type 29"},
    };
    for (const auto& [defect, shape, problem] : cases) {
        TempFile bad(gguf_model(defect, shape));
        expect_refused([&] { read_model(bad.path.string()); }, bad.path, problem);
    }
}

// ---------------------------------------------------------------- model

TEST(Model, Stories260KGreedy) {
    REQUIRE_MODEL_FILE(model_path, "stories260K.bin");
    REQUIRE_MODEL_FILE(tok_path, "tok512.bin");
    Model m = read_model(model_path);
    Tokenizer tok(read_tokenizer(tok_path, m.config.vocab_size));
    for (int threads : {1, 3}) {
        ThreadPool pool(threads);
        Transformer tr(m, pool);
        EXPECT_EQ(greedy_text(tr, tok, "", 256), golden("stories260K.f32.greedy.txt")) << "threads " << threads;
        EXPECT_EQ(greedy_text(tr, tok, "Once upon a time, there was a", 96), golden("stories260K.f32.prompt.txt"))
            << "threads " << threads;
    }
}

// Every matrix the converter writes as Q8_0 (rows a multiple of 32 long: all but ffn_down)
// quantized in memory as it does; the text is the reference's for `invoke models.convert --type
// q8_0` of the same file.
TEST(Model, Stories260KQ8Greedy) {
    REQUIRE_MODEL_FILE(model_path, "stories260K.bin");
    REQUIRE_MODEL_FILE(tok_path, "tok512.bin");
    Model m = read_model(model_path);
    Tokenizer tok(read_tokenizer(tok_path, m.config.vocab_size));
    std::vector<std::vector<std::uint8_t>> blocks;  // what the quantized matrices point into (moves keep them)
    auto quantize = [&](Matrix& mat, int cols) {  // as the converter: rows of whole blocks only
        if (cols % Q8_BLOCK) return;
        blocks.push_back(quantize_weights(mat.f32));
        mat = Matrix::q8_0(blocks.back());
    };
    const int d = m.config.dim, hd = m.config.hidden_dim;
    quantize(m.weights.token_embedding, d);
    if (m.config.shared_classifier) m.weights.wcls = m.weights.token_embedding;
    else quantize(m.weights.wcls, d);
    for (auto& l : m.weights.layers) {
        for (Matrix* mat : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w3}) quantize(*mat, d);
        quantize(l.w2, hd);
    }
    ASSERT_FALSE(m.weights.layers[0].w2.quantized()) << "stories260K's ffn_down (rows of 172) stays F32";
    for (int threads : {1, 3}) {
        ThreadPool pool(threads);
        Transformer tr(m, pool);
        EXPECT_EQ(greedy_text(tr, tok, "", 128), golden("stories260K.q8_0.greedy.txt")) << "threads " << threads;
    }
}

// ---------------------------------------------------------------- batched prefill

namespace {
// out(t, i) = x[t] . w[i] in double, and the sum of the terms' sizes
void matmul_plain(const std::vector<float>& w, int n, int d, const std::vector<float>& x, int T,
                  std::vector<double>& out, std::vector<double>& magnitude) {
    out.assign(static_cast<std::size_t>(T) * n, 0.0);
    magnitude.assign(out.size(), 0.0);
    for (int t = 0; t < T; ++t)
        for (int i = 0; i < n; ++i)
            for (int k = 0; k < d; ++k) {
                double term = static_cast<double>(w[static_cast<std::size_t>(i) * d + k]) * x[static_cast<std::size_t>(t) * d + k];
                out[static_cast<std::size_t>(t) * n + i] += term;
                magnitude[static_cast<std::size_t>(t) * n + i] += std::fabs(term);
            }
}
}  // namespace

// The f32 kernel (AVX-512, AVX2, NEON or portable, whichever this build has) against a plain
// loop: T rows that fill no, one or several tiles, n rows of W that leave every tail of the
// tile, and widths with and without a tail of the vector length.
TEST(Batched, MatmulF32MatchesThePlainLoop) {
    Rng rng(27);
    for (int d : {64, 96, 172, 5})
        for (int n : {1, 13, 37})
            for (int T : {1, 2, 7, 33}) {
                std::vector<float> w(static_cast<std::size_t>(n) * d), x(static_cast<std::size_t>(T) * d);
                for (float& v : w) v = rng.next_f32() - 0.5f;
                for (float& v : x) v = (rng.next_f32() - 0.5f) * 4.0f;
                std::vector<float> got(static_cast<std::size_t>(T) * n, NAN);
                batched::matmul_f32(w.data(), n, d, x.data(), T, got.data());
                std::vector<double> want, magnitude;
                matmul_plain(w, n, d, x, T, want, magnitude);
                for (std::size_t k = 0; k < got.size(); ++k)
                    ASSERT_LE(std::fabs(got[k] - want[k]), 1e-6 * magnitude[k] + 1e-30)
                        << "d " << d << " n " << n << " T " << T << " at row " << k / n << ", column " << k % n;
            }
}

// The Q8_0 kernel (AVX-512 VNNI on repacked rows, or tiles of q8::dot_row: AVX2, NEON, portable)
// against the definition (dot_row_plain), each activation row quantized on its own: exactly
// where every term is an integer, to float rounding with random scales. Rows 0 and 1 are all
// -128 and all 127, n leaves every tail of a 32-row tile.
TEST(Batched, MatmulQ8MatchesThePlainLoop) {
    Rng rng(270);
    for (int n_blocks : {1, 2, 3, 9, 11})
        for (int n : {1, 13, 37})
            for (int T : {1, 7, 33})
                for (bool exact : {true, false}) {
                    const int d = n_blocks * Q8_BLOCK;
                    std::vector<std::uint8_t> w(static_cast<std::size_t>(n) * n_blocks * Q8_BLOCK_BYTES);
                    for (int r = 0; r < n; ++r)
                        for (int b = 0; b < n_blocks; ++b) {
                            std::uint8_t* block = w.data() + (static_cast<std::size_t>(r) * n_blocks + b) * Q8_BLOCK_BYTES;
                            auto h = exact ? std::uint16_t{0x3c00} : static_cast<std::uint16_t>(0x1000 + rng.next_u32() % 0x3000);
                            if (!exact && rng.next_u32() % 2) h |= 0x8000;
                            block[0] = static_cast<std::uint8_t>(h), block[1] = static_cast<std::uint8_t>(h >> 8);
                            for (int i = 0; i < Q8_BLOCK; ++i)
                                block[2 + i] = r == 0 ? 0x80 : r == 1 ? 0x7f : static_cast<std::uint8_t>(rng.next_u32());
                        }
                    std::vector<float> x(static_cast<std::size_t>(T) * d), xd(static_cast<std::size_t>(T) * n_blocks);
                    for (std::size_t i = 0; i < x.size(); ++i) {
                        if (exact) {  // amax 127 in every block: dx = 1, quants = x
                            x[i] = i % Q8_BLOCK == 0 ? 127.0f : static_cast<float>(static_cast<int>(rng.next_u32() % 255) - 127);
                        } else {
                            x[i] = (rng.next_f32() - 0.5f) * 8.0f;
                        }
                    }
                    std::vector<std::int8_t> xq(x.size());
                    for (int t = 0; t < T; ++t)
                        q8::quantize(x.data() + static_cast<std::size_t>(t) * d, d, xq.data() + static_cast<std::size_t>(t) * d,
                                     xd.data() + static_cast<std::size_t>(t) * n_blocks);
                    std::vector<float> got(static_cast<std::size_t>(T) * n, NAN);
                    batched::matmul_q8(w.data(), n, d, xq.data(), xd.data(), T, got.data());
                    for (int t = 0; t < T; ++t)
                        for (int r = 0; r < n; ++r) {
                            const std::uint8_t* row = w.data() + static_cast<std::size_t>(r) * n_blocks * Q8_BLOCK_BYTES;
                            const std::int8_t* qt = xq.data() + static_cast<std::size_t>(t) * d;
                            const float* dt = xd.data() + static_cast<std::size_t>(t) * n_blocks;
                            double magnitude, want = dot_row_plain(row, qt, dt, n_blocks, &magnitude);
                            float v = got[static_cast<std::size_t>(t) * n + r];
                            if (exact) ASSERT_EQ(v, want) << n_blocks << " blocks, row " << r << ", T " << t;
                            else ASSERT_LE(std::fabs(v - want), 1e-6 * magnitude) << n_blocks << " blocks, row " << r << ", T " << t;
                        }
                }
}

// Batched logits (every row, in batches of 1, 7, 33 and the whole sequence, at 1 and 3 threads)
// against one position at a time, within the contract's float32 tolerance, and the same argmax.
TEST(Model, Stories260KBatchedLogits) {
    REQUIRE_MODEL_FILE(model_path, "stories260K.bin");
    Model m = read_model(model_path);
    const int vocab = m.config.vocab_size, n = 80;
    std::vector<int> ids{1};
    for (int i = 1; i < n; ++i) ids.push_back((7 * i + 300) % vocab);
    std::vector<float> want;
    {
        ThreadPool pool(1);
        Transformer tr(m, pool, 1);
        for (int pos = 0; pos < n; ++pos) {
            std::span<float> l = tr.forward(ids[pos], pos);
            want.insert(want.end(), l.begin(), l.end());
        }
    }
    for (int threads : {1, 3})
        for (int batch : {1, 7, 33, n}) {
            ThreadPool pool(threads);
            Transformer tr(m, pool, batch, true);
            std::vector<float> got;
            for (int p0 = 0; p0 < n; p0 += batch) {
                std::span<float> l = tr.forward_batch(std::span<const int>(ids).subspan(p0, std::min(batch, n - p0)), p0, Logits::all);
                got.insert(got.end(), l.begin(), l.end());
            }
            ASSERT_EQ(got.size(), want.size());
            for (int pos = 0; pos < n; ++pos) {
                auto row = [&](const std::vector<float>& v) { return v.begin() + static_cast<std::ptrdiff_t>(pos) * vocab; };
                float scale = 0, diff = 0;
                for (int i = 0; i < vocab; ++i) {
                    scale = std::max(scale, std::fabs(row(want)[i]));
                    diff = std::max(diff, std::fabs(row(got)[i] - row(want)[i]));
                }
                EXPECT_LE(diff, 1e-4f * (1 + scale)) << "batch " << batch << ", threads " << threads << ", position " << pos;
                EXPECT_EQ(std::max_element(row(got), row(got) + vocab) - row(got),
                          std::max_element(row(want), row(want) + vocab) - row(want))
                    << "batch " << batch << ", threads " << threads << ", position " << pos;
            }
        }
}

// The same on stories260K quantized in memory as the converter does (Q8_0 but for ffn_down): the
// batched Q8_0 products run their own kernel (VNNI where built) with per-worker scratch, at 1
// and 3 threads. The batched ffn_down (F32) sums in another order than one position's, which
// can turn an activation within float rounding of a tie the other way (the contract's section
// 8), so the bound is the contract's loose Q8_0 tolerance; the argmax is checked where the two
// best logits are clearly apart.
TEST(Model, Stories260KQ8BatchedLogits) {
    REQUIRE_MODEL_FILE(model_path, "stories260K.bin");
    Model m = read_model(model_path);
    std::vector<std::vector<std::uint8_t>> blocks;
    auto quantize = [&](Matrix& mat, int cols) {
        if (cols % Q8_BLOCK) return;
        blocks.push_back(quantize_weights(mat.f32));
        mat = Matrix::q8_0(blocks.back());
    };
    quantize(m.weights.token_embedding, m.config.dim);
    if (m.config.shared_classifier) m.weights.wcls = m.weights.token_embedding;
    else quantize(m.weights.wcls, m.config.dim);
    for (auto& l : m.weights.layers) {
        for (Matrix* mat : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w3}) quantize(*mat, m.config.dim);
        quantize(l.w2, m.config.hidden_dim);
    }
    const int vocab = m.config.vocab_size, n = 80;
    std::vector<int> ids{1};
    for (int i = 1; i < n; ++i) ids.push_back((7 * i + 300) % vocab);
    std::vector<float> want;
    {
        ThreadPool pool(1);
        Transformer tr(m, pool, 1);
        for (int pos = 0; pos < n; ++pos) {
            std::span<float> l = tr.forward(ids[pos], pos);
            want.insert(want.end(), l.begin(), l.end());
        }
    }
    for (int threads : {1, 3})
        for (int batch : {7, n}) {
            ThreadPool pool(threads);
            Transformer tr(m, pool, batch, true);
            std::vector<float> got;
            for (int p0 = 0; p0 < n; p0 += batch) {
                std::span<float> l = tr.forward_batch(std::span<const int>(ids).subspan(p0, std::min(batch, n - p0)), p0, Logits::all);
                got.insert(got.end(), l.begin(), l.end());
            }
            ASSERT_EQ(got.size(), want.size());
            for (int pos = 0; pos < n; ++pos) {
                const float* w = want.data() + static_cast<std::size_t>(pos) * vocab;
                const float* g = got.data() + static_cast<std::size_t>(pos) * vocab;
                float scale = 0, diff = 0;
                for (int i = 0; i < vocab; ++i) scale = std::max(scale, std::fabs(w[i])), diff = std::max(diff, std::fabs(g[i] - w[i]));
                const float tol = 5e-2f * (1 + scale);
                EXPECT_LE(diff, tol) << "batch " << batch << ", threads " << threads << ", position " << pos;
                std::vector<float> sorted(w, w + vocab);
                std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<float>());
                if (sorted[0] - sorted[1] > 2 * tol) {
                    EXPECT_EQ(std::max_element(g, g + vocab) - g, std::max_element(w, w + vocab) - w)
                        << "batch " << batch << ", threads " << threads << ", position " << pos;
                }
            }
        }
}

// The prompt through forward_batch gives the reference's greedy text, at any batch size.
TEST(Model, Stories260KBatchedPromptGreedy) {
    REQUIRE_MODEL_FILE(model_path, "stories260K.bin");
    REQUIRE_MODEL_FILE(tok_path, "tok512.bin");
    Model m = read_model(model_path);
    Tokenizer tok(read_tokenizer(tok_path, m.config.vocab_size));
    for (int threads : {1, 3})
        for (int batch : {1, 2, 5, 512}) {
            ThreadPool pool(threads);
            Transformer tr(m, pool, batch);
            EXPECT_EQ(greedy_text_batched(tr, tok, "Once upon a time, there was a", 96, batch),
                      golden("stories260K.f32.prompt.txt"))
                << "batch " << batch << ", threads " << threads;
            EXPECT_EQ(greedy_text_batched(tr, tok, "", 256, batch), golden("stories260K.f32.greedy.txt"))
                << "batch " << batch << ", threads " << threads;
        }
}

// ---------------------------------------------------------------- F16 and BF16 (contract 3)

namespace {

// a 16-bit value of type t for f (F16 to nearest; BF16 truncated: the tests need values, not
// a particular rounding)
std::uint16_t half_bits(WType t, float f) {
    return t == WType::f16 ? q8::fp32_to_fp16(f) : static_cast<std::uint16_t>(std::bit_cast<std::uint32_t>(f) >> 16);
}

float half_float(WType t, std::uint16_t h) { return t == WType::f16 ? q8::fp16_to_fp32(h) : h16::bf16_to_fp32(h); }

// n rows of d random 16-bit values (as bytes, one byte off any alignment so that the kernels'
// unaligned loads are exercised); with `exact`, small integers, else random values with, for
// F16, some subnormals among them
std::vector<std::uint8_t> half_matrix(WType t, int n, int d, Rng& rng, bool exact) {
    std::vector<std::uint8_t> bytes(static_cast<std::size_t>(n) * d * 2 + 1);
    for (std::size_t i = 0; i < static_cast<std::size_t>(n) * d; ++i) {
        std::uint16_t h;
        if (exact) h = half_bits(t, static_cast<float>(static_cast<int>(rng.next_u32() % 9) - 4));
        else if (t == WType::f16 && rng.next_u32() % 8 == 0) h = static_cast<std::uint16_t>(rng.next_u32() % 0x0400 | (rng.next_u32() % 2) << 15);
        else h = half_bits(t, (rng.next_f32() - 0.5f) * 2.0f);
        std::memcpy(bytes.data() + 1 + 2 * i, &h, 2);
    }
    return bytes;
}

// out(t, i) = x[t] . w[i] in double from the weights' exact values, and the sum of the terms' sizes
void half_plain(WType t, const std::uint8_t* w, int n, int d, const std::vector<float>& x, int T,
                std::vector<double>& out, std::vector<double>& magnitude) {
    out.assign(static_cast<std::size_t>(T) * n, 0.0);
    magnitude.assign(out.size(), 0.0);
    for (int r = 0; r < T; ++r)
        for (int i = 0; i < n; ++i)
            for (int k = 0; k < d; ++k) {
                std::uint16_t h;
                std::memcpy(&h, w + 2 * (static_cast<std::size_t>(i) * d + k), 2);
                double term = static_cast<double>(half_float(t, h)) * x[static_cast<std::size_t>(r) * d + k];
                out[static_cast<std::size_t>(r) * n + i] += term;
                magnitude[static_cast<std::size_t>(r) * n + i] += std::fabs(term);
            }
}

}  // namespace

TEST(Half, Conversions) {
    for (std::uint32_t h = 0; h < 0x10000; ++h) {
        const float f = h16::bf16_to_fp32(static_cast<std::uint16_t>(h));
        EXPECT_EQ(std::bit_cast<std::uint32_t>(f), h << 16) << h;  // NaN payloads and infinities kept
    }
    EXPECT_TRUE(std::isnan(h16::bf16_to_fp32(0x7fc0)) && std::isnan(h16::bf16_to_fp32(0xff81)));
    EXPECT_EQ(h16::bf16_to_fp32(0x7f80), INFINITY);
    EXPECT_EQ(h16::bf16_to_fp32(0x0001), std::ldexp(1.0f, -133));  // a float32 subnormal
    // F16 subnormals: man * 2^-24
    EXPECT_EQ(q8::fp16_to_fp32(0x0001), std::ldexp(1.0f, -24));
    EXPECT_EQ(q8::fp16_to_fp32(0x83ff), -1023 * std::ldexp(1.0f, -24));
    EXPECT_EQ(q8::fp16_to_fp32(0x7bff), 65504.0f);
}

// The one-position kernels (AVX-512, AVX2 + F16C, NEON or portable) against a plain loop: rows
// that leave every tail of the four-row kernel, widths with and without a vector tail; exactly
// with integer values, to float rounding with random ones (F16 subnormals among them).
TEST(Half, MatvecMatchesThePlainLoop) {
    Rng rng(16);
    for (WType t : {WType::f16, WType::bf16})
        for (int d : {64, 96, 172, 288, 5})
            for (int n : {1, 3, 13, 37})
                for (bool exact : {true, false}) {
                    auto w = half_matrix(t, n, d, rng, exact);
                    std::vector<float> x(d);
                    for (float& v : x)
                        v = exact ? static_cast<float>(static_cast<int>(rng.next_u32() % 17) - 8) : (rng.next_f32() - 0.5f) * 4.0f;
                    std::vector<float> got(n, NAN);
                    h16::matvec(t, w.data() + 1, n, d, x.data(), got.data());
                    std::vector<double> want, magnitude;
                    half_plain(t, w.data() + 1, n, d, x, 1, want, magnitude);
                    for (int i = 0; i < n; ++i) {
                        if (exact) ASSERT_EQ(got[i], want[i]) << (t == WType::f16 ? "F16" : "BF16") << " d " << d << " row " << i;
                        else ASSERT_LE(std::fabs(got[i] - want[i]), 1e-6 * magnitude[i] + 1e-30)
                                 << (t == WType::f16 ? "F16" : "BF16") << " d " << d << " row " << i;
                    }
                }
}

// The batched kernels (the f32 tile with the weights converted as loaded) against the same loop,
// T rows that fill no, one or several tiles.
TEST(Half, BatchedMatchesThePlainLoop) {
    Rng rng(160);
    for (WType t : {WType::f16, WType::bf16})
        for (int d : {64, 96, 172, 288, 5})
            for (int n : {1, 13, 37})
                for (int T : {1, 7, 33})
                    for (bool exact : {true, false}) {
                        auto w = half_matrix(t, n, d, rng, exact);
                        std::vector<float> x(static_cast<std::size_t>(T) * d);
                        for (float& v : x)
                            v = exact ? static_cast<float>(static_cast<int>(rng.next_u32() % 17) - 8) : (rng.next_f32() - 0.5f) * 4.0f;
                        std::vector<float> got(static_cast<std::size_t>(T) * n, NAN);
                        batched::matmul_h16(t, w.data() + 1, n, d, x.data(), T, got.data());
                        std::vector<double> want, magnitude;
                        half_plain(t, w.data() + 1, n, d, x, T, want, magnitude);
                        for (std::size_t k = 0; k < got.size(); ++k) {
                            if (exact) ASSERT_EQ(got[k], want[k]) << "d " << d << " n " << n << " T " << T << " at " << k;
                            else ASSERT_LE(std::fabs(got[k] - want[k]), 1e-6 * magnitude[k] + 1e-30)
                                     << "d " << d << " n " << n << " T " << T << " at " << k;
                        }
                    }
}

// A NaN or an infinity among the weights reaches the output, as the float32 product has it
// (no conversion drops it), one position and batched.
TEST(Half, SpecialValuesPropagate) {
    for (WType t : {WType::f16, WType::bf16}) {
        const int d = 40;
        std::vector<std::uint8_t> w(2 * 2 * d, 0);
        const std::uint16_t nan = t == WType::f16 ? 0x7e00 : 0x7fc1, inf = t == WType::f16 ? 0x7c00 : 0x7f80;
        std::memcpy(w.data() + 2 * 33, &nan, 2);        // row 0, in the vector part or a tail
        std::memcpy(w.data() + 2 * (d + 39), &inf, 2);  // row 1, the last value
        std::vector<float> x(d, 1.0f), one(2), many(2 * 3);
        h16::matvec(t, w.data(), 2, d, x.data(), one.data());
        EXPECT_TRUE(std::isnan(one[0]));
        EXPECT_EQ(one[1], INFINITY);
        std::vector<float> xs(3 * d, 1.0f);
        batched::matmul_h16(t, w.data(), 2, d, xs.data(), 3, many.data());
        for (int r = 0; r < 3; ++r) EXPECT_TRUE(std::isnan(many[r * 2]) && many[r * 2 + 1] == INFINITY);
    }
}

TEST(Half, GgufLoadsAndRuns) {
    // every matrix F16, or BF16, or a mix of both with F32 and Q8_0 in one layer
    const unsigned matrices = 1u << 0 | 1u << 3 | 1u << 4 | 1u << 5 | 1u << 6 | 1u << 8 | 1u << 9 | 1u << 10;
    const Shape shapes[] = {{32, 64, 0, 0, matrices, 0}, {32, 64, 0, 0, 0, matrices},
                            {32, 64, 1u << 3 | 1u << 8, 0, 1u << 0 | 1u << 4 | 1u << 9, 1u << 5 | 1u << 10}};
    const char* formats[] = {"gguf-f16", "gguf-bf16", "gguf-q8_0+gguf-f16+gguf-bf16"};
    for (int k = 0; k < 3; ++k) {
        TempFile good(gguf_model(Defect::none, shapes[k]));
        Model m = read_model(good.path.string());
        EXPECT_EQ(m.format, formats[k]);
        const Matrix& e = m.weights.token_embedding;
        EXPECT_TRUE(e.half() && e.h16.size() == std::size_t{TEST_VOCAB} * 32 * 2);
        EXPECT_EQ(m.weights.wcls.data(), e.data());  // tied
        ThreadPool pool(2);
        Transformer one(m, pool), batch(m, pool, 8, true);
        const int ids[] = {5, 260, 261, 7, 100};
        std::vector<float> rows;
        for (int pos = 0; pos < 5; ++pos) {
            auto logits = one.forward(ids[pos], pos);
            ASSERT_TRUE(std::all_of(logits.begin(), logits.end(), [](float v) { return std::isfinite(v); }));
            rows.insert(rows.end(), logits.begin(), logits.end());
        }
        auto all = batch.forward_batch(ids, 0, Logits::all);
        float scale = 0;
        for (float v : rows) scale = std::max(scale, std::fabs(v));
        for (std::size_t i = 0; i < rows.size(); ++i) ASSERT_NEAR(all[i], rows[i], 1e-4 * (1 + scale)) << formats[k] << " " << i;
    }
}

TEST(Half, GgufRefusals) {
    const std::tuple<Defect, Shape, std::string> cases[] = {
        {Defect::none, {32, 64, 0, 0, 1u << 2, 0}, "tensor blk.0.attn_norm.weight is F16; only matrices may be, norms are F32"},
        {Defect::none, {32, 64, 0, 0, 0, 1u << 1}, "tensor output_norm.weight is BF16; only matrices may be"},
        {Defect::truncated, {32, 64, 0, 0, 0, 1u << 10}, "tensor blk.0.ffn_up.weight lies outside the file"},
        {Defect::truncated, {32, 64, 0, 0, 1u << 10, 0}, "tensor blk.0.ffn_up.weight lies outside the file"},
        {Defect::q8_overlap, {32, 64, 0, 0, 1u << 3, 0}, "tensors blk.0.attn_q.weight and blk.0.attn_k.weight overlap"},
    };
    for (const auto& [defect, shape, problem] : cases) {
        TempFile bad(gguf_model(defect, shape));
        expect_refused([&] { read_model(bad.path.string()); }, bad.path, problem);
    }
}

// ---------------------------------------------------------------- GGUF keys (contract 3)

namespace {

template <class T>
void put_kv(std::string& s, const std::string& key, std::uint32_t type, T v) {
    put_str(s, key), put(s, type), put(s, v);
}

void put_kv_string(std::string& s, const std::string& key, const std::string& v) {
    put_str(s, key), put(s, std::uint32_t{8}), put_str(s, v);
}

// the test model with these extra keys
Shape with_keys(std::function<void(std::string&)> write, int n, Shape shape = {}) {
    write(shape.kvs);
    shape.n_kvs = n;
    return shape;
}

}  // namespace

TEST(Keys, DefaultsAndValues) {
    TempFile plain(gguf_model(Defect::none));
    Config c = read_model(plain.path.string()).config;
    EXPECT_EQ(c.rope_theta, 10000.0f);
    EXPECT_EQ(c.norm_eps, 1e-5f);
    EXPECT_EQ(c.bos_id, 1);
    EXPECT_EQ(c.eos_id, 2);
    // any numeric type: f32, f64, integers of every width
    TempFile keyed(gguf_model(Defect::none, with_keys([](std::string& s) {
        put_kv(s, "llama.rope.freq_base", 6, 500000.0f);
        put_kv(s, "llama.attention.layer_norm_rms_epsilon", 12, 1e-6);
        put_kv(s, "llama.rope.dimension_count", 10, std::uint64_t{4});
        put_kv(s, "tokenizer.ggml.bos_token_id", 2, std::uint16_t{260});
        put_kv(s, "tokenizer.ggml.eos_token_id", 5, std::int32_t{261});
        put_kv_string(s, "llama.rope.scaling.type", "none");
        put_kv(s, "llama.expert_count", 4, std::uint32_t{0});
    }, 7)));
    c = read_model(keyed.path.string()).config;
    EXPECT_EQ(c.rope_theta, 500000.0f);
    EXPECT_EQ(c.norm_eps, 1e-6f);
    EXPECT_EQ(c.bos_id, 260);
    EXPECT_EQ(c.eos_id, 261);
    TempFile integer_theta(gguf_model(Defect::none, with_keys([](std::string& s) {
        put_kv(s, "llama.rope.freq_base", 5, std::int32_t{20000});
    }, 1)));
    EXPECT_EQ(read_model(integer_theta.path.string()).config.rope_theta, 20000.0f);
}

TEST(Keys, BadKindsAndRangesRefused) {
    using W = std::function<void(std::string&)>;
    const std::pair<W, std::string> cases[] = {
        {[](std::string& s) { put_kv_string(s, "llama.rope.freq_base", "10000"); }, "key llama.rope.freq_base must be a number"},
        {[](std::string& s) { put_kv(s, "llama.rope.freq_base", 7, std::uint8_t{1}); }, "key llama.rope.freq_base must be a number"},
        {[](std::string& s) { put_kv(s, "llama.rope.freq_base", 6, 1.0f); }, "key llama.rope.freq_base=1 is out of range"},
        {[](std::string& s) { put_kv(s, "llama.rope.freq_base", 6, NAN); }, "key llama.rope.freq_base=nan is out of range"},
        {[](std::string& s) { put_kv(s, "llama.rope.freq_base", 12, 1e300); }, "key llama.rope.freq_base=1e+300 is out of range"},
        {[](std::string& s) { put_kv(s, "llama.attention.layer_norm_rms_epsilon", 6, 0.0f); },
         "key llama.attention.layer_norm_rms_epsilon=0 is out of range"},
        {[](std::string& s) { put_kv(s, "llama.attention.layer_norm_rms_epsilon", 4, std::uint32_t{1}); },
         "key llama.attention.layer_norm_rms_epsilon=1 is out of range"},
        {[](std::string& s) { put_kv(s, "llama.rope.dimension_count", 4, std::uint32_t{2}); },
         "key llama.rope.dimension_count=2 is not head_size=4"},
        {[](std::string& s) { put_kv(s, "llama.rope.dimension_count", 6, 4.0f); }, "key llama.rope.dimension_count must be an integer"},
        {[](std::string& s) { put_kv(s, "tokenizer.ggml.bos_token_id", 4, std::uint32_t{262}); },
         "key tokenizer.ggml.bos_token_id=262 is outside the vocabulary [0, 262)"},
        {[](std::string& s) { put_kv(s, "tokenizer.ggml.eos_token_id", 5, std::int32_t{-1}); },
         "key tokenizer.ggml.eos_token_id=-1 is outside the vocabulary"},
        {[](std::string& s) { put_kv(s, "tokenizer.ggml.bos_token_id", 6, 1.0f); }, "key tokenizer.ggml.bos_token_id must be an integer"},
        {[](std::string& s) { put_kv_string(s, "llama.rope.scaling.type", "linear"); }, "key llama.rope.scaling.type='linear'"},
        {[](std::string& s) { put_kv(s, "llama.rope.scaling.type", 4, std::uint32_t{0}); }, "key llama.rope.scaling.type must be a string"},
        {[](std::string& s) { put_kv(s, "llama.expert_count", 4, std::uint32_t{8}); }, "key llama.expert_count=8"},
    };
    for (const auto& [write, problem] : cases) {
        TempFile bad(gguf_model(Defect::none, with_keys(write, 1)));
        expect_refused([&] { read_model(bad.path.string()); }, bad.path, problem);
        std::string path = bad.path.string();
        const char* argv[] = {"run", path.c_str(), "-n", "2", "-t", "0"};
        testing::internal::CaptureStderr();
        EXPECT_EQ(run_main(6, argv), 3) << problem;
        std::string err = testing::internal::GetCapturedStderr();
        EXPECT_EQ(err.rfind("error: " + path + ": ", 0), 0u) << err;
        EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
    }
}

// theta and eps reach every forward path: other values give other logits, one position and
// batched alike, and the batched logits stay those of one position at a time.
TEST(Keys, ThetaAndEpsChangeTheLogits) {
    auto logits_of = [](const Shape& shape, bool batched) {
        TempFile f(gguf_model(Defect::none, shape));
        Model m = read_model(f.path.string());
        ThreadPool pool(1);
        Transformer tr(m, pool, 8, true);
        const int ids[] = {5, 260, 261, 7};
        if (batched) {
            auto all = tr.forward_batch(ids, 0, Logits::all);
            return std::vector<float>(all.begin(), all.end());
        }
        std::vector<float> rows;
        for (int pos = 0; pos < 4; ++pos) {
            auto l = tr.forward(ids[pos], pos);
            rows.insert(rows.end(), l.begin(), l.end());
        }
        return rows;
    };
    const Shape base{32, 64};
    const Shape theta = with_keys([](std::string& s) { put_kv(s, "llama.rope.freq_base", 6, 3.0f); }, 1, base);
    const Shape eps = with_keys([](std::string& s) { put_kv(s, "llama.attention.layer_norm_rms_epsilon", 6, 0.5f); }, 1, base);
    for (bool batched : {false, true}) {
        auto a = logits_of(base, batched), b = logits_of(theta, batched), c = logits_of(eps, batched);
        // theta moves nothing at position 0 (no rotation there), and every later row
        const std::size_t v = TEST_VOCAB;
        EXPECT_TRUE(std::equal(a.begin(), a.begin() + v, b.begin()));
        for (int pos = 1; pos < 4; ++pos)
            EXPECT_FALSE(std::equal(a.begin() + pos * v, a.begin() + (pos + 1) * v, b.begin() + pos * v)) << pos;
        EXPECT_FALSE(std::equal(a.begin(), a.begin() + v, c.begin()));
    }
    for (const Shape& s : {theta, eps}) {
        auto one = logits_of(s, false), all = logits_of(s, true);
        float scale = 0;
        for (float x : one) scale = std::max(scale, std::fabs(x));
        for (std::size_t i = 0; i < one.size(); ++i) ASSERT_NEAR(one[i], all[i], 1e-4 * (1 + scale)) << i;
    }
}

TEST(Keys, BosAndEosIds) {
    Vocab v;
    for (int i = 0; i < TEST_VOCAB; ++i) v.pieces.push_back(test_piece(i, " ")), v.scores.push_back(-static_cast<float>(i));
    Tokenizer tok(v, 7, 9);
    auto ids = tok.encode("a", true, true);
    ASSERT_GE(ids.size(), 3u);
    EXPECT_EQ(ids.front(), 7);
    EXPECT_EQ(ids.back(), 9);
    EXPECT_EQ(tok.decode(7, 261), "a");   // the space after BOS dropped
    EXPECT_EQ(tok.decode(1, 261), " a");  // 1 is no longer BOS
    Tokenizer plain(v);
    EXPECT_EQ(plain.encode("a", true, true).front(), BOS);
    EXPECT_EQ(plain.decode(1, 261), "a");
}

// ---------------------------------------------------------------- KV cache sized for the run

TEST(KvCache, SizedForTheRun) {
    // a 7B shape at 8192 positions: 8 GiB of cache for the whole context, 64 KiB for 4 positions
    Config big{4096, 11008, 32, 32, 32, 32000, 8192, true};
    EXPECT_NO_THROW(check_kv_cache(big, 4, "m.gguf"));
    EXPECT_NO_THROW(check_kv_cache(big, 4096, "m.gguf"));  // exactly 4 GiB
    try {
        check_kv_cache(big, 8192, "m.gguf");
        ADD_FAILURE() << "accepted";
    } catch (const FormatError& e) {
        EXPECT_STREQ(e.what(), "m.gguf: KV cache of 8589934592 bytes for 8192 positions exceeds the 4 GiB limit");
    }
    // the transformer holds the positions it is given, and refuses one past them
    TempFile f(gguf_model(Defect::none));
    Model m = read_model(f.path.string());
    ThreadPool pool(1);
    Transformer tr(m, pool, 8, false, 3);
    EXPECT_EQ(tr.kv_rows(), 3);
    for (int pos = 0; pos < 3; ++pos) tr.forward(5, pos);
    EXPECT_THROW(tr.forward(5, 3), RuntimeError);
    const int four[] = {1, 2, 3, 4};
    EXPECT_THROW(tr.forward_batch(four, 0, Logits::last), RuntimeError);
    EXPECT_EQ(Transformer(m, pool).kv_rows(), m.config.seq_len);
}
