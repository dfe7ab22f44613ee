/*
 * llama2.c's own checkpoints: v0 (legacy, `export.py --version 0`) and v1 (`--version 1`), fp32.
 * Both are a header, seven int32 hyperparameters and the tensors back to back; one header path
 * reads either, then the tensors are mapped in the version's order. An instance walks the file
 * from the end of the header, one tensor after another.
 */
package polyllama;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;

final class Checkpoint {
    static final int V1_MAGIC = 0x616b3432, V1_HEADER = 256, V0_HEADER = 28;

    private final Loader load;
    private long offset;   // where the next tensor starts

    private Checkpoint(Loader load, long offset) {
        this.load = load;
        this.offset = offset;
    }

    // ============================================================================================
    // Header: v0 is 7 x int32 (vocab_size < 0: unshared classifier); v1 is magic, version,
    // 7 x int32, the shared_classifier byte and zero padding to 256 bytes

    static Model read(String path, FileChannel ch, boolean v1, boolean onHeap) throws IOException {
        int headerBytes = v1 ? V1_HEADER : V0_HEADER;
        ByteBuffer h = Io.readAt(ch, 0, headerBytes);
        if (h.remaining() < headerBytes) {
            throw new FormatError(path, "truncated: " + h.remaining() + " bytes, a " + (v1 ? "v1" : "v0")
                    + " header needs " + headerBytes);
        }
        if (v1 && h.getInt(4) != 1) {
            throw new FormatError(path, "unsupported llama2.c format version " + h.getInt(4) + " (only 0 and 1 are fp32)");
        }
        int first = v1 ? 8 : 0;  // the seven hyperparameters
        long[] v = new long[7];
        for (int i = 0; i < 7; i++) v[i] = h.getInt(first + 4 * i);
        boolean shared;
        if (v1) {
            int flag = h.get(36) & 0xff;
            if (flag > 1) throw new FormatError(path, "shared_classifier flag is " + flag + ", expected 0 or 1");
            shared = flag == 1;
        } else {
            shared = v[5] > 0;
            v[5] = Math.abs(v[5]);  // negative: unshared classifier
        }
        Config c = Config.validated(path, v[0], v[1], v[2], v[3], v[4], v[5], v[6], shared);
        long freqFloats = v1 ? 0 : 2L * c.seqLen * (c.headSize / 2);  // v0's legacy RoPE tables
        checkSize(path, ch.size(), headerBytes + 4 * (c.weightCount() + freqFloats), c);

        Checkpoint at = new Checkpoint(new Loader(ch, onHeap, 4 * c.weightCount(), 0), headerBytes);
        return new Model(c, v1 ? at.mapV1(c) : at.mapV0(c, freqFloats), null);
    }

    /** The file holds exactly the header and the tensors: truncated and oversized are both errors. */
    static void checkSize(String path, long actual, long expected, Config c) {
        if (actual != expected) {
            String kind = actual < expected ? "truncated" : "oversized";
            throw new FormatError(path, kind + ": file is " + actual + " bytes, header (" + c.describe()
                    + ") implies " + expected);
        }
    }

    // ============================================================================================
    // Tensors, in each version's order

    private Weights mapV0(Config c, long freqFloats) throws IOException {
        Weights w = new Weights(c.nLayers);
        int L = c.nLayers, d = c.dim;
        w.tokenEmbedding = matrix(c.vocabSize, d);
        w.rmsAtt = vectors(L, d);
        w.wq = perLayer(L, d, d);
        w.wk = perLayer(L, c.kvDim, d);
        w.wv = perLayer(L, c.kvDim, d);
        w.wo = perLayer(L, d, d);
        w.rmsFfn = vectors(L, d);
        w.w1 = perLayer(L, c.hiddenDim, d);
        w.w2 = perLayer(L, d, c.hiddenDim);
        w.w3 = perLayer(L, c.hiddenDim, d);
        w.rmsFinal = matrix(1, d).toArray();
        offset += 4 * freqFloats;  // legacy freq_cis_real/imag: RoPE is computed instead
        w.wcls = c.sharedClassifier ? w.tokenEmbedding : matrix(c.vocabSize, d);
        return w;
    }

    private Weights mapV1(Config c) throws IOException {
        Weights w = new Weights(c.nLayers);
        int L = c.nLayers, d = c.dim;
        w.rmsAtt = vectors(L, d);
        w.rmsFfn = vectors(L, d);
        w.rmsFinal = matrix(1, d).toArray();
        w.tokenEmbedding = matrix(c.vocabSize, d);
        w.wq = perLayer(L, d, d);
        w.wk = perLayer(L, c.kvDim, d);
        w.wv = perLayer(L, c.kvDim, d);
        w.wo = perLayer(L, d, d);
        w.w1 = perLayer(L, c.hiddenDim, d);
        w.w2 = perLayer(L, d, c.hiddenDim);
        w.w3 = perLayer(L, c.hiddenDim, d);
        w.wcls = c.sharedClassifier ? w.tokenEmbedding : matrix(c.vocabSize, d);
        return w;
    }

    private Matrix matrix(int rows, int cols) throws IOException {
        Matrix m = new Matrix(load, offset, rows, cols);
        offset += 4L * rows * cols;
        return m;
    }

    private Matrix[] perLayer(int layers, int rows, int cols) throws IOException {
        Matrix[] out = new Matrix[layers];
        for (int l = 0; l < layers; l++) out[l] = matrix(rows, cols);
        return out;
    }

    private float[][] vectors(int layers, int n) throws IOException {
        float[][] out = new float[layers][];
        for (int l = 0; l < layers; l++) out[l] = matrix(1, n).toArray();
        return out;
    }
}
