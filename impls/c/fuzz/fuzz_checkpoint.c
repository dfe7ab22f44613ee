/* libFuzzer harness: read_checkpoint on llama2.c checkpoints, v0 and v1 (seeds in
   tests/data/fuzz-seeds/checkpoint). GGUF has a harness of its own, so inputs that sniff as GGUF are left
   to it. */

#include <string.h>

#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size >= 4 && memcmp(data, "GGUF", 4) == 0) return 0;
    fuzz_checkpoint(data, size);
    return 0;
}
