/* What the three libFuzzer harnesses share (fuzz.c): one input as a file, a reader run so that a
   rejection comes back here instead of ending the process, and the checks on what it returns.

   formats.c reports a bad file with one `error: <path>: <problem>` line on stderr and exit(3),
   and leaves its allocations, its mapping and its descriptor to the process's end. A fuzzer
   runs millions of inputs in one process, so the fuzz build (Makefile, `fuzz-build`) renames
   formats.o's references to exit, calloc, free, mmap, munmap, open, close and stderr to the
   fuzz_* hooks of fuzz.c (objcopy --redefine-sym): exit jumps back into the harness, the
   resources are tracked and released after a rejected input, and stderr is a buffer, so that the
   harness checks that exactly one error line was written. formats.c itself is not changed, and
   build/run is built from it as always. */

#ifndef POLYLLAMA_FUZZ_H
#define POLYLLAMA_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#include "../formats.h"

// the reader under test: reads the file at path, keeps its results in ctx
typedef void (*FuzzReader)(const char *path, void *ctx);

// Writes data to the harness's in-memory file and runs reader on it. Returns 1 when the reader
// accepted the file (the caller checks the results, frees them, then calls fuzz_released), 0
// when it refused it with exit 3 and one error line; anything else aborts, which libFuzzer
// reports as a crash with the input that caused it.
int fuzz_read(const uint8_t *data, size_t size, FuzzReader reader, void *ctx);

// After the caller freed an accepted file's results: nothing the reader took may be left.
void fuzz_released(void);

// One checkpoint input through read_checkpoint; when accepted, every tensor is checked to lie in
// the file (and a GGUF file's vocabulary to meet the tokenizer rules), then it is freed.
void fuzz_checkpoint(const uint8_t *data, size_t size);

// abort with a message when cond is false (the harness's findings)
void fuzz_check(int cond, const char *what);

// [p, p + n floats) lies inside [base, base + size) and p is float-aligned
void fuzz_check_floats(const float *p, size_t n, const void *base, size_t size, const char *what);

// a matrix of (rows, cols): F32 as fuzz_check_floats, Q8_0 as whole blocks and F16/BF16 as 2-byte
// values inside the file
void fuzz_check_matrix(Matrix m, size_t rows, size_t cols, const void *base, size_t size, const char *what);

// every piece readable, lengths within max_token_length, finite scores, a " " piece
void fuzz_check_vocab(const Vocab *v);

#endif
