package polyllama;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Unit tests: tokenizer vectors, sampler determinism, kernels, file validation, flags. */
class RunTest {

    // ---------------------------------------------------------------------------- model files

    /** A file from POLYLLAMA_MODEL_PATH; missing is a failure when CI=true, a skip otherwise. */
    static String modelFile(String name) {
        String dirs = System.getenv("POLYLLAMA_MODEL_PATH");
        if (dirs != null) {
            for (String dir : dirs.split(File.pathSeparator)) {
                if (!dir.isEmpty() && new File(dir, name).isFile()) return new File(dir, name).getPath();
            }
        }
        String why = name + " not found in POLYLLAMA_MODEL_PATH=" + dirs;
        if ("true".equals(System.getenv("CI"))) fail(why + " (required when CI=true)");
        Assumptions.assumeTrue(false, why);
        return null;
    }

    static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    // ------------------------------------------------------------------------------ tokenizer

    @Test
    void encodesTheKnownLlama2Vectors() {
        Run.Vocab v = Run.readTokenizer(modelFile("tokenizer.bin"), 32000);
        assertArrayEquals(new int[] {1, 306, 4658, 278, 6593, 310, 2834, 338},
                Run.encode(v, utf8("I believe the meaning of life is"), true, false));
        assertArrayEquals(new int[] {1, 9038, 2501, 263, 931}, Run.encode(v, utf8("Once upon a time"), true, false));
        assertArrayEquals(new int[] {1}, Run.encode(v, new byte[0], true, false));
        assertArrayEquals(new int[] {9038, 2}, Run.encode(v, utf8("Once"), false, true));
    }

    @Test
    void decodesAsRunC() {
        Run.Vocab v = Run.readTokenizer(modelFile("tokenizer.bin"), 32000);
        assertArrayEquals(utf8("Once"), Run.decode(v, 1, 9038));          // BOS eats the leading space
        assertArrayEquals(utf8(" upon"), Run.decode(v, 9038, 2501));
        assertArrayEquals(new byte[] {'\n'}, Run.decode(v, 5, 13));       // <0x0A>
        assertArrayEquals(new byte[] {(byte) 0xE6}, Run.decode(v, 5, 0xE6 + 3));
    }

    /** A tiny vocabulary: the byte fallback, the merges and their tie rule without any file. */
    static Run.Vocab tinyVocab() {
        List<byte[]> pieces = new ArrayList<>();
        List<Float> scores = new ArrayList<>();
        pieces.add(utf8("<unk>"));
        pieces.add(utf8("\n<s>\n"));
        pieces.add(utf8("\n</s>\n"));
        for (int b = 0; b < 256; b++) pieces.add(utf8(String.format("<0x%02X>", b)));
        for (int i = 0; i < 259; i++) scores.add(0f);
        String[] merges = {" ", "a", "b", "ab", " a", " ab", "ë", "bb", "ba"};
        float[] mscores = {-1, -2, -3, -4, -5, -6, -7, -4, -4};
        for (int i = 0; i < merges.length; i++) {
            pieces.add(utf8(merges[i]));
            scores.add(mscores[i]);
        }
        float[] sc = new float[scores.size()];
        for (int i = 0; i < sc.length; i++) sc[i] = scores.get(i);
        return new Run.Vocab(pieces.toArray(new byte[0][]), sc);
    }

    @Test
    void mergesByScoreWithLeftmostTies() {
        Run.Vocab v = tinyVocab();
        int space = 259, spaceAb = 264, e = 265, bb = 266;
        // " ab": " " + "a" -> " a" (-5) loses to "a" + "b" -> "ab" (-4); then " " + "ab" -> " ab"
        assertArrayEquals(new int[] {1, spaceAb}, Run.encode(v, utf8("ab"), true, false));
        // "bba": "bb" (-4) and "ba" (-4) tie: the leftmost pair wins
        assertArrayEquals(new int[] {space, bb, 260}, Run.encode(v, utf8("bba"), false, false));
        // a known multi-byte character is one piece; an unknown one falls back to its bytes + 3
        assertArrayEquals(new int[] {space, e}, Run.encode(v, utf8("ë"), false, false));
        assertArrayEquals(new int[] {space, 0xE6 + 3, 0x97 + 3, 0xA5 + 3}, Run.encode(v, utf8("日"), false, false));
        assertArrayEquals(new int[] {spaceAb, 260}, Run.encode(v, utf8("aba"), false, false));
    }

    @Test
    void refusesVocabulariesThatEncodeCannotUse() {
        Run.checkVocab("tok", tinyVocab());
        byte[][] few = new byte[258][];
        java.util.Arrays.fill(few, utf8("x"));
        few[200] = utf8(" ");
        assertEquals(3, assertThrows(Run.Fail.class, () -> Run.checkVocab("tok", new Run.Vocab(few, new float[258]))).code);
        byte[][] noSpace = new byte[300][];
        for (int i = 0; i < 300; i++) noSpace[i] = utf8("t" + i);
        assertEquals(3, assertThrows(Run.Fail.class, () -> Run.checkVocab("tok", new Run.Vocab(noSpace, new float[300]))).code);
    }

    @Test
    void safePrintDropsLoneControlBytes() {
        assertTrue(Run.printable(utf8("a")));
        assertTrue(Run.printable(new byte[] {'\n'}));
        assertTrue(Run.printable(new byte[] {(byte) 0xC3, (byte) 0xAB}));
        assertTrue(!Run.printable(new byte[0]));
        assertTrue(!Run.printable(new byte[] {7}));
        assertTrue(!Run.printable(new byte[] {(byte) 0xE6}));
    }

    // -------------------------------------------------------------------------------- sampler

    @Test
    void xorshiftDrawsMatchTheReference() {
        Run.Sampler s = new Run.Sampler(1f, 0.9f, 42);
        long[] want = {1456360119L, 3359763283L, 3393612768L, 4054632243L, 3283045847L};
        for (long w : want) assertEquals(w, s.nextU32() & 0xffffffffL);
        s = new Run.Sampler(1f, 0.9f, 42);
        assertEquals(0.3390852212905884f, s.nextF32());
        assertEquals(0.7822558283805847f, s.nextF32());
    }

    static final float[] LOGITS = {1.0f, 3.0f, 2.0f, 3.0f, 0.5f, -1.0f};

    static int[] draws(float temperature, float topp, long seed, int n) {
        Run.Sampler s = new Run.Sampler(temperature, topp, seed);
        int[] out = new int[n];
        for (int i = 0; i < n; i++) out[i] = s.sample(LOGITS.clone(), LOGITS.length);
        return out;
    }

    @Test
    void toppFallsBackToArgmaxWhenNothingPassesTheCutoff() {
        float[] flat = new float[300];  // uniform: every prob 1/300 < (1 - 1e-6) / 299
        flat[7] = 1e-6f;                // a hair above the rest, still under the cutoff
        Run.Sampler s = new Run.Sampler(1f, 1e-6f, 3);
        assertEquals(7, s.sample(flat, flat.length));
    }

    @Test
    void argmaxTakesTheFirstMaximum() {
        assertArrayEquals(new int[] {1, 1, 1}, draws(0f, 0.9f, 1, 3));
    }

    @Test
    void samplesMatchTheReference() {
        // expected draws from orchestrator/reference/sampler.py with the same logits and seeds
        assertArrayEquals(new int[] {1, 3, 3, 2, 3, 3, 1, 3, 1, 3, 3, 1}, draws(1f, 0.9f, 42, 12));
        assertArrayEquals(new int[] {1, 3, 3, 3, 3, 3, 1, 1, 1, 3, 1, 1}, draws(1f, 0.5f, 42, 12));
        assertArrayEquals(new int[] {1, 3, 3, 3, 3, 3, 1, 2, 1, 3, 1, 1}, draws(1f, 1.0f, 42, 12));
        assertArrayEquals(new int[] {1, 3, 3, 3, 3, 3, 1, 2, 1, 3, 1, 1}, draws(1f, 0.0f, 42, 12));
        assertArrayEquals(new int[] {3, 2, 1, 1, 1, 1, 3, 1, 1, 3, 3, 3}, draws(0.7f, 0.95f, 7, 12));
    }

    // -------------------------------------------------------------------------------- kernels

    @Test
    void picksTheVectorApiWhenTheModuleIsThere() {
        Assumptions.assumeTrue(ModuleLayer.boot().findModule("jdk.incubator.vector").isPresent());
        int feature = Runtime.version().feature();
        Assumptions.assumeTrue(feature <= 18 || feature >= 22, "no SimdKernels for JDK 19-21");
        assertTrue(Run.pickKernels().name().startsWith("vector-api"), Run.pickKernels().name());
    }

    @Test
    void simdKernelsAgreeWithScalar() {
        Run.Kernels simd = Run.pickKernels(), scalar = new Run.ScalarKernels();
        int rows = 7, n = 300;
        ByteBuffer bb = ByteBuffer.allocateDirect(4 * rows * n).order(ByteOrder.LITTLE_ENDIAN);
        float[] x = new float[n];
        java.util.Random r = new java.util.Random(1);
        for (int i = 0; i < n; i++) x[i] = (float) r.nextGaussian();
        for (int i = 0; i < rows * n; i++) bb.putFloat(4 * i, (float) r.nextGaussian());
        float[] a = new float[rows], b = new float[rows];
        simd.matvec(bb, 0, rows, x, n, a, 0);
        scalar.matvec(bb, 0, rows, x, n, b, 0);
        for (int i = 0; i < rows; i++) assertEquals(b[i], a[i], 1e-4f * (1 + Math.abs(b[i])));
        assertEquals(scalar.dot(x, 1, x, 2, 250), simd.dot(x, 1, x, 2, 250), 1e-3f);
    }

    // ---------------------------------------------------------------------- files and flags

    @Test
    void refusesBadFilesWithExitThree(@TempDir Path dir) throws IOException {
        Path missing = dir.resolve("missing.bin");
        assertEquals(3, assertThrows(Run.Fail.class, () -> Run.readModel(missing.toString())).code);
        Path empty = Files.write(dir.resolve("empty.bin"), new byte[0]);
        assertEquals(3, assertThrows(Run.Fail.class, () -> Run.readModel(empty.toString())).code);
        ByteBuffer h = ByteBuffer.allocate(28 + 64).order(ByteOrder.LITTLE_ENDIAN);
        for (int v : new int[] {65536, 262144, 1024, 8, 8, 32000, 65536}) h.putInt(v);
        Path huge = Files.write(dir.resolve("huge.bin"), h.array());  // KV cache far past 4 GiB
        assertEquals(3, assertThrows(Run.Fail.class, () -> Run.readModel(huge.toString())).code);
        ByteBuffer g = ByteBuffer.allocate(64).order(ByteOrder.LITTLE_ENDIAN);
        g.putInt(Run.GGUF_MAGIC).putInt(3).putLong(1L << 60).putLong(1);
        Path gg = Files.write(dir.resolve("bad.gguf"), g.array());
        assertEquals(3, assertThrows(Run.Fail.class, () -> Run.readModel(gg.toString())).code);
    }

    static Run.Args parse(String... argv) {
        byte[][] raw = new byte[argv.length][];
        for (int i = 0; i < argv.length; i++) raw[i] = utf8(argv[i]);
        return Run.parseArgs(argv, raw);
    }

    @Test
    void parsesFlagsAndRefusesBadOnes() {
        Run.Args a = parse("m.bin", "-t", "0.5", "-p", "1", "-s", "18446744073709551615", "-n", "0", "-j", "3",
                "-i", "hé", "-e", "1");
        assertEquals(0.5f, a.temperature);
        assertEquals(-1L, a.seed);  // 2^64 - 1 as a uint64
        assertEquals(3, a.threads);
        assertArrayEquals(utf8("hé"), a.prompt);
        assertTrue(a.ignoreBos);
        String[][] bad = {{}, {"-t", "1"}, {"m.bin", "-q", "1"}, {"m.bin", "-t"}, {"m.bin", "-t", "abc"},
            {"m.bin", "-t", "-1"}, {"m.bin", "-p", "2"}, {"m.bin", "-n", "-3"}, {"m.bin", "-j", "0"},
            {"m.bin", "-j", "x"}, {"m.bin", "-s", "seed"}, {"m.bin", "-m", "chat"}, {"m.bin", "-e", "5"},
            {"m.bin", "-m", "logits"}, {"m.bin", "-t", "nan"}, {"m.bin", "-t", "inf"}, {"m.bin", "-t", "1e999"}, {"m.bin", "-n", "1_0"},
            {"m.bin", "-n", " 5"}, {"m.bin", "-t", "0x1p3"}, {"m.bin", "-k", "1, 2", "-m", "logits", "-o", "f"},
            {"m.bin", "-k", "1,x", "-m", "logits", "-o", "f"}};
        for (String[] argv : bad) {
            assertEquals(2, assertThrows(Run.Fail.class, () -> parse(argv)).code, String.join(" ", argv));
        }
    }
}
