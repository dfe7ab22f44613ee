/*
 * The float32 matvec over a float[] (the weights Loader reads onto the heap), for SimdKernels on
 * JDK 17-18 and 22+ alike: FloatVector.fromArray is the same API in both. The loop is SimdKernels.matvec's over a ByteBuffer, row for row and sum for sum,
 * so the two give the same bits (KernelsTest); why four rows and why a float[]: README,
 * "Performance levers".
 */
package polyllama;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

final class ArrayMatvec {
    private ArrayMatvec() {}

    // static final: the JIT only intrinsifies the Vector API when the species is a constant
    static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
    static final int L = S.length();

    /** out[outOff + r] = (row r of the (nRows, n) matrix at w[off ..]) . x, r < nRows. */
    static void matvec(float[] w, int off, int nRows, float[] x, int n, float[] out, int outOff) {
        int r = 0;
        for (; r + 3 < nRows; r += 4) {
            int a = off + r * n, b = a + n, c = b + n, d = c + n;
            FloatVector a0 = FloatVector.zero(S), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0, d0 = a0, d1 = a0;
            int i = 0;
            for (; i + 2 * L <= n; i += 2 * L) {
                FloatVector x0 = FloatVector.fromArray(S, x, i), x1 = FloatVector.fromArray(S, x, i + L);
                a0 = FloatVector.fromArray(S, w, a + i).fma(x0, a0);
                b0 = FloatVector.fromArray(S, w, b + i).fma(x0, b0);
                c0 = FloatVector.fromArray(S, w, c + i).fma(x0, c0);
                d0 = FloatVector.fromArray(S, w, d + i).fma(x0, d0);
                a1 = FloatVector.fromArray(S, w, a + i + L).fma(x1, a1);
                b1 = FloatVector.fromArray(S, w, b + i + L).fma(x1, b1);
                c1 = FloatVector.fromArray(S, w, c + i + L).fma(x1, c1);
                d1 = FloatVector.fromArray(S, w, d + i + L).fma(x1, d1);
            }
            for (; i + L <= n; i += L) {
                FloatVector x0 = FloatVector.fromArray(S, x, i);
                a0 = FloatVector.fromArray(S, w, a + i).fma(x0, a0);
                b0 = FloatVector.fromArray(S, w, b + i).fma(x0, b0);
                c0 = FloatVector.fromArray(S, w, c + i).fma(x0, c0);
                d0 = FloatVector.fromArray(S, w, d + i).fma(x0, d0);
            }
            float sa = a0.add(a1).reduceLanes(VectorOperators.ADD), sb = b0.add(b1).reduceLanes(VectorOperators.ADD);
            float sc = c0.add(c1).reduceLanes(VectorOperators.ADD), sd = d0.add(d1).reduceLanes(VectorOperators.ADD);
            for (; i < n; i++) {
                sa += w[a + i] * x[i];
                sb += w[b + i] * x[i];
                sc += w[c + i] * x[i];
                sd += w[d + i] * x[i];
            }
            out[outOff + r] = sa;
            out[outOff + r + 1] = sb;
            out[outOff + r + 2] = sc;
            out[outOff + r + 3] = sd;
        }
        for (; r < nRows; r++) out[outOff + r] = row(w, off + r * n, x, n);
    }

    /** One row at w[a ..], in the same order. */
    private static float row(float[] w, int a, float[] x, int n) {
        FloatVector a0 = FloatVector.zero(S), a1 = a0;
        int i = 0;
        for (; i + 2 * L <= n; i += 2 * L) {
            a0 = FloatVector.fromArray(S, w, a + i).fma(FloatVector.fromArray(S, x, i), a0);
            a1 = FloatVector.fromArray(S, w, a + i + L).fma(FloatVector.fromArray(S, x, i + L), a1);
        }
        for (; i + L <= n; i += L) a0 = FloatVector.fromArray(S, w, a + i).fma(FloatVector.fromArray(S, x, i), a0);
        float sa = a0.add(a1).reduceLanes(VectorOperators.ADD);
        for (; i < n; i++) sa += w[a + i] * x[i];
        return sa;
    }
}
