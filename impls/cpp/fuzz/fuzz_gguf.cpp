// libFuzzer harness: read_model on GGUF files (seeds in tests/data/fuzz-seeds/gguf). The magic is forced,
// so that no mutation strays into the llama2.c reader.
#include <cstring>
#include <vector>

#include "fuzz.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 4) return 0;
    std::vector<std::uint8_t> file(data, data + size);
    std::memcpy(file.data(), "GGUF", 4);
    fuzz::checkpoint(file.data(), file.size());
    return 0;
}
