/*
 * A bad input file (contract section 4): missing, unreadable, malformed, an unsupported version
 * or a tokenizer that does not fit the model. Exit 3 with `error: <path>: <problem>`.
 */
package polyllama;

import java.nio.charset.StandardCharsets;

final class FormatError extends Fail {
    FormatError(String path, String problem) {
        super(EXIT_BAD_FILE, path + ": " + problem);
    }

    /**
     * A name read from a hostile file, safe for a one-line message: control bytes escaped and cut
     * short. Names are kept as ISO-8859-1 strings (one char per byte, so equal means equal bytes)
     * and shown as the UTF-8 they usually are.
     */
    static String show(String latin1) {
        String text = new String(latin1.getBytes(StandardCharsets.ISO_8859_1), StandardCharsets.UTF_8);
        StringBuilder out = new StringBuilder();
        for (int i = 0; i < text.length(); i++) {
            char ch = text.charAt(i);
            if (ch < 0x20 || ch == 0x7f) out.append(String.format("\\x%02x", (int) ch));
            else out.append(ch);
        }
        return out.length() <= 80 ? out.toString() : out.substring(0, 77) + "...";
    }
}
