/*
 * The sampler, as run.c's: argmax at temperature 0, otherwise a multinomial or top-p draw over
 * llama2.c's xorshift RNG (contract section 7), so a seed gives the reference's text.
 */
package polyllama;

import java.util.Arrays;

final class Sampler {
    final float temperature;
    final float topp;
    long state;   // the xorshift state, a uint64 in a long
    private long[] order;

    Sampler(float temperature, float topp, long seed) {
        this.temperature = temperature;
        this.topp = topp;
        this.state = seed;
    }

    int nextU32() {
        state ^= state >>> 12;
        state ^= state << 25;
        state ^= state >>> 27;
        return (int) ((state * 0x2545F4914F6CDD1DL) >>> 32);
    }

    float nextF32() {
        return (nextU32() >>> 8) / 16777216.0f;
    }

    static int argmax(float[] x, int n) {
        int best = 0;
        for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;  // the first maximum wins
        return best;
    }

    static int sampleMult(float[] probs, int n, float coin) {
        float cdf = 0;
        for (int i = 0; i < n; i++) {
            cdf += probs[i];
            if (coin < cdf) return i;
        }
        return n - 1;
    }

    int sampleTopp(float[] probs, int n, float coin) {
        // keep the ids that can matter, sorted by probability descending, then id ascending:
        // one long per id, (bits of a non-negative float, complemented) above (id)
        float cutoff = (1.0f - topp) / (n - 1);
        if (order == null || order.length < n) order = new long[n];
        int m = 0;
        for (int i = 0; i < n; i++) {
            if (probs[i] >= cutoff) order[m++] = ((long) (0x7FFFFFFF - Float.floatToIntBits(probs[i])) << 32) | i;
        }
        if (m == 0) return argmax(probs, n);  // a flat distribution and a tiny top-p
        Arrays.sort(order, 0, m);
        float cum = 0;
        int last = m - 1;
        for (int i = 0; i < m; i++) {
            cum += probs[(int) order[i]];
            if (cum > topp) {
                last = i;
                break;
            }
        }
        float r = coin * cum;
        float cdf = 0;
        for (int i = 0; i <= last; i++) {
            cdf += probs[(int) order[i]];
            if (r < cdf) return (int) order[i];
        }
        return (int) order[last];
    }

    int sample(float[] logits, int n) {
        if (temperature == 0f) return argmax(logits, n);
        for (int i = 0; i < n; i++) logits[i] /= temperature;
        Transformer.softmax(logits, n);
        float coin = nextF32();
        if (topp <= 0 || topp >= 1) return sampleMult(logits, n, coin);
        return sampleTopp(logits, n, coin);
    }
}
