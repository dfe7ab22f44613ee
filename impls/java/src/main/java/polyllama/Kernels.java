/*
 * The inner loops of the forward pass. SimdKernels (src/simd-common, the Vector API)
 * when this JVM has jdk.incubator.vector and the class was built for its API; ScalarKernels, plain
 * Java, otherwise. pick() chooses, warmUp() gets the choice JIT-compiled before the first token.
 */
package polyllama;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Arrays;

interface Kernels {
    /** out[outOff + r] = (row r of the (nRows, n) matrix at bb[byteOff ..]) . x[0 .. n), r < nRows. */
    void matvec(ByteBuffer bb, int byteOff, int nRows, float[] x, int n, float[] out, int outOff);

    /** The same for a matrix in w[off ..] (a float32 tensor read onto the heap), in the same order: the same bits. */
    void matvec(float[] w, int off, int nRows, float[] x, int n, float[] out, int outOff);

    /**
     * The same for a Q8_0 matrix (rows of n / 32 blocks at bb[byteOff ..]) and an activation
     * quantized by Q8.quantize (qx within +-127, dx): out = sum over blocks of float(isum) *
     * (fp32(dw) * dx), isum the block's dot product of the quants, exact in int32; the blocks
     * summed in order (ScalarKernels), or in SimdKernels each vector lane's part of isum scaled
     * and the lanes summed at the end: the same terms, float32 rounding apart.
     */
    void matvecQ8(ByteBuffer bb, int byteOff, int nRows, short[] qx, float[] dx, int n, float[] out, int outOff);

    /**
     * The same for an F16 matrix (rows of n little-endian binary16 values at bb[byteOff ..]):
     * each weight converted to float32 (exact), the products with x summed in float32 in the
     * kernel's order.
     */
    void matvecF16(ByteBuffer bb, int byteOff, int nRows, float[] x, int n, float[] out, int outOff);

    /** The same for a BF16 matrix. */
    void matvecBF16(ByteBuffer bb, int byteOff, int nRows, float[] x, int n, float[] out, int outOff);

    /**
     * The batched product OUT(T, nRows) = X(T, n) @ W(nRows, n)^T: for r < nRows and t < T,
     * out[outOff + t * outStride + r] = (row r of w, at wOff + r * wStride) . (row t of x, at
     * xOff + t * xStride), over n floats. Rows of W may be the checkpoint's float[] or a tile a
     * caller filled (Batch: copied from mapped bytes, or Q8_0 blocks dequantized). The caller
     * blocks the tokens so that a block of X rows stays in cache while W's rows stream.
     */
    void matmul(float[] w, int wOff, int wStride, int nRows, float[] x, int xOff, int xStride, int T, int n,
                float[] out, int outOff, int outStride);

    /** a[o + i] = exp(a[o + i] - max) for i < n; returns their sum (a softmax's numerators). */
    float expSum(float[] a, int o, int n, float max);

    /** a[ao ..] . b[bo ..] over n floats. */
    float dot(float[] a, int ao, float[] b, int bo, int n);

    /** y[yo ..] += s * x[xo ..] over n floats. */
    void axpy(float[] y, int yo, float s, float[] x, int xo, int n);

    String name();

    /**
     * SimdKernels when this JVM has jdk.incubator.vector and the class was built for its API
     * (a self-test catches a jar built on another JDK); ScalarKernels otherwise, or when the
     * system property polyllama.scalar is true.
     */
    static Kernels pick() {
        if (!Boolean.getBoolean("polyllama.scalar")
                && ModuleLayer.boot().findModule("jdk.incubator.vector").isPresent()) {
            try {
                Kernels k = (Kernels) Class.forName("polyllama.SimdKernels").getDeclaredConstructor().newInstance();
                if (agrees(k, new ScalarKernels())) return k;
            } catch (Throwable e) {
                // absent, or linked against another JDK's Vector API: fall through to plain Java
            }
        }
        return new ScalarKernels();
    }

    /**
     * Runs the kernels on a small in-cache matrix until the JIT has compiled them: interpreted,
     * the Vector API is two orders of magnitude slower than compiled code, so the first forward
     * pass would otherwise cost seconds on the 110M shape. A compiled round takes a few
     * microseconds; stop after 200 fast rounds in a row, or after 1.5 s on a starved machine.
     * onHeap: the float32 weights are float[]s and the Q8_0 ones read-only heap buffers
     * (Loader), and the matrices here are too, so that the JIT compiles the loads for the
     * classes the forward pass will pass.
     * q8: the model has Q8_0 matrices, so matvecQ8 (and the quantizer) are warmed up as well;
     * f16, bf16: the same for the 16-bit kernels.
     */
    static void warmUp(Kernels k, boolean onHeap, boolean q8) {
        warmUp(k, onHeap, q8, false, false);
    }

    static void warmUp(Kernels k, boolean onHeap, boolean q8, boolean f16, boolean bf16) {
        int rows = 64, n = 256;
        float[] w = new float[rows * n];  // the float32 matrix: the float[] itself on the heap, else mapped bytes
        for (int i = 0; i < w.length; i++) w[i] = (i % 13) * 1e-3f;
        ByteBuffer bb = onHeap ? null : buffer(4 * rows * n, false), qb = buffer((int) Q8.bytes(rows, n), onHeap);
        if (bb != null) bb.asFloatBuffer().put(w);
        float[] x = new float[n], out = new float[rows], xq = new float[n], qout = new float[rows];
        float[] dx = new float[n / Q8.BLOCK];
        short[] qx = new short[n];
        for (int i = 0; i < qb.capacity(); i++) qb.put(i, (byte) (i % 251 - 125));
        for (int at = 0; at < qb.capacity(); at += Q8.BLOCK_BYTES) qb.putShort(at, (short) 0x2000);  // d = 2^-7
        for (int i = 0; i < n; i++) xq[i] = (i % 17 - 8) * 0.1f;
        if (onHeap) qb = qb.asReadOnlyBuffer().order(ByteOrder.LITTLE_ENDIAN);
        ByteBuffer hb = buffer(2 * rows * n, onHeap);
        for (int i = 0; i < rows * n; i++) hb.putShort(2 * i, (short) (0x3000 + i % 997));  // small normal values in both types
        if (onHeap) hb = hb.asReadOnlyBuffer().order(ByteOrder.LITTLE_ENDIAN);
        long start = System.nanoTime();
        for (int fast = 0; fast < 200 && System.nanoTime() - start < 1_500_000_000L; ) {
            long t = System.nanoTime();
            if (onHeap) k.matvec(w, 0, rows, x, n, out, 0);
            else k.matvec(bb, 0, rows, x, n, out, 0);
            if (q8) {
                Q8.quantize(xq, n, qx, dx);
                k.matvecQ8(qb, 0, rows, qx, dx, n, qout, 0);
            }
            if (f16) k.matvecF16(hb, 0, rows, xq, n, qout, 0);
            if (bf16) k.matvecBF16(hb, 0, rows, xq, n, qout, 0);
            for (int i = 0; i < 64; i++) k.axpy(out, 0, k.dot(x, 0, out, 0, 64) * 1e-6f, x, 0, 64);
            fast = System.nanoTime() - t < 40_000 ? fast + 1 : 0;
        }
    }

    private static ByteBuffer buffer(int bytes, boolean onHeap) {
        return (onHeap ? ByteBuffer.allocate(bytes) : ByteBuffer.allocateDirect(bytes)).order(ByteOrder.LITTLE_ENDIAN);
    }

    /** The same results on a small odd-sized case: catches a SimdKernels linked against another JDK. */
    private static boolean agrees(Kernels a, Kernels b) {
        int rows = 5, n = 77;
        ByteBuffer bb = ByteBuffer.allocateDirect(4 * rows * n + 12).order(ByteOrder.LITTLE_ENDIAN);
        float[] x = new float[n];
        for (int i = 0; i < n; i++) x[i] = (i % 7) - 3;
        for (int i = 0; i < rows * n + 3; i++) bb.putFloat(4 * i, (i % 5) - 2);
        float[] ya = new float[rows + 1], yb = new float[rows + 1];
        a.matvec(bb, 12, rows, x, n, ya, 1);
        b.matvec(bb, 12, rows, x, n, yb, 1);
        float[] w = new float[rows * n + 3], fa = new float[rows], fb = new float[rows];
        bb.asFloatBuffer().get(w);
        a.matvec(w, 3, rows, x, n, fa, 0);
        b.matvec(w, 3, rows, x, n, fb, 0);
        float[] za = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19};
        float[] zb = za.clone();
        a.axpy(za, 1, 2f, x, 3, 17);
        b.axpy(zb, 1, 2f, x, 3, 17);
        // Q8_0: 3 rows of 2 blocks at an odd offset; the same sums within float32 rounding (close)
        int qn = 2 * Q8.BLOCK;
        ByteBuffer qb = ByteBuffer.allocateDirect((int) Q8.bytes(rows, qn) + 7).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < qb.capacity(); i++) qb.put(i, (byte) (i * 37 + 11));
        short[] qx = new short[qn];
        for (int i = 0; i < qn; i++) qx[i] = (short) ((i * 29) % 255 - 127);
        float[] dx = {0.5f, 0.25f}, qa = new float[rows], qbOut = new float[rows];
        a.matvecQ8(qb, 7, rows, qx, dx, qn, qa, 0);
        b.matvecQ8(qb, 7, rows, qx, dx, qn, qbOut, 0);
        // F16 and BF16: the same bits read as either type at an odd offset, a vector and a tail a
        // row; bit 14 clear keeps every value finite and below 2 (F16 subnormals included)
        int hn = 30;
        ByteBuffer h = ByteBuffer.allocateDirect(2 * rows * hn + 3).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < rows * hn; i++) h.putShort(3 + 2 * i, (short) ((i * 7919 + 11) & 0xbfff));
        float[] ha = new float[rows], hb = new float[rows], ba = new float[rows], bbOut = new float[rows];
        a.matvecF16(h, 3, rows, x, hn, ha, 0);
        b.matvecF16(h, 3, rows, x, hn, hb, 0);
        a.matvecBF16(h, 3, rows, x, hn, ba, 0);
        b.matvecBF16(h, 3, rows, x, hn, bbOut, 0);
        return Arrays.equals(ya, yb) && Arrays.equals(fa, fb) && Arrays.equals(za, zb) && a.dot(x, 2, x, 1, 70) == b.dot(x, 2, x, 1, 70)
                && close(qa, qbOut) && close(ha, hb) && close(ba, bbOut);
    }

    /** Within float32 rounding: SimdKernels' Q8_0 product scales lane partial sums, not whole blocks. */
    private static boolean close(float[] a, float[] b) {
        for (int i = 0; i < a.length; i++) {
            if (!(Math.abs(a[i] - b[i]) <= 1e-5f * (1 + Math.abs(b[i])))) return false;
        }
        return true;
    }
}
