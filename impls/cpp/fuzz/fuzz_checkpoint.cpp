// libFuzzer harness: read_model on llama2.c checkpoints, v0 and v1 (seeds in tests/data/fuzz-seeds/checkpoint).
// GGUF has a harness of its own, so inputs that sniff as GGUF are left to it.
#include <cstring>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size >= 4 && std::memcmp(data, "GGUF", 4) == 0) return 0;
    fuzz::checkpoint(data, size);
    return 0;
}
