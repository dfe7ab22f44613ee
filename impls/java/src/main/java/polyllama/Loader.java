/*
 * Where the tensors' bytes come from, for Matrix: mapped from the checkpoint, or read onto the
 * Java heap, which -XX:+UseTransparentHugePages backs with 2 MiB pages (README, "Performance
 * levers"). On the heap a float32 tensor is read into a float[] and a Q8_0 tensor into a byte[]:
 * the Vector API loads from a float[] with one bounds check, where a ByteBuffer load costs C2 a
 * dozen instructions of buffer checks, too many for the short rows of the small models (README).
 * The tensors are slices of a few arrays of at most 1 GiB each, handed out in the order they are
 * asked for: a model below 1 GiB is one allocation per kind, where one per tensor would start a
 * G1 collection for nearly every tensor once the heap is past its occupancy mark.
 */
package polyllama;

import java.io.EOFException;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;

final class Loader {
    /**
     * The most read at once into the heap: FileChannel stages a heap buffer's read through a
     * temporary direct buffer as large as the read and keeps it for the thread, which for a whole
     * tensor would be a second copy of the weights.
     */
    private static final int READ_WINDOW = 1 << 20;

    /** count floats of a float[] from start: a float32 tensor (or a block of its rows) on the heap. */
    record Floats(float[] array, int start) {}

    private final FileChannel ch;
    final boolean onHeap;
    private long floatBytesLeft, byteBytesLeft;  // heap bytes still to be asked for, per kind
    private float[] floatChunk;                  // the arrays being handed out
    private int floatsUsed;
    private ByteBuffer byteChunk;
    private int bytesUsed;
    private ByteBuffer window;

    /**
     * Maps each tensor, or with onHeap reads them onto the heap: float32 tensors of f32Bytes in
     * all as floats, the others (Q8_0), otherBytes in all, as bytes.
     */
    Loader(FileChannel ch, boolean onHeap, long f32Bytes, long otherBytes) {
        this.ch = ch;
        this.onHeap = onHeap;
        this.floatBytesLeft = f32Bytes;
        this.byteBytesLeft = otherBytes;
    }

    /** count bytes of the file from offset, read-only and little-endian. */
    ByteBuffer bytes(long offset, int count) throws IOException {
        if (!onHeap) return ch.map(FileChannel.MapMode.READ_ONLY, offset, count).order(ByteOrder.LITTLE_ENDIAN);
        if (byteChunk == null || byteChunk.capacity() - bytesUsed < count) {
            byteChunk = ByteBuffer.allocate((int) Math.max(count, Math.min(byteBytesLeft, Matrix.BLOCK_BYTES)));
            bytesUsed = 0;
        }
        ByteBuffer bb = byteChunk.slice(bytesUsed, count);
        bytesUsed += count;
        byteBytesLeft -= count;
        for (int at = 0; at < count; ) {
            bb.limit(Math.min(count, at + READ_WINDOW)).position(at);
            at += read(bb, offset + at);
        }
        // a view starts big-endian, and the kernels need position 0 (simd22 views position..limit)
        return bb.clear().asReadOnlyBuffer().order(ByteOrder.LITTLE_ENDIAN);
    }

    /** count little-endian floats of the file from offset into a float[] on the heap (onHeap only). */
    Floats floats(long offset, int count) throws IOException {
        if (floatChunk == null || floatChunk.length - floatsUsed < count) {
            floatChunk = new float[(int) Math.max(count, Math.min(floatBytesLeft, Matrix.BLOCK_BYTES) / 4)];
            floatsUsed = 0;
        }
        Floats f = new Floats(floatChunk, floatsUsed);
        floatsUsed += count;
        floatBytesLeft -= 4L * count;
        if (window == null) window = ByteBuffer.allocate(READ_WINDOW).order(ByteOrder.LITTLE_ENDIAN);
        for (int done = 0; done < count; ) {
            int n = Math.min(count - done, READ_WINDOW / 4);
            window.clear().limit(4 * n);
            for (int at = 0; at < 4 * n; ) at += read(window, offset + 4L * done + at);
            window.flip().asFloatBuffer().get(f.array(), f.start() + done, n);
            done += n;
        }
        return f;
    }

    /** One read into bb's remaining space from the file at offset; the bytes read (at least one). */
    private int read(ByteBuffer bb, long offset) throws IOException {
        int n = ch.read(bb, offset);
        if (n < 0) throw new EOFException("the file ended early (did it change while it was read?)");
        return n;
    }
}
