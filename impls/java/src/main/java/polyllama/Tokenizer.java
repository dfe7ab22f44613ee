/*
 * llama2.c's tokenizer (contract section 5): byte-pair encoding with the dummy prefix and byte
 * fallback, and decoding back to bytes. Built from tokenizer.bin (read) or from a GGUF's embedded
 * vocabulary (Gguf), both through build(), which holds the one rule every vocabulary must pass.
 */
package polyllama;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.HashMap;
import java.util.Map;

final class Tokenizer {
    static final int BOS = 1, EOS = 2;  // llama2.c's ids: a .bin's, a GGUF's unless it names its own
    static final int MAX_TOKEN_LENGTH = 1024;
    private static final byte[] SPACE = {' '};

    final byte[][] pieces;   // (vocab) the bytes of each token
    final float[] scores;    // (vocab) merge priority: higher merges first
    int bos = BOS, eos = EOS; // a GGUF's tokenizer.ggml.bos_token_id / eos_token_id (Gguf sets them)
    private final Map<String, Integer> lookup = new HashMap<>();  // bytes as ISO-8859-1 text: exact match

    private Tokenizer(byte[][] pieces, float[] scores) {
        this.pieces = pieces;
        this.scores = scores;
        for (int i = 0; i < pieces.length; i++) lookup.putIfAbsent(key(pieces[i]), i);  // lower id wins
    }

    // ============================================================================================
    // Building: tokenizer.bin or a GGUF's vocabulary, checked when loaded, before any prompt

    /**
     * The contract's tokenizer rule (section 4, step 5), one for tokenizer.bin and GGUF alike:
     * encode needs the 256 byte tokens for its fallback and the piece " " for its dummy prefix,
     * and the merge loop compares scores, which a NaN or an infinity would make meaningless.
     */
    static Tokenizer build(String path, byte[][] pieces, float[] scores) {
        if (pieces.length < 259) {
            throw new FormatError(path, "a vocabulary of " + pieces.length + " tokens has no room for the 256 byte tokens");
        }
        Tokenizer t = new Tokenizer(pieces, scores);
        if (t.find(SPACE) < 0) throw new FormatError(path, "the vocabulary has no ' ' piece for the dummy prefix");
        for (int i = 0; i < scores.length; i++) {
            if (!Float.isFinite(scores[i])) {
                throw new FormatError(path, "token " + i + " has a non-finite score (" + scores[i] + ")");
            }
        }
        return t;
    }

    /** tokenizer.bin: int32 max_token_length, then (float32 score, int32 length, bytes) for exactly vocabSize tokens. */
    static Tokenizer read(String path, int vocabSize) {
        byte[] data = readAll(path);
        ByteBuffer bb = ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
        if (data.length < 4) throw new FormatError(path, "truncated: no max_token_length header");
        int maxLen = bb.getInt(0);
        if (maxLen < 1 || maxLen > MAX_TOKEN_LENGTH) {
            throw new FormatError(path, "max_token_length=" + maxLen + " outside 1.." + MAX_TOKEN_LENGTH);
        }
        byte[][] pieces = new byte[vocabSize][];
        float[] scores = new float[vocabSize];
        int off = 4;
        for (int i = 0; i < vocabSize; i++) {
            if (off + 8 > data.length) {
                throw new FormatError(path, "has only " + i + " tokens, the model's vocabulary is " + vocabSize);
            }
            float score = bb.getFloat(off);
            int len = bb.getInt(off + 4);
            off += 8;
            if (len < 0 || len > maxLen) throw new FormatError(path, "token " + i + " has length " + len + ", outside 0.." + maxLen);
            if (off + len > data.length) throw new FormatError(path, "truncated inside token " + i);
            pieces[i] = Arrays.copyOfRange(data, off, off + len);
            scores[i] = score;
            off += len;
        }
        if (off != data.length) {
            throw new FormatError(path, "has " + (data.length - off) + " bytes after token " + (vocabSize - 1)
                    + ": its vocabulary is larger than the model's " + vocabSize);
        }
        return build(path, pieces, scores);
    }

    private static byte[] readAll(String path) {
        try (FileChannel ch = Io.open(path)) {
            if (ch.size() > Integer.MAX_VALUE - 64) throw new FormatError(path, "implausibly large: " + ch.size() + " bytes");
            ByteBuffer all = Io.readAt(ch, 0, (int) ch.size());
            byte[] data = new byte[all.remaining()];
            all.get(data);
            return data;
        } catch (IOException e) {
            throw new FormatError(path, "cannot read: " + e.getMessage());
        }
    }

    static String key(byte[] b) {
        return new String(b, StandardCharsets.ISO_8859_1);
    }

    /** The id of the piece with exactly these bytes, -1 if none. */
    int find(byte[] piece) {
        return lookup.getOrDefault(key(piece), -1);
    }

    int size() {
        return pieces.length;
    }

    // ============================================================================================
    // encode and decode

    /** encode(text, bos, eos) of the contract's section 5. */
    int[] encode(byte[] text, boolean bos, boolean eos) {
        int[] tokens = new int[text.length + 3];
        int n = 0;
        if (bos) tokens[n++] = this.bos;
        if (text.length > 0) {
            tokens[n++] = find(SPACE);  // present: build() checks
        }
        // UTF-8 groups: a lead byte and up to three continuation bytes, looked up whole
        for (int i = 0; i < text.length; ) {
            int j = i + 1;
            while (j < text.length && (text[j] & 0xC0) == 0x80 && j - i < 4) j++;
            byte[] group = Arrays.copyOfRange(text, i, j);
            int id = find(group);
            if (id >= 0) {
                tokens[n++] = id;
            } else {
                for (byte b : group) tokens[n++] = (b & 0xff) + 3;  // byte fallback: <0x00> is id 3
            }
            i = j;
        }
        // merge the best-scoring adjacent pair until none merges; the leftmost wins a tie
        while (true) {
            float best = Float.NEGATIVE_INFINITY;
            int bestId = -1, bestIdx = -1;
            for (int i = 0; i < n - 1; i++) {
                byte[] a = pieces[tokens[i]], b = pieces[tokens[i + 1]];
                byte[] pair = Arrays.copyOf(a, a.length + b.length);
                System.arraycopy(b, 0, pair, a.length, b.length);
                int id = find(pair);
                if (id >= 0 && scores[id] > best) {
                    best = scores[id];
                    bestId = id;
                    bestIdx = i;
                }
            }
            if (bestIdx < 0) break;
            tokens[bestIdx] = bestId;
            System.arraycopy(tokens, bestIdx + 2, tokens, bestIdx + 1, n - bestIdx - 2);
            n--;
        }
        if (eos) tokens[n++] = this.eos;
        return Arrays.copyOf(tokens, n);
    }

    private static int hexDigit(byte b) {
        if (b >= '0' && b <= '9') return b - '0';
        if (b >= 'a' && b <= 'f') return b - 'a' + 10;
        if (b >= 'A' && b <= 'F') return b - 'A' + 10;
        return -1;
    }

    /** The bytes token stands for after prev: BOS eats a leading space, <0xHH> is one raw byte. */
    byte[] decode(int prev, int token) {
        byte[] piece = pieces[token];
        if (prev == bos && piece.length > 0 && piece[0] == ' ') piece = Arrays.copyOfRange(piece, 1, piece.length);
        if (piece.length == 6 && piece[0] == '<' && piece[1] == '0' && piece[2] == 'x' && piece[5] == '>') {
            int hi = hexDigit(piece[3]), lo = hexDigit(piece[4]);
            if (hi >= 0 && lo >= 0) return new byte[] {(byte) (hi * 16 + lo)};
        }
        return piece;
    }

    /** run.c's safe_printf: nothing for an empty piece or a lone byte that is neither printable nor space. */
    static boolean printable(byte[] piece) {
        if (piece.length == 0) return false;
        if (piece.length == 1) {
            int b = piece[0] & 0xff;
            return (b >= 0x20 && b <= 0x7E) || b == '\t' || b == '\n' || b == 0x0B || b == '\f' || b == '\r';
        }
        return true;
    }
}
