/*
 * A (rows, cols) weight matrix of the checkpoint, float32, or (GGUF) Q8_0 blocks, F16 or BF16: mapped from the
 * file, or read onto the Java heap (Loader), a float32 one into float[]s. Arrays and ByteBuffers
 * index with an int, so the rows are held in blocks of at most 1 GiB; a row never straddles two
 * blocks.
 */
package polyllama;

import java.io.IOException;
import java.nio.ByteBuffer;

final class Matrix {
    static final long BLOCK_BYTES = 1L << 30;
    static final int F32 = 0, F16 = 1, BF16 = 30;  // ggml's type numbers, as Q8.TYPE
    final int rows, cols;
    final int type;              // F32, F16, BF16 or Q8.TYPE
    final int rowBytes;
    final int rowsPerBlock;
    final ByteBuffer[] blocks;   // little-endian, read-only; null when floats holds the rows
    final Loader.Floats[] floats;  // float32 on the heap: block b's rows from floats[b].start()

    Matrix(Loader load, long offset, int rows, int cols) throws IOException {
        this(load, offset, rows, cols, F32);
    }

    /** type Q8.TYPE: cols is a multiple of Q8.BLOCK (the reader has checked). */
    Matrix(Loader load, long offset, int rows, int cols, int type) throws IOException {
        this.rows = rows;
        this.cols = cols;
        this.type = type;
        this.rowBytes = (int) (type == F32 ? 4L * cols : half(type) ? 2L * cols : Q8.bytes(1, cols));  // a row is far below 1 GiB (Config)
        this.rowsPerBlock = (int) Math.max(1, Math.min(rows, BLOCK_BYTES / rowBytes));
        int n = (rows + rowsPerBlock - 1) / rowsPerBlock;
        boolean inFloats = load.onHeap && type == F32;
        blocks = inFloats ? null : new ByteBuffer[n];
        floats = inFloats ? new Loader.Floats[n] : null;
        for (int b = 0; b < n; b++) {
            int first = b * rowsPerBlock, count = Math.min(rowsPerBlock, rows - first);
            long at = offset + (long) first * rowBytes;
            if (inFloats) floats[b] = load.floats(at, count * cols);
            else blocks[b] = load.bytes(at, count * rowBytes);
        }
    }

    boolean q8() {
        return type == Q8.TYPE;
    }

    static boolean half(int type) {
        return type == F16 || type == BF16;
    }

    /** dst[0 .. cols) = row r (the token embedding lookup); a Q8_0 row dequantized, fp32(d) * q exactly; F16, BF16 converted (exact). */
    void copyRow(int r, float[] dst) {
        if (floats != null) {
            Loader.Floats f = floats[r / rowsPerBlock];
            System.arraycopy(f.array(), f.start() + (r % rowsPerBlock) * cols, dst, 0, cols);
            return;
        }
        ByteBuffer bb = blocks[r / rowsPerBlock];
        int base = (r % rowsPerBlock) * rowBytes;
        if (half(type)) {
            boolean bf16 = type == BF16;
            for (int i = 0; i < cols; i++) dst[i] = Half.get(bb, base + 2 * i, bf16);
            return;
        }
        if (!q8()) {
            for (int i = 0; i < cols; i++) dst[i] = bb.getFloat(base + 4 * i);
            return;
        }
        for (int b = 0; b < cols / Q8.BLOCK; b++) {
            int at = base + b * Q8.BLOCK_BYTES;
            float d = Q8.scale(bb, at);
            for (int i = 0; i < Q8.BLOCK; i++) dst[b * Q8.BLOCK + i] = d * bb.get(at + 2 + i);
        }
    }

    /** The whole float32 tensor on the heap: only for the small norm vectors. */
    float[] toArray() {
        float[] out = new float[rows * cols];
        for (int r = 0; r < rows; r++) {
            if (floats != null) {
                Loader.Floats f = floats[r / rowsPerBlock];
                System.arraycopy(f.array(), f.start() + (r % rowsPerBlock) * cols, out, r * cols, cols);
                continue;
            }
            ByteBuffer bb = blocks[r / rowsPerBlock];
            int base = (r % rowsPerBlock) * rowBytes;
            for (int i = 0; i < cols; i++) out[r * cols + i] = bb.getFloat(base + 4 * i);
        }
        return out;
    }
}
