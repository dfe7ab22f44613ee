package polyllama;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Random;
import org.junit.jupiter.api.Test;

/**
 * F16 and BF16 (Half, and the kernels that read them): the conversions (the vector one for every
 * pattern), and the one-position and batched products against a plain loop in double, on odd
 * sizes, with the float32 activation as it is (contract section 4: not rounded to 16 bits).
 */
class HalfTest {
    // ------------------------------------------------------------------------- conversions

    @Test
    void convertsF16IncludingSubnormalsInfinitiesAndNaN() {
        assertEquals(0x1p-24f, Half.f16(0x0001));                 // the smallest subnormal
        assertEquals(1023 * 0x1p-24f, Half.f16(0x03ff));          // the largest subnormal
        assertEquals(0x1p-14f, Half.f16(0x0400));                 // the smallest normal
        assertEquals(-0x1p-24f, Half.f16(0x8001));
        assertEquals(1f, Half.f16(0x3c00));
        assertEquals(65504f, Half.f16(0x7bff));
        assertEquals(Float.POSITIVE_INFINITY, Half.f16(0x7c00));
        assertEquals(Float.NEGATIVE_INFINITY, Half.f16(0xfc00));
        assertTrue(Float.isNaN(Half.f16(0x7e00)) && Float.isNaN(Half.f16(0x7c01)) && Float.isNaN(Half.f16(0xffff)));
        assertEquals(Float.floatToRawIntBits(-0f), Float.floatToRawIntBits(Half.f16(0x8000)));
    }

    @Test
    void convertsBF16IncludingNaN() {
        assertEquals(1f, Half.bf16(0x3f80));
        assertEquals(-2f, Half.bf16(0xc000));
        assertEquals(Float.MIN_NORMAL, Half.bf16(0x0080));
        assertEquals(Float.POSITIVE_INFINITY, Half.bf16(0x7f80));
        assertTrue(Float.isNaN(Half.bf16(0x7fc0)) && Float.isNaN(Half.bf16(0x7f81)) && Float.isNaN(Half.bf16(0xffc1)));
    }

    /** The Vector API conversion (in registers) against the table, for all 65536 patterns of each type. */
    @Test
    void vectorConversionMatchesTheTableForEveryPattern() {
        int L = SimdKernels.L;
        int[] bits = new int[1 << 16];
        for (int i = 0; i < bits.length; i++) bits[i] = (short) i;  // sign-extended, as the kernel's S2I widening leaves them
        float[] f16 = new float[L], bf16 = new float[L];
        for (int i = 0; i < bits.length; i += L) {
            var v = jdk.incubator.vector.IntVector.fromArray(SimdKernels.HI, bits, i);
            SimdKernels.halfToFloats(v).intoArray(f16, 0);
            SimdKernels.bf16ToFloats(v).intoArray(bf16, 0);
            for (int j = 0; j < L; j++) {
                int h = (i + j) & 0xffff;
                assertSame(Half.f16(h), f16[j], "F16 " + Integer.toHexString(h));
                assertSame(Half.bf16(h), bf16[j], "BF16 " + Integer.toHexString(h));
            }
        }
    }

    private static void assertSame(float want, float got, String what) {
        if (Float.isNaN(want)) assertTrue(Float.isNaN(got), what);
        else assertEquals(Float.floatToRawIntBits(want), Float.floatToRawIntBits(got), what);
    }

    // ---------------------------------------------- the converters' rounding (the tests' files)

    @Test
    void writesBF16ToNearestEvenAndKeepsNaN() {
        assertEquals(0x3f80, Half.toBF16(1 + 0x1p-8f));                        // a tie, down to even
        assertEquals(0x3f82, Half.toBF16(1 + 3 * 0x1p-8f));                    // a tie, up to even
        assertEquals(0x3f81, Half.toBF16(1 + 0x1p-8f + 0x1p-20f));             // above the tie
        assertEquals(0x7f80, Half.toBF16(Float.MAX_VALUE));                    // rounds up to infinity
        assertTrue(Float.isNaN(Half.bf16(Half.toBF16(Float.intBitsToFloat(0x7fffffff)))));  // the carry would make it infinite
        assertTrue(Float.isNaN(Half.bf16(Half.toBF16(Float.NaN))));
    }

    // ------------------------------------------------------------------------------ products

    static final int[] DIMS = {64, 96, 172, 288};
    static final int ROWS = 13;  // not a multiple of the four-row pass, nor of Batch.GROUP

    /** rows x n 16-bit weights of type at byte offset `at` (direct or heap), spread over many exponents, some subnormal. */
    static ByteBuffer weights(int rows, int n, int type, int at, boolean direct, long seed) {
        Random rnd = new Random(seed);
        ByteBuffer bb = (direct ? ByteBuffer.allocateDirect(at + 2 * rows * n) : ByteBuffer.allocate(at + 2 * rows * n))
                .order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < rows * n; i++) {
            float v = (float) (rnd.nextGaussian() * 0.05);
            if (i % 17 == 3) v = (float) (rnd.nextGaussian() * 3e-6);  // F16 subnormals
            bb.putShort(at + 2 * i, (short) (type == Matrix.F16 ? Q8.floatToHalf(v) : Half.toBF16(v)));
        }
        return bb;
    }

    /** An activation with some values far from 1, and some that no 16-bit type holds (they stay as they are). */
    static float[] activation(int n, long seed) {
        Random rnd = new Random(seed);
        float[] x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float) (rnd.nextGaussian() * (i % 5 == 0 ? 40 : 1));
        x[1] = 1 + 0x1p-11f;
        x[2] = 1e5f;
        return x;
    }

    /** The plain loop: each product and the sum in double. */
    static double[][] plain(ByteBuffer bb, int at, int rows, int n, int type, float[] x) {
        double[][] out = new double[2][rows];  // the sums, and the sums of |terms| that bound float32's error
        for (int r = 0; r < rows; r++) {
            for (int i = 0; i < n; i++) {
                double term = (double) Half.get(bb, at + 2 * (r * n + i), type == Matrix.BF16) * x[i];
                out[0][r] += term;
                out[1][r] += Math.abs(term);
            }
        }
        return out;
    }

    /** Within float32 summation error: a few units of 2^-24 of the terms' magnitude (n of them at most). */
    static void close(double[][] want, float[] got, int off, String what) {
        for (int r = 0; r < want[0].length; r++) {
            assertTrue(Math.abs(got[off + r] - want[0][r]) <= 1e-5 * want[1][r] + 1e-30,
                    what + " row " + r + ": " + got[off + r] + " vs " + want[0][r]);
        }
    }

    @Test
    void onePositionProductsMatchAPlainLoop() {
        for (Kernels k : new Kernels[] {new SimdKernels(), new ScalarKernels()}) {
            for (int type : new int[] {Matrix.F16, Matrix.BF16}) {
                for (int n : DIMS) {
                    for (boolean direct : new boolean[] {true, false}) {
                        int at = 6;  // an offset that is no vector's alignment
                        ByteBuffer bb = weights(ROWS, n, type, at, direct, n + type);
                        if (!direct) bb = bb.asReadOnlyBuffer().order(ByteOrder.LITTLE_ENDIAN);
                        float[] x = activation(n, n), xr = x, out = new float[ROWS + 1];
                        if (type == Matrix.F16) k.matvecF16(bb, at, ROWS, xr, n, out, 1);
                        else k.matvecBF16(bb, at, ROWS, xr, n, out, 1);
                        String what = k.name() + " type " + type + " n " + n + (direct ? " direct" : " heap");
                        close(plain(bb, at, ROWS, n, type, x), out, 1, what);
                        // a row's sum does not depend on how the rows are split (the pool's chunks)
                        float[] one = new float[1];
                        for (int r = 0; r < ROWS; r++) {
                            if (type == Matrix.F16) k.matvecF16(bb, at + 2 * r * n, 1, xr, n, one, 0);
                            else k.matvecBF16(bb, at + 2 * r * n, 1, xr, n, one, 0);
                            assertEquals(out[1 + r], one[0], what + " row " + r + " alone");
                        }
                    }
                }
            }
        }
    }

    @Test
    void batchedProductsMatchAPlainLoop() {
        for (Kernels k : new Kernels[] {new SimdKernels(), new ScalarKernels()}) {
            for (int type : new int[] {Matrix.F16, Matrix.BF16}) {
                for (int n : DIMS) {
                    ByteBuffer bb = weights(ROWS, n, type, 0, true, 3 * n + type);
                    float[] tile = new float[ROWS * n];
                    Batch.fillTile(bb, 0, ROWS, n, type, tile);
                    for (int T : new int[] {1, 7, 33}) {
                        float[] x = new float[T * n];
                        for (int t = 0; t < T; t++) System.arraycopy(activation(n, 100 * t + n), 0, x, t * n, n);
                        float[] xr = x, out = new float[T * ROWS];
                        k.matmul(tile, 0, n, ROWS, xr, 0, n, T, n, out, 0, ROWS);
                        for (int t = 0; t < T; t++) {
                            float[] row = new float[n], got = new float[ROWS];
                            System.arraycopy(x, t * n, row, 0, n);
                            System.arraycopy(out, t * ROWS, got, 0, ROWS);
                            close(plain(bb, 0, ROWS, n, type, row), got, 0, k.name() + " batched type " + type + " n " + n + " T " + T + " t " + t);
                        }
                    }
                }
            }
        }
    }
}
