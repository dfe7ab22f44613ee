/*
 * GGUF's 16-bit weights (docs/port-contract.md, "GGUF F16 and BF16"): F16 (ggml type 1, IEEE
 * binary16) and BF16 (type 30, the top half of a float32), 2 bytes a value, row after row. The
 * weights stay in the loaded bytes, converted to float32 where a kernel reads them (exact in both
 * types); a product with them is the float32 product with the activation as it is. (llama.cpp
 * rounds the activation to the weight's type first; the contract says why this project does not.)
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

    /**
     * float -> BF16 bits as the converters write them: to nearest, ties to even; a NaN stays a
     * quiet NaN (the carry would make it infinite). For the tests' files.
     */
    static int toBF16(float f) {
        int bits = Float.floatToRawIntBits(f);
        if ((bits & 0x7fffffff) > 0x7f800000) return (bits >>> 16) | 0x40;
        return (bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16;
    }
}
