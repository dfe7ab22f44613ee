/*
 * The two runs of contract section 2: generate (prompt, then sampled tokens, printed as run.c
 * does) and logits (the raw logits after each given id, written to a file).
 */
package polyllama;

import java.io.BufferedOutputStream;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Locale;

final class Generation {
    private Generation() {}

    /** -n: 0 or more than seq_len means seq_len. */
    static int clampSteps(long steps, int seqLen) {
        return steps == 0 || steps > seqLen ? seqLen : (int) steps;
    }

    private static long mainCpuNanos() {
        return java.lang.management.ManagementFactory.getThreadMXBean().getCurrentThreadCpuTime();
    }

    /**
     * Prints the prompt and its continuation to out, as run.c's generate(), with the prompt's
     * positions run first by the batched forward pass (t.batch.rows positions at a time): only
     * the last prompt position's logits are computed, and the one-position forward takes over
     * from there.
     */
    static Stats generate(Transformer t, Tokenizer tokenizer, Sampler sampler, byte[] prompt, int steps,
                          boolean ignoreBos, OutputStream out) throws IOException {
        int[] promptTokens = tokenizer.encode(prompt, true, false);
        Stats st = new Stats();
        st.promptTokens = promptTokens.length;
        st.batch = t.batch.clamped;
        int token = promptTokens[0];
        long start = System.nanoTime(), first = -1, warm = -1;  // warm: after 16 sampled tokens
        long warmCpu = 0;  // main thread CPU time at warm, for -Dpolyllama.verbose

        long prefillCpu = mainCpuNanos();
        int nPrefill = Math.min(promptTokens.length, steps);
        float[] logits = null;
        for (int p0 = 0; p0 < nPrefill; p0 += t.batch.rows) {
            int n = Math.min(t.batch.rows, nPrefill - p0);
            t.batch.forward(promptTokens, p0, n, p0);
            st.positions += n;
            if (p0 + n == promptTokens.length) logits = t.batch.logits(n - 1, n);  // only when the whole prompt ran
        }
        st.prefilled = nPrefill;
        st.prefill = Stats.seconds(System.nanoTime() - start);
        if (nPrefill > 0 && Boolean.getBoolean("polyllama.verbose")) {  // -j 1: what a quiet core would give
            System.err.printf(Locale.ROOT, "prefill: %.4f tok per main-thread CPU second%n",
                    nPrefill / Stats.seconds(mainCpuNanos() - prefillCpu));
        }

        for (int pos = 0; pos < steps; pos++) {
            if (pos >= nPrefill) {
                logits = t.forward(token, pos);
                st.positions++;
            }
            int next;
            if (pos < promptTokens.length - 1) {
                next = promptTokens[pos + 1];  // still forcing the prompt
            } else {
                next = sampler.sample(logits, t.c.vocabSize);
                st.generatedTokens++;
                if (first < 0) first = System.nanoTime();
                if (st.generatedTokens == 17) {
                    warm = System.nanoTime();
                    warmCpu = mainCpuNanos();
                }
            }
            if (next == tokenizer.bos && !ignoreBos) break;
            byte[] piece = tokenizer.decode(token, next);
            if (Tokenizer.printable(piece)) {
                out.write(piece);
                out.flush();
            }
            token = next;
        }
        long end = System.nanoTime();
        out.write('\n');
        out.flush();
        st.ttft = Stats.seconds((first >= 0 ? first : end) - start);
        st.decode = first >= 0 ? Stats.seconds(end - first) : 0;
        if (warm >= 0 && Boolean.getBoolean("polyllama.verbose")) {
            int n = st.generatedTokens - 17;
            System.err.printf(Locale.ROOT, "warmed decode (after 16 sampled tokens): %.4f tok/s, %.4f per main-thread CPU second%n",
                    n / Stats.seconds(end - warm), n / Stats.seconds(mainCpuNanos() - warmCpu));
        }
        return st;
    }

    /**
     * Writes the logits after each of ids as float32 little-endian rows, streamed to path: the
     * ids through the batched forward pass, t.batch.rows at a time, every row's logits.
     */
    static Stats logits(Transformer t, int[] ids, String path) {
        Stats st = new Stats();
        st.promptTokens = ids.length;
        st.batch = t.batch.clamped;
        int vocab = t.c.vocabSize;
        ByteBuffer row = ByteBuffer.allocate(4 * vocab).order(ByteOrder.LITTLE_ENDIAN);
        long start = System.nanoTime();
        try (OutputStream out = new BufferedOutputStream(new FileOutputStream(path), 1 << 16)) {
            for (int p0 = 0; p0 < ids.length; p0 += t.batch.rows) {
                int n = Math.min(t.batch.rows, ids.length - p0);
                t.batch.forward(ids, p0, n, p0);
                st.positions += n;
                for (int r0 = 0; r0 < n; r0 += Batch.LOGIT_ROWS) {
                    int r1 = Math.min(n, r0 + Batch.LOGIT_ROWS);
                    float[] logits = t.batch.logits(r0, r1);
                    for (int r = 0; r < r1 - r0; r++) {
                        row.clear();
                        row.asFloatBuffer().put(logits, r * vocab, vocab);
                        out.write(row.array(), 0, 4 * vocab);
                    }
                }
            }
        } catch (IOException e) {
            throw new Fail(Fail.EXIT_RUNTIME, path + ": cannot write: " + e.getMessage());
        }
        st.ttft = st.prefill = Stats.seconds(System.nanoTime() - start);
        st.prefilled = ids.length;
        return st;
    }
}
