// polyllama's llama.cpp peer: the port contract's command line (docs/port-contract.md) on
// llama.cpp's C API (llama.h), statically linked.
//
// llama.cpp loads the GGUF (its own mmap) and computes the logits with its own CPU kernels and
// its own threading; nothing here overrides either. Around it, this file is run.c: the
// command line, a bounded GGUF reader that validates the file before llama.cpp sees it, the
// tokenizer (encode/decode, from the GGUF's own vocabulary arrays), the xorshift sampler and the
// generation loop. llama.cpp's tokenizer and samplers are not used: its sampler chain has another
// RNG and another top-p rule, so seeded text could never be compared with the other ports.

#include "llama.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <new>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <cerrno>
#include <csignal>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "GGUF is little-endian and this reader copies its fields as they are"
#endif

static const char *PORT = "llamacpp";
static const char *USAGE =
    "usage: driver <checkpoint> [-z tokenizer] [-t temperature] [-p topp] [-s seed] [-n steps] "
    "[-i prompt] [-j threads] [-m generate|logits] [-o file] [-k ids] [-e 0|1] [-b batch]";
enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_BAD_FILE = 3 };

// ----------------------------------------------------------------------------
// errors: thrown, caught once in main, printed as one `error:` line

struct Failure {
    int code;
    std::string message;
};

[[noreturn]] static void fail(int code, std::string message) { throw Failure{code, std::move(message)}; }
[[noreturn]] static void usage_error(const std::string &problem) { fail(EXIT_USAGE, problem); }
[[noreturn]] static void bad_file(const std::string &path, const std::string &problem) {
    fail(EXIT_BAD_FILE, path + ": " + problem);
}

// Text from a file or from llama.cpp, safe for a one-line message: escaped and cut short.
static std::string shown(std::string_view text, size_t limit = 80) {
    std::string out;
    for (unsigned char c : text) {
        if (c >= 0x20 && c < 0x7F && c != '\\') {
            out += char(c);
        } else {
            char buf[8];
            snprintf(buf, sizeof buf, "\\x%02x", c);
            out += buf;
        }
    }
    return out.size() <= limit ? out : out.substr(0, limit - 3) + "...";
}

// a number from a file for a message: shortest faithful form, never "0.000000" for 1e-6
static std::string number_text(double x) {
    char buf[32];
    snprintf(buf, sizeof buf, "%.9g", x);
    return buf;
}

static double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

// ----------------------------------------------------------------------------
// command line (contract section 2): plain decimal numbers, every flag with one value

struct Args {
    std::string checkpoint;
    float temperature = 1.0f;
    double topp = 0.9;      // compared as given, rounded to float for the arithmetic (as the reference)
    uint64_t seed = 0;
    uint64_t steps = 256;   // saturates: every count above seq_len means seq_len
    std::string prompt;
    int threads = 1;
    bool logits_mode = false;
    bool has_output = false, has_ids = false;
    std::string output;
    std::vector<int64_t> ids;  // saturated to [-1, INT64_MAX]: range-checked once the model is known
    bool ignore_bos = false;
    uint64_t batch = 512;   // saturates like steps: clamped to seq_len once the model is known
};

struct Integer {
    bool negative;
    uint64_t magnitude;  // UINT64_MAX with `over` when the digits do not fit
    bool over;
};

// [+-]?[0-9]+, any number of digits
static bool parse_integer(const std::string &s, Integer &out) {
    size_t i = 0;
    out = Integer{false, 0, false};
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) out.negative = s[i++] == '-';
    if (i == s.size()) return false;
    for (; i < s.size(); i++) {
        if (s[i] < '0' || s[i] > '9') return false;
        uint64_t digit = uint64_t(s[i] - '0');
        if (out.over || out.magnitude > (UINT64_MAX - digit) / 10) {
            out.over = true;
            out.magnitude = UINT64_MAX;
        } else {
            out.magnitude = out.magnitude * 10 + digit;
        }
    }
    return true;
}

// [+-]?([0-9]+.?[0-9]*|.[0-9]+)([eE][+-]?[0-9]+)?
static bool is_plain_float(const std::string &s) {
    size_t i = 0, n = s.size();
    auto digits = [&] { size_t start = i; while (i < n && s[i] >= '0' && s[i] <= '9') i++; return i - start; };
    if (i < n && (s[i] == '+' || s[i] == '-')) i++;
    size_t before = digits(), after = 0;
    if (i < n && s[i] == '.') {
        i++;
        after = digits();
    }
    if (before == 0 && after == 0) return false;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        if (digits() == 0) return false;
    }
    return i == n;
}

static double parse_float(const std::string &flag, const std::string &value, double lo, double hi) {
    if (!is_plain_float(value)) usage_error(flag + " expects a number, got '" + shown(value) + "'");
    double x = strtod(value.c_str(), nullptr);
    if (!std::isfinite(x) || x < lo || x > hi) usage_error(flag + " " + shown(value) + " is out of range");
    return x;
}

static uint64_t parse_count(const std::string &flag, const std::string &value, uint64_t lo, uint64_t hi) {
    Integer v;
    if (!parse_integer(value, v)) usage_error(flag + " expects an integer, got '" + shown(value) + "'");
    if ((v.negative && v.magnitude > 0) || v.over || v.magnitude < lo || v.magnitude > hi)
        usage_error(flag + " " + shown(value) + " is out of range");
    return v.magnitude;
}

static std::vector<int64_t> parse_ids(const std::string &value) {
    std::vector<int64_t> ids;
    size_t start = 0;
    for (;;) {
        size_t comma = value.find(',', start);
        std::string item = value.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        Integer v;
        if (!parse_integer(item, v)) usage_error("-k expects comma-separated token ids, got '" + shown(value) + "'");
        if (v.negative && v.magnitude > 0) ids.push_back(-1);
        else ids.push_back(v.magnitude > uint64_t(INT64_MAX) ? INT64_MAX : int64_t(v.magnitude));
        if (comma == std::string::npos) return ids;
        start = comma + 1;
    }
}

static Args parse_args(int argc, char **argv) {
    Args a;
    if (argc < 2 || argv[1][0] == '-') usage_error("missing checkpoint");
    a.checkpoint = argv[1];
    if ((argc - 2) % 2) usage_error(std::string("flag ") + shown(argv[argc - 1]) + " has no value");
    for (int i = 2; i < argc; i += 2) {
        std::string flag = argv[i], value = argv[i + 1];
        if (flag == "-z") {
            // the GGUF brings its tokenizer: accepted and ignored
        } else if (flag == "-t") {
            a.temperature = float(parse_float(flag, value, 0.0, HUGE_VAL));
        } else if (flag == "-p") {
            a.topp = parse_float(flag, value, 0.0, 1.0);
        } else if (flag == "-s") {
            a.seed = parse_count(flag, value, 0, UINT64_MAX);
        } else if (flag == "-n") {
            Integer v;
            if (!parse_integer(value, v)) usage_error("-n expects an integer, got '" + shown(value) + "'");
            if (v.negative && v.magnitude > 0) usage_error("-n " + shown(value) + " is out of range");
            a.steps = v.magnitude;
        } else if (flag == "-i") {
            a.prompt = value;
        } else if (flag == "-j") {
            a.threads = int(parse_count(flag, value, 1, 4096));
        } else if (flag == "-m") {
            if (value != "generate" && value != "logits")
                usage_error("-m expects generate or logits, got '" + shown(value) + "'");
            a.logits_mode = value == "logits";
        } else if (flag == "-o") {
            a.output = value;
            a.has_output = true;
        } else if (flag == "-k") {
            a.ids = parse_ids(value);
            a.has_ids = true;
        } else if (flag == "-e") {
            a.ignore_bos = parse_count(flag, value, 0, 1) == 1;
        } else if (flag == "-b") {
            Integer v;
            if (!parse_integer(value, v)) usage_error("-b expects an integer, got '" + shown(value) + "'");
            if (v.negative || v.magnitude == 0) usage_error("-b " + shown(value) + " is out of range");
            a.batch = v.magnitude;
        } else {
            usage_error("unknown flag " + shown(flag));
        }
    }
    if (a.logits_mode && (!a.has_output || !a.has_ids)) usage_error("logits mode needs -o FILE and -k IDS");
    return a;
}

// ----------------------------------------------------------------------------
// the GGUF file: mapped read-only, every count and offset bounded before it is used

class MappedFile {
public:
    MappedFile(const std::string &path) {
        int fd = open(path.c_str(), O_RDONLY);
        if (fd < 0) bad_file(path, std::string("cannot open: ") + strerror(errno));
        struct stat st;
        int e = fstat(fd, &st) != 0 ? errno : S_ISDIR(st.st_mode) ? EISDIR : 0;
        if (e) {
            close(fd);
            bad_file(path, std::string("cannot open: ") + strerror(e));
        }
        size_ = size_t(st.st_size);
        if (size_ > 0) {
            void *p = mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
            if (p == MAP_FAILED) {
                int e = errno;
                close(fd);
                bad_file(path, std::string("cannot read: ") + strerror(e));
            }
            data_ = static_cast<const uint8_t *>(p);
        }
        close(fd);
    }
    ~MappedFile() {
        if (data_) munmap(const_cast<uint8_t *>(data_), size_);
    }
    MappedFile(const MappedFile &) = delete;
    MappedFile &operator=(const MappedFile &) = delete;
    const uint8_t *data() const { return data_; }
    size_t size() const { return size_; }

private:
    const uint8_t *data_ = nullptr;
    size_t size_ = 0;
};

enum GgufType : uint32_t {
    G_U8, G_I8, G_U16, G_I16, G_U32, G_I32, G_F32, G_BOOL, G_STRING, G_ARRAY, G_U64, G_I64, G_F64, G_TYPES
};
static const uint64_t SCALAR_SIZE[G_TYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
static const uint64_t MAX_ENTRIES = 65536;   // kv pairs and tensors
static const int64_t LLAMA_CPP_MAX_LAYERS = 512;  // llama.cpp asserts (aborts) above it

struct Cursor {
    const std::string &path;
    const uint8_t *p;
    size_t size, off;

    void need(uint64_t n, const std::string &what) const {
        if (n > size - off) bad_file(path, "truncated or corrupt: " + what + " runs past the end of the file");
    }
    template <class T> T read(const std::string &what) {
        need(sizeof(T), what);
        T v;
        memcpy(&v, p + off, sizeof v);
        off += sizeof v;
        return v;
    }
    std::string_view string(const std::string &what) {
        uint64_t n = read<uint64_t>(what);
        need(n, what);
        std::string_view s(reinterpret_cast<const char *>(p + off), size_t(n));
        off += size_t(n);
        return s;
    }
};

struct Value {
    uint32_t type;
    uint32_t elem_type;  // arrays only
    uint64_t count;      // arrays: elements; scalars: 1
    size_t offset;       // of the scalar, or of the first element
};

struct TensorInfo {
    std::string name;
    std::vector<uint64_t> dims;  // innermost first
    uint32_t type;
    uint64_t offset;
};

struct Config {
    int64_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    double theta = 10000.0, eps = 1e-5;  // contract section 4's keys, with their defaults
    int64_t bos = 1, eos = 2;
};

// A value llama.cpp must be told rather than read: its loader takes each key in one exact
// type (u32, f32) where the contract takes any integer or float type, and it requires an
// epsilon the contract defaults. The driver hands it the values it read, through llama.cpp's
// metadata overrides (what llama-cli's --override-kv does), so both compute the same model.
struct KeyOverride {
    std::string key;
    bool is_float;
    double value;
};

struct Vocab {
    std::vector<std::string> pieces;  // as the contract spells them: U+2581 is a space
    std::vector<float> scores;
};

struct Checkpoint {
    Config c;
    Vocab vocab;
    std::vector<KeyOverride> overrides;
};

class GgufReader {
public:
    GgufReader(const std::string &path, const MappedFile &file) : path_(path), file_(file) {}

    Checkpoint read() {
        parse_header_and_kv();
        parse_tensor_infos();
        check_keys();
        Checkpoint ck;
        ck.c = read_config();
        read_model_keys(ck.c);
        check_tensors(ck.c);
        ck.vocab = read_vocab(ck.c);
        ck.overrides = std::move(overrides_);
        return ck;
    }

private:
    const std::string &path_;
    const MappedFile &file_;
    std::map<std::string, Value> kv_;
    std::vector<TensorInfo> tensors_;
    uint64_t tensor_count_ = 0;
    size_t infos_start_ = 0, infos_end_ = 0;  // the tensor infos follow the kv pairs
    uint64_t alignment_ = 32;
    std::vector<KeyOverride> overrides_;

    // ---- raw structure
    void parse_header_and_kv() {
        const uint8_t *p = file_.data();
        size_t size = file_.size();
        if (size < 4 || memcmp(p, "GGUF", 4) != 0) {
            uint32_t magic = 0;
            if (size >= 4) memcpy(&magic, p, 4);
            bad_file(path_, magic == 0x616b3432 ? "a llama2.c v1 checkpoint: llamacpp reads GGUF only"
                            : size == 0 ? "empty file: llamacpp reads GGUF only"
                                        : "not a GGUF file (bad magic): llamacpp reads GGUF only");
        }
        Cursor cur{path_, p, size, 4};
        uint32_t version = cur.read<uint32_t>("version");
        if (version != 2 && version != 3)
            bad_file(path_, "unsupported GGUF version " + std::to_string(version) + " (2 and 3 are read)");
        uint64_t n_tensors = cur.read<uint64_t>("tensor count");
        uint64_t n_kv = cur.read<uint64_t>("kv count");
        if (n_tensors > MAX_ENTRIES || n_kv > MAX_ENTRIES)
            bad_file(path_, "implausible counts: " + std::to_string(n_tensors) + " tensors, " + std::to_string(n_kv) +
                                " keys (limit " + std::to_string(MAX_ENTRIES) + ")");
        for (uint64_t i = 0; i < n_kv; i++) {
            std::string key(cur.string("key"));
            if (key.empty()) bad_file(path_, "an empty key (llama.cpp refuses it)");
            std::string what = "key " + shown(key);
            if (kv_.count(key)) bad_file(path_, what + " appears twice (llama.cpp refuses it)");
            kv_[key] = parse_value(cur, cur.read<uint32_t>(what), what);
        }
        tensor_count_ = n_tensors;
        infos_start_ = cur.off;
    }

    Value parse_value(Cursor &cur, uint32_t type, const std::string &what) {
        if (type >= G_TYPES) bad_file(path_, what + ": unknown value type " + std::to_string(type));
        if (type == G_STRING) {
            Value v{type, 0, 1, cur.off};
            cur.string(what);
            return v;
        }
        if (type != G_ARRAY) {
            Value v{type, 0, 1, cur.off};
            cur.need(SCALAR_SIZE[type], what);
            cur.off += SCALAR_SIZE[type];
            return v;
        }
        uint32_t elem = cur.read<uint32_t>(what);
        uint64_t count = cur.read<uint64_t>(what);
        if (elem >= G_TYPES || elem == G_ARRAY)
            bad_file(path_, what + ": unsupported array element type " + std::to_string(elem));
        Value v{type, elem, count, cur.off};
        uint64_t min_size = elem == G_STRING ? 8 : SCALAR_SIZE[elem];
        if (count > (cur.size - cur.off) / min_size)
            bad_file(path_, "truncated or corrupt: " + what + " runs past the end of the file");
        if (elem == G_STRING) {
            for (uint64_t i = 0; i < count; i++) cur.string(what);
        } else {
            cur.off += size_t(count * min_size);
        }
        return v;
    }

    void parse_tensor_infos() {
        Cursor cur{path_, file_.data(), file_.size(), infos_start_};
        std::set<std::string> seen;
        for (uint64_t i = 0; i < tensor_count_; i++) {
            TensorInfo t;
            t.name = std::string(cur.string("tensor name"));
            std::string what = "tensor " + shown(t.name);
            if (!seen.insert(t.name).second) bad_file(path_, what + " appears twice (llama.cpp refuses it)");
            uint32_t n_dims = cur.read<uint32_t>(what);
            if (n_dims > 4) bad_file(path_, what + " has " + std::to_string(n_dims) + " dimensions");
            for (uint32_t d = 0; d < n_dims; d++) t.dims.push_back(cur.read<uint64_t>(what));
            t.type = cur.read<uint32_t>(what);
            t.offset = cur.read<uint64_t>(what);
            tensors_.push_back(std::move(t));
        }
        infos_end_ = cur.off;
    }

    // ---- typed access to the kv pairs
    const Value *find(const std::string &key) const {
        auto it = kv_.find(key);
        return it == kv_.end() ? nullptr : &it->second;
    }
    template <class T> T at(size_t off) const {
        T v;
        memcpy(&v, file_.data() + off, sizeof v);
        return v;
    }
    std::string_view string_at(size_t off) const {  // bounds were checked by the parse
        uint64_t n = at<uint64_t>(off);
        return std::string_view(reinterpret_cast<const char *>(file_.data() + off + 8), size_t(n));
    }
    static bool is_integer_type(uint32_t t) {
        return t == G_U8 || t == G_I8 || t == G_U16 || t == G_I16 || t == G_U32 || t == G_I32 || t == G_U64 || t == G_I64;
    }
    int64_t integer_at(uint32_t type, size_t off) const {
        switch (type) {
        case G_U8: return at<uint8_t>(off);
        case G_I8: return at<int8_t>(off);
        case G_U16: return at<uint16_t>(off);
        case G_I16: return at<int16_t>(off);
        case G_U32: return at<uint32_t>(off);
        case G_I32: return at<int32_t>(off);
        case G_U64: { uint64_t v = at<uint64_t>(off); return v > uint64_t(INT64_MAX) ? INT64_MAX : int64_t(v); }
        default: return at<int64_t>(off);
        }
    }
    int64_t int_key(const std::string &key, const int64_t *fallback = nullptr) const {
        const Value *v = find(key);
        if (!v) {
            if (fallback) return *fallback;
            bad_file(path_, "missing required key " + key);
        }
        if (!is_integer_type(v->type)) bad_file(path_, "key " + key + " must be an integer");
        return integer_at(v->type, v->offset);
    }
    // an integer key llama.cpp reads as a u32, told to it when the file stores another type
    void integer_for_llama(const std::string &key, int64_t value) {
        const Value *v = find(key);
        if (v && v->type != G_U32) overrides_.push_back({key, false, double(value)});
    }
    // contract section 4: a float key may be stored as any float or integer type
    double number_key(const std::string &key, double fallback) {
        const Value *v = find(key);
        if (!v) return fallback;
        double x;
        if (v->type == G_F32) x = at<float>(v->offset);
        else if (v->type == G_F64) x = at<double>(v->offset);
        else if (is_integer_type(v->type)) x = double(integer_at(v->type, v->offset));
        else bad_file(path_, "key " + key + " must be a number");
        return x;
    }

    // ---- the keys llama.cpp acts on
    void check_keys() {
        const Value *arch = find("general.architecture");
        if (!arch || arch->type != G_STRING || string_at(arch->offset) != "llama")
            bad_file(path_, "general.architecture is " +
                                (arch && arch->type == G_STRING ? "'" + shown(string_at(arch->offset)) + "'"
                                                                : std::string(arch ? "not a string" : "missing")) +
                                ", expected 'llama'");
        if (const Value *a = find("general.alignment")) {
            // llama.cpp reads it as a u32 and refuses any other type
            if (a->type != G_U32) bad_file(path_, "general.alignment must be a uint32 (llama.cpp refuses other types)");
            alignment_ = at<uint32_t>(a->offset);
        }
        if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) || alignment_ > 65536)
            bad_file(path_, "general.alignment=" + std::to_string(alignment_) + " is not a power of two up to 65536");
        // llama.cpp applies every `llama.*` hyper-parameter it knows, and asserts (aborts) on some
        // values: only the contract's model is accepted, i.e. its keys (read_model_keys checks
        // their values), the vocabulary size llama.cpp only names the model by, and the scaling
        // factor, which the context's "no scaling" makes inert
        static const std::set<std::string> known = {
            "llama.context_length", "llama.embedding_length", "llama.feed_forward_length", "llama.block_count",
            "llama.attention.head_count", "llama.attention.head_count_kv", "llama.attention.layer_norm_rms_epsilon",
            "llama.rope.dimension_count", "llama.rope.freq_base", "llama.vocab_size", "llama.rope.scaling.type",
            "llama.rope.scaling.factor", "llama.expert_count", "llama.expert_used_count"};
        for (const auto &[key, value] : kv_) {
            if (key.rfind("llama.", 0) == 0 && !known.count(key))
                bad_file(path_, "key " + shown(key) + " is not part of the contract's model (llama.cpp would apply it)");
            if (key.rfind("split.", 0) == 0)
                bad_file(path_, "key " + shown(key) + ": split GGUF files are not read");
        }
        const Value *model = find("tokenizer.ggml.model");
        if (!model || model->type != G_STRING || string_at(model->offset) != "llama")
            bad_file(path_, "tokenizer.ggml.model must be 'llama' (the SentencePiece vocabulary llama.cpp reads)");
    }

    Config read_config() {
        const Value *tokens = find("tokenizer.ggml.tokens");
        if (!tokens || tokens->type != G_ARRAY || tokens->elem_type != G_STRING || tokens->count == 0)
            bad_file(path_, "missing tokenizer.ggml.tokens");
        Config c;
        c.n_heads = int_key("llama.attention.head_count");
        c.dim = int_key("llama.embedding_length");
        c.hidden_dim = int_key("llama.feed_forward_length");
        c.n_layers = int_key("llama.block_count");
        c.n_kv_heads = int_key("llama.attention.head_count_kv", &c.n_heads);
        c.seq_len = int_key("llama.context_length");
        c.vocab_size = tokens->count > (1u << 30) ? (1 << 30) : int64_t(tokens->count);
        check_config(c);
        for (const auto &[key, value] : {std::pair<const char *, int64_t>{"llama.attention.head_count", c.n_heads},
                                         {"llama.embedding_length", c.dim}, {"llama.feed_forward_length", c.hidden_dim},
                                         {"llama.block_count", c.n_layers}, {"llama.attention.head_count_kv", c.n_kv_heads},
                                         {"llama.context_length", c.seq_len}})
            integer_for_llama(key, value);
        return c;
    }

    // contract section 4's table of keys read with llama.cpp's defaults, and the two that ask for
    // what this architecture does not compute; llama.cpp computes with the same theta and eps
    void read_model_keys(Config &c) {
        const int64_t head_size = c.dim / c.n_heads;
        c.theta = number_key("llama.rope.freq_base", 10000.0);
        if (!std::isfinite(c.theta) || !(c.theta > 1.0))
            bad_file(path_, "key llama.rope.freq_base=" + number_text(c.theta) + " is out of range (finite, > 1)");
        c.eps = number_key("llama.attention.layer_norm_rms_epsilon", 1e-5);
        if (!std::isfinite(c.eps) || !(c.eps > 0.0) || !(c.eps < 1.0))
            bad_file(path_, "key llama.attention.layer_norm_rms_epsilon=" + number_text(c.eps) +
                                " is out of range (finite, > 0 and < 1)");
        for (const auto &[key, value] : {std::pair<const char *, double>{"llama.rope.freq_base", c.theta},
                                         {"llama.attention.layer_norm_rms_epsilon", c.eps}}) {
            const Value *v = find(key);
            if (!v || v->type != G_F32) overrides_.push_back({key, true, value});  // llama.cpp requires eps
        }
        const int64_t rot = int_key("llama.rope.dimension_count", &head_size);
        if (rot != head_size)
            bad_file(path_, "key llama.rope.dimension_count=" + std::to_string(rot) + " must equal head_size=" +
                                std::to_string(head_size) + " (partial rotation is not this architecture)");
        integer_for_llama("llama.rope.dimension_count", rot);
        if (const Value *v = find("llama.rope.scaling.type")) {
            if (v->type != G_STRING) bad_file(path_, "key llama.rope.scaling.type must be a string");
            if (string_at(v->offset) != "none")
                bad_file(path_, "key llama.rope.scaling.type is '" + shown(string_at(v->offset)) +
                                    "': only 'none' is this architecture");
        }
        if (const Value *v = find("llama.rope.scaling.factor"))
            if (v->type != G_F32) bad_file(path_, "key llama.rope.scaling.factor must be a float32 (llama.cpp refuses other types)");
        const int64_t zero = 0;
        for (const char *key : {"llama.expert_count", "llama.expert_used_count"}) {
            const int64_t n = int_key(key, &zero);
            if (n != 0) bad_file(path_, "key " + std::string(key) + "=" + std::to_string(n) + ": mixture-of-experts is not this architecture");
            integer_for_llama(key, n);
        }
        if (const Value *v = find("llama.vocab_size"))
            if (!is_integer_type(v->type)) bad_file(path_, "key llama.vocab_size must be an integer");
        integer_for_llama("llama.vocab_size", c.vocab_size);  // llama.cpp only names the model by it
        const int64_t bos_default = 1, eos_default = 2;
        c.bos = int_key("tokenizer.ggml.bos_token_id", &bos_default);
        c.eos = int_key("tokenizer.ggml.eos_token_id", &eos_default);
        for (const auto &[key, id] : {std::pair<const char *, int64_t>{"tokenizer.ggml.bos_token_id", c.bos},
                                      {"tokenizer.ggml.eos_token_id", c.eos}}) {
            if (id < 0 || id >= c.vocab_size)
                bad_file(path_, "key " + std::string(key) + "=" + std::to_string(id) + " is outside the vocabulary [0, " +
                                    std::to_string(c.vocab_size) + ")");
            integer_for_llama(key, id);
        }
    }

    // contract section 4, step 3: before anything is sized from these values
    void check_config(const Config &c) const {
        const std::pair<const char *, int64_t> fields[] = {
            {"dim", c.dim}, {"hidden_dim", c.hidden_dim}, {"n_layers", c.n_layers}, {"n_heads", c.n_heads},
            {"n_kv_heads", c.n_kv_heads}, {"vocab_size", c.vocab_size}, {"seq_len", c.seq_len}};
        for (const auto &[name, value] : fields)
            if (value <= 0) bad_file(path_, "header value " + std::string(name) + "=" + std::to_string(value) + " must be positive");
        const std::pair<const char *, std::pair<int64_t, int64_t>> limits[] = {
            {"dim", {c.dim, 65536}}, {"hidden_dim", {c.hidden_dim, 262144}}, {"n_layers", {c.n_layers, 1024}},
            {"vocab_size", {c.vocab_size, 1 << 20}}, {"seq_len", {c.seq_len, 65536}}, {"n_heads", {c.n_heads, c.dim}}};
        for (const auto &[name, vl] : limits)
            if (vl.first > vl.second)
                bad_file(path_, "header value " + std::string(name) + "=" + std::to_string(vl.first) + " exceeds the limit " +
                                    std::to_string(vl.second));
        if (c.dim % c.n_heads)
            bad_file(path_, "dim=" + std::to_string(c.dim) + " is not a multiple of n_heads=" + std::to_string(c.n_heads));
        if ((c.dim / c.n_heads) % 2) bad_file(path_, "head_size=" + std::to_string(c.dim / c.n_heads) + " must be even for RoPE");
        if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads)
            bad_file(path_, "n_heads=" + std::to_string(c.n_heads) + " is not a multiple of n_kv_heads=" + std::to_string(c.n_kv_heads));
        if (c.n_layers > LLAMA_CPP_MAX_LAYERS)
            bad_file(path_, "n_layers=" + std::to_string(c.n_layers) + " exceeds llama.cpp's limit of " +
                                std::to_string(LLAMA_CPP_MAX_LAYERS) + " layers");
    }

    // every tensor F32, named and shaped as the model's, aligned, inside the file, not overlapping
    void check_tensors(const Config &c) const {
        const uint64_t d = uint64_t(c.dim), h = uint64_t(c.hidden_dim), v = uint64_t(c.vocab_size);
        const uint64_t kv = uint64_t(c.n_kv_heads * (c.dim / c.n_heads));
        std::map<std::string, std::vector<uint64_t>> expected = {  // GGUF dims: innermost first
            {"token_embd.weight", {d, v}}, {"output_norm.weight", {d}}, {"output.weight", {d, v}}};
        for (int64_t l = 0; l < c.n_layers; l++) {
            std::string b = "blk." + std::to_string(l) + ".";
            expected[b + "attn_norm.weight"] = {d};
            expected[b + "attn_q.weight"] = {d, d};
            expected[b + "attn_k.weight"] = {d, kv};
            expected[b + "attn_v.weight"] = {d, kv};
            expected[b + "attn_output.weight"] = {d, d};
            expected[b + "ffn_norm.weight"] = {d};
            expected[b + "ffn_gate.weight"] = {d, h};
            expected[b + "ffn_down.weight"] = {h, d};
            expected[b + "ffn_up.weight"] = {d, h};
        }
        const uint64_t data_start = (uint64_t(infos_end_) + alignment_ - 1) / alignment_ * alignment_;
        const uint64_t size = file_.size();
        std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [offset, end) within the data section
        std::set<std::string> present;
        for (const TensorInfo &t : tensors_) {
            std::string what = "tensor " + shown(t.name);
            auto it = expected.find(t.name);
            if (it == expected.end()) bad_file(path_, what + " is not one of the model's tensors (llama.cpp refuses it)");
            // F32 (0); for matrices also Q8_0 (8), rows a whole number of 32-value blocks of 34 bytes
            // (fp16 scale, 32 int8), and F16 (1) or BF16 (30), 2 bytes a value: the contract's
            // "GGUF Q8_0" and "GGUF F16 and BF16" sections
            const bool q8 = t.type == 8, half = t.type == 1 || t.type == 30;
            if (t.type != 0 && !q8 && !half)
                bad_file(path_, what + " has type " + std::to_string(t.type) +
                                    "; only F32 (0), F16 (1), BF16 (30) and Q8_0 (8) are supported");
            if (t.dims != it->second) bad_file(path_, what + " does not have the model's shape");
            if ((q8 || half) && t.dims.size() != 2)
                bad_file(path_, what + " is a norm: " + (q8 ? "Q8_0" : t.type == 1 ? "F16" : "BF16") +
                                    " is for matrices only (norms are F32)");
            if (q8 && t.dims[0] % 32)
                bad_file(path_, what + " has rows of " + std::to_string(t.dims[0]) + " values, not a multiple of 32 (Q8_0)");
            // the expected shape, bounded by the header limits: no product overflows 64 bits
            uint64_t bytes = q8 ? t.dims[1] * (t.dims[0] / 32) * 34 : half ? 2 : 4;
            if (!q8)
                for (uint64_t n : t.dims) bytes *= n;
            if (t.offset % alignment_)
                bad_file(path_, what + " offset " + std::to_string(t.offset) + " is not a multiple of general.alignment=" +
                                    std::to_string(alignment_));
            if (data_start > size || t.offset > size - data_start || bytes > size - data_start - t.offset)
                bad_file(path_, what + " lies outside the file");
            ranges.push_back({t.offset, t.offset + bytes});
            present.insert(t.name);
        }
        for (const auto &[name, dims] : expected)
            if (name != "output.weight" && !present.count(name)) bad_file(path_, "missing tensor " + name);
        std::sort(ranges.begin(), ranges.end());
        for (size_t i = 1; i < ranges.size(); i++)
            if (ranges[i].first < ranges[i - 1].second) bad_file(path_, "tensor data overlap (llama.cpp refuses it)");
    }

    // the tokenizer arrays: contract section 4 step 5, and what llama.cpp needs to load them
    Vocab read_vocab(const Config &c) const {
        const Value *tokens = find("tokenizer.ggml.tokens");
        const Value *scores = find("tokenizer.ggml.scores");
        const uint64_t n = uint64_t(c.vocab_size);
        if (!scores || scores->type != G_ARRAY || (scores->elem_type != G_F32 && scores->elem_type != G_I32) ||
            scores->count != n)
            bad_file(path_, "tokenizer.ggml.scores missing, not float32 (or int32), or not one per token");
        const Value *types = find("tokenizer.ggml.token_type");
        if (types && (types->type != G_ARRAY || types->elem_type != G_I32 || types->count < n))
            bad_file(path_, "tokenizer.ggml.token_type must be an int32 array with one entry per token");
        const bool typed = types && types->count == n;  // as the reference: a longer array is not used

        Vocab vocab;
        vocab.pieces.reserve(size_t(n));
        vocab.scores.reserve(size_t(n));
        std::unordered_map<std::string, uint64_t> texts;  // llama.cpp aborts on a repeated text
        size_t off = tokens->offset;
        for (uint64_t i = 0; i < n; i++) {
            std::string_view text = string_at(off);
            off += 8 + text.size();
            // the text as llama.cpp keys it: a C string (cut at a NUL), an empty one renamed
            std::string key(text.substr(0, text.find('\0')));
            if (key.empty()) key = "[EMPTY_" + std::to_string(i) + "]";
            auto [it, fresh] = texts.emplace(std::move(key), i);
            if (!fresh)
                bad_file(path_, "token " + std::to_string(i) + " repeats the text of token " + std::to_string(it->second) +
                                    " (llama.cpp cannot load such a vocabulary)");
            float score = scores->elem_type == G_F32 ? at<float>(scores->offset + 4 * i)
                                                     : float(at<int32_t>(scores->offset + 4 * i));
            if (!std::isfinite(score)) bad_file(path_, "token " + std::to_string(i) + " has a score that is not finite");
            int32_t type = typed ? at<int32_t>(types->offset + 4 * i) : -1;
            vocab.pieces.push_back(piece_from_gguf(text, type));
            vocab.scores.push_back(score);
        }
        if (n < 259) bad_file(path_, "a vocabulary of " + std::to_string(n) + " tokens has no room for the 256 byte tokens");
        if (std::find(vocab.pieces.begin(), vocab.pieces.end(), " ") == vocab.pieces.end())
            bad_file(path_, "the vocabulary has no ' ' piece for the dummy prefix");
        return vocab;
    }

    // run.c's tokenizer.bin spelling: BOS and EOS are "\n<s>\n" and "\n</s>\n", a space is a space
    static std::string piece_from_gguf(std::string_view text, int32_t type) {
        if (type == 3 && text == "<s>") return "\n<s>\n";
        if (type == 3 && text == "</s>") return "\n</s>\n";
        std::string piece;
        for (size_t i = 0; i < text.size(); i++) {
            if (text.compare(i, 3, "\xe2\x96\x81") == 0) {
                piece += ' ';
                i += 2;
            } else {
                piece += text[i];
            }
        }
        return piece;
    }
};

// ----------------------------------------------------------------------------
// tokenizer (contract section 5)

struct Tokenizer {
    const Vocab *vocab;
    std::unordered_map<std::string, int> lookup;  // piece -> its lowest id
    int space_id;
    int bos;  // the file's BOS id: encode's first token, the stop rule, decode's space rule
};

static Tokenizer build_tokenizer(const Vocab &vocab, int bos) {
    Tokenizer t{&vocab, {}, -1, bos};
    t.lookup.reserve(vocab.pieces.size());
    for (size_t i = 0; i < vocab.pieces.size(); i++) t.lookup.emplace(vocab.pieces[i], int(i));
    t.space_id = t.lookup.at(" ");
    return t;
}

static int lookup(const Tokenizer &t, const std::string &piece) {
    auto it = t.lookup.find(piece);
    return it == t.lookup.end() ? -1 : it->second;
}

static std::vector<int> encode(const Tokenizer &t, const std::string &text) {
    std::vector<int> tokens = {t.bos};
    if (!text.empty()) tokens.push_back(t.space_id);
    // UTF-8 groups of up to 4 bytes; a group that is no piece falls back to its bytes
    for (size_t i = 0; i < text.size();) {
        size_t len = 1;
        while (i + len < text.size() && (uint8_t(text[i + len]) & 0xC0) == 0x80 && len < 4) len++;
        int id = lookup(t, text.substr(i, len));
        if (id >= 0) {
            tokens.push_back(id);
        } else {
            for (size_t k = 0; k < len; k++) tokens.push_back(uint8_t(text[i + k]) + 3);
        }
        i += len;
    }
    // merge the best-scoring adjacent pair until none merges (leftmost wins ties)
    const auto &pieces = t.vocab->pieces;
    const auto &scores = t.vocab->scores;
    std::string pair;
    for (;;) {
        float best_score = -INFINITY;
        int best_id = -1;
        size_t best_i = 0;
        for (size_t i = 0; i + 1 < tokens.size(); i++) {
            pair = pieces[size_t(tokens[i])];
            pair += pieces[size_t(tokens[i + 1])];
            int id = lookup(t, pair);
            if (id >= 0 && scores[size_t(id)] > best_score) {
                best_score = scores[size_t(id)];
                best_id = id;
                best_i = i;
            }
        }
        if (best_id < 0) return tokens;
        tokens[best_i] = best_id;
        tokens.erase(tokens.begin() + long(best_i) + 1);
    }
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static std::string decode(const Tokenizer &t, int prev, int token) {
    std::string piece = t.vocab->pieces[size_t(token)];
    if (prev == t.bos && !piece.empty() && piece[0] == ' ') piece.erase(0, 1);
    if (piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && piece[5] == '>' && hex_digit(piece[3]) >= 0 &&
        hex_digit(piece[4]) >= 0)
        return std::string(1, char(hex_digit(piece[3]) * 16 + hex_digit(piece[4])));
    return piece;
}

// run.c's safe_printf: nothing for an empty piece or a lone byte that is neither printable nor space
static void safe_print(const std::string &piece) {
    if (piece.empty()) return;
    if (piece.size() == 1) {
        unsigned char b = uint8_t(piece[0]);
        if (!((b >= 0x20 && b <= 0x7E) || b == '\t' || b == '\n' || b == '\v' || b == '\f' || b == '\r')) return;
    }
    fwrite(piece.data(), 1, piece.size(), stdout);
    fflush(stdout);
}

// ----------------------------------------------------------------------------
// sampler (contract section 7): llama2.c's xorshift RNG, temperature, softmax, top-p

struct Sampler {
    float temperature;
    double topp;
    uint64_t rng_state;
    std::vector<std::pair<float, int>> candidates;  // top-p scratch: (probability, id)
};

static uint32_t random_u32(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return uint32_t((*state * 0x2545F4914F6CDD1Dull) >> 32);
}

static float random_f32(uint64_t *state) { return float(random_u32(state) >> 8) / 16777216.0f; }

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static void softmax(float *x, int n) {
    float max = x[0];
    for (int i = 1; i < n; i++) max = std::max(max, x[i]);
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = std::exp(x[i] - max);
        sum += x[i];
    }
    for (int i = 0; i < n; i++) x[i] /= sum;
}

static int sample_mult(const float *probs, int n, float coin) {
    float cdf = 0.0f;
    for (int i = 0; i < n; i++) {
        cdf += probs[i];
        if (coin < cdf) return i;
    }
    return n - 1;
}

static int sample_topp(Sampler &s, const float *probs, int n, float coin) {
    const float topp = float(s.topp);
    const float cutoff = (1.0f - topp) / float(n - 1);  // ids below it cannot be in the nucleus
    auto &c = s.candidates;
    c.clear();
    for (int i = 0; i < n; i++)
        if (probs[i] >= cutoff) c.push_back({probs[i], i});
    if (c.empty()) return argmax(probs, n);
    std::sort(c.begin(), c.end(), [](const auto &a, const auto &b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
    // the shortest prefix whose probability exceeds topp (the whole list if none does)
    size_t last = c.size() - 1;
    float cdf = 0.0f;
    for (size_t i = 0; i < c.size(); i++) {
        cdf += c[i].first;
        if (cdf > topp) {
            last = i;
            break;
        }
    }
    const float r = coin * cdf;
    float acc = 0.0f;
    for (size_t i = 0; i <= last; i++) {
        acc += c[i].first;
        if (r < acc) return c[i].second;
    }
    return c[last].second;
}

static int sample(Sampler &s, float *logits, int n) {
    if (s.temperature == 0.0f) return argmax(logits, n);
    for (int i = 0; i < n; i++) logits[i] /= s.temperature;
    softmax(logits, n);
    const float coin = random_f32(&s.rng_state);
    if (s.topp <= 0 || s.topp >= 1) return sample_mult(logits, n, coin);
    return sample_topp(s, logits, n, coin);
}

// ----------------------------------------------------------------------------
// llama.cpp: model, context and one decode step

// llama.cpp's and ggml's log: kept off stderr; the first error (the cause, before the messages
// that report its consequences) is kept for the one-line message
static std::string g_first_error;

static void quiet_log(ggml_log_level level, const char *text, void *) {
    if (level != GGML_LOG_LEVEL_ERROR || !text || !g_first_error.empty()) return;
    std::string line(text);
    while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
    const std::string marker = "error loading model: ";
    size_t at = line.find(marker);
    g_first_error = at == std::string::npos ? line : line.substr(at + marker.size());
}

static std::string llama_error(const char *fallback) {
    return g_first_error.empty() ? fallback : "llama.cpp: " + shown(g_first_error, 200);
}

struct Engine {
    llama_model *model = nullptr;
    llama_context *ctx = nullptr;
    llama_batch batch{};  // room for n_batch positions
    bool has_batch = false;
    int n_vocab = 0;
    int n_batch = 1;
};

static void free_engine(Engine &e) {
    if (e.has_batch) llama_batch_free(e.batch);
    if (e.ctx) llama_free(e.ctx);
    if (e.model) llama_model_free(e.model);
    e = Engine{};
}

// positions pos0 .. pos0+n-1 in one llama_decode (n <= n_batch): llama.cpp's own batched
// prefill; logits for every row, or for the last one only
static void decode_many(Engine &e, const int *tokens, int n, int pos0, bool all_logits) {
    e.batch.n_tokens = n;
    for (int i = 0; i < n; i++) {
        e.batch.token[i] = tokens[i];
        e.batch.pos[i] = pos0 + i;
        e.batch.n_seq_id[i] = 1;
        e.batch.seq_id[i][0] = 0;
        e.batch.logits[i] = all_logits || i == n - 1;
    }
    int32_t rc = llama_decode(e.ctx, e.batch);
    if (rc != 0) fail(EXIT_RUNTIME, "llama_decode failed with status " + std::to_string(rc) + " at position " + std::to_string(pos0));
}

static void decode_one(Engine &e, int token, int pos) { decode_many(e, &token, 1, pos, true); }

// The weights stay in llama.cpp's own mmap of the file. The KV cache and attention depend on the
// run: a generation runs llama.cpp as its users do (llama_context_default_params: F16 K/V cache,
// flash attention "auto", as llama-cli and llama-bench), so the speed row is llama.cpp's own; a
// logits run, and a generation under POLYLLAMA_LLAMACPP_EXACT=1, keep K and V in F32 with flash
// attention off (plain F32 KQ matmul and softmax), since F16 rounds K and V beyond the fp32
// tolerance and can move a seeded sample. Threads: n_threads = n_threads_batch = -j, ggml's
// OpenMP team with OpenMP's and llama.cpp's own defaults.
static bool exact_generation() {
    const char *v = getenv("POLYLLAMA_LLAMACPP_EXACT");
    return v && v[0] && strcmp(v, "0") != 0;
}

// AMX-INT8 (CPUID leaf 7, EDX bit 25): where it is present, llama.cpp's default "extra" buffer
// type puts Q8_0 matrices in its AMX backend, whose matrix product crashes this release on any
// batch longer than one position (segfault in ggml_backend_amx_mul_mat, llama.cpp issue #20824;
// llama-bench crashes the same way at -p with its default --repack 1). So on such a CPU the
// driver turns the extra buffer types off, as llama-bench's --repack 0 does, and llama.cpp
// computes with its regular CPU kernels; elsewhere its defaults stand.
static bool cpu_has_amx_int8() {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d >> 25 & 1u);
#else
    return false;
#endif
}

static Engine build_engine(const std::string &path, const Checkpoint &ck, int64_t rows, int threads, int batch,
                           bool exact) {
    const Config &c = ck.c;
    Engine e;
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    std::vector<llama_model_kv_override> overrides;
    for (const KeyOverride &o : ck.overrides) {
        llama_model_kv_override kv{};
        snprintf(kv.key, sizeof kv.key, "%s", o.key.c_str());
        kv.tag = o.is_float ? LLAMA_KV_OVERRIDE_TYPE_FLOAT : LLAMA_KV_OVERRIDE_TYPE_INT;
        if (o.is_float) kv.val_f64 = o.value;
        else kv.val_i64 = int64_t(o.value);
        overrides.push_back(kv);
    }
    overrides.push_back(llama_model_kv_override{});  // an empty key ends the list
    mp.kv_overrides = overrides.size() > 1 ? overrides.data() : nullptr;
    if (cpu_has_amx_int8()) mp.use_extra_bufts = false;
    e.model = llama_model_load_from_file(path.c_str(), mp);
    if (!e.model) bad_file(path, llama_error("llama.cpp cannot load this GGUF file"));
    llama_context_params cp = llama_context_default_params();
    // the KV cache holds the positions this run reaches (contract section 4, validation rule 3),
    // not the model's whole context; llama.cpp rounds the cells up to its own 256-cell padding
    cp.n_ctx = uint32_t(rows);
    // the contract's RoPE is unscaled; "none" also keeps a file's llama.rope.scaling.factor inert
    cp.rope_scaling_type = LLAMA_ROPE_SCALING_TYPE_NONE;
    cp.n_seq_max = 1;
    cp.n_threads = cp.n_threads_batch = threads;
    // -b: the batch of a prefill is one llama_decode of that many positions, computed in one
    // micro-batch (llama-bench's pp512 with its default n_ubatch of 512 is the same shape)
    cp.n_batch = cp.n_ubatch = uint32_t(std::min<int64_t>(batch, rows));
    if (exact) {
        cp.type_k = cp.type_v = GGML_TYPE_F32;
        cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    cp.embeddings = false;
    cp.no_perf = true;
    e.ctx = llama_init_from_model(e.model, cp);
    if (!e.ctx) {
        free_engine(e);
        fail(EXIT_RUNTIME, llama_error("llama.cpp cannot create a context (out of memory?)"));
    }
    e.n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(e.model));
    if (e.n_vocab != c.vocab_size) {
        free_engine(e);
        bad_file(path, "llama.cpp reads " + std::to_string(e.n_vocab) + " tokens, the file lists " + std::to_string(c.vocab_size));
    }
    e.n_batch = int(std::min<int64_t>(batch, rows));
    e.batch = llama_batch_init(e.n_batch, 0, 1);
    e.has_batch = true;
    // llama.cpp's own warm-up (as llama-cli's): the first decode starts the OpenMP team and
    // faults the weights in; the cache is cleared after it, so it leaves nothing behind
    decode_one(e, int(c.bos), 0);
    llama_memory_clear(llama_get_memory(e.ctx), true);
    return e;
}

static const float *forward(Engine &e, int token, int pos) {
    decode_one(e, token, pos);
    const float *logits = llama_get_logits_ith(e.ctx, -1);
    if (!logits) fail(EXIT_RUNTIME, "llama.cpp returned no logits at position " + std::to_string(pos));
    return logits;
}

// ----------------------------------------------------------------------------
// generation and logits runs, and the statistics line (contract sections 2 and 3)

struct RunStats {
    size_t prompt_tokens = 0, generated_tokens = 0, positions = 0, prefill_positions = 0;
    double ttft_s = 0, prefill_s = 0, decode_s = 0;
};

// positions 0 .. n-1 in batches of at most n_batch (contract section 2); `rows` receives every
// row's logits when given, and the return value is the last position's
static const float *prefill(Engine &e, const std::vector<int> &tokens, size_t n, std::vector<float> *rows) {
    const float *last = nullptr;
    for (size_t s = 0; s < n; s += size_t(e.n_batch)) {
        int len = int(std::min(n - s, size_t(e.n_batch)));
        decode_many(e, tokens.data() + s, len, int(s), rows != nullptr);
        if (rows) {
            for (int i = 0; i < len; i++) {
                const float *out = llama_get_logits_ith(e.ctx, i);
                if (!out) fail(EXIT_RUNTIME, "llama.cpp returned no logits at position " + std::to_string(s + size_t(i)));
                rows->insert(rows->end(), out, out + e.n_vocab);
            }
        }
        last = llama_get_logits_ith(e.ctx, -1);
        if (!last) fail(EXIT_RUNTIME, "llama.cpp returned no logits at position " + std::to_string(s + size_t(len) - 1));
    }
    return last;
}

static RunStats generate(Engine &e, const Tokenizer &tok, Sampler &sampler, const std::string &prompt, int steps,
                         bool ignore_bos) {
    std::vector<int> prompt_tokens = encode(tok, prompt);
    RunStats st;
    st.prompt_tokens = prompt_tokens.size();
    std::vector<float> logits(size_t(e.n_vocab));
    int token = prompt_tokens[0];
    auto start = std::chrono::steady_clock::now(), first = start;
    const size_t n_prefill = std::min(prompt_tokens.size(), size_t(steps));
    const float *last = prefill(e, prompt_tokens, n_prefill, nullptr);
    st.prefill_positions = n_prefill;
    st.prefill_s = seconds_since(start);
    bool sampled = false;
    for (int pos = 0; pos < steps; pos++) {
        // the prompt's positions ran in the prefill; the last one's logits are `last`
        const float *out = size_t(pos) + 1 == n_prefill ? last : size_t(pos) >= n_prefill ? forward(e, token, pos) : nullptr;
        st.positions++;
        int next;
        if (size_t(pos) + 1 < prompt_tokens.size()) {
            next = prompt_tokens[size_t(pos) + 1];
        } else {
            std::copy(out, out + e.n_vocab, logits.begin());
            next = sample(sampler, logits.data(), e.n_vocab);
            st.generated_tokens++;
            if (!sampled) {
                first = std::chrono::steady_clock::now();
                sampled = true;
            }
        }
        if (next == tok.bos && !ignore_bos) break;
        safe_print(decode(tok, token, next));
        token = next;
    }
    auto end = std::chrono::steady_clock::now();
    st.ttft_s = std::chrono::duration<double>((sampled ? first : end) - start).count();
    st.decode_s = sampled ? std::chrono::duration<double>(end - first).count() : 0.0;
    fwrite("\n", 1, 1, stdout);
    fflush(stdout);
    return st;
}

static RunStats logits_run(Engine &e, const std::vector<int64_t> &ids, const std::string &output) {
    RunStats st;
    st.prompt_tokens = st.positions = ids.size();
    std::vector<float> rows;
    rows.reserve(ids.size() * size_t(e.n_vocab));
    std::vector<int> tokens(ids.begin(), ids.end());
    auto start = std::chrono::steady_clock::now();
    prefill(e, tokens, tokens.size(), &rows);
    st.ttft_s = st.prefill_s = seconds_since(start);
    st.prefill_positions = tokens.size();
    FILE *f = fopen(output.c_str(), "wb");
    if (!f) fail(EXIT_RUNTIME, output + ": cannot write: " + strerror(errno));
    size_t written = fwrite(rows.data(), sizeof(float), rows.size(), f);
    int err = written == rows.size() ? 0 : errno;
    if (fclose(f) != 0 && !err) err = errno;
    if (written != rows.size() || err) fail(EXIT_RUNTIME, output + ": cannot write: " + strerror(err ? err : EIO));
    return st;
}

static void print_stats(int threads, int batch, double load_s, const RunStats &st) {
    double tok_s = st.generated_tokens > 1 && st.decode_s > 0 ? double(st.generated_tokens - 1) / st.decode_s : 0.0;
    double prefill_tok_s = st.prefill_s > 0 ? double(st.prefill_positions) / st.prefill_s : 0.0;
    fprintf(stderr,
            "polyllama-stats: {\"port\":\"%s\",\"prompt_tokens\":%zu,\"generated_tokens\":%zu,\"positions\":%zu,"
            "\"threads\":%d,\"batch\":%d,\"load_s\":%.6f,\"ttft_s\":%.6f,\"prefill_s\":%.6f,\"prefill_tok_s\":%.4f,"
            "\"decode_s\":%.6f,\"decode_tok_s\":%.4f}\n",
            PORT, st.prompt_tokens, st.generated_tokens, st.positions, threads, batch, load_s, st.ttft_s, st.prefill_s,
            prefill_tok_s, st.decode_s, tok_s);
}

// ----------------------------------------------------------------------------
// main

static int run(int argc, char **argv, std::chrono::steady_clock::time_point t0) {
    Args args = parse_args(argc, argv);
    Checkpoint ck;
    {
        MappedFile file(args.checkpoint);
        ck = GgufReader(args.checkpoint, file).read();
    }
    const Config &c = ck.c;
    if (args.logits_mode) {
        bool ok = !args.ids.empty() && int64_t(args.ids.size()) <= c.seq_len;
        for (int64_t id : args.ids) ok = ok && id >= 0 && id < c.vocab_size;
        if (!ok)
            usage_error("-k needs 1.." + std::to_string(c.seq_len) + " ids in [0, " + std::to_string(c.vocab_size) + ")");
    }
    Tokenizer tok = build_tokenizer(ck.vocab, int(c.bos));
    const int steps = args.steps == 0 || args.steps > uint64_t(c.seq_len) ? int(c.seq_len) : int(args.steps);
    // the positions the run can reach: what the KV cache holds (contract section 4, rule 3)
    const int64_t rows = args.logits_mode ? int64_t(args.ids.size()) : int64_t(steps);
    const int64_t kv_bytes = c.n_layers * rows * (c.n_kv_heads * (c.dim / c.n_heads)) * 2 * 4;
    if (kv_bytes > (int64_t(4) << 30))
        bad_file(args.checkpoint, "KV cache of " + std::to_string(kv_bytes) + " bytes for " + std::to_string(rows) +
                                      " positions exceeds the 4 GiB limit");

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    const int batch = args.batch > uint64_t(c.seq_len) ? int(c.seq_len) : int(args.batch);
    Engine engine = build_engine(args.checkpoint, ck, rows, args.threads, batch, args.logits_mode || exact_generation());
    double load_s = seconds_since(t0);

    RunStats st;
    try {
        if (args.logits_mode) {
            st = logits_run(engine, args.ids, args.output);
        } else {
            Sampler sampler{args.temperature, args.topp, args.seed > 0 ? args.seed : uint64_t(time(nullptr)), {}};
            st = generate(engine, tok, sampler, args.prompt, steps, args.ignore_bos);
        }
    } catch (...) {
        free_engine(engine);
        llama_backend_free();
        throw;
    }
    free_engine(engine);
    llama_backend_free();
    print_stats(args.threads, batch, load_s, st);
    return 0;
}

int main(int argc, char **argv) {
    auto t0 = std::chrono::steady_clock::now();
    signal(SIGPIPE, SIG_IGN);  // stdout closed early (| head): writes fail quietly
    try {
        return run(argc, argv, t0);
    } catch (const Failure &f) {
        fprintf(stderr, "error: %s\n", f.message.c_str());
        if (f.code == EXIT_USAGE) fprintf(stderr, "%s\n", USAGE);
        return f.code;
    } catch (const std::bad_alloc &) {
        fprintf(stderr, "error: out of memory\n");
        return EXIT_RUNTIME;
    } catch (const std::exception &e) {
        fprintf(stderr, "error: %s\n", shown(e.what(), 200).c_str());
        return EXIT_RUNTIME;
    }
}
