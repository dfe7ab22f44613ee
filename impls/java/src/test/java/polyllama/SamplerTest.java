package polyllama;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;

import org.junit.jupiter.api.Test;

/** Sampler: llama2.c's xorshift, argmax, multinomial and top-p against the reference's draws. */
class SamplerTest {
    @Test
    void xorshiftDrawsMatchTheReference() {
        Sampler s = new Sampler(1f, 0.9f, 42);
        long[] want = {1456360119L, 3359763283L, 3393612768L, 4054632243L, 3283045847L};
        for (long w : want) assertEquals(w, s.nextU32() & 0xffffffffL);
        s = new Sampler(1f, 0.9f, 42);
        assertEquals(0.3390852212905884f, s.nextF32());
        assertEquals(0.7822558283805847f, s.nextF32());
    }

    static final float[] LOGITS = {1.0f, 3.0f, 2.0f, 3.0f, 0.5f, -1.0f};

    static int[] draws(float temperature, float topp, long seed, int n) {
        Sampler s = new Sampler(temperature, topp, seed);
        int[] out = new int[n];
        for (int i = 0; i < n; i++) out[i] = s.sample(LOGITS.clone(), LOGITS.length);
        return out;
    }

    @Test
    void toppFallsBackToArgmaxWhenNothingPassesTheCutoff() {
        float[] flat = new float[300];  // uniform: every prob 1/300 < (1 - 1e-6) / 299
        flat[7] = 1e-6f;                // a hair above the rest, still under the cutoff
        Sampler s = new Sampler(1f, 1e-6f, 3);
        assertEquals(7, s.sample(flat, flat.length));
    }

    @Test
    void argmaxTakesTheFirstMaximum() {
        assertArrayEquals(new int[] {1, 1, 1}, draws(0f, 0.9f, 1, 3));
    }

    @Test
    void samplesMatchTheReference() {
        // expected draws from orchestrator/reference/sampler.py with the same logits and seeds
        assertArrayEquals(new int[] {1, 3, 3, 2, 3, 3, 1, 3, 1, 3, 3, 1}, draws(1f, 0.9f, 42, 12));
        assertArrayEquals(new int[] {1, 3, 3, 3, 3, 3, 1, 1, 1, 3, 1, 1}, draws(1f, 0.5f, 42, 12));
        assertArrayEquals(new int[] {1, 3, 3, 3, 3, 3, 1, 2, 1, 3, 1, 1}, draws(1f, 1.0f, 42, 12));
        assertArrayEquals(new int[] {1, 3, 3, 3, 3, 3, 1, 2, 1, 3, 1, 1}, draws(1f, 0.0f, 42, 12));
        assertArrayEquals(new int[] {3, 2, 1, 1, 1, 1, 3, 1, 1, 3, 3, 3}, draws(0.7f, 0.95f, 7, 12));
    }
}
