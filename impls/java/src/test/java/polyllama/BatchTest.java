package polyllama;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static polyllama.Fixtures.modelFile;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Random;
import org.junit.jupiter.api.Test;

/** The batched forward pass: its products against plain loops, its logits against the one-position ones. */
class BatchTest {
    /** Each element within float32 rounding of the sum of its terms' magnitudes. */
    private static void assertClose(double want, double scaleOfTerms, float got, String what) {
        assertTrue(Math.abs(got - want) <= 1e-5 * (1 + scaleOfTerms), what + ": " + got + " vs " + want);
    }

    /** Kernels.matmul, Vector API and scalar, against a double loop: odd T, rows not a multiple of the tile, d with tails. */
    @Test
    void matmulIsThePlainProduct() {
        Random rnd = new Random(5);
        for (Kernels k : new Kernels[] {Kernels.pick(), new ScalarKernels()}) {
            for (int d : new int[] {64, 96, 172}) {
                for (int rows : new int[] {1, 6, 13}) {
                    for (int T : new int[] {1, 7, 33}) {
                        int wStride = d + 3, xStride = d + 5, outStride = rows + 2, wOff = 2, xOff = 1, outOff = 3;
                        float[] w = new float[wOff + rows * wStride], x = new float[xOff + T * xStride];
                        for (int i = 0; i < w.length; i++) w[i] = (float) rnd.nextGaussian();
                        for (int i = 0; i < x.length; i++) x[i] = (float) rnd.nextGaussian();
                        float[] out = new float[outOff + T * outStride];
                        k.matmul(w, wOff, wStride, rows, x, xOff, xStride, T, d, out, outOff, outStride);
                        for (int t = 0; t < T; t++) {
                            for (int r = 0; r < rows; r++) {
                                double s = 0, mag = 0;
                                for (int i = 0; i < d; i++) {
                                    double p = (double) w[wOff + r * wStride + i] * x[xOff + t * xStride + i];
                                    s += p;
                                    mag += Math.abs(p);
                                }
                                assertClose(s, mag, out[outOff + t * outStride + r],
                                        k.name() + " d=" + d + " rows=" + rows + " T=" + T + " [" + t + "," + r + "]");
                            }
                        }
                    }
                }
            }
        }
    }

    /**
     * The Q8_0 batched product (weights dequantized by Batch.fillTile, activation rows quantized
     * by Batch.quantizeRows, then Kernels.matmul) against the contract's formula written out:
     * per block the exact isum times fp32(dw) * dx, the blocks added.
     */
    @Test
    void q8MatmulIsTheContractsFormula() {
        Random rnd = new Random(6);
        int blocks = 3, n = blocks * Q8.BLOCK, rowBytes = blocks * Q8.BLOCK_BYTES;
        for (Kernels k : new Kernels[] {Kernels.pick(), new ScalarKernels()}) {
            for (int rows : new int[] {1, 6, 13}) {
                for (int T : new int[] {1, 7, 33}) {
                    byte[] wq = new byte[rows * rowBytes];
                    rnd.nextBytes(wq);
                    ByteBuffer wb = ByteBuffer.wrap(wq).order(ByteOrder.LITTLE_ENDIAN);
                    for (int r = 0; r < rows; r++) {
                        for (int b = 0; b < blocks; b++) {
                            wb.putShort(r * rowBytes + b * Q8.BLOCK_BYTES, (short) Q8.floatToHalf((float) Math.abs(rnd.nextGaussian() * 0.02)));
                        }
                    }
                    float[] x = new float[T * n];
                    for (int i = 0; i < x.length; i++) x[i] = (float) rnd.nextGaussian();
                    float[] tile = new float[rows * n], xq = new float[T * n], out = new float[T * rows];
                    Batch.fillTile(wb, 0, rows, n, Q8.TYPE, tile);
                    Batch.quantizeRows(x, T, n, new short[n], new float[blocks], xq);
                    k.matmul(tile, 0, n, rows, xq, 0, n, T, n, out, 0, rows);
                    short[] qx = new short[n];
                    float[] dx = new float[blocks];
                    for (int t = 0; t < T; t++) {
                        float[] row = new float[n];
                        System.arraycopy(x, t * n, row, 0, n);
                        Q8.quantize(row, n, qx, dx);
                        for (int r = 0; r < rows; r++) {
                            float want = 0;
                            double mag = 0;
                            for (int b = 0; b < blocks; b++) {
                                int at = r * rowBytes + b * Q8.BLOCK_BYTES;
                                long isum = 0;
                                for (int i = 0; i < Q8.BLOCK; i++) isum += wq[at + 2 + i] * qx[b * Q8.BLOCK + i];
                                float s = Q8.halfToFloat(wb.getShort(at) & 0xffff) * dx[b];
                                want += (float) isum * s;
                                for (int i = 0; i < Q8.BLOCK; i++) mag += Math.abs(wq[at + 2 + i] * qx[b * Q8.BLOCK + i] * (double) s);
                            }
                            assertClose(want, mag, out[t * rows + r], k.name() + " rows=" + rows + " T=" + T + " [" + t + "," + r + "]");
                        }
                    }
                }
            }
        }
    }

    /**
     * stories260K: every position's batched logits at -b 1, 7 and 64 (more than the 40 ids: one
     * batch) and -j 1 and 2 against the one-position forward's, within the contract's float32
     * tolerance and with the same argmax.
     */
    @Test
    void stories260KBatchedLogitsAreTheOnePositionOnes() throws IOException {
        Model m = Model.read(modelFile("stories260K.bin"));
        Config c = m.config;
        int n = 40;
        int[] ids = new int[n];
        for (int i = 0; i < n; i++) ids[i] = i == 0 ? 1 : (7 * i + 300) % c.vocabSize;
        float[][] want = new float[n][];
        Transformer one = new Transformer(m, new Pool(1), Kernels.pick(), 1);
        for (int pos = 0; pos < n; pos++) want[pos] = one.forward(ids[pos], pos).clone();
        for (int threads : new int[] {1, 2}) {
            for (int batch : new int[] {1, 7, 64}) {
                Transformer t = new Transformer(m, new Pool(threads), Kernels.pick(), batch);
                for (int p0 = 0; p0 < n; p0 += t.batch.rows) {
                    int rows = Math.min(t.batch.rows, n - p0);
                    t.batch.forward(ids, p0, rows, p0);
                    for (int r = 0; r < rows; r++) {
                        float[] got = t.batch.logits(r, r + 1);
                        float[] ref = want[p0 + r];
                        float max = 0, diff = 0;
                        int argRef = 0, argGot = 0;
                        for (int v = 0; v < c.vocabSize; v++) {
                            max = Math.max(max, Math.abs(ref[v]));
                            diff = Math.max(diff, Math.abs(ref[v] - got[v]));
                            if (ref[v] > ref[argRef]) argRef = v;
                            if (got[v] > got[argGot]) argGot = v;
                        }
                        String what = "-b " + batch + " -j " + threads + " position " + (p0 + r);
                        assertTrue(diff <= 1e-4f * (1 + max), what + ": " + diff);
                        assertEquals(argRef, argGot, what);
                    }
                }
            }
        }
    }
}
