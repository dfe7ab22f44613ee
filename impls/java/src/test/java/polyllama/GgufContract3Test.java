package polyllama;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.function.Consumer;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** What contract 3 adds to GGUF: F16 and BF16 tensors, the model's own keys, a KV cache sized for the run. */
class GgufContract3Test {
    static final int BOOL = 7, F64 = 12;  // kv value types beside GgufFile's
    static final int DIM = 32, HIDDEN = 64;

    @TempDir
    Path dir;

    String refused(GgufFile g, Consumer<GgufFile> change) throws IOException {
        change.accept(g);
        Path p = g.write(dir, "bad.gguf");
        Fail f = assertThrows(Fail.class, () -> Model.read(p.toString()));
        assertEquals(Fail.EXIT_BAD_FILE, f.code, f.getMessage());
        assertTrue(f.getMessage().startsWith(p + ": "), f.getMessage());
        return f.getMessage();
    }

    static GgufFile typed(int type) {
        // ffn_down stays F32 beside 16-bit ffn_gate and ffn_up: a mix within one layer
        return GgufFile.typed(DIM, HIDDEN, false, name -> name.contains("ffn_down") ? 0 : type);
    }

    static float[] logitsAt(Model m, int cacheRows, int... tokens) {
        Transformer t = new Transformer(m, new Pool(1), Kernels.pick(), 512, cacheRows);
        float[] out = null;
        for (int pos = 0; pos < tokens.length; pos++) out = t.forward(tokens[pos], pos);
        return out.clone();
    }

    static float maxDiff(float[] a, float[] b) {
        float d = 0;
        for (int i = 0; i < a.length; i++) d = Math.max(d, Math.abs(a[i] - b[i]));
        return d;
    }

    static float maxAbs(float[] a) {
        float m = 0;
        for (float v : a) m = Math.max(m, Math.abs(v));
        return m;
    }

    // ------------------------------------------------------------------------ F16 and BF16

    @Test
    void readsF16AndBF16Files() throws IOException {
        float[] f32 = logitsAt(Model.read(typed(0).write(dir, "f32.gguf").toString()), Fixtures.SEQ, 3, 7, 259);
        for (int type : new int[] {Matrix.F16, Matrix.BF16}) {
            Path p = typed(type).write(dir, "t" + type + ".gguf");
            float[] mapped = null;
            for (boolean onHeap : new boolean[] {false, true}) {
                Model m = Model.read(p.toString(), onHeap);
                Weights w = m.weights;
                assertEquals(type, w.tokenEmbedding.type);
                assertEquals(type, w.wq[0].type);
                assertEquals(Matrix.F32, w.w2[0].type);
                assertTrue(w.has(type) && !w.hasQ8());
                // the embedding row is the stored values converted, exactly
                float[] want = Fixtures.tensor(0, Fixtures.VOCAB * DIM), row = new float[DIM];
                w.tokenEmbedding.copyRow(7, row);
                for (int i = 0; i < DIM; i++) {
                    float v = want[7 * DIM + i];
                    assertEquals(type == Matrix.F16 ? Half.f16(Q8.floatToHalf(v)) : Half.bf16(Half.toBF16(v)), row[i]);
                }
                float[] got = logitsAt(m, Fixtures.SEQ, 3, 7, 259);
                if (mapped == null) mapped = got;
                else assertArrayEquals(mapped, got, "heap and mapped");
                float d = maxDiff(got, f32), tol = (type == Matrix.F16 ? 5e-3f : 3e-2f) * (1 + maxAbs(f32));
                assertTrue(d > 0 && d < tol, "type " + type + " vs F32 logits: " + d);
                // the batched pass gives the one-position logits up to float32 summation order
                Transformer t = new Transformer(m, new Pool(2), Kernels.pick(), 3);
                t.batch.forward(new int[] {3, 7, 259}, 0, 3, 0);
                float[] batched = Arrays.copyOf(t.batch.logits(2, 3), Fixtures.VOCAB);
                assertTrue(maxDiff(batched, got) <= 1e-4f * (1 + maxAbs(got)), "batched vs one position");
            }
        }
    }

    @Test
    void refusesA16BitNorm() throws IOException {
        String m = refused(typed(Matrix.F16), g -> g.setType(GgufTest.ATTN_NORM, Matrix.F16));
        assertTrue(m.contains("blk.0.attn_norm.weight") && m.contains("norm must be F32"), m);
        m = refused(typed(Matrix.BF16), g -> g.setType(GgufTest.ATTN_NORM, Matrix.BF16));
        assertTrue(m.contains("blk.0.attn_norm.weight is BF16"), m);
    }

    @Test
    void refusesOtherTypes() throws IOException {
        for (int type : new int[] {2, 9, 16, 29, 31}) {
            String m = refused(typed(Matrix.F16), g -> g.setType(GgufTest.ATTN_K, type));
            assertTrue(m.contains("blk.0.attn_k.weight has type " + type), m);
        }
    }

    @Test
    void sizes16BitTensorsByTwoBytesAValue() throws IOException {
        // output.weight, the last tensor, one byte short
        String m = refused(typed(Matrix.BF16), g -> g.data = Arrays.copyOf(g.data, g.data.length - 1));
        assertTrue(m.contains("output.weight lies outside the file"), m);
        // a norm placed in the last bytes of attn_q's 32 x 32 x 2 = 2048
        m = refused(typed(Matrix.F16), g -> g.setOffset(GgufTest.ATTN_NORM, g.tensor(GgufTest.ATTN_Q).offset() + 2048 - 64));
        assertTrue(m.contains("overlap"), m);
    }

    // ---------------------------------------------------------------------------- the keys

    static GgufFile.Kv kv(String key, int type, byte[] value) {
        return new GgufFile.Kv(key, type, value);
    }

    static byte[] f32(float v) {
        return Fixtures.le(4).putFloat(v).array();
    }

    static byte[] f64(double v) {
        return Fixtures.le(8).putDouble(v).array();
    }

    static byte[] i32(int v) {
        return Fixtures.le(4).putInt(v).array();
    }

    @Test
    void defaultsWhereTheKeysAreAbsent() throws IOException {
        Model m = Model.read(GgufFile.tinyModel(true).write(dir, "plain.gguf").toString());
        assertEquals(10000.0, m.config.theta);
        assertEquals(1e-5f, m.config.eps);
        assertEquals(1, m.tokenizer.bos);
        assertEquals(2, m.tokenizer.eos);
    }

    @Test
    void readsTheKeysInAnyNumericType() throws IOException {
        GgufFile g = typed(0);
        g.kvs.add(kv("llama.rope.freq_base", GgufFile.U32, GgufFile.u32(500000)));
        g.kvs.add(kv("llama.attention.layer_norm_rms_epsilon", F64, f64(1e-6)));
        g.kvs.add(kv("llama.rope.dimension_count", GgufFile.F32, f32(DIM / Fixtures.HEADS)));
        g.kvs.add(kv("llama.rope.scaling.type", GgufFile.STRING, GgufFile.string("none")));
        g.kvs.add(kv("llama.expert_count", GgufFile.U32, GgufFile.u32(0)));
        g.kvs.add(kv("tokenizer.ggml.bos_token_id", GgufFile.I32, i32(5)));
        g.kvs.add(kv("tokenizer.ggml.eos_token_id", GgufFile.U32, GgufFile.u32(6)));
        Model m = Model.read(g.write(dir, "keys.gguf").toString());
        assertEquals(500000.0, m.config.theta);
        assertEquals(1e-6f, m.config.eps);
        assertEquals(5, m.tokenizer.bos);
        assertEquals(6, m.tokenizer.eos);
        int[] ids = m.tokenizer.encode(Fixtures.utf8("a"), true, true);
        assertEquals(5, ids[0]);
        assertEquals(6, ids[ids.length - 1]);
        assertArrayEquals(new byte[0], m.tokenizer.decode(5, 259));          // BOS (5 here) eats the leading space
        assertArrayEquals(new byte[] {' '}, m.tokenizer.decode(1, 259));     // 1 is no BOS in this file
    }

    @Test
    void aNonDefaultThetaOrEpsChangesTheLogits() throws IOException {
        float[] base = logitsAt(Model.read(typed(0).write(dir, "base.gguf").toString()), Fixtures.SEQ, 3, 7, 259, 9);
        GgufFile g = typed(0);
        g.kvs.add(kv("llama.rope.freq_base", GgufFile.F32, f32(10000)));
        g.kvs.add(kv("llama.attention.layer_norm_rms_epsilon", GgufFile.F32, f32(1e-5f)));
        assertArrayEquals(base, logitsAt(Model.read(g.write(dir, "same.gguf").toString()), Fixtures.SEQ, 3, 7, 259, 9));
        GgufFile theta = typed(0);
        theta.kvs.add(kv("llama.rope.freq_base", GgufFile.F32, f32(2)));
        Model mt = Model.read(theta.write(dir, "theta.gguf").toString());
        float[] t = logitsAt(mt, Fixtures.SEQ, 3, 7, 259, 9);
        // the tiny model's attention scores are small, so RoPE moves its logits only a little
        assertTrue(maxDiff(t, base) > 1e-6f, "theta " + maxDiff(t, base));
        float[] freq = new Transformer(mt, new Pool(1), Kernels.pick()).s.ropeFreq;
        int hs = DIM / Fixtures.HEADS;
        for (int i = 0; i < hs / 2; i++) assertEquals((float) (1 / Math.pow(2, 2.0 * i / hs)), freq[i], 1e-7f);
        GgufFile eps = typed(0);
        eps.kvs.add(kv("llama.attention.layer_norm_rms_epsilon", GgufFile.F32, f32(0.5f)));
        float[] e = logitsAt(Model.read(eps.write(dir, "eps.gguf").toString()), Fixtures.SEQ, 3, 7, 259, 9);
        assertTrue(maxDiff(e, base) > 1e-4f * (1 + maxAbs(base)), "eps");
    }

    @Test
    void refusesKeysOfTheWrongKindOrOutOfRange() throws IOException {
        Object[][] cases = {
            {"llama.rope.freq_base", GgufFile.STRING, GgufFile.string("10000")},
            {"llama.rope.freq_base", BOOL, new byte[] {1}},
            {"llama.rope.freq_base", GgufFile.F32, f32(1)},
            {"llama.rope.freq_base", GgufFile.F32, f32(Float.NaN)},
            {"llama.rope.freq_base", F64, f64(Double.POSITIVE_INFINITY)},
            {"llama.rope.freq_base", GgufFile.ARRAY, GgufFile.f32Array(new float[] {10000})},
            {"llama.attention.layer_norm_rms_epsilon", GgufFile.F32, f32(0)},
            {"llama.attention.layer_norm_rms_epsilon", GgufFile.U32, GgufFile.u32(1)},
            {"llama.attention.layer_norm_rms_epsilon", GgufFile.F32, f32(-1e-5f)},
            {"llama.attention.layer_norm_rms_epsilon", GgufFile.STRING, GgufFile.string("1e-5")},
            {"llama.rope.dimension_count", GgufFile.U32, GgufFile.u32(8)},
            {"llama.rope.dimension_count", GgufFile.F32, f32(15.5f)},
            {"llama.rope.scaling.type", GgufFile.STRING, GgufFile.string("linear")},
            {"llama.rope.scaling.type", GgufFile.U32, GgufFile.u32(0)},
            {"llama.expert_count", GgufFile.U32, GgufFile.u32(8)},
            {"llama.expert_count", GgufFile.STRING, GgufFile.string("0")},
            {"tokenizer.ggml.bos_token_id", GgufFile.U32, GgufFile.u32(Fixtures.VOCAB)},
            {"tokenizer.ggml.bos_token_id", GgufFile.F32, f32(1.5f)},
            {"tokenizer.ggml.bos_token_id", GgufFile.STRING, GgufFile.string("1")},
            {"tokenizer.ggml.eos_token_id", GgufFile.I32, i32(-1)},
            {"tokenizer.ggml.eos_token_id", BOOL, new byte[] {0}},
        };
        for (Object[] c : cases) {
            String key = (String) c[0];
            String m = refused(typed(0), g -> g.kvs.add(kv(key, (Integer) c[1], (byte[]) c[2])));
            assertTrue(m.contains(key), m);
        }
    }

    // ---------------------------------------------------------------------------- KV cache

    @Test
    void theKvCacheHoldsThePositionsTheRunReaches() throws IOException {
        Model m = Model.read(typed(Matrix.F16).write(dir, "kv.gguf").toString());
        Transformer t = new Transformer(m, new Pool(1), Kernels.pick(), 512, 3);
        assertEquals(3 * m.config.kvDim, t.s.keyCache[0].length);
        assertEquals(3, t.batch.rows);
        assertEquals(Fixtures.SEQ, t.batch.clamped);  // the statistics line still reports -b clamped to seq_len
        assertArrayEquals(logitsAt(m, Fixtures.SEQ, 3, 7, 259), logitsAt(m, 3, 3, 7, 259));
        Config c = m.config;
        c.checkKvCache("x.gguf", Fixtures.SEQ);
        Fail f = assertThrows(Fail.class, () -> c.checkKvCache("x.gguf", (4L << 30) / (8L * c.kvDim * c.nLayers) + 1));
        assertEquals(Fail.EXIT_BAD_FILE, f.code);
        assertTrue(f.getMessage().contains("exceeds the 4 GiB limit") && f.getMessage().contains("positions"), f.getMessage());
        assertFalse(f.getMessage().contains("\n"));
    }
}
