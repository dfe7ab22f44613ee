/*
 * GGUF v2/v3 with llama.cpp's `llama` names (contract section 4), the tokenizer embedded; each
 * tensor F32, or for the matrices Q8_0 (Q8.java), F16 or BF16 (Half.java). Read in the file's
 * order: header, kv section, tensor infos, then the model's own hyperparameters (RoPE base, norm
 * epsilon, BOS and EOS ids) with llama.cpp's defaults, then the tensor table is checked as a
 * whole (exactly the model's tensors, of those types, the right shapes, aligned, inside the file,
 * not overlapping: what llama.cpp's loader insists on too) before any tensor is loaded. Sizes
 * and offsets are 64-bit throughout; each tensor is mapped (or read) on its own, in blocks of
 * at most 1 GiB (Matrix), so a file past 4 GiB or 2^31 bytes is read like any other.
 */
package polyllama;

import java.io.IOException;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;

final class Gguf {
    static final int MAGIC = 0x46554747;  // "GGUF" read as a little-endian uint32
    static final long MAX_ENTRIES = 65536, DEFAULT_ALIGNMENT = 32;
    static final int T_BOOL = 7, T_STRING = 8, T_ARRAY = 9;
    static final String TOKENS = "tokenizer.ggml.tokens", SCORES = "tokenizer.ggml.scores",
            TOKEN_TYPES = "tokenizer.ggml.token_type";
    private static final byte[] SPACE_MARK = {(byte) 0xE2, (byte) 0x96, (byte) 0x81};  // U+2581, GGUF's space

    /** One entry of the tensor infos: dims innermost first, as GGUF lists them. */
    private record TensorInfo(long[] dims, int type, long offset) {}

    /** The value kept for an array key nothing reads: present, but of no scalar kind. */
    private static final Object SKIPPED_ARRAY = new Object();

    /** A numeric GGUF array (scores, token types) with its element type. */
    private record NumArray(int etype, double[] values) {
        boolean integers() {
            return etype <= 5 || etype == 10 || etype == 11;  // not f32 (6), bool (7) or f64 (12)
        }
    }

    private final String path;
    private final FileChannel ch;
    private final GgufCursor cur;
    // names are ISO-8859-1 strings, one char per byte: equal names are equal bytes
    private final Map<String, Object> kv = new HashMap<>();
    private final Map<String, TensorInfo> infos = new HashMap<>();
    private long dataStart;
    private Loader load;   // made once the tensor table has passed

    private Gguf(String path, FileChannel ch) throws IOException {
        this.path = path;
        this.ch = ch;
        this.cur = new GgufCursor(path, ch);
    }

    static Model read(String path, FileChannel ch, boolean onHeap) throws IOException {
        Gguf g = new Gguf(path, ch);
        long[] counts = g.readHeader();
        g.readKvs(counts[1]);
        g.readTensorInfos(counts[0]);
        long align = g.alignment();
        g.dataStart = (g.cur.off + align - 1) / align * align;
        Tokenizer tokenizer = g.tokenizer();
        Config c = g.config(tokenizer.size());
        g.hyperparameters(c, tokenizer);
        long[] tensorBytes = g.checkTensorTable(expectedTensors(c), align);
        g.load = new Loader(ch, onHeap, tensorBytes[0], tensorBytes[1]);
        return new Model(c, g.mapWeights(c), tokenizer);
    }

    // ============================================================================================
    // Header: magic, version, tensor count, kv count

    /** (tensor count, kv count), both bounded. */
    private long[] readHeader() throws IOException {
        cur.off = 4;
        int version = cur.u32("version");
        if (version != 2 && version != 3) {
            throw new FormatError(path, "unsupported GGUF version " + Integer.toUnsignedString(version) + " (2 and 3 are read)");
        }
        long nTensors = cur.u64("tensor count"), nKv = cur.u64("kv count");
        if (nTensors < 0 || nKv < 0 || nTensors > MAX_ENTRIES || nKv > MAX_ENTRIES) {
            throw new FormatError(path, "implausible counts: " + Long.toUnsignedString(nTensors) + " tensors, "
                    + Long.toUnsignedString(nKv) + " keys (limit " + MAX_ENTRIES + ")");
        }
        return new long[] {nTensors, nKv};
    }

    // ============================================================================================
    // The kv section: (string key, uint32 type, value); keys non-empty and unique

    private void readKvs(long n) throws IOException {
        for (long i = 0; i < n; i++) {
            String key = new String(cur.string("key"), StandardCharsets.ISO_8859_1);
            String shown = FormatError.show(key);
            if (key.isEmpty()) throw new FormatError(path, "a key is empty");
            if (kv.containsKey(key)) throw new FormatError(path, "key " + shown + " appears twice");
            kv.put(key, value(cur.u32("type of " + shown), key, shown));
        }
    }

    /** The value of one kv pair; arrays are kept only for the tokenizer keys, others skipped. */
    private Object value(int type, String key, String shown) throws IOException {
        if (GgufCursor.isScalar(type)) return cur.scalar(type, shown);
        if (type == T_STRING) return new String(cur.string(shown), StandardCharsets.UTF_8);
        if (type != T_ARRAY) throw new FormatError(path, shown + ": unknown value type " + Integer.toUnsignedString(type));
        int etype = cur.u32(shown);
        long count = cur.u64(shown);
        boolean scalar = GgufCursor.isScalar(etype);
        if (!scalar && etype != T_STRING) {
            throw new FormatError(path, shown + ": unsupported array element type " + Integer.toUnsignedString(etype));
        }
        int minSize = scalar ? GgufCursor.SCALAR_SIZE[etype] : 8;
        if (count < 0 || count > (cur.size - cur.off) / minSize) cur.need(Long.MAX_VALUE, shown);
        boolean keep = key.equals(TOKENS) || key.equals(SCORES) || key.equals(TOKEN_TYPES);
        if (keep && count > Config.MAX_VOCAB) {
            throw new FormatError(path, shown + " has " + count + " entries, above the vocabulary limit " + Config.MAX_VOCAB);
        }
        if (!keep) {
            if (scalar) cur.skip(count * minSize);
            else for (long i = 0; i < count; i++) cur.skipString(shown);
            return SKIPPED_ARRAY;
        }
        return scalar ? numbers(etype, (int) count, shown) : strings((int) count, shown);
    }

    private byte[][] strings(int count, String shown) throws IOException {
        byte[][] out = new byte[count][];
        for (int i = 0; i < count; i++) out[i] = cur.string(shown);
        return out;
    }

    private NumArray numbers(int etype, int count, String shown) throws IOException {
        double[] out = new double[count];
        for (int i = 0; i < count; i++) {
            Object v = cur.scalar(etype, shown);
            out[i] = v instanceof Long ? (double) (Long) v : v instanceof Double ? (Double) v : ((Boolean) v ? 1 : 0);
        }
        return new NumArray(etype, out);
    }

    private long intKey(String key, Long fallback) {
        Object v = kv.getOrDefault(key, fallback);
        if (v == null) throw new FormatError(path, "missing required key " + key);
        if (!(v instanceof Long)) throw new FormatError(path, "key " + key + " must be an integer");
        return (Long) v;
    }

    /** A float key of any numeric type (not bool): its value, or fallback when absent. */
    private double floatKey(String key, double fallback) {
        if (!kv.containsKey(key)) return fallback;
        Object v = kv.get(key);
        if (!(v instanceof Long) && !(v instanceof Double)) throw new FormatError(path, "key " + key + " must be a number");
        double d = v instanceof Long l ? (double) l : (Double) v;
        if (!Double.isFinite(d)) throw new FormatError(path, "key " + key + "=" + d + " is not finite");
        return d;
    }

    /** An integer key: any integer type, or a float type holding an integer, as the reference reads it. */
    private long integerKey(String key, long fallback) {
        if (!kv.containsKey(key)) return fallback;
        Object v = kv.get(key);
        if (v instanceof Double d && Double.isFinite(d) && d == Math.rint(d) && Math.abs(d) < 0x1p62) return (long) (double) d;
        if (!(v instanceof Long)) throw new FormatError(path, "key " + key + " must be an integer");
        return (Long) v;
    }

    /**
     * Contract section 4's key table: RoPE base and norm epsilon into the config, BOS and EOS
     * into the config and the tokenizer, each with llama.cpp's default; a key of the wrong kind or
     * out of its range, and what this architecture does not compute (partial rotation, RoPE
     * scaling, experts), is refused rather than run wrongly.
     */
    private void hyperparameters(Config c, Tokenizer tokenizer) {
        double theta = floatKey("llama.rope.freq_base", 10000);
        if (!(theta > 1)) throw new FormatError(path, "key llama.rope.freq_base=" + theta + " must be above 1");
        double eps = floatKey("llama.attention.layer_norm_rms_epsilon", 1e-5);
        if (!(eps > 0 && eps < 1)) {
            throw new FormatError(path, "key llama.attention.layer_norm_rms_epsilon=" + eps + " must lie in (0, 1)");
        }
        long rot = integerKey("llama.rope.dimension_count", c.headSize);
        if (rot != c.headSize) {
            throw new FormatError(path, "key llama.rope.dimension_count=" + rot + " differs from the head size "
                    + c.headSize + " (partial rotation is not supported)");
        }
        if (kv.containsKey("llama.rope.scaling.type") && !"none".equals(kv.get("llama.rope.scaling.type"))) {
            Object v = kv.get("llama.rope.scaling.type");
            throw new FormatError(path, "key llama.rope.scaling.type="
                    + (v instanceof String str ? FormatError.show(str) : "(not a string)") + " is not supported (only none)");
        }
        if (integerKey("llama.expert_count", 0) > 0) {
            throw new FormatError(path, "key llama.expert_count: mixture-of-experts models are not supported");
        }
        long bos = integerKey("tokenizer.ggml.bos_token_id", Tokenizer.BOS);
        long eos = integerKey("tokenizer.ggml.eos_token_id", Tokenizer.EOS);
        for (long[] id : new long[][] {{bos, 0}, {eos, 1}}) {
            if (id[0] < 0 || id[0] >= c.vocabSize) {
                throw new FormatError(path, "key tokenizer.ggml." + (id[1] == 0 ? "bos" : "eos") + "_token_id=" + id[0]
                        + " is outside the vocabulary [0, " + c.vocabSize + ")");
            }
        }
        c.theta = theta;
        c.eps = (float) eps;
        c.bos = tokenizer.bos = (int) bos;
        c.eos = tokenizer.eos = (int) eos;
    }

    private long alignment() {
        long align = intKey("general.alignment", DEFAULT_ALIGNMENT);
        if (align <= 0 || (align & (align - 1)) != 0 || align > 65536) {
            throw new FormatError(path, "general.alignment=" + align + " is not a power of two up to 65536");
        }
        return align;
    }

    // ============================================================================================
    // Tensor infos: (string name, uint32 n_dims, n_dims x uint64 dims, uint32 type, uint64 offset)

    private void readTensorInfos(long n) throws IOException {
        for (long i = 0; i < n; i++) {
            String name = new String(cur.string("tensor name"), StandardCharsets.ISO_8859_1);
            String shown = FormatError.show(name);
            int nDims = cur.u32(shown);
            if (nDims < 0 || nDims > 4) {
                throw new FormatError(path, "tensor " + shown + " has " + Integer.toUnsignedString(nDims) + " dimensions");
            }
            long[] dims = new long[nDims];
            for (int k = 0; k < nDims; k++) dims[k] = cur.u64(shown);
            int type = cur.u32(shown);
            long offset = cur.u64(shown);
            if (infos.containsKey(name)) throw new FormatError(path, "tensor " + shown + " appears twice");
            infos.put(name, new TensorInfo(dims, type, offset));
        }
    }

    // ============================================================================================
    // Config and tokenizer from the kv section

    private Config config(int vocabSize) {
        if (!"llama".equals(kv.get("general.architecture"))) {
            throw new FormatError(path, "general.architecture is " + kv.get("general.architecture") + ", expected 'llama'");
        }
        long heads = intKey("llama.attention.head_count", null);
        return Config.validated(path,
                intKey("llama.embedding_length", null),
                intKey("llama.feed_forward_length", null),
                intKey("llama.block_count", null),
                heads,
                intKey("llama.attention.head_count_kv", heads),
                vocabSize,
                intKey("llama.context_length", null),
                !infos.containsKey("output.weight"));
    }

    private Tokenizer tokenizer() {
        if (!(kv.get(TOKENS) instanceof byte[][] texts) || texts.length == 0) {
            throw new FormatError(path, "missing " + TOKENS);
        }
        if (!(kv.get(SCORES) instanceof NumArray scores) || scores.etype() == T_BOOL
                || scores.values().length != texts.length) {
            throw new FormatError(path, SCORES + " missing, not numbers, or not one per token");
        }
        Object types = kv.get(TOKEN_TYPES);
        if (types != null && !(types instanceof NumArray t && t.integers())) {
            throw new FormatError(path, TOKEN_TYPES + " must be an array of integers");
        }
        double[] ttypes = types instanceof NumArray t && t.values().length == texts.length ? t.values() : null;
        byte[][] pieces = new byte[texts.length][];
        float[] fscores = new float[texts.length];
        for (int i = 0; i < texts.length; i++) {
            pieces[i] = piece(texts[i], ttypes == null ? -1 : (int) ttypes[i]);
            fscores[i] = (float) scores.values()[i];  // an f64 beyond float range becomes infinite: refused as such
        }
        return Tokenizer.build(path, pieces, fscores);
    }

    /** A GGUF token as llama2.c bytes: U+2581 back to a space, llama.cpp's <s> and </s> to run.c's. */
    static byte[] piece(byte[] text, int type) {
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

    // ============================================================================================
    // The tensor table: exactly the model's tensors, checked as a whole, then mapped

    static String layerTensor(int layer, String name) {
        return "blk." + layer + "." + name + ".weight";
    }

    /** GGUF name -> shape, (rows, cols) or (n), of every tensor the model has and no other. */
    static Map<String, long[]> expectedTensors(Config c) {
        long d = c.dim, h = c.hiddenDim, kv = c.kvDim, v = c.vocabSize;
        Map<String, long[]> out = new LinkedHashMap<>();
        out.put("token_embd.weight", new long[] {v, d});
        for (int l = 0; l < c.nLayers; l++) {
            out.put(layerTensor(l, "attn_norm"), new long[] {d});
            out.put(layerTensor(l, "attn_q"), new long[] {d, d});
            out.put(layerTensor(l, "attn_k"), new long[] {kv, d});
            out.put(layerTensor(l, "attn_v"), new long[] {kv, d});
            out.put(layerTensor(l, "attn_output"), new long[] {d, d});
            out.put(layerTensor(l, "ffn_norm"), new long[] {d});
            out.put(layerTensor(l, "ffn_gate"), new long[] {h, d});
            out.put(layerTensor(l, "ffn_down"), new long[] {d, h});
            out.put(layerTensor(l, "ffn_up"), new long[] {h, d});
        }
        out.put("output_norm.weight", new long[] {d});
        if (!c.sharedClassifier) out.put("output.weight", new long[] {v, d});
        return out;
    }

    /** The tensor table checked; the bytes of its F32 and of its other (Q8_0, F16, BF16) tensors, what they take once loaded. */
    private long[] checkTensorTable(Map<String, long[]> expected, long align) {
        for (String name : infos.keySet()) {
            if (!expected.containsKey(name)) throw new FormatError(path, "unexpected tensor " + FormatError.show(name));
        }
        String[] names = new String[expected.size()];
        long[][] spans = new long[expected.size()][];   // (offset, end, index into names)
        int n = 0;
        long[] total = new long[2];
        for (Map.Entry<String, long[]> e : expected.entrySet()) {
            String name = e.getKey();
            TensorInfo t = infos.get(name);
            if (t == null) throw new FormatError(path, "missing tensor " + name);
            long nbytes = checkTensor(name, t, e.getValue(), align);
            names[n] = name;
            spans[n] = new long[] {t.offset(), t.offset() + nbytes, n};
            n++;
            total[t.type() == Matrix.F32 ? 0 : 1] += nbytes;
        }
        Arrays.sort(spans, (a, b) -> Long.compare(a[0], b[0]));
        for (int i = 1; i < n; i++) {  // sorted by start: any overlap shows between neighbours
            if (spans[i][0] < spans[i - 1][1]) {
                throw new FormatError(path, "tensors " + names[(int) spans[i - 1][2]] + " and "
                        + names[(int) spans[i][2]] + " overlap");
            }
        }
        return total;
    }

    /** Type, shape, alignment and extent of one tensor; its size in bytes (Q8_0: 34 per 32 values; F16, BF16: 2 a value). */
    private long checkTensor(String name, TensorInfo t, long[] shape, long align) {
        boolean q8 = t.type() == Q8.TYPE, half = Matrix.half(t.type());
        if (t.type() != Matrix.F32 && !q8 && !half) {
            throw new FormatError(path, "tensor " + name + " has type " + Integer.toUnsignedString(t.type())
                    + "; only F32 (0), F16 (1), Q8_0 (8) and BF16 (30) are supported");
        }
        long[] want = new long[shape.length];  // GGUF: innermost first
        for (int i = 0; i < shape.length; i++) want[i] = shape[shape.length - 1 - i];
        if (!Arrays.equals(t.dims(), want)) {
            StringBuilder got = new StringBuilder("[");
            for (int i = 0; i < t.dims().length; i++) got.append(i > 0 ? ", " : "").append(Long.toUnsignedString(t.dims()[i]));
            throw new FormatError(path, "tensor " + name + " has dims " + got + "], expected " + Arrays.toString(want));
        }
        if (q8 && shape.length != 2) throw new FormatError(path, "tensor " + name + " is Q8_0; a norm must be F32");
        if (half && shape.length != 2) {
            throw new FormatError(path, "tensor " + name + " is " + (t.type() == Matrix.F16 ? "F16" : "BF16") + "; a norm must be F32");
        }
        if (q8 && shape[1] % Q8.BLOCK != 0) {
            throw new FormatError(path, "tensor " + name + " is Q8_0 with rows of " + shape[1]
                    + " values, not a multiple of " + Q8.BLOCK);
        }
        if (Long.remainderUnsigned(t.offset(), align) != 0) {
            throw new FormatError(path, "tensor " + name + " offset " + Long.toUnsignedString(t.offset())
                    + " is not a multiple of the alignment " + align);
        }
        long nbytes = q8 ? Q8.bytes(shape[0], shape[1]) : half ? 2 : 4;
        if (!q8) for (long s : shape) nbytes *= s;  // bounded by Config's limits: no overflow
        long size = cur.size;
        // F32 tensors 4-aligned in the file (general.alignment may be 1 or 2); Q8_0 blocks are 34 bytes
        if (t.offset() < 0 || (!q8 && t.offset() % 4 != 0) || t.offset() > size || dataStart + t.offset() + nbytes > size) {
            throw new FormatError(path, "tensor " + name + " lies outside the file");
        }
        return nbytes;
    }

    private Weights mapWeights(Config c) throws IOException {
        Weights w = new Weights(c.nLayers);
        int d = c.dim;
        w.tokenEmbedding = matrix("token_embd.weight", c.vocabSize, d);
        w.rmsFinal = matrix("output_norm.weight", 1, d).toArray();
        w.wcls = c.sharedClassifier ? w.tokenEmbedding : matrix("output.weight", c.vocabSize, d);
        for (int l = 0; l < c.nLayers; l++) {
            w.rmsAtt[l] = matrix(layerTensor(l, "attn_norm"), 1, d).toArray();
            w.wq[l] = matrix(layerTensor(l, "attn_q"), d, d);
            w.wk[l] = matrix(layerTensor(l, "attn_k"), c.kvDim, d);
            w.wv[l] = matrix(layerTensor(l, "attn_v"), c.kvDim, d);
            w.wo[l] = matrix(layerTensor(l, "attn_output"), d, d);
            w.rmsFfn[l] = matrix(layerTensor(l, "ffn_norm"), 1, d).toArray();
            w.w1[l] = matrix(layerTensor(l, "ffn_gate"), c.hiddenDim, d);
            w.w2[l] = matrix(layerTensor(l, "ffn_down"), d, c.hiddenDim);
            w.w3[l] = matrix(layerTensor(l, "ffn_up"), c.hiddenDim, d);
        }
        return w;
    }

    /** A tensor checkTensorTable has passed, F32, Q8_0, F16 or BF16; a vector is one row. */
    private Matrix matrix(String name, int rows, int cols) throws IOException {
        TensorInfo t = infos.get(name);
        return new Matrix(load, dataStart + t.offset(), rows, cols, t.type());
    }
}
