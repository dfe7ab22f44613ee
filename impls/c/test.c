/* Unit tests for the C port: `make test`. Plain asserts, counted; prints `N passed, N failed`.

   The tokenizer and model tests need /work/shared/models-style files, found through
   POLYLLAMA_MODEL_PATH (':'-separated directories). When they are missing the tests are skipped,
   except under CI=true, where a missing file is a failure. */

#define POLYLLAMA_NO_MAIN
#pragma GCC diagnostic ignored "-Wunused-function" // the command line half of run.c is not under test
#pragma GCC diagnostic ignored "-Wmissing-field-initializers" // a GgufShape names only what differs
#include "run.c"

#include <sys/wait.h>
#include <unistd.h>

static int passed, failed, skipped;

#define CHECK(cond, ...)                                                                          \
    do {                                                                                          \
        if (cond) passed++;                                                                       \
        else {                                                                                    \
            failed++;                                                                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                  \
            fprintf(stderr, __VA_ARGS__);                                                         \
            fputc('\n', stderr);                                                                  \
        }                                                                                         \
    } while (0)

// a file in one of POLYLLAMA_MODEL_PATH's directories, or NULL (a failure under CI=true)
static const char *model_file(const char *name) {
    static char found[4096];
    const char *dirs = getenv("POLYLLAMA_MODEL_PATH");
    while (dirs && *dirs) {
        const char *sep = strchr(dirs, ':');
        size_t n = sep ? (size_t)(sep - dirs) : strlen(dirs);
        snprintf(found, sizeof found, "%.*s/%s", (int)n, dirs, name);
        if (n > 0 && access(found, R_OK) == 0) return found;
        dirs = sep ? sep + 1 : dirs + n;
    }
    const char *ci = getenv("CI");
    if (ci && !strcmp(ci, "true")) {
        failed++;
        fprintf(stderr, "FAIL: %s not found in POLYLLAMA_MODEL_PATH (CI=true)\n", name);
    } else {
        skipped++;
        fprintf(stderr, "skip: %s not found in POLYLLAMA_MODEL_PATH\n", name);
    }
    return NULL;
}

static int same_ids(const int *got, int n, const int *want, int m) {
    if (n != m) return 0;
    for (int i = 0; i < n; i++)
        if (got[i] != want[i]) return 0;
    return 1;
}

static void test_rng(void) {
    // draws from the reference's Rng(42) and Rng(1)
    unsigned long long s = 42;
    unsigned int want42[5] = {1456360119u, 3359763283u, 3393612768u, 4054632243u, 3283045847u};
    for (int i = 0; i < 5; i++) {
        unsigned int got = random_u32(&s);
        CHECK(got == want42[i], "seed 42 draw %d: %u, want %u", i, got, want42[i]);
    }
    s = 1;
    unsigned int want1[3] = {1206177355u, 2882512552u, 3117485455u};
    for (int i = 0; i < 3; i++) CHECK(random_u32(&s) == want1[i], "seed 1 draw %d", i);
    s = 42;
    random_u32(&s);
    float f = random_f32(&s);
    CHECK(f == 0.7822558283805847f, "seed 42 second next_f32: %.9g", f);
}

static void test_sampler(void) {
    float ties[5] = {0.5f, -1.0f, 2.0f, 2.0f, 1.0f};
    CHECK(sample_argmax(ties, 5) == 2, "argmax takes the first of equal maxima");
    float neg[3] = {-3.0f, -1.0f, -2.0f};
    CHECK(sample_argmax(neg, 3) == 1, "argmax of negative logits");

    // the reference's sample_topp(p, 0.9 / 0.5, coin) and sample_mult(p, coin)
    float p[6] = {0.1f, 0.2f, 0.05f, 0.3f, 0.25f, 0.1f};
    float coins[4] = {0.0f, 0.3f, 0.5f, 0.99f};
    int want_topp9[4] = {3, 3, 4, 5}, want_topp5[4] = {3, 3, 3, 4}, want_mult[4] = {0, 2, 3, 5};
    ProbIndex buf[6];
    for (int i = 0; i < 4; i++) {
        CHECK(sample_topp(p, 6, 0.9f, buf, coins[i]) == want_topp9[i], "top-p 0.9 coin %g", coins[i]);
        CHECK(sample_topp(p, 6, 0.5f, buf, coins[i]) == want_topp5[i], "top-p 0.5 coin %g", coins[i]);
        CHECK(sample_mult(p, 6, coins[i]) == want_mult[i], "multinomial coin %g", coins[i]);
    }

    // same seed, same logits: same tokens; temperature 0 draws nothing from the RNG
    Sampler a, b;
    build_sampler(&a, 6, 0.8f, 0.9, 7);
    build_sampler(&b, 6, 0.8f, 0.9, 7);
    int same = 1;
    for (int step = 0; step < 20; step++) {
        float la[6] = {1, 2, 0.5f, 3, 2.5f, 1}, lb[6] = {1, 2, 0.5f, 3, 2.5f, 1};
        same &= sample(&a, la) == sample(&b, lb);
    }
    CHECK(same, "a seed determines the sampled tokens");
    Sampler g;
    build_sampler(&g, 6, 0.0f, 0.9, 7);
    float lg[6] = {1, 2, 0.5f, 3, 2.5f, 1};
    CHECK(sample(&g, lg) == 3 && g.rng_state == 7, "greedy sampling is argmax without a draw");
    free_sampler(&a); free_sampler(&b); free_sampler(&g);

    // numpy's pairwise float32 sum: exact on integers, and its block structure for n > 128
    float ones[1000];
    for (int i = 0; i < 1000; i++) ones[i] = (float)(i % 7);
    float total = 0;
    for (int i = 0; i < 1000; i++) total += ones[i];
    CHECK(pairwise_sum(ones, 1000) == total, "pairwise sum of small integers");
}

static void test_parsing(void) {
    int neg, overflow;
    unsigned long long v;
    CHECK(parse_int("42", &neg, &v, &overflow) && v == 42 && !neg, "plain int");
    CHECK(!parse_int(" 42 ", &neg, &v, &overflow), "spaces are not a number");
    CHECK(!parse_int("1_000", &neg, &v, &overflow), "underscores are not a number");
    CHECK(!parse_int("abc", &neg, &v, &overflow) && !parse_int("", &neg, &v, &overflow), "not numbers");
    CHECK(parse_int("-3", &neg, &v, &overflow) && neg && v == 3, "negative int");
    CHECK(parse_int("99999999999999999999999", &neg, &v, &overflow) && overflow, "overflow is flagged");
    int n;
    long long *ids = parse_ids("1,403,-2,99999999999", &n);
    CHECK(n == 4 && ids[0] == 1 && ids[1] == 403 && ids[2] == -1 && ids[3] == -1, "-k ids");
    free(ids);
}

static void test_decode(void) {
    static char p0[] = "<unk>", p1[] = "\n<s>\n", p2[] = " hello", p3[] = "<0x41>", p4[] = "<0x0a>", p5[] = "<0x07>";
    char *pieces[6] = {p0, p1, p2, p3, p4, p5};
    int lengths[6] = {5, 5, 6, 6, 6, 6};
    float scores[6] = {0};
    Vocab v = {6, pieces, lengths, scores, 6, NULL};
    Tokenizer t;
    build_tokenizer(&t, &v, 1, 2);
    char byte;
    int len;
    const char *s = decode(&t, 1, 2, &len, &byte);
    CHECK(len == 5 && !memcmp(s, "hello", 5), "a leading space is dropped after BOS");
    s = decode(&t, 5, 2, &len, &byte);
    CHECK(len == 6 && !memcmp(s, " hello", 6), "and kept elsewhere");
    s = decode(&t, 5, 3, &len, &byte);
    CHECK(len == 1 && s[0] == 'A', "<0x41> is one byte");
    s = decode(&t, 5, 4, &len, &byte);
    CHECK(len == 1 && s[0] == '\n' && safe_to_print(s, len), "lowercase hex byte, whitespace printed");
    s = decode(&t, 5, 5, &len, &byte);
    CHECK(len == 1 && !safe_to_print(s, len), "a lone control byte is not printed");
    CHECK(!safe_to_print("", 0) && safe_to_print("\xe6\x97\xa5", 3), "empty pieces not, multibyte pieces printed");
    CHECK(str_lookup(&t, "<0x41>", 6) == 3 && str_lookup(&t, "nope", 4) == -1, "lookup by bytes");
    free_tokenizer(&t);
}

static void test_encode(const char *dir_file, const char *name, int vocab_size, const char *text,
                        const int *want, int n_want) {
    const char *path = model_file(dir_file);
    if (!path) return;
    Vocab v = {0};
    read_vocab(&v, path, vocab_size);
    Tokenizer t;
    build_tokenizer(&t, &v, 1, 2);
    int n = (int)strlen(text);
    int *tokens = xcalloc((size_t)n + 3, sizeof(int));
    int got = encode(&t, text, n, 1, 0, tokens);
    CHECK(same_ids(tokens, got, want, n_want), "encode(%s) with %s", name, dir_file);
    free(tokens);
    free_tokenizer(&t);
    free_vocab(&v);
}

static void test_tokenizer(void) {
    int meaning[] = {1, 306, 4658, 278, 6593, 310, 2834, 338};
    test_encode("tokenizer.bin", "meaning of life", 32000, "I believe the meaning of life is", meaning, 8);
    int once[] = {1, 9038, 2501, 263, 931};
    test_encode("tokenizer.bin", "once upon a time", 32000, "Once upon a time", once, 5);
    int zoe[] = {1, 17421, 30083, 29871, 30325, 30346};
    test_encode("tokenizer.bin", "non-ASCII", 32000, "Zo\xc3\xab \xe6\x97\xa5\xe6\x9c\xac", zoe, 6);
    int empty[] = {1};
    test_encode("tokenizer.bin", "empty text", 32000, "", empty, 1);
    int fallback[] = {1, 29871, 258, 131, 10736};
    test_encode("tokenizer.bin", "invalid UTF-8", 32000, "\xff\x80" "abc", fallback, 5);
    int small[] = {1, 403, 407, 261, 378};
    test_encode("tok512.bin", "once upon a time", 512, "Once upon a time", small, 5);
}

// ----------------------------------------------------------------------------
// Q8_0: fp16 conversions, activation quantization, the block dot product

// the fp16 value of bits h, from its definition
static double half_value(uint16_t h) {
    int exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    double v = exp == 0x1f ? (man ? NAN : INFINITY) : exp ? ldexp(1024 + man, exp - 25) : ldexp(man, -24);
    return h & 0x8000 ? -v : v;
}

// f rounded to the nearest fp16, ties to the even bit pattern, found by search over the values
static uint16_t half_nearest(float f) {
    double a = fabs((double)f);
    uint16_t sign = signbit(f) ? 0x8000 : 0, lo = 0, hi = 0x7c00; // half_value rises with the bits
    while (hi - lo > 1) { // the largest finite h with value <= a
        uint16_t mid = (uint16_t)((lo + hi) / 2);
        if (half_value(mid) <= a) lo = mid;
        else hi = mid;
    }
    if (a >= 65520.0) return sign | 0x7c00; // past the last midpoint: infinity
    double below = half_value(lo), above = lo == 0x7bff ? 65536.0 : half_value((uint16_t)(lo + 1));
    if (a - below < above - a || (a - below == above - a && lo % 2 == 0)) return sign | lo;
    return sign | (uint16_t)(lo + 1);
}

static void test_fp16(void) {
    int bad_to = 0, bad_round = 0, bad_from = 0;
    for (uint32_t h = 0; h < 0x10000; h++) {
        double want = half_value((uint16_t)h);
        float got = fp16_to_fp32((uint16_t)h);
        if (isnan(want)) { bad_to += !isnan(got); continue; }
        bad_to += (double)got != want || !signbit(got) != !signbit(want);
        bad_round += fp32_to_fp16(got) != h;
    }
    CHECK(!bad_to, "fp16 -> fp32 is exact on all 65536 patterns (%d wrong)", bad_to);
    CHECK(!bad_round, "fp32 -> fp16 gives every fp16 value back (%d wrong)", bad_round);
    // the midpoints between neighbours (ties: to even), a float either side of them, and random floats
    unsigned long long rng = 16;
    for (uint16_t h = 0; h < 0x7bff; h++) {
        float mid = (float)((half_value(h) + half_value((uint16_t)(h + 1))) / 2); // exact in float
        float probes[3] = {mid, nextafterf(mid, 0.0f), nextafterf(mid, INFINITY)};
        for (int k = 0; k < 3; k++) {
            bad_from += fp32_to_fp16(probes[k]) != half_nearest(probes[k]);
            bad_from += fp32_to_fp16(-probes[k]) != half_nearest(-probes[k]);
        }
    }
    for (int i = 0; i < 200000; i++) {
        uint32_t bits = random_u32(&rng);
        float f;
        memcpy(&f, &bits, 4);
        if (!isnan(f)) bad_from += fp32_to_fp16(f) != half_nearest(f);
    }
    CHECK(!bad_from, "fp32 -> fp16 rounds to nearest, ties to even (%d wrong)", bad_from);
    CHECK(fp32_to_fp16(65504.0f) == 0x7bff && fp32_to_fp16(65519.99f) == 0x7bff &&
              fp32_to_fp16(65520.0f) == 0x7c00 && fp32_to_fp16(-1e9f) == 0xfc00 && (fp32_to_fp16(NAN) & 0x7fff) > 0x7c00,
          "fp16 overflow and NaN");
}

// a block of 32 from a few leading values, the rest 0
static void block_of(float *x, const float *lead, int n) {
    memset(x, 0, Q8_BLOCK * sizeof(float));
    memcpy(x, lead, n * sizeof(float));
}

static void test_q8_quantize(void) {
    float x[3 * Q8_BLOCK], dx[3];
    int8_t q[3 * Q8_BLOCK];
    // block 0: all zero (amax 0: scale 0, quants 0); block 1: amax 127, so 127 / amax is exactly 1
    // and x * id lands on exact .5 ties, which round to even; block 2: a scale that fp16 rounds
    block_of(x, (const float[]){0.0f, -0.0f}, 2);
    block_of(x + Q8_BLOCK, (const float[]){127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -2.5f, -3.5f, 126.5f, -127.0f}, 9);
    block_of(x + 2 * Q8_BLOCK, (const float[]){1.0f, -0.25f, 0.1f}, 3);
    quantize_q8(q, dx, x, 3 * Q8_BLOCK);
    int zero = 1;
    for (int i = 0; i < Q8_BLOCK; i++) zero &= q[i] == 0;
    CHECK(zero && dx[0] == 0.0f, "an all-zero block quantizes to zeros with scale 0");
    const int8_t want_ties[9] = {127, 0, 2, 2, 0, -2, -4, 126, -127};
    CHECK(!memcmp(q + Q8_BLOCK, want_ties, 9) && dx[1] == 1.0f, "ties round to even: 0.5 -> 0, 2.5 -> 2, -3.5 -> -4");
    float d2 = 1.0f / 127.0f;
    CHECK(dx[2] == fp16_to_fp32(fp32_to_fp16(d2)) && dx[2] != d2, "the scale is amax / 127 rounded to fp16");
    // 127 * 0.1 = 12.7 -> 13; -0.25 * 127 = -31.75 -> -32
    CHECK(q[2 * Q8_BLOCK] == 127 && q[2 * Q8_BLOCK + 1] == -32 && q[2 * Q8_BLOCK + 2] == 13, "quants of block 2");
}

// the f32 kernel (AVX-512 and AVX2 loops, NEON or portable, and the single rows at the end)
// against a double dot product, over lengths that leave every loop a remainder
static void test_f32_matvec(void) {
    enum { ROWS = 11, MAX_N = 800 };
    const int lengths[] = {1, 7, 8, 15, 16, 31, 32, 33, 48, 63, 64, 172, 288, 800};
    float *w = xcalloc(ROWS * MAX_N, sizeof(float)), x[MAX_N], out[ROWS];
    unsigned long long rng = 11;
    for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
        int n = lengths[li], ok = 1;
        for (int i = 0; i < ROWS * n; i++) w[i] = random_f32(&rng) - 0.5f;
        for (int i = 0; i < n; i++) x[i] = random_f32(&rng) - 0.5f;
        for (int r = 0; r < ROWS; r++) out[r] = 1.0f; // accumulate adds to what is there
        matvec_rows(out, x, w, n, 0, ROWS, 1);
        for (int r = 0; r < ROWS; r++) {
            double want = 1.0;
            for (int j = 0; j < n; j++) want += (double)w[r * n + j] * x[j];
            ok &= fabs(out[r] - want) <= 1e-5 * (1.0 + fabs(want));
        }
        CHECK(ok, "f32 matvec, n = %d: a double dot product's value", n);
    }
    free(w);
}

// the matvec by its definition: exact int32 block sums, each scaled in float, summed in double
static void q8_matvec_plain(double *out, double *magnitude, const unsigned char *w, const int8_t *qx,
                            const float *dx, int n, int rows) {
    for (int r = 0; r < rows; r++) {
        const unsigned char *row = w + (size_t)r * q8_row_bytes(n);
        out[r] = magnitude[r] = 0.0;
        for (int b = 0; b < n / Q8_BLOCK; b++) {
            const int8_t *q = (const int8_t *)(row + b * Q8_BLOCK_BYTES + 2); // as q8_block_isum says why
            int isum = 0;
            for (int i = 0; i < Q8_BLOCK; i++) isum += q[i] * qx[b * Q8_BLOCK + i];
            float term = (float)isum * (q8_scale(row + b * Q8_BLOCK_BYTES) * dx[b]);
            out[r] += term;
            magnitude[r] += fabs(term);
        }
    }
}

// the SIMD (or portable) kernel against q8_matvec_plain, over row lengths that leave 0 to 7
// blocks after the SIMD groups; weights take every byte value, -128 included
static void test_q8_dot(void) {
    enum { ROWS = 19, MAX_N = 25 * Q8_BLOCK };
    const int lengths[] = {32, 64, 96, 128, 256, 288, 352, 800};
    unsigned char *w = xcalloc(ROWS, q8_row_bytes(MAX_N));
    float x[MAX_N], dx[MAX_N / Q8_BLOCK], out[ROWS];
    int8_t qx[MAX_N];
    double want[ROWS], magnitude[ROWS];
    unsigned long long rng = 7;
    for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
        int n = lengths[li], nb = n / Q8_BLOCK;
        // exact: scales 1 and an activation block whose amax is 127 (so dx = 1, id = 1, qx = x):
        // every term is an integer and every partial sum stays below 2^24, so any order is exact
        for (int r = 0; r < ROWS; r++)
            for (int b = 0; b < nb; b++) {
                unsigned char *blk = w + (size_t)r * q8_row_bytes(n) + b * Q8_BLOCK_BYTES;
                blk[0] = 0x00, blk[1] = 0x3c; // fp16 1.0
                for (int i = 0; i < Q8_BLOCK; i++)
                    blk[2 + i] = r == 0 ? 0x80 : r == 1 ? 0x7f : (unsigned char)random_u32(&rng); // -128, 127, any
            }
        for (int b = 0; b < nb; b++)
            for (int i = 0; i < Q8_BLOCK; i++) {
                float any = (float)((int)(random_u32(&rng) % 255) - 127);
                x[b * Q8_BLOCK + i] = b % 3 == 0 ? (i % 2 ? -127.0f : 127.0f) : i == 0 ? 127.0f : any;
            }
        quantize_q8(qx, dx, x, n);
        matvec_q8_rows(out, qx, dx, w, n, 0, ROWS, 0);
        q8_matvec_plain(want, magnitude, w, qx, dx, n, ROWS);
        int exact = 1;
        for (int r = 0; r < ROWS; r++) exact &= (double)out[r] == want[r];
        CHECK(exact, "Q8_0 integer dot products, n = %d: exact", n);

        // general: random scales and activations (block 1 all zero, amax 0); agreement up to the
        // float rounding of a sum taken in another order
        for (int r = 0; r < ROWS; r++)
            for (int b = 0; b < nb; b++) {
                unsigned char *blk = w + (size_t)r * q8_row_bytes(n) + b * Q8_BLOCK_BYTES;
                uint16_t h = (uint16_t)(0x1000 + random_u32(&rng) % 0x3000); // about 2^-11 .. 2^4
                if (random_u32(&rng) % 2) h |= 0x8000;
                blk[0] = (unsigned char)h, blk[1] = (unsigned char)(h >> 8);
            }
        for (int i = 0; i < n; i++) x[i] = (i / Q8_BLOCK == 1) ? 0.0f : (random_f32(&rng) - 0.5f) * 8.0f;
        quantize_q8(qx, dx, x, n);
        matvec_q8_rows(out, qx, dx, w, n, 0, ROWS, 0);
        q8_matvec_plain(want, magnitude, w, qx, dx, n, ROWS);
        int close = 1;
        for (int r = 0; r < ROWS; r++) close &= fabs(out[r] - want[r]) <= 1e-6 * magnitude[r];
        CHECK(close, "Q8_0 matvec, n = %d: the plain loop's value", n);
        // accumulate adds to what is there
        for (int r = 0; r < ROWS; r++) out[r] = 1.0f;
        matvec_q8_rows(out, qx, dx, w, n, 3, 5, 1);
        CHECK(out[2] == 1.0f && out[5] == 1.0f && fabs(out[3] - 1.0 - want[3]) <= 1e-6 * (1 + magnitude[3]),
              "Q8_0 matvec, n = %d: rows [3, 5) accumulated", n);
    }
    free(w);
}

// llama.cpp's quantize_row_q8_0_ref, as the converter (and the gguf package) quantizes weights:
// d = amax / 127, q = round-half-away-from-zero(x / d), d stored as fp16
static void quantize_weights_q8(unsigned char *out, const float *x, size_t n) {
    for (size_t b = 0; b < n / Q8_BLOCK; b++, out += Q8_BLOCK_BYTES) {
        const float *xb = x + b * Q8_BLOCK;
        float amax = 0.0f;
        for (int i = 0; i < Q8_BLOCK; i++) amax = fmaxf(amax, fabsf(xb[i]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        uint16_t h = fp32_to_fp16(d);
        out[0] = (unsigned char)h;
        out[1] = (unsigned char)(h >> 8);
        for (int i = 0; i < Q8_BLOCK; i++) out[2 + i] = (unsigned char)(int8_t)roundf(xb[i] * id);
    }
}

// a Q8_0 copy of an F32 matrix (rows, cols), when its rows are whole blocks (else left F32, as
// the converter leaves stories260K's ffn_down); the copies are kept in *owned for freeing
static void to_q8(Matrix *m, size_t rows, size_t cols, void **owned, int *n_owned) {
    if (m->type != WEIGHT_F32 || cols % Q8_BLOCK) return;
    unsigned char *q = xcalloc(rows * (cols / Q8_BLOCK), Q8_BLOCK_BYTES);
    quantize_weights_q8(q, m->data, rows * cols);
    owned[(*n_owned)++] = q;
    *m = (Matrix){q, WEIGHT_Q8_0};
}

// The golden texts (tests/data/golden/, written by the reference): the whole stdout of a run
static char *read_golden(const char *name, size_t *len) {
    char path[512];
    snprintf(path, sizeof path, "../../tests/data/golden/%s", name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = xcalloc(1 << 16, 1);
    *len = fread(buf, 1, (1 << 16) - 1, f);
    fclose(f);
    return buf;
}

// what generate() prints on stdout, caught in a temporary file
static char *generated_text(Transformer *tr, Tokenizer *t, const char *prompt, int steps, size_t *len) {
    Sampler sampler;
    build_sampler(&sampler, tr->config.vocab_size, 0.0f, 0.9, 1);
    FILE *tmp = tmpfile();
    fflush(stdout);
    int saved = dup(STDOUT_FILENO);
    dup2(fileno(tmp), STDOUT_FILENO);
    generate(tr, t, &sampler, prompt, steps, 0);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    char *buf = xcalloc(1 << 16, 1);
    rewind(tmp);
    *len = fread(buf, 1, (1 << 16) - 1, tmp);
    fclose(tmp);
    free_sampler(&sampler);
    return buf;
}

// stories260K with tok512, greedy, at one and at two threads: the whole text equals the golden
// file. With q8, every matrix the converter would write as Q8_0 is quantized in memory first, so
// the text is the reference's for `invoke models.convert --type q8_0` of the same file.
static void test_generation(int n_threads, int q8) {
    const char *model = model_file("stories260K.bin");
    if (!model) return;
    char model_path[4096];
    snprintf(model_path, sizeof model_path, "%s", model);
    const char *tok = model_file("tok512.bin");
    if (!tok) return;
    Transformer tr;
    build_transformer(&tr, model_path);
    const Config *c = &tr.config;
    void *owned[1 + 7 * 64];
    int n_owned = 0;
    if (q8 && c->n_layers <= 64) {
        size_t d = c->dim, h = c->hidden_dim, kv = (size_t)c->n_kv_heads * (d / c->n_heads);
        TransformerWeights *w = &tr.weights;
        int shared = w->wcls.data == w->token_embedding.data;
        to_q8(&w->token_embedding, c->vocab_size, d, owned, &n_owned);
        if (shared) w->wcls = w->token_embedding;
        else to_q8(&w->wcls, c->vocab_size, d, owned, &n_owned);
        for (int l = 0; l < c->n_layers; l++) {
            LayerWeights *lw = &w->layers[l];
            to_q8(&lw->wq, d, d, owned, &n_owned);
            to_q8(&lw->wk, kv, d, owned, &n_owned);
            to_q8(&lw->wv, kv, d, owned, &n_owned);
            to_q8(&lw->wo, d, d, owned, &n_owned);
            to_q8(&lw->w1, h, d, owned, &n_owned);
            to_q8(&lw->w2, d, h, owned, &n_owned);
            to_q8(&lw->w3, h, d, owned, &n_owned);
        }
    }
    Vocab v = {0};
    read_vocab(&v, tok, tr.config.vocab_size);
    Tokenizer t;
    build_tokenizer(&t, &v, 1, 2);
    start_transformer(&tr, n_threads, tr.config.seq_len, tr.config.seq_len);
    struct { const char *golden, *prompt; int steps; } runs[] = {
        {q8 ? "stories260K.q8_0.greedy.txt" : "stories260K.f32.greedy.txt", "", q8 ? 128 : 256},
        {"stories260K.f32.prompt.txt", "Once upon a time, there was a", 96},
    };
    for (int i = 0; i < (q8 ? 1 : 2); i++) {
        size_t want_len = 0, got_len = 0;
        char *want = read_golden(runs[i].golden, &want_len);
        CHECK(want != NULL, "tests/data/golden/%s is missing", runs[i].golden);
        if (!want) continue;
        char *got = generated_text(&tr, &t, runs[i].prompt, runs[i].steps, &got_len);
        CHECK(got_len == want_len && !memcmp(got, want, want_len), "%s at -j %d: got \"%s\"", runs[i].golden,
              n_threads, got);
        free(got);
        free(want);
    }
    free_tokenizer(&t);
    free_vocab(&v);
    free_transformer(&tr);
    while (n_owned) free(owned[--n_owned]);
}

// ----------------------------------------------------------------------------
// Refusals: the readers and the command line exit, so each case runs in a child process

// run fn(ctx) in a child; its exit status (0 when fn returns), its stderr in err
static int child_exit(void (*fn)(const void *), const void *ctx, char *err, size_t cap) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], STDERR_FILENO);
        fn(ctx);
        exit(0);
    }
    close(fds[1]);
    size_t got = 0;
    ssize_t r;
    while ((r = read(fds[0], err + got, cap - 1 - got)) > 0) got += (size_t)r;
    err[got] = 0;
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// exit 3 with exactly one line, `error: <path>: ...` holding `problem`
static int refused(void (*fn)(const void *), const char *path, const char *problem) {
    char err[4096], prefix[512];
    int code = child_exit(fn, path, err, sizeof err);
    snprintf(prefix, sizeof prefix, "error: %s: ", path);
    char *nl = strchr(err, '\n');
    int ok = code == 3 && !strncmp(err, prefix, strlen(prefix)) && nl && !nl[1] && strstr(err, problem);
    if (!ok) fprintf(stderr, "  exit %d, stderr: %s", code, err);
    return ok;
}

typedef struct { unsigned char *p; size_t n, cap; } Buf;

static void put(Buf *b, const void *data, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, data, n);
    b->n += n;
}
static void put_u32(Buf *b, uint32_t v) { put(b, &v, 4); } // little-endian hosts, as the port
static void put_u64(Buf *b, uint64_t v) { put(b, &v, 8); }
static void put_f32(Buf *b, float v) { put(b, &v, 4); }
static void put_str(Buf *b, const char *s) { put_u64(b, strlen(s)); put(b, s, strlen(s)); }

static const char *write_temp(const Buf *b) {
    static char paths[8][64];
    static int next;
    char *path = paths[next++ % 8];
    snprintf(path, 64, "/tmp/polyllama-c-test-XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, b->p, b->n) != (ssize_t)b->n) fprintf(stderr, "cannot write %s\n", path);
    close(fd);
    return path;
}

// The test vocabulary: <unk>, BOS, EOS, the 256 byte tokens, " ", "a", " a" (262 tokens).
// space_as replaces the " " piece; bad_score, when not 0, is token 5's score.
#define TEST_VOCAB 262
static void test_piece(int i, const char *space_as, char *out) {
    static const char *named[3] = {"<unk>", "\n<s>\n", "\n</s>\n"}, *tail[3] = {NULL, "a", " a"};
    if (i < 3) strcpy(out, named[i]);
    else if (i < 259) sprintf(out, "<0x%02X>", i - 3);
    else strcpy(out, i == 259 ? space_as : tail[i - 259]);
}

static const char *write_tokenizer(int n, const char *space_as, float bad_score) {
    Buf b = {0};
    put_u32(&b, 8);
    for (int i = 0; i < n; i++) {
        char piece[16];
        test_piece(i, space_as, piece);
        put_f32(&b, i == 5 && bad_score != 0 ? bad_score : -(float)i);
        put_u32(&b, (uint32_t)strlen(piece));
        put(&b, piece, strlen(piece));
    }
    const char *path = write_temp(&b);
    free(b.p);
    return path;
}

static void load_tokenizer(const void *path) {
    Vocab v = {0};
    read_vocab(&v, path, TEST_VOCAB);
}

static void load_small_tokenizer(const void *path) {
    Vocab v = {0};
    read_vocab(&v, path, 100);
}

static void load_checkpoint(const void *path) {
    Transformer t;
    build_transformer(&t, path);
}

// gap 1 and 3 for tokenizer.bin: a " " piece, finite scores, at least 259 tokens
static void test_tokenizer_file_rules(void) {
    const char *good = write_tokenizer(TEST_VOCAB, " ", 0);
    Vocab v = {0};
    read_vocab(&v, good, TEST_VOCAB);
    CHECK(v.vocab_size == TEST_VOCAB && v.lengths[259] == 1, "the test tokenizer loads");
    free_vocab(&v);
    const char *path = write_tokenizer(TEST_VOCAB, "@", 0);
    CHECK(refused(load_tokenizer, path, "no piece \" \""), "tokenizer.bin without \" \" is refused at load");
    unlink(path);
    path = write_tokenizer(TEST_VOCAB, " ", NAN);
    CHECK(refused(load_tokenizer, path, "token 5 has a NaN score"), "tokenizer.bin NaN score");
    unlink(path);
    path = write_tokenizer(TEST_VOCAB, " ", -INFINITY);
    CHECK(refused(load_tokenizer, path, "token 5 has an infinite score"), "tokenizer.bin infinite score");
    unlink(path);
    path = write_tokenizer(100, " ", 0);
    CHECK(refused(load_small_tokenizer, path, "at least 259"), "a tokenizer without the byte tokens");
    unlink(path);
    unlink(good);
}

// float -> bf16 bits as the converters write BF16 (llama.cpp's, the gguf package's): nearest,
// ties to even; a NaN stays a (quiet) NaN instead of rounding into the infinity next to it
static uint16_t fp32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

// x rounded to F16 or BF16 and widened back, as a converter rounds a weight
static void round_to_half(float *out, const float *x, int n, int type) {
    for (int i = 0; i < n; i++)
        out[i] = type == WEIGHT_F16 ? fp16_to_fp32(fp32_to_fp16(x[i])) : bf16_to_fp32(fp32_to_bf16(x[i]));
}

// A GGUF model (dim 8, hidden 16, one layer, two heads, seq_len 8, or the dims of a GgufShape)
// with the test vocabulary, and the defects that llama.cpp (and the contract) refuse.
enum { G_OK, G_EMPTY_KEY, G_DUP_KEY, G_DUP_TOKENIZER_KEY, G_DUP_TENSOR, G_EXTRA_TENSOR, G_UNALIGNED, G_OVERLAP,
       G_NAN_SCORE, G_INF_SCORE, G_NO_SPACE, G_TRUNCATED, G_Q8_OVERLAP };

// the model's dims, and its tensors' types: bit i of q8 makes tensor i (write_gguf's order) Q8_0,
// and other_type, when not 0, is attn_q's type
// keys: one of the KEYS_ variants below (contract 3's model keys); bit i of half makes tensor i
// half_type (F16 or BF16)
typedef struct { int dim, hidden; unsigned q8; uint32_t other_type; int keys; unsigned half; uint32_t half_type; } GgufShape;

enum { KEYS_NONE, KEYS_CUSTOM, KEYS_THETA, KEYS_EPS, KEYS_THETA_STRING, KEYS_THETA_LOW, KEYS_THETA_NAN, KEYS_EPS_ZERO,
       KEYS_EPS_ONE, KEYS_EPS_BOOL, KEYS_ROPE_DIM, KEYS_ROPE_DIM_FRACTION, KEYS_BOS_HIGH, KEYS_EOS_NEGATIVE,
       KEYS_BOS_STRING, KEYS_SCALING_LINEAR, KEYS_SCALING_NUMBER, KEYS_EXPERTS };
static const GgufShape F32_SHAPE = {8, 16, 0, 0};

static void put_kv_u32(Buf *b, int *n, const char *key, uint32_t v) {
    put_str(b, key); put_u32(b, 4); put_u32(b, v); (*n)++;
}

static void put_kv_scores(Buf *b, int *n, int defect) {
    put_str(b, "tokenizer.ggml.scores"); put_u32(b, 9); put_u32(b, 6); put_u64(b, TEST_VOCAB);
    for (int i = 0; i < TEST_VOCAB; i++)
        put_f32(b, i == 5 && defect == G_NAN_SCORE ? NAN : i == 5 && defect == G_INF_SCORE ? INFINITY : -(float)i);
    (*n)++;
}

static void put_kv_f32(Buf *b, int *n, const char *key, float v) { put_str(b, key); put_u32(b, 6); put_f32(b, v); (*n)++; }
static void put_kv_f64(Buf *b, int *n, const char *key, double v) { put_str(b, key); put_u32(b, 12); put(b, &v, 8); (*n)++; }
static void put_kv_i32(Buf *b, int *n, const char *key, int32_t v) { put_str(b, key); put_u32(b, 5); put(b, &v, 4); (*n)++; }
static void put_kv_str(Buf *b, int *n, const char *key, const char *v) { put_str(b, key); put_u32(b, 8); put_str(b, v); (*n)++; }

// contract 3's keys, by variant: well-formed (of several numeric types), and each refusal
static void put_model_keys(Buf *b, int *n, int keys) {
    switch (keys) {
    case KEYS_CUSTOM:
        put_kv_u32(b, n, "llama.rope.freq_base", 500000); // an integer type for a float key
        put_kv_f64(b, n, "llama.attention.layer_norm_rms_epsilon", 1e-6);
        put_kv_u32(b, n, "llama.rope.dimension_count", 4);
        put_kv_u32(b, n, "tokenizer.ggml.bos_token_id", 5);
        put_kv_i32(b, n, "tokenizer.ggml.eos_token_id", 6);
        put_kv_str(b, n, "llama.rope.scaling.type", "none");
        put_kv_u32(b, n, "llama.expert_count", 0);
        break;
    case KEYS_THETA: put_kv_f32(b, n, "llama.rope.freq_base", 500000.0f); break;
    case KEYS_EPS: put_kv_f32(b, n, "llama.attention.layer_norm_rms_epsilon", 0.25f); break;
    case KEYS_THETA_STRING: put_kv_str(b, n, "llama.rope.freq_base", "10000"); break;
    case KEYS_THETA_LOW: put_kv_f32(b, n, "llama.rope.freq_base", 0.5f); break;
    case KEYS_THETA_NAN: put_kv_f32(b, n, "llama.rope.freq_base", NAN); break;
    case KEYS_EPS_ZERO: put_kv_f32(b, n, "llama.attention.layer_norm_rms_epsilon", 0.0f); break;
    case KEYS_EPS_ONE: put_kv_u32(b, n, "llama.attention.layer_norm_rms_epsilon", 1); break;
    case KEYS_EPS_BOOL:
        put_str(b, "llama.attention.layer_norm_rms_epsilon"); put_u32(b, 7); put(b, "\1", 1); (*n)++;
        break;
    case KEYS_ROPE_DIM: put_kv_u32(b, n, "llama.rope.dimension_count", 2); break;
    case KEYS_ROPE_DIM_FRACTION: put_kv_f32(b, n, "llama.rope.dimension_count", 4.5f); break;
    case KEYS_BOS_HIGH: put_kv_u32(b, n, "tokenizer.ggml.bos_token_id", TEST_VOCAB); break;
    case KEYS_EOS_NEGATIVE: put_kv_i32(b, n, "tokenizer.ggml.eos_token_id", -1); break;
    case KEYS_BOS_STRING: put_kv_str(b, n, "tokenizer.ggml.bos_token_id", "1"); break;
    case KEYS_SCALING_LINEAR: put_kv_str(b, n, "llama.rope.scaling.type", "linear"); break;
    case KEYS_SCALING_NUMBER: put_kv_u32(b, n, "llama.rope.scaling.type", 0); break;
    case KEYS_EXPERTS: put_kv_u32(b, n, "llama.expert_count", 8); break;
    default: break;
    }
}

static int gguf_kvs(Buf *b, int defect, const GgufShape *shape) {
    int n = 0;
    put_str(b, "general.architecture"); put_u32(b, 8); put_str(b, "llama"); n++;
    put_str(b, defect == G_EMPTY_KEY ? "" : "general.name"); put_u32(b, 8); put_str(b, "test"); n++;
    put_kv_u32(b, &n, "llama.embedding_length", (uint32_t)shape->dim);
    put_kv_u32(b, &n, "llama.feed_forward_length", (uint32_t)shape->hidden);
    put_kv_u32(b, &n, "llama.block_count", 1);
    put_kv_u32(b, &n, "llama.attention.head_count", 2);
    put_kv_u32(b, &n, "llama.context_length", 8);
    put_str(b, "tokenizer.ggml.tokens"); put_u32(b, 9); put_u32(b, 8); put_u64(b, TEST_VOCAB);
    for (int i = 0; i < TEST_VOCAB; i++) {
        char piece[16];
        test_piece(i, defect == G_NO_SPACE ? "\xe2\x96\x82" : "\xe2\x96\x81", piece);
        if (i == 261) strcpy(piece, "\xe2\x96\x81" "a");
        if (i == 1 || i == 2) strcpy(piece, i == 1 ? "<s>" : "</s>");
        put_str(b, piece);
    }
    n++;
    put_kv_scores(b, &n, defect);
    put_model_keys(b, &n, shape->keys);
    if (defect == G_DUP_KEY) put_kv_u32(b, &n, "llama.block_count", 1);
    if (defect == G_DUP_TOKENIZER_KEY) put_kv_scores(b, &n, G_OK);
    return n;
}

static const char *write_gguf_shaped(int defect, const GgufShape *shape) {
    static const char *names[11] = {"token_embd.weight", "output_norm.weight", "blk.0.attn_norm.weight",
                                    "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight",
                                    "blk.0.attn_output.weight", "blk.0.ffn_norm.weight", "blk.0.ffn_gate.weight",
                                    "blk.0.ffn_down.weight", "blk.0.ffn_up.weight"};
    // dims innermost first: a (rows, cols) matrix is [cols, rows]; 0 = a vector
    uint64_t d = (uint64_t)shape->dim, h = (uint64_t)shape->hidden;
    const uint64_t dims[11][2] = {{d, TEST_VOCAB}, {d, 0}, {d, 0}, {d, d}, {d, d}, {d, d}, {d, d},
                                  {d, 0}, {d, h}, {h, d}, {d, h}};
    const char *tnames[12];
    uint64_t tdims[12][2], offsets[12], sizes[12], end = 0;
    uint32_t types[12] = {0};
    int nt = 11;
    for (int i = 0; i < 11; i++) {
        tnames[i] = names[i]; tdims[i][0] = dims[i][0]; tdims[i][1] = dims[i][1];
        types[i] = shape->q8 >> i & 1 ? WEIGHT_Q8_0 : shape->half >> i & 1 ? shape->half_type : WEIGHT_F32;
    }
    if (shape->other_type) types[3] = shape->other_type;
    if (defect == G_DUP_TENSOR || defect == G_EXTRA_TENSOR) {
        tnames[11] = defect == G_DUP_TENSOR ? names[3] : "extra.weight";
        tdims[11][0] = d; tdims[11][1] = defect == G_DUP_TENSOR ? d : 0;
        nt = 12;
    }
    for (int i = 0; i < nt; i++) {
        uint64_t rows = tdims[i][1] ? tdims[i][1] : 1;
        sizes[i] = types[i] == WEIGHT_Q8_0 ? rows * (tdims[i][0] / Q8_BLOCK) * Q8_BLOCK_BYTES
                   : (types[i] == WEIGHT_F16 || types[i] == WEIGHT_BF16 ? 2 : 4) * tdims[i][0] * rows;
        offsets[i] = end;
        end += (sizes[i] + 31) / 32 * 32;
    }
    if (defect == G_UNALIGNED) offsets[nt - 1] += 4;
    if (defect == G_OVERLAP) offsets[2] = offsets[1];
    if (defect == G_Q8_OVERLAP) offsets[4] = offsets[3] + 32; // inside attn_q's blocks, past its first 32 bytes
    Buf kvs = {0}, b = {0};
    int n_kv = gguf_kvs(&kvs, defect, shape);
    put(&b, "GGUF", 4); put_u32(&b, 3); put_u64(&b, (uint64_t)nt); put_u64(&b, (uint64_t)n_kv);
    put(&b, kvs.p, kvs.n);
    for (int i = 0; i < nt; i++) {
        put_str(&b, tnames[i]);
        put_u32(&b, tdims[i][1] ? 2 : 1);
        put_u64(&b, tdims[i][0]);
        if (tdims[i][1]) put_u64(&b, tdims[i][1]);
        put_u32(&b, types[i]);
        put_u64(&b, offsets[i]);
    }
    while (b.n % 32) put(&b, "", 1);
    // the data: small floats, and Q8_0 blocks of scale 1/64 (0x2400) with quants -6..6
    size_t data_start = b.n;
    for (uint64_t i = 0; i < end / 4 + 16; i++) put_f32(&b, (float)(i % 7) * 0.01f);
    for (int i = 0; i < nt; i++)
        for (uint64_t at = 0; types[i] == WEIGHT_Q8_0 && at + Q8_BLOCK_BYTES <= sizes[i]; at += Q8_BLOCK_BYTES) {
            unsigned char *blk = b.p + data_start + offsets[i] + at;
            blk[0] = 0x00, blk[1] = 0x24;
            for (int k = 0; k < Q8_BLOCK; k++) blk[2 + k] = (unsigned char)(int8_t)((int)((k + at) % 13) - 6);
        }
    for (int i = 0; i < nt; i++) // 16-bit tensors: small values of their own type
        for (uint64_t at = 0; (types[i] == WEIGHT_F16 || types[i] == WEIGHT_BF16) && at + 2 <= sizes[i]; at += 2) {
            uint16_t h = types[i] == WEIGHT_F16 ? fp32_to_fp16((float)(at / 2 % 7) * 0.01f)
                                                : fp32_to_bf16((float)(at / 2 % 7) * 0.01f);
            memcpy(b.p + data_start + offsets[i] + at, &h, 2);
        }
    if (defect == G_TRUNCATED) b.n = data_start + offsets[nt - 1] + sizes[nt - 1] - 10; // the last tensor cut short
    const char *path = write_temp(&b);
    free(kvs.p);
    free(b.p);
    return path;
}

static const char *write_gguf(int defect) { return write_gguf_shaped(defect, &F32_SHAPE); }

// a 16-bit row value for the tests: F16 or BF16 bits of f (rounded to nearest even)
static uint16_t half_bits(float f, int type) { return type == WEIGHT_F16 ? fp32_to_fp16(f) : fp32_to_bf16(f); }

// gaps 1, 3 and 4 for GGUF
static void test_gguf_rules(void) {
    const char *good = write_gguf(G_OK);
    Transformer tr;
    build_transformer(&tr, good);
    CHECK(tr.has_vocab && tr.vocab.vocab_size == TEST_VOCAB && tr.config.dim == 8 && tr.config.shared_classifier &&
          tr.vocab.lengths[259] == 1 && tr.vocab.pieces[259][0] == ' ', "the test GGUF loads");
    free_transformer(&tr);
    unlink(good);
    struct { int defect; const char *problem, *what; } cases[] = {
        {G_EMPTY_KEY, "key 2 of 9 is empty", "an empty key"},
        {G_DUP_KEY, "key llama.block_count appears twice", "a repeated key"},
        {G_DUP_TOKENIZER_KEY, "key tokenizer.ggml.scores appears twice", "a repeated tokenizer key"},
        {G_DUP_TENSOR, "tensor blk.0.attn_q.weight appears twice", "a repeated tensor name"},
        {G_EXTRA_TENSOR, "unexpected tensor extra.weight: a 1-layer model has 11 tensors, the file 12", "an extra tensor"},
        {G_UNALIGNED, "not a multiple of general.alignment=32", "an unaligned tensor offset"},
        {G_OVERLAP, "tensors blk.0.attn_norm.weight and output_norm.weight overlap", "overlapping tensors"},
        {G_NAN_SCORE, "token 5 has a NaN score", "a NaN score"},
        {G_INF_SCORE, "token 5 has an infinite score", "an infinite score"},
        {G_NO_SPACE, "no piece \" \"", "no \" \" piece"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = write_gguf(cases[i].defect);
        CHECK(refused(load_checkpoint, path, cases[i].problem), "GGUF with %s is refused", cases[i].what);
        unlink(path);
    }
}

// Q8_0 tensors: accepted per matrix, mixed with F32 in one layer; refused on a norm, on rows that
// are not whole blocks, past the end of the file, overlapping, and any other type
#define Q8_MATRICES (1u << 0 | 1u << 3 | 1u << 4 | 1u << 5 | 1u << 6 | 1u << 8 | 1u << 10) // not ffn_down
static void test_gguf_q8(void) {
    const GgufShape mixed = {32, 64, Q8_MATRICES, 0};
    const char *good = write_gguf_shaped(G_OK, &mixed);
    Transformer tr;
    build_transformer(&tr, good);
    const TransformerWeights *w = &tr.weights;
    const LayerWeights *lw = &w->layers[0];
    CHECK(w->token_embedding.type == WEIGHT_Q8_0 && w->wcls.data == w->token_embedding.data &&
              w->wcls.type == WEIGHT_Q8_0 && lw->wq.type == WEIGHT_Q8_0 && lw->wo.type == WEIGHT_Q8_0 &&
              lw->w1.type == WEIGHT_Q8_0 && lw->w3.type == WEIGHT_Q8_0 && lw->w2.type == WEIGHT_F32,
          "a mixed F32 / Q8_0 GGUF loads, each matrix with its type");
    // token 5's embedding row: the written scale 1/64 times each quant
    const unsigned char *row = (const unsigned char *)w->token_embedding.data + 5 * q8_row_bytes(32);
    float emb[32];
    dequantize_row_q8(emb, row, 32);
    int ok = 1;
    for (int i = 0; i < 32; i++) ok &= emb[i] == (float)(int8_t)row[2 + i] / 64.0f;
    CHECK(ok, "a Q8_0 embedding row is d * q");
    start_transformer(&tr, 2, tr.config.seq_len, tr.config.seq_len);
    float *logits = NULL;
    for (int pos = 0; pos < 4; pos++) logits = forward(&tr, 5 + pos, pos);
    for (int i = 0; i < TEST_VOCAB; i++) ok &= isfinite(logits[i]);
    CHECK(ok, "the mixed GGUF runs to finite logits");
    free_transformer(&tr);
    unlink(good);
    struct { int defect; GgufShape shape; const char *problem, *what; } cases[] = {
        {G_OK, {32, 64, Q8_MATRICES | 1u << 2, 0}, "tensor blk.0.attn_norm.weight is Q8_0; only matrices may be",
         "a Q8_0 norm"},
        {G_OK, {8, 16, 1u << 3, 0},
         "tensor blk.0.attn_q.weight is Q8_0 with rows of 8 values, not a multiple of the block size 32", "Q8_0 rows of 8"},
        {G_OK, {32, 48, 1u << 9, 0}, "tensor blk.0.ffn_down.weight is Q8_0 with rows of 48 values",
         "Q8_0 rows of hidden_dim 48"},
        {G_TRUNCATED, mixed, "tensor blk.0.ffn_up.weight lies outside the file", "a truncated Q8_0 tensor"},
        {G_Q8_OVERLAP, mixed, "tensors blk.0.attn_q.weight and blk.0.attn_k.weight overlap", "overlapping Q8_0 tensors"},
        {G_OK, {32, 64, 0, 2},
         "tensor blk.0.attn_q.weight has type 2; only F32 (0), F16 (1), BF16 (30) and Q8_0 (8) are supported",
         "a Q4_0 tensor"},
        {G_OK, {32, 64, 0, 12}, "tensor blk.0.attn_q.weight has type 12", "a Q4_K tensor"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = write_gguf_shaped(cases[i].defect, &cases[i].shape);
        CHECK(refused(load_checkpoint, path, cases[i].problem), "GGUF with %s is refused", cases[i].what);
        unlink(path);
    }
}

// contract 3's model keys: defaults, values of any numeric type, their effect on the logits and
// the tokenizer, and each refusal (exit 3, one line naming the key)
static float *logits_of(const GgufShape *shape, int n_pos) {
    const char *path = write_gguf_shaped(G_OK, shape);
    Transformer tr;
    build_transformer(&tr, path);
    start_transformer(&tr, 1, 8, 8);
    float *all = xcalloc((size_t)n_pos * TEST_VOCAB, sizeof(float));
    for (int pos = 0; pos < n_pos; pos++)
        memcpy(all + (size_t)pos * TEST_VOCAB, forward(&tr, 259 + pos % 3, pos), TEST_VOCAB * sizeof(float));
    free_transformer(&tr);
    unlink(path);
    return all;
}

static int rows_equal(const float *a, const float *b, int pos) {
    return !memcmp(a + (size_t)pos * TEST_VOCAB, b + (size_t)pos * TEST_VOCAB, TEST_VOCAB * sizeof(float));
}

static void test_gguf_keys(void) {
    GgufShape shape = F32_SHAPE;
    const char *path = write_gguf_shaped(G_OK, &shape);
    Transformer tr;
    build_transformer(&tr, path);
    CHECK(tr.config.rope_theta == 10000.0f && tr.config.norm_eps == 1e-5f && tr.config.bos_id == 1 &&
          tr.config.eos_id == 2, "a GGUF without the keys: theta 10000, eps 1e-5, BOS 1, EOS 2");
    free_transformer(&tr);
    unlink(path);
    const char *model = model_file("stories260K.bin");
    if (model) {
        build_transformer(&tr, model);
        CHECK(tr.config.rope_theta == 10000.0f && tr.config.norm_eps == 1e-5f && tr.config.bos_id == 1 &&
              tr.config.eos_id == 2, "a v0 file: theta 10000, eps 1e-5, BOS 1, EOS 2");
        free_transformer(&tr);
    }
    shape.keys = KEYS_CUSTOM;
    path = write_gguf_shaped(G_OK, &shape);
    build_transformer(&tr, path);
    CHECK(tr.config.rope_theta == 500000.0f && tr.config.norm_eps == 1e-6f && tr.config.bos_id == 5 &&
          tr.config.eos_id == 6, "the keys read from u32, f64 and i32 values (theta %g, eps %g, BOS %d, EOS %d)",
          tr.config.rope_theta, tr.config.norm_eps, tr.config.bos_id, tr.config.eos_id);
    // the BOS and EOS ids in encode, and decode's "drop the leading space after BOS"
    Tokenizer t;
    build_tokenizer(&t, &tr.vocab, tr.config.bos_id, tr.config.eos_id);
    int ids[8], n = encode(&t, "a", 1, 1, 1, ids); // " " and "a" merge into " a"
    CHECK(n == 3 && ids[0] == 5 && ids[1] == 261 && ids[2] == 6, "encode emits the file's BOS and EOS");
    int len;
    char byte;
    const char *piece = decode(&t, 5, 261, &len, &byte);
    CHECK(len == 1 && piece[0] == 'a', "decode drops the leading space after the file's BOS");
    piece = decode(&t, 1, 261, &len, &byte);
    CHECK(len == 2 && piece[0] == ' ', "decode keeps it after id 1 when BOS is another id");
    free_tokenizer(&t);
    free_transformer(&tr);
    unlink(path);

    // theta moves every position but the first (RoPE's angle there is 0), eps every position
    GgufShape base = {32, 64}, theta = {32, 64}, eps = {32, 64};
    theta.keys = KEYS_THETA;
    eps.keys = KEYS_EPS;
    float *l0 = logits_of(&base, 4), *lt = logits_of(&theta, 4), *le = logits_of(&eps, 4);
    CHECK(rows_equal(l0, lt, 0) && !rows_equal(l0, lt, 1) && !rows_equal(l0, lt, 3),
          "llama.rope.freq_base changes the logits after position 0");
    CHECK(!rows_equal(l0, le, 0) && !rows_equal(l0, le, 2), "llama.attention.layer_norm_rms_epsilon changes the logits");
    free(l0); free(lt); free(le);
    float c[8], sn[8];
    rope_table(c, sn, 16, 3, 500000.0f);
    CHECK(c[0] == cosf(3.0f) && fabsf(sn[4] - sinf(3.0f / powf(500000.0f, 0.5f))) < 1e-7f,
          "the RoPE table takes the file's base: angle pos / theta^(i / head_size)");

    struct { int keys; const char *problem; } bad[] = {
        {KEYS_THETA_STRING, "key llama.rope.freq_base must be a number"},
        {KEYS_THETA_LOW, "key llama.rope.freq_base=0.5 is outside its range"},
        {KEYS_THETA_NAN, "key llama.rope.freq_base=nan is outside its range"},
        {KEYS_EPS_ZERO, "key llama.attention.layer_norm_rms_epsilon=0 is outside its range"},
        {KEYS_EPS_ONE, "key llama.attention.layer_norm_rms_epsilon=1 is outside its range"},
        {KEYS_EPS_BOOL, "key llama.attention.layer_norm_rms_epsilon must be a number"},
        {KEYS_ROPE_DIM, "key llama.rope.dimension_count=2 must equal head_size=4"},
        {KEYS_ROPE_DIM_FRACTION, "key llama.rope.dimension_count=4.5 must be a whole number"},
        {KEYS_BOS_HIGH, "key tokenizer.ggml.bos_token_id=262 is outside its range [0, 261]"},
        {KEYS_EOS_NEGATIVE, "key tokenizer.ggml.eos_token_id=-1 is outside its range [0, 261]"},
        {KEYS_BOS_STRING, "key tokenizer.ggml.bos_token_id must be a number"},
        {KEYS_SCALING_LINEAR, "key llama.rope.scaling.type is 'linear'"},
        {KEYS_SCALING_NUMBER, "key llama.rope.scaling.type must be a string"},
        {KEYS_EXPERTS, "key llama.expert_count=8"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        GgufShape b = F32_SHAPE;
        b.keys = bad[i].keys;
        path = write_gguf_shaped(G_OK, &b);
        CHECK(refused(load_checkpoint, path, bad[i].problem), "GGUF refused: %s", bad[i].problem);
        unlink(path);
    }
}

// F16 and BF16 tensors: read per matrix, mixed with F32 and Q8_0 in one file; a 16-bit norm, a
// truncated or overlapping 16-bit tensor refused
static void test_gguf_half(void) {
    const unsigned all_matrices = 1u << 0 | 1u << 3 | 1u << 4 | 1u << 5 | 1u << 6 | 1u << 8 | 1u << 9 | 1u << 10;
    const uint32_t types[2] = {WEIGHT_F16, WEIGHT_BF16};
    for (int k = 0; k < 2; k++) {
        const char *tn = types[k] == WEIGHT_F16 ? "F16" : "BF16";
        GgufShape shape = {32, 64, 0, 0, KEYS_NONE, all_matrices, types[k]};
        const char *path = write_gguf_shaped(G_OK, &shape);
        Transformer tr;
        build_transformer(&tr, path);
        const uint16_t *row = (const uint16_t *)tr.weights.token_embedding.data + 260 * 32;
        CHECK(tr.weights.token_embedding.type == (int)types[k] && tr.weights.layers[0].w2.type == (int)types[k] &&
              tr.weights.wcls.data == tr.weights.token_embedding.data && w16_value(row, 3, types[k]) ==
              w16_value((uint16_t[]){half_bits((float)((260 * 32 + 3) % 7) * 0.01f, types[k])}, 0, types[k]),
              "an all-%s GGUF loads, its classifier tied to the embedding", tn);
        start_transformer(&tr, 2, 8, 8);
        float x[32];
        embed(x, &tr.weights.token_embedding, 260, 32);
        int ok = x[3] == w16_value(row, 3, types[k]);
        float *logits = NULL;
        for (int pos = 0; pos < 4; pos++) logits = forward(&tr, 5 + pos, pos);
        for (int i = 0; i < TEST_VOCAB; i++) ok &= isfinite(logits[i]);
        CHECK(ok, "the %s GGUF's embedding row is converted, and it runs to finite logits", tn);
        free_transformer(&tr);
        unlink(path);
    }
    // F16 attn_q and ffn_up, BF16 ffn_gate and token_embd, Q8_0 attn_k, the rest F32: in one layer
    GgufShape mixed = {32, 64, 1u << 4, 0, KEYS_NONE, 1u << 3 | 1u << 10, WEIGHT_F16};
    const char *path = write_gguf_shaped(G_OK, &mixed);
    Transformer tr;
    build_transformer(&tr, path);
    LayerWeights *lw = &tr.weights.layers[0];
    lw->w1.type = WEIGHT_F16; // the writer gives one 16-bit type a file: F16 data, read both ways below
    CHECK(lw->wq.type == WEIGHT_F16 && lw->wk.type == WEIGHT_Q8_0 && lw->wv.type == WEIGHT_F32 &&
          lw->w3.type == WEIGHT_F16, "a GGUF mixing F16, Q8_0 and F32 in one layer loads");
    start_transformer(&tr, 1, 8, 8);
    int toks[4] = {5, 6, 7, 8};
    float *want = xcalloc(4 * TEST_VOCAB, sizeof(float));
    for (int pos = 0; pos < 4; pos++) memcpy(want + pos * TEST_VOCAB, forward(&tr, toks[pos], pos), sizeof(float) * TEST_VOCAB);
    float *got = xcalloc(4 * TEST_VOCAB, sizeof(float));
    forward_batch(&tr, toks, 4, 0, LOGITS_ALL, got);
    int ok = 1;
    for (int i = 0; i < 4 * TEST_VOCAB; i++) ok &= isfinite(got[i]) && fabsf(got[i] - want[i]) <= 1e-4f * (1.0f + fabsf(want[i]));
    CHECK(ok, "the mixed GGUF: batched logits equal one-position logits");
    free(want); free(got);
    free_transformer(&tr);
    unlink(path);
    struct { int defect; GgufShape shape; const char *problem, *what; } cases[] = {
        {G_OK, {32, 64, 0, 0, KEYS_NONE, all_matrices | 1u << 2, WEIGHT_F16},
         "tensor blk.0.attn_norm.weight is F16; only matrices may be, norms are F32", "an F16 norm"},
        {G_OK, {32, 64, 0, 0, KEYS_NONE, 1u << 1, WEIGHT_BF16},
         "tensor output_norm.weight is BF16; only matrices may be, norms are F32", "a BF16 norm"},
        {G_TRUNCATED, {32, 64, 0, 0, KEYS_NONE, all_matrices, WEIGHT_BF16},
         "tensor blk.0.ffn_up.weight lies outside the file", "a truncated BF16 tensor"},
        {G_Q8_OVERLAP, {32, 64, 0, 0, KEYS_NONE, all_matrices, WEIGHT_F16},
         "tensors blk.0.attn_q.weight and blk.0.attn_k.weight overlap", "overlapping F16 tensors"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        path = write_gguf_shaped(cases[i].defect, &cases[i].shape);
        CHECK(refused(load_checkpoint, path, cases[i].problem), "GGUF with %s is refused", cases[i].what);
        unlink(path);
    }
}

// the KV cache is sized for the run's positions (contract 3): a 7B shape at 4096 positions is
// exactly 4 GiB and allowed, one position more is refused naming the size and the positions
static void check_kv_7b(const void *ctx) {
    Config c = {4096, 11008, 32, 32, 32, 32000, 4096, 1, 10000.0f, 1e-5f, 1, 2};
    check_kv_cache("7b.gguf", &c, *(const long long *)ctx);
}

// 1024 layers of dim 64 at 65536 positions: a 32 GiB full-context cache
static void check_kv_long(const void *ctx) {
    Config c = {64, 64, 1024, 1, 1, 300, 65536, 1, 10000.0f, 1e-5f, 1, 2};
    check_kv_cache("long.gguf", &c, *(const long long *)ctx);
}

static void test_kv_cache(void) {
    char err[4096];
    long long rows = 4096;
    CHECK(child_exit(check_kv_7b, &rows, err, sizeof err) == 0, "a 7B shape's KV cache at 4096 positions is allowed");
    rows = 4097;
    int code = child_exit(check_kv_7b, &rows, err, sizeof err);
    CHECK(code == 3 && !strcmp(err, "error: 7b.gguf: KV cache of 4296015872 bytes for 4097 positions exceeds the 4 GiB limit\n"),
          "a KV cache over 4 GiB is refused (exit %d: %s)", code, err);
    rows = 4;
    CHECK(child_exit(check_kv_long, &rows, err, sizeof err) == 0, "4 positions of a 32 GiB full-context cache fit");
    rows = 65536;
    CHECK(child_exit(check_kv_long, &rows, err, sizeof err) == 3, "all its positions do not");
}

static void parse_argv(const void *ctx) {
    const char *const *flags = ctx;
    char *argv[] = {"run", "m.bin", (char *)flags[0], (char *)flags[1]};
    parse_args(4, argv);
}

static Args parse_one(const char *flag, const char *value) {
    char *argv[] = {"run", "m.bin", (char *)flag, (char *)value};
    return parse_args(4, argv);
}

// gap 2: -n of any size (clamped to seq_len), -j in [1, 4096], -s in [0, 2^64 - 1]
static void test_flag_ranges(void) {
    CHECK(parse_one("-n", "1099511627776").steps == 1099511627776LL, "-n above 2^32");
    CHECK(parse_one("-n", "99999999999999999999999999").steps == LLONG_MAX, "-n beyond 64 bits saturates");
    char digits[400];
    memset(digits, '9', sizeof digits - 1);
    digits[sizeof digits - 1] = 0;
    CHECK(parse_one("-n", digits).steps == LLONG_MAX, "-n with 399 digits");
    CHECK(clamp_steps(LLONG_MAX, 512) == 512 && clamp_steps(0, 512) == 512 && clamp_steps(7, 512) == 7,
          "steps clamp to seq_len");
    CHECK(parse_one("-j", "4096").threads == 4096, "-j 4096");
    CHECK(parse_one("-s", "18446744073709551615").seed == ULLONG_MAX, "-s 2^64 - 1");
    const char *bad[][2] = {{"-j", "4097"}, {"-s", "18446744073709551616"}, {"-n", "-3"}, {"-n", "1_0"}};
    for (int i = 0; i < 4; i++) {
        char err[4096];
        int code = child_exit(parse_argv, bad[i], err, sizeof err);
        CHECK(code == 2 && !strncmp(err, "error: ", 7), "%s %s is a usage error (exit %d)", bad[i][0], bad[i][1], code);
    }
}

// ----------------------------------------------------------------------------
// The batched forward pass (contract 2): its kernels against plain loops, -b, and batched logits
// against one-position logits

// the f32 matrix-matrix kernel against a double product, over T that leave every tile a
// remainder, weight rows not a multiple of the tile, row lengths with and without vector tails,
// strided input and output rows, accumulation, and a range of weight rows [r0, r1)
static void test_f32_matmat(void) {
    enum { N = 23, MAX_D = 172, MAX_T = 33, LDX = MAX_D + 5, LDO = N + 3 };
    const int ts[] = {1, 7, 33}, ds[] = {64, 96, 172, 5};
    float *w = xcalloc(N * MAX_D, sizeof(float)), *x = xcalloc(MAX_T * LDX, sizeof(float));
    float *out = xcalloc(MAX_T * LDO, sizeof(float));
    unsigned long long rng = 5;
    for (size_t di = 0; di < sizeof ds / sizeof ds[0]; di++)
        for (size_t ti = 0; ti < sizeof ts / sizeof ts[0]; ti++) {
            int d = ds[di], T = ts[ti], ok = 1, untouched = 1;
            for (int i = 0; i < N * d; i++) w[i] = random_f32(&rng) - 0.5f;
            for (int i = 0; i < MAX_T * LDX; i++) x[i] = random_f32(&rng) - 0.5f;
            for (int i = 0; i < MAX_T * LDO; i++) out[i] = 1.0f;
            matmat_rows(out, LDO, x, LDX, w, d, T, 0, N, 0);
            for (int t = 0; t < T; t++)
                for (int r = 0; r < N; r++) {
                    double want = 0.0;
                    for (int j = 0; j < d; j++) want += (double)w[r * d + j] * x[t * LDX + j];
                    ok &= fabs(out[t * LDO + r] - want) <= 1e-5 * (1.0 + fabs(want));
                }
            for (int t = 0; t < MAX_T; t++)
                for (int r = N; r < LDO; r++) untouched &= out[t * LDO + r] == 1.0f;
            for (int r = 0; r < N; r++) untouched &= out[T * LDO + r] == 1.0f || T == MAX_T;
            CHECK(ok && untouched, "f32 matmat, T = %d, n = %d, d = %d: a double product's value", T, N, d);

            // accumulate over rows [3, 18): the rest stays as it was
            for (int i = 0; i < MAX_T * LDO; i++) out[i] = 1.0f;
            matmat_rows(out, LDO, x, LDX, w, d, T, 3, 18, 1);
            ok = 1;
            for (int t = 0; t < T; t++)
                for (int r = 0; r < N; r++) {
                    double want = 1.0;
                    if (r >= 3 && r < 18)
                        for (int j = 0; j < d; j++) want += (double)w[r * d + j] * x[t * LDX + j];
                    ok &= fabs(out[t * LDO + r] - want) <= 1e-5 * (1.0 + fabs(want));
                }
            CHECK(ok, "f32 matmat, T = %d, d = %d: rows [3, 18) accumulated, the others untouched", T, d);
        }
    free(w); free(x); free(out);
}

// the Q8_0 matrix-matrix kernel: every row t is exactly the one-position kernel's product with
// that row (same blocks, same lanes), and within float rounding of the plain loop; row lengths
// leave 0 to 7 blocks after the SIMD groups, weights take every byte value
static void test_q8_matmat(void) {
    enum { N = 13, MAX_D = 11 * Q8_BLOCK, MAX_T = 33 };
    const int ts[] = {1, 7, 33}, ds[] = {64, 96, 256, 352};
    unsigned char *w = xcalloc(N, q8_row_bytes(MAX_D));
    float *x = xcalloc(MAX_T * MAX_D, sizeof(float)), *dx = xcalloc(MAX_T * MAX_D / Q8_BLOCK, sizeof(float));
    int8_t *qx = xcalloc(MAX_T * MAX_D, 1);
    float *out = xcalloc(MAX_T * N, sizeof(float)), one[N];
    double want[N], magnitude[N];
    unsigned long long rng = 3;
    for (size_t di = 0; di < sizeof ds / sizeof ds[0]; di++)
        for (size_t ti = 0; ti < sizeof ts / sizeof ts[0]; ti++) {
            int d = ds[di], T = ts[ti], nb = d / Q8_BLOCK, same = 1, close = 1;
            for (int r = 0; r < N; r++)
                for (int b = 0; b < nb; b++) {
                    unsigned char *blk = w + (size_t)r * q8_row_bytes(d) + b * Q8_BLOCK_BYTES;
                    uint16_t h = (uint16_t)(0x1000 + random_u32(&rng) % 0x3000);
                    if (random_u32(&rng) % 2) h |= 0x8000;
                    blk[0] = (unsigned char)h, blk[1] = (unsigned char)(h >> 8);
                    for (int i = 0; i < Q8_BLOCK; i++) blk[2 + i] = r == 0 ? 0x80 : (unsigned char)random_u32(&rng);
                }
            for (int i = 0; i < T * d; i++) x[i] = (i / Q8_BLOCK % 5 == 1) ? 0.0f : (random_f32(&rng) - 0.5f) * 8.0f;
            for (int t = 0; t < T; t++) quantize_q8(qx + t * d, dx + t * nb, x + t * d, d);
            matmat_q8_rows(out, N, qx, d, dx, nb, w, d, T, 0, N, 0);
            for (int t = 0; t < T; t++) {
                matvec_q8_rows(one, qx + t * d, dx + t * nb, w, d, 0, N, 0);
                q8_matvec_plain(want, magnitude, w, qx + t * d, dx + t * nb, d, N);
                for (int r = 0; r < N; r++) {
                    same &= out[t * N + r] == one[r];
                    close &= fabs(out[t * N + r] - want[r]) <= 1e-6 * magnitude[r];
                }
            }
            CHECK(same && close, "Q8_0 matmat, T = %d, n = %d, d = %d: the one-position kernel's value, row by row", T,
                  N, d);
            for (int i = 0; i < T * N; i++) out[i] = 1.0f;
            matmat_q8_rows(out, N, qx, d, dx, nb, w, d, T, 2, 9, 1);
            int ok = 1;
            for (int t = 0; t < T; t++) {
                matvec_q8_rows(one, qx + t * d, dx + t * nb, w, d, 0, N, 0);
                for (int r = 0; r < N; r++) ok &= out[t * N + r] == (r >= 2 && r < 9 ? 1.0f + one[r] : 1.0f);
            }
            CHECK(ok, "Q8_0 matmat, T = %d, d = %d: rows [2, 9) accumulated, the others untouched", T, d);
        }
    free(w); free(x); free(dx); free(qx); free(out);
}

// a 16-bit copy (F16 or BF16, each value rounded to nearest even) of an F32 matrix (rows, cols)
static void to_half(Matrix *m, size_t rows, size_t cols, int type, void **owned, int *n_owned) {
    if (m->type != WEIGHT_F32) return;
    uint16_t *h = xcalloc(rows * cols, sizeof(uint16_t));
    const float *f = m->data;
    for (size_t i = 0; i < rows * cols; i++) h[i] = type == WEIGHT_F16 ? fp32_to_fp16(f[i]) : fp32_to_bf16(f[i]);
    owned[(*n_owned)++] = h;
    *m = (Matrix){h, type};
}

// stories260K (F32, then with its matrices in Q8_0 as the converter writes them, then in F16 and
// in BF16): forward_batch's logits over 40 positions, in batches of 1, 7, 16 and 40 rows at one
// and two threads, against forward's, within the contract's tolerance (section 6) and with the
// same argmax (Q8_0: see below)
static void test_batched_logits(int type) {
    int q8 = type == WEIGHT_Q8_0, half = type == WEIGHT_F16 || type == WEIGHT_BF16;
    const char *tname = q8 ? " Q8_0" : type == WEIGHT_F16 ? " F16" : type == WEIGHT_BF16 ? " BF16" : "";
    const char *model = model_file("stories260K.bin");
    if (!model) return;
    enum { N = 40 };
    int ids[N];
    Transformer ref;
    build_transformer(&ref, model);
    void *owned[1 + 7 * 64];
    int n_owned = 0;
    const Config *c = &ref.config;
    int vocab = c->vocab_size;
    for (int i = 0; i < N; i++) ids[i] = i ? (7 * i + 300) % vocab : 1;
    float *f32 = xcalloc((size_t)N * vocab, sizeof(float));
    if (half) { // the F32 model's logits, which 16-bit weights and activations move only a little
        start_transformer(&ref, 1, 1, N);
        for (int i = 0; i < N; i++) memcpy(f32 + (size_t)i * vocab, forward(&ref, ids[i], i), vocab * sizeof(float));
        free_pool(ref.pool);
        free_state(&ref.state);
        free_batch(&ref.batch);
    }
    if ((q8 || half) && c->n_layers <= 64) {
        size_t d = c->dim, h = c->hidden_dim, kv = (size_t)c->n_kv_heads * (d / c->n_heads);
        TransformerWeights *w = &ref.weights;
        Matrix *ms[7];
        size_t shapes[7][2] = {{d, d}, {kv, d}, {kv, d}, {d, d}, {h, d}, {d, h}, {h, d}};
        if (q8) to_q8(&w->token_embedding, c->vocab_size, d, owned, &n_owned);
        else to_half(&w->token_embedding, c->vocab_size, d, type, owned, &n_owned);
        w->wcls = w->token_embedding; // stories260K shares its classifier
        for (int l = 0; l < c->n_layers; l++) {
            LayerWeights *lw = &w->layers[l];
            ms[0] = &lw->wq, ms[1] = &lw->wk, ms[2] = &lw->wv, ms[3] = &lw->wo, ms[4] = &lw->w1, ms[5] = &lw->w2,
            ms[6] = &lw->w3;
            for (int k = 0; k < 7; k++) {
                if (q8) to_q8(ms[k], shapes[k][0], shapes[k][1], owned, &n_owned);
                else to_half(ms[k], shapes[k][0], shapes[k][1], type, owned, &n_owned);
            }
        }
    }
    float *want = xcalloc((size_t)N * vocab, sizeof(float)), *got = xcalloc((size_t)N * vocab, sizeof(float));
    start_transformer(&ref, 1, 1, N);
    for (int i = 0; i < N; i++) memcpy(want + (size_t)i * vocab, forward(&ref, ids[i], i), vocab * sizeof(float));
    if (half) {
        float worst = 0.0f;
        for (int i = 0; i < N; i++) {
            const float *g = want + (size_t)i * vocab, *r = f32 + (size_t)i * vocab;
            float amax = 0.0f, diff = 0.0f;
            for (int k = 0; k < vocab; k++) {
                amax = fmaxf(amax, fabsf(r[k]));
                diff = fmaxf(diff, fabsf(g[k] - r[k]));
            }
            worst = fmaxf(worst, diff / (1.0f + amax));
        }
        // near the F32 logits, and not equal to them (the weights and activations were rounded)
        CHECK(worst > 0.0f && worst < (type == WEIGHT_F16 ? 5e-3f : 5e-2f),
              "stories260K%s: one-position logits within rounding of the F32 model's (%g of the scale)", tname, worst);
    }
    free_pool(ref.pool);
    free_state(&ref.state);
    free_batch(&ref.batch);
    const int batches[] = {1, 7, 16, N};
    for (int j = 1; j <= 2; j++)
        for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++) {
            start_transformer(&ref, j, batches[bi], N);
            prefill(&ref, ids, N, LOGITS_ALL, got);
            int ok = 1;
            for (int i = 0; i < N; i++) {
                const float *g = got + (size_t)i * vocab, *r = want + (size_t)i * vocab;
                float amax = 0.0f, diff = 0.0f;
                for (int k = 0; k < vocab; k++) {
                    amax = fmaxf(amax, fabsf(r[k]));
                    diff = fmaxf(diff, fabsf(g[k] - r[k]));
                }
                // Q8_0: a rounding near a tie parts two correct summation orders (contract section
                // 8; with these ids, at position 38 of an AVX2 build): float32's tolerance over the
                // first 16 positions, the loose one after them. F16 and BF16 round nothing at run
                // time: float32's tolerance throughout.
                if (!q8 || i < 16)
                    ok &= diff <= 1e-4f * (1.0f + amax) && sample_argmax(g, vocab) == sample_argmax(r, vocab);
                else ok &= diff <= 5e-2f * (1.0f + amax);
            }
            CHECK(ok, "stories260K%s: batched logits at -b %d -j %d equal one-position logits", tname, batches[bi], j);
            // generate mode's prefill: the last row's logits alone (by the one-position classifier)
            float *last = prefill(&ref, ids, N, LOGITS_LAST, NULL);
            const float *r = want + (size_t)(N - 1) * vocab;
            float amax = 0.0f, diff = 0.0f;
            for (int k = 0; k < vocab; k++) {
                amax = fmaxf(amax, fabsf(r[k]));
                diff = fmaxf(diff, fabsf(last[k] - r[k]));
            }
            ok = q8 ? diff <= 5e-2f * (1.0f + amax)
                    : diff <= 1e-4f * (1.0f + amax) && sample_argmax(last, vocab) == sample_argmax(r, vocab);
            CHECK(ok, "stories260K%s -b %d -j %d: the last row's logits alone equal one-position logits", tname,
                  batches[bi], j);
            free_pool(ref.pool);
            free_state(&ref.state);
            free_batch(&ref.batch);
        }
    ref.pool = NULL;
    memset(&ref.state, 0, sizeof ref.state);
    memset(&ref.batch, 0, sizeof ref.batch);
    free_transformer(&ref);
    while (n_owned) free(owned[--n_owned]);
    free(want); free(got); free(f32);
}

// ----------------------------------------------------------------------------
// F16 and BF16 (contract 3): the conversions (exact one way, to nearest even the other, as the
// converters write the weights), and the kernels against plain loops

static float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static void test_half_rounding(void) {
    // BF16: nearest, ties to the even result; NaN stays NaN (quiet), infinity stays infinity
    CHECK(fp32_to_bf16(bits_f32(0x3f808000u)) == 0x3f80 && fp32_to_bf16(bits_f32(0x3f818000u)) == 0x3f82 &&
          fp32_to_bf16(bits_f32(0x3f808001u)) == 0x3f81 && fp32_to_bf16(bits_f32(0x3f807fffu)) == 0x3f80 &&
          fp32_to_bf16(bits_f32(0xbf818000u)) == 0xbf82, "BF16 rounds to nearest, ties to even");
    CHECK(fp32_to_bf16(bits_f32(0x7f7fffffu)) == 0x7f80 && fp32_to_bf16(INFINITY) == 0x7f80 &&
          fp32_to_bf16(-INFINITY) == 0xff80, "BF16: the largest floats round to infinity");
    uint16_t n1 = fp32_to_bf16(bits_f32(0x7f800001u)), n2 = fp32_to_bf16(bits_f32(0xffffffffu));
    CHECK(isnan(bf16_to_fp32(n1)) && isnan(bf16_to_fp32(n2)) && (n1 & 0x40) && (n2 & 0x8000),
          "BF16: a NaN whose payload is in the low bits stays NaN (%04x %04x)", n1, n2);
    CHECK(isnan(bf16_to_fp32(0x7fc1)) && bf16_to_fp32(0x0001) == bits_f32(0x00010000u) &&
          bf16_to_fp32(0xc2f7) == -123.5f, "BF16 -> float: bits << 16 (NaN, a subnormal, -123.5)");
    int exact = 1;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = bf16_to_fp32((uint16_t)h);
        exact &= isnan(f) ? 1 : fp32_to_bf16(f) == h && f32_bits(f) == h << 16;
    }
    CHECK(exact, "every BF16 value converts to float and back unchanged");

    // F16 as a converter rounds a weight: ties to even, overflow to infinity, subnormals
    float in[] = {1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f, 65504.0f, 65519.0f, 65520.0f, 70000.0f, -1e6f,
                  0x1p-25f, 3 * 0x1p-25f, 0x1p-24f * 1.5f, 0x1p-24f * 1023.0f, 0x1p-14f, -0x1p-24f, NAN},
          want[] = {1.0f, 1.0f + 0x1p-9f, 65504.0f, 65504.0f, INFINITY, INFINITY, -INFINITY,
                    0.0f, 0x1p-23f, 0x1p-23f, 0x1p-24f * 1023.0f, 0x1p-14f, -0x1p-24f, NAN};
    enum { NH = sizeof in / sizeof in[0] };
    float out[NH];
    round_to_half(out, in, NH, WEIGHT_F16);
    int ok = 1;
    for (int i = 0; i < NH; i++) {
        int same = isnan(want[i]) ? isnan(out[i]) : out[i] == want[i];
        if (!same) fprintf(stderr, "  F16 rounding of %a: %a, want %a\n", in[i], out[i], want[i]);
        ok &= same;
    }
    CHECK(ok, "F16 rounding: ties to even, from 65520 on to infinity, subnormals, NaN");
    CHECK(fp16_to_fp32(0x0001) == 0x1p-24f && fp16_to_fp32(0x03ff) == 1023 * 0x1p-24f &&
          fp16_to_fp32(0x8001) == -0x1p-24f && fp16_to_fp32(0x0400) == 0x1p-14f, "F16 subnormals convert exactly");
    float bin[] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, NAN, 3e38f}, bout[4];
    round_to_half(bout, bin, 4, WEIGHT_BF16);
    CHECK(bout[0] == 1.0f && bout[1] == 1.0f + 0x1p-6f && isnan(bout[2]) && bout[3] == bits_f32(0x7f620000u),
          "BF16 rounding: ties to even, NaN stays NaN");
}


// out[r] = sum_j w[r][j] * xr[j] in double, and the sum of the terms' magnitudes
static void half_matvec_plain(double *out, double *mag, const uint16_t *w, const float *xr, int d, int rows, int type) {
    for (int r = 0; r < rows; r++) {
        double s = 0.0, m = 0.0;
        for (int j = 0; j < d; j++) {
            double t = (double)w16_value(w + (size_t)r * d, (size_t)j, type) * xr[j];
            s += t;
            m += fabs(t);
        }
        out[r] = s;
        mag[r] = m;
    }
}

// The one-position and batched 16-bit kernels against the plain loop (weights converted exactly,
// the activation in float32, not rounded): through the one-position dispatch, odd row counts (not
// a multiple of the four-row pass or the tile), d = 64, 96, 172 and 288 (vector tails of every
// length), T = 1, 7 and 33, strided rows, accumulation over a row range. With small integers
// every sum is exact, so those runs must equal the plain loop bit for bit.
static void test_half_kernels(void) {
    enum { N = 23, MAX_D = 288, MAX_T = 33, LDX = MAX_D + 3, LDO = N + 5 };
    const int ds[] = {64, 96, 172, 288}, ts[] = {1, 7, 33}, types[] = {WEIGHT_F16, WEIGHT_BF16};
    uint16_t *w = xcalloc(N * MAX_D, sizeof(uint16_t));
    float *x = xcalloc(MAX_T * LDX, sizeof(float)), *xr = xcalloc(MAX_T * LDX, sizeof(float));
    float *out = xcalloc(MAX_T * LDO, sizeof(float)), one[N];
    double want[N], mag[N];
    RunState st = {0};
    unsigned long long rng = 11;
    for (int ty = 0; ty < 2; ty++)
        for (int integer = 0; integer < 2; integer++)
            for (size_t di = 0; di < sizeof ds / sizeof ds[0]; di++) {
                int type = types[ty], d = ds[di];
                const char *tn = type == WEIGHT_F16 ? "F16" : "BF16", *kind = integer ? "integer" : "random";
                for (int i = 0; i < N * d; i++) {
                    float f = integer ? (float)((int)(random_u32(&rng) % 17) - 8) : (random_f32(&rng) - 0.5f) * 4.0f;
                    // F16: some weights subnormal, to take the conversion's other branch
                    if (!integer && type == WEIGHT_F16 && i % 29 == 3) f = (random_f32(&rng) - 0.5f) * 0x1p-15f;
                    w[i] = half_bits(f, type);
                }
                for (int i = 0; i < MAX_T * LDX; i++)
                    x[i] = integer ? (float)((int)(random_u32(&rng) % 17) - 8) : (random_f32(&rng) - 0.5f) * 6.0f;
                // one position, through matmul_input and the dispatch
                Matrix m = {w, type};
                int ok = 1, exact = 1;
                Input in = matmul_input(&st, x, d, &m, 1);
                half_matvec_plain(want, mag, w, x, d, N, type);
                for (int r = 0; r < N; r++) one[r] = -1.0f;
                matvec_any(one, &in, m, d, 0, N, 0);
                for (int r = 0; r < N; r++) {
                    ok &= fabs(one[r] - want[r]) <= 1e-6 * (1.0 + mag[r]);
                    exact &= one[r] == (float)want[r];
                }
                CHECK(ok && (!integer || exact), "%s matvec, %s, d = %d, %d rows: the plain loop's value", tn, kind, d, N);
                for (int r = 0; r < N; r++) one[r] = 1.0f;
                matvec_any(one, &in, m, d, 5, 18, 1);
                ok = 1;
                for (int r = 0; r < N; r++)
                    ok &= r >= 5 && r < 18 ? fabs(one[r] - 1.0 - want[r]) <= 1e-6 * (2.0 + mag[r]) : one[r] == 1.0f;
                CHECK(ok, "%s matvec, %s, d = %d: rows [5, 18) accumulated, the others untouched", tn, kind, d);

                // batched
                for (size_t ti = 0; ti < sizeof ts / sizeof ts[0]; ti++) {
                    int T = ts[ti];
                    memcpy(xr, x, sizeof(float) * MAX_T * LDX);
                    for (int i = 0; i < MAX_T * LDO; i++) out[i] = 1.0f;
                    matmat16_rows(out, LDO, xr, LDX, w, d, T, 0, N, 0, type);
                    ok = 1, exact = 1;
                    int untouched = 1;
                    for (int t = 0; t < T; t++) {
                        half_matvec_plain(want, mag, w, xr + t * LDX, d, N, type);
                        for (int r = 0; r < N; r++) {
                            ok &= fabs(out[t * LDO + r] - want[r]) <= 1e-6 * (1.0 + mag[r]);
                            exact &= out[t * LDO + r] == (float)want[r];
                        }
                        for (int r = N; r < LDO; r++) untouched &= out[t * LDO + r] == 1.0f;
                    }
                    CHECK(ok && untouched && (!integer || exact), "%s matmat, %s, T = %d, d = %d, %d rows: the plain loop's value",
                          tn, kind, T, d, N);
                    for (int i = 0; i < MAX_T * LDO; i++) out[i] = 1.0f;
                    matmat16_rows(out, LDO, xr, LDX, w, d, T, 3, 18, 1, type);
                    ok = 1;
                    for (int t = 0; t < T; t++) {
                        half_matvec_plain(want, mag, w, xr + t * LDX, d, N, type);
                        for (int r = 0; r < N; r++)
                            ok &= r >= 3 && r < 18 ? fabs(out[t * LDO + r] - 1.0 - want[r]) <= 1e-6 * (2.0 + mag[r])
                                                   : out[t * LDO + r] == 1.0f;
                    }
                    CHECK(ok, "%s matmat, %s, T = %d, d = %d: rows [3, 18) accumulated, the others untouched", tn, kind,
                          T, d);
                }
            }
    // the activation is not rounded to F16: 70000 (infinity in F16) and 1 + 2^-20 (1 in F16) stay
    for (int i = 0; i < N * 64; i++) w[i] = half_bits(i % 64 == 7 ? 1.0f : i % 64 == 9 ? 1024.0f : 0.0f, WEIGHT_F16);
    for (int j = 0; j < 64; j++) x[j] = j == 7 ? 70000.0f : j == 9 ? 1.0f + 0x1p-20f : 1.0f;
    Matrix m = {w, WEIGHT_F16};
    Input in = matmul_input(&st, x, 64, &m, 1);
    matvec_any(one, &in, m, 64, 0, N, 0);
    matmat16_rows(out, LDO, x, LDX, w, 64, 1, 0, N, 0, WEIGHT_F16);
    int kept = 1;
    for (int r = 0; r < N; r++) kept &= one[r] == 70000.0f + 1024.0f + 0x1p-10f && out[r] == one[r];
    CHECK(kept, "F16 weights multiply the float32 activation as it is (not rounded to F16)");
    free(w); free(x); free(xr); free(out);
}

static void parse_argv_missing_b(const void *ctx) {
    (void)ctx;
    char *argv[] = {"run", "m.bin", "-j", "1", "-b"};
    parse_args(5, argv);
}

// -b: an integer >= 1 of any number of digits, clamped to seq_len; 0, negative, not a number, or
// no value at all: a usage error
static void test_batch_flag(void) {
    CHECK(parse_one("-b", "7").batch == 7 && parse_one("-b", "+7").batch == 7, "-b 7");
    CHECK(parse_one("-b", "1").batch == 1, "-b 1");
    CHECK(parse_one("-b", "99999999999999999999999999").batch == LLONG_MAX, "-b beyond 64 bits saturates");
    CHECK(parse_one("-n", "5").batch == 512, "-b defaults to 512");
    CHECK(clamp_batch(LLONG_MAX, 256) == 256 && clamp_batch(512, 256) == 256 && clamp_batch(7, 256) == 7 &&
              clamp_batch(1, 1) == 1, "-b clamps to seq_len");
    const char *bad[][2] = {{"-b", "0"}, {"-b", "-1"}, {"-b", "x"}, {"-b", "-0"}, {"-b", ""}, {"-b", "1.5"},
                            {"-b", "-99999999999999999999999"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char err[4096];
        int code = child_exit(parse_argv, bad[i], err, sizeof err);
        CHECK(code == 2 && !strncmp(err, "error: ", 7),
              "-b '%s' is a usage error (exit %d)", bad[i][1], code);
    }
    char err[4096];
    int code = child_exit(parse_argv_missing_b, NULL, err, sizeof err);
    CHECK(code == 2 && !strncmp(err, "error: ", 7), "-b without its value is a usage error (exit %d)", code);
}

int main(void) {
    test_rng();
    test_sampler();
    test_parsing();
    test_decode();
    test_tokenizer();
    test_generation(1, 0);
    test_generation(2, 0);
    test_fp16();
    test_q8_quantize();
    test_q8_dot();
    test_f32_matvec();
    test_generation(1, 1);
    test_generation(2, 1);
    test_tokenizer_file_rules();
    test_gguf_rules();
    test_gguf_q8();
    test_flag_ranges();
    test_f32_matmat();
    test_q8_matmat();
    test_batched_logits(WEIGHT_F32);
    test_batched_logits(WEIGHT_Q8_0);
    test_batched_logits(WEIGHT_F16);
    test_batched_logits(WEIGHT_BF16);
    test_batch_flag();
    test_half_rounding();
    test_half_kernels();
    test_gguf_keys();
    test_gguf_half();
    test_kv_cache();
    printf("%d passed, %d failed", passed, failed);
    if (skipped) printf(", %d skipped", skipped);
    printf("\n");
    return failed ? 1 : 0;
}
