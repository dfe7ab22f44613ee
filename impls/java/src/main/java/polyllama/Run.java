/*
 * polyllama's Java port: Llama 2 inference for Karpathy's llama2.c model family, laid out like
 * llama2.c's run.c, one class per file: Model (Checkpoint, Gguf) reads and maps the weights,
 * Tokenizer, Sampler, Transformer (the forward pass on a Pool with Kernels), Generation, and this
 * main. docs/port-contract.md is the specification; the Python reference core
 * (orchestrator/reference) is the executable definition.
 *
 * Weights are memory-mapped from the checkpoint (FileChannel.map, in blocks below the 2 GiB
 * ByteBuffer limit) or, where run.sh asks for huge pages, read once onto the Java heap, which
 * -XX:+UseTransparentHugePages backs with 2 MiB pages (README, "Performance levers"). The inner
 * loops come from Kernels: the Vector API (SimdKernels, jdk.incubator.vector) when the JVM has
 * the module, plain Java otherwise. -j N runs the forward pass on a pool of N compute threads
 * made once, the main thread being one of them.
 */
package polyllama;

import java.io.BufferedOutputStream;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;

public final class Run {
    private Run() {}

    /** Loads everything (timed as load_s), then runs the mode; the exit code. */
    static int run(Args a) throws IOException {
        long t0 = System.nanoTime();
        // run.sh sets this, with -XX:+UseTransparentHugePages, on Linux unless POLYLLAMA_HUGEPAGES=0
        boolean onHeap = Boolean.getBoolean("polyllama.hugepages") && fitsOnHeap(a.checkpoint);
        Model model = Model.read(a.checkpoint, onHeap);
        Config c = model.config;
        Tokenizer tokenizer;
        if (model.tokenizer != null) {
            tokenizer = model.tokenizer;
        } else if (a.tokenizer == null) {
            throw new UsageError("-z tokenizer is required for a .bin checkpoint");
        } else {
            tokenizer = Tokenizer.read(a.tokenizer, c.vocabSize);
        }
        // the KV cache holds the positions this run reaches, checked before anything is allocated
        int[] ids = a.mode.equals("logits") ? a.logitIds(c) : null;
        int steps = Generation.clampSteps(a.steps, c.seqLen);
        int rows = ids != null ? ids.length : steps;
        c.checkKvCache(a.checkpoint, rows);
        Pool pool = new Pool(a.threads);
        Kernels kernels = Kernels.pick();
        boolean verbose = Boolean.getBoolean("polyllama.verbose");
        if (verbose) System.err.println("kernels: " + kernels.name() + (onHeap ? ", weights on the heap" : ", weights mapped"));
        Transformer t = new Transformer(model, pool, kernels, a.batch, rows);
        if (!Boolean.getBoolean("polyllama.nowarmup")) {
            Weights w = model.weights;
            Kernels.warmUp(kernels, onHeap, w.hasQ8(), w.has(Matrix.F16), w.has(Matrix.BF16));
            long w0 = System.nanoTime();
            int passes = t.warmUp();
            if (verbose) System.err.printf("warm-up: %d forward passes, %.2f s%n", passes, Stats.seconds(System.nanoTime() - w0));
        }
        double load = Stats.seconds(System.nanoTime() - t0);

        Stats st;
        if (a.mode.equals("logits")) {
            st = Generation.logits(t, ids, a.output);
        } else {
            long seed = a.seed != 0 ? a.seed : System.currentTimeMillis() / 1000;
            Sampler sampler = new Sampler(a.temperature, a.topp, seed);
            OutputStream out = new BufferedOutputStream(new FileOutputStream(FileDescriptor.out), 1 << 16);
            st = Generation.generate(t, tokenizer, sampler, a.prompt, steps, a.ignoreBos, out);
        }
        System.err.println(st.line(a.threads, load));
        System.err.flush();
        return 0;
    }

    /**
     * Whether the weights go on the heap (huge pages) rather than mapped: only when the file takes
     * at most half the heap the JVM may grow to, so a file larger than the heap (a 7B model) is
     * mapped instead of refused. An unreadable path is Model.read's to report.
     */
    static boolean fitsOnHeap(String path) {
        try {
            return java.nio.file.Files.size(java.nio.file.Path.of(path)) <= Runtime.getRuntime().maxMemory() / 2;
        } catch (IOException | RuntimeException e) {
            return true;
        }
    }

    static String oneLine(String s) {
        return s == null ? "" : s.replace('\n', ' ').replace('\r', ' ');
    }

    /** Every failure is one `error:` line and the contract's exit code; never a stack trace. */
    public static void main(String[] args) {
        int code;
        try {
            code = run(Args.parse(args, Args.raw(args)));
        } catch (Fail f) {
            String msg = oneLine(f.getMessage());
            System.err.println(msg.startsWith("error: ") ? msg : "error: " + msg);
            if (f.code == Fail.EXIT_USAGE) System.err.println(Args.USAGE);
            code = f.code;
        } catch (OutOfMemoryError e) {
            System.err.println("error: out of memory (raise the JVM heap with -Xmx)");
            code = Fail.EXIT_RUNTIME;
        } catch (Throwable e) {
            System.err.println("error: " + oneLine(e.toString()));
            code = Fail.EXIT_RUNTIME;
        }
        System.err.flush();
        System.exit(code);
    }
}
