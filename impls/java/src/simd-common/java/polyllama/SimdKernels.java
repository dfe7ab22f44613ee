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

    // F16 and BF16: int32 lanes of S's shape, each holding two adjacent 16-bit weights
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
        matvecF16Pairs(bb, byteOff, nRows, x, n, out, outOff);
    }

    @Override
    public void matvecBF16(ByteBuffer bb, int byteOff, int nRows, float[] x, int n, float[] out, int outOff) {
        matvecBF16Pairs(bb, byteOff, nRows, x, n, out, outOff);
    }

    /** Per thread: x split into its even and odd entries (the 16-bit matvecs), grown as needed. */
    private static final ThreadLocal<float[][]> SPLIT = ThreadLocal.withInitial(() -> new float[2][0]);

    /**
     * Four rows per pass; the weights are converted to float32 in registers as they are loaded
     * (the product is memory-bound: 2 bytes a weight). JDK 17's Vector API has no half-float
     * conversion (no vcvtph2ps, no vdpbf16ps), and widening a vector of shorts to ints
     * (convertShape) compiled to slow code, so each load is L int32 lanes, each holding two
     * adjacent weights: its low halves are the even-indexed weights, its high halves the odd ones,
     * each a float vector after a shift or a mask (BF16) or halfToFloats (F16). They multiply x's
     * even and odd entries, split once per call, in two accumulators per row: eight FMA chains.
     * The sum's order is free (contract section 4); every row sums in the same order (rowF16, rowBF16),
     * however the pool splits the rows. One copy of the loop per type (matvecF16Pairs,
     * matvecBF16Pairs): a vector chosen by a runtime test would reach the FMA through a merge,
     * where C2 (JDK 17) keeps it boxed, an allocation per step. F16 takes two rows a pass, not
     * four: its conversion is long, and eight copies of it in one loop went past C2's inlining
     * budget, which leaves the vectors boxed just the same; for that reason too the two-row
     * loop has halfToFloats written out, where C2 would not inline the call.
     */
    private static void matvecF16Pairs(ByteBuffer bb, int byteOff, int nRows, float[] x, int n, float[] out, int outOff) {
        Mapped w = new Mapped(bb);
        int rowBytes = 2 * n, pairs = n / (2 * L) * L;  // pairs of weights the vector loop takes per row
        float[][] split = SPLIT.get();
        if (split[0].length < pairs) split[0] = new float[pairs];
        if (split[1].length < pairs) split[1] = new float[pairs];
        float[] xe = split[0], xo = split[1];
        for (int p = 0; p < pairs; p++) {
            xe[p] = x[2 * p];
            xo[p] = x[2 * p + 1];
        }
        int r = 0;
        for (; r + 1 < nRows; r += 2) {
            int a = byteOff + r * rowBytes, b = a + rowBytes;
            FloatVector ae = FloatVector.zero(S), ao = ae, be = ae, bo = ae;
            for (int p = 0; p < pairs; p += L) {
                FloatVector x0 = FloatVector.fromArray(S, xe, p), x1 = FloatVector.fromArray(S, xo, p);
                IntVector va = w.ints(a + 4 * p), vb = w.ints(b + 4 * p);
                IntVector vah = va.lanewise(VectorOperators.LSHR, 16), vbh = vb.lanewise(VectorOperators.LSHR, 16);
                IntVector fam = va.and(0x7fff);
                IntVector fan = fam.lanewise(VectorOperators.LSHL, 13).add(112 << 23)
                        .add(fam.add(0x400).lanewise(VectorOperators.LSHR, 15).neg().and(0x38000000));
                IntVector fas = ((FloatVector) fam.convert(VectorOperators.I2F, 0)).mul(0x1p-24f).reinterpretAsInts();
                IntVector fak = fam.sub(0x400).lanewise(VectorOperators.ASHR, 31);
                FloatVector fa = fan.lanewise(VectorOperators.AND_NOT, fak).or(fas.and(fak))
                        .or(va.lanewise(VectorOperators.LSHL, 16).and(0x80000000)).reinterpretAsFloats();
                IntVector gam = vah.and(0x7fff);
                IntVector gan = gam.lanewise(VectorOperators.LSHL, 13).add(112 << 23)
                        .add(gam.add(0x400).lanewise(VectorOperators.LSHR, 15).neg().and(0x38000000));
                IntVector gas = ((FloatVector) gam.convert(VectorOperators.I2F, 0)).mul(0x1p-24f).reinterpretAsInts();
                IntVector gak = gam.sub(0x400).lanewise(VectorOperators.ASHR, 31);
                FloatVector ga = gan.lanewise(VectorOperators.AND_NOT, gak).or(gas.and(gak))
                        .or(vah.lanewise(VectorOperators.LSHL, 16).and(0x80000000)).reinterpretAsFloats();
                IntVector fbm = vb.and(0x7fff);
                IntVector fbn = fbm.lanewise(VectorOperators.LSHL, 13).add(112 << 23)
                        .add(fbm.add(0x400).lanewise(VectorOperators.LSHR, 15).neg().and(0x38000000));
                IntVector fbs = ((FloatVector) fbm.convert(VectorOperators.I2F, 0)).mul(0x1p-24f).reinterpretAsInts();
                IntVector fbk = fbm.sub(0x400).lanewise(VectorOperators.ASHR, 31);
                FloatVector fb = fbn.lanewise(VectorOperators.AND_NOT, fbk).or(fbs.and(fbk))
                        .or(vb.lanewise(VectorOperators.LSHL, 16).and(0x80000000)).reinterpretAsFloats();
                IntVector gbm = vbh.and(0x7fff);
                IntVector gbn = gbm.lanewise(VectorOperators.LSHL, 13).add(112 << 23)
                        .add(gbm.add(0x400).lanewise(VectorOperators.LSHR, 15).neg().and(0x38000000));
                IntVector gbs = ((FloatVector) gbm.convert(VectorOperators.I2F, 0)).mul(0x1p-24f).reinterpretAsInts();
                IntVector gbk = gbm.sub(0x400).lanewise(VectorOperators.ASHR, 31);
                FloatVector gb = gbn.lanewise(VectorOperators.AND_NOT, gbk).or(gbs.and(gbk))
                        .or(vbh.lanewise(VectorOperators.LSHL, 16).and(0x80000000)).reinterpretAsFloats();
                ae = fa.fma(x0, ae);
                ao = ga.fma(x1, ao);
                be = fb.fma(x0, be);
                bo = gb.fma(x1, bo);
            }
            float ra = ae.add(ao).reduceLanes(VectorOperators.ADD), rb = be.add(bo).reduceLanes(VectorOperators.ADD);
            for (int i = 2 * pairs; i < n; i++) {
                ra += Half.get(bb, a + 2 * i, false) * x[i];
                rb += Half.get(bb, b + 2 * i, false) * x[i];
            }
            out[outOff + r] = ra;
            out[outOff + r + 1] = rb;
        }
        for (; r < nRows; r++) out[outOff + r] = rowF16(bb, w, byteOff + r * rowBytes, x, xe, xo, pairs, n);
    }

    /** One F16 row at a, summed in the order of matvecF16Pairs's four-row pass. */
    private static float rowF16(ByteBuffer bb, Mapped w, int a, float[] x, float[] xe, float[] xo, int pairs, int n) {
        FloatVector ae = FloatVector.zero(S), ao = ae;
        for (int p = 0; p < pairs; p += L) {
            IntVector va = w.ints(a + 4 * p);
            ae = lowF16(va).fma(FloatVector.fromArray(S, xe, p), ae);
            ao = highF16(va).fma(FloatVector.fromArray(S, xo, p), ao);
        }
        float ra = ae.add(ao).reduceLanes(VectorOperators.ADD);
        for (int i = 2 * pairs; i < n; i++) ra += Half.get(bb, a + 2 * i, false) * x[i];
        return ra;
    }

    private static void matvecBF16Pairs(ByteBuffer bb, int byteOff, int nRows, float[] x, int n, float[] out, int outOff) {
        Mapped w = new Mapped(bb);
        int rowBytes = 2 * n, pairs = n / (2 * L) * L;  // pairs of weights the vector loop takes per row
        float[][] split = SPLIT.get();
        if (split[0].length < pairs) split[0] = new float[pairs];
        if (split[1].length < pairs) split[1] = new float[pairs];
        float[] xe = split[0], xo = split[1];
        for (int p = 0; p < pairs; p++) {
            xe[p] = x[2 * p];
            xo[p] = x[2 * p + 1];
        }
        int r = 0;
        for (; r + 3 < nRows; r += 4) {
            int a = byteOff + r * rowBytes, b = a + rowBytes, c = b + rowBytes, d = c + rowBytes;
            FloatVector ae = FloatVector.zero(S), ao = ae, be = ae, bo = ae, ce = ae, co = ae, de = ae, dd = ae;
            for (int p = 0; p < pairs; p += L) {
                FloatVector x0 = FloatVector.fromArray(S, xe, p), x1 = FloatVector.fromArray(S, xo, p);
                IntVector va = w.ints(a + 4 * p), vb = w.ints(b + 4 * p), vc = w.ints(c + 4 * p), vd = w.ints(d + 4 * p);
                ae = lowBF16(va).fma(x0, ae);
                ao = highBF16(va).fma(x1, ao);
                be = lowBF16(vb).fma(x0, be);
                bo = highBF16(vb).fma(x1, bo);
                ce = lowBF16(vc).fma(x0, ce);
                co = highBF16(vc).fma(x1, co);
                de = lowBF16(vd).fma(x0, de);
                dd = highBF16(vd).fma(x1, dd);
            }
            float ra = ae.add(ao).reduceLanes(VectorOperators.ADD), rb = be.add(bo).reduceLanes(VectorOperators.ADD);
            float rc = ce.add(co).reduceLanes(VectorOperators.ADD), rd = de.add(dd).reduceLanes(VectorOperators.ADD);
            for (int i = 2 * pairs; i < n; i++) {
                ra += Half.get(bb, a + 2 * i, true) * x[i];
                rb += Half.get(bb, b + 2 * i, true) * x[i];
                rc += Half.get(bb, c + 2 * i, true) * x[i];
                rd += Half.get(bb, d + 2 * i, true) * x[i];
            }
            out[outOff + r] = ra;
            out[outOff + r + 1] = rb;
            out[outOff + r + 2] = rc;
            out[outOff + r + 3] = rd;
        }
        for (; r < nRows; r++) out[outOff + r] = rowBF16(bb, w, byteOff + r * rowBytes, x, xe, xo, pairs, n);
    }

    /** One BF16 row at a, summed in the order of matvecBF16Pairs's four-row pass. */
    private static float rowBF16(ByteBuffer bb, Mapped w, int a, float[] x, float[] xe, float[] xo, int pairs, int n) {
        FloatVector ae = FloatVector.zero(S), ao = ae;
        for (int p = 0; p < pairs; p += L) {
            IntVector va = w.ints(a + 4 * p);
            ae = lowBF16(va).fma(FloatVector.fromArray(S, xe, p), ae);
            ao = highBF16(va).fma(FloatVector.fromArray(S, xo, p), ao);
        }
        float ra = ae.add(ao).reduceLanes(VectorOperators.ADD);
        for (int i = 2 * pairs; i < n; i++) ra += Half.get(bb, a + 2 * i, true) * x[i];
        return ra;
    }

    private static FloatVector lowF16(IntVector pairs) {
        return halfToFloats(pairs);
    }

    private static FloatVector highF16(IntVector pairs) {
        return halfToFloats(pairs.lanewise(VectorOperators.LSHR, 16));
    }

    private static FloatVector lowBF16(IntVector pairs) {
        return bf16ToFloats(pairs);
    }

    private static FloatVector highBF16(IntVector pairs) {
        return pairs.and(0xffff0000).reinterpretAsFloats();
    }

    /** BF16 bits (the low half of each int lane; the high half is ignored) as float32: the top half of the float's bits. */
    static FloatVector bf16ToFloats(IntVector bits) {
        return bits.lanewise(VectorOperators.LSHL, 16).reinterpretAsFloats();
    }

    /**
     * F16 bits (the low half of each int lane; the high half is ignored) as float32, exactly,
     * with lane-wise integer and float operations only (no masks: in JDK 17 a mask's cast or a
     * blend fell out of C2's intrinsics, an allocation per vector). A normal value's exponent
     * and mantissa move up 13 bits and the exponent is rebiased (+112); a subnormal (exponent 0)
     * is its mantissa times 2^-24, an int-to-float conversion and a power-of-two product, chosen
     * by an all-ones lane from an arithmetic shift, so no float32 subnormal ever enters an
     * operation (x86 cores take a slow microcode assist for those). Exponent 31 (infinity, NaN)
     * gets the float exponent 255.
     */
    static FloatVector halfToFloats(IntVector bits) {
        IntVector mag = bits.and(0x7fff);
        IntVector special = mag.add(0x400).lanewise(VectorOperators.LSHR, 15).neg().and(0x38000000);  // exponent 31
        IntVector normal = mag.lanewise(VectorOperators.LSHL, 13).add(112 << 23).add(special);
        IntVector subnormal = ((FloatVector) mag.convert(VectorOperators.I2F, 0)).mul(0x1p-24f).reinterpretAsInts();
        IntVector isSub = mag.sub(0x400).lanewise(VectorOperators.ASHR, 31);  // all ones below exponent 1
        IntVector v = normal.lanewise(VectorOperators.AND_NOT, isSub).or(subnormal.and(isSub));
        return v.or(bits.lanewise(VectorOperators.LSHL, 16).and(0x80000000)).reinterpretAsFloats();
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
