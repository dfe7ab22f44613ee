/* File access shared by the checkpoint and tokenizer readers: every failure is a FormatError. */
package polyllama;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.channels.FileChannel;
import java.nio.file.AccessDeniedException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;

final class Io {
    private Io() {}

    static FileChannel open(String path) {
        Path p = Path.of(path);
        if (Files.isDirectory(p)) throw new FormatError(path, "cannot open: is a directory");
        try {
            return FileChannel.open(p, StandardOpenOption.READ);
        } catch (NoSuchFileException e) {
            throw new FormatError(path, "cannot open: no such file");
        } catch (AccessDeniedException e) {
            throw new FormatError(path, "cannot open: permission denied");
        } catch (IOException | SecurityException e) {
            throw new FormatError(path, "cannot open: " + e.getMessage());
        }
    }

    /** Up to n bytes from offset at, little-endian (fewer when the file ends first). */
    static ByteBuffer readAt(FileChannel ch, long at, int n) throws IOException {
        ByteBuffer bb = ByteBuffer.allocate(n).order(ByteOrder.LITTLE_ENDIAN);
        while (bb.hasRemaining()) {
            if (ch.read(bb, at + bb.position()) < 0) break;
        }
        bb.flip();
        return bb;
    }
}
