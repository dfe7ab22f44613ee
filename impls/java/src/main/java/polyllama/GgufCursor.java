/*
 * A bounds-checked reader over a GGUF file: every count and length is checked against what is
 * left of the file before anything is read or allocated from it. Small values come through a
 * 64 KiB window, so the many short strings of a tokenizer cost one read per window, not per value.
 */
package polyllama;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;

final class GgufCursor {
    static final int[] SCALAR_SIZE = {1, 1, 2, 2, 4, 4, 4, 1, -1, -1, 8, 8, 8};  // by value type; -1: not a scalar

    final String path;
    final long size;
    long off;
    private final FileChannel ch;
    private final ByteBuffer win = ByteBuffer.allocate(1 << 16).order(ByteOrder.LITTLE_ENDIAN);
    private long winStart = -1;

    GgufCursor(String path, FileChannel ch) throws IOException {
        this.path = path;
        this.ch = ch;
        this.size = ch.size();
    }

    static boolean isScalar(int type) {
        return type >= 0 && type < SCALAR_SIZE.length && SCALAR_SIZE[type] > 0;
    }

    void need(long n, String what) {
        if (n < 0 || n > size - off) {
            throw new FormatError(path, "truncated or corrupt: " + what + " runs past the end of the file");
        }
    }

    /** The window holds [off, off + n) after this; n is at most 8. */
    private int at(int n) throws IOException {
        if (winStart < 0 || off < winStart || off + n > winStart + win.limit()) {
            win.clear();
            while (win.hasRemaining() && ch.read(win, off + win.position()) > 0) { /* fill */ }
            win.flip();
            winStart = off;
        }
        int i = (int) (off - winStart);
        off += n;
        return i;
    }

    long u64(String what) throws IOException {
        need(8, what);
        return win.getLong(at(8));
    }

    int u32(String what) throws IOException {
        need(4, what);
        return win.getInt(at(4));
    }

    byte[] bytes(long n, String what) throws IOException {
        need(n, what);
        if (n > (1 << 30)) throw new FormatError(path, what + ": a string of " + n + " bytes");
        byte[] out = new byte[(int) n];
        if (n <= 8) {
            for (int k = 0; k < n; k++) { int i = at(1); out[k] = win.get(i); }
            return out;
        }
        ByteBuffer dst = ByteBuffer.wrap(out);
        while (dst.hasRemaining()) {
            if (ch.read(dst, off + dst.position()) <= 0) throw new FormatError(path, "read failed");
        }
        off += n;
        return out;
    }

    /** A GGUF string: uint64 length, then the bytes. */
    byte[] string(String what) throws IOException {
        return bytes(u64(what), what);
    }

    /** Skips a GGUF string without reading it. */
    void skipString(String what) throws IOException {
        long n = u64(what);
        need(n, what);
        off += n;
    }

    /** A scalar of value type t as a Long (integers), a Double (floats) or a Boolean. */
    Object scalar(int t, String what) throws IOException {
        need(SCALAR_SIZE[t], what);
        int i = at(SCALAR_SIZE[t]);
        switch (t) {
            case 0: return (long) (win.get(i) & 0xff);
            case 1: return (long) win.get(i);
            case 2: return (long) (win.getShort(i) & 0xffff);
            case 3: return (long) win.getShort(i);
            case 4: return win.getInt(i) & 0xffffffffL;
            case 5: return (long) win.getInt(i);
            case 6: return (double) win.getFloat(i);
            case 7: return win.get(i) != 0;
            case 10: { long x = win.getLong(i); return x < 0 ? Long.MAX_VALUE : x; }  // past 2^63: absurd anyway
            case 11: return win.getLong(i);
            default: return win.getDouble(i);
        }
    }

    void skip(long n) {
        off += n;
    }
}
