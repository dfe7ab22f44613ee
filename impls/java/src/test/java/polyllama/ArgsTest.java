package polyllama;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static polyllama.Fixtures.utf8;

import org.junit.jupiter.api.Test;

/** The command line: what the contract allows parses, anything else is exit 2. */
class ArgsTest {
    static Args parse(String... argv) {
        byte[][] raw = new byte[argv.length][];
        for (int i = 0; i < argv.length; i++) raw[i] = utf8(argv[i]);
        return Args.parse(argv, raw);
    }

    static void assertUsageError(String... argv) {
        assertEquals(Fail.EXIT_USAGE, assertThrows(Fail.class, () -> parse(argv)).code, String.join(" ", argv));
    }

    @Test
    void parsesFlagsAndRefusesBadOnes() {
        Args a = parse("m.bin", "-t", "0.5", "-p", "1", "-s", "18446744073709551615", "-n", "0", "-j", "3",
                "-i", "hé", "-e", "1");
        assertEquals(0.5f, a.temperature);
        assertEquals(-1L, a.seed);  // 2^64 - 1 as a uint64
        assertEquals(3, a.threads);
        assertArrayEquals(utf8("hé"), a.prompt);
        assertTrue(a.ignoreBos);
        String[][] bad = {{}, {"-t", "1"}, {"m.bin", "-q", "1"}, {"m.bin", "-t"}, {"m.bin", "-t", "abc"},
            {"m.bin", "-t", "-1"}, {"m.bin", "-p", "2"}, {"m.bin", "-n", "-3"}, {"m.bin", "-j", "0"},
            {"m.bin", "-j", "x"}, {"m.bin", "-s", "seed"}, {"m.bin", "-m", "chat"}, {"m.bin", "-e", "5"},
            {"m.bin", "-m", "logits"}, {"m.bin", "-t", "nan"}, {"m.bin", "-t", "inf"}, {"m.bin", "-t", "1e999"},
            {"m.bin", "-n", "1_0"}, {"m.bin", "-n", " 5"}, {"m.bin", "-t", "0x1p3"},
            {"m.bin", "-k", "1, 2", "-m", "logits", "-o", "f"}, {"m.bin", "-k", "1,x", "-m", "logits", "-o", "f"}};
        for (String[] argv : bad) assertUsageError(argv);
    }

    /** Contract gap 2: -n of any number of digits clamps to seq_len; -j in [1, 4096]; -s in [0, 2^64 - 1]. */
    @Test
    void limitsOfStepsThreadsAndSeed() {
        for (String n : new String[] {"1099511627776", "99999999999999999999999999", "9223372036854775808", "+600"}) {
            Args a = parse("m.bin", "-n", n);
            assertEquals(512, Generation.clampSteps(a.steps, 512), n);
        }
        assertEquals(5, Generation.clampSteps(parse("m.bin", "-n", "5").steps, 512));
        assertEquals(512, Generation.clampSteps(parse("m.bin", "-n", "0").steps, 512));
        assertUsageError("m.bin", "-n", "-1");
        assertUsageError("m.bin", "-n", "-99999999999999999999999999");

        assertEquals(4096, parse("m.bin", "-j", "4096").threads);
        assertUsageError("m.bin", "-j", "4097");
        assertUsageError("m.bin", "-j", "99999999999999999999");

        assertEquals(0L, parse("m.bin", "-s", "0").seed);
        assertEquals(-1L, parse("m.bin", "-s", "18446744073709551615").seed);
        assertUsageError("m.bin", "-s", "18446744073709551616");
        assertUsageError("m.bin", "-s", "-1");
    }

    /** -b: an integer >= 1 of any number of digits (saturated; seq_len clamps it), 512 by default. */
    @Test
    void batchFlag() {
        assertEquals(512, parse("m.bin").batch);
        assertEquals(1, parse("m.bin", "-b", "1").batch);
        assertEquals(7, parse("m.bin", "-b", "+7").batch);
        assertEquals(Long.MAX_VALUE, parse("m.bin", "-b", "99999999999999999999999999").batch);
        for (String b : new String[] {"0", "-1", "x", "1.5", "", " 4", "0x10", "-99999999999999999999"}) assertUsageError("m.bin", "-b", b);
        assertUsageError("m.bin", "-b");
    }

    @Test
    void logitIdsAreCheckedAgainstTheModel() {
        Config c = Config.validated("m", 8, 16, 1, 2, 2, 260, 4, true);
        assertArrayEquals(new int[] {1, 259}, parse("m.bin", "-m", "logits", "-o", "f", "-k", "1,259").logitIds(c));
        for (String ids : new String[] {"260", "-1", "1,2,3,4,5", "99999999999999999999"}) {
            Args a = parse("m.bin", "-m", "logits", "-o", "f", "-k", ids);
            assertEquals(Fail.EXIT_USAGE, assertThrows(Fail.class, () -> a.logitIds(c)).code, ids);
        }
    }
}
