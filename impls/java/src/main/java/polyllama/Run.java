/*
 * polyllama's Java port: Llama 2 inference for Karpathy's llama2.c model family, in one file,
 * laid out like llama2.c's run.c: model (config, weights, state), forward pass, tokenizer,
 * sampler, generation, command line. docs/port-contract.md is the specification; the Python
 * reference core (orchestrator/reference) is the executable definition.
 *
 * Weights stay in the page cache: the checkpoint is memory-mapped (FileChannel.map, in blocks
 * below the 2 GiB ByteBuffer limit) and never copied. The inner loops come from Kernels: the
 * Vector API (SimdKernels, jdk.incubator.vector) when the JVM has the module, plain Java
 * otherwise. -j N runs the forward pass on a pool of N compute threads made once, the main
 * thread being one of them.
 */
package polyllama;

import java.io.BufferedOutputStream;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.math.BigInteger;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.LockSupport;
import java.util.regex.Pattern;

public final class Run {
    static final String PORT = "java";
    static final int EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_BAD_FILE = 3;
    static final String USAGE = "usage: run <checkpoint> [-z tokenizer] [-t temperature] [-p topp] [-s seed] "
            + "[-n steps] [-i prompt] [-j threads] [-m generate|logits] [-o file] [-k ids] [-e 0|1]";

    private Run() {}

    // ============================================================================================
    // Errors: every failure ends the run as one `error:` line and the contract's exit code

    /** A failure the user reads as one line; never printed with a stack trace. */
    static final class Fail extends RuntimeException {
        final int code;

        Fail(int code, String message) {
            super(message, null, false, false);
            this.code = code;
        }
    }

    static Fail usage(String message) {
        return new Fail(EXIT_USAGE, message);
    }

    static Fail badFile(String path, String problem) {
        return new Fail(EXIT_BAD_FILE, path + ": " + problem);
    }

    // ============================================================================================
    // Model: config, weights, run state

    static final long MAX_DIM = 65536, MAX_HIDDEN = 262144, MAX_LAYERS = 1024, MAX_VOCAB = 1 << 20,
            MAX_SEQ = 65536, MAX_KV_BYTES = 4L << 30;

    static final class Config {
        final int dim;           // transformer width
        final int hiddenDim;     // FFN width
        final int nLayers;
        final int nHeads;        // query heads
        final int nKvHeads;      // key/value heads (< nHeads: grouped-query attention)
        final int vocabSize;     // always positive here; sharing is its own flag
        final int seqLen;        // max positions
        final boolean sharedClassifier;
        final int headSize, kvDim, kvMul;

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
                if (v[i] <= 0) throw badFile(path, "header value " + names[i] + "=" + v[i] + " must be positive");
            }
            long[][] limits = {{0, MAX_DIM}, {1, MAX_HIDDEN}, {2, MAX_LAYERS}, {5, MAX_VOCAB}, {6, MAX_SEQ}, {3, dim}};
            for (long[] lim : limits) {
                int i = (int) lim[0];
                if (v[i] > lim[1]) {
                    throw badFile(path, "header value " + names[i] + "=" + v[i] + " exceeds the limit " + lim[1]);
                }
            }
            if (dim % heads != 0) throw badFile(path, "dim=" + dim + " is not a multiple of n_heads=" + heads);
            long headSize = dim / heads;
            if (headSize % 2 != 0) throw badFile(path, "head_size=" + headSize + " must be even for RoPE");
            if (kvHeads > heads || heads % kvHeads != 0) {
                throw badFile(path, "n_heads=" + heads + " is not a multiple of n_kv_heads=" + kvHeads);
            }
            long kvBytes = layers * seq * (kvHeads * headSize) * 2 * 4;  // every factor is bounded: no overflow
            if (kvBytes > MAX_KV_BYTES) throw badFile(path, "KV cache of " + kvBytes + " bytes exceeds the 4 GiB limit");
            return new Config(v, shared);
        }

        /** Floats of every weight tensor the forward pass reads (wcls included when unshared). */
        long weightCount() {
            long d = dim, h = hiddenDim, l = nLayers, kv = kvDim, v = vocabSize;
            long n = v * d + 2 * l * d + d + l * (2 * d * d + 2 * kv * d + 3 * h * d);
            return sharedClassifier ? n : n + v * d;
        }
    }

    /**
     * A (rows, cols) float32 matrix inside the mapped file. A ByteBuffer indexes with an int, so the
     * rows are mapped in blocks of at most 1 GiB; a row never straddles two blocks.
     */
    static final class Matrix {
        static final long BLOCK_BYTES = 1L << 30;
        final int rows, cols;
        final int rowsPerBlock;
        final ByteBuffer[] blocks;   // little-endian, read-only

        Matrix(FileChannel ch, long offset, int rows, int cols) throws IOException {
            this.rows = rows;
            this.cols = cols;
            long rowBytes = 4L * cols;
            this.rowsPerBlock = (int) Math.max(1, Math.min(rows, BLOCK_BYTES / rowBytes));
            int n = (rows + rowsPerBlock - 1) / rowsPerBlock;
            blocks = new ByteBuffer[n];
            for (int b = 0; b < n; b++) {
                int first = b * rowsPerBlock, count = Math.min(rowsPerBlock, rows - first);
                blocks[b] = ch.map(FileChannel.MapMode.READ_ONLY, offset + first * rowBytes, count * rowBytes)
                        .order(ByteOrder.LITTLE_ENDIAN);
            }
        }

        /** dst[0 .. cols) = row r (the token embedding lookup). */
        void copyRow(int r, float[] dst) {
            ByteBuffer bb = blocks[r / rowsPerBlock];
            int base = (r % rowsPerBlock) * cols * 4;
            for (int i = 0; i < cols; i++) dst[i] = bb.getFloat(base + 4 * i);
        }

        /** The whole tensor on the heap: only for the small norm vectors. */
        float[] toArray() {
            float[] out = new float[rows * cols];
            for (int r = 0; r < rows; r++) {
                ByteBuffer bb = blocks[r / rowsPerBlock];
                int base = (r % rowsPerBlock) * cols * 4;
                for (int i = 0; i < cols; i++) out[r * cols + i] = bb.getFloat(base + 4 * i);
            }
            return out;
        }
    }

    static final class Weights {
        Matrix tokenEmbedding;           // (vocab, dim)
        float[][] rmsAtt;                // (layer, dim)
        Matrix[] wq;                     // (layer, dim, n_heads * head_size)
        Matrix[] wk;                     // (layer, kv_dim, dim)
        Matrix[] wv;                     // (layer, kv_dim, dim)
        Matrix[] wo;                     // (layer, dim, n_heads * head_size)
        float[][] rmsFfn;                // (layer, dim)
        Matrix[] w1;                     // (layer, hidden_dim, dim)
        Matrix[] w2;                     // (layer, dim, hidden_dim)
        Matrix[] w3;                     // (layer, hidden_dim, dim)
        float[] rmsFinal;                // (dim)
        Matrix wcls;                     // (vocab, dim): token_embedding when shared

        Weights(int layers) {
            rmsAtt = new float[layers][];
            rmsFfn = new float[layers][];
            wq = new Matrix[layers]; wk = new Matrix[layers]; wv = new Matrix[layers]; wo = new Matrix[layers];
            w1 = new Matrix[layers]; w2 = new Matrix[layers]; w3 = new Matrix[layers];
        }
    }

    static final class Model {
        final Config config;
        final Weights weights;
        final Vocab vocab;   // the GGUF's embedded tokenizer; null for .bin checkpoints

        Model(Config config, Weights weights, Vocab vocab) {
            this.config = config;
            this.weights = weights;
            this.vocab = vocab;
        }
    }

    // ----------------------------------------------------------------------- file access helpers

    static FileChannel openFile(String path) {
        Path p = Path.of(path);
        if (Files.isDirectory(p)) throw badFile(path, "cannot open: is a directory");
        try {
            return FileChannel.open(p, StandardOpenOption.READ);
        } catch (NoSuchFileException e) {
            throw badFile(path, "cannot open: no such file");
        } catch (AccessDeniedException e) {
            throw badFile(path, "cannot open: permission denied");
        } catch (IOException | SecurityException e) {
            throw badFile(path, "cannot open: " + e.getMessage());
        }
    }

    /** Up to n bytes from the start of the file (fewer when it is shorter). */
    static ByteBuffer readHead(FileChannel ch, long at, int n) throws IOException {
        ByteBuffer bb = ByteBuffer.allocate(n).order(ByteOrder.LITTLE_ENDIAN);
        while (bb.hasRemaining()) {
            if (ch.read(bb, at + bb.position()) < 0) break;
        }
        bb.flip();
        return bb;
    }

    static void checkSize(String path, long actual, long expected, Config c) {
        if (actual != expected) {
            String kind = actual < expected ? "truncated" : "oversized";
            throw badFile(path, kind + ": file is " + actual + " bytes, header (dim=" + c.dim + " hidden_dim="
                    + c.hiddenDim + " n_layers=" + c.nLayers + " n_heads=" + c.nHeads + " n_kv_heads=" + c.nKvHeads
                    + " vocab_size=" + c.vocabSize + " seq_len=" + c.seqLen + ") implies " + expected);
        }
    }

    /** Maps the tensors of a .bin checkpoint laid out back to back, in the given order. */
    static final class Layout {
        final FileChannel ch;
        long offset;

        Layout(FileChannel ch, long offset) {
            this.ch = ch;
            this.offset = offset;
        }

        Matrix matrix(int rows, int cols) throws IOException {
            Matrix m = new Matrix(ch, offset, rows, cols);
            offset += 4L * rows * cols;
            return m;
        }

        Matrix[] perLayer(int layers, int rows, int cols) throws IOException {
            Matrix[] out = new Matrix[layers];
            for (int l = 0; l < layers; l++) out[l] = matrix(rows, cols);
            return out;
        }

        float[][] vectors(int layers, int n) throws IOException {
            float[][] out = new float[layers][];
            for (int l = 0; l < layers; l++) out[l] = matrix(1, n).toArray();
            return out;
        }

        void skip(long floats) {
            offset += 4 * floats;
        }
    }

    // ------------------------------------------------------------------------- llama2.c v0 / v1

    static final int V1_MAGIC = 0x616b3432, V1_HEADER = 256, V0_HEADER = 28;

    static Model readV0(String path, FileChannel ch) throws IOException {
        long size = ch.size();
        ByteBuffer h = readHead(ch, 0, V0_HEADER);
        if (h.remaining() < V0_HEADER) {
            throw badFile(path, "truncated: " + h.remaining() + " bytes, a v0 header needs " + V0_HEADER);
        }
        int[] v = new int[7];
        for (int i = 0; i < 7; i++) v[i] = h.getInt(4 * i);
        long vocab = Math.abs((long) v[5]);  // negative: unshared classifier
        Config c = Config.validated(path, v[0], v[1], v[2], v[3], v[4], vocab, v[6], v[5] > 0);
        long freqFloats = 2L * c.seqLen * (c.headSize / 2);
        checkSize(path, size, V0_HEADER + 4 * (c.weightCount() + freqFloats), c);

        Weights w = new Weights(c.nLayers);
        Layout at = new Layout(ch, V0_HEADER);
        int L = c.nLayers, d = c.dim;
        w.tokenEmbedding = at.matrix(c.vocabSize, d);
        w.rmsAtt = at.vectors(L, d);
        w.wq = at.perLayer(L, d, d);
        w.wk = at.perLayer(L, c.kvDim, d);
        w.wv = at.perLayer(L, c.kvDim, d);
        w.wo = at.perLayer(L, d, d);
        w.rmsFfn = at.vectors(L, d);
        w.w1 = at.perLayer(L, c.hiddenDim, d);
        w.w2 = at.perLayer(L, d, c.hiddenDim);
        w.w3 = at.perLayer(L, c.hiddenDim, d);
        w.rmsFinal = at.matrix(1, d).toArray();
        at.skip(freqFloats);  // legacy freq_cis_real/imag: RoPE is computed instead
        w.wcls = c.sharedClassifier ? w.tokenEmbedding : at.matrix(c.vocabSize, d);
        return new Model(c, w, null);
    }

    static Model readV1(String path, FileChannel ch) throws IOException {
        long size = ch.size();
        ByteBuffer h = readHead(ch, 0, V1_HEADER);
        if (h.remaining() < V1_HEADER) {
            throw badFile(path, "truncated: " + h.remaining() + " bytes, a v1 header needs " + V1_HEADER);
        }
        int version = h.getInt(4);
        if (version != 1) {
            throw badFile(path, "unsupported llama2.c format version " + version + " (only 0 and 1 are fp32)");
        }
        int[] v = new int[7];
        for (int i = 0; i < 7; i++) v[i] = h.getInt(8 + 4 * i);
        int shared = h.get(36) & 0xff;
        if (shared > 1) throw badFile(path, "shared_classifier flag is " + shared + ", expected 0 or 1");
        Config c = Config.validated(path, v[0], v[1], v[2], v[3], v[4], v[5], v[6], shared == 1);
        checkSize(path, size, V1_HEADER + 4 * c.weightCount(), c);

        Weights w = new Weights(c.nLayers);
        Layout at = new Layout(ch, V1_HEADER);
        int L = c.nLayers, d = c.dim;
        w.rmsAtt = at.vectors(L, d);
        w.rmsFfn = at.vectors(L, d);
        w.rmsFinal = at.matrix(1, d).toArray();
        w.tokenEmbedding = at.matrix(c.vocabSize, d);
        w.wq = at.perLayer(L, d, d);
        w.wk = at.perLayer(L, c.kvDim, d);
        w.wv = at.perLayer(L, c.kvDim, d);
        w.wo = at.perLayer(L, d, d);
        w.w1 = at.perLayer(L, c.hiddenDim, d);
        w.w2 = at.perLayer(L, d, c.hiddenDim);
        w.w3 = at.perLayer(L, c.hiddenDim, d);
        w.wcls = c.sharedClassifier ? w.tokenEmbedding : at.matrix(c.vocabSize, d);
        return new Model(c, w, null);
    }

    // ------------------------------------------------------------------------------------ GGUF

    static final int GGUF_MAGIC = 0x46554747;  // "GGUF" read as a little-endian uint32
    static final long MAX_ENTRIES = 65536;
    static final int T_STRING = 8, T_ARRAY = 9;
    static final int[] SCALAR_SIZE = {1, 1, 2, 2, 4, 4, 4, 1, -1, -1, 8, 8, 8};  // by value type

    /** A bounds-checked reader over the file: every length is checked against what is left. */
    static final class Cursor {
        final String path;
        final FileChannel ch;
        final long size;
        long off;
        private final ByteBuffer win = ByteBuffer.allocate(1 << 16).order(ByteOrder.LITTLE_ENDIAN);
        private long winStart = -1;

        Cursor(String path, FileChannel ch) throws IOException {
            this.path = path;
            this.ch = ch;
            this.size = ch.size();
        }

        void need(long n, String what) {
            if (n < 0 || n > size - off) {
                throw badFile(path, "truncated or corrupt: " + what + " runs past the end of the file");
            }
        }

        /** The window holds [off, off + n) after this; n is at most 8. */
        private int at(int n) throws IOException {
            if (winStart < 0 || off < winStart || off + n > winStart + win.limit()) {
                win.clear();
                while (win.hasRemaining() && ch.read(win, off + win.position()) > 0) { /* fill */ }
                win.flip();
                winStart = off;
            }
            int i = (int) (off - winStart);
            off += n;
            return i;
        }

        long u64(String what) throws IOException {
            need(8, what);
            return win.getLong(at(8));
        }

        int u32(String what) throws IOException {
            need(4, what);
            return win.getInt(at(4));
        }

        byte[] bytes(long n, String what) throws IOException {
            need(n, what);
            if (n > (1 << 30)) throw badFile(path, what + ": a string of " + n + " bytes");
            byte[] out = new byte[(int) n];
            if (n <= 8) {
                for (int k = 0; k < n; k++) { int i = at(1); out[k] = win.get(i); }
                return out;
            }
            ByteBuffer dst = ByteBuffer.wrap(out);
            while (dst.hasRemaining()) {
                if (ch.read(dst, off + dst.position()) <= 0) throw badFile(path, "read failed");
            }
            off += n;
            return out;
        }

        byte[] string(String what) throws IOException {
            return bytes(u64(what), what);
        }

        /** A scalar of value type t as a Long (integers), a Double (floats) or a Boolean. */
        Object scalar(int t, String what) throws IOException {
            need(SCALAR_SIZE[t], what);
            int i = at(SCALAR_SIZE[t]);
            switch (t) {
                case 0: return (long) (win.get(i) & 0xff);
                case 1: return (long) win.get(i);
                case 2: return (long) (win.getShort(i) & 0xffff);
                case 3: return (long) win.getShort(i);
                case 4: return win.getInt(i) & 0xffffffffL;
                case 5: return (long) win.getInt(i);
                case 6: return (double) win.getFloat(i);
                case 7: return win.get(i) != 0;
                case 10: { long x = win.getLong(i); return x < 0 ? Long.MAX_VALUE : x; }  // past 2^63: absurd anyway
                case 11: return win.getLong(i);
                default: return win.getDouble(i);
            }
        }

        void skip(long n) {
            off += n;
        }
    }

    static final byte[] SPACE_MARK = {(byte) 0xE2, (byte) 0x96, (byte) 0x81};  // U+2581, GGUF's space

    /** The value of one kv pair; arrays are kept only for the tokenizer keys, others skipped. */
    static Object ggufValue(Cursor cur, int type, String key) throws IOException {
        if (type >= 0 && type < SCALAR_SIZE.length && SCALAR_SIZE[type] > 0) return cur.scalar(type, key);
        if (type == T_STRING) return new String(cur.string(key), StandardCharsets.UTF_8);
        if (type != T_ARRAY) throw badFile(cur.path, key + ": unknown value type " + Integer.toUnsignedString(type));
        int etype = cur.u32(key);
        long count = cur.u64(key);
        boolean scalar = etype >= 0 && etype < SCALAR_SIZE.length && SCALAR_SIZE[etype] > 0;
        if (!scalar && etype != T_STRING) {
            throw badFile(cur.path, key + ": unsupported array element type " + Integer.toUnsignedString(etype));
        }
        int minSize = scalar ? SCALAR_SIZE[etype] : 8;
        if (count < 0 || count > (cur.size - cur.off) / minSize) cur.need(Long.MAX_VALUE, key);
        boolean keep = key.equals("tokenizer.ggml.tokens") || key.equals("tokenizer.ggml.scores")
                || key.equals("tokenizer.ggml.token_type");
        if (keep && count > MAX_VOCAB) {
            throw badFile(cur.path, key + " has " + count + " entries, above the vocabulary limit " + MAX_VOCAB);
        }
        if (!scalar) {
            byte[][] out = keep ? new byte[(int) count][] : null;
            for (long i = 0; i < count; i++) {
                if (keep) out[(int) i] = cur.string(key);
                else cur.skip(checkedLength(cur, key));
            }
            return out;
        }
        if (!keep) {
            cur.skip(count * minSize);
            return null;
        }
        double[] out = new double[(int) count];
        for (int i = 0; i < count; i++) {
            Object v = cur.scalar(etype, key);
            out[i] = v instanceof Long ? (double) (Long) v : v instanceof Double ? (Double) v : ((Boolean) v ? 1 : 0);
        }
        return new NumArray(etype, out);
    }

    /** A numeric GGUF array (scores, token types) with its element type. */
    static final class NumArray {
        final int etype;
        final double[] values;

        NumArray(int etype, double[] values) {
            this.etype = etype;
            this.values = values;
        }

        boolean integers() {
            return etype <= 5 || etype == 10 || etype == 11;  // not f32 (6), bool (7) or f64 (12)
        }
    }

    private static long checkedLength(Cursor cur, String key) throws IOException {
        long n = cur.u64(key);
        cur.need(n, key);
        return n;
    }

    static long intKey(String path, Map<String, Object> kv, String key, Long fallback) {
        Object v = kv.getOrDefault(key, fallback);
        if (v == null) throw badFile(path, "missing required key " + key);
        if (!(v instanceof Long)) throw badFile(path, "key " + key + " must be an integer");
        return (Long) v;
    }

    static final class TensorInfo {
        final long[] dims;
        final int type;
        final long offset;

        TensorInfo(long[] dims, int type, long offset) {
            this.dims = dims;
            this.type = type;
            this.offset = offset;
        }
    }

    static Model readGguf(String path, FileChannel ch) throws IOException {
        Cursor cur = new Cursor(path, ch);
        cur.off = 4;
        int version = cur.u32("version");
        if (version != 2 && version != 3) {
            throw badFile(path, "unsupported GGUF version " + Integer.toUnsignedString(version) + " (2 and 3 are read)");
        }
        long nTensors = cur.u64("tensor count"), nKv = cur.u64("kv count");
        if (nTensors < 0 || nKv < 0 || nTensors > MAX_ENTRIES || nKv > MAX_ENTRIES) {
            throw badFile(path, "implausible counts: " + Long.toUnsignedString(nTensors) + " tensors, "
                    + Long.toUnsignedString(nKv) + " keys (limit " + MAX_ENTRIES + ")");
        }
        Map<String, Object> kv = new HashMap<>();
        for (long i = 0; i < nKv; i++) {
            String key = new String(cur.string("key"), StandardCharsets.UTF_8);
            kv.put(key, ggufValue(cur, cur.u32("type of " + key), key));
        }
        Map<String, TensorInfo> tensors = new HashMap<>();
        for (long i = 0; i < nTensors; i++) {
            String name = new String(cur.string("tensor name"), StandardCharsets.UTF_8);
            int nDims = cur.u32(name);
            if (nDims < 0 || nDims > 4) throw badFile(path, "tensor " + name + " has " + Integer.toUnsignedString(nDims) + " dimensions");
            long[] dims = new long[nDims];
            for (int k = 0; k < nDims; k++) dims[k] = cur.u64(name);
            int type = cur.u32(name);
            long offset = cur.u64(name);
            tensors.put(name, new TensorInfo(dims, type, offset));
        }

        if (!"llama".equals(kv.get("general.architecture"))) {
            throw badFile(path, "general.architecture is " + kv.get("general.architecture") + ", expected 'llama'");
        }
        long align = intKey(path, kv, "general.alignment", 32L);
        if (align <= 0 || (align & (align - 1)) != 0 || align > 65536) {
            throw badFile(path, "general.alignment=" + align + " is not a power of two up to 65536");
        }
        long dataStart = (cur.off + align - 1) / align * align;

        Object tokens = kv.get("tokenizer.ggml.tokens"), scores = kv.get("tokenizer.ggml.scores");
        if (!(tokens instanceof byte[][]) || ((byte[][]) tokens).length == 0) {
            throw badFile(path, "missing tokenizer.ggml.tokens");
        }
        byte[][] texts = (byte[][]) tokens;
        if (!(scores instanceof NumArray) || ((NumArray) scores).values.length != texts.length) {
            throw badFile(path, "tokenizer.ggml.scores missing or not one per token");
        }
        long heads = intKey(path, kv, "llama.attention.head_count", null);
        Config c = Config.validated(path,
                intKey(path, kv, "llama.embedding_length", null),
                intKey(path, kv, "llama.feed_forward_length", null),
                intKey(path, kv, "llama.block_count", null),
                heads,
                intKey(path, kv, "llama.attention.head_count_kv", heads),
                texts.length,
                intKey(path, kv, "llama.context_length", null),
                !tensors.containsKey("output.weight"));

        Weights w = new Weights(c.nLayers);
        int d = c.dim;
        GgufTensors t = new GgufTensors(path, ch, cur.size, dataStart, tensors);
        w.tokenEmbedding = t.get("token_embd.weight", c.vocabSize, d);
        w.rmsFinal = t.get("output_norm.weight", 1, d).toArray();
        w.wcls = c.sharedClassifier ? w.tokenEmbedding : t.get("output.weight", c.vocabSize, d);
        for (int l = 0; l < c.nLayers; l++) {
            String b = "blk." + l + ".";
            w.rmsAtt[l] = t.get(b + "attn_norm.weight", 1, d).toArray();
            w.wq[l] = t.get(b + "attn_q.weight", d, d);
            w.wk[l] = t.get(b + "attn_k.weight", c.kvDim, d);
            w.wv[l] = t.get(b + "attn_v.weight", c.kvDim, d);
            w.wo[l] = t.get(b + "attn_output.weight", d, d);
            w.rmsFfn[l] = t.get(b + "ffn_norm.weight", 1, d).toArray();
            w.w1[l] = t.get(b + "ffn_gate.weight", c.hiddenDim, d);
            w.w2[l] = t.get(b + "ffn_down.weight", d, c.hiddenDim);
            w.w3[l] = t.get(b + "ffn_up.weight", c.hiddenDim, d);
        }

        Object types = kv.get("tokenizer.ggml.token_type");
        if (types != null && !(types instanceof NumArray && ((NumArray) types).integers())) {
            throw badFile(path, "tokenizer.ggml.token_type must be an array of integers");
        }
        double[] ttypes = types != null && ((NumArray) types).values.length == texts.length ? ((NumArray) types).values : null;
        double[] sc = ((NumArray) scores).values;
        byte[][] pieces = new byte[texts.length][];
        float[] fscores = new float[texts.length];
        for (int i = 0; i < texts.length; i++) {
            pieces[i] = ggufPiece(texts[i], ttypes == null ? -1 : (int) ttypes[i]);
            fscores[i] = (float) sc[i];
        }
        return new Model(c, w, new Vocab(pieces, fscores));
    }

    /** Looks up GGUF tensors by name and checks type, shape and extent before mapping them. */
    static final class GgufTensors {
        final String path;
        final FileChannel ch;
        final long size, dataStart;
        final Map<String, TensorInfo> infos;

        GgufTensors(String path, FileChannel ch, long size, long dataStart, Map<String, TensorInfo> infos) {
            this.path = path; this.ch = ch; this.size = size; this.dataStart = dataStart; this.infos = infos;
        }

        /** rows == 1 stands for a vector (one GGUF dimension). */
        Matrix get(String name, int rows, int cols) throws IOException {
            TensorInfo t = infos.get(name);
            if (t == null) throw badFile(path, "missing tensor " + name);
            if (t.type != 0) {
                throw badFile(path, "tensor " + name + " has type " + Integer.toUnsignedString(t.type) + "; only F32 (0) is supported");
            }
            long[] want = rows == 1 ? new long[] {cols} : new long[] {cols, rows};  // GGUF: innermost first
            if (!Arrays.equals(t.dims, want)) {
                StringBuilder got = new StringBuilder("[");
                for (int i = 0; i < t.dims.length; i++) got.append(i > 0 ? ", " : "").append(Long.toUnsignedString(t.dims[i]));
                throw badFile(path, "tensor " + name + " has dims " + got + "], expected " + Arrays.toString(want));
            }
            long nbytes = 4L * rows * cols;
            if (t.offset < 0 || t.offset % 4 != 0 || t.offset > size || dataStart + t.offset + nbytes > size) {
                throw badFile(path, "tensor " + name + " lies outside the file");
            }
            return new Matrix(ch, dataStart + t.offset, rows, cols);
        }
    }

    /** A GGUF token as llama2.c bytes: U+2581 back to a space, llama.cpp's <s> and </s> to run.c's. */
    static byte[] ggufPiece(byte[] text, int type) {
        if (type == 3) {
            String s = new String(text, StandardCharsets.UTF_8);
            if (s.equals("<s>")) return "\n<s>\n".getBytes(StandardCharsets.US_ASCII);
            if (s.equals("</s>")) return "\n</s>\n".getBytes(StandardCharsets.US_ASCII);
        }
        int n = text.length;
        byte[] out = new byte[n];
        int o = 0;
        for (int i = 0; i < n; i++) {
            if (i + 2 < n && text[i] == SPACE_MARK[0] && text[i + 1] == SPACE_MARK[1] && text[i + 2] == SPACE_MARK[2]) {
                out[o++] = ' ';
                i += 2;
            } else {
                out[o++] = text[i];
            }
        }
        return Arrays.copyOf(out, o);
    }

    /** Sniffs the format from the first bytes and reads the checkpoint: header checks, then mmap. */
    static Model readModel(String path) {
        try (FileChannel ch = openFile(path)) {
            ByteBuffer head = readHead(ch, 0, 4);
            int magic = head.remaining() == 4 ? head.getInt(0) : 0;
            if (magic == GGUF_MAGIC) return readGguf(path, ch);
            if (magic == V1_MAGIC) return readV1(path, ch);
            return readV0(path, ch);
        } catch (IOException e) {
            throw badFile(path, "cannot read: " + e.getMessage());
        }
    }

    /** The run state: activations of the current position and the KV cache of all positions so far. */
    static final class RunState {
        final float[] x;              // (dim) the residual stream
        final float[] xb;             // (dim) the normed input of a block, then attention's output
        final float[] xb2;            // (dim) a block's output before the residual add
        final float[] hb;             // (hidden_dim) silu(w1 x) * (w3 x)
        final float[] hb2;            // (hidden_dim) w3 x
        final float[] q;              // (dim) the query of every head
        final float[][] att;          // (worker, seq_len) attention scores, a row made by each worker on first use
        final float[] logits;         // (vocab)
        final float[][] keyCache;     // (layer, seq_len * kv_dim)
        final float[][] valueCache;   // (layer, seq_len * kv_dim)
        final float[] ropeFreq;       // (head_size / 2) 1 / 10000^(2i / head_size)
        final float[] ropeCos, ropeSin; // (dim / 2) this position's rotation of each pair

        RunState(Config c, int workers) {
            x = new float[c.dim];
            xb = new float[c.dim];
            xb2 = new float[c.dim];
            hb = new float[c.hiddenDim];
            hb2 = new float[c.hiddenDim];
            q = new float[c.dim];
            att = new float[workers][];
            logits = new float[c.vocabSize];
            keyCache = new float[c.nLayers][c.seqLen * c.kvDim];
            valueCache = new float[c.nLayers][c.seqLen * c.kvDim];
            ropeFreq = new float[c.headSize / 2];
            for (int i = 0; i < c.headSize; i += 2) {
                ropeFreq[i / 2] = (float) (1.0 / Math.pow(10000.0, (float) i / (float) c.headSize));
            }
            ropeCos = new float[c.dim / 2];
            ropeSin = new float[c.dim / 2];
        }
    }

    // ============================================================================================
    // Kernels: the inner loops, vectorised by SimdKernels when jdk.incubator.vector is there

    interface Kernels {
        /** out[outOff + r] = (row r of the (nRows, n) matrix at bb[byteOff ..]) . x[0 .. n), r < nRows. */
        void matvec(ByteBuffer bb, int byteOff, int nRows, float[] x, int n, float[] out, int outOff);

        /** a[ao ..] . b[bo ..] over n floats. */
        float dot(float[] a, int ao, float[] b, int bo, int n);

        /** y[yo ..] += s * x[xo ..] over n floats. */
        void axpy(float[] y, int yo, float s, float[] x, int xo, int n);

        String name();
    }

    /** Plain Java: the portable fallback, four accumulators so the JIT can overlap the loads. */
    static final class ScalarKernels implements Kernels {
        @Override
        public void matvec(ByteBuffer bb, int byteOff, int nRows, float[] x, int n, float[] out, int outOff) {
            for (int r = 0; r < nRows; r++) {
                int base = byteOff + r * n * 4;
                float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                int i = 0;
                for (; i + 3 < n; i += 4) {
                    s0 += bb.getFloat(base + 4 * i) * x[i];
                    s1 += bb.getFloat(base + 4 * i + 4) * x[i + 1];
                    s2 += bb.getFloat(base + 4 * i + 8) * x[i + 2];
                    s3 += bb.getFloat(base + 4 * i + 12) * x[i + 3];
                }
                for (; i < n; i++) s0 += bb.getFloat(base + 4 * i) * x[i];
                out[outOff + r] = (s0 + s1) + (s2 + s3);
            }
        }

        @Override
        public float dot(float[] a, int ao, float[] b, int bo, int n) {
            float s = 0;
            for (int i = 0; i < n; i++) s += a[ao + i] * b[bo + i];
            return s;
        }

        @Override
        public void axpy(float[] y, int yo, float s, float[] x, int xo, int n) {
            for (int i = 0; i < n; i++) y[yo + i] += s * x[xo + i];
        }

        @Override
        public String name() {
            return "scalar";
        }
    }

    /**
     * SimdKernels when this JVM has jdk.incubator.vector and the class was built for its API
     * (a self-test catches a jar built on another JDK); ScalarKernels otherwise, or when the
     * system property polyllama.scalar is true.
     */
    static Kernels pickKernels() {
        if (!Boolean.getBoolean("polyllama.scalar")
                && ModuleLayer.boot().findModule("jdk.incubator.vector").isPresent()) {
            try {
                Kernels k = (Kernels) Class.forName("polyllama.SimdKernels").getDeclaredConstructor().newInstance();
                if (agrees(k, new ScalarKernels())) return k;
            } catch (Throwable e) {
                // absent, or linked against another JDK's Vector API: fall through to plain Java
            }
        }
        return new ScalarKernels();
    }

    /**
     * Runs the kernels on a small in-cache matrix until the JIT has compiled them: interpreted,
     * the Vector API is two orders of magnitude slower than compiled code, so the first forward
     * pass would otherwise cost seconds on the 110M shape. A compiled round takes a few
     * microseconds; stop after 200 fast rounds in a row, or after 1.5 s on a starved machine.
     */
    static void warmUp(Kernels k) {
        int rows = 64, n = 256;
        ByteBuffer bb = ByteBuffer.allocateDirect(4 * rows * n).order(ByteOrder.LITTLE_ENDIAN);
        float[] x = new float[n], out = new float[rows];
        for (int i = 0; i < rows * n; i++) bb.putFloat(4 * i, (i % 13) * 1e-3f);
        long start = System.nanoTime();
        for (int fast = 0; fast < 200 && System.nanoTime() - start < 1_500_000_000L; ) {
            long t = System.nanoTime();
            k.matvec(bb, 0, rows, x, n, out, 0);
            for (int i = 0; i < 64; i++) k.axpy(out, 0, k.dot(x, 0, out, 0, 64) * 1e-6f, x, 0, 64);
            fast = System.nanoTime() - t < 40_000 ? fast + 1 : 0;
        }
    }

    private static boolean agrees(Kernels a, Kernels b) {
        int rows = 5, n = 77;
        ByteBuffer bb = ByteBuffer.allocateDirect(4 * rows * n + 12).order(ByteOrder.LITTLE_ENDIAN);
        float[] x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (i % 7) - 3;
        for (int i = 0; i < rows * n + 3; i++) bb.putFloat(4 * i, (i % 5) - 2);
        float[] ya = new float[rows + 1], yb = new float[rows + 1];
        a.matvec(bb, 12, rows, x, n, ya, 1);
        b.matvec(bb, 12, rows, x, n, yb, 1);
        float[] za = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19};
        float[] zb = za.clone();
        a.axpy(za, 1, 2f, x, 3, 17);
        b.axpy(zb, 1, 2f, x, 3, 17);
        return Arrays.equals(ya, yb) && Arrays.equals(za, zb) && a.dot(x, 2, x, 1, 70) == b.dot(x, 2, x, 1, 70);
    }

    // ============================================================================================
    // Thread pool: N - 1 workers made once plus the main thread, woken per matmul

    static final class Pool {
        interface Task {
            /** This worker's share of the job: worker in [0, workers). */
            void run(int worker, int workers);
        }

        private static final int SPINS = 1 << 12;
        final int workers;
        private final Thread[] threads;
        private volatile Task task;
        private volatile long generation;
        private final AtomicInteger pending = new AtomicInteger();
        private volatile Throwable failure;

        Pool(int workers) {
            this.workers = workers;
            threads = new Thread[workers - 1];
            for (int i = 1; i < workers; i++) {
                final int id = i;
                Thread t = new Thread(() -> loop(id), "polyllama-worker-" + i);
                t.setDaemon(true);
                threads[i - 1] = t;
                t.start();
            }
        }

        /** Runs task on every worker, the calling thread being worker 0, and waits for all. */
        void run(Task t) {
            if (workers == 1) {
                t.run(0, 1);
                return;
            }
            task = t;
            pending.set(workers - 1);
            generation++;  // the volatile write publishes task to the workers
            for (Thread th : threads) LockSupport.unpark(th);
            t.run(0, workers);
            for (int spins = 0; pending.get() != 0; spins++) {
                if (spins < SPINS) Thread.onSpinWait();
                else Thread.yield();
            }
            Throwable f = failure;
            if (f != null) throw new IllegalStateException("worker failed: " + f, f);
        }

        private void loop(int id) {
            long seen = 0;
            while (true) {
                // spin a little first: the next matmul usually follows within microseconds
                for (int spins = 0; generation == seen; spins++) {
                    if (spins < SPINS) Thread.onSpinWait();
                    else LockSupport.park(this);
                }
                seen = generation;
                try {
                    task.run(id, workers);
                } catch (Throwable e) {
                    failure = e;
                }
                pending.decrementAndGet();
            }
        }
    }

    // ============================================================================================
    // Forward pass

    static final class Transformer {
        final Config c;
        final Weights w;
        final RunState s;
        final Pool pool;
        final Kernels k;

        Transformer(Model model, Pool pool, Kernels kernels) {
            this.c = model.config;
            this.w = model.weights;
            this.s = new RunState(c, pool.workers);
            this.pool = pool;
            this.k = kernels;
        }

        /** Work over [0, total) in chunks: body(worker, start, end) for each chunk a worker claims. */
        interface Rows {
            void run(int worker, int start, int end);
        }

        private final AtomicInteger nextChunk = new AtomicInteger();

        /**
         * Splits [0, total) across the pool. Workers claim chunks (about four each, even sizes)
         * from a shared counter rather than fixed shares, so a worker that the OS delays on a
         * busy machine does not hold up the others.
         */
        void parallelFor(int total, int minChunk, Rows body) {
            int workers = pool.workers;
            if (workers == 1) {
                body.run(0, 0, total);
                return;
            }
            int chunk = Math.max(minChunk, (total / (4 * workers) + 1) & ~1);
            nextChunk.set(0);
            pool.run((wk, n) -> {
                for (int start; (start = nextChunk.getAndAdd(chunk)) < total; ) {
                    body.run(wk, start, Math.min(total, start + chunk));
                }
            });
        }

        /** out[outOff + r] = m[r] . x for rows r in [r0, r1), block by block. */
        void matvec(Matrix m, float[] x, float[] out, int outOff, int r0, int r1) {
            while (r0 < r1) {
                int b = r0 / m.rowsPerBlock, first = b * m.rowsPerBlock;
                int end = Math.min(r1, first + m.rowsPerBlock);
                k.matvec(m.blocks[b], (r0 - first) * m.cols * 4, end - r0, x, m.cols, out, outOff + r0);
                r0 = end;
            }
        }

        /** The part of rows [start, end) that falls in a matrix occupying [base, base + rows). */
        void matvecPart(Matrix m, float[] x, float[] out, int outOff, int base, int start, int end) {
            int r0 = Math.max(start - base, 0), r1 = Math.min(end - base, m.rows);
            if (r0 < r1) matvec(m, x, out, outOff, r0, r1);
        }

        static void rmsnorm(float[] out, float[] x, float[] weight) {
            int n = x.length;
            float ss = 0;
            for (int i = 0; i < n; i++) ss += x[i] * x[i];
            ss = ss / n + 1e-5f;
            ss = (float) (1.0 / Math.sqrt(ss));
            for (int i = 0; i < n; i++) out[i] = weight[i] * (ss * x[i]);
        }

        static void softmax(float[] x, int n) {
            float max = x[0];
            for (int i = 1; i < n; i++) if (x[i] > max) max = x[i];
            float sum = 0;
            for (int i = 0; i < n; i++) {
                x[i] = (float) Math.exp(x[i] - max);
                sum += x[i];
            }
            for (int i = 0; i < n; i++) x[i] /= sum;
        }

        /** RoPE on adjacent pairs of vec[off .. off + n). */
        void rotate(float[] vec, int off, int n) {
            for (int i = 0; i < n; i += 2) {
                float cos = s.ropeCos[i / 2], sin = s.ropeSin[i / 2];
                float v0 = vec[off + i], v1 = vec[off + i + 1];
                vec[off + i] = v0 * cos - v1 * sin;
                vec[off + i + 1] = v0 * sin + v1 * cos;
            }
        }

        /** The logits (vocab) after token at pos; the returned array is reused by the next call. */
        float[] forward(int token, int pos) {
            final Config c = this.c;
            final Weights w = this.w;
            final RunState s = this.s;
            final int dim = c.dim, kvDim = c.kvDim, hs = c.headSize, kvMul = c.kvMul;
            final float scale = (float) (1.0 / Math.sqrt(hs));

            w.tokenEmbedding.copyRow(token, s.x);
            for (int i = 0; i < dim; i += 2) {
                float angle = pos * s.ropeFreq[(i % hs) / 2];
                s.ropeCos[i / 2] = (float) Math.cos(angle);
                s.ropeSin[i / 2] = (float) Math.sin(angle);
            }

            for (int l = 0; l < c.nLayers; l++) {
                final int layer = l;
                final float[] keys = s.keyCache[l], values = s.valueCache[l];
                final int cacheRow = pos * kvDim;  // this position's row in (seq_len, kv_dim)

                // attention: q, and k, v straight into the cache row
                rmsnorm(s.xb, s.x, w.rmsAtt[l]);
                parallelFor(dim + 2 * kvDim, 16, (wk, r0, r1) -> {  // rows of wq, then wk, then wv
                    matvecPart(w.wq[layer], s.xb, s.q, 0, 0, r0, r1);
                    matvecPart(w.wk[layer], s.xb, keys, cacheRow, dim, r0, r1);
                    matvecPart(w.wv[layer], s.xb, values, cacheRow, dim + kvDim, r0, r1);
                });
                rotate(s.q, 0, dim);
                rotate(keys, cacheRow, kvDim);

                // the workers claim heads one at a time; query head h reads KV head h / kv_mul
                parallelFor(c.nHeads, 1, (wk, h0, h1) -> {
                    float[] att = s.att[wk] != null ? s.att[wk] : (s.att[wk] = new float[c.seqLen]);
                    for (int h = h0; h < h1; h++) {
                        int qOff = h * hs, kvOff = (h / kvMul) * hs;
                        for (int t = 0; t <= pos; t++) {
                            att[t] = k.dot(s.q, qOff, keys, t * kvDim + kvOff, hs) * scale;
                        }
                        softmax(att, pos + 1);
                        Arrays.fill(s.xb, qOff, qOff + hs, 0f);
                        for (int t = 0; t <= pos; t++) {
                            k.axpy(s.xb, qOff, att[t], values, t * kvDim + kvOff, hs);
                        }
                    }
                });
                parallelFor(dim, 16, (wk, r0, r1) -> matvec(w.wo[layer], s.xb, s.xb2, 0, r0, r1));
                for (int i = 0; i < dim; i++) s.x[i] += s.xb2[i];

                // feed-forward: each worker gates its own rows, so w1 and w3 share one dispatch
                rmsnorm(s.xb, s.x, w.rmsFfn[l]);
                parallelFor(c.hiddenDim, 16, (wk, r0, r1) -> {
                    matvec(w.w1[layer], s.xb, s.hb, 0, r0, r1);
                    matvec(w.w3[layer], s.xb, s.hb2, 0, r0, r1);
                    for (int i = r0; i < r1; i++) {
                        float g = s.hb[i];
                        s.hb[i] = g / (1f + (float) Math.exp(-g)) * s.hb2[i];
                    }
                });
                parallelFor(dim, 16, (wk, r0, r1) -> matvec(w.w2[layer], s.hb, s.xb2, 0, r0, r1));
                for (int i = 0; i < dim; i++) s.x[i] += s.xb2[i];
            }

            rmsnorm(s.x, s.x, w.rmsFinal);
            parallelFor(c.vocabSize, 16, (wk, r0, r1) -> matvec(w.wcls, s.x, s.logits, 0, r0, r1));
            return s.logits;
        }
    }

    // ============================================================================================
    // Tokenizer: llama2.c's byte-pair encoding with the dummy prefix and byte fallback

    static final int BOS = 1, EOS = 2;

    static final class Vocab {
        final byte[][] pieces;
        final float[] scores;
        final Map<String, Integer> lookup = new HashMap<>();  // bytes as ISO-8859-1 text: exact match

        Vocab(byte[][] pieces, float[] scores) {
            this.pieces = pieces;
            this.scores = scores;
            for (int i = 0; i < pieces.length; i++) lookup.putIfAbsent(key(pieces[i]), i);  // lower id wins
        }

        static String key(byte[] b) {
            return new String(b, StandardCharsets.ISO_8859_1);
        }

        int find(byte[] piece) {
            return lookup.getOrDefault(key(piece), -1);
        }

        int size() {
            return pieces.length;
        }
    }

    static final int MAX_TOKEN_LENGTH = 1024;

    /** tokenizer.bin, insisting on exactly vocabSize tokens. */
    static Vocab readTokenizer(String path, int vocabSize) {
        byte[] data;
        try (FileChannel ch = openFile(path)) {
            if (ch.size() > Integer.MAX_VALUE - 64) throw badFile(path, "implausibly large: " + ch.size() + " bytes");
            ByteBuffer all = readHead(ch, 0, (int) ch.size());
            data = new byte[all.remaining()];
            all.get(data);
        } catch (IOException e) {
            throw badFile(path, "cannot read: " + e.getMessage());
        }
        ByteBuffer bb = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
        if (data.length < 4) throw badFile(path, "truncated: no max_token_length header");
        int maxLen = bb.getInt(0);
        if (maxLen < 1 || maxLen > MAX_TOKEN_LENGTH) {
            throw badFile(path, "max_token_length=" + maxLen + " outside 1.." + MAX_TOKEN_LENGTH);
        }
        byte[][] pieces = new byte[vocabSize][];
        float[] scores = new float[vocabSize];
        int off = 4;
        for (int i = 0; i < vocabSize; i++) {
            if (off + 8 > data.length) {
                throw badFile(path, "has only " + i + " tokens, the model's vocabulary is " + vocabSize);
            }
            float score = bb.getFloat(off);
            int len = bb.getInt(off + 4);
            off += 8;
            if (len < 0 || len > maxLen) throw badFile(path, "token " + i + " has length " + len + ", outside 0.." + maxLen);
            if (Float.isNaN(score)) throw badFile(path, "token " + i + " has a NaN score");
            if (off + len > data.length) throw badFile(path, "truncated inside token " + i);
            pieces[i] = Arrays.copyOfRange(data, off, off + len);
            scores[i] = score;
            off += len;
        }
        if (off != data.length) {
            throw badFile(path, "has " + (data.length - off) + " bytes after token " + (vocabSize - 1)
                    + ": its vocabulary is larger than the model's " + vocabSize);
        }
        return new Vocab(pieces, scores);
    }

    /** encode needs the 256 byte tokens for its fallback and the piece " " for its dummy prefix. */
    static void checkVocab(String path, Vocab v) {
        if (v.size() < 259) throw badFile(path, "a vocabulary of " + v.size() + " tokens has no room for the 256 byte tokens");
        if (v.find(new byte[] {' '}) < 0) throw badFile(path, "the vocabulary has no ' ' piece for the dummy prefix");
    }

    /** encode(text, bos, eos) of the contract's section 5. */
    static int[] encode(Vocab v, byte[] text, boolean bos, boolean eos) {
        int[] tokens = new int[text.length + 3];
        int n = 0;
        if (bos) tokens[n++] = BOS;
        if (text.length > 0) {
            tokens[n++] = v.find(new byte[] {' '});  // present: checkVocab
        }
        // UTF-8 groups: a lead byte and up to three continuation bytes, looked up whole
        for (int i = 0; i < text.length; ) {
            int j = i + 1;
            while (j < text.length && (text[j] & 0xC0) == 0x80 && j - i < 4) j++;
            byte[] group = Arrays.copyOfRange(text, i, j);
            int id = v.find(group);
            if (id >= 0) {
                tokens[n++] = id;
            } else {
                for (byte b : group) tokens[n++] = (b & 0xff) + 3;  // byte fallback: <0x00> is id 3
            }
            i = j;
        }
        // merge the best-scoring adjacent pair until none merges; the leftmost wins a tie
        while (true) {
            float best = Float.NEGATIVE_INFINITY;
            int bestId = -1, bestIdx = -1;
            for (int i = 0; i < n - 1; i++) {
                byte[] a = v.pieces[tokens[i]], b = v.pieces[tokens[i + 1]];
                byte[] pair = Arrays.copyOf(a, a.length + b.length);
                System.arraycopy(b, 0, pair, a.length, b.length);
                int id = v.find(pair);
                if (id >= 0 && v.scores[id] > best) {
                    best = v.scores[id];
                    bestId = id;
                    bestIdx = i;
                }
            }
            if (bestIdx < 0) break;
            tokens[bestIdx] = bestId;
            System.arraycopy(tokens, bestIdx + 2, tokens, bestIdx + 1, n - bestIdx - 2);
            n--;
        }
        if (eos) tokens[n++] = EOS;
        return Arrays.copyOf(tokens, n);
    }

    static int hexDigit(byte b) {
        if (b >= '0' && b <= '9') return b - '0';
        if (b >= 'a' && b <= 'f') return b - 'a' + 10;
        if (b >= 'A' && b <= 'F') return b - 'A' + 10;
        return -1;
    }

    /** The bytes token stands for after prev: BOS eats a leading space, <0xHH> is one raw byte. */
    static byte[] decode(Vocab v, int prev, int token) {
        byte[] piece = v.pieces[token];
        if (prev == BOS && piece.length > 0 && piece[0] == ' ') piece = Arrays.copyOfRange(piece, 1, piece.length);
        if (piece.length == 6 && piece[0] == '<' && piece[1] == '0' && piece[2] == 'x' && piece[5] == '>') {
            int hi = hexDigit(piece[3]), lo = hexDigit(piece[4]);
            if (hi >= 0 && lo >= 0) return new byte[] {(byte) (hi * 16 + lo)};
        }
        return piece;
    }

    /** run.c's safe_printf: nothing for an empty piece or a lone byte that is neither printable nor space. */
    static boolean printable(byte[] piece) {
        if (piece.length == 0) return false;
        if (piece.length == 1) {
            int b = piece[0] & 0xff;
            return (b >= 0x20 && b <= 0x7E) || b == '\t' || b == '\n' || b == 0x0B || b == '\f' || b == '\r';
        }
        return true;
    }

    // ============================================================================================
    // Sampler: argmax, multinomial and top-p over llama2.c's xorshift RNG

    static final class Sampler {
        final float temperature;
        final float topp;
        long state;   // the xorshift state, a uint64 in a long
        private long[] order;

        Sampler(float temperature, float topp, long seed) {
            this.temperature = temperature;
            this.topp = topp;
            this.state = seed;
        }

        int nextU32() {
            state ^= state >>> 12;
            state ^= state << 25;
            state ^= state >>> 27;
            return (int) ((state * 0x2545F4914F6CDD1DL) >>> 32);
        }

        float nextF32() {
            return (nextU32() >>> 8) / 16777216.0f;
        }

        static int argmax(float[] x, int n) {
            int best = 0;
            for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;  // the first maximum wins
            return best;
        }

        static int sampleMult(float[] probs, int n, float coin) {
            float cdf = 0;
            for (int i = 0; i < n; i++) {
                cdf += probs[i];
                if (coin < cdf) return i;
            }
            return n - 1;
        }

        int sampleTopp(float[] probs, int n, float coin) {
            // keep the ids that can matter, sorted by probability descending, then id ascending:
            // one long per id, (bits of a non-negative float, complemented) above (id)
            float cutoff = (1.0f - topp) / (n - 1);
            if (order == null || order.length < n) order = new long[n];
            int m = 0;
            for (int i = 0; i < n; i++) {
                if (probs[i] >= cutoff) order[m++] = ((long) (0x7FFFFFFF - Float.floatToIntBits(probs[i])) << 32) | i;
            }
            if (m == 0) return argmax(probs, n);  // a flat distribution and a tiny top-p
            Arrays.sort(order, 0, m);
            float cum = 0;
            int last = m - 1;
            for (int i = 0; i < m; i++) {
                cum += probs[(int) order[i]];
                if (cum > topp) {
                    last = i;
                    break;
                }
            }
            float r = coin * cum;
            float cdf = 0;
            for (int i = 0; i <= last; i++) {
                cdf += probs[(int) order[i]];
                if (r < cdf) return (int) order[i];
            }
            return (int) order[last];
        }

        int sample(float[] logits, int n) {
            if (temperature == 0f) return argmax(logits, n);
            for (int i = 0; i < n; i++) logits[i] /= temperature;
            Transformer.softmax(logits, n);
            float coin = nextF32();
            if (topp <= 0 || topp >= 1) return sampleMult(logits, n, coin);
            return sampleTopp(logits, n, coin);
        }
    }

    // ============================================================================================
    // Generation and logits runs

    static final class Stats {
        int promptTokens, generatedTokens, positions;
        double ttft, decode;

        String line(int threads, double load) {
            double rate = generatedTokens > 1 && decode > 0 ? (generatedTokens - 1) / decode : 0;
            return String.format(Locale.ROOT,
                    "polyllama-stats: {\"port\":\"%s\",\"prompt_tokens\":%d,\"generated_tokens\":%d,\"positions\":%d,"
                            + "\"threads\":%d,\"load_s\":%.6f,\"ttft_s\":%.6f,\"decode_s\":%.6f,\"decode_tok_s\":%.4f}",
                    PORT, promptTokens, generatedTokens, positions, threads, load, ttft, decode, rate);
        }
    }

    static double seconds(long nanos) {
        return nanos / 1e9;
    }

    static int clampSteps(long steps, int seqLen) {
        return steps == 0 || steps > seqLen ? seqLen : (int) steps;
    }

    static long mainCpuNanos() {
        return java.lang.management.ManagementFactory.getThreadMXBean().getCurrentThreadCpuTime();
    }

    static Stats generate(Transformer t, Vocab vocab, Sampler sampler, byte[] prompt, int steps, boolean ignoreBos,
                          OutputStream out) throws IOException {
        int[] promptTokens = encode(vocab, prompt, true, false);
        Stats st = new Stats();
        st.promptTokens = promptTokens.length;
        int token = promptTokens[0];
        long start = System.nanoTime(), first = -1, warm = -1;  // warm: after 16 sampled tokens
        long warmCpu = 0;  // main thread CPU time at warm, for -Dpolyllama.verbose
        for (int pos = 0; pos < steps; pos++) {
            float[] logits = t.forward(token, pos);
            st.positions++;
            int next;
            if (pos < promptTokens.length - 1) {
                next = promptTokens[pos + 1];  // still forcing the prompt
            } else {
                next = sampler.sample(logits, t.c.vocabSize);
                st.generatedTokens++;
                if (first < 0) first = System.nanoTime();
                if (st.generatedTokens == 17) {
                    warm = System.nanoTime();
                    warmCpu = mainCpuNanos();
                }
            }
            if (next == BOS && !ignoreBos) break;
            byte[] piece = decode(vocab, token, next);
            if (printable(piece)) {
                out.write(piece);
                out.flush();
            }
            token = next;
        }
        long end = System.nanoTime();
        out.write('\n');
        out.flush();
        st.ttft = seconds((first >= 0 ? first : end) - start);
        st.decode = first >= 0 ? seconds(end - first) : 0;
        if (warm >= 0 && Boolean.getBoolean("polyllama.verbose")) {
            int n = st.generatedTokens - 17;
            System.err.printf(Locale.ROOT, "warmed decode (after 16 sampled tokens): %.4f tok/s, %.4f per main-thread CPU second%n",
                    n / seconds(end - warm), n / seconds(mainCpuNanos() - warmCpu));
        }
        return st;
    }

    /** Writes the logits after each of ids as float32 little-endian rows, streamed to path. */
    static Stats logits(Transformer t, int[] ids, String path) {
        Stats st = new Stats();
        st.promptTokens = ids.length;
        int vocab = t.c.vocabSize;
        ByteBuffer row = ByteBuffer.allocate(4 * vocab).order(ByteOrder.LITTLE_ENDIAN);
        long start = System.nanoTime();
        try (OutputStream out = new BufferedOutputStream(new FileOutputStream(path), 1 << 16)) {
            for (int pos = 0; pos < ids.length; pos++) {
                float[] logits = t.forward(ids[pos], pos);
                st.positions++;
                row.clear();
                row.asFloatBuffer().put(logits, 0, vocab);
                out.write(row.array(), 0, 4 * vocab);
            }
        } catch (IOException e) {
            throw new Fail(EXIT_RUNTIME, path + ": cannot write: " + e.getMessage());
        }
        st.ttft = seconds(System.nanoTime() - start);
        return st;
    }

    // ============================================================================================
    // Command line

    static final class Args {
        String checkpoint;
        String tokenizer;
        float temperature = 1.0f;
        float topp = 0.9f;
        long seed = 0;          // a uint64 in a long
        long steps = 256;
        byte[] prompt = new byte[0];
        int threads = 1;
        String mode = "generate";
        String output;
        long[] ids;
        boolean ignoreBos = false;
    }

    // plain decimal only (contract section 2): no inf, nan, underscores, hex or surrounding spaces
    private static final Pattern FLOAT = Pattern.compile("[+-]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][+-]?[0-9]+)?");
    private static final Pattern INT = Pattern.compile("[+-]?[0-9]+");

    static double parseFloat(String flag, String text, double lo, double hi) {
        if (!FLOAT.matcher(text).matches()) throw usage(flag + " expects a number, got '" + text + "'");
        double v = Double.parseDouble(text);  // "1e999" parses as infinity: out of range too
        if (!Double.isFinite(v) || v < lo || v > hi) throw usage(flag + " " + text + " is out of range");
        return v;
    }

    static BigInteger parseBig(String flag, String text) {
        if (!INT.matcher(text).matches()) throw usage(flag + " expects an integer, got '" + text + "'");
        return new BigInteger(text.startsWith("+") ? text.substring(1) : text);
    }

    static long parseInt(String flag, String text, long lo, BigInteger hi) {
        BigInteger v = parseBig(flag, text);
        if (v.compareTo(BigInteger.valueOf(lo)) < 0 || v.compareTo(hi) > 0) throw usage(flag + " " + text + " is out of range");
        return v.longValue();  // the low 64 bits: a uint64 seed stays exact
    }

    static Args parseArgs(String[] argv, byte[][] raw) {
        if (argv.length == 0 || argv[0].startsWith("-")) throw usage("missing checkpoint");
        Args a = new Args();
        a.checkpoint = argv[0];
        if ((argv.length - 1) % 2 != 0) throw usage("flag " + argv[argv.length - 1] + " has no value");
        for (int i = 1; i < argv.length; i += 2) {
            String flag = argv[i], value = argv[i + 1];
            switch (flag) {
                case "-z": a.tokenizer = value; break;
                case "-t": a.temperature = (float) parseFloat(flag, value, 0, Double.POSITIVE_INFINITY); break;
                case "-p": a.topp = (float) parseFloat(flag, value, 0, 1); break;
                case "-s": a.seed = parseInt(flag, value, 0, BigInteger.ONE.shiftLeft(64).subtract(BigInteger.ONE)); break;
                case "-n": a.steps = parseInt(flag, value, 0, BigInteger.ONE.shiftLeft(31)); break;
                case "-i": a.prompt = raw[i + 1]; break;
                case "-j": a.threads = (int) parseInt(flag, value, 1, BigInteger.valueOf(4096)); break;
                case "-m":
                    if (!value.equals("generate") && !value.equals("logits")) {
                        throw usage("-m expects generate or logits, got '" + value + "'");
                    }
                    a.mode = value;
                    break;
                case "-o": a.output = value; break;
                case "-k": {
                    String[] parts = value.split(",", -1);
                    a.ids = new long[parts.length];
                    for (int j = 0; j < parts.length; j++) {
                        if (!INT.matcher(parts[j]).matches()) throw usage("-k expects comma-separated token ids, got '" + value + "'");
                        BigInteger id = parseBig("-k", parts[j]);
                        a.ids[j] = id.bitLength() < 63 ? id.longValue() : -1;  // out of range either way
                    }
                    break;
                }
                case "-e": a.ignoreBos = parseInt(flag, value, 0, BigInteger.ONE) == 1; break;
                default: throw usage("unknown flag " + flag);
            }
        }
        if (a.mode.equals("logits") && (a.output == null || a.ids == null)) throw usage("logits mode needs -o FILE and -k IDS");
        return a;
    }

    /**
     * The arguments as the bytes the caller passed. The JVM decodes argv with the locale's
     * charset, which under LANG=C turns a UTF-8 prompt into '?'; on Linux /proc/self/cmdline still
     * holds the bytes, and the program's arguments are its last entries.
     */
    static byte[][] rawArgs(String[] args) {
        byte[][] fallback = new byte[args.length][];
        for (int i = 0; i < args.length; i++) fallback[i] = args[i].getBytes(StandardCharsets.UTF_8);
        try {
            byte[] cmd = Files.readAllBytes(Path.of("/proc/self/cmdline"));
            List<byte[]> parts = new ArrayList<>();
            int start = 0;
            for (int i = 0; i < cmd.length; i++) {
                if (cmd[i] == 0) {
                    parts.add(Arrays.copyOfRange(cmd, start, i));
                    start = i + 1;
                }
            }
            if (parts.size() < args.length) return fallback;
            byte[][] raw = new byte[args.length][];
            for (int i = 0; i < args.length; i++) {
                raw[i] = parts.get(parts.size() - args.length + i);
                boolean ascii = args[i].chars().allMatch(ch -> ch < 0x80);
                if (ascii && !Arrays.equals(raw[i], fallback[i]) && args[i].indexOf('?') < 0) return fallback;
            }
            return raw;
        } catch (IOException | RuntimeException e) {
            return fallback;
        }
    }

    static int run(Args a) throws IOException {
        long t0 = System.nanoTime();
        Model model = readModel(a.checkpoint);
        Config c = model.config;
        Vocab vocab;
        if (model.vocab != null) {
            vocab = model.vocab;
        } else if (a.tokenizer == null) {
            throw usage("-z tokenizer is required for a .bin checkpoint");
        } else {
            vocab = readTokenizer(a.tokenizer, c.vocabSize);
        }
        checkVocab(model.vocab != null ? a.checkpoint : a.tokenizer, vocab);
        Pool pool = new Pool(a.threads);
        Kernels kernels = pickKernels();
        if (Boolean.getBoolean("polyllama.verbose")) System.err.println("kernels: " + kernels.name());
        if (!Boolean.getBoolean("polyllama.nowarmup")) warmUp(kernels);
        Transformer t = new Transformer(model, pool, kernels);
        double load = seconds(System.nanoTime() - t0);

        Stats st;
        if (a.mode.equals("logits")) {
            if (a.ids.length < 1 || a.ids.length > c.seqLen) throw usage("-k needs 1.." + c.seqLen + " ids in [0, " + c.vocabSize + ")");
            int[] ids = new int[a.ids.length];
            for (int i = 0; i < ids.length; i++) {
                if (a.ids[i] < 0 || a.ids[i] >= c.vocabSize) throw usage("-k needs 1.." + c.seqLen + " ids in [0, " + c.vocabSize + ")");
                ids[i] = (int) a.ids[i];
            }
            st = logits(t, ids, a.output);
        } else {
            long seed = a.seed != 0 ? a.seed : System.currentTimeMillis() / 1000;
            Sampler sampler = new Sampler(a.temperature, a.topp, seed);
            OutputStream out = new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16);
            st = generate(t, vocab, sampler, a.prompt, clampSteps(a.steps, c.seqLen), a.ignoreBos, out);
        }
        System.err.println(st.line(a.threads, load));
        System.err.flush();
        return 0;
    }

    static String oneLine(String s) {
        return s == null ? "" : s.replace('\n', ' ').replace('\r', ' ');
    }

    public static void main(String[] args) {
        int code;
        try {
            code = run(parseArgs(args, rawArgs(args)));
        } catch (Fail f) {
            String msg = oneLine(f.getMessage());
            System.err.println(msg.startsWith("error: ") ? msg : "error: " + msg);
            if (f.code == EXIT_USAGE) System.err.println(USAGE);
            code = f.code;
        } catch (OutOfMemoryError e) {
            System.err.println("error: out of memory (raise the JVM heap with -Xmx)");
            code = EXIT_RUNTIME;
        } catch (Throwable e) {
            System.err.println("error: " + oneLine(e.toString()));
            code = EXIT_RUNTIME;
        }
        System.err.flush();
        System.exit(code);
    }
}
