# The thread pool: a parallel region is N shares of work on the Mojo runtime's
# workers, the calling thread working the last share itself, and the three ways it
# can hand the shares over and wait for them (POLYLLAMA_MOJO_DISPATCH).

from std.ffi import external_call
from std.atomic import Atomic, Ordering
from std.memory import Pointer
from std.os import getenv
from std.sys import llvm_intrinsic, num_logical_cores
from std.sys.info import CompilationTarget
from std.time import perf_counter_ns
from max.algorithm import parallelize
from max.gpu.host import DeviceContext
from model import KPtr, alloc_keys, runtime_error


# How Pool.run hands a region's shares to the runtime's workers and waits for them
# (POLYLLAMA_MOJO_DISPATCH; README, "Performance levers").
comptime DISPATCH_SPIN = 0  # unset: queue n - 1 shares, work one, spin on a counter
comptime DISPATCH_SYNCHRONIZE = 1  # "synchronize": queue n - 1 shares, work one, synchronize()
comptime DISPATCH_LIBRARY = 2  # "parallelize": the library's parallelize(task, n, n)

# How long the caller spins on the completion counter before it gives up and sleeps
# in synchronize(). A sleep and its wake cost far more than a short spin, so a wait
# shorter than this is spent spinning, and a longer one pays that cost on top of
# the spin. It is about as long as the runtime's own idle workers poll for work
# before they sleep. It is also the bound that keeps the spin from starving
# anything: whatever the caller waits on, after this long it waits the way the
# synchronize dispatch always has.
comptime SPIN_NS = 200_000

# Regions between two synchronize() calls when every wait was answered by the
# counter. Each region queues one operation on the context's stream; whether the
# runtime frees a finished one before synchronize() sees it was not checked (README).
# Calling it once every SYNC_EVERY regions (every 2-3 tokens on the 15M shape),
# right after the counter has shown every queued share finished, keeps what the
# stream holds bounded, and it should then find nothing left to wait for.
comptime SYNC_EVERY = 64

# Regions that wait in synchronize() without spinning after a spin gave up. A spin
# runs out when a queued share cannot get a CPU (other programs busy on this one's
# CPUs: measured in the port's README), and then
# spinning only adds SPIN_NS to every wait; spinning again only after this many
# regions keeps that to one SPIN_NS per COOLDOWN_REGIONS + 1 waits, and costs a
# quiet machine no more than this many sleeps after a share that was merely slow.
comptime COOLDOWN_REGIONS = 64

comptime APtr = Pointer[Atomic[Int64], MutUntrackedOrigin]


def dispatch_for(n: Int) -> Int:
    """The dispatch for n shares a region: POLYLLAMA_MOJO_DISPATCH=synchronize or
    =parallelize as asked; unset (or anything else), the spinning wait when the
    caller and the n - 1 workers it waits for can each have a CPU, else synchronize.
    With more shares than CPUs a spinning caller holds a CPU that a queued share
    needs, so nearly every wait runs out its SPIN_NS and sleeps anyway, the spin
    only adding to it (measured in the port's README)."""
    var v = getenv("POLYLLAMA_MOJO_DISPATCH")
    if v == "parallelize":
        return DISPATCH_LIBRARY
    if v == "synchronize" or n > num_logical_cores():
        return DISPATCH_SYNCHRONIZE
    return DISPATCH_SPIN


@always_inline
def cpu_relax():
    """The spin-wait hint: x86 `pause`, arm64 `yield`, nothing elsewhere. It keeps a
    spinning core from flooding the memory system with loads of the counter and
    gives a sibling hyperthread the core meanwhile."""
    comptime if CompilationTarget.is_x86():
        llvm_intrinsic["llvm.x86.sse2.pause", NoneType]()
    elif CompilationTarget.has_neon():
        llvm_intrinsic["llvm.aarch64.hint", NoneType](Int32(1))


struct Pool(Movable):
    """Runs task(0) .. task(n - 1) in parallel and returns when all are done.

    One CPU DeviceContext serves the whole run: the first n - 1 shares are queued on
    the runtime's workers, the calling thread runs the last one itself and then waits
    for the rest. By default it waits on a completion counter the pool owns: every
    queued share adds 1 when it is done, and the caller spins until the region's n - 1
    have arrived, so it does not sleep in synchronize() once per region (README,
    "Performance levers"). With more shares than CPUs it waits in synchronize()
    instead, as POLYLLAMA_MOJO_DISPATCH=synchronize makes it always do;
    =parallelize uses the library's `parallelize` (a new context per region, all n
    shares queued, the caller asleep until they are done). Both are kept for
    before/after runs. Whichever, share t is the same work, so the output is the same."""

    var n: Int
    var dispatch: Int  # DISPATCH_*
    var ctx: Optional[DeviceContext]  # the shared context, unless n == 1 or DISPATCH_LIBRARY
    # Written by the workers: shares finished since the pool was made. One counter
    # for the whole run, never reset, so no store of the caller's can race a late add.
    var finished: APtr
    # The caller's own bookkeeping, on the heap because run() takes the pool
    # immutably: [0] shares queued since the pool was made, [1] regions since the
    # last synchronize(), [2] waits the spin gave up on (they fell back to
    # synchronize()), [3] regions left that wait in synchronize() without spinning.
    var book: KPtr

    def __init__(out self, n: Int) raises:
        self = Pool(n, dispatch_for(n))

    def __init__(out self, n: Int, dispatch: Int) raises:
        """A pool of n shares per region with the given DISPATCH_* (tests pick it)."""
        self.n = n
        self.dispatch = dispatch
        self.ctx = None
        self.book = alloc_keys(4)
        # an allocation of its own, apart from `book`, which the caller writes
        self.finished = external_call["calloc", APtr](1, 64)
        if Int(self.finished) == 0:
            raise runtime_error("cannot allocate 64 bytes")
        if n > 1 and dispatch != DISPATCH_LIBRARY:
            try:
                self.ctx = DeviceContext(api="cpu")
            except e:
                raise runtime_error("cannot start the worker threads: " + String(e))

    def __deinit__(deinit self):
        # The spinning dispatch returns while the stream may still hold finished
        # operations (and a failing run may leave queued ones): retire them all
        # before the context goes, as the synchronize dispatch always did.
        if self.ctx:
            try:
                self.ctx.value().synchronize()
            except:
                pass
        external_call["free", NoneType](self.finished)
        external_call["free", NoneType](self.book)

    def run[F: def(Int) -> None](self, task: F) raises:
        if self.n <= 1:
            task(0)
        elif self.dispatch == DISPATCH_LIBRARY:
            parallelize(task, self.n, self.n)
        elif self.dispatch == DISPATCH_SYNCHRONIZE:
            try:
                self.ctx.value().enqueue_cpu_range(task, count=self.n - 1)
                task(self.n - 1)
                self.ctx.value().synchronize()
            except e:
                raise runtime_error("worker threads failed: " + String(e))
        else:
            self.run_spinning(task)

    def run_spinning[F: def(Int) -> None](self, task: F) raises:
        """Queues shares 0 .. n - 2, each adding 1 to `finished` (release) once its
        work is done, runs share n - 1, then waits until `finished` has all n - 1
        (acquire: their writes are then visible here); for COOLDOWN_REGIONS regions
        after a spin gave up it waits in synchronize() instead. The closure the runtime calls
        lives in this frame; nothing of it is read after a share's add, so returning
        once every add has arrived leaves the runtime nothing to read here."""
        var finished = self.finished

        def share(t: Int) {imm}:
            task(t)
            _ = finished[].fetch_add[ordering=Ordering.RELEASE](1)

        var target = Int64(self.book.unsafe_load(0)) + Int64(self.n - 1)
        self.book.unsafe_store(0, UInt64(target))
        try:
            self.ctx.value().enqueue_cpu_range(share, count=self.n - 1)
        except e:
            raise runtime_error("worker threads failed: " + String(e))
        task(self.n - 1)
        var cooling = self.book.unsafe_load(3)
        var answered = cooling == 0 and self.spin_until(target)
        var regions = self.book.unsafe_load(1) + 1
        if not answered or regions >= SYNC_EVERY:
            self.synchronize_to(target)
            regions = 0
        self.book.unsafe_store(1, regions)
        if cooling > 0:
            self.book.unsafe_store(3, cooling - 1)
        elif not answered:
            self.book.unsafe_store(2, self.book.unsafe_load(2) + 1)
            self.book.unsafe_store(3, COOLDOWN_REGIONS)

    def spin_until(self, target: Int64) -> Bool:
        """Spins until `finished` reaches target; False after SPIN_NS without it.
        Bounded, so a share the runtime has not started (more shares than workers,
        a descheduled worker, a loaded machine) costs at most SPIN_NS of spinning
        before the caller waits in synchronize(), which is how the synchronize
        dispatch waits for every region."""
        if self.finished[].load[ordering=Ordering.ACQUIRE]() >= target:
            return True
        var start = perf_counter_ns()
        while True:
            for _ in range(64):
                cpu_relax()
                if self.finished[].load[ordering=Ordering.ACQUIRE]() >= target:
                    return True
            if Int(perf_counter_ns() - start) > SPIN_NS:
                return False

    def synchronize_to(self, target: Int64) raises:
        """synchronize(), which returns once every queued operation is done; then
        every share must have added its 1 (a check on the protocol: it raises if not)."""
        try:
            self.ctx.value().synchronize()
        except e:
            raise runtime_error("worker threads failed: " + String(e))
        var got = self.finished[].load[ordering=Ordering.ACQUIRE]()
        if got != target:
            raise runtime_error("worker threads failed: " + String(got) + " of " + String(target) + " shares finished")

    def fallbacks(self) -> Int:
        """Waits so far that the spin gave up on and left to synchronize()."""
        return Int(self.book.unsafe_load(2))
