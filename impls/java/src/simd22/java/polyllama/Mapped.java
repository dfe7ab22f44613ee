/*
 * How SimdKernels (src/simd-common) loads vectors from the mapped weights on JDK 22+, where the
 * foreign memory API is final and fromByteBuffer is gone: through a MemorySegment view of the
 * ByteBuffer (fromMemorySegment), made once per matvec. src/simd17 has the JDK 17-18 Mapped,
 * with the same two loads over the ByteBuffer itself.
 */
package polyllama;

import java.lang.foreign.MemorySegment;
import java.nio.ByteBuffer;
import jdk.incubator.vector.ByteVector;
import jdk.incubator.vector.FloatVector;
import jdk.incubator.vector.IntVector;

final class Mapped {
    private final MemorySegment seg;

    Mapped(ByteBuffer bb) {
        this.seg = MemorySegment.ofBuffer(bb);
    }

    /** S's lanes of little-endian float32 from byte offset at. */
    FloatVector floats(int at) {
        return FloatVector.fromMemorySegment(SimdKernels.S, seg, at, SimdKernels.LE);
    }

    /** QB's lanes of int8 from byte offset at. */
    ByteVector bytes(int at) {
        return ByteVector.fromMemorySegment(SimdKernels.QB, seg, at, SimdKernels.LE);
    }

    /** HI's lanes of little-endian int32 from byte offset at: pairs of 16-bit weights. */
    IntVector ints(int at) {
        return IntVector.fromMemorySegment(SimdKernels.HI, seg, at, SimdKernels.LE);
    }
}
