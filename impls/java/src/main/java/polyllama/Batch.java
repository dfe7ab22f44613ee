/*
 * The batched forward pass (contract section 6, "The batched forward pass"): T prompt positions
 * through every layer at once, so that each weight matrix is read once per batch instead of once
 * per position. Row t of every activation matrix is forward(tokens[t], p0 + t) of Transformer,
 * with the same norms, RoPE, attention, softmax and SwiGLU code path per row; only the products
 * change, to Kernels.matmul.
 *
 * Each product is split once across the pool by blocks of weight rows (parallelFor's chunks), so
 * a worker streams its own rows once per batch. Within a worker's rows: a group of GROUP rows is
 * made a float[] tile (the checkpoint's own float[] when the weights are on the heap; else copied
 * from the mapped bytes, or a Q8_0 group dequantized, fp32(d) * q exactly, or an F16 or BF16
 * group converted, exact too, once per batch), and
 * the tile multiplies the activation rows in blocks of TOKEN_BLOCK, which stay in L2 while the
 * tile sits in L1.
 *
 * Q8_0: each activation row is quantized exactly as the one-position path quantizes its vector
 * (Q8.quantize: blocks of 32, fp16-rounded scale, ties to even), once per group of products that
 * share it, and dequantized (q * dx, exact in float32). A product then sums (dw q_w) (dx q_x)
 * over the row in float32: the same terms as the contract's per-block float(isum) * (dw * dx),
 * each product exact, in another summation order. Why float and not int8 lanes: the JDK 17
 * Vector API has no u8 x s8 dot product (vpdpbusd, pmaddubsw, sdot), and widening int8 to int16
 * lanes costs about five instructions per 32 multiply-adds where float FMAs cost two (README,
 * "Batched prefill").
 *
 * F16 and BF16: the tile holds the weights converted to float32 (exact), and the activations
 * stay float32, as in the one-position path: only the summation order differs from it.
 */
package polyllama;

import java.nio.ByteBuffer;
import java.util.Arrays;

final class Batch {
    /** Weight rows made one float[] tile: 16 rows of the widest 110M row (2048) are 128 KiB, in L2. */
    static final int GROUP = 16;
    /** Activation rows multiplied per pass over a tile: 64 rows of dim 768 are 192 KiB, in L2. */
    static final int TOKEN_BLOCK = 64;
    /** Rows of a head's attention block (attendBlock). */
    static final int ATT_ROWS = 32;
    /** The most floats a worker's attention scratch may take; above it the attention goes pair by pair. */
    static final long ATT_SCRATCH = 1L << 24;
    /** Rows of logits computed at once in logits mode. */
    static final int LOGIT_ROWS = 32;

    final Transformer tr;
    final int rows;                  // min(batch, seq_len, cache rows): the most positions one pass takes
    final float[] x, xb, xb2, q;     // (rows, dim)
    final float[] hb, hb2;           // (rows, hidden_dim)
    final float[] xq;                // (rows, max(dim, hidden_dim)) the Q8_0-rounded activations, dequantized
    final int clamped;               // -b clamped to seq_len, as the statistics line reports it
    final short[] qrow;              // (max(dim, hidden_dim)) one row's quants
    final float[] drow;              // its blocks' scales
    final float[] ropeCos, ropeSin;  // (rows, dim / 2)
    final float[][] tiles;           // (worker, GROUP * max(dim, hidden_dim)) weight tiles
    final float[][] att;             // (worker, seq_len) attention scores, pair by pair
    final boolean tiledAttention;    // attendBlock's scratch fits ATT_SCRATCH
    final float[][] scores;          // (worker, ATT_ROWS * seq_len) a block's scores
    final float[][] valuesT;         // (worker, head_size * seq_len) a head's values, transposed
    final float[] logits;            // (min(rows, LOGIT_ROWS), vocab)
    final float[] normed;            // (dim) a row through the final norm

    /**
     * Scratch for min(rows, cacheRows) positions (no pass reaches past the cache), allocated once
     * here; OutOfMemoryError is main's exit 1.
     */
    Batch(Transformer tr, int rows, int cacheRows) {
        this.tr = tr;
        Config c = tr.c;
        this.clamped = rows;
        this.rows = rows = Math.min(rows, cacheRows);
        int wide = Math.max(c.dim, c.hiddenDim);
        x = new float[size(rows, c.dim)];
        xb = new float[x.length];
        xb2 = new float[x.length];
        q = new float[x.length];
        hb = new float[size(rows, c.hiddenDim)];
        hb2 = new float[hb.length];
        xq = new float[tr.w.hasQ8() ? size(rows, wide) : 0];
        qrow = new short[wide];
        drow = new float[wide / Q8.BLOCK + 1];
        ropeCos = new float[size(rows, c.dim / 2)];
        ropeSin = new float[ropeCos.length];
        tiles = new float[tr.pool.workers][size(GROUP, wide)];
        att = new float[tr.pool.workers][c.seqLen];
        tiledAttention = (long) (ATT_ROWS + c.headSize) * c.seqLen <= ATT_SCRATCH;
        int wks = tiledAttention ? tr.pool.workers : 0;
        scores = new float[wks][size(ATT_ROWS, c.seqLen)];
        valuesT = new float[wks][size(c.headSize, c.seqLen)];
        logits = new float[size(Math.min(rows, LOGIT_ROWS), c.vocabSize)];
        normed = new float[c.dim];
    }

    /** rows * cols as an array length, or the contract's exit 1 when no Java array can hold it. */
    private static int size(long rows, long cols) {
        long n = rows * cols;
        if (n > Integer.MAX_VALUE - 16) {
            throw new Fail(Fail.EXIT_RUNTIME, "cannot allocate a batch buffer of " + rows + " x " + cols + " floats (lower -b)");
        }
        return (int) n;
    }

    /**
     * Positions p0 .. p0 + T - 1 (T <= rows) for tokens[from .. from + T): every row's K and V
     * enter the cache before any row attends. Leaves the residual stream of each row in x.
     */
    void forward(int[] tokens, int from, int T, int p0) {
        final Config c = tr.c;
        final Weights w = tr.w;
        final Kernels k = tr.k;
        final int dim = c.dim, kvDim = c.kvDim, hs = c.headSize, kvMul = c.kvMul, hid = c.hiddenDim, half = dim / 2;
        final float scale = (float) (1.0 / Math.sqrt(hs));
        final float[] ropeFreq = tr.s.ropeFreq;

        for (int t = 0; t < T; t++) {
            float[] row = tr.s.x;  // copyRow writes a whole row from 0: stage it in the one-position buffer
            w.tokenEmbedding.copyRow(tokens[from + t], row);
            System.arraycopy(row, 0, x, t * dim, dim);
            int pos = p0 + t;
            for (int i = 0; i < dim; i += 2) {
                float angle = pos * ropeFreq[(i % hs) / 2];
                ropeCos[t * half + i / 2] = (float) Math.cos(angle);
                ropeSin[t * half + i / 2] = (float) Math.sin(angle);
            }
        }

        for (int l = 0; l < c.nLayers; l++) {
            final int layer = l;
            final float[] keys = tr.s.keyCache[l], values = tr.s.valueCache[l];

            // attention: Q, and K, V straight into the cache rows p0 .. p0 + T - 1
            rmsnormRows(xb, x, w.rmsAtt[l], T, dim);
            quantizeFor(xb, T, dim, w.wq[l], w.wk[l], w.wv[l]);
            tr.parallelFor(dim + 2 * kvDim, GROUP, (wk, r0, r1) -> {  // rows of wq, then wk, then wv
                matmulPart(wk, w.wq[layer], xb, T, q, 0, dim, 0, r0, r1);
                matmulPart(wk, w.wk[layer], xb, T, keys, p0 * kvDim, kvDim, dim, r0, r1);
                matmulPart(wk, w.wv[layer], xb, T, values, p0 * kvDim, kvDim, dim + kvDim, r0, r1);
            });
            for (int t = 0; t < T; t++) {
                rotate(q, t * dim, dim, t);
                rotate(keys, (p0 + t) * kvDim, kvDim, t);
            }

            // causal attention: blocks of (rows, head) pairs; row t reads cache positions 0 .. p0 + t
            if (tiledAttention) {
                int blocks = (T + ATT_ROWS - 1) / ATT_ROWS;
                tr.parallelFor(blocks * c.nHeads, 1, (wk, j0, j1) -> {
                    for (int j = j0; j < j1; j++) attendBlock(wk, j % c.nHeads, (j / c.nHeads) * ATT_ROWS, T, p0, keys, values);
                });
            } else {
                tr.parallelFor(T * c.nHeads, 1, (wk, j0, j1) -> {
                    float[] a = att[wk];
                    for (int j = j0; j < j1; j++) {
                        int t = j / c.nHeads, h = j % c.nHeads, pos = p0 + t;
                        int qOff = t * dim + h * hs, kvOff = (h / kvMul) * hs;
                        for (int s = 0; s <= pos; s++) a[s] = k.dot(q, qOff, keys, s * kvDim + kvOff, hs) * scale;
                        Transformer.softmax(a, pos + 1);
                        Arrays.fill(xb, qOff, qOff + hs, 0f);
                        for (int s = 0; s <= pos; s++) k.axpy(xb, qOff, a[s], values, s * kvDim + kvOff, hs);
                    }
                });
            }
            quantizeFor(xb, T, dim, w.wo[l]);
            tr.parallelFor(dim, GROUP, (wk, r0, r1) -> matmul(wk, w.wo[layer], xb, T, xb2, 0, dim, r0, r1));
            for (int i = 0; i < T * dim; i++) x[i] += xb2[i];

            // feed-forward: each worker gates its own rows, so w1 and w3 share one dispatch
            rmsnormRows(xb, x, w.rmsFfn[l], T, dim);
            quantizeFor(xb, T, dim, w.w1[l], w.w3[l]);
            tr.parallelFor(hid, GROUP, (wk, r0, r1) -> {
                matmul(wk, w.w1[layer], xb, T, hb, 0, hid, r0, r1);
                matmul(wk, w.w3[layer], xb, T, hb2, 0, hid, r0, r1);
                for (int t = 0; t < T; t++) {
                    for (int i = t * hid + r0, end = t * hid + r1; i < end; i++) {
                        float g = hb[i];
                        hb[i] = g / (1f + (float) Math.exp(-g)) * hb2[i];
                    }
                }
            });
            quantizeFor(hb, T, hid, w.w2[l]);
            tr.parallelFor(dim, GROUP, (wk, r0, r1) -> matmul(wk, w.w2[layer], hb, T, xb2, 0, dim, r0, r1));
            for (int i = 0; i < T * dim; i++) x[i] += xb2[i];
        }
    }

    /**
     * The logits of rows t0 .. t1 - 1 of the last forward (t1 - t0 <= LOGIT_ROWS) into logits,
     * row after row: the final norm, then the classifier as one product.
     */
    float[] logits(int t0, int t1) {
        Config c = tr.c;
        int n = t1 - t0, dim = c.dim;
        for (int t = t0; t < t1; t++) {
            System.arraycopy(x, t * dim, normed, 0, dim);
            Transformer.rmsnorm(xb, t - t0, normed, tr.w.rmsFinal, c.eps);
        }
        quantizeFor(xb, n, dim, tr.w.wcls);
        tr.parallelFor(c.vocabSize, GROUP, (wk, r0, r1) -> matmul(wk, tr.w.wcls, xb, n, logits, 0, c.vocabSize, r0, r1));
        return logits;
    }

    /**
     * Head h for rows t0 .. min(T, t0 + ATT_ROWS) - 1, as two products: the scores S = Q_h K_h^T
     * over positions 0 .. P - 1 (P = p0 + the block's last row + 1, the longest row's reach), a
     * causal softmax of each row (entries past a row's position set to 0), then S V_h with V_h
     * transposed into the worker's scratch so that both products are Kernels.matmul's tiles.
     * The rows before the block's last one compute a few scores they then drop.
     */
    private void attendBlock(int wk, int h, int t0, int T, int p0, float[] keys, float[] values) {
        Config c = tr.c;
        int dim = c.dim, kvDim = c.kvDim, hs = c.headSize, kvOff = (h / c.kvMul) * hs;
        int t1 = Math.min(T, t0 + ATT_ROWS), rowsHere = t1 - t0, P = p0 + t1;
        float[] sc = scores[wk], vt = valuesT[wk];
        float scale = (float) (1.0 / Math.sqrt(hs));
        tr.k.matmul(keys, kvOff, kvDim, P, q, t0 * dim + h * hs, dim, rowsHere, hs, sc, 0, P);
        for (int r = 0; r < rowsHere; r++) {
            int o = r * P, valid = p0 + t0 + r + 1;
            for (int s = 0; s < valid; s++) sc[o + s] *= scale;
            softmax(tr.k, sc, o, valid);
            Arrays.fill(sc, o + valid, o + P, 0f);
        }
        for (int s = 0; s < P; s++) {
            for (int i = 0, at = s * kvDim + kvOff; i < hs; i++) vt[i * P + s] = values[at + i];
        }
        tr.k.matmul(vt, 0, P, hs, sc, 0, P, rowsHere, P, xb, t0 * dim + h * hs, dim);
    }

    /** Transformer.softmax over a[o .. o + n), its exponentials from the kernels (vectorized). */
    private static void softmax(Kernels k, float[] a, int o, int n) {
        float max = a[o];
        for (int i = 1; i < n; i++) if (a[o + i] > max) max = a[o + i];
        float sum = k.expSum(a, o, n, max);
        for (int i = 0; i < n; i++) a[o + i] /= sum;
    }

    /** rmsnorm of rows 0 .. T - 1 of src into dst, each as Transformer.rmsnorm does one vector. */
    private void rmsnormRows(float[] dst, float[] src, float[] weight, int T, int dim) {
        for (int t = 0; t < T; t++) {
            System.arraycopy(src, t * dim, normed, 0, dim);
            Transformer.rmsnorm(dst, t, normed, weight, tr.c.eps);
        }
    }

    /** RoPE on adjacent pairs of vec[off .. off + n) at row t's position. */
    private void rotate(float[] vec, int off, int n, int t) {
        int base = t * (tr.c.dim / 2);
        for (int i = 0; i < n; i += 2) {
            float cos = ropeCos[base + i / 2], sin = ropeSin[base + i / 2];
            float v0 = vec[off + i], v1 = vec[off + i + 1];
            vec[off + i] = v0 * cos - v1 * sin;
            vec[off + i + 1] = v0 * sin + v1 * cos;
        }
    }

    /**
     * When a matrix of the group is Q8_0: rows 0 .. T - 1 of src (n wide) quantized and
     * dequantized into xq (same layout), once for the group, which its Q8_0 products read.
     */
    private void quantizeFor(float[] src, int T, int n, Matrix... group) {
        for (Matrix m : group) {
            if (m.q8()) {
                quantizeRows(src, T, n, qrow, drow, xq);
                return;
            }
        }
    }

    /** The activations m multiplies: a Q8_0 m the last quantizeFor's, every other type the float32 rows. */
    private float[] input(Matrix m, float[] plain) {
        return m.q8() ? xq : plain;
    }

    /** Rows 0 .. T - 1 of src (n wide) through Q8.quantize, one at a time, and back: dst = q * dx (exact). */
    static void quantizeRows(float[] src, int T, int n, short[] qrow, float[] drow, float[] dst) {
        for (int t = 0; t < T; t++) {
            Q8.quantize(src, t * n, n, qrow, drow);
            for (int i = 0; i < n; i++) dst[t * n + i] = qrow[i] * drow[i / Q8.BLOCK];
        }
    }

    /** The part of rows [start, end) that falls in a matrix occupying [base, base + rows). */
    private void matmulPart(int wk, Matrix m, float[] plain, int T, float[] out, int outOff,
                            int outStride, int base, int start, int end) {
        int r0 = Math.max(start - base, 0), r1 = Math.min(end - base, m.rows);
        if (r0 < r1) matmul(wk, m, plain, T, out, outOff, outStride, r0, r1);
    }

    /**
     * out[outOff + t * outStride + r] = m[r] . row t of the activations, for rows r0 .. r1 - 1
     * of m and t < T: a Q8_0 m reads what quantizeFor made (xq), the others plain.
     */
    void matmul(int wk, Matrix m, float[] plain, int T, float[] out, int outOff, int outStride, int r0, int r1) {
        final Kernels k = tr.k;
        final int n = m.cols;
        final float[] xs = input(m, plain);
        final float[] tile = tiles[wk];
        for (int g = r0; g < r1; ) {
            int b = g / m.rowsPerBlock, first = b * m.rowsPerBlock;
            int end = Math.min(Math.min(r1, g + GROUP), first + m.rowsPerBlock), count = end - g;
            float[] wa;
            int wOff;
            if (m.floats != null) {
                Loader.Floats f = m.floats[b];
                wa = f.array();
                wOff = f.start() + (g - first) * n;
            } else {
                fillTile(m.blocks[b], (g - first) * m.rowBytes, count, n, m.type, tile);
                wa = tile;
                wOff = 0;
            }
            for (int t0 = 0; t0 < T; t0 += TOKEN_BLOCK) {
                int tn = Math.min(TOKEN_BLOCK, T - t0);
                k.matmul(wa, wOff, n, count, xs, t0 * n, n, tn, n, out, outOff + t0 * outStride + g, outStride);
            }
            g = end;
        }
    }

    /**
     * count rows of n at bb[at ..] into tile as floats: float32 copied, Q8_0 as fp32(d) * q, F16
     * and BF16 converted (both exact). Scalar: a batch converts each weight once for many FMAs.
     */
    static void fillTile(ByteBuffer bb, int at, int count, int n, int type, float[] tile) {
        if (type == Matrix.F16 || type == Matrix.BF16) {
            boolean bf16 = type == Matrix.BF16;
            for (int i = 0, m = count * n; i < m; i++) tile[i] = Half.get(bb, at + 2 * i, bf16);
            return;
        }
        if (type != Q8.TYPE) {
            bb.asFloatBuffer().get(at / 4, tile, 0, count * n);
            return;
        }
        int blocks = count * (n / Q8.BLOCK);
        for (int b = 0, o = 0; b < blocks; b++, at += Q8.BLOCK_BYTES) {
            float d = Q8.scale(bb, at);
            for (int i = 0; i < Q8.BLOCK; i++) tile[o++] = d * bb.get(at + 2 + i);
        }
    }
}
