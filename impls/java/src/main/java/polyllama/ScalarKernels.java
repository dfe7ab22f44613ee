/* Plain Java kernels: the fallback where the Vector API is missing, and what SimdKernels is checked against. */
package polyllama;

import java.nio.ByteBuffer;

/** Plain Java: the portable fallback, four accumulators so the JIT can overlap the loads. */
final class ScalarKernels implements Kernels {
    @Override
    public void matvec(ByteBuffer bb, int byteOff, int nRows, float[] x, int n, float[] out, int outOff) {
        for (int r = 0; r < nRows; r++) {
            int base = byteOff + r * n * 4;
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            int i = 0;
            for (; i + 3 < n; i += 4) {
                s0 += bb.getFloat(base + 4 * i) * x[i];
                s1 += bb.getFloat(base + 4 * i + 4) * x[i + 1];
                s2 += bb.getFloat(base + 4 * i + 8) * x[i + 2];
                s3 += bb.getFloat(base + 4 * i + 12) * x[i + 3];
            }
            for (; i < n; i++) s0 += bb.getFloat(base + 4 * i) * x[i];
            out[outOff + r] = (s0 + s1) + (s2 + s3);
        }
    }

    @Override
    public void matvec(float[] w, int off, int nRows, float[] x, int n, float[] out, int outOff) {
        for (int r = 0; r < nRows; r++) {
            int base = off + r * n;
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            int i = 0;
            for (; i + 3 < n; i += 4) {
                s0 += w[base + i] * x[i];
                s1 += w[base + i + 1] * x[i + 1];
                s2 += w[base + i + 2] * x[i + 2];
                s3 += w[base + i + 3] * x[i + 3];
            }
            for (; i < n; i++) s0 += w[base + i] * x[i];
            out[outOff + r] = (s0 + s1) + (s2 + s3);
        }
    }

    /** Block by block: the int products summed exactly in an int, then scaled, as the contract writes it. */
    @Override
    public void matvecQ8(ByteBuffer bb, int byteOff, int nRows, short[] qx, float[] dx, int n, float[] out, int outOff) {
        int blocks = n / Q8.BLOCK, rowBytes = blocks * Q8.BLOCK_BYTES;
        for (int r = 0; r < nRows; r++) {
            int at = byteOff + r * rowBytes;
            float sum = 0;
            for (int b = 0; b < blocks; b++, at += Q8.BLOCK_BYTES) {
                int isum = 0, xo = b * Q8.BLOCK;
                for (int i = 0; i < Q8.BLOCK; i++) isum += bb.get(at + 2 + i) * qx[xo + i];
                sum += isum * (Q8.scale(bb, at) * dx[b]);
            }
            out[outOff + r] = sum;
        }
    }

    @Override
    public void matvecF16(ByteBuffer bb, int byteOff, int nRows, float[] x, int n, float[] out, int outOff) {
        matvecHalf(bb, byteOff, nRows, false, x, n, out, outOff);
    }

    @Override
    public void matvecBF16(ByteBuffer bb, int byteOff, int nRows, float[] x, int n, float[] out, int outOff) {
        matvecHalf(bb, byteOff, nRows, true, x, n, out, outOff);
    }

    /** matvec's four accumulators over 16-bit weights, each converted (exactly) as it is read. */
    private static void matvecHalf(ByteBuffer bb, int byteOff, int nRows, boolean bf16, float[] x, int n, float[] out, int outOff) {
        for (int r = 0; r < nRows; r++) {
            int base = byteOff + r * n * 2;
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
            int i = 0;
            for (; i + 3 < n; i += 4) {
                s0 += Half.get(bb, base + 2 * i, bf16) * x[i];
                s1 += Half.get(bb, base + 2 * i + 2, bf16) * x[i + 1];
                s2 += Half.get(bb, base + 2 * i + 4, bf16) * x[i + 2];
                s3 += Half.get(bb, base + 2 * i + 6, bf16) * x[i + 3];
            }
            for (; i < n; i++) s0 += Half.get(bb, base + 2 * i, bf16) * x[i];
            out[outOff + r] = (s0 + s1) + (s2 + s3);
        }
    }

    /** Row by row, token by token: each element is matvec's four-accumulator sum. */
    @Override
    public void matmul(float[] w, int wOff, int wStride, int nRows, float[] x, int xOff, int xStride, int T, int n,
                       float[] out, int outOff, int outStride) {
        for (int t = 0; t < T; t++) {
            int xo = xOff + t * xStride;
            for (int r = 0; r < nRows; r++) {
                int base = wOff + r * wStride;
                float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                int i = 0;
                for (; i + 3 < n; i += 4) {
                    s0 += w[base + i] * x[xo + i];
                    s1 += w[base + i + 1] * x[xo + i + 1];
                    s2 += w[base + i + 2] * x[xo + i + 2];
                    s3 += w[base + i + 3] * x[xo + i + 3];
                }
                for (; i < n; i++) s0 += w[base + i] * x[xo + i];
                out[outOff + t * outStride + r] = (s0 + s1) + (s2 + s3);
            }
        }
    }

    @Override
    public float expSum(float[] a, int o, int n, float max) {
        float sum = 0;
        for (int i = 0; i < n; i++) {
            a[o + i] = (float) Math.exp(a[o + i] - max);
            sum += a[o + i];
        }
        return sum;
    }

    @Override
    public float dot(float[] a, int ao, float[] b, int bo, int n) {
        float s = 0;
        for (int i = 0; i < n; i++) s += a[ao + i] * b[bo + i];
        return s;
    }

    @Override
    public void axpy(float[] y, int yo, float s, float[] x, int xo, int n) {
        for (int i = 0; i < n; i++) y[yo + i] += s * x[xo + i];
    }

    @Override
    public String name() {
        return "scalar";
    }
}
