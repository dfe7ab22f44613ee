/*
 * Where the tensors' bytes come from, for Matrix: mapped from the checkpoint, or read onto the
 * Java heap, which -XX:+UseTransparentHugePages backs with 2 MiB pages (README, "Performance
 * levers"). On the heap the tensors are slices of a few arrays of at most 1 GiB, handed out in
 * the order they are asked for: a model below 1 GiB is one allocation, where one per tensor
 * would start a G1 collection for nearly every tensor once the heap is past its occupancy mark.
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

    private final FileChannel ch;
    private final boolean onHeap;
    private long left;          // heap bytes still to be asked for
    private ByteBuffer chunk;   // the array being handed out
    private int used;

    /** Maps each tensor, or with onHeap reads them, heapBytes in all, onto the heap. */
    Loader(FileChannel ch, boolean onHeap, long heapBytes) {
        this.ch = ch;
        this.onHeap = onHeap;
        this.left = heapBytes;
    }

    /** count bytes of the file from offset, read-only and little-endian. */
    ByteBuffer bytes(long offset, int count) throws IOException {
        if (!onHeap) return ch.map(FileChannel.MapMode.READ_ONLY, offset, count).order(ByteOrder.LITTLE_ENDIAN);
        if (chunk == null || chunk.capacity() - used < count) {
            chunk = ByteBuffer.allocate((int) Math.max(count, Math.min(left, Matrix.BLOCK_BYTES)));
            used = 0;
        }
        ByteBuffer bb = chunk.slice(used, count);
        used += count;
        left -= count;
        for (int at = 0; at < count; ) {
            bb.limit(Math.min(count, at + READ_WINDOW)).position(at);
            int n = ch.read(bb, offset + at);
            if (n < 0) throw new EOFException("the file ended early (did it change while it was read?)");
            at += n;
        }
        // a view starts big-endian, and the kernels need position 0 (simd22 views position..limit)
        return bb.clear().asReadOnlyBuffer().order(ByteOrder.LITTLE_ENDIAN);
    }
}
