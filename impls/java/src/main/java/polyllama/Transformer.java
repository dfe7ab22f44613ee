/*
 * The forward pass, as run.c's forward(): one position through every layer, each matmul and the
 * attention heads split across the pool. A Q8_0 matrix (GGUF) multiplies an activation quantized
 * once per group of products that share it (q/k/v; w1/w3; wo, w2, the classifier each alone),
 * on the calling thread before the group's dispatch. An F16 or BF16 matrix multiplies the float32
 * activation as it is, its weights converted exactly as they are read (contract section 4 says
 * why not llama.cpp's rounding of the activation). RoPE's base and the norms' epsilon are the
 * model's (Config).
 */
package polyllama;

import java.lang.management.CompilationMXBean;
import java.lang.management.ManagementFactory;
import java.util.Arrays;
import java.util.concurrent.atomic.AtomicInteger;

final class Transformer {
    final Config c;
    final Weights w;
    final RunState s;
    final Pool pool;
    final Kernels k;
    final Batch batch;   // the batched forward pass and its scratch, for min(batch, seq_len) positions

    Transformer(Model model, Pool pool, Kernels kernels) {
        this(model, pool, kernels, 512);
    }

    Transformer(Model model, Pool pool, Kernels kernels, long batch) {
        this(model, pool, kernels, batch, model.config.seqLen);
    }

    /**
     * batch: -b, at least 1; above seq_len it is seq_len. cacheRows: the positions the run can
     * reach (1 .. seq_len), which the KV cache holds; the batch scratch needs no more rows.
     */
    Transformer(Model model, Pool pool, Kernels kernels, long batch, int cacheRows) {
        this.c = model.config;
        this.w = model.weights;
        this.s = new RunState(c, pool.workers, cacheRows);
        this.pool = pool;
        this.k = kernels;
        this.batch = new Batch(this, (int) Math.min(batch, c.seqLen), cacheRows);
    }

    /** Work over [0, total) in chunks: body(worker, start, end) for each chunk a worker claims. */
    interface Rows {
        void run(int worker, int start, int end);
    }

    private final AtomicInteger nextChunk = new AtomicInteger();

    /**
     * Splits [0, total) across the pool. Workers claim chunks (about four each, even sizes)
     * from a shared counter rather than fixed shares, so a worker that the OS delays on a
     * busy machine does not hold up the others.
     */
    void parallelFor(int total, int minChunk, Rows body) {
        int workers = pool.workers;
        if (workers == 1) {
            body.run(0, 0, total);
            return;
        }
        int chunk = Math.max(minChunk, (total / (4 * workers) + 1) & ~1);
        nextChunk.set(0);
        pool.run((wk, n) -> {
            for (int start; (start = nextChunk.getAndAdd(chunk)) < total; ) {
                body.run(wk, start, Math.min(total, start + chunk));
            }
        });
    }

    /**
     * out[outOff + r] = m[r] . x for rows r in [r0, r1), block by block; a Q8_0 m reads x as the
     * last quantizeFor left it in s.xq and s.xd; an F16 or BF16 m reads x itself.
     */
    void matvec(Matrix m, float[] x, float[] out, int outOff, int r0, int r1) {
        while (r0 < r1) {
            int b = r0 / m.rowsPerBlock, first = b * m.rowsPerBlock;
            int end = Math.min(r1, first + m.rowsPerBlock), at = (r0 - first) * m.rowBytes;
            if (m.floats != null) {
                Loader.Floats f = m.floats[b];
                k.matvec(f.array(), f.start() + (r0 - first) * m.cols, end - r0, x, m.cols, out, outOff + r0);
            } else if (m.q8()) k.matvecQ8(m.blocks[b], at, end - r0, s.xq, s.xd, m.cols, out, outOff + r0);
            else if (m.type == Matrix.F16) k.matvecF16(m.blocks[b], at, end - r0, x, m.cols, out, outOff + r0);
            else if (m.type == Matrix.BF16) k.matvecBF16(m.blocks[b], at, end - r0, x, m.cols, out, outOff + r0);
            else k.matvec(m.blocks[b], at, end - r0, x, m.cols, out, outOff + r0);
            r0 = end;
        }
    }

    /** x[0 .. n) quantized into s.xq and s.xd when a matrix of the group about to read it is Q8_0. */
    void quantizeFor(float[] x, int n, Matrix... group) {
        for (Matrix m : group) {
            if (m.q8()) {
                Q8.quantize(x, n, s.xq, s.xd);
                return;
            }
        }
    }

    /** The part of rows [start, end) that falls in a matrix occupying [base, base + rows). */
    void matvecPart(Matrix m, float[] x, float[] out, int outOff, int base, int start, int end) {
        int r0 = Math.max(start - base, 0), r1 = Math.min(end - base, m.rows);
        if (r0 < r1) matvec(m, x, out, outOff, r0, r1);
    }

    static void rmsnorm(float[] out, float[] x, float[] weight, float eps) {
        int n = x.length;
        float ss = 0;
        for (int i = 0; i < n; i++) ss += x[i] * x[i];
        ss = ss / n + eps;
        ss = (float) (1.0 / Math.sqrt(ss));
        for (int i = 0; i < n; i++) out[i] = weight[i] * (ss * x[i]);
    }

    /** rmsnorm of x into row `row` of out (rows of x.length): the same arithmetic as rmsnorm. */
    static void rmsnorm(float[] out, int row, float[] x, float[] weight, float eps) {
        int n = x.length, o = row * n;
        float ss = 0;
        for (int i = 0; i < n; i++) ss += x[i] * x[i];
        ss = ss / n + eps;
        ss = (float) (1.0 / Math.sqrt(ss));
        for (int i = 0; i < n; i++) out[o + i] = weight[i] * (ss * x[i]);
    }

    static void softmax(float[] x, int n) {
        float max = x[0];
        for (int i = 1; i < n; i++) if (x[i] > max) max = x[i];
        float sum = 0;
        for (int i = 0; i < n; i++) {
            x[i] = (float) Math.exp(x[i] - max);
            sum += x[i];
        }
        for (int i = 0; i < n; i++) x[i] /= sum;
    }

    /** RoPE on adjacent pairs of vec[off .. off + n). */
    void rotate(float[] vec, int off, int n) {
        for (int i = 0; i < n; i += 2) {
            float cos = s.ropeCos[i / 2], sin = s.ropeSin[i / 2];
            float v0 = vec[off + i], v1 = vec[off + i + 1];
            vec[off + i] = v0 * cos - v1 * sin;
            vec[off + i + 1] = v0 * sin + v1 * cos;
        }
    }

    /**
     * Runs forward passes until the JIT has compiled the forward pass, so that decode_s times
     * compiled code (the time goes to load_s, as Kernels.warmUp's does). Otherwise the first
     * tokens run in the interpreter and C1's code while C2's threads take cores from the pool:
     * at the 15M shape that was a third of the decode (README, "Performance levers"). Done once
     * the JVM's compilation time has stood still for 200 ms after at least 8 passes, or after 3 s.
     * Each pass also runs the batched pass (Batch) over up to 8 positions and its classifier,
     * so that the prefill's code is compiled too. Positions 0-7 only: the generation rewrites a
     * cache row before it reads it. Returns the number of passes it ran.
     */
    int warmUp() {
        CompilationMXBean jit = ManagementFactory.getCompilationMXBean();
        boolean timed = jit != null && jit.isCompilationTimeMonitoringSupported();
        long start = System.nanoTime(), quietSince = start, compiled = -1;
        int[] ones = new int[Math.min(8, batch.rows)];
        Arrays.fill(ones, 1 % c.vocabSize);
        for (int pass = 1; ; pass++) {
            forward(1 % c.vocabSize, pass % Math.min(8, s.cacheRows));
            batch.forward(ones, 0, ones.length, 0);  // the prefill's code too, at positions 0 .. 7
            batch.logits(ones.length - 1, ones.length);
            long now = System.nanoTime();
            if (now - start > 3_000_000_000L || (!timed && pass >= 64)) return pass;
            long t = timed ? jit.getTotalCompilationTime() : 0;
            if (t != compiled) {
                compiled = t;
                quietSince = now;
            } else if (pass >= 8 && now - quietSince > 200_000_000L) {
                return pass;
            }
        }
    }

    /** The logits (vocab) after token at pos; the returned array is reused by the next call. */
    float[] forward(int token, int pos) {
        final Config c = this.c;
        final Weights w = this.w;
        final RunState s = this.s;
        final int dim = c.dim, kvDim = c.kvDim, hs = c.headSize, kvMul = c.kvMul;
        final float scale = (float) (1.0 / Math.sqrt(hs));

        w.tokenEmbedding.copyRow(token, s.x);
        for (int i = 0; i < dim; i += 2) {
            float angle = pos * s.ropeFreq[(i % hs) / 2];
            s.ropeCos[i / 2] = (float) Math.cos(angle);
            s.ropeSin[i / 2] = (float) Math.sin(angle);
        }

        for (int l = 0; l < c.nLayers; l++) {
            final int layer = l;
            final float[] keys = s.keyCache[l], values = s.valueCache[l];
            final int cacheRow = pos * kvDim;  // this position's row in (seq_len, kv_dim)

            // attention: q, and k, v straight into the cache row
            rmsnorm(s.xb, s.x, w.rmsAtt[l], c.eps);
            quantizeFor(s.xb, dim, w.wq[l], w.wk[l], w.wv[l]);
            parallelFor(dim + 2 * kvDim, 16, (wk, r0, r1) -> {  // rows of wq, then wk, then wv
                matvecPart(w.wq[layer], s.xb, s.q, 0, 0, r0, r1);
                matvecPart(w.wk[layer], s.xb, keys, cacheRow, dim, r0, r1);
                matvecPart(w.wv[layer], s.xb, values, cacheRow, dim + kvDim, r0, r1);
            });
            rotate(s.q, 0, dim);
            rotate(keys, cacheRow, kvDim);

            // the workers claim heads one at a time; query head h reads KV head h / kv_mul
            parallelFor(c.nHeads, 1, (wk, h0, h1) -> {
                float[] att = s.att[wk] != null ? s.att[wk] : (s.att[wk] = new float[c.seqLen]);
                for (int h = h0; h < h1; h++) {
                    int qOff = h * hs, kvOff = (h / kvMul) * hs;
                    for (int t = 0; t <= pos; t++) {
                        att[t] = k.dot(s.q, qOff, keys, t * kvDim + kvOff, hs) * scale;
                    }
                    softmax(att, pos + 1);
                    Arrays.fill(s.xb, qOff, qOff + hs, 0f);
                    for (int t = 0; t <= pos; t++) {
                        k.axpy(s.xb, qOff, att[t], values, t * kvDim + kvOff, hs);
                    }
                }
            });
            quantizeFor(s.xb, dim, w.wo[l]);
            parallelFor(dim, 16, (wk, r0, r1) -> matvec(w.wo[layer], s.xb, s.xb2, 0, r0, r1));
            for (int i = 0; i < dim; i++) s.x[i] += s.xb2[i];

            // feed-forward: each worker gates its own rows, so w1 and w3 share one dispatch
            rmsnorm(s.xb, s.x, w.rmsFfn[l], c.eps);
            quantizeFor(s.xb, dim, w.w1[l], w.w3[l]);
            parallelFor(c.hiddenDim, 16, (wk, r0, r1) -> {
                matvec(w.w1[layer], s.xb, s.hb, 0, r0, r1);
                matvec(w.w3[layer], s.xb, s.hb2, 0, r0, r1);
                for (int i = r0; i < r1; i++) {
                    float g = s.hb[i];
                    s.hb[i] = g / (1f + (float) Math.exp(-g)) * s.hb2[i];
                }
            });
            quantizeFor(s.hb, c.hiddenDim, w.w2[l]);
            parallelFor(dim, 16, (wk, r0, r1) -> matvec(w.w2[layer], s.hb, s.xb2, 0, r0, r1));
            for (int i = 0; i < dim; i++) s.x[i] += s.xb2[i];
        }

        rmsnorm(s.x, s.x, w.rmsFinal, c.eps);
        quantizeFor(s.x, dim, w.wcls);
        parallelFor(c.vocabSize, 16, (wk, r0, r1) -> matvec(w.wcls, s.x, s.logits, 0, r0, r1));
        return s.logits;
    }
}
