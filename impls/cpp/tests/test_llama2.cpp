// Unit tests: tokenizer vectors, sampler determinism, command-line and file validation.
//
// Model files are found through POLYLLAMA_MODEL_PATH (':'-separated directories). When they
// are missing the tests that need them fail under CI=true and are skipped otherwise.
#include "formats.hpp"
#include "llama2.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
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
                    nan_score, inf_score, no_space };

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

int gguf_kvs(std::string& s, Defect defect) {
    int n = 0;
    put_str(s, "general.architecture"), put(s, std::uint32_t{8}), put_str(s, "llama"), ++n;
    put_str(s, defect == Defect::empty_key ? "" : "general.name"), put(s, std::uint32_t{8}), put_str(s, "test"), ++n;
    put_kv_u32(s, n, "llama.embedding_length", 8);
    put_kv_u32(s, n, "llama.feed_forward_length", 16);
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
    return n;
}

// A GGUF model (dim 8, hidden 16, one layer, two heads, seq_len 8) with the test vocabulary.
std::string gguf_model(Defect defect) {
    struct Tensor {
        std::string name;
        std::vector<std::uint64_t> dims;  // innermost first: a (rows, cols) matrix is [cols, rows]
        std::uint64_t offset = 0;
    };
    std::vector<Tensor> tensors = {
        {"token_embd.weight", {8, TEST_VOCAB}}, {"output_norm.weight", {8}},  {"blk.0.attn_norm.weight", {8}},
        {"blk.0.attn_q.weight", {8, 8}},         {"blk.0.attn_k.weight", {8, 8}}, {"blk.0.attn_v.weight", {8, 8}},
        {"blk.0.attn_output.weight", {8, 8}},    {"blk.0.ffn_norm.weight", {8}},  {"blk.0.ffn_gate.weight", {8, 16}},
        {"blk.0.ffn_down.weight", {16, 8}},      {"blk.0.ffn_up.weight", {8, 16}}};
    if (defect == Defect::dup_tensor) tensors.push_back({"blk.0.attn_q.weight", {8, 8}});
    if (defect == Defect::extra_tensor) tensors.push_back({"extra.weight", {8}});
    std::uint64_t end = 0;
    for (auto& t : tensors) {
        t.offset = end;
        end += (4 * std::accumulate(t.dims.begin(), t.dims.end(), std::uint64_t{1}, std::multiplies<>()) + 31) / 32 * 32;
    }
    if (defect == Defect::unaligned) tensors.back().offset += 4;
    if (defect == Defect::overlap) tensors[2].offset = tensors[1].offset;
    std::string kvs;
    int n_kv = gguf_kvs(kvs, defect);
    std::string s = "GGUF";
    put(s, std::uint32_t{3}), put(s, static_cast<std::uint64_t>(tensors.size())), put(s, static_cast<std::uint64_t>(n_kv));
    s += kvs;
    for (const auto& t : tensors) {
        put_str(s, t.name), put(s, static_cast<std::uint32_t>(t.dims.size()));
        for (auto d : t.dims) put(s, d);
        put(s, std::uint32_t{0}), put(s, t.offset);
    }
    s.resize((s.size() + 31) / 32 * 32, '\0');
    for (std::uint64_t i = 0; i < end / 4 + 16; ++i) put(s, static_cast<float>(i % 7) * 0.01f);
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

// ---------------------------------------------------------------- model

TEST(Model, Stories260KGreedy) {
    REQUIRE_MODEL_FILE(model_path, "stories260K.bin");
    REQUIRE_MODEL_FILE(tok_path, "tok512.bin");
    Model m = read_model(model_path);
    Tokenizer tok(read_tokenizer(tok_path, m.config.vocab_size));
    for (int threads : {1, 3}) {
        ThreadPool pool(threads);
        Transformer tr(m, pool);
        std::string text;
        int token = BOS;
        for (int pos = 0; pos < 24; ++pos) {
            int next = sample_argmax(tr.forward(token, pos));
            text += safe_piece(tok.decode(token, next));
            token = next;
        }
        EXPECT_EQ(text.rfind("Once upon a time, there was a little girl named Lily.", 0), 0u) << text;
    }
}
