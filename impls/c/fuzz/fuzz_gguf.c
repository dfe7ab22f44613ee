/* libFuzzer harness: read_checkpoint on GGUF files (seeds in tests/data/fuzz-seeds/gguf). The magic is
   forced, so that no mutation strays into the llama2.c reader. */

#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 4) return 0;
    uint8_t *file = malloc(size);
    fuzz_check(file != NULL, "out of memory");
    memcpy(file, data, size);
    memcpy(file, "GGUF", 4);
    fuzz_checkpoint(file, size);
    free(file);
    return 0;
}
