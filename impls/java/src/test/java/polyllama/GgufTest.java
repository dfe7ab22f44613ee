package polyllama;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static polyllama.Fixtures.VOCAB;
import static polyllama.Fixtures.assertBadFile;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.function.Consumer;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The GGUF reader: a good file loads; what llama.cpp's loader refuses is refused (exit 3). */
class GgufTest {
    @TempDir
    Path dir;

    /** The tiny model with one change, read back; the FormatError's message when refused. */
    String refused(Consumer<GgufFile> change) throws IOException {
        return refused(GgufFile.tinyModel(true), change);
    }

    String refused(GgufFile g, Consumer<GgufFile> change) throws IOException {
        change.accept(g);
        Path p = g.write(dir, "bad.gguf");
        Fail f = assertThrows(Fail.class, () -> Model.read(p.toString()));
        assertEquals(Fail.EXIT_BAD_FILE, f.code, f.getMessage());
        assertTrue(f.getMessage().startsWith(p + ": "), f.getMessage());
        return f.getMessage();
    }

    @Test
    void readsTheTinyModel() throws IOException {
        Model m = Model.read(GgufFile.tinyModel(true).write(dir, "good.gguf").toString());
        Config c = m.config;
        assertEquals(Fixtures.DIM, c.dim);
        assertEquals(Fixtures.HIDDEN, c.hiddenDim);
        assertEquals(Fixtures.VOCAB, c.vocabSize);
        assertEquals(Fixtures.SEQ, c.seqLen);
        assertTrue(c.sharedClassifier);
        assertSame(m.weights.tokenEmbedding, m.weights.wcls);
        assertArrayEquals(Fixtures.tensor(10, Fixtures.DIM), m.weights.rmsFinal);  // output_norm: the 11th tensor
        float[] row = new float[Fixtures.DIM];
        m.weights.wq[0].copyRow(1, row);
        float[] wq = Fixtures.tensor(2, Fixtures.DIM * Fixtures.DIM);
        for (int i = 0; i < Fixtures.DIM; i++) assertEquals(wq[Fixtures.DIM + i], row[i]);
        assertEquals(259, m.tokenizer.find(new byte[] {' '}));                  // U+2581 read back as a space
        assertArrayEquals(Fixtures.utf8("\n<s>\n"), m.tokenizer.pieces[1]);   // <s> as run.c spells it

        Model unshared = Model.read(GgufFile.tinyModel(false).write(dir, "unshared.gguf").toString());
        assertFalse(unshared.config.sharedClassifier);
    }

    @Test
    void refusesAnEmptyKey() throws IOException {
        refused(g -> g.replaceKv("general.name", new GgufFile.Kv("", GgufFile.STRING, GgufFile.string("tiny"))));
    }

    @Test
    void refusesAKeyThatAppearsTwice() throws IOException {
        assertTrue(refused(g -> g.kvs.add(g.kv("llama.block_count"))).contains("appears twice"));
        assertTrue(refused(g -> g.kvs.add(g.kv("tokenizer.ggml.scores"))).contains("appears twice"));
        assertTrue(refused(g -> g.kvs.add(g.kv("tokenizer.ggml.tokens"))).contains("appears twice"));
    }

    @Test
    void refusesATensorThatAppearsTwice() throws IOException {
        String m = refused(g -> {
            GgufFile.Tensor norm = g.tensor(1);
            g.tensors.add(new GgufFile.Tensor(norm.name(), norm.dims(), 0, g.appendData(new byte[4 * Fixtures.DIM])));
        });
        assertTrue(m.contains("appears twice"), m);
    }

    @Test
    void refusesATensorThatIsNotTheModels() throws IOException {
        String m = refused(g -> g.tensors.add(new GgufFile.Tensor("extra.weight", new long[] {32}, 0,
                g.appendData(new byte[128]))));
        assertTrue(m.contains("unexpected tensor extra.weight"), m);
        m = refused(g -> g.tensors.add(new GgufFile.Tensor("blk.1.attn_norm.weight", new long[] {Fixtures.DIM}, 0,
                g.appendData(new byte[4 * Fixtures.DIM]))));  // a layer past block_count
        assertTrue(m.contains("unexpected tensor"), m);
        m = refused(g -> g.tensors.remove(3));
        assertTrue(m.contains("missing tensor"), m);
    }

    @Test
    void refusesAnOffsetOffTheAlignment() throws IOException {
        String m = refused(g -> {
            int last = g.tensors.size() - 1;
            g.appendData(new byte[64]);
            g.setOffset(last, g.tensor(last).offset() + 4);
        });
        assertTrue(m.contains("not a multiple of the alignment"), m);
    }

    @Test
    void refusesOverlappingTensors() throws IOException {
        String m = refused(g -> g.setOffset(2, g.tensor(1).offset()));
        assertTrue(m.contains("overlap"), m);
        // not only at the same start: the norm vector (32 bytes) inside wq's span
        m = refused(g -> g.setOffset(1, g.tensor(2).offset() + 32));
        assertTrue(m.contains("overlap"), m);
    }

    @Test
    void refusesNonFiniteScores() throws IOException {
        for (float bad : new float[] {Float.NaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY}) {
            String m = refused(g -> {
                float[] s = Fixtures.scores();
                s[3] = bad;
                g.replaceKv("tokenizer.ggml.scores",
                        new GgufFile.Kv("tokenizer.ggml.scores", GgufFile.ARRAY, GgufFile.f32Array(s)));
            });
            assertTrue(m.contains("non-finite score"), m);
        }
    }

    @Test
    void refusesAVocabularyWithoutASpacePiece() throws IOException {
        String m = refused(g -> {
            byte[][] p = Fixtures.pieces();
            p[259] = Fixtures.utf8("\u2582");
            g.replaceKv("tokenizer.ggml.tokens", new GgufFile.Kv("tokenizer.ggml.tokens", GgufFile.ARRAY,
                    GgufFile.stringArray(GgufFile.tokens(p))));
        });
        assertTrue(m.contains("no ' ' piece"), m);
    }

    // ------------------------------------------------------------------------------------ Q8_0

    // tensor indices in GgufFile.model's order
    static final int TOKEN_EMBD = 0, ATTN_NORM = 1, ATTN_Q = 2, ATTN_K = 3, FFN_DOWN = 8, OUTPUT = 11;
    static final int Q8_DIM = 32, Q8_HIDDEN = 64;

    /** Widths whose rows are whole Q8_0 blocks; every matrix Q8_0 but ffn_down, as stories260K's converts. */
    static GgufFile q8Model() {
        return GgufFile.model(Q8_DIM, Q8_HIDDEN, false, name -> !name.contains("ffn_down"));
    }

    @Test
    void readsQ8AndF32MixedInOneLayer() throws IOException {
        Path p = q8Model().write(dir, "q8.gguf");
        for (boolean onHeap : new boolean[] {false, true}) {
            Weights w = Model.read(p.toString(), onHeap).weights;
            assertTrue(w.tokenEmbedding.q8() && w.wq[0].q8() && w.w1[0].q8() && w.wcls.q8());
            assertFalse(w.w2[0].q8());
            assertTrue(w.hasQ8());
            // the embedding row is the stored blocks dequantized: fp32(d) * q, exactly
            float[] table = Fixtures.dequantize(Fixtures.q8(Fixtures.tensor(0, VOCAB * Q8_DIM))), row = new float[Q8_DIM];
            w.tokenEmbedding.copyRow(7, row);
            assertArrayEquals(Arrays.copyOfRange(table, 7 * Q8_DIM, 8 * Q8_DIM), row);
        }
        // what the file computes: the F32 model's logits up to the 8-bit rounding of weights and activations
        Path f32 = GgufFile.model(Q8_DIM, Q8_HIDDEN, false, name -> false).write(dir, "f32.gguf");
        float[] want = logits(Model.read(f32.toString()), 3, 0);
        float[] got = logits(Model.read(p.toString()), 3, 0);
        assertArrayEquals(got, logits(Model.read(p.toString(), true), 3, 0));
        float scale = 0, diff = 0;
        for (int i = 0; i < want.length; i++) {
            scale = Math.max(scale, Math.abs(want[i]));
            diff = Math.max(diff, Math.abs(got[i] - want[i]));
        }
        assertTrue(diff > 0 && diff < 0.05f * (1 + scale), "Q8_0 vs F32 logits: " + diff + " of " + scale);
    }

    static float[] logits(Model m, int token, int pos) {
        Transformer t = new Transformer(m, new Pool(1), Kernels.pick());
        return t.forward(token, pos).clone();
    }

    @Test
    void refusesQ8RowsThatAreNotWholeBlocks() throws IOException {
        String m = refused(g -> g.setType(ATTN_Q, Q8.TYPE));  // rows of 8 values
        assertTrue(m.contains("blk.0.attn_q.weight") && m.contains("not a multiple of 32"), m);
        // ffn_down's rows are hidden_dim long: 48 here, as stories260K's 172, which the converter leaves F32
        m = refused(GgufFile.model(Q8_DIM, 48, false, name -> !name.contains("ffn_down")), g -> g.setType(FFN_DOWN, Q8.TYPE));
        assertTrue(m.contains("blk.0.ffn_down.weight is Q8_0 with rows of 48 values"), m);
    }

    @Test
    void refusesAQ8Norm() throws IOException {
        String m = refused(q8Model(), g -> g.setType(ATTN_NORM, Q8.TYPE));
        assertTrue(m.contains("blk.0.attn_norm.weight") && m.contains("norm must be F32"), m);
    }

    @Test
    void refusesAnotherType() throws IOException {
        String m = refused(q8Model(), g -> g.setType(ATTN_K, 9));  // Q8_1
        assertTrue(m.contains("blk.0.attn_k.weight has type 9"), m);
    }

    @Test
    void refusesATruncatedQ8Tensor() throws IOException {
        // output.weight, the last tensor, a byte short of its last block: sized as F32 it would run past the file too
        String m = refused(q8Model(), g -> g.data = Arrays.copyOf(g.data, g.data.length - 1));
        assertTrue(m.contains("output.weight lies outside the file"), m);
    }

    @Test
    void refusesATensorInsideQ8Blocks() throws IOException {
        // attn_q: 32 rows of one 34-byte block = 1088 bytes; a norm placed at +1024 lies in its last 64
        String m = refused(q8Model(), g -> g.setOffset(ATTN_NORM, g.tensor(ATTN_Q).offset() + 1024));
        assertTrue(m.contains("overlap"), m);
    }

    @Test
    void refusesAbsurdCounts() throws IOException {
        ByteBuffer g = ByteBuffer.allocate(64).order(ByteOrder.LITTLE_ENDIAN);
        g.putInt(Gguf.MAGIC).putInt(3).putLong(1L << 60).putLong(1);
        Path p = Files.write(dir.resolve("counts.gguf"), g.array());
        assertBadFile(() -> Model.read(p.toString()));
    }
}
