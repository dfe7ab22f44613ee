package polyllama;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static polyllama.Fixtures.assertBadFile;
import static polyllama.Fixtures.modelFile;
import static polyllama.Fixtures.utf8;

import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** Tokenizer: the Llama 2 vectors, the merge and fallback rules, and the vocabularies refused at load. */
class TokenizerTest {
    @TempDir
    Path dir;

    @Test
    void encodesTheKnownLlama2Vectors() {
        Tokenizer t = Tokenizer.read(modelFile("tokenizer.bin"), 32000);
        assertArrayEquals(new int[] {1, 306, 4658, 278, 6593, 310, 2834, 338},
                t.encode(utf8("I believe the meaning of life is"), true, false));
        assertArrayEquals(new int[] {1, 9038, 2501, 263, 931}, t.encode(utf8("Once upon a time"), true, false));
        assertArrayEquals(new int[] {1}, t.encode(new byte[0], true, false));
        assertArrayEquals(new int[] {9038, 2}, t.encode(utf8("Once"), false, true));
    }

    @Test
    void decodesAsRunC() {
        Tokenizer t = Tokenizer.read(modelFile("tokenizer.bin"), 32000);
        assertArrayEquals(utf8("Once"), t.decode(1, 9038));          // BOS eats the leading space
        assertArrayEquals(utf8(" upon"), t.decode(9038, 2501));
        assertArrayEquals(new byte[] {'\n'}, t.decode(5, 13));       // <0x0A>
        assertArrayEquals(new byte[] {(byte) 0xE6}, t.decode(5, 0xE6 + 3));
    }

    /** A tiny vocabulary: the byte fallback, the merges and their tie rule without any file. */
    static Tokenizer tinyTokenizer() {
        List<byte[]> pieces = new ArrayList<>(Arrays.asList(Fixtures.pieces()).subList(0, 259));
        List<Float> scores = new ArrayList<>();
        for (int i = 0; i < 259; i++) scores.add(0f);
        String[] merges = {" ", "a", "b", "ab", " a", " ab", "ë", "bb", "ba"};
        float[] mscores = {-1, -2, -3, -4, -5, -6, -7, -4, -4};
        for (int i = 0; i < merges.length; i++) {
            pieces.add(utf8(merges[i]));
            scores.add(mscores[i]);
        }
        float[] sc = new float[scores.size()];
        for (int i = 0; i < sc.length; i++) sc[i] = scores.get(i);
        return Tokenizer.build("tok", pieces.toArray(new byte[0][]), sc);
    }

    @Test
    void mergesByScoreWithLeftmostTies() {
        Tokenizer t = tinyTokenizer();
        int space = 259, spaceAb = 264, e = 265, bb = 266;
        // " ab": " " + "a" -> " a" (-5) loses to "a" + "b" -> "ab" (-4); then " " + "ab" -> " ab"
        assertArrayEquals(new int[] {1, spaceAb}, t.encode(utf8("ab"), true, false));
        // "bba": "bb" (-4) and "ba" (-4) tie: the leftmost pair wins
        assertArrayEquals(new int[] {space, bb, 260}, t.encode(utf8("bba"), false, false));
        // a known multi-byte character is one piece; an unknown one falls back to its bytes + 3
        assertArrayEquals(new int[] {space, e}, t.encode(utf8("ë"), false, false));
        assertArrayEquals(new int[] {space, 0xE6 + 3, 0x97 + 3, 0xA5 + 3}, t.encode(utf8("日"), false, false));
        assertArrayEquals(new int[] {spaceAb, 260}, t.encode(utf8("aba"), false, false));
    }

    @Test
    void refusesVocabulariesThatEncodeCannotUse() {
        byte[][] few = new byte[258][];
        Arrays.fill(few, utf8("x"));
        few[200] = utf8(" ");
        assertBadFile(() -> Tokenizer.build("tok", few, new float[258]));
        byte[][] noSpace = new byte[300][];
        for (int i = 0; i < 300; i++) noSpace[i] = utf8("t" + i);
        assertBadFile(() -> Tokenizer.build("tok", noSpace, new float[300]));
    }

    /** Contract gap 1: no " " piece is refused when tokenizer.bin is loaded, before any prompt. */
    @Test
    void refusesATokenizerFileWithoutASpacePiece() throws IOException {
        byte[][] pieces = Fixtures.pieces();
        pieces[259] = utf8("zz");
        Path p = Fixtures.writeTokenizer(dir, "nospace.bin", pieces, Fixtures.scores());
        Fail f = assertThrows(Fail.class, () -> Tokenizer.read(p.toString(), Fixtures.VOCAB));
        assertEquals(Fail.EXIT_BAD_FILE, f.code);
        assertEquals(p + ": the vocabulary has no ' ' piece for the dummy prefix", f.getMessage());
        // the good one loads
        Path good = Fixtures.writeTokenizer(dir, "good.bin", Fixtures.pieces(), Fixtures.scores());
        assertEquals(Fixtures.VOCAB, Tokenizer.read(good.toString(), Fixtures.VOCAB).size());
    }

    /** Contract gap 3: NaN and infinite scores in tokenizer.bin are refused. */
    @Test
    void refusesNonFiniteScores() throws IOException {
        for (float bad : new float[] {Float.NaN, Float.POSITIVE_INFINITY, Float.NEGATIVE_INFINITY}) {
            float[] scores = Fixtures.scores();
            scores[5] = bad;
            Path p = Fixtures.writeTokenizer(dir, "bad.bin", Fixtures.pieces(), scores);
            Fail f = assertThrows(Fail.class, () -> Tokenizer.read(p.toString(), Fixtures.VOCAB));
            assertEquals(Fail.EXIT_BAD_FILE, f.code);
            assertTrue(f.getMessage().contains("token 5 has a non-finite score"), f.getMessage());
        }
    }

    @Test
    void refusesATokenizerOfTheWrongSize() throws IOException {
        Path p = Fixtures.writeTokenizer(dir, "tok.bin", Fixtures.pieces(), Fixtures.scores());
        assertBadFile(() -> Tokenizer.read(p.toString(), Fixtures.VOCAB + 1));
        assertBadFile(() -> Tokenizer.read(p.toString(), Fixtures.VOCAB - 1));
        assertBadFile(() -> Tokenizer.read(dir.resolve("missing.bin").toString(), Fixtures.VOCAB));
    }

    @Test
    void safePrintDropsLoneControlBytes() {
        assertTrue(Tokenizer.printable(utf8("a")));
        assertTrue(Tokenizer.printable(new byte[] {'\n'}));
        assertTrue(Tokenizer.printable(new byte[] {(byte) 0xC3, (byte) 0xAB}));
        assertTrue(!Tokenizer.printable(new byte[0]));
        assertTrue(!Tokenizer.printable(new byte[] {7}));
        assertTrue(!Tokenizer.printable(new byte[] {(byte) 0xE6}));
    }
}
