package polyllama;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Random;
import org.junit.jupiter.api.Assumptions;
import org.junit.jupiter.api.Test;

/** Kernels: the Vector API is picked where it can be, and agrees with plain Java. */
class KernelsTest {
    @Test
    void picksTheVectorApiWhenTheModuleIsThere() {
        Assumptions.assumeTrue(ModuleLayer.boot().findModule("jdk.incubator.vector").isPresent());
        int feature = Runtime.version().feature();
        Assumptions.assumeTrue(feature <= 18 || feature >= 22, "no SimdKernels for JDK 19-21");
        assertTrue(Kernels.pick().name().startsWith("vector-api"), Kernels.pick().name());
    }

    @Test
    void simdKernelsAgreeWithScalar() {
        Kernels simd = Kernels.pick(), scalar = new ScalarKernels();
        int rows = 7, n = 300;
        ByteBuffer bb = ByteBuffer.allocateDirect(4 * rows * n).order(ByteOrder.LITTLE_ENDIAN);
        float[] x = new float[n];
        Random r = new Random(1);
        for (int i = 0; i < n; i++) x[i] = (float) r.nextGaussian();
        for (int i = 0; i < rows * n; i++) bb.putFloat(4 * i, (float) r.nextGaussian());
        float[] a = new float[rows], b = new float[rows];
        simd.matvec(bb, 0, rows, x, n, a, 0);
        scalar.matvec(bb, 0, rows, x, n, b, 0);
        for (int i = 0; i < rows; i++) assertEquals(b[i], a[i], 1e-4f * (1 + Math.abs(b[i])));
        // the weights as Loader reads them onto the heap: a read-only view of a slice of an array
        ByteBuffer heap = ByteBuffer.allocate(bb.capacity() + 68).slice(68, bb.capacity()).put(bb.duplicate())
                .clear().asReadOnlyBuffer().order(ByteOrder.LITTLE_ENDIAN);
        float[] h = new float[rows];
        simd.matvec(heap, 0, rows, x, n, h, 0);
        assertArrayEquals(a, h);
        scalar.matvec(heap, 0, rows, x, n, h, 0);
        assertArrayEquals(b, h);
        assertEquals(scalar.dot(x, 1, x, 2, 250), simd.dot(x, 1, x, 2, 250), 1e-3f);
    }
}
