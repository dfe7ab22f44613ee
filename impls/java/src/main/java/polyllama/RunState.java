/*
 * The run state, as run.c's RunState: the activations of the current position and the KV cache
 * of all positions so far, allocated once from the validated config, the cache for the positions
 * the run can reach (its steps or -k ids), not the whole context.
 */
package polyllama;

final class RunState {
    final float[] x;              // (dim) the residual stream
    final float[] xb;             // (dim) the normed input of a block, then attention's output
    final float[] xb2;            // (dim) a block's output before the residual add
    final float[] hb;             // (hidden_dim) silu(w1 x) * (w3 x)
    final float[] hb2;            // (hidden_dim) w3 x
    final float[] q;              // (dim) the query of every head
    final float[][] att;          // (worker, seq_len) attention scores, a row made by each worker on first use
    final float[] logits;         // (vocab)
    final short[] xq;             // (max(dim, hidden_dim)) the activation a Q8_0 product reads, quantized
    final float[] xd;             // (max(dim, hidden_dim) / 32) its blocks' scales
    final int cacheRows;          // positions the KV cache holds
    final float[][] keyCache;     // (layer, cacheRows * kv_dim)
    final float[][] valueCache;   // (layer, cacheRows * kv_dim)
    final float[] ropeFreq;       // (head_size / 2) 1 / theta^(2i / head_size)
    final float[] ropeCos, ropeSin; // (dim / 2) this position's rotation of each pair

    /** cacheRows: at most seq_len, checked against the 4 GiB limit (Config.checkKvCache). */
    RunState(Config c, int workers, int cacheRows) {
        x = new float[c.dim];
        xb = new float[c.dim];
        xb2 = new float[c.dim];
        hb = new float[c.hiddenDim];
        hb2 = new float[c.hiddenDim];
        q = new float[c.dim];
        att = new float[workers][];
        logits = new float[c.vocabSize];
        xq = new short[Math.max(c.dim, c.hiddenDim)];
        xd = new float[xq.length / Q8.BLOCK];
        this.cacheRows = cacheRows;
        keyCache = new float[c.nLayers][cacheRows * c.kvDim];
        valueCache = new float[c.nLayers][cacheRows * c.kvDim];
        ropeFreq = new float[c.headSize / 2];
        double theta = (float) c.theta;  // the reference takes the base as a float32
        for (int i = 0; i < c.headSize; i += 2) {
            ropeFreq[i / 2] = (float) (1.0 / Math.pow(theta, (float) i / (float) c.headSize));
        }
        ropeCos = new float[c.dim / 2];
        ropeSin = new float[c.dim / 2];
    }
}
