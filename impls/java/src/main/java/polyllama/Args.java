/*
 * The command line of contract section 2: `<checkpoint> [-flag value]...`, every number plain
 * decimal and range-checked; anything else is a UsageError (exit 2).
 */
package polyllama;

import java.io.IOException;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.regex.Pattern;

final class Args {
    static final String USAGE = "usage: run <checkpoint> [-z tokenizer] [-t temperature] [-p topp] [-s seed] "
            + "[-n steps] [-i prompt] [-j threads] [-m generate|logits] [-o file] [-k ids] [-e 0|1] [-b batch]";
    static final BigInteger MAX_SEED = BigInteger.ONE.shiftLeft(64).subtract(BigInteger.ONE);
    static final int MAX_THREADS = 4096;

    String checkpoint;
    String tokenizer;
    float temperature = 1.0f;
    float topp = 0.9f;
    long seed = 0;          // a uint64 in a long
    long steps = 256;       // saturated at Long.MAX_VALUE: anything above seq_len is seq_len
    byte[] prompt = new byte[0];
    int threads = 1;
    String mode = "generate";
    String output;
    long[] ids;
    boolean ignoreBos = false;
    long batch = 512;       // saturated like steps: anything above seq_len is seq_len

    // ============================================================================================
    // Parsing

    // plain decimal only (contract section 2): no inf, nan, underscores, hex or surrounding spaces
    private static final Pattern FLOAT = Pattern.compile("[+-]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][+-]?[0-9]+)?");
    private static final Pattern INT = Pattern.compile("[+-]?[0-9]+");

    /** argv as the JVM decoded it; raw[i] the same argument as the bytes the caller passed. */
    static Args parse(String[] argv, byte[][] raw) {
        if (argv.length == 0 || argv[0].startsWith("-")) throw new UsageError("missing checkpoint");
        Args a = new Args();
        a.checkpoint = argv[0];
        if ((argv.length - 1) % 2 != 0) throw new UsageError("flag " + argv[argv.length - 1] + " has no value");
        for (int i = 1; i < argv.length; i += 2) a.set(argv[i], argv[i + 1], raw[i + 1]);
        if (a.mode.equals("logits") && (a.output == null || a.ids == null)) {
            throw new UsageError("logits mode needs -o FILE and -k IDS");
        }
        return a;
    }

    private void set(String flag, String value, byte[] raw) {
        switch (flag) {
            case "-z": tokenizer = value; break;
            case "-t": temperature = (float) parseFloat(flag, value, 0, Double.POSITIVE_INFINITY); break;
            case "-p": topp = (float) parseFloat(flag, value, 0, 1); break;
            case "-s": seed = parseInt(flag, value, 0, MAX_SEED); break;
            case "-n": steps = parseCount(flag, value); break;
            case "-i": prompt = raw; break;
            case "-j": threads = (int) parseInt(flag, value, 1, BigInteger.valueOf(MAX_THREADS)); break;
            case "-m":
                if (!value.equals("generate") && !value.equals("logits")) {
                    throw new UsageError("-m expects generate or logits, got '" + value + "'");
                }
                mode = value;
                break;
            case "-o": output = value; break;
            case "-k": ids = parseIds(value); break;
            case "-b":
                batch = parseCount(flag, value);
                if (batch < 1) throw new UsageError("-b " + value + " is out of range");
                break;
            case "-e": ignoreBos = parseInt(flag, value, 0, BigInteger.ONE) == 1; break;
            default: throw new UsageError("unknown flag " + flag);
        }
    }

    static double parseFloat(String flag, String text, double lo, double hi) {
        if (!FLOAT.matcher(text).matches()) throw new UsageError(flag + " expects a number, got '" + text + "'");
        double v = Double.parseDouble(text);  // "1e999" parses as infinity: out of range too
        if (!Double.isFinite(v) || v < lo || v > hi) throw new UsageError(flag + " " + text + " is out of range");
        return v;
    }

    static BigInteger parseBig(String flag, String text) {
        if (!INT.matcher(text).matches()) throw new UsageError(flag + " expects an integer, got '" + text + "'");
        return new BigInteger(text.startsWith("+") ? text.substring(1) : text);
    }

    static long parseInt(String flag, String text, long lo, BigInteger hi) {
        BigInteger v = parseBig(flag, text);
        if (v.compareTo(BigInteger.valueOf(lo)) < 0 || v.compareTo(hi) > 0) {
            throw new UsageError(flag + " " + text + " is out of range");
        }
        return v.longValue();  // the low 64 bits: a uint64 seed stays exact
    }

    /** A non-negative integer of any number of digits; past a long it saturates (seq_len caps it anyway). */
    static long parseCount(String flag, String text) {
        BigInteger v = parseBig(flag, text);
        if (v.signum() < 0) throw new UsageError(flag + " " + text + " is out of range");
        return v.bitLength() < 64 ? v.longValue() : Long.MAX_VALUE;
    }

    private static long[] parseIds(String value) {
        String[] parts = value.split(",", -1);
        long[] out = new long[parts.length];
        for (int j = 0; j < parts.length; j++) {
            if (!INT.matcher(parts[j]).matches()) throw new UsageError("-k expects comma-separated token ids, got '" + value + "'");
            BigInteger id = parseBig("-k", parts[j]);
            out[j] = id.bitLength() < 63 ? id.longValue() : -1;  // out of range either way
        }
        return out;
    }

    /** The -k ids once the model is known: 1..seq_len of them, each in [0, vocab). */
    int[] logitIds(Config c) {
        String problem = "-k needs 1.." + c.seqLen + " ids in [0, " + c.vocabSize + ")";
        if (ids.length < 1 || ids.length > c.seqLen) throw new UsageError(problem);
        int[] out = new int[ids.length];
        for (int i = 0; i < out.length; i++) {
            if (ids[i] < 0 || ids[i] >= c.vocabSize) throw new UsageError(problem);
            out[i] = (int) ids[i];
        }
        return out;
    }

    // ============================================================================================
    // The raw bytes of argv

    /**
     * The arguments as the bytes the caller passed. The JVM decodes argv with the locale's
     * charset, which under LANG=C turns a UTF-8 prompt into '?'; on Linux /proc/self/cmdline still
     * holds the bytes, and the program's arguments are its last entries.
     */
    static byte[][] raw(String[] args) {
        byte[][] fallback = new byte[args.length][];
        for (int i = 0; i < args.length; i++) fallback[i] = args[i].getBytes(StandardCharsets.UTF_8);
        try {
            byte[] cmd = Files.readAllBytes(Path.of("/proc/self/cmdline"));
            List<byte[]> parts = new ArrayList<>();
            int start = 0;
            for (int i = 0; i < cmd.length; i++) {
                if (cmd[i] == 0) {
                    parts.add(Arrays.copyOfRange(cmd, start, i));
                    start = i + 1;
                }
            }
            if (parts.size() < args.length) return fallback;
            byte[][] raw = new byte[args.length][];
            for (int i = 0; i < args.length; i++) {
                raw[i] = parts.get(parts.size() - args.length + i);
                boolean ascii = args[i].chars().allMatch(ch -> ch < 0x80);
                if (ascii && !Arrays.equals(raw[i], fallback[i]) && args[i].indexOf('?') < 0) return fallback;
            }
            return raw;
        } catch (IOException | RuntimeException e) {
            return fallback;
        }
    }
}
