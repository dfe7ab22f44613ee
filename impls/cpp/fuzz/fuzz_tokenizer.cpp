// libFuzzer harness: read_tokenizer on tokenizer.bin files (seeds in tests/data/fuzz-seeds/tokenizer).
//
// The reader takes the model's vocabulary size as well as the file. The harness counts the
// tokens the input holds and reads it as the tokenizer of a model with one token fewer, as many,
// and one more, so that the exact-count rule and the success path are both reached.
#include <cstring>

#include "fuzz.hpp"

// the records (float score, int32 length, bytes) that parse, after the int32 max_token_length
static int count_tokens(const std::uint8_t* data, std::size_t size) {
    std::size_t off = 4;
    int n = 0;
    while (size >= off && size - off >= 8 && n < (1 << 20)) {
        std::int32_t len;
        std::memcpy(&len, data + off + 4, 4);
        if (len < 0 || static_cast<std::size_t>(len) > size - off - 8) break;
        off += 8 + static_cast<std::size_t>(len);
        ++n;
    }
    return n;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string& path = fuzz::write_input(data, size);
    int n = count_tokens(data, size);
    for (int vocab_size = n - 1; vocab_size <= n + 1; ++vocab_size) {
        if (vocab_size < 1) continue;
        llama2::Vocab v;
        if (!fuzz::accepted(path, [&] { v = llama2::read_tokenizer(path, vocab_size); })) continue;
        fuzz::check(v.pieces.size() == static_cast<std::size_t>(vocab_size), "the vocabulary is not the model's size");
        std::int32_t max_len;
        std::memcpy(&max_len, data, 4);
        for (const auto& p : v.pieces) fuzz::check(p.size() <= static_cast<std::size_t>(max_len), "a piece is longer than max_token_length");
        fuzz::check_vocab(v);
    }
    return 0;
}
