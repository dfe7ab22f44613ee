// polyllama C++ port: the model files. llama2.c checkpoints (v0, v1), GGUF (v2/v3; norms F32,
// matrices F32, F16, BF16 or Q8_0; the model's RoPE base, norm epsilon and BOS/EOS ids from its
// keys) and tokenizer.bin.
//
// Sections, top to bottom: file access (the file's bytes in memory, a bounded reader), config,
// the llama2.c header (one path for v0 and v1) and tensor layouts, the GGUF reader (preamble, kv
// section, tensor infos, config, tensor table -> weights, embedded vocabulary), tokenizer.bin and
// the rules every tokenizer meets. The rules are docs/port-contract.md's, sections 4 and 5.

#include "formats.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>
#include <utility>

namespace llama2 {

// ----------------------------------------------------------------------------
// File access

namespace {

// Closes the descriptor on every way out of the constructor; the bytes outlive it either way.
struct FileDescriptor {
    int fd;
    ~FileDescriptor() {
        if (fd >= 0) ::close(fd);
    }
};

void* map_whole_file(const std::string& path, int fd, std::size_t size) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
        int err = errno;
        throw FormatError(path, std::string("cannot map: ") + std::strerror(err));
    }
    return p;
}

#if defined(__linux__) && defined(MADV_HUGEPAGE)
// Where the kernel offers transparent huge pages only on request (Linux's usual "madvise"
// setting), a file mapping stays in 4 KiB pages, and a forward pass that streams hundreds of MB
// of weights misses the TLB on nearly every page. An anonymous copy asked for huge pages removes
// those misses (measured in the port's README, "Performance levers"). POLYLLAMA_HUGEPAGES=0
// keeps the plain mapping, for that before/after comparison.
bool want_huge_pages() {
    const char* v = std::getenv("POLYLLAMA_HUGEPAGES");
    return !(v && std::string_view(v) == "0");
}

// read(), not a copy out of a file mapping, so that the file's bytes are in memory once
void* read_into_huge_pages(const std::string& path, int fd, std::size_t size) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        int err = errno;
        throw FormatError(path, "cannot allocate " + std::to_string(size) + " bytes: " + std::strerror(err));
    }
    ::madvise(p, size, MADV_HUGEPAGE);  // a refusal only costs speed
    auto* dst = static_cast<std::uint8_t*>(p);
    for (std::size_t got = 0; got < size;) {
        ssize_t n = ::pread(fd, dst + got, size - got, static_cast<off_t>(got));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            std::string why = n < 0 ? std::strerror(errno) : "unexpected end of file";
            ::munmap(p, size);
            throw FormatError(path, "cannot read: " + why);
        }
        got += static_cast<std::size_t>(n);
    }
    ::mprotect(p, size, PROT_READ);  // the weights stay read-only, as in the file mapping
    return p;
}
#endif

}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) {
    FileDescriptor file{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
    if (file.fd < 0) throw FormatError(path, std::string("cannot open: ") + std::strerror(errno));
    struct stat st {};
    if (::fstat(file.fd, &st) != 0) throw FormatError(path, std::string("cannot open: ") + std::strerror(errno));
    if (S_ISDIR(st.st_mode)) throw FormatError(path, "cannot open: is a directory");
    if (!S_ISREG(st.st_mode)) throw FormatError(path, "cannot open: not a regular file");
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ == 0) return;  // mmap refuses empty files; an empty span reads as "truncated"
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (want_huge_pages()) {
        data_ = static_cast<const std::uint8_t*>(read_into_huge_pages(path, file.fd, size_));
        resident_ = true;
        return;
    }
#endif
    data_ = static_cast<const std::uint8_t*>(map_whole_file(path, file.fd, size_));
}

MappedFile::~MappedFile() {
    if (data_) ::munmap(const_cast<std::uint8_t*>(data_), size_);
}

void MappedFile::prefault(std::size_t offset, std::size_t length) const {
    if (!data_ || length == 0 || resident_) return;
    long page = ::sysconf(_SC_PAGESIZE);
    std::size_t start = offset / page * page;
    std::size_t len = std::min(size_ - start, offset + length - start);
    void* addr = const_cast<std::uint8_t*>(data_ + start);
#if defined(MADV_POPULATE_READ)
    if (::madvise(addr, len, MADV_POPULATE_READ) == 0) return;
#endif
    ::madvise(addr, len, MADV_WILLNEED);
    volatile std::uint8_t sink = 0;  // touch one byte a page: the kernel maps them now
    for (std::size_t i = 0; i < len; i += page) sink = sink + data_[start + i];
}

// Little-endian reads at any alignment, bounds-checked against the file.
class ByteReader {
public:
    ByteReader(std::string path, std::span<const std::uint8_t> data) : path_(std::move(path)), data_(data) {}

    void need(std::uint64_t n, std::string_view what) const {
        if (n > data_.size() - off_)
            throw FormatError(path_, "truncated or corrupt: " + std::string(what) + " runs past the end of the file");
    }
    template <class T>
    T read(std::string_view what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, data_.data() + off_, sizeof(T));
        off_ += sizeof(T);
        return v;
    }
    std::string_view string(std::string_view what) {
        auto n = read<std::uint64_t>(what);
        need(n, what);
        std::string_view s(reinterpret_cast<const char*>(data_.data() + off_), n);
        off_ += n;
        return s;
    }
    void skip(std::uint64_t n, std::string_view what) {
        need(n, what);
        off_ += n;
    }
    std::size_t offset() const { return off_; }
    const std::string& path() const { return path_; }
    void seek(std::size_t off) { off_ = off; }
    const std::uint8_t* at(std::size_t off) const { return data_.data() + off; }

private:
    std::string path_;
    std::span<const std::uint8_t> data_;
    std::size_t off_ = 0;
};

// ----------------------------------------------------------------------------
// Config

namespace limits {
constexpr std::int64_t dim = 65536, hidden = 262144, layers = 1024, vocab = 1 << 20, seq = 65536;
constexpr std::int64_t kv_bytes = std::int64_t{4} << 30;
}  // namespace limits

std::int64_t Config::weight_count() const {
    std::int64_t d = dim, h = hidden_dim, L = n_layers, kv = kv_dim(), v = vocab_size;
    std::int64_t per_layer = 2 * d + 2 * d * d + 2 * kv * d + 3 * h * d;
    return v * d + L * per_layer + d + (shared_classifier ? 0 : v * d);
}

std::int64_t Config::kv_cache_bytes(std::int64_t rows) const {
    return std::int64_t{n_layers} * rows * kv_dim() * 2 * 4;
}

std::string Config::describe() const {
    return "dim=" + std::to_string(dim) + " hidden_dim=" + std::to_string(hidden_dim) +
           " n_layers=" + std::to_string(n_layers) + " n_heads=" + std::to_string(n_heads) +
           " n_kv_heads=" + std::to_string(n_kv_heads) + " vocab_size=" + std::to_string(vocab_size) +
           " seq_len=" + std::to_string(seq_len) + " shared_classifier=" + (shared_classifier ? "True" : "False");
}

Config RawConfig::validate(const std::string& path) const {
    const std::pair<const char*, std::int64_t> fields[] = {
        {"dim", dim}, {"hidden_dim", hidden_dim}, {"n_layers", n_layers}, {"n_heads", n_heads},
        {"n_kv_heads", n_kv_heads}, {"vocab_size", vocab_size}, {"seq_len", seq_len}};
    for (auto [name, value] : fields)
        if (value <= 0)
            throw FormatError(path, "header value " + std::string(name) + "=" + std::to_string(value) + " must be positive");
    const std::tuple<const char*, std::int64_t, std::int64_t> bounds[] = {
        {"dim", dim, limits::dim}, {"hidden_dim", hidden_dim, limits::hidden},
        {"n_layers", n_layers, limits::layers}, {"vocab_size", vocab_size, limits::vocab},
        {"seq_len", seq_len, limits::seq}, {"n_heads", n_heads, dim}};
    for (auto [name, value, limit] : bounds)
        if (value > limit)
            throw FormatError(path, "header value " + std::string(name) + "=" + std::to_string(value) +
                                        " exceeds the limit " + std::to_string(limit));
    if (dim % n_heads)
        throw FormatError(path, "dim=" + std::to_string(dim) + " is not a multiple of n_heads=" + std::to_string(n_heads));
    if ((dim / n_heads) % 2)
        throw FormatError(path, "head_size=" + std::to_string(dim / n_heads) + " must be even for RoPE");
    if (n_kv_heads > n_heads || n_heads % n_kv_heads)
        throw FormatError(path, "n_heads=" + std::to_string(n_heads) + " is not a multiple of n_kv_heads=" +
                                    std::to_string(n_kv_heads));
    // the KV cache's 4 GiB limit applies to the positions a run asks for (check_kv_cache), not
    // to the whole context
    return Config{static_cast<int>(dim),     static_cast<int>(hidden_dim), static_cast<int>(n_layers),
                  static_cast<int>(n_heads), static_cast<int>(n_kv_heads), static_cast<int>(vocab_size),
                  static_cast<int>(seq_len), shared_classifier};
}

void check_kv_cache(const Config& c, std::int64_t rows, const std::string& path) {
    const std::int64_t bytes = c.kv_cache_bytes(rows);
    if (bytes > limits::kv_bytes)
        throw FormatError(path, "KV cache of " + std::to_string(bytes) + " bytes for " + std::to_string(rows) +
                                    " positions exceeds the 4 GiB limit");
}


// ----------------------------------------------------------------------------
// llama2.c checkpoints: v0 (legacy) and v1

constexpr std::uint32_t V1_MAGIC = 0x616b3432;
constexpr std::size_t V0_HEADER_BYTES = 28, V1_HEADER_BYTES = 256;

// Hands out consecutive tensors of the flat float array that follows a header.
class TensorCursor {
public:
    explicit TensorCursor(const float* base) : p_(base) {}
    std::span<const float> take(std::int64_t n) {
        std::span<const float> s(p_, static_cast<std::size_t>(n));
        p_ += n;
        return s;
    }
    // One tensor per layer: (n_layers, rows, cols) sliced into n_layers spans.
    template <class Member>
    void take_layers(std::vector<LayerWeights>& layers, Member member, std::int64_t per_layer) {
        for (auto& l : layers) l.*member = take(per_layer);
    }

private:
    const float* p_;
};

static void check_size(const MappedFile& f, std::int64_t expected, const Config& c) {
    auto actual = static_cast<std::int64_t>(f.bytes().size());
    if (actual != expected)
        throw FormatError(f.path(), std::string(actual < expected ? "truncated" : "oversized") + ": file is " +
                                        std::to_string(actual) + " bytes, header (" + c.describe() + ") implies " +
                                        std::to_string(expected));
}

static std::int32_t i32_at(std::span<const std::uint8_t> b, std::size_t off) {
    std::int32_t v;
    std::memcpy(&v, b.data() + off, 4);
    return v;
}

// The header, v0 (7 x int32) or v1 (magic, version, the same 7 x int32, the shared-classifier
// flag, zero padding to 256): the one place either is read, and validated.
static Config read_llama2c_header(const MappedFile& file, bool v1) {
    auto b = file.bytes();
    const std::size_t header_bytes = v1 ? V1_HEADER_BYTES : V0_HEADER_BYTES;
    if (b.size() < header_bytes)
        throw FormatError(file.path(), "truncated: " + std::to_string(b.size()) + " bytes, a v" + (v1 ? "1" : "0") +
                                           " header needs " + std::to_string(header_bytes));
    const std::size_t off = v1 ? 8 : 0;  // the 7 x int32
    RawConfig raw{};
    raw.dim = i32_at(b, off), raw.hidden_dim = i32_at(b, off + 4), raw.n_layers = i32_at(b, off + 8);
    raw.n_heads = i32_at(b, off + 12), raw.n_kv_heads = i32_at(b, off + 16);
    raw.vocab_size = i32_at(b, off + 20), raw.seq_len = i32_at(b, off + 24);
    if (v1) {
        std::int32_t version = i32_at(b, 4);
        if (version != 1)
            throw FormatError(file.path(), "unsupported llama2.c format version " + std::to_string(version) +
                                               " (only 0 and 1 are fp32)");
        std::uint8_t shared = b[36];
        if (shared > 1)
            throw FormatError(file.path(), "shared_classifier flag is " + std::to_string(shared) + ", expected 0 or 1");
        raw.shared_classifier = shared == 1;
    } else {
        raw.shared_classifier = raw.vocab_size > 0;  // negative vocab: an unshared classifier follows
        raw.vocab_size = raw.vocab_size < 0 ? -raw.vocab_size : raw.vocab_size;
    }
    return raw.validate(file.path());
}

// v0: the embedding, the layers' tensors in forward order, rms_final, the RoPE tables, wcls
static void take_v0(TensorCursor& t, const Config& c, TransformerWeights& w, std::int64_t rope_tables) {
    const std::int64_t d = c.dim, h = c.hidden_dim, kv = c.kv_dim(), v = c.vocab_size;
    w.token_embedding = t.take(v * d);
    t.take_layers(w.layers, &LayerWeights::rms_att, d);
    t.take_layers(w.layers, &LayerWeights::wq, d * d);
    t.take_layers(w.layers, &LayerWeights::wk, kv * d);
    t.take_layers(w.layers, &LayerWeights::wv, kv * d);
    t.take_layers(w.layers, &LayerWeights::wo, d * d);
    t.take_layers(w.layers, &LayerWeights::rms_ffn, d);
    t.take_layers(w.layers, &LayerWeights::w1, h * d);
    t.take_layers(w.layers, &LayerWeights::w2, d * h);
    t.take_layers(w.layers, &LayerWeights::w3, h * d);
    w.rms_final = t.take(d);
    t.take(rope_tables);  // legacy RoPE tables: recomputed in forward
    w.wcls = c.shared_classifier ? w.token_embedding : t.take(v * d);
}

// v1 stores the small vectors first, then the matrices
static void take_v1(TensorCursor& t, const Config& c, TransformerWeights& w) {
    const std::int64_t d = c.dim, h = c.hidden_dim, kv = c.kv_dim(), v = c.vocab_size;
    t.take_layers(w.layers, &LayerWeights::rms_att, d);
    t.take_layers(w.layers, &LayerWeights::rms_ffn, d);
    w.rms_final = t.take(d);
    w.token_embedding = t.take(v * d);
    t.take_layers(w.layers, &LayerWeights::wq, d * d);
    t.take_layers(w.layers, &LayerWeights::wk, kv * d);
    t.take_layers(w.layers, &LayerWeights::wv, kv * d);
    t.take_layers(w.layers, &LayerWeights::wo, d * d);
    t.take_layers(w.layers, &LayerWeights::w1, h * d);
    t.take_layers(w.layers, &LayerWeights::w2, d * h);
    t.take_layers(w.layers, &LayerWeights::w3, h * d);
    w.wcls = c.shared_classifier ? w.token_embedding : t.take(v * d);
}

static Model read_llama2c(std::unique_ptr<MappedFile> file, bool v1) {
    Config c = read_llama2c_header(*file, v1);
    const std::size_t header_bytes = v1 ? V1_HEADER_BYTES : V0_HEADER_BYTES;
    // v0 also stores freq_cis_real and freq_cis_imag, (seq_len, head_size / 2) each
    const std::int64_t rope_tables = v1 ? 0 : std::int64_t{c.seq_len} * (c.head_size() / 2) * 2;
    check_size(*file, static_cast<std::int64_t>(header_bytes) + 4 * (c.weight_count() + rope_tables), c);

    Model m{c, nullptr, {}, std::nullopt, v1 ? "v1" : "v0"};
    m.weights.layers.resize(c.n_layers);
    TensorCursor t(reinterpret_cast<const float*>(file->bytes().data() + header_bytes));
    if (v1) take_v1(t, c, m.weights);
    else take_v0(t, c, m.weights, rope_tables);
    m.file = std::move(file);
    return m;
}

// ----------------------------------------------------------------------------
// GGUF (v2, v3; F32 tensors, or F16, BF16, Q8_0 matrices; llama.cpp's `llama` names and keys;
// tokenizer embedded)

namespace gguf {

enum Type : std::uint32_t { U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 };
constexpr std::uint64_t MAX_ENTRIES = 65536;

constexpr std::size_t scalar_size(std::uint32_t t) {
    switch (t) {
        case U8: case I8: case BOOL: return 1;
        case U16: case I16: return 2;
        case U32: case I32: case F32: return 4;
        case U64: case I64: case F64: return 8;
        default: return 0;  // not a scalar
    }
}

// A scalar of any type, widened. Integer keys may be any integer type (bool counts as 0/1,
// as in the reference); a u64 beyond int64 is clamped, which still fails every limit.
struct Scalar {
    bool integral = false;
    std::int64_t integer = 0;
    double number = 0;
};

static Scalar scalar_at(const std::uint8_t* p, std::uint32_t t) {
    auto get = [p]<class T>(T) {
        T v;
        std::memcpy(&v, p, sizeof(T));
        return v;
    };
    auto integer = [](std::int64_t i) { return Scalar{true, i, static_cast<double>(i)}; };
    switch (t) {
        case U8: return integer(get(std::uint8_t{}));
        case I8: return integer(get(std::int8_t{}));
        case U16: return integer(get(std::uint16_t{}));
        case I16: return integer(get(std::int16_t{}));
        case U32: return integer(get(std::uint32_t{}));
        case I32: return integer(get(std::int32_t{}));
        case BOOL: return integer(get(std::uint8_t{}) != 0);
        case I64: return integer(get(std::int64_t{}));
        case U64: {
            std::uint64_t u = get(std::uint64_t{});
            return integer(u > INT64_MAX ? INT64_MAX : static_cast<std::int64_t>(u));
        }
        case F32: return {false, 0, get(float{})};
        case F64: return {false, 0, get(double{})};
        default: return {};
    }
}

struct Value {
    std::uint32_t type = 0;
    Scalar scalar;          // scalar types
    std::string_view text;  // STRING
    // ARRAY: scalar elements stay in the file; string elements are kept for the token list only
    std::uint32_t elem_type = 0;
    std::uint64_t count = 0;
    const std::uint8_t* elems = nullptr;
    std::vector<std::string_view> strings;

    bool scalar_array() const { return type == ARRAY && scalar_size(elem_type) != 0; }
    Scalar element(std::uint64_t i) const { return scalar_at(elems + i * scalar_size(elem_type), elem_type); }
};

static Value read_value(ByteReader& r, std::uint32_t type, std::string_view key, bool keep_strings) {
    Value v;
    v.type = type;
    if (std::size_t size = scalar_size(type)) {
        r.need(size, key);
        v.scalar = scalar_at(r.at(r.offset()), type);
        r.skip(size, key);
    } else if (type == STRING) {
        v.text = r.string(key);
    } else if (type == ARRAY) {
        v.elem_type = r.read<std::uint32_t>(key);
        v.count = r.read<std::uint64_t>(key);
        std::size_t size = scalar_size(v.elem_type);
        if (!size && v.elem_type != STRING)
            throw FormatError(r.path(), std::string(key) + ": unsupported array element type " + std::to_string(v.elem_type));
        std::size_t min_size = size ? size : 8;  // a string is at least its u64 length
        if (v.count > (std::uint64_t{1} << 62) / min_size) r.need(UINT64_MAX, key);
        r.need(v.count * min_size, key);  // so that the count below is bounded by the file
        if (size) {
            v.elems = r.at(r.offset());
            r.skip(v.count * size, key);
        } else {
            if (keep_strings) v.strings.reserve(v.count);
            for (std::uint64_t i = 0; i < v.count; ++i) {
                auto s = r.string(key);
                if (keep_strings) v.strings.push_back(s);
            }
        }
    } else {
        throw FormatError(r.path(), std::string(key) + ": unknown value type " + std::to_string(type));
    }
    return v;
}

struct TensorInfo {
    std::vector<std::uint64_t> dims;  // innermost first
    std::uint32_t type;
    std::uint64_t offset;       // from data_start
    mutable bool used = false;  // bound to a weight: a tensor left unused is not one of the model's
    mutable std::uint64_t nbytes = 0;  // its data's size, once bound
};

// The parsed header: every key/value, every tensor info, and where the tensor data starts.
struct Header {
    std::map<std::string, Value, std::less<>> kv;
    std::map<std::string, TensorInfo, std::less<>> tensors;
    std::uint64_t alignment = 32;
    std::uint64_t data_start = 0;
};

// A name read from the file, fit for a one-line message: other than printable ASCII as \xHH,
// cut short.
static std::string shown(std::string_view name) {
    std::string out;
    for (std::size_t i = 0; i < name.size(); ++i) {
        if (i == 64) return out + "...";
        auto b = static_cast<unsigned char>(name[i]);
        if (b >= 0x20 && b < 0x7F && b != '\\') {
            out.push_back(static_cast<char>(b));
        } else {
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02x", b);
            out += hex;
        }
    }
    return out;
}

// After the magic: the version and the two counts, bounded before anything is sized from them.
static std::pair<std::uint64_t, std::uint64_t> read_preamble(ByteReader& r) {
    r.seek(4);
    auto version = r.read<std::uint32_t>("version");
    if (version != 2 && version != 3)
        throw FormatError(r.path(), "unsupported GGUF version " + std::to_string(version) + " (2 and 3 are read)");
    auto n_tensors = r.read<std::uint64_t>("tensor count");
    auto n_kv = r.read<std::uint64_t>("kv count");
    if (n_tensors > MAX_ENTRIES || n_kv > MAX_ENTRIES)
        throw FormatError(r.path(), "implausible counts: " + std::to_string(n_tensors) + " tensors, " +
                                        std::to_string(n_kv) + " keys (limit 65536)");
    return {n_tensors, n_kv};
}

// The kv section. llama.cpp refuses an empty key and a key that appears twice (tokenizer keys
// included), so this reader does too.
static void read_kv_section(ByteReader& r, std::uint64_t n_kv, Header& h) {
    for (std::uint64_t i = 0; i < n_kv; ++i) {
        std::string key(r.string("key"));
        if (key.empty())
            throw FormatError(r.path(), "key " + std::to_string(i + 1) + " of " + std::to_string(n_kv) + " is empty");
        std::string what = shown(key);
        auto type = r.read<std::uint32_t>("type of " + what);
        Value v = read_value(r, type, what, key == "tokenizer.ggml.tokens");
        if (!h.kv.try_emplace(std::move(key), std::move(v)).second)
            throw FormatError(r.path(), "key " + what + " appears twice");
    }
}

// The tensor infos; a name that appears twice is refused.
static void read_tensor_infos(ByteReader& r, std::uint64_t n_tensors, Header& h) {
    for (std::uint64_t i = 0; i < n_tensors; ++i) {
        std::string name(r.string("tensor name"));
        std::string what = shown(name);
        auto n_dims = r.read<std::uint32_t>(what);
        if (n_dims > 4) throw FormatError(r.path(), "tensor " + what + " has " + std::to_string(n_dims) + " dimensions");
        TensorInfo info{};
        for (std::uint32_t d = 0; d < n_dims; ++d) info.dims.push_back(r.read<std::uint64_t>(what));
        info.type = r.read<std::uint32_t>(what);
        info.offset = r.read<std::uint64_t>(what);
        if (!h.tensors.try_emplace(std::move(name), std::move(info)).second)
            throw FormatError(r.path(), "tensor " + what + " appears twice");
    }
}

// general.architecture, and general.alignment: where the tensor data starts after the infos.
static void locate_data(const ByteReader& r, Header& h) {
    auto arch = h.kv.find("general.architecture");
    if (arch == h.kv.end() || arch->second.type != STRING || arch->second.text != "llama")
        throw FormatError(r.path(), "general.architecture is not 'llama'");
    std::int64_t align = 32;
    if (auto it = h.kv.find("general.alignment"); it != h.kv.end()) {
        if (!it->second.scalar.integral) throw FormatError(r.path(), "key general.alignment must be an integer");
        align = it->second.scalar.integer;
    }
    if (align <= 0 || (align & (align - 1)) || align > 65536)
        throw FormatError(r.path(), "general.alignment=" + std::to_string(align) + " is not a power of two up to 65536");
    h.alignment = static_cast<std::uint64_t>(align);
    h.data_start = (r.offset() + align - 1) / align * align;
}

static Header read_header(const MappedFile& file) {
    auto bytes = file.bytes();
    if (bytes.size() < 4 || std::memcmp(bytes.data(), "GGUF", 4) != 0)
        throw FormatError(file.path(), "bad magic, not a GGUF file");
    ByteReader r(file.path(), bytes);
    auto [n_tensors, n_kv] = read_preamble(r);
    Header h;
    read_kv_section(r, n_kv, h);
    read_tensor_infos(r, n_tensors, h);
    locate_data(r, h);
    return h;
}

static const Value& tokens_of(const Header& h, const std::string& path) {
    auto tokens = h.kv.find("tokenizer.ggml.tokens");
    if (tokens == h.kv.end() || tokens->second.type != ARRAY || tokens->second.elem_type != STRING ||
        tokens->second.count == 0)
        throw FormatError(path, "missing tokenizer.ggml.tokens");
    return tokens->second;
}

// The keys that change the arithmetic or the tokens (contract 3), with llama.cpp's defaults
// when absent; a key of the wrong kind or out of its range names itself. A file that asks for
// what this architecture does not compute (RoPE scaling, experts) is refused rather than run
// wrongly.
static void read_hyperparameters(const Header& h, Config& c, const std::string& path) {
    auto find = [&](std::string_view key) -> const Value* {
        auto it = h.kv.find(key);
        return it == h.kv.end() ? nullptr : &it->second;
    };
    // floats: any numeric type (bool is not a number); the value as float32, as it is used
    auto float_key = [&](std::string_view key, float fallback, auto in_range, const char* range) {
        const Value* v = find(key);
        if (!v) return fallback;
        if (!scalar_size(v->type) || v->type == BOOL)
            throw FormatError(path, "key " + std::string(key) + " must be a number");
        const double d = v->scalar.number;
        const auto f = static_cast<float>(d);
        if (!std::isfinite(d) || !std::isfinite(f) || !in_range(d) || !in_range(static_cast<double>(f))) {
            char text[64];
            std::snprintf(text, sizeof text, "%.9g", d);
            throw FormatError(path, "key " + std::string(key) + "=" + text + " is out of range (" + range + ")");
        }
        return f;
    };
    // integers: any integer type
    auto int_key = [&](std::string_view key) -> std::optional<std::int64_t> {
        const Value* v = find(key);
        if (!v) return std::nullopt;
        if (!scalar_size(v->type) || !v->scalar.integral || v->type == BOOL)
            throw FormatError(path, "key " + std::string(key) + " must be an integer");
        return v->scalar.integer;
    };
    c.rope_theta = float_key("llama.rope.freq_base", 10000.0f, [](double x) { return x > 1.0; }, "finite, > 1");
    c.norm_eps = float_key("llama.attention.layer_norm_rms_epsilon", 1e-5f,
                           [](double x) { return x > 0.0 && x < 1.0; }, "finite, > 0 and < 1");
    if (auto rot = int_key("llama.rope.dimension_count"); rot && *rot != c.head_size())
        throw FormatError(path, "key llama.rope.dimension_count=" + std::to_string(*rot) + " is not head_size=" +
                                    std::to_string(c.head_size()) + " (partial rotation is not supported)");
    auto token_key = [&](std::string_view key, int fallback) {
        auto id = int_key(key);
        if (!id) return fallback;
        if (*id < 0 || *id >= c.vocab_size)
            throw FormatError(path, "key " + std::string(key) + "=" + std::to_string(*id) + " is outside the vocabulary [0, " +
                                        std::to_string(c.vocab_size) + ")");
        return static_cast<int>(*id);
    };
    c.bos_id = token_key("tokenizer.ggml.bos_token_id", BOS);
    c.eos_id = token_key("tokenizer.ggml.eos_token_id", EOS);
    if (const Value* v = find("llama.rope.scaling.type")) {
        if (v->type != STRING) throw FormatError(path, "key llama.rope.scaling.type must be a string");
        if (v->text != "none")
            throw FormatError(path, "key llama.rope.scaling.type='" + shown(v->text) +
                                        "': RoPE scaling is not supported (only 'none')");
    }
    if (auto experts = int_key("llama.expert_count"); experts && *experts > 0)
        throw FormatError(path, "key llama.expert_count=" + std::to_string(*experts) +
                                    ": mixture-of-experts models are not supported");
}

static Config config_of(const Header& h, const std::string& path) {
    const Value& tokens = tokens_of(h, path);
    auto scores = h.kv.find("tokenizer.ggml.scores");
    if (scores == h.kv.end() || !scores->second.scalar_array() || scores->second.count != tokens.count)
        throw FormatError(path, "tokenizer.ggml.scores missing or not one per token");
    auto int_key = [&](std::string_view key, std::optional<std::int64_t> fallback = std::nullopt) {
        auto it = h.kv.find(key);
        if (it == h.kv.end()) {
            if (fallback) return *fallback;
            throw FormatError(path, "missing required key " + std::string(key));
        }
        if (!it->second.scalar.integral) throw FormatError(path, "key " + std::string(key) + " must be an integer");
        return it->second.scalar.integer;
    };
    std::int64_t heads = int_key("llama.attention.head_count");
    RawConfig raw{int_key("llama.embedding_length"),
                  int_key("llama.feed_forward_length"),
                  int_key("llama.block_count"),
                  heads,
                  int_key("llama.attention.head_count_kv", heads),
                  static_cast<std::int64_t>(tokens.count),
                  int_key("llama.context_length"),
                  !h.tensors.contains("output.weight")};
    Config c = raw.validate(path);
    read_hyperparameters(h, c, path);
    return c;
}

// The tensor `name` of shape (rows, cols) or (cols), aligned and inside the file; marked as the
// model's. F32, or for a matrix F16, BF16 or Q8_0 as well (Q8_0 when its rows are whole 32-value
// blocks), as llama.cpp's converter writes them (norms, and stories260K's ffn_down with rows of
// 172 in a Q8_0 file, stay F32). GGUF lists dims innermost first: a (rows, cols) matrix has dims
// [cols, rows]. Sizes and offsets are 64-bit throughout.
static Matrix matrix(const Header& h, const MappedFile& file, const std::string& name,
                     std::initializer_list<std::int64_t> shape) {
    const std::string& path = file.path();
    auto it = h.tensors.find(name);
    if (it == h.tensors.end()) throw FormatError(path, "missing tensor " + name);
    const TensorInfo& t = it->second;
    if (t.type != GGML_F32 && t.type != GGML_Q8_0 && t.type != GGML_F16 && t.type != GGML_BF16)
        throw FormatError(path, "tensor " + name + " has type " + std::to_string(t.type) +
                                    "; only F32 (0), F16 (1), Q8_0 (8) and BF16 (30) are supported");
    const bool q8 = t.type == GGML_Q8_0, half = t.type == GGML_F16 || t.type == GGML_BF16;
    const char* type_name = q8 ? "Q8_0" : t.type == GGML_F16 ? "F16" : "BF16";
    if ((q8 || half) && shape.size() == 1)
        throw FormatError(path, "tensor " + name + " is " + type_name + "; only matrices may be, norms are F32");
    auto same = [](std::uint64_t a, std::int64_t b) { return a == static_cast<std::uint64_t>(b); };
    if (t.dims.size() != shape.size() || !std::equal(t.dims.rbegin(), t.dims.rend(), shape.begin(), same))
        throw FormatError(path, "tensor " + name + " does not have the expected shape");
    const std::int64_t cols = *(shape.end() - 1);
    if (q8 && cols % Q8_BLOCK)
        throw FormatError(path, "tensor " + name + " is Q8_0 with rows of " + std::to_string(cols) +
                                    " values, not a multiple of the block size " + std::to_string(Q8_BLOCK));
    if (t.offset % h.alignment)
        throw FormatError(path, "tensor " + name + " has offset " + std::to_string(t.offset) +
                                    ", not a multiple of general.alignment=" + std::to_string(h.alignment));
    std::uint64_t n = 1;
    for (auto s : shape) n *= static_cast<std::uint64_t>(s);  // < 2^40: the config is validated
    const std::uint64_t nbytes = q8 ? n / Q8_BLOCK * Q8_BLOCK_BYTES : half ? 2 * n : 4 * n;
    std::uint64_t size = file.bytes().size(), start = h.data_start;
    if ((t.type == GGML_F32 && t.offset % 4) || start > size || t.offset > size - start || nbytes > size - start - t.offset)
        throw FormatError(path, "tensor " + name + " lies outside the file");
    t.used = true;
    t.nbytes = nbytes;
    const std::uint8_t* p = file.bytes().data() + start + t.offset;
    if (q8) return Matrix::q8_0({p, nbytes});
    if (half) return Matrix::half(t.type == GGML_F16 ? WType::f16 : WType::bf16, {p, nbytes});
    return std::span<const float>(reinterpret_cast<const float*>(p), n);
}

// a norm: F32 only (matrix() refuses the other types for a vector)
static std::span<const float> f32_vector(const Header& h, const MappedFile& file, const std::string& name,
                                         std::int64_t n) {
    return matrix(h, file, name, {n}).f32;
}

// The tensor table -> weights, each tensor found by its llama.cpp name.
static TransformerWeights weights_of(const Header& h, const Config& c, const MappedFile& file) {
    const std::int64_t d = c.dim, hd = c.hidden_dim, kv = c.kv_dim(), v = c.vocab_size;
    TransformerWeights w;
    w.token_embedding = matrix(h, file, "token_embd.weight", {v, d});
    w.rms_final = f32_vector(h, file, "output_norm.weight", d);
    w.wcls = c.shared_classifier ? w.token_embedding : matrix(h, file, "output.weight", {v, d});
    w.layers.resize(c.n_layers);
    for (int l = 0; l < c.n_layers; ++l) {
        std::string blk = "blk." + std::to_string(l) + ".";
        LayerWeights& lw = w.layers[l];
        lw.rms_att = f32_vector(h, file, blk + "attn_norm.weight", d);
        lw.wq = matrix(h, file, blk + "attn_q.weight", {d, d});
        lw.wk = matrix(h, file, blk + "attn_k.weight", {kv, d});
        lw.wv = matrix(h, file, blk + "attn_v.weight", {kv, d});
        lw.wo = matrix(h, file, blk + "attn_output.weight", {d, d});
        lw.rms_ffn = f32_vector(h, file, blk + "ffn_norm.weight", d);
        lw.w1 = matrix(h, file, blk + "ffn_gate.weight", {hd, d});
        lw.w2 = matrix(h, file, blk + "ffn_down.weight", {d, hd});
        lw.w3 = matrix(h, file, blk + "ffn_up.weight", {hd, d});
    }
    return w;
}

// After weights_of: no tensor that is not the model's (so the count is exactly the model's), and
// no two tensors whose data [offset, offset + nbytes) intersect.
static void check_tensor_table(const Header& h, const Config& c, const std::string& path) {
    const std::size_t expected = 2 + 9 * static_cast<std::size_t>(c.n_layers) + (c.shared_classifier ? 0 : 1);
    for (const auto& [name, t] : h.tensors)
        if (!t.used)
            throw FormatError(path, "unexpected tensor " + shown(name) + ": a " + std::to_string(c.n_layers) +
                                        "-layer model has " + std::to_string(expected) + " tensors, the file " +
                                        std::to_string(h.tensors.size()));
    struct Extent {
        std::uint64_t start, end;
        const std::string* name;
    };
    std::vector<Extent> extents;
    extents.reserve(h.tensors.size());
    for (const auto& [name, t] : h.tensors)
        extents.push_back({t.offset, t.offset + t.nbytes, &name});  // bounded: the tensor lies in the file
    // by start, then name (map order): a message that does not depend on the sort
    std::stable_sort(extents.begin(), extents.end(), [](const Extent& a, const Extent& b) { return a.start < b.start; });
    for (std::size_t i = 1; i < extents.size(); ++i)
        if (extents[i].start < extents[i - 1].end)
            throw FormatError(path, "tensors " + shown(*extents[i - 1].name) + " and " + shown(*extents[i].name) +
                                        " overlap");
}

// Tokens spell a space as U+2581; control tokens <s> and </s> stand for llama2.c's pieces.
static std::string piece_from_gguf(std::string_view text, std::optional<std::int64_t> type) {
    if (type == 3 && text == "<s>") return "\n<s>\n";
    if (type == 3 && text == "</s>") return "\n</s>\n";
    std::string out;
    out.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text.substr(i, 3) == "\xE2\x96\x81") {
            out.push_back(' ');
            i += 2;
        } else {
            out.push_back(text[i]);
        }
    }
    return out;
}

static Vocab vocab_of(const Header& h, const std::string& path) {
    const Value& tokens = tokens_of(h, path);
    const Value& scores = h.kv.find("tokenizer.ggml.scores")->second;  // checked by config_of
    auto types = h.kv.find("tokenizer.ggml.token_type");
    // token types only count when there is one per token
    bool typed = types != h.kv.end() && types->second.scalar_array() && types->second.count == tokens.count;
    Vocab vocab;
    vocab.pieces.reserve(tokens.count);
    vocab.scores.reserve(tokens.count);
    for (std::uint64_t i = 0; i < tokens.count; ++i) {
        std::optional<std::int64_t> type;
        if (typed) type = types->second.element(i).integer;
        vocab.pieces.push_back(piece_from_gguf(tokens.strings[i], type));
        vocab.scores.push_back(static_cast<float>(scores.element(i).number));
    }
    check_vocab(vocab, path);
    return vocab;
}

}  // namespace gguf

static Model read_gguf(std::unique_ptr<MappedFile> file) {
    gguf::Header header = gguf::read_header(*file);
    Config c = gguf::config_of(header, file->path());
    TransformerWeights weights = gguf::weights_of(header, c, *file);
    gguf::check_tensor_table(header, c, file->path());
    auto any = [&](std::uint32_t type) {
        return std::any_of(header.tensors.begin(), header.tensors.end(), [type](const auto& t) { return t.second.type == type; });
    };
    std::string format;
    for (auto [type, name] : {std::pair{GGML_Q8_0, "gguf-q8_0"}, {GGML_F16, "gguf-f16"}, {GGML_BF16, "gguf-bf16"}})
        if (any(type)) format += (format.empty() ? "" : "+") + std::string(name);
    Model m{c, nullptr, std::move(weights), gguf::vocab_of(header, file->path()), format.empty() ? "gguf" : format};
    m.file = std::move(file);
    return m;
}

Model read_model(const std::string& path) {
    auto file = std::make_unique<MappedFile>(path);
    auto b = file->bytes();
    std::uint32_t magic = 0;
    if (b.size() >= 4) std::memcpy(&magic, b.data(), 4);
    Model m = b.size() >= 4 && std::memcmp(b.data(), "GGUF", 4) == 0 ? read_gguf(std::move(file))
                                                                     : read_llama2c(std::move(file), magic == V1_MAGIC);
    m.file->prefault(0, m.file->bytes().size());
    return m;
}

// ----------------------------------------------------------------------------
// tokenizer.bin, and the rules for every tokenizer

void check_vocab(const Vocab& vocab, const std::string& path) {
    const std::size_t n = vocab.pieces.size();
    if (n < 259)
        throw FormatError(path, "has " + std::to_string(n) +
                                    " tokens; a tokenizer needs at least 259 (<unk>, BOS, EOS and 256 byte tokens)");
    for (std::size_t i = 0; i < n; ++i) {
        if (std::isnan(vocab.scores[i])) throw FormatError(path, "token " + std::to_string(i) + " has a NaN score");
        if (std::isinf(vocab.scores[i])) throw FormatError(path, "token " + std::to_string(i) + " has an infinite score");
    }
    if (std::find(vocab.pieces.begin(), vocab.pieces.end(), " ") == vocab.pieces.end())
        throw FormatError(path, "has no piece \" \" (the dummy prefix that starts every prompt)");
}

// int32 max_token_length, then per token float32 score, int32 length, bytes.
Vocab read_tokenizer(const std::string& path, int vocab_size) {
    MappedFile file(path);
    ByteReader r(path, file.bytes());
    auto size = file.bytes().size();
    if (size < 4) throw FormatError(path, "truncated: no max_token_length header");
    auto max_len = r.read<std::int32_t>("max_token_length");
    if (max_len < 1 || max_len > 1024)
        throw FormatError(path, "max_token_length=" + std::to_string(max_len) + " outside 1..1024");
    Vocab v;
    v.pieces.reserve(vocab_size);
    v.scores.reserve(vocab_size);
    for (int i = 0; i < vocab_size; ++i) {
        if (size - r.offset() < 8)
            throw FormatError(path, "has only " + std::to_string(i) + " tokens, the model's vocabulary is " +
                                        std::to_string(vocab_size));
        auto score = r.read<float>("score");
        auto len = r.read<std::int32_t>("length");
        if (len < 0 || len > max_len)
            throw FormatError(path, "token " + std::to_string(i) + " has length " + std::to_string(len) +
                                        ", outside 0.." + std::to_string(max_len));
        if (size - r.offset() < static_cast<std::size_t>(len))
            throw FormatError(path, "truncated inside token " + std::to_string(i));
        v.pieces.emplace_back(reinterpret_cast<const char*>(r.at(r.offset())), len);
        v.scores.push_back(score);
        r.skip(len, "piece");
    }
    if (r.offset() != size)
        throw FormatError(path, "has " + std::to_string(size - r.offset()) + " bytes after token " +
                                    std::to_string(vocab_size - 1) + ": its vocabulary is larger than the model's " +
                                    std::to_string(vocab_size));
    check_vocab(v, path);
    return v;
}

}  // namespace llama2
