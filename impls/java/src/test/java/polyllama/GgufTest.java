package polyllama;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static polyllama.Fixtures.assertBadFile;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.function.Consumer;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The GGUF reader: a good file loads; what llama.cpp's loader refuses is refused (exit 3). */
class GgufTest {
    @TempDir
    Path dir;

    /** The tiny model with one change, read back; the FormatError's message when refused. */
    String refused(Consumer<GgufFile> change) throws IOException {
        GgufFile g = GgufFile.tinyModel(true);
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

    @Test
    void refusesAbsurdCounts() throws IOException {
        ByteBuffer g = ByteBuffer.allocate(64).order(ByteOrder.LITTLE_ENDIAN);
        g.putInt(Gguf.MAGIC).putInt(3).putLong(1L << 60).putLong(1);
        Path p = Files.write(dir.resolve("counts.gguf"), g.array());
        assertBadFile(() -> Model.read(p.toString()));
    }
}
