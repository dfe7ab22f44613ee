/* libFuzzer harness: read_vocab on tokenizer.bin files (seeds in tests/data/fuzz-seeds/tokenizer).

   The reader takes the model's vocabulary size as well as the file. The harness counts the
   tokens the input holds and reads it as the tokenizer of a model with one token fewer, as many,
   and one more, so that the exact-count rule and the success path are both reached. */

#include <string.h>

#include "fuzz.h"

typedef struct {
    Vocab v;
    int vocab_size;
} Tokenizer;

static void read_it(const char *path, void *ctx) {
    Tokenizer *t = ctx;
    read_vocab(&t->v, path, t->vocab_size);
}

// the records (float score, int32 length, bytes) that parse, after the int32 max_token_length
static int count_tokens(const uint8_t *data, size_t size) {
    size_t off = 4;
    int n = 0;
    while (size >= off && size - off >= 8 && n < (1 << 20)) {
        int32_t len;
        memcpy(&len, data + off + 4, 4);
        if (len < 0 || (size_t)len > size - off - 8) break;
        off += 8 + (size_t)len;
        n++;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int n = count_tokens(data, size);
    for (int vocab_size = n - 1; vocab_size <= n + 1; vocab_size++) {
        if (vocab_size < 1) continue;
        Tokenizer t;
        memset(&t, 0, sizeof t);
        t.vocab_size = vocab_size;
        if (!fuzz_read(data, size, read_it, &t)) continue;
        fuzz_check(t.v.vocab_size == vocab_size, "the vocabulary is not the model's size");
        fuzz_check_vocab(&t.v);
        free_vocab(&t.v);
        fuzz_released();
    }
    return 0;
}
