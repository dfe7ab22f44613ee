/*
 * The batched forward pass's matrix-matrix product (Kernels.matmul) with the Vector API, for
 * JDK 17-18 and 22+ alike (float[] loads only: Batch hands it the checkpoint's float[] or a tile
 * it filled from mapped bytes or Q8_0 blocks).
 *
 * A register tile of 4 weight rows x 4 activation rows: 16 vector accumulators along d, and per
 * step 4 weight vectors and 4 activation vectors loaded for 16 FMAs, so each load feeds four
 * FMAs instead of the matvec's one. AVX-512 has 32 vector registers and the tile needs 24; AVX2
 * and NEON have 16 and 32, and C2 spills a few there (the portable shape: the Vector API picks
 * the widest species, SPECIES_PREFERRED). Horizontal sums come once per output element, at the
 * end of the row. Outer loop over weight-row tiles, inner over activation rows, so a 4-row
 * weight tile stays in L1 while the caller's block of activation rows (Batch.TOKEN_BLOCK) is
 * read from L2.
 */
package polyllama;

import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.VectorOperators;
import jdk.incubator.vector.VectorSpecies;

final class TileMatmul {
    private TileMatmul() {}

    // static final: the JIT only intrinsifies the Vector API when the species is a constant
    static final VectorSpecies<Float> S = FloatVector.SPECIES_PREFERRED;
    static final int L = S.length();

    static void matmul(float[] w, int wOff, int wStride, int nRows, float[] x, int xOff, int xStride, int T, int n,
                       float[] out, int outOff, int outStride) {
        int r = 0;
        for (; r + 3 < nRows; r += 4) {
            int wa = wOff + r * wStride;
            int t = 0;
            for (; t + 3 < T; t += 4) tile4x4(w, wa, wStride, n, x, xOff + t * xStride, xStride, out, outOff + t * outStride + r, outStride);
            for (; t < T; t++) tile4x1(w, wa, wStride, n, x, xOff + t * xStride, out, outOff + t * outStride + r);
        }
        for (; r < nRows; r++) {
            int wa = wOff + r * wStride;
            for (int t = 0; t < T; t++) out[outOff + t * outStride + r] = dot(w, wa, x, xOff + t * xStride, n);
        }
    }

    /** Rows wa, wa + ws, wa + 2 ws, wa + 3 ws of w against the 4 activation rows from xa, every xStride. */
    private static void tile4x4(float[] w, int wa, int ws, int n, float[] x, int xa, int xStride, float[] out, int o, int outStride) {
        int wb = wa + ws, wc = wb + ws, wd = wc + ws;
        int xb = xa + xStride, xc = xb + xStride, xd = xc + xStride;
        FloatVector aa = FloatVector.zero(S), ab = aa, ac = aa, ad = aa, ba = aa, bb = aa, bc = aa, bd = aa;
        FloatVector ca = aa, cb = aa, cc = aa, cd = aa, da = aa, db = aa, dc = aa, dd = aa;
        int i = 0;
        for (; i + L <= n; i += L) {
            FloatVector x0 = FloatVector.fromArray(S, x, xa + i), x1 = FloatVector.fromArray(S, x, xb + i);
            FloatVector x2 = FloatVector.fromArray(S, x, xc + i), x3 = FloatVector.fromArray(S, x, xd + i);
            FloatVector v = FloatVector.fromArray(S, w, wa + i);
            aa = v.fma(x0, aa); ab = v.fma(x1, ab); ac = v.fma(x2, ac); ad = v.fma(x3, ad);
            v = FloatVector.fromArray(S, w, wb + i);
            ba = v.fma(x0, ba); bb = v.fma(x1, bb); bc = v.fma(x2, bc); bd = v.fma(x3, bd);
            v = FloatVector.fromArray(S, w, wc + i);
            ca = v.fma(x0, ca); cb = v.fma(x1, cb); cc = v.fma(x2, cc); cd = v.fma(x3, cd);
            v = FloatVector.fromArray(S, w, wd + i);
            da = v.fma(x0, da); db = v.fma(x1, db); dc = v.fma(x2, dc); dd = v.fma(x3, dd);
        }
        float saa = sum(aa), sab = sum(ab), sac = sum(ac), sad = sum(ad), sba = sum(ba), sbb = sum(bb), sbc = sum(bc), sbd = sum(bd);
        float sca = sum(ca), scb = sum(cb), scc = sum(cc), scd = sum(cd), sda = sum(da), sdb = sum(db), sdc = sum(dc), sdd = sum(dd);
        for (; i < n; i++) {  // the tail of d below one vector (stories260K's 172)
            float y0 = x[xa + i], y1 = x[xb + i], y2 = x[xc + i], y3 = x[xd + i];
            float u = w[wa + i];
            saa += u * y0; sab += u * y1; sac += u * y2; sad += u * y3;
            u = w[wb + i];
            sba += u * y0; sbb += u * y1; sbc += u * y2; sbd += u * y3;
            u = w[wc + i];
            sca += u * y0; scb += u * y1; scc += u * y2; scd += u * y3;
            u = w[wd + i];
            sda += u * y0; sdb += u * y1; sdc += u * y2; sdd += u * y3;
        }
        int o1 = o + outStride, o2 = o1 + outStride, o3 = o2 + outStride;
        out[o] = saa; out[o + 1] = sba; out[o + 2] = sca; out[o + 3] = sda;
        out[o1] = sab; out[o1 + 1] = sbb; out[o1 + 2] = scb; out[o1 + 3] = sdb;
        out[o2] = sac; out[o2 + 1] = sbc; out[o2 + 2] = scc; out[o2 + 3] = sdc;
        out[o3] = sad; out[o3 + 1] = sbd; out[o3 + 2] = scd; out[o3 + 3] = sdd;
    }

    /** The four weight rows against one activation row (the tokens left over below a tile). */
    private static void tile4x1(float[] w, int wa, int ws, int n, float[] x, int xa, float[] out, int o) {
        int wb = wa + ws, wc = wb + ws, wd = wc + ws;
        FloatVector a = FloatVector.zero(S), b = a, c = a, d = a;
        int i = 0;
        for (; i + L <= n; i += L) {
            FloatVector x0 = FloatVector.fromArray(S, x, xa + i);
            a = FloatVector.fromArray(S, w, wa + i).fma(x0, a);
            b = FloatVector.fromArray(S, w, wb + i).fma(x0, b);
            c = FloatVector.fromArray(S, w, wc + i).fma(x0, c);
            d = FloatVector.fromArray(S, w, wd + i).fma(x0, d);
        }
        float sa = sum(a), sb = sum(b), sc = sum(c), sd = sum(d);
        for (; i < n; i++) {
            float y = x[xa + i];
            sa += w[wa + i] * y; sb += w[wb + i] * y; sc += w[wc + i] * y; sd += w[wd + i] * y;
        }
        out[o] = sa; out[o + 1] = sb; out[o + 2] = sc; out[o + 3] = sd;
    }

    private static float dot(float[] w, int wa, float[] x, int xa, int n) {
        FloatVector a = FloatVector.zero(S);
        int i = 0;
        for (; i + L <= n; i += L) a = FloatVector.fromArray(S, w, wa + i).fma(FloatVector.fromArray(S, x, xa + i), a);
        float s = sum(a);
        for (; i < n; i++) s += w[wa + i] * x[xa + i];
        return s;
    }

    private static float sum(FloatVector v) {
        return v.reduceLanes(VectorOperators.ADD);
    }
}
