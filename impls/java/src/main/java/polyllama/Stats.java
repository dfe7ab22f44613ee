/*
 * The statistics of one run and the one-line JSON that ends stderr (contract section 3): counts,
 * and times from System.nanoTime, a monotonic clock.
 */
package polyllama;

import java.util.Locale;

final class Stats {
    static final String PORT = "java";   // the manifest's name

    int promptTokens, generatedTokens, positions;
    double ttft, decode;

    static double seconds(long nanos) {
        return nanos / 1e9;
    }

    String line(int threads, double load) {
        double rate = generatedTokens > 1 && decode > 0 ? (generatedTokens - 1) / decode : 0;
        return String.format(Locale.ROOT,
                "polyllama-stats: {\"port\":\"%s\",\"prompt_tokens\":%d,\"generated_tokens\":%d,\"positions\":%d,"
                        + "\"threads\":%d,\"load_s\":%.6f,\"ttft_s\":%.6f,\"decode_s\":%.6f,\"decode_tok_s\":%.4f}",
                PORT, promptTokens, generatedTokens, positions, threads, load, ttft, decode, rate);
    }
}
