package polyllama;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static polyllama.Fixtures.DIM;
import static polyllama.Fixtures.HEADS;
import static polyllama.Fixtures.HIDDEN;
import static polyllama.Fixtures.KV_HEADS;
import static polyllama.Fixtures.LAYERS;
import static polyllama.Fixtures.SEQ;
import static polyllama.Fixtures.VOCAB;
import static polyllama.Fixtures.assertBadFile;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** v0 and v1 checkpoints through the one header path; the same weights as GGUF give the same logits. */
class CheckpointTest {
    @TempDir
    Path dir;

    // the tensors with the seeds GgufFile.tinyModel gives them, in v0's and in v1's order
    static final int KV_DIM = DIM / HEADS * KV_HEADS;
    static final int TOK = 0, RMS_ATT = 1, WQ = 2, WK = 3, WV = 4, WO = 5, RMS_FFN = 6, W1 = 7, W2 = 8, W3 = 9,
            RMS_FINAL = 10, WCLS = 11;
    static final int[] SIZE = {VOCAB * DIM, DIM, DIM * DIM, KV_DIM * DIM, KV_DIM * DIM, DIM * DIM, DIM,
        HIDDEN * DIM, DIM * HIDDEN, HIDDEN * DIM, DIM, VOCAB * DIM};
    static final int[] V0_ORDER = {TOK, RMS_ATT, WQ, WK, WV, WO, RMS_FFN, W1, W2, W3, RMS_FINAL};
    static final int[] V1_ORDER = {RMS_ATT, RMS_FFN, RMS_FINAL, TOK, WQ, WK, WV, WO, W1, W2, W3};

    static byte[] tensors(int[] order, boolean shared, int freqFloats) {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        for (int t : order) {
            out.writeBytes(Fixtures.floats(Fixtures.tensor(t, SIZE[t])));
            if (t == RMS_FINAL) out.writeBytes(new byte[4 * freqFloats]);
        }
        if (!shared) out.writeBytes(Fixtures.floats(Fixtures.tensor(WCLS, SIZE[WCLS])));
        return out.toByteArray();
    }

    static byte[] v0(boolean shared) {
        ByteBuffer h = Fixtures.le(28);
        for (int v : new int[] {DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, shared ? VOCAB : -VOCAB, SEQ}) h.putInt(v);
        return concat(h.array(), tensors(V0_ORDER, shared, 2 * SEQ * (DIM / HEADS / 2)));
    }

    static byte[] v1(boolean shared, int version) {
        ByteBuffer h = Fixtures.le(256).putInt(Checkpoint.V1_MAGIC).putInt(version);
        for (int v : new int[] {DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ}) h.putInt(v);
        h.put((byte) (shared ? 1 : 0));
        return concat(h.array(), tensors(V1_ORDER, shared, 0));
    }

    static byte[] concat(byte[] a, byte[] b) {
        byte[] out = Arrays.copyOf(a, a.length + b.length);
        System.arraycopy(b, 0, out, a.length, b.length);
        return out;
    }

    Model read(String name, byte[] bytes) throws IOException {
        return Model.read(Files.write(dir.resolve(name), bytes).toString());
    }

    /** The logits after each of a few tokens, on a pool of the given size. */
    static float[][] logits(Model m, int threads) {
        Transformer t = new Transformer(m, new Pool(threads), Kernels.pick());
        int[] tokens = {1, 259, 70, 3, 200};
        float[][] out = new float[tokens.length][];
        for (int pos = 0; pos < tokens.length; pos++) out[pos] = t.forward(tokens[pos], pos).clone();
        return out;
    }

    /** The warm-up's passes leave nothing the generation reads: the same logits after it, at 1 and 2 threads. */
    @Test
    void warmUpLeavesTheLogitsAlone() throws IOException {
        Model m = read("w.v0.bin", v0(false));
        for (int threads : new int[] {1, 2}) {
            Transformer t = new Transformer(m, new Pool(threads), Kernels.pick());
            assertTrue(t.warmUp() >= 8);
            int[] tokens = {1, 259, 70, 3, 200};
            float[][] want = logits(m, threads);
            for (int pos = 0; pos < tokens.length; pos++) {
                assertArrayEquals(want[pos], t.forward(tokens[pos], pos), "position " + pos + ", -j " + threads);
            }
        }
    }

    @Test
    void v0V1AndGgufOfTheSameWeightsAgree() throws IOException {
        for (boolean shared : new boolean[] {true, false}) {
            Model m0 = read("m.v0.bin", v0(shared)), m1 = read("m.v1.bin", v1(shared, 1));
            Model mg = Model.read(GgufFile.tinyModel(shared).write(dir, "m.gguf").toString());
            for (Model m : new Model[] {m0, m1, mg}) {
                assertEquals(shared, m.config.sharedClassifier);
                assertEquals(VOCAB, m.config.vocabSize);
                assertArrayEquals(Fixtures.tensor(RMS_FINAL, DIM), m.weights.rmsFinal);
                assertArrayEquals(Fixtures.tensor(RMS_FFN, DIM), m.weights.rmsFfn[0]);
            }
            float[][] want = logits(m0, 1);
            assertTrue(Arrays.deepEquals(want, logits(m1, 1)), "v1 differs from v0");
            assertTrue(Arrays.deepEquals(want, logits(mg, 1)), "GGUF differs from v0");
            float[][] two = logits(m0, 2);  // the pool splits rows, not sums: the same floats
            assertTrue(Arrays.deepEquals(want, two), "-j 2 differs from -j 1");
            assertFalse(Arrays.equals(want[0], want[1]));
        }
    }

    @Test
    void weightsReadOntoTheHeapGiveTheSameLogits() throws IOException {
        for (boolean shared : new boolean[] {true, false}) {
            String v0 = Files.write(dir.resolve("h.v0.bin"), v0(shared)).toString();
            String v1 = Files.write(dir.resolve("h.v1.bin"), v1(shared, 1)).toString();
            String gguf = GgufFile.tinyModel(shared).write(dir, "h.gguf").toString();
            float[][] want = logits(Model.read(v0, false), 1);
            for (String path : new String[] {v0, v1, gguf}) {
                Model m = Model.read(path, true);
                Weights w = m.weights;
                for (Matrix t : new Matrix[] {w.tokenEmbedding, w.wq[0], w.w2[LAYERS - 1], w.wcls}) {
                    assertNull(t.blocks, path);  // float32 on the heap: in float[]s, not mapped
                    Loader.Floats f = t.floats[0];
                    assertTrue(f.start() + t.rows * t.cols <= f.array().length, path);
                }
                assertTrue(Arrays.deepEquals(want, logits(m, 1)), path + " on the heap differs from v0 mapped");
                assertTrue(Arrays.deepEquals(want, logits(m, 2)), path + " on the heap, -j 2");
            }
        }
    }

    @Test
    void refusesWrongSizesAndHeaderValues() throws IOException {
        byte[] good = v0(true), good1 = v1(true, 1);
        String[] names = {"short", "long", "short1", "long1", "version", "flag", "header"};
        byte[][] bad = {Arrays.copyOf(good, good.length - 4), Arrays.copyOf(good, good.length + 4),
            Arrays.copyOf(good1, good1.length - 4), Arrays.copyOf(good1, good1.length + 4), v1(true, 2),
            flag(good1, 2), Arrays.copyOf(good1, 100)};
        for (int i = 0; i < bad.length; i++) {
            Path p = Files.write(dir.resolve(names[i] + ".bin"), bad[i]);
            for (boolean onHeap : new boolean[] {false, true}) {
                Fail f = assertThrows(Fail.class, () -> Model.read(p.toString(), onHeap), names[i]);
                assertEquals(Fail.EXIT_BAD_FILE, f.code, names[i]);
            }
        }
    }

    static byte[] flag(byte[] v1, int value) {
        byte[] out = v1.clone();
        out[36] = (byte) value;
        return out;
    }

    @Test
    void refusesBadFilesWithExitThree() throws IOException {
        Path missing = dir.resolve("missing.bin");
        assertBadFile(() -> Model.read(missing.toString()));
        assertBadFile(() -> Model.read(dir.toString()));  // a directory
        Path empty = Files.write(dir.resolve("empty.bin"), new byte[0]);
        assertBadFile(() -> Model.read(empty.toString()));
        ByteBuffer h = ByteBuffer.allocate(28 + 64).order(ByteOrder.LITTLE_ENDIAN);
        for (int v : new int[] {65536, 262144, 1024, 8, 8, 32000, 65536}) h.putInt(v);
        Path huge = Files.write(dir.resolve("huge.bin"), h.array());  // KV cache far past 4 GiB
        assertBadFile(() -> Model.read(huge.toString()));
    }
}
