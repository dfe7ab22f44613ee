package polyllama;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static polyllama.Fixtures.modelFile;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.lang.reflect.Method;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Random;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Q8_0's fp16 scales, and stories260K run in Q8_0 against the reference's text. */
class Q8Test {
    @TempDir
    Path dir;

    @Test
    void halfToFloatDecodesEveryKind() {
        assertEquals(1f, Q8.halfToFloat(0x3c00));
        assertEquals(-2f, Q8.halfToFloat(0xc000));
        assertEquals(65504f, Q8.halfToFloat(0x7bff));
        assertEquals(0x1p-14f, Q8.halfToFloat(0x0400));          // smallest normal
        assertEquals(0x1p-24f, Q8.halfToFloat(0x0001));          // smallest subnormal
        assertEquals(0x3ffp-24f, Q8.halfToFloat(0x03ff));        // largest subnormal
        assertEquals(Float.floatToRawIntBits(-0f), Float.floatToRawIntBits(Q8.halfToFloat(0x8000)));
        assertEquals(Float.POSITIVE_INFINITY, Q8.halfToFloat(0x7c00));
        assertEquals(Float.NEGATIVE_INFINITY, Q8.halfToFloat(0xfc00));
        assertEquals(true, Float.isNaN(Q8.halfToFloat(0x7e00)));
    }

    @Test
    void floatToHalfRoundsToNearestEven() {
        for (int h = 0; h < 1 << 16; h++) {  // every finite fp16 comes back as itself
            if ((h & 0x7c00) != 0x7c00) assertEquals(h, Q8.floatToHalf(Q8.halfToFloat(h)), Integer.toHexString(h));
        }
        assertEquals(0x3c00, Q8.floatToHalf(1f + 0x1p-11f));      // halfway 1 .. 1+2^-10: the even, 1
        assertEquals(0x3c02, Q8.floatToHalf(1f + 0x3p-11f));      // halfway 1+2^-10 .. 1+2^-9: the even, up
        assertEquals(0x3c01, Q8.floatToHalf(Math.nextUp(1f + 0x1p-11f)));
        assertEquals(0x7bff, Q8.floatToHalf(Math.nextDown(65520f)));
        assertEquals(0x7c00, Q8.floatToHalf(65520f));            // the midpoint above 65504 rounds to infinity
        assertEquals(0x0000, Q8.floatToHalf(0x1p-25f));           // halfway 0 .. 2^-24: zero
        assertEquals(0x0001, Q8.floatToHalf(Math.nextUp(0x1p-25f)));
        assertEquals(0x0002, Q8.floatToHalf(0x3p-25f));           // halfway 1 .. 2 subnormal steps: 2
        assertEquals(0x0400, Q8.floatToHalf(Math.nextDown(0x1p-14f)));  // the last subnormal rounds up to normal
        assertEquals(0x8000, Q8.floatToHalf(-0x1p-30f));
        assertEquals(0x7c00, Q8.floatToHalf(Float.POSITIVE_INFINITY));
        assertEquals(0x7e00, Q8.floatToHalf(Float.NaN) & 0x7e00);
    }

    /** On JDK 20+, where Float.floatToFloat16 exists, the two agree on random floats of every range. */
    @Test
    void floatToHalfIsTheJdksWhereItHasOne() throws ReflectiveOperationException {
        Method jdk;
        try {
            jdk = Float.class.getMethod("floatToFloat16", float.class);
        } catch (NoSuchMethodException e) {
            return;  // JDK 17-19
        }
        Random r = new Random(3);
        for (int i = 0; i < 1_000_000; i++) {
            float f = Float.intBitsToFloat(r.nextInt());
            if (Float.isNaN(f)) continue;
            assertEquals((short) jdk.invoke(null, f) & 0xffff, Q8.floatToHalf(f), Float.toHexString(f));
        }
    }

    /**
     * stories260K with every matrix the converter quantizes (all but ffn_down, whose rows are 172
     * long) turned into Q8_0 in memory, as `invoke models.convert --type q8_0` writes it; greedy,
     * at one and two threads, the golden text of that file (tests/data/golden/, the reference's).
     */
    @Test
    void stories260KInQ8GreedyIsTheReferencesText() throws IOException {
        Model m = Model.read(modelFile("stories260K.bin"));
        Tokenizer tok = Tokenizer.read(modelFile("tok512.bin"), m.config.vocabSize);
        Weights w = m.weights;
        boolean shared = w.wcls == w.tokenEmbedding;
        w.tokenEmbedding = toQ8(w.tokenEmbedding);
        w.wcls = shared ? w.tokenEmbedding : toQ8(w.wcls);
        for (Matrix[] layers : new Matrix[][] {w.wq, w.wk, w.wv, w.wo, w.w1, w.w2, w.w3}) {
            for (int l = 0; l < layers.length; l++) layers[l] = toQ8(layers[l]);
        }
        String want = Fixtures.golden("stories260K.q8_0.greedy.txt");
        for (int threads : new int[] {1, 2}) {
            Transformer t = new Transformer(m, new Pool(threads), Kernels.pick());
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            Generation.generate(t, tok, new Sampler(0f, 0.9f, 1), new byte[0], 128, false, out);
            assertEquals(want, out.toString(StandardCharsets.UTF_8), "-j " + threads);
        }
    }

    /** m as Q8_0 blocks the converter's way, read back through a Loader; m itself when its rows are not whole blocks. */
    private Matrix toQ8(Matrix m) throws IOException {
        if (m.cols % Q8.BLOCK != 0) return m;
        float[] values = new float[m.rows * m.cols], row = new float[m.cols];
        for (int r = 0; r < m.rows; r++) {
            m.copyRow(r, row);
            System.arraycopy(row, 0, values, r * m.cols, m.cols);
        }
        byte[] q8 = Fixtures.q8(values);
        Path p = Files.write(Files.createTempFile(dir, "q8", ".bin"), q8);
        try (FileChannel ch = FileChannel.open(p)) {
            return new Matrix(new Loader(ch, true, 0, q8.length), 0, m.rows, m.cols, Q8.TYPE);
        }
    }
}
