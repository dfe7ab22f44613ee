/*
 * The statistics of one run and the one-line JSON that ends stderr (contract section 3): counts,
 * and times from System.nanoTime, a monotonic clock.
 */
package polyllama;

import java.util.Locale;

final class Stats {
    static final String PORT = "java";   // the manifest's name

    int promptTokens, generatedTokens, positions;
    int batch;           // the prompt batch used (-b after clamping)
    double ttft, prefill, decode;
    int prefilled;       // positions the prefill ran (n_prefill; in logits mode n)

    static double seconds(long nanos) {
        return nanos / 1e9;
    }

    String line(int threads, double load) {
        double rate = generatedTokens > 1 && decode > 0 ? (generatedTokens - 1) / decode : 0;
        double prefillRate = prefill > 0 ? prefilled / prefill : 0;
        return String.format(Locale.ROOT,
                "polyllama-stats: {\"port\":\"%s\",\"prompt_tokens\":%d,\"generated_tokens\":%d,\"positions\":%d,"
                        + "\"threads\":%d,\"batch\":%d,\"load_s\":%.6f,\"ttft_s\":%.6f,\"prefill_s\":%.6f,\"prefill_tok_s\":%.4f,"
                        + "\"decode_s\":%.6f,\"decode_tok_s\":%.4f}",
                PORT, promptTokens, generatedTokens, positions, threads, batch, load, ttft, prefill, prefillRate, decode, rate);
    }
}
