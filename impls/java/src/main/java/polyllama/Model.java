/*
 * A checkpoint read and mapped (or read onto the heap): its config, its weights and, for GGUF,
 * the embedded tokenizer. read() sniffs the format (contract section 4) and hands over to
 * Checkpoint or Gguf.
 */
package polyllama;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;

final class Model {
    final Config config;
    final Weights weights;
    final Tokenizer tokenizer;   // the GGUF's embedded tokenizer; null for .bin checkpoints

    Model(Config config, Weights weights, Tokenizer tokenizer) {
        this.config = config;
        this.weights = weights;
        this.tokenizer = tokenizer;
    }

    /** The checkpoint with its tensors mapped from the file. */
    static Model read(String path) {
        return read(path, false);
    }

    /**
     * Sniffs the format from the first bytes and reads the checkpoint: header checks, then the
     * tensors, mapped or (onHeap) read onto the Java heap, where huge pages can back them.
     */
    static Model read(String path, boolean onHeap) {
        try (FileChannel ch = Io.open(path)) {  // the mappings outlive the channel
            ByteBuffer head = Io.readAt(ch, 0, 4);
            int magic = head.remaining() == 4 ? head.getInt(0) : 0;
            try {
                if (magic == Gguf.MAGIC) return Gguf.read(path, ch, onHeap);
                return Checkpoint.read(path, ch, magic == Checkpoint.V1_MAGIC, onHeap);
            } catch (OutOfMemoryError e) {
                if (!onHeap) throw e;
                // the checks refuse a bad file before any tensor is read: a good file, a small heap
                throw new FormatError(path, "cannot allocate " + ch.size() + " bytes on the Java heap (at most "
                        + (Runtime.getRuntime().maxMemory() >> 20) + " MiB): raise it with -Xmx (JDK_JAVA_OPTIONS),"
                        + " or set POLYLLAMA_HUGEPAGES=0");
            }
        } catch (IOException e) {
            throw new FormatError(path, "cannot read: " + e.getMessage());
        }
    }
}
