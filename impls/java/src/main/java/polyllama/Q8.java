/*
 * GGUF's Q8_0 (ggml type 8; docs/port-contract.md, "GGUF Q8_0"): a row is blocks of 32 int8 quants
 * sharing one fp16 scale, 34 bytes a block, so the scales sit at every 34th byte, unaligned. The
 * weights stay in the loaded bytes; a product with them first quantizes the activation the way
 * llama.cpp's SIMD quantize_row_q8_0 does (quantize), and then Kernels.matvecQ8 takes each
 * block's dot product of quants exactly in int32 and scales it in float32.
 */
package polyllama;

import java.nio.ByteBuffer;

final class Q8 {
    private Q8() {}

    static final int TYPE = 8, BLOCK = 32, BLOCK_BYTES = 34;

    /** fp16 bits -> float for every pattern: one table lookup per block scale, as llama.cpp does. */
    private static final float[] HALF = new float[1 << 16];

    static {
        for (int h = 0; h < HALF.length; h++) HALF[h] = halfToFloat(h);
    }

    /** Bytes of a (rows, cols) Q8_0 matrix; cols a multiple of BLOCK. */
    static long bytes(long rows, long cols) {
        return rows * (cols / BLOCK) * BLOCK_BYTES;
    }

    /** fp32(d) of the block at bb[at]: ByteBuffer.getShort reads at any byte, so no alignment is assumed. */
    static float scale(ByteBuffer bb, int at) {
        return HALF[bb.getShort(at) & 0xffff];
    }

    // ============================================================================================
    // fp16 <-> fp32 (Java 17 has no Float.float16ToFloat / floatToFloat16, JDK 20+ has)

    static float halfToFloat(int h) {
        int sign = (h & 0x8000) << 16, exp = (h >>> 10) & 0x1f, man = h & 0x3ff;
        if (exp == 0x1f) return Float.intBitsToFloat(sign | 0x7f800000 | (man << 13));  // inf, NaN
        if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in float
            float v = man * 0x1p-24f;
            return sign != 0 ? -v : v;
        }
        return Float.intBitsToFloat(sign | ((exp + 112) << 23) | (man << 13));  // rebias 15 -> 127
    }

    /** f rounded to the nearest fp16, ties to even (IEEE's default, numpy's astype(float16)). */
    static int floatToHalf(float f) {
        int bits = Float.floatToRawIntBits(f);
        int sign = (bits >>> 16) & 0x8000, abs = bits & 0x7fffffff;
        if (abs > 0x7f800000) return sign | 0x7e00;                // NaN: a quiet one
        if (abs >= 0x477ff000) return sign | 0x7c00;               // from 65520 (the midpoint above 65504): infinity
        int e = abs >>> 23;
        int mant, shift;   // the result is mant >> shift, rounded; for a normal fp16 the exponent rides along
        if (e >= 113) {    // a normal fp16: drop 13 of the 23 mantissa bits, rebias 127 -> 15
            mant = abs - (112 << 23);
            shift = 13;
        } else {           // subnormal fp16 (or zero): value / 2^-24 = (1.mant * 2^23) * 2^(e - 126)
            shift = 126 - e;
            if (shift > 24) return sign;                           // below 2^-25: rounds to zero
            mant = (abs & 0x7fffff) | 0x800000;
        }
        int h = mant >>> shift, rest = mant & ((1 << shift) - 1), half = 1 << (shift - 1);
        if (rest > half || (rest == half && (h & 1) != 0)) h++;   // a carry moves up the exponent, as it should
        return sign | h;
    }

    // ============================================================================================
    // The activation side of a Q8_0 product

    /**
     * x[0 .. n) as Q8_0 blocks, as llama.cpp's AVX2/NEON quantize_row_q8_0: amax = max |x_i|,
     * dx = fp32(fp16(amax / 127)), q_i = x_i * (127 / amax) rounded to nearest, ties to even
     * (Math.rint: the float product is exact as a double). The quants are widened to shorts once
     * here, since every row of the matrix reads them. |q_i| <= 127 for any finite block (x_i * 127
     * / amax is at most 127 plus a rounding); the clamp only matters for an amax so tiny that
     * 127 / amax overflows, and keeps the kernels' int16 pair sums (SimdKernels) in range.
     */
    static void quantize(float[] x, int n, short[] qx, float[] dx) {
        quantize(x, 0, n, qx, dx);
    }

    /** The same for x[off .. off + n) (a row of a batch), into qx[0 .. n) and dx[0 .. n / 32). */
    static void quantize(float[] x, int off, int n, short[] qx, float[] dx) {
        for (int b = 0; b < n / BLOCK; b++) {
            int o = b * BLOCK;
            float amax = 0;
            for (int i = 0; i < BLOCK; i++) amax = Math.max(amax, Math.abs(x[off + o + i]));
            dx[b] = halfToFloat(floatToHalf(amax / 127f));
            float id = amax != 0 ? 127f / amax : 0f;
            for (int i = 0; i < BLOCK; i++) {
                qx[o + i] = (short) Math.max(-127, Math.min(127, (int) Math.rint(x[off + o + i] * id)));
            }
        }
    }
}
