/*
 * The Vector API kernels, one source for JDK 17-18 and JDK 22+. The two APIs differ only in how a
 * vector is loaded from the mapped weights: JDK 17-18 load from a ByteBuffer (fromByteBuffer, gone
 * since JDK 19), JDK 22+ from a MemorySegment view of it (fromMemorySegment). That load is
 * Mapped's, a small final class that src/simd17 and src/simd22 each define; everything else is
 * here. Kernels.pick() falls back to ScalarKernels when neither fits the running JVM.
 */
package polyllama;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import jdk.incubator.vector.ByteVector;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;
import jdk.incubator.vector.ShortVector;
import jdk.incubator.vector.VectorMask;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorShape;
import jdk.incubator.vector.VectorSpecies;

final class SimdKernels implements Kernels {
    // static final: the JIT only intrinsifies the Vector API when the species is a constant
    static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
    static final int L = S.length();
    static final ByteOrder LE = ByteOrder.LITTLE_ENDIAN;

    // Q8_0: int8 quants widened to int16 lanes (a 256-, 128- or 64-bit load fills a 512-, 256- or
    // 128-bit vector), multiplied there, then summed in int32 lanes of the same vector. At most
    // 512 bits, so that one load never runs past a 32-quant block (SVE can be wider).
    static final VectorShape QSHAPE = VectorShape.forBitSize(Math.min(512, S.vectorBitSize()));
    static final VectorSpecies<Short> QS = ShortVector.SPECIES_PREFERRED.withShape(QSHAPE);
    static final VectorSpecies<Byte> QB = ByteVector.SPECIES_PREFERRED.withShape(VectorShape.forBitSize(QSHAPE.vectorBitSize() / 2));
    static final VectorSpecies<Integer> QI = IntVector.SPECIES_PREFERRED.withShape(QSHAPE);
    static final int QL = QS.length();

    // F16 and BF16: S's lane count of 16-bit values in a half-width vector, widened to int32
    // lanes of S's shape and turned into float32 there (vpmovsxwd / sxtl, then shifts and adds)
    static final VectorSpecies<Short> HS = ShortVector.SPECIES_PREFERRED.withShape(VectorShape.forBitSize(S.vectorBitSize() / 2));
    static final VectorSpecies<Integer> HI = IntVector.SPECIES_PREFERRED.withShape(S.vectorShape());

    /**
     * Four rows per pass, two vectors per row a step: eight independent FMA chains, and each x
     * vector loaded once for four rows. C2 wraps every Vector API load in a dozen instructions of
     * bounds and buffer checks, so a pass holds fewer loads in flight than the same loop in C;
     * more rows per pass make up part of it (measured in README, "Performance levers"). Every
     * row sums in the same order (row()), however the rows are split into chunks. Mapped is a
     * final class made here, so C2 inlines its loads and keeps its buffer in a register.
     */
    @Override
    public void matvec(ByteBuffer bb, int byteOff, int nRows, float[] x, int n, float[] out, int outOff) {
        Mapped w = new Mapped(bb);
        int rowBytes = 4 * n;
        int r = 0;
        for (; r + 3 < nRows; r += 4) {
            int a = byteOff + r * rowBytes, b = a + rowBytes, c = b + rowBytes, d = c + rowBytes;
            FloatVector a0 = FloatVector.zero(S), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0, d0 = a0, d1 = a0;
            int i = 0;
            for (; i + 2 * L <= n; i += 2 * L) {
                FloatVector x0 = FloatVector.fromArray(S, x, i), x1 = FloatVector.fromArray(S, x, i + L);
                a0 = w.floats(a + 4 * i).fma(x0, a0);
                b0 = w.floats(b + 4 * i).fma(x0, b0);
                c0 = w.floats(c + 4 * i).fma(x0, c0);
                d0 = w.floats(d + 4 * i).fma(x0, d0);
                a1 = w.floats(a + 4 * (i + L)).fma(x1, a1);
                b1 = w.floats(b + 4 * (i + L)).fma(x1, b1);
                c1 = w.floats(c + 4 * (i + L)).fma(x1, c1);
                d1 = w.floats(d + 4 * (i + L)).fma(x1, d1);
            }
            for (; i + L <= n; i += L) {
                FloatVector x0 = FloatVector.fromArray(S, x, i);
                a0 = w.floats(a + 4 * i).fma(x0, a0);
                b0 = w.floats(b + 4 * i).fma(x0, b0);
                c0 = w.floats(c + 4 * i).fma(x0, c0);
                d0 = w.floats(d + 4 * i).fma(x0, d0);
            }
            float sa = a0.add(a1).reduceLanes(VectorOperators.ADD), sb = b0.add(b1).reduceLanes(VectorOperators.ADD);
            float sc = c0.add(c1).reduceLanes(VectorOperators.ADD), sd = d0.add(d1).reduceLanes(VectorOperators.ADD);
            for (; i < n; i++) {
                sa += bb.getFloat(a + 4 * i) * x[i];
                sb += bb.getFloat(b + 4 * i) * x[i];
                sc += bb.getFloat(c + 4 * i) * x[i];
                sd += bb.getFloat(d + 4 * i) * x[i];
            }
            out[outOff + r] = sa;
            out[outOff + r + 1] = sb;
            out[outOff + r + 2] = sc;
            out[outOff + r + 3] = sd;
        }
        for (; r < nRows; r++) out[outOff + r] = row(bb, w, byteOff + r * rowBytes, x, n);
    }

    /** One row at a, summed in the order of matvec's four-row pass. */
    private static float row(ByteBuffer bb, Mapped w, int a, float[] x, int n) {
        FloatVector a0 = FloatVector.zero(S), a1 = a0;
        int i = 0;
        for (; i + 2 * L <= n; i += 2 * L) {
            a0 = w.floats(a + 4 * i).fma(FloatVector.fromArray(S, x, i), a0);
            a1 = w.floats(a + 4 * (i + L)).fma(FloatVector.fromArray(S, x, i + L), a1);
        }
        for (; i + L <= n; i += L) a0 = w.floats(a + 4 * i).fma(FloatVector.fromArray(S, x, i), a0);
        float sa = a0.add(a1).reduceLanes(VectorOperators.ADD);
        for (; i < n; i++) sa += bb.getFloat(a + 4 * i) * x[i];
        return sa;
    }

    /** The same over a float[] (Loader's heap copy): ArrayMatvec, the same order, so the same bits. */
    @Override
    public void matvec(float[] w, int off, int nRows, float[] x, int n, float[] out, int outOff) {
        ArrayMatvec.matvec(w, off, nRows, x, n, out, outOff);
    }

    /**
     * The Q8_0 product's default order (matvecQ8Lanes): per block, each lane's partial sum of
     * the block (exact integers) converted to float32 and scaled there, the lanes added once at
     * the end of the row, as llama.cpp's x86 vec_dot_q8_0_q8_0 does. The other order
     * (-Dpolyllama.q8exact=true, a lever) reduces every block to its exact isum before
     * scaling, ScalarKernels' bits, at the price of a horizontal sum per block and row, which
     * was most of the product's time (README, "Q8_0 token generation").
     */
    static final boolean LANES = !Boolean.getBoolean("polyllama.q8exact");
    static final VectorSpecies<Float> QF = FloatVector.SPECIES_PREFERRED.withShape(QSHAPE);

    /**
     * Two rows per pass, as matvec, each x block loaded once for both. Per block: the quants'
     * products in int16 lanes (|q_w * q_x| <= 128 * 127, two of them still fit), adjacent lanes
     * summed into int32 (pairs), the lanes reduced to the block's exact isum, then scaled in
     * float32 and added block after block: the same bits as ScalarKernels.
     */
    @Override
    public void matvecQ8(ByteBuffer bb, int byteOff, int nRows, short[] qx, float[] dx, int n, float[] out, int outOff) {
        if (LANES) {
            matvecQ8Lanes(bb, byteOff, nRows, qx, dx, n, out, outOff);
            return;
        }
        Mapped w = new Mapped(bb);
        int blocks = n / Q8.BLOCK, rowBytes = blocks * Q8.BLOCK_BYTES;
        int r = 0;
        for (; r + 1 < nRows; r += 2) {
            int a = byteOff + r * rowBytes, b = a + rowBytes;
            float sa = 0, sb = 0;
            for (int k = 0; k < blocks; k++, a += Q8.BLOCK_BYTES, b += Q8.BLOCK_BYTES) {
                IntVector ia = IntVector.zero(QI), ib = ia;
                for (int j = 0; j < Q8.BLOCK; j += 2 * QL) {  // two product vectors a pass; one when QL = 32
                    int xo = k * Q8.BLOCK + j;
                    ShortVector x0 = ShortVector.fromArray(QS, qx, xo);
                    ShortVector pa = quants(w, a + 2 + j).mul(x0), pb = quants(w, b + 2 + j).mul(x0);
                    if (QL < Q8.BLOCK) {
                        ShortVector x1 = ShortVector.fromArray(QS, qx, xo + QL);
                        pa = pa.add(quants(w, a + 2 + j + QL).mul(x1));
                        pb = pb.add(quants(w, b + 2 + j + QL).mul(x1));
                    }
                    ia = ia.add(pairSums(pa));
                    ib = ib.add(pairSums(pb));
                }
                float d = dx[k];
                sa += ia.reduceLanes(VectorOperators.ADD) * (Q8.scale(bb, a) * d);
                sb += ib.reduceLanes(VectorOperators.ADD) * (Q8.scale(bb, b) * d);
            }
            out[outOff + r] = sa;
            out[outOff + r + 1] = sb;
        }
        if (r < nRows) {
            int a = byteOff + r * rowBytes;
            float sa = 0;
            for (int k = 0; k < blocks; k++, a += Q8.BLOCK_BYTES) {
                IntVector ia = IntVector.zero(QI);
                for (int j = 0; j < Q8.BLOCK; j += QL) {
                    ia = ia.add(pairSums(quants(w, a + 2 + j).mul(ShortVector.fromArray(QS, qx, k * Q8.BLOCK + j))));
                }
                sa += ia.reduceLanes(VectorOperators.ADD) * (Q8.scale(bb, a) * dx[k]);
            }
            out[outOff + r] = sa;
        }
    }

    /** The same products, each block's int32 lanes scaled as floats (LANES); two rows per pass. */
    private static void matvecQ8Lanes(ByteBuffer bb, int byteOff, int nRows, short[] qx, float[] dx, int n, float[] out, int outOff) {
        Mapped w = new Mapped(bb);
        int blocks = n / Q8.BLOCK, rowBytes = blocks * Q8.BLOCK_BYTES;
        int r = 0;
        for (; r + 1 < nRows; r += 2) {
            int a = byteOff + r * rowBytes, b = a + rowBytes;
            FloatVector fa = FloatVector.zero(QF), fb = fa;
            for (int k = 0; k < blocks; k++, a += Q8.BLOCK_BYTES, b += Q8.BLOCK_BYTES) {
                IntVector ia = IntVector.zero(QI), ib = ia;
                for (int j = 0; j < Q8.BLOCK; j += 2 * QL) {  // two product vectors a pass; one when QL = 32
                    int xo = k * Q8.BLOCK + j;
                    ShortVector x0 = ShortVector.fromArray(QS, qx, xo);
                    ShortVector pa = quants(w, a + 2 + j).mul(x0), pb = quants(w, b + 2 + j).mul(x0);
                    if (QL < Q8.BLOCK) {
                        ShortVector x1 = ShortVector.fromArray(QS, qx, xo + QL);
                        pa = pa.add(quants(w, a + 2 + j + QL).mul(x1));
                        pb = pb.add(quants(w, b + 2 + j + QL).mul(x1));
                    }
                    ia = ia.add(pairSums(pa));
                    ib = ib.add(pairSums(pb));
                }
                float d = dx[k];
                fa = scaled(ia, Q8.scale(bb, a) * d, fa);
                fb = scaled(ib, Q8.scale(bb, b) * d, fb);
            }
            out[outOff + r] = fa.reduceLanes(VectorOperators.ADD);
            out[outOff + r + 1] = fb.reduceLanes(VectorOperators.ADD);
        }
        for (; r < nRows; r++) {
            int a = byteOff + r * rowBytes;
            FloatVector fa = FloatVector.zero(QF);
            for (int k = 0; k < blocks; k++, a += Q8.BLOCK_BYTES) {
                IntVector ia = IntVector.zero(QI);
                for (int j = 0; j < Q8.BLOCK; j += QL) {
                    ia = ia.add(pairSums(quants(w, a + 2 + j).mul(ShortVector.fromArray(QS, qx, k * Q8.BLOCK + j))));
                }
                fa = scaled(ia, Q8.scale(bb, a) * dx[k], fa);
            }
            out[outOff + r] = fa.reduceLanes(VectorOperators.ADD);
        }
    }

    /** acc + float(partial sums) * scale, lane by lane (the partials are exact in float32: below 2^24). */
    private static FloatVector scaled(IntVector partials, float scale, FloatVector acc) {
        return ((FloatVector) partials.convert(VectorOperators.I2F, 0)).fma(FloatVector.broadcast(QF, scale), acc);
    }

    /** QL int8 quants from at, sign-extended to int16 lanes. */
    private static ShortVector quants(Mapped w, int at) {
        return (ShortVector) w.bytes(at).convertShape(VectorOperators.B2S, QS, 0);
    }

    /**
     * Each pair of adjacent int16 lanes summed into one int32 lane (what x86's pmaddwd does after
     * its multiply): the vector's bits read as ints, each int's low half sign-extended by a shift
     * left and back, its high half by an arithmetic shift. No shuffles, so it compiles to shifts
     * on every ISA.
     */
    private static IntVector pairSums(ShortVector p) {
        IntVector v = p.reinterpretAsInts();
        return v.lanewise(VectorOperators.LSHL, 16).lanewise(VectorOperators.ASHR, 16).add(v.lanewise(VectorOperators.ASHR, 16));
    }

    @Override
    public void matvecF16(ByteBuffer bb, int byteOff, int nRows, float[] x, int n, float[] out, int outOff) {
        matvecHalf(bb, byteOff, nRows, false, x, n, out, outOff);
    }

    @Override
    public void matvecBF16(ByteBuffer bb, int byteOff, int nRows, float[] x, int n, float[] out, int outOff) {
        matvecHalf(bb, byteOff, nRows, true, x, n, out, outOff);
    }

    /**
     * Four rows per pass, one vector of each a step: the weights are converted to float32 in
     * registers as they are loaded (the product is memory-bound: 2 bytes a weight), and each x
     * vector is loaded once for the four rows. JDK 17's Vector API has no half-float conversion
     * (no vcvtph2ps, no vdpbf16ps), so the conversion is integer lanes: BF16 is a shift, F16 a
     * rebias of the exponent (halfToFloats). Every row sums in the same order (halfRow), however
     * the pool splits the rows. bf16 is the same for a whole call, so the branch is predicted.
     */
    private static void matvecHalf(ByteBuffer bb, int byteOff, int nRows, boolean bf16, float[] x, int n, float[] out, int outOff) {
        Mapped w = new Mapped(bb);
        int rowBytes = 2 * n;
        int r = 0;
        for (; r + 3 < nRows; r += 4) {
            int a = byteOff + r * rowBytes, b = a + rowBytes, c = b + rowBytes, d = c + rowBytes;
            FloatVector sa = FloatVector.zero(S), sb = sa, sc = sa, sd = sa;
            int i = 0;
            for (; i + L <= n; i += L) {
                FloatVector x0 = FloatVector.fromArray(S, x, i);
                sa = halfs(w, a + 2 * i, bf16).fma(x0, sa);
                sb = halfs(w, b + 2 * i, bf16).fma(x0, sb);
                sc = halfs(w, c + 2 * i, bf16).fma(x0, sc);
                sd = halfs(w, d + 2 * i, bf16).fma(x0, sd);
            }
            float ra = sa.reduceLanes(VectorOperators.ADD), rb = sb.reduceLanes(VectorOperators.ADD);
            float rc = sc.reduceLanes(VectorOperators.ADD), rd = sd.reduceLanes(VectorOperators.ADD);
            for (; i < n; i++) {
                ra += Half.get(bb, a + 2 * i, bf16) * x[i];
                rb += Half.get(bb, b + 2 * i, bf16) * x[i];
                rc += Half.get(bb, c + 2 * i, bf16) * x[i];
                rd += Half.get(bb, d + 2 * i, bf16) * x[i];
            }
            out[outOff + r] = ra;
            out[outOff + r + 1] = rb;
            out[outOff + r + 2] = rc;
            out[outOff + r + 3] = rd;
        }
        for (; r < nRows; r++) out[outOff + r] = halfRow(bb, w, byteOff + r * rowBytes, bf16, x, n);
    }

    /** One 16-bit row at a, summed in the order of matvecHalf's four-row pass. */
    private static float halfRow(ByteBuffer bb, Mapped w, int a, boolean bf16, float[] x, int n) {
        FloatVector sa = FloatVector.zero(S);
        int i = 0;
        for (; i + L <= n; i += L) sa = halfs(w, a + 2 * i, bf16).fma(FloatVector.fromArray(S, x, i), sa);
        float ra = sa.reduceLanes(VectorOperators.ADD);
        for (; i < n; i++) ra += Half.get(bb, a + 2 * i, bf16) * x[i];
        return ra;
    }

    /** L 16-bit weights from byte offset at as float32 lanes. */
    private static FloatVector halfs(Mapped w, int at, boolean bf16) {
        IntVector bits = (IntVector) w.shorts(at).convertShape(VectorOperators.S2I, HI, 0);
        return bf16 ? bf16ToFloats(bits) : halfToFloats(bits);
    }

    /** BF16 bits (in the low half of each int lane) as float32: the top half of the float's bits. */
    static FloatVector bf16ToFloats(IntVector bits) {
        return bits.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats();
    }

    /**
     * F16 bits (low half of each int lane, sign-extended or not) as float32, exactly, in integer
     * lanes: a normal value's exponent and mantissa move up 13 bits and the exponent is rebiased
     * (+112); infinities and NaNs (exponent 31) get the float exponent 255; a subnormal (exponent
     * 0) is its mantissa times 2^-24, an int-to-float conversion and a power-of-two product, so no
     * float32 subnormal ever enters an operation (a multiply by 2^112 of the shifted bits would,
     * and x86 cores take a slow microcode assist for those).
     */
    static FloatVector halfToFloats(IntVector bits) {
        IntVector mag = bits.and(0x7fff);
        IntVector e = mag.lanewise(VectorOperators.LSHL, 13).add(112 << 23);
        e = e.lanewise(VectorOperators.ADD, 112 << 23, mag.compare(VectorOperators.GE, 0x7c00));
        FloatVector f = e.reinterpretAsFloats();
        VectorMask<Float> sub = mag.compare(VectorOperators.LT, 0x400).cast(S);
        f = f.blend(((FloatVector) mag.convert(VectorOperators.I2F, 0)).mul(0x1p-24f), sub);
        return f.reinterpretAsInts().or(bits.lanewise(VectorOperators.LSHL, 16).and(0x80000000)).reinterpretAsFloats();
    }

    /** The register-tiled product: TileMatmul. */
    @Override
    public void matmul(float[] w, int wOff, int wStride, int nRows, float[] x, int xOff, int xStride, int T, int n,
                       float[] out, int outOff, int outStride) {
        TileMatmul.matmul(w, wOff, wStride, nRows, x, xOff, xStride, T, n, out, outOff, outStride);
    }

    /** The Vector API's EXP (on x86 an SVML-style routine within an ulp or so of Math.exp). */
    @Override
    public float expSum(float[] a, int o, int n, float max) {
        FloatVector m = FloatVector.broadcast(S, max), acc = FloatVector.zero(S);
        int i = 0;
        for (; i + L <= n; i += L) {
            FloatVector e = FloatVector.fromArray(S, a, o + i).sub(m).lanewise(VectorOperators.EXP);
            e.intoArray(a, o + i);
            acc = acc.add(e);
        }
        float sum = acc.reduceLanes(VectorOperators.ADD);
        for (; i < n; i++) {
            a[o + i] = (float) Math.exp(a[o + i] - max);
            sum += a[o + i];
        }
        return sum;
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
