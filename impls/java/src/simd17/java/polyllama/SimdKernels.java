/*
 * The Vector API kernels for JDK 17-18, whose jdk.incubator.vector loads straight from a
 * ByteBuffer (FloatVector.fromByteBuffer). JDK 22+ builds src/simd22 instead, which loads from a
 * MemorySegment; Kernels.pick() falls back to ScalarKernels when neither fits the running JVM.
 */
package polyllama;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

final class SimdKernels implements Kernels {
    // static final: the JIT only intrinsifies the Vector API when the species is a constant
    static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
    static final int L = S.length();
    static final ByteOrder LE = ByteOrder.LITTLE_ENDIAN;

    /**
     * Two rows per pass: each x vector is loaded once for both, and four independent FMA chains
     * keep enough loads in flight to saturate memory bandwidth on one core.
     */
    @Override
    public void matvec(ByteBuffer bb, int byteOff, int nRows, float[] x, int n, float[] out, int outOff) {
        int rowBytes = 4 * n;
        int r = 0;
        for (; r + 1 < nRows; r += 2) {
            int a = byteOff + r * rowBytes, b = a + rowBytes;
            FloatVector a0 = FloatVector.zero(S), a1 = a0, b0 = a0, b1 = a0;
            int i = 0;
            for (; i + 2 * L <= n; i += 2 * L) {
                FloatVector x0 = FloatVector.fromArray(S, x, i), x1 = FloatVector.fromArray(S, x, i + L);
                a0 = FloatVector.fromByteBuffer(S, bb, a + 4 * i, LE).fma(x0, a0);
                a1 = FloatVector.fromByteBuffer(S, bb, a + 4 * (i + L), LE).fma(x1, a1);
                b0 = FloatVector.fromByteBuffer(S, bb, b + 4 * i, LE).fma(x0, b0);
                b1 = FloatVector.fromByteBuffer(S, bb, b + 4 * (i + L), LE).fma(x1, b1);
            }
            for (; i + L <= n; i += L) {
                FloatVector x0 = FloatVector.fromArray(S, x, i);
                a0 = FloatVector.fromByteBuffer(S, bb, a + 4 * i, LE).fma(x0, a0);
                b0 = FloatVector.fromByteBuffer(S, bb, b + 4 * i, LE).fma(x0, b0);
            }
            float sa = a0.add(a1).reduceLanes(VectorOperators.ADD), sb = b0.add(b1).reduceLanes(VectorOperators.ADD);
            for (; i < n; i++) {
                sa += bb.getFloat(a + 4 * i) * x[i];
                sb += bb.getFloat(b + 4 * i) * x[i];
            }
            out[outOff + r] = sa;
            out[outOff + r + 1] = sb;
        }
        if (r < nRows) {
            int a = byteOff + r * rowBytes;
            FloatVector a0 = FloatVector.zero(S);
            int i = 0;
            for (; i + L <= n; i += L) a0 = FloatVector.fromByteBuffer(S, bb, a + 4 * i, LE).fma(FloatVector.fromArray(S, x, i), a0);
            float sa = a0.reduceLanes(VectorOperators.ADD);
            for (; i < n; i++) sa += bb.getFloat(a + 4 * i) * x[i];
            out[outOff + r] = sa;
        }
    }

    @Override
    public float dot(float[] a, int ao, float[] b, int bo, int n) {
        FloatVector acc = FloatVector.zero(S);
        int i = 0;
        for (; i + L <= n; i += L) acc = FloatVector.fromArray(S, a, ao + i).fma(FloatVector.fromArray(S, b, bo + i), acc);
        float s = acc.reduceLanes(VectorOperators.ADD);
        for (; i < n; i++) s += a[ao + i] * b[bo + i];
        return s;
    }

    @Override
    public void axpy(float[] y, int yo, float s, float[] x, int xo, int n) {
        FloatVector sv = FloatVector.broadcast(S, s);
        int i = 0;
        for (; i + L <= n; i += L) {
            FloatVector.fromArray(S, x, xo + i).fma(sv, FloatVector.fromArray(S, y, yo + i)).intoArray(y, yo + i);
        }
        for (; i < n; i++) y[yo + i] += s * x[xo + i];
    }

    @Override
    public String name() {
        return "vector-api " + S;
    }
}
