/*
 * The model's hyperparameters, as run.c's Config, and the contract's header checks (section 4,
 * step 3): every value is checked in 64 bits before anything is sized from it.
 */
package polyllama;

final class Config {
    static final long MAX_DIM = 65536, MAX_HIDDEN = 262144, MAX_LAYERS = 1024, MAX_VOCAB = 1 << 20,
            MAX_SEQ = 65536, MAX_KV_BYTES = 4L << 30;

    final int dim;           // transformer width
    final int hiddenDim;     // FFN width
    final int nLayers;
    final int nHeads;        // query heads
    final int nKvHeads;      // key/value heads (< nHeads: grouped-query attention)
    final int vocabSize;     // always positive here; sharing is its own flag
    final int seqLen;        // max positions
    final boolean sharedClassifier;
    final int headSize, kvDim, kvMul;
    // A GGUF's own hyperparameters (contract section 4's key table); a .bin has none, so these
    // are llama2.c's values. Set by the reader after validated(), before anything uses them.
    double theta = 10000;    // RoPE base
    float eps = 1e-5f;       // rmsnorm's epsilon
    int bos = 1, eos = 2;    // the tokenizer's BOS and EOS ids

    private Config(long[] v, boolean shared) {
        dim = (int) v[0]; hiddenDim = (int) v[1]; nLayers = (int) v[2]; nHeads = (int) v[3];
        nKvHeads = (int) v[4]; vocabSize = (int) v[5]; seqLen = (int) v[6];
        sharedClassifier = shared;
        headSize = dim / nHeads;
        kvDim = nKvHeads * headSize;
        kvMul = nHeads / nKvHeads;
    }

    /** The contract's section-4 checks, in its order, on 64-bit values, before any allocation. */
    static Config validated(String path, long dim, long hidden, long layers, long heads, long kvHeads,
                            long vocab, long seq, boolean shared) {
        String[] names = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
        long[] v = {dim, hidden, layers, heads, kvHeads, vocab, seq};
        for (int i = 0; i < v.length; i++) {
            if (v[i] <= 0) throw new FormatError(path, "header value " + names[i] + "=" + v[i] + " must be positive");
        }
        long[][] limits = {{0, MAX_DIM}, {1, MAX_HIDDEN}, {2, MAX_LAYERS}, {5, MAX_VOCAB}, {6, MAX_SEQ}, {3, dim}};
        for (long[] lim : limits) {
            int i = (int) lim[0];
            if (v[i] > lim[1]) {
                throw new FormatError(path, "header value " + names[i] + "=" + v[i] + " exceeds the limit " + lim[1]);
            }
        }
        if (dim % heads != 0) throw new FormatError(path, "dim=" + dim + " is not a multiple of n_heads=" + heads);
        long headSize = dim / heads;
        if (headSize % 2 != 0) throw new FormatError(path, "head_size=" + headSize + " must be even for RoPE");
        if (kvHeads > heads || heads % kvHeads != 0) {
            throw new FormatError(path, "n_heads=" + heads + " is not a multiple of n_kv_heads=" + kvHeads);
        }
        return new Config(v, shared);
    }

    /**
     * The KV cache for rows positions (what the run can reach: its clamped steps or its -k ids),
     * checked against the contract's 4 GiB before it is allocated.
     */
    void checkKvCache(String path, long rows) {
        long kvBytes = (long) nLayers * rows * kvDim * 2 * 4;  // every factor is bounded: no overflow
        if (kvBytes > MAX_KV_BYTES) {
            throw new FormatError(path, "KV cache of " + kvBytes + " bytes for " + rows + " positions exceeds the 4 GiB limit");
        }
    }

    /** Floats of every weight tensor the forward pass reads (wcls included when unshared). */
    long weightCount() {
        long d = dim, h = hiddenDim, l = nLayers, kv = kvDim, v = vocabSize;
        long n = v * d + 2 * l * d + d + l * (2 * d * d + 2 * kv * d + 3 * h * d);
        return sharedClassifier ? n : n + v * d;
    }

    /** For messages: the header values a size was computed from. */
    String describe() {
        return "dim=" + dim + " hidden_dim=" + hiddenDim + " n_layers=" + nLayers + " n_heads=" + nHeads
                + " n_kv_heads=" + nKvHeads + " vocab_size=" + vocabSize + " seq_len=" + seqLen;
    }
}
