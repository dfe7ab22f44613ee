// What the three libFuzzer harnesses share: one input as a file, a reader run that tells a
// refusal from an acceptance, and the checks on what an accepted file yields.
//
// The readers throw FormatError for a bad file (run_main turns it into one `error:` line and
// exit 3), and RAII releases what they held, so the harness only catches it. Any other
// exception escapes, and libFuzzer reports the abort as a crash with the input that caused it.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "formats.hpp"

namespace fuzz {

// abort with a message when cond is false (the harnesses' findings)
inline void check(bool cond, const char* what) {
    if (cond) return;
    std::fprintf(stderr, "fuzz: %s\n", what);
    std::abort();
}

// The input, written to a memfd and read through its /proc path (the readers take a path).
class InputFile {
public:
    InputFile() {
        fd_ = ::memfd_create("fuzz-input", 0);
        check(fd_ >= 0, "memfd_create failed");
        path_ = "/proc/self/fd/" + std::to_string(fd_);
    }
    const std::string& write(const std::uint8_t* data, std::size_t size) {
        check(::ftruncate(fd_, 0) == 0 && ::ftruncate(fd_, static_cast<off_t>(size)) == 0, "ftruncate failed");
        for (std::size_t done = 0; done < size;) {
            ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
            check(n > 0, "writing the input failed");
            done += static_cast<std::size_t>(n);
        }
        return path_;
    }

private:
    int fd_;
    std::string path_;
};

inline const std::string& write_input(const std::uint8_t* data, std::size_t size) {
    static InputFile file;
    return file.write(data, size);
}

// Runs read(); true when it accepted the file, false when it threw FormatError with the
// contract's message: `<path>: <problem>` on one line (run_main adds the `error: `).
template <class Read>
bool accepted(const std::string& path, Read&& read) {
    try {
        read();
        return true;
    } catch (const llama2::FormatError& e) {
        std::string what = e.what();
        check(what.rfind(path + ": ", 0) == 0 && what.size() > path.size() + 2, "the error does not read `<path>: <problem>`");
        check(what.find('\n') == std::string::npos, "the error is not one line");
        return false;
    }
}

// one tensor: exactly n floats, float-aligned, inside the mapped file
inline void check_tensor(std::span<const float> t, std::uint64_t n, const llama2::MappedFile& file, const char* what) {
    auto b = file.bytes();
    auto base = reinterpret_cast<std::uintptr_t>(b.data()), p = reinterpret_cast<std::uintptr_t>(t.data());
    if (t.size() != n || p % sizeof(float) || p < base || p - base > b.size() ||
        t.size() > (b.size() - (p - base)) / sizeof(float)) {
        std::fprintf(stderr, "fuzz: tensor %s (%zu floats, %llu expected) is not inside the %zu-byte file\n", what,
                     t.size(), static_cast<unsigned long long>(n), b.size());
        std::abort();
    }
    volatile float sink = 0;  // reads that the compiler may not drop: the bytes must be there
    float s = 0;
    for (float x : t) s += x;
    sink = s;
    (void)sink;
}

// one matrix of (rows, cols): F32 as check_tensor; Q8_0 as exactly its whole blocks, F16 and
// BF16 as exactly 2 bytes a value, inside the file
inline void check_matrix(const llama2::Matrix& m, std::uint64_t rows, std::uint64_t cols, const llama2::MappedFile& file,
                         const char* what) {
    if (m.type == llama2::WType::f32) {
        check(m.q8.empty() && m.h16.empty(), "an F32 matrix also has other bytes");
        check_tensor(m.f32, rows * cols, file, what);
        return;
    }
    check(m.f32.empty(), "a matrix is both F32 and another type");
    std::span<const std::uint8_t> bytes = m.quantized() ? m.q8 : m.h16;
    std::uint64_t n = rows * cols * 2;
    if (m.quantized()) {
        check(m.h16.empty(), "a matrix is both Q8_0 and 16-bit");
        check(cols % llama2::Q8_BLOCK == 0, "a Q8_0 matrix whose rows are not whole blocks was accepted");
        n = rows * (cols / llama2::Q8_BLOCK) * llama2::Q8_BLOCK_BYTES;
    } else {
        check(m.half() && m.q8.empty(), "a 16-bit matrix is also Q8_0");
    }
    auto b = file.bytes();
    auto base = reinterpret_cast<std::uintptr_t>(b.data()), p = reinterpret_cast<std::uintptr_t>(bytes.data());
    if (bytes.size() != n || p < base || p - base > b.size() || bytes.size() > b.size() - (p - base)) {
        std::fprintf(stderr, "fuzz: tensor %s (%zu bytes, %llu expected) is not inside the %zu-byte file\n", what,
                     bytes.size(), static_cast<unsigned long long>(n), b.size());
        std::abort();
    }
    volatile unsigned sink = 0;
    unsigned s = 0;
    for (std::uint8_t x : bytes) s += x;
    sink = s;
    (void)sink;
}

// the rules every tokenizer meets
inline void check_vocab(const llama2::Vocab& v) {
    check(v.pieces.size() == v.scores.size(), "pieces and scores differ in number");
    check(v.pieces.size() >= 259, "a vocabulary of under 259 tokens was accepted");
    bool space = false;
    for (std::size_t i = 0; i < v.pieces.size(); ++i) {
        check(std::isfinite(v.scores[i]), "a non-finite score was accepted");
        space |= v.pieces[i] == " ";
    }
    check(space, "a vocabulary without \" \" was accepted");
}

// A checkpoint input through read_model; when accepted, every tensor is checked to lie in the
// file, and a GGUF file's vocabulary to meet the tokenizer rules.
inline void checkpoint(const std::uint8_t* data, std::size_t size) {
    const std::string& path = write_input(data, size);
    llama2::Model m;
    if (!accepted(path, [&] { m = llama2::read_model(path); })) return;
    const llama2::Config& c = m.config;
    check(c.dim > 0 && c.hidden_dim > 0 && c.n_layers > 0 && c.n_heads > 0 && c.n_kv_heads > 0 && c.vocab_size > 0 &&
              c.seq_len > 0,
          "a header value that is not positive was accepted");
    check(c.dim % c.n_heads == 0 && c.head_size() % 2 == 0 && c.n_kv_heads <= c.n_heads && c.n_heads % c.n_kv_heads == 0,
          "inconsistent head counts were accepted");
    check(m.file && m.file->bytes().size() == size, "the mapping is not the whole file");
    const std::uint64_t d = c.dim, h = c.hidden_dim, kv = c.kv_dim(), v = c.vocab_size;
    const llama2::MappedFile& f = *m.file;
    const auto& w = m.weights;
    check_matrix(w.token_embedding, v, d, f, "token_embedding");
    check_tensor(w.rms_final, d, f, "rms_final");
    check_matrix(w.wcls, v, d, f, "wcls");
    check(!c.shared_classifier || w.wcls.data() == w.token_embedding.data(), "a shared classifier is not the embedding");
    check(w.layers.size() == static_cast<std::size_t>(c.n_layers), "not one weight set per layer");
    for (const auto& l : w.layers) {
        check_tensor(l.rms_att, d, f, "rms_att");
        check_matrix(l.wq, d, d, f, "wq");
        check_matrix(l.wk, kv, d, f, "wk");
        check_matrix(l.wv, kv, d, f, "wv");
        check_matrix(l.wo, d, d, f, "wo");
        check_tensor(l.rms_ffn, d, f, "rms_ffn");
        check_matrix(l.w1, h, d, f, "w1");
        check_matrix(l.w2, d, h, f, "w2");
        check_matrix(l.w3, h, d, f, "w3");
    }
    if (m.vocab) {  // a GGUF file's own tokenizer
        check(m.vocab->pieces.size() == v, "the GGUF vocabulary is not the model's");
        check_vocab(*m.vocab);
    }
}

}  // namespace fuzz
