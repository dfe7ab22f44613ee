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

    /** Prints the prompt and its continuation to out, as run.c's generate(). */
    static Stats generate(Transformer t, Tokenizer tokenizer, Sampler sampler, byte[] prompt, int steps,
                          boolean ignoreBos, OutputStream out) throws IOException {
        int[] promptTokens = tokenizer.encode(prompt, true, false);
        Stats st = new Stats();
        st.promptTokens = promptTokens.length;
        int token = promptTokens[0];
        long start = System.nanoTime(), first = -1, warm = -1;  // warm: after 16 sampled tokens
        long warmCpu = 0;  // main thread CPU time at warm, for -Dpolyllama.verbose
        for (int pos = 0; pos < steps; pos++) {
            float[] logits = t.forward(token, pos);
            st.positions++;
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
            if (next == Tokenizer.BOS && !ignoreBos) break;
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

    /** Writes the logits after each of ids as float32 little-endian rows, streamed to path. */
    static Stats logits(Transformer t, int[] ids, String path) {
        Stats st = new Stats();
        st.promptTokens = ids.length;
        int vocab = t.c.vocabSize;
        ByteBuffer row = ByteBuffer.allocate(4 * vocab).order(ByteOrder.LITTLE_ENDIAN);
        long start = System.nanoTime();
        try (OutputStream out = new BufferedOutputStream(new FileOutputStream(path), 1 << 16)) {
            for (int pos = 0; pos < ids.length; pos++) {
                float[] logits = t.forward(ids[pos], pos);
                st.positions++;
                row.clear();
                row.asFloatBuffer().put(logits, 0, vocab);
                out.write(row.array(), 0, 4 * vocab);
            }
        } catch (IOException e) {
            throw new Fail(Fail.EXIT_RUNTIME, path + ": cannot write: " + e.getMessage());
        }
        st.ttft = Stats.seconds(System.nanoTime() - start);
        return st;
    }
}
