package polyllama;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;
import java.util.Random;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

/** Kernels: the Vector API is picked where it can be, and agrees with plain Java. */
class KernelsTest {
    @Test
    void picksTheVectorApiWhenTheModuleIsThere() {
        Assumptions.assumeTrue(ModuleLayer.boot().findModule("jdk.incubator.vector").isPresent());
        int feature = Runtime.version().feature();
        Assumptions.assumeTrue(feature <= 18 || feature >= 22, "no SimdKernels for JDK 19-21");
        assertTrue(Kernels.pick().name().startsWith("vector-api"), Kernels.pick().name());
    }

    @Test
    void simdKernelsAgreeWithScalar() {
        Kernels simd = Kernels.pick(), scalar = new ScalarKernels();
        int rows = 7, n = 300;
        ByteBuffer bb = ByteBuffer.allocateDirect(4 * rows * n).order(ByteOrder.LITTLE_ENDIAN);
        float[] x = new float[n];
        Random r = new Random(1);
        for (int i = 0; i < n; i++) x[i] = (float) r.nextGaussian();
        for (int i = 0; i < rows * n; i++) bb.putFloat(4 * i, (float) r.nextGaussian());
        float[] a = new float[rows], b = new float[rows];
        simd.matvec(bb, 0, rows, x, n, a, 0);
        scalar.matvec(bb, 0, rows, x, n, b, 0);
        for (int i = 0; i < rows; i++) assertEquals(b[i], a[i], 1e-4f * (1 + Math.abs(b[i])));
        // the weights as Loader reads them onto the heap: a read-only view of a slice of an array
        ByteBuffer heap = ByteBuffer.allocate(bb.capacity() + 68).slice(68, bb.capacity()).put(bb.duplicate())
                .clear().asReadOnlyBuffer().order(ByteOrder.LITTLE_ENDIAN);
        float[] h = new float[rows];
        simd.matvec(heap, 0, rows, x, n, h, 0);
        assertArrayEquals(a, h);
        scalar.matvec(heap, 0, rows, x, n, h, 0);
        assertArrayEquals(b, h);
        assertEquals(scalar.dot(x, 1, x, 2, 250), simd.dot(x, 1, x, 2, 250), 1e-3f);
    }

    /**
     * A row's float32 product has the same bits whichever pass computes it (the four-row pass or
     * the rows left over), so the logits do not depend on how the pool splits the rows.
     */
    @Test
    void matvecRowsDoNotDependOnTheSplit() {
        Kernels simd = Kernels.pick();
        int rows = 7, n = 300;  // 300: two-vector steps, a one-vector step and a scalar tail at 16 lanes
        ByteBuffer bb = ByteBuffer.allocateDirect(4 * rows * n).order(ByteOrder.LITTLE_ENDIAN);
        float[] x = new float[n];
        Random r = new Random(3);
        for (int i = 0; i < n; i++) x[i] = (float) r.nextGaussian();
        for (int i = 0; i < rows * n; i++) bb.putFloat(4 * i, (float) r.nextGaussian());
        float[] whole = new float[rows];
        simd.matvec(bb, 0, rows, x, n, whole, 0);
        for (int row = 0; row < rows; row++) {
            float[] alone = new float[1];
            simd.matvec(bb, 4 * row * n, 1, x, n, alone, 0);
            assertEquals(Float.floatToIntBits(whole[row]), Float.floatToIntBits(alone[0]), "row " + row);
        }
    }

    /** The float[] kernels (weights read onto the heap) give the ByteBuffer kernels' bits, split any way. */
    @Test
    void floatArrayMatvecIsTheBufferMatvec() {
        int rows = 7, n = 300, off = 5;
        Random r = new Random(4);
        float[] w = new float[off + rows * n], x = new float[n];
        for (int i = 0; i < w.length; i++) w[i] = (float) r.nextGaussian();
        for (int i = 0; i < n; i++) x[i] = (float) r.nextGaussian();
        ByteBuffer bb = ByteBuffer.allocate(4 * w.length).order(ByteOrder.LITTLE_ENDIAN);
        bb.asFloatBuffer().put(w);
        for (Kernels k : new Kernels[] {Kernels.pick(), new ScalarKernels()}) {
            float[] want = new float[rows], got = new float[rows + 2];
            k.matvec(bb, 4 * off, rows, x, n, want, 0);
            k.matvec(w, off, rows, x, n, got, 2);
            assertArrayEquals(want, Arrays.copyOfRange(got, 2, rows + 2), k.name());
            float[] split = new float[rows];
            k.matvec(w, off, 2, x, n, split, 0);                 // rows 0-1, then 2-6
            k.matvec(w, off + 2 * n, rows - 2, x, n, split, 2);
            assertArrayEquals(want, split, k.name() + ", split 2 + 5");
        }
    }

    /**
     * The Q8_0 product, SIMD and scalar, against the contract's formula written out: each block's
     * isum exact (in a long here), times fp32(dw) * dx in float, the blocks added in order. Rows
     * odd in number (the SIMD kernel's last row is on its own), a zero scale, the int16 extreme
     * (all quants -128 against -127: 32 * 16256), and the activation's zero and tie blocks.
     */
    @Test
    void q8MatvecIsTheContractsFormula() {
        int rows = 7, blocks = 5, n = blocks * Q8.BLOCK, rowBytes = blocks * Q8.BLOCK_BYTES;
        Random r = new Random(2);
        byte[] w = new byte[rows * rowBytes];
        r.nextBytes(w);
        ByteBuffer wb = ByteBuffer.wrap(w).order(ByteOrder.LITTLE_ENDIAN);
        for (int row = 0; row < rows; row++) {
            for (int b = 0; b < blocks; b++) {
                float d = row == 2 && b == 1 ? 0f : (float) Math.abs(r.nextGaussian() * 0.01);
                wb.putShort(row * rowBytes + b * Q8.BLOCK_BYTES, (short) Q8.floatToHalf(d));
            }
        }
        for (int i = 0; i < Q8.BLOCK; i++) w[3 * Q8.BLOCK_BYTES + 2 + i] = -128;  // row 0, block 3

        float[] x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (float) r.nextGaussian();
        Arrays.fill(x, Q8.BLOCK, 2 * Q8.BLOCK, 0f);                  // block 1: amax = 0
        for (int i = 0; i < Q8.BLOCK - 1; i++) x[2 * Q8.BLOCK + i] = i - 16 + 0.5f;  // block 2: exact ties,
        x[3 * Q8.BLOCK - 1] = 127f;                                    // since amax = 127 makes 127 / amax 1
        Arrays.fill(x, 3 * Q8.BLOCK, 4 * Q8.BLOCK, -1f);               // block 3: all -127
        short[] qx = new short[n];
        float[] dx = new float[blocks];
        Q8.quantize(x, n, qx, dx);
        assertEquals(0f, dx[1]);
        for (int i = 0; i < Q8.BLOCK; i++) assertEquals(0, qx[Q8.BLOCK + i]);
        assertEquals(1f, dx[2]);
        for (int i = 0; i < Q8.BLOCK - 1; i++) {
            int k = i - 16;  // x = k + 0.5: to the even one of k and k + 1
            assertEquals(Math.floorMod(k, 2) == 0 ? k : k + 1, qx[2 * Q8.BLOCK + i], "tie " + (k + 0.5));
        }
        for (int i = 0; i < Q8.BLOCK; i++) assertEquals(-127, qx[3 * Q8.BLOCK + i]);

        float[] want = new float[rows];
        for (int row = 0; row < rows; row++) {
            float sum = 0;
            for (int b = 0; b < blocks; b++) {
                int at = row * rowBytes + b * Q8.BLOCK_BYTES;
                long isum = 0;
                for (int i = 0; i < Q8.BLOCK; i++) isum += w[at + 2 + i] * qx[b * Q8.BLOCK + i];
                sum += (float) isum * (Q8.halfToFloat(wb.getShort(at) & 0xffff) * dx[b]);
            }
            want[row] = sum;
        }
        ByteBuffer direct = ByteBuffer.allocateDirect(w.length + 3).order(ByteOrder.LITTLE_ENDIAN);
        direct.put(3, w, 0, w.length);
        ByteBuffer heap = ByteBuffer.allocate(w.length + 41).slice(5, w.length + 3).put(3, w, 0, w.length)
                .asReadOnlyBuffer().order(ByteOrder.LITTLE_ENDIAN);   // as Loader hands them out
        for (Kernels k : new Kernels[] {Kernels.pick(), new ScalarKernels()}) {
            for (ByteBuffer bb : new ByteBuffer[] {direct, heap}) {
                float[] got = new float[rows + 2];
                k.matvecQ8(bb, 3, rows, qx, dx, n, got, 1);
                assertQ8(k, want, Arrays.copyOfRange(got, 1, rows + 1));
                k.matvecQ8(bb, 3 + rowBytes, 2, qx, dx, n, got, 0);   // rows 1 and 2 alone
                assertQ8(k, Arrays.copyOfRange(want, 1, 3), Arrays.copyOf(got, 2));
            }
        }
    }

    /**
     * ScalarKernels: the formula's bits. SimdKernels scales each lane's partial sum of a block
     * (exact integers) and adds the lanes at the end of the row, as llama.cpp's x86 kernel does:
     * the same terms in another order, so within float32 rounding of the sum's magnitude.
     */
    private static void assertQ8(Kernels k, float[] want, float[] got) {
        if (k instanceof ScalarKernels) {
            assertArrayEquals(want, got, k.name());
            return;
        }
        for (int i = 0; i < want.length; i++) assertEquals(want[i], got[i], 1e-5f * (1 + Math.abs(want[i])), k.name() + " row " + i);
    }
}
