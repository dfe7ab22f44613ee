/*
 * Every failure ends the run as one `error:` line and the contract's exit code (section 3):
 * Fail carries the code to main, which prints the message and exits; never a stack trace.
 */
package polyllama;

class Fail extends RuntimeException {
    static final int EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_BAD_FILE = 3;

    final int code;

    /** A runtime failure (exit 1: cannot write -o) or the base of the two below. */
    Fail(int code, String message) {
        super(message, null, false, false);  // no stack trace: it is never printed
        this.code = code;
    }
}
