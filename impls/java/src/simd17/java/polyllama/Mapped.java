/*
 * How SimdKernels (src/simd-common) loads vectors from the mapped weights on JDK 17-18: straight
 * from the ByteBuffer, which jdk.incubator.vector reads there (fromByteBuffer). src/simd22 has
 * the JDK 22+ Mapped, with the same two loads over a MemorySegment.
 */
package polyllama;

import java.nio.ByteBuffer;
import jdk.incubator.vector.ByteVector;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;

final class Mapped {
    private final ByteBuffer bb;

    Mapped(ByteBuffer bb) {
        this.bb = bb;
    }

    /** S's lanes of little-endian float32 from byte offset at. */
    FloatVector floats(int at) {
        return FloatVector.fromByteBuffer(SimdKernels.S, bb, at, SimdKernels.LE);
    }

    /** QB's lanes of int8 from byte offset at. */
    ByteVector bytes(int at) {
        return ByteVector.fromByteBuffer(SimdKernels.QB, bb, at, SimdKernels.LE);
    }

    /** HI's lanes of little-endian int32 from byte offset at: pairs of 16-bit weights. */
    IntVector ints(int at) {
        return IntVector.fromByteBuffer(SimdKernels.HI, bb, at, SimdKernels.LE);
    }
}
