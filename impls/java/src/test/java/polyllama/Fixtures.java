package polyllama;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.fail;

import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.function.Executable;

/** What the tests share: model files from POLYLLAMA_MODEL_PATH, a tiny model and tokenizer written on the fly. */
final class Fixtures {
    private Fixtures() {}

    // the tiny model: one layer, a 260-token vocabulary (the 259 specials and byte tokens, then " ")
    static final int DIM = 8, HIDDEN = 16, LAYERS = 1, HEADS = 2, KV_HEADS = 2, VOCAB = 260, SEQ = 8;

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

    /** A text of tests/data/golden/ (written by the reference): the whole stdout of a run. */
    static String golden(String name) throws IOException {
        return Files.readString(Path.of("..", "..", "tests", "data", "golden", name), StandardCharsets.UTF_8);
    }

    static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    /** The exit code of the Fail that running this throws. */
    static int exitCode(Executable e) {
        return assertThrows(Fail.class, e).code;
    }

    static void assertBadFile(Executable e) {
        assertEquals(Fail.EXIT_BAD_FILE, exitCode(e));
    }

    // ------------------------------------------------------------------------------ tokenizer

    /** llama2.c's pieces for the tiny vocabulary: <unk>, BOS, EOS, <0x00>..<0xFF>, " ". */
    static byte[][] pieces() {
        byte[][] p = new byte[VOCAB][];
        p[0] = utf8("<unk>");
        p[1] = utf8("\n<s>\n");
        p[2] = utf8("\n</s>\n");
        for (int b = 0; b < 256; b++) p[3 + b] = utf8(String.format("<0x%02X>", b));
        p[259] = utf8(" ");
        return p;
    }

    static float[] scores() {
        float[] s = new float[VOCAB];
        s[259] = -1f;
        return s;
    }

    /** tokenizer.bin: max_token_length, then (score, length, bytes) per token. */
    static Path writeTokenizer(Path dir, String name, byte[][] pieces, float[] scores) throws IOException {
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        out.write(le(4).putInt(16).array());
        for (int i = 0; i < pieces.length; i++) {
            out.write(le(8).putFloat(scores[i]).putInt(pieces[i].length).array());
            out.write(pieces[i]);
        }
        return Files.write(dir.resolve(name), out.toByteArray());
    }

    static ByteBuffer le(int n) {
        return ByteBuffer.allocate(n).order(ByteOrder.LITTLE_ENDIAN);
    }

    // -------------------------------------------------------------------------------- weights

    /** n distinct small floats, different for each seed. */
    static float[] tensor(int seed, int n) {
        float[] out = new float[n];
        for (int i = 0; i < n; i++) out[i] = ((i * 7 + seed * 13) % 29 - 14) * 0.01f;
        return out;
    }

    static byte[] floats(float[] v) {
        ByteBuffer bb = le(4 * v.length);
        for (float f : v) bb.putFloat(f);
        return bb.array();
    }

    /**
     * v (rows of a multiple of 32) as Q8_0 blocks the way the converter writes them, llama.cpp's
     * quantize_row_q8_0_ref: d = amax / 127, q = round-half-away-from-zero(v * (1 / d)) (in double,
     * where |v| + 0.5 is exact, as C's roundf), d stored as fp16.
     */
    static byte[] q8(float[] v) {
        ByteBuffer bb = le(v.length / Q8.BLOCK * Q8.BLOCK_BYTES);
        for (int o = 0; o < v.length; o += Q8.BLOCK) {
            float amax = 0;
            for (int i = 0; i < Q8.BLOCK; i++) amax = Math.max(amax, Math.abs(v[o + i]));
            float d = amax / 127f, id = d != 0 ? 1f / d : 0f;
            bb.putShort((short) Q8.floatToHalf(d));
            for (int i = 0; i < Q8.BLOCK; i++) {
                float x = v[o + i] * id;
                bb.put((byte) Math.copySign(Math.floor(Math.abs((double) x) + 0.5), x));
            }
        }
        return bb.array();
    }

    /** v as F16 (Matrix.F16) or BF16 (Matrix.BF16) values, rounded to nearest even as converters write them. */
    static byte[] halfs(float[] v, int type) {
        ByteBuffer bb = le(2 * v.length);
        for (float f : v) bb.putShort((short) (type == Matrix.F16 ? Q8.floatToHalf(f) : Half.toBF16(f)));
        return bb.array();
    }

    /** Q8_0 blocks back to floats: fp32(d) * q. */
    static float[] dequantize(byte[] q8) {
        ByteBuffer bb = ByteBuffer.wrap(q8).order(ByteOrder.LITTLE_ENDIAN);
        float[] out = new float[q8.length / Q8.BLOCK_BYTES * Q8.BLOCK];
        for (int b = 0; b < out.length / Q8.BLOCK; b++) {
            float d = Q8.halfToFloat(bb.getShort(b * Q8.BLOCK_BYTES) & 0xffff);
            for (int i = 0; i < Q8.BLOCK; i++) out[b * Q8.BLOCK + i] = d * bb.get(b * Q8.BLOCK_BYTES + 2 + i);
        }
        return out;
    }
}
