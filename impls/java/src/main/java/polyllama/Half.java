/*
 * GGUF's 16-bit weights (docs/port-contract.md, "GGUF F16 and BF16"): F16 (ggml type 1, IEEE
 * binary16) and BF16 (type 30, the top half of a float32), 2 bytes a value, row after row. The
 * weights stay in the loaded bytes, converted to float32 where a kernel reads them (exact in both
 * types). A product with them first rounds the activation to the weight's type, ties to even, as
 * llama.cpp's CPU backend does (its vec_dot_type for F16 is F16, for BF16 BF16); each product of
 * two 16-bit values is then exact in float32, so only the order of the sum is the kernel's.
 */
package polyllama;

import java.nio.ByteBuffer;

final class Half {
    private Half() {}

    /** F16 bits -> float for every pattern (subnormals, infinities, NaN): one lookup a value. */
    private static final float[] F16 = new float[1 << 16];

    static {
        for (int h = 0; h < F16.length; h++) F16[h] = Q8.halfToFloat(h);
    }

    static float f16(int bits) {
        return F16[bits & 0xffff];
    }

    static float bf16(int bits) {
        return Float.intBitsToFloat((bits & 0xffff) << 16);
    }

    /** The value at bb[at] of a tensor of this type (Matrix.F16 or Matrix.BF16). */
    static float get(ByteBuffer bb, int at, boolean bf16) {
        int bits = bb.getShort(at);
        return bf16 ? bf16(bits) : f16(bits);
    }

    /** float -> BF16 bits: to nearest, ties to even; a NaN stays a quiet NaN (the carry would make it infinite). */
    static int toBF16(float f) {
        int bits = Float.floatToRawIntBits(f);
        if ((bits & 0x7fffffff) > 0x7f800000) return (bits >>> 16) | 0x40;
        return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
    }

    /** x[xo .. xo + n) rounded to F16 and back, into out[oo ..]: beyond 65504 (from 65520 on) it is infinite. */
    static void roundF16(float[] x, int xo, int n, float[] out, int oo) {
        for (int i = 0; i < n; i++) out[oo + i] = F16[Q8.floatToHalf(x[xo + i])];
    }

    /** x[xo .. xo + n) rounded to BF16 and back, into out[oo ..]. */
    static void roundBF16(float[] x, int xo, int n, float[] out, int oo) {
        for (int i = 0; i < n; i++) out[oo + i] = bf16(toBF16(x[xo + i]));
    }
}
