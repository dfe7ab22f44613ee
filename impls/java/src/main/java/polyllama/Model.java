/*
 * A checkpoint read and mapped: its config, its weights and, for GGUF, the embedded tokenizer.
 * read() sniffs the format (contract section 4) and hands over to Checkpoint or Gguf.
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

    /** Sniffs the format from the first bytes and reads the checkpoint: header checks, then mmap. */
    static Model read(String path) {
        try (FileChannel ch = Io.open(path)) {  // the mappings outlive the channel
            ByteBuffer head = Io.readAt(ch, 0, 4);
            int magic = head.remaining() == 4 ? head.getInt(0) : 0;
            if (magic == Gguf.MAGIC) return Gguf.read(path, ch);
            return Checkpoint.read(path, ch, magic == Checkpoint.V1_MAGIC);
        } catch (IOException e) {
            throw new FormatError(path, "cannot read: " + e.getMessage());
        }
    }
}
