/*
 * A fixed pool of compute threads, made once (counted in load_s): N - 1 daemon workers plus the
 * main thread as worker 0, woken per matmul. A dispatch publishes the job through a volatile
 * generation counter and unparks the workers, which spin briefly before parking again.
 */
package polyllama;

import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.locks.LockSupport;

final class Pool {
    interface Task {
        /** This worker's share of the job: worker in [0, workers). */
        void run(int worker, int workers);
    }

    private static final int SPINS = 1 << 12;
    final int workers;
    private final Thread[] threads;
    private volatile Task task;
    private volatile long generation;
    private final AtomicInteger pending = new AtomicInteger();
    private volatile Throwable failure;

    Pool(int workers) {
        this.workers = workers;
        threads = new Thread[workers - 1];
        for (int i = 1; i < workers; i++) {
            final int id = i;
            Thread t = new Thread(() -> loop(id), "polyllama-worker-" + i);
            t.setDaemon(true);
            threads[i - 1] = t;
            t.start();
        }
    }

    /** Runs task on every worker, the calling thread being worker 0, and waits for all. */
    void run(Task t) {
        if (workers == 1) {
            t.run(0, 1);
            return;
        }
        task = t;
        pending.set(workers - 1);
        generation++;  // the volatile write publishes task to the workers
        for (Thread th : threads) LockSupport.unpark(th);
        t.run(0, workers);
        for (int spins = 0; pending.get() != 0; spins++) {
            if (spins < SPINS) Thread.onSpinWait();
            else Thread.yield();
        }
        Throwable f = failure;
        if (f != null) throw new IllegalStateException("worker failed: " + f, f);
    }

    private void loop(int id) {
        long seen = 0;
        while (true) {
            // spin a little first: the next matmul usually follows within microseconds
            for (int spins = 0; generation == seen; spins++) {
                if (spins < SPINS) Thread.onSpinWait();
                else LockSupport.park(this);
            }
            seen = generation;
            try {
                task.run(id, workers);
            } catch (Throwable e) {
                failure = e;
            }
            pending.decrementAndGet();
        }
    }
}
