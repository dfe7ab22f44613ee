/*
 * The transformer's weights, as run.c's TransformerWeights: matrices (float32, or a GGUF's Q8_0, F16, BF16)
 * stay in the mapped file (or in heap buffers read from it, Loader); the small RMSNorm vectors
 * are copied to arrays.
 */
package polyllama;

final class Weights {
    Matrix tokenEmbedding;           // (vocab, dim)
    float[][] rmsAtt;                // (layer, dim)
    Matrix[] wq;                     // (layer, dim, n_heads * head_size)
    Matrix[] wk;                     // (layer, kv_dim, dim)
    Matrix[] wv;                     // (layer, kv_dim, dim)
    Matrix[] wo;                     // (layer, dim, n_heads * head_size)
    float[][] rmsFfn;                // (layer, dim)
    Matrix[] w1;                     // (layer, hidden_dim, dim)
    Matrix[] w2;                     // (layer, dim, hidden_dim)
    Matrix[] w3;                     // (layer, hidden_dim, dim)
    float[] rmsFinal;                // (dim)
    Matrix wcls;                     // (vocab, dim): token_embedding when shared

    Weights(int layers) {
        rmsAtt = new float[layers][];
        rmsFfn = new float[layers][];
        wq = new Matrix[layers]; wk = new Matrix[layers]; wv = new Matrix[layers]; wo = new Matrix[layers];
        w1 = new Matrix[layers]; w2 = new Matrix[layers]; w3 = new Matrix[layers];
    }

    /** Whether any matrix is Q8_0 (a GGUF's; the kernels to warm up). */
    boolean hasQ8() {
        return has(Q8.TYPE);
    }

    /** Whether any matrix has this type (Matrix.F32, F16, BF16 or Q8.TYPE). */
    boolean has(int type) {
        boolean any = tokenEmbedding.type == type || wcls.type == type;
        for (Matrix[] ms : new Matrix[][] {wq, wk, wv, wo, w1, w2, w3}) {
            for (Matrix m : ms) any |= m.type == type;
        }
        return any;
    }
}
