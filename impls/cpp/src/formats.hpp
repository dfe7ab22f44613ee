// polyllama C++ port: the readers of the model files (formats.cpp).
//
// Every reader validates before it trusts (docs/port-contract.md, sections 4 and 5): headers are
// read as 64-bit values and checked before anything is sized from them, and a bad file is a
// FormatError naming its path. The weights are used in place, in the one mapping of the file's
// bytes (MappedFile), never copied again.
#pragma once

#include "llama2.hpp"

namespace llama2 {

// The header values as read (64-bit, so that a hostile header cannot overflow), checked
// against the contract's limits before anything is sized from them.
struct RawConfig {
    std::int64_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
    bool shared_classifier;
    Config validate(const std::string& path) const;
};

// The KV cache for `rows` positions within the 4 GiB limit, else a FormatError naming path.
void check_kv_cache(const Config& c, std::int64_t rows, const std::string& path);
// A checkpoint of any format (v0, v1 or GGUF, sniffed from its first bytes).
Model read_model(const std::string& path);
// tokenizer.bin, which must hold exactly vocab_size tokens.
Vocab read_tokenizer(const std::string& path, int vocab_size);
// The rules for every tokenizer, tokenizer.bin and GGUF alike: at least 259 tokens (<unk>, BOS,
// EOS and the 256 byte tokens), a " " piece (the dummy prefix) and finite scores.
void check_vocab(const Vocab& vocab, const std::string& path);

}  // namespace llama2
