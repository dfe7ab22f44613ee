/*
 * A (rows, cols) float32 matrix of the checkpoint: mapped from the file, or read onto the Java
 * heap (Loader). A ByteBuffer indexes with an int, so the rows are held in blocks of at most
 * 1 GiB; a row never straddles two blocks.
 */
package polyllama;

import java.io.IOException;
import java.nio.ByteBuffer;

final class Matrix {
    static final long BLOCK_BYTES = 1L << 30;
    final int rows, cols;
    final int rowsPerBlock;
    final ByteBuffer[] blocks;   // little-endian, read-only

    Matrix(Loader load, long offset, int rows, int cols) throws IOException {
        this.rows = rows;
        this.cols = cols;
        long rowBytes = 4L * cols;
        this.rowsPerBlock = (int) Math.max(1, Math.min(rows, BLOCK_BYTES / rowBytes));
        int n = (rows + rowsPerBlock - 1) / rowsPerBlock;
        blocks = new ByteBuffer[n];
        for (int b = 0; b < n; b++) {
            int first = b * rowsPerBlock, count = Math.min(rowsPerBlock, rows - first);
            blocks[b] = load.bytes(offset + first * rowBytes, (int) (count * rowBytes));
        }
    }

    /** dst[0 .. cols) = row r (the token embedding lookup). */
    void copyRow(int r, float[] dst) {
        ByteBuffer bb = blocks[r / rowsPerBlock];
        int base = (r % rowsPerBlock) * cols * 4;
        for (int i = 0; i < cols; i++) dst[i] = bb.getFloat(base + 4 * i);
    }

    /** The whole tensor on the heap: only for the small norm vectors. */
    float[] toArray() {
        float[] out = new float[rows * cols];
        for (int r = 0; r < rows; r++) {
            ByteBuffer bb = blocks[r / rowsPerBlock];
            int base = (r % rowsPerBlock) * cols * 4;
            for (int i = 0; i < cols; i++) out[r * cols + i] = bb.getFloat(base + 4 * i);
        }
        return out;
    }
}
