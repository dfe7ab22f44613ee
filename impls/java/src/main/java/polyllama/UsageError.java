/* A bad command line (contract section 2): exit 2, and main prints the usage summary after it. */
package polyllama;

final class UsageError extends Fail {
    UsageError(String message) {
        super(EXIT_USAGE, message);
    }
}
