# Llama 2 inference in pure Mojo, after karpathy/llama2.c's run.c.
#
# One token at a time, fp32, weights memory-mapped from the checkpoint or, on
# Linux, read into huge pages (llama2.c v0/v1, GGUF with F32 or Q8_0 matrices).
# The port contract (docs/port-contract.md) is the specification;
# orchestrator/reference/ is the executable definition.
#
# Sections, top to bottom: run state, threads, forward pass, tokenizer, sampler,
# generation, command line. Config, weights, vocabulary and the shared helpers are
# model.mojo's; the model-file readers are formats.mojo's; the Q8_0 kernels
# q8_0.mojo's.

from std.collections import List
from std.ffi import external_call
from std.atomic import Atomic, Ordering
from std.math import exp, sqrt, cos, sin
from std.memory import Pointer, bitcast
from std.os import getenv
from std.sys import argv, llvm_intrinsic, num_logical_cores, simd_width_of
from std.sys.info import CompilationTarget
from std.time import perf_counter_ns
from max.algorithm import parallelize
from max.gpu.host import DeviceContext
from model import (
    BPtr, ByteTable, Config, EXIT_RUNTIME, EXIT_USAGE, FPtr, KPtr, Matrix, Model, QPtr, Vocab, alloc_floats,
    alloc_keys, alloc_quants, c_path, free_floats, free_quants, runtime_error, string_from, usage_error,
    write_all, write_string,
)
from formats import read_model, read_tokenizer
from q8_0 import Q8_BLOCK, Q8_PREFETCH_ROWS, dequantize_row, q8_matvec_rows, q8_row_bytes, quantize_activation

# SIMD lanes of one float32 register on the build machine (16 on AVX-512, 8 on
# AVX2, 4 on NEON): the generic vector code below adapts to it.
comptime NW = simd_width_of[DType.float32]()

comptime PORT_NAME = "mojo"
comptime BOS = 1
comptime EOS = 2


# ----------------------------------------------------------------------------
# Run state


struct RunState(Movable):
    """Activations of the current position and the KV cache."""

    var x: FPtr  # (dim) residual stream
    var xb: FPtr  # (dim) normed input of the attention and FFN blocks
    var xatt: FPtr  # (dim) attention output, all heads (workers still read xb meanwhile)
    var xb2: FPtr  # (dim) wo and w2 output
    var hb: FPtr  # (hidden_dim) w1 output, then the gated hidden state
    var hb2: FPtr  # (hidden_dim) w3 output
    var q: FPtr  # (dim)
    var att: FPtr  # (n_heads, seq_len) attention scores
    var rope_cos: FPtr  # (dim / 2) rotation of each adjacent pair at this position
    var rope_sin: FPtr  # (dim / 2)
    var logits: FPtr  # (vocab)
    var key_cache: FPtr  # (layer, seq_len, kv_dim)
    var value_cache: FPtr  # (layer, seq_len, kv_dim)
    var xq: QPtr  # (max(dim, hidden_dim)) the input of the current Q8_0 matmuls, quantized
    var xd: FPtr  # (max(dim, hidden_dim) / 32) and its block scales
    var q8_prefetch: Int  # rows ahead a Q8_0 matvec prefetches (q8_0.mojo); 0 with POLYLLAMA_Q8_PREFETCH=0

    def __init__(out self, c: Config) raises:
        var cache = c.n_layers * c.seq_len * c.kv_dim()
        self.x = alloc_floats(c.dim)
        self.xb = alloc_floats(c.dim)
        self.xatt = alloc_floats(c.dim)
        self.xb2 = alloc_floats(c.dim)
        self.hb = alloc_floats(c.hidden_dim)
        self.hb2 = alloc_floats(c.hidden_dim)
        self.q = alloc_floats(c.dim)
        self.att = alloc_floats(c.n_heads * c.seq_len)
        self.rope_cos = alloc_floats(c.dim // 2)
        self.rope_sin = alloc_floats(c.dim // 2)
        self.logits = alloc_floats(c.vocab_size)
        self.key_cache = alloc_floats(cache)
        self.value_cache = alloc_floats(cache)
        var widest = max(c.dim, c.hidden_dim)
        self.xq = alloc_quants(widest)
        self.xd = alloc_floats(widest // Q8_BLOCK + 1)
        self.q8_prefetch = 0 if getenv("POLYLLAMA_Q8_PREFETCH") == "0" else Q8_PREFETCH_ROWS

    def free(mut self):
        for p in [self.x, self.xb, self.xatt, self.xb2, self.hb, self.hb2, self.q, self.att,
                  self.rope_cos, self.rope_sin, self.logits, self.key_cache, self.value_cache, self.xd]:
            free_floats(p)
        free_quants(self.xq)


# ----------------------------------------------------------------------------
# Threads: a parallel region is N shares of work on the Mojo runtime's workers


# How Pool.run hands a region's shares to the runtime's workers and waits for them
# (POLYLLAMA_MOJO_DISPATCH; README, "Performance levers").
comptime DISPATCH_SPIN = 0  # unset: queue n - 1 shares, work one, spin on a counter
comptime DISPATCH_SYNCHRONIZE = 1  # "synchronize": queue n - 1 shares, work one, synchronize()
comptime DISPATCH_LIBRARY = 2  # "parallelize": the library's parallelize(task, n, n)

# How long the caller spins on the completion counter before it gives up and sleeps
# in synchronize(). A sleep and its wake cost tens of microseconds here, so a wait
# shorter than this is spent spinning, and a longer one pays that cost on top of at
# least 200 us. It is about as long as the runtime's own idle workers poll for work
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
# CPUs: with one of 2 CPUs taken, nearly every spin at -j 2 ran out), and then
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
    needs (at -j 3 and -j 8 on 2 CPUs nearly every wait ran out its SPIN_NS and
    slept anyway, so the spin only added to the wait)."""
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


# ----------------------------------------------------------------------------
# Forward pass. Batch-1 decoding reads every weight once per token, so it is
# memory-bound: the matmul streams rows with wide SIMD loads, four rows at a
# time so each load of x serves four rows, and splits rows across workers.


@always_inline
def dot(a: FPtr, b: FPtr, n: Int) -> Float32:
    var acc0 = SIMD[DType.float32, NW](0)
    var acc1 = SIMD[DType.float32, NW](0)
    var i = 0
    while i + 2 * NW <= n:
        acc0 += a.unsafe_load[width=NW](i) * b.unsafe_load[width=NW](i)
        acc1 += a.unsafe_load[width=NW](i + NW) * b.unsafe_load[width=NW](i + NW)
        i += 2 * NW
    if i + NW <= n:
        acc0 += a.unsafe_load[width=NW](i) * b.unsafe_load[width=NW](i)
        i += NW
    var s = (acc0 + acc1).reduce_add()
    while i < n:
        s += a.unsafe_load(i) * b.unsafe_load(i)
        i += 1
    return s


@always_inline
def matmul_4rows(xout: FPtr, x: FPtr, w: FPtr, n: Int, r: Int):
    """xout[r..r+4) = w[r..r+4) @ x: one pass over x for four weight rows."""
    var a0 = w.unsafe_offset(r * n)
    var a1 = a0.unsafe_offset(n)
    var a2 = a1.unsafe_offset(n)
    var a3 = a2.unsafe_offset(n)
    var c0 = SIMD[DType.float32, NW](0)
    var c1 = SIMD[DType.float32, NW](0)
    var c2 = SIMD[DType.float32, NW](0)
    var c3 = SIMD[DType.float32, NW](0)
    var i = 0
    while i + NW <= n:
        var xv = x.unsafe_load[width=NW](i)
        c0 += a0.unsafe_load[width=NW](i) * xv
        c1 += a1.unsafe_load[width=NW](i) * xv
        c2 += a2.unsafe_load[width=NW](i) * xv
        c3 += a3.unsafe_load[width=NW](i) * xv
        i += NW
    var s0 = c0.reduce_add()
    var s1 = c1.reduce_add()
    var s2 = c2.reduce_add()
    var s3 = c3.reduce_add()
    while i < n:
        var xs = x.unsafe_load(i)
        s0 += a0.unsafe_load(i) * xs
        s1 += a1.unsafe_load(i) * xs
        s2 += a2.unsafe_load(i) * xs
        s3 += a3.unsafe_load(i) * xs
        i += 1
    xout.unsafe_store(r, s0)
    xout.unsafe_store(r + 1, s1)
    xout.unsafe_store(r + 2, s2)
    xout.unsafe_store(r + 3, s3)


def matmul_rows(xout: FPtr, x: FPtr, w: FPtr, n: Int, r0: Int, r1: Int):
    """xout[r] = w[r, :] . x for r in [r0, r1); w is (d, n)."""
    var r = r0
    while r + 4 <= r1:
        matmul_4rows(xout, x, w, n, r)
        r += 4
    while r < r1:
        xout.unsafe_store(r, dot(w.unsafe_offset(r * n), x, n))
        r += 1


@fieldwise_init
struct Input(TrivialRegisterPassable):
    """The input of a group of matmuls: x, and when one of them is Q8_0, x quantized
    (once for the group: q, k and v share it, and so do w1 and w3)."""

    var x: FPtr  # (n)
    var q: QPtr  # (n) int8 quants, valid when a matrix of the group is Q8_0
    var d: FPtr  # (n / 32) their scales
    var prefetch: Int  # Q8_0 rows ahead to prefetch


def group_input(s: RunState, x: FPtr, n: Int, quantize: Bool) -> Input:
    """x as the input of a group of matmuls, quantized into the run state's buffers
    when `quantize` (a matrix of the group is Q8_0)."""
    if quantize:
        quantize_activation(s.xq, s.xd, x, n)
    return Input(x, s.xq, s.xd, s.q8_prefetch)


def matvec_rows(xout: FPtr, inp: Input, w: Matrix, n: Int, r0: Int, r1: Int):
    """xout[r] = W[r, :] . x for r in [r0, r1), by W's kernel."""
    if w.q8:
        q8_matvec_rows(xout, inp.q, inp.d, w.data, n, r0, r1, inp.prefetch)
    else:
        matmul_rows(xout, inp.x, w.floats(), n, r0, r1)


@always_inline
def split(total: Int, part: Int, parts: Int) -> Int:
    """Start of `part` of `parts` near-equal shares of [0, total), on 4-row bounds."""
    return ((total // 4) * part // parts) * 4 if part < parts else total


def matmul(s: RunState, xout: FPtr, x: FPtr, w: Matrix, n: Int, d: Int, pool: Pool) raises:
    """W (d, n) @ x (n) -> xout (d), rows split across the workers."""
    var inp = group_input(s, x, n, w.q8)
    var nthreads = pool.n
    if nthreads <= 1:
        matvec_rows(xout, inp, w, n, 0, d)
        return

    def task(t: Int) {imm}:
        matvec_rows(xout, inp, w, n, split(d, t, nthreads), split(d, t + 1, nthreads))

    pool.run(task)


def rmsnorm(o: FPtr, x: FPtr, weight: FPtr, n: Int):
    var ss = dot(x, x, n) / Float32(n) + Float32(1e-5)
    var scale = Float32(1.0) / sqrt(ss)
    for i in range(n):
        o.unsafe_store(i, weight.unsafe_load(i) * (scale * x.unsafe_load(i)))


def softmax(x: FPtr, n: Int):
    var max_val = x.unsafe_load(0)
    for i in range(1, n):
        max_val = max(max_val, x.unsafe_load(i))
    var total = Float32(0)
    for i in range(n):
        var e = exp(x.unsafe_load(i) - max_val)
        x.unsafe_store(i, e)
        total += e
    for i in range(n):
        x.unsafe_store(i, x.unsafe_load(i) / total)


def attention_heads(s: RunState, c: Config, l: Int, pos: Int, h0: Int, h1: Int):
    """Heads [h0, h1) at layer l: scores against every cached key, softmax, and the
    weighted sum of values into xatt."""
    var hs = c.head_size()
    var kv_dim = c.kv_dim()
    var kv_mul = c.n_heads // c.n_kv_heads
    var scale = Float32(1.0) / sqrt(Float32(hs))
    var layer_off = l * c.seq_len * kv_dim
    for h in range(h0, h1):
        var q = s.q.unsafe_offset(h * hs)
        var att = s.att.unsafe_offset(h * c.seq_len)
        var head_off = layer_off + (h // kv_mul) * hs
        for t in range(pos + 1):
            att.unsafe_store(t, dot(q, s.key_cache.unsafe_offset(head_off + t * kv_dim), hs) * scale)
        softmax(att, pos + 1)
        var xb = s.xatt.unsafe_offset(h * hs)
        for i in range(hs):
            xb.unsafe_store(i, 0)
        for t in range(pos + 1):
            var a = att.unsafe_load(t)
            var v = s.value_cache.unsafe_offset(head_off + t * kv_dim)
            var i = 0
            while i + NW <= hs:
                xb.unsafe_store(i, xb.unsafe_load[width=NW](i) + a * v.unsafe_load[width=NW](i))
                i += NW
            while i < hs:
                xb.unsafe_store(i, xb.unsafe_load(i) + a * v.unsafe_load(i))
                i += 1


def rope(vec: FPtr, s: RunState, a: Int, b: Int):
    """Rotate the adjacent pairs of vec[a:b) (a, b even) by this position's angles."""
    for i in range(a // 2, b // 2):
        var fcr = s.rope_cos.unsafe_load(i)
        var fci = s.rope_sin.unsafe_load(i)
        var v0 = vec.unsafe_load(2 * i)
        var v1 = vec.unsafe_load(2 * i + 1)
        vec.unsafe_store(2 * i, v0 * fcr - v1 * fci)
        vec.unsafe_store(2 * i + 1, v0 * fci + v1 * fcr)


def qkv_attention(s: RunState, m: Model, c: Config, inp: Input, l: Int, pos: Int, kv0: Int, kv1: Int):
    """KV heads [kv0, kv1) of layer l and the query heads that read them: their rows
    of q, k and v, RoPE, and attention into xatt."""
    var hs = c.head_size()
    var kv_mul = c.n_heads // c.n_kv_heads
    var dim = c.dim
    var cache_off = (l * c.seq_len + pos) * c.kv_dim()
    var k = s.key_cache.unsafe_offset(cache_off)
    var v = s.value_cache.unsafe_offset(cache_off)
    var q0 = kv0 * kv_mul * hs
    var q1 = kv1 * kv_mul * hs
    matvec_rows(s.q, inp, m.weights.wq[l], dim, q0, q1)
    matvec_rows(k, inp, m.weights.wk[l], dim, kv0 * hs, kv1 * hs)
    matvec_rows(v, inp, m.weights.wv[l], dim, kv0 * hs, kv1 * hs)
    rope(s.q, s, q0, q1)
    rope(k, s, kv0 * hs, kv1 * hs)
    attention_heads(s, c, l, pos, kv0 * kv_mul, kv1 * kv_mul)


def ffn_rows(s: RunState, inp: Input, w1: Matrix, w3: Matrix, n: Int, r0: Int, r1: Int):
    """hb[r0:r1) = silu(w1 @ xb) * (w3 @ xb): gate, up and SwiGLU in one pass."""
    matvec_rows(s.hb, inp, w1, n, r0, r1)
    matvec_rows(s.hb2, inp, w3, n, r0, r1)
    for i in range(r0, r1):
        var g = s.hb.unsafe_load(i)
        s.hb.unsafe_store(i, g / (Float32(1.0) + exp(-g)) * s.hb2.unsafe_load(i))


def forward(mut s: RunState, m: Model, token: Int, pos: Int, pool: Pool) raises -> FPtr:
    """Logits (vocab) after feeding `token` at position `pos`."""
    var nthreads = pool.n
    var c = m.config.copy()
    var dim = c.dim
    var hidden = c.hidden_dim
    var kv_dim = c.kv_dim()
    var hs = c.head_size()
    var x = s.x
    var xb = s.xb

    # x = token_embedding[token] (a Q8_0 table's row dequantized)
    var table = m.weights.token_embedding
    if table.q8:
        dequantize_row(x, table.data.unsafe_offset(token * q8_row_bytes(dim)), dim)
    else:
        var row = table.floats().unsafe_offset(token * dim)
        for i in range(dim):
            x.unsafe_store(i, row.unsafe_load(i))

    # RoPE rotation of each adjacent pair at this position, shared by all layers
    for i in range(dim // 2):
        var hd = (2 * i) % hs
        var freq = Float32(1.0) / (Float32(10000.0) ** (Float32(hd) / Float32(hs)))
        var a = Float32(pos) * freq
        s.rope_cos.unsafe_store(i, cos(a))
        s.rope_sin.unsafe_store(i, sin(a))

    for l in range(c.n_layers):
        var wq = m.weights.wq[l]
        var wk = m.weights.wk[l]
        var wv = m.weights.wv[l]
        var cache_off = (l * c.seq_len + pos) * kv_dim
        # k and v go straight into this position's cache row
        var k = s.key_cache.unsafe_offset(cache_off)
        var v = s.value_cache.unsafe_offset(cache_off)
        var q = s.q

        rmsnorm(xb, x, m.weights.rms_att[l], dim)
        var qkv_in = group_input(s, xb, dim, wq.q8 or wk.q8 or wv.q8)

        # q = wq @ xb, k = wk @ xb, v = wv @ xb, RoPE, attention. Each KV head with
        # its query heads needs nothing from the others, so when the KV heads split
        # evenly across the workers all of it is one parallel region.
        var n_kv = c.n_kv_heads
        if nthreads <= 1:
            qkv_attention(s, m, c, qkv_in, l, pos, 0, n_kv)
        elif n_kv % nthreads == 0:
            def fused_task(t: Int) {imm}:
                qkv_attention(s, m, c, qkv_in, l, pos, n_kv * t // nthreads, n_kv * (t + 1) // nthreads)

            pool.run(fused_task)
        else:
            def qkv_task(t: Int) {imm}:
                matvec_rows(q, qkv_in, wq, dim, split(dim, t, nthreads), split(dim, t + 1, nthreads))
                matvec_rows(k, qkv_in, wk, dim, split(kv_dim, t, nthreads), split(kv_dim, t + 1, nthreads))
                matvec_rows(v, qkv_in, wv, dim, split(kv_dim, t, nthreads), split(kv_dim, t + 1, nthreads))

            pool.run(qkv_task)
            rope(q, s, 0, dim)
            rope(k, s, 0, kv_dim)
            var n_heads = c.n_heads

            def att_task(t: Int) {imm}:
                attention_heads(s, c, l, pos, n_heads * t // nthreads, n_heads * (t + 1) // nthreads)

            pool.run(att_task)

        # x += wo @ xatt
        matmul(s, s.xb2, s.xatt, m.weights.wo[l], dim, dim, pool)
        for i in range(dim):
            x.unsafe_store(i, x.unsafe_load(i) + s.xb2.unsafe_load(i))

        # FFN: xb = rmsnorm(x), then x += w2 @ (silu(w1 @ xb) * (w3 @ xb))
        rmsnorm(xb, x, m.weights.rms_ffn[l], dim)
        var w1 = m.weights.w1[l]
        var w3 = m.weights.w3[l]
        var ffn_in = group_input(s, xb, dim, w1.q8 or w3.q8)
        if nthreads <= 1:
            ffn_rows(s, ffn_in, w1, w3, dim, 0, hidden)
        else:
            def ffn_task(t: Int) {imm}:
                ffn_rows(s, ffn_in, w1, w3, dim, split(hidden, t, nthreads), split(hidden, t + 1, nthreads))

            pool.run(ffn_task)
        matmul(s, s.xb2, s.hb, m.weights.w2[l], hidden, dim, pool)
        for i in range(dim):
            x.unsafe_store(i, x.unsafe_load(i) + s.xb2.unsafe_load(i))

    rmsnorm(x, x, m.weights.rms_final, dim)
    # logits = wcls @ x
    matmul(s, s.logits, x, m.weights.wcls, dim, c.vocab_size, pool)
    return s.logits


# ----------------------------------------------------------------------------
# Tokenizer: byte-pair encoding with the dummy prefix and byte fallback; decode
# with run.c's rules.


struct Tokenizer(Movable):
    var vocab: Vocab
    var lookup: ByteTable  # piece bytes -> lowest id with those bytes

    def __init__(out self, var vocab: Vocab):
        self.vocab = vocab^
        self.lookup = ByteTable(self.vocab.size())
        var base = self.vocab.bytes.unsafe_ptr()
        for i in range(self.vocab.size()):
            var off = self.vocab.offsets[i]
            # ids ascend, so a duplicated piece keeps its lower id
            self.lookup.insert(BPtr(unsafe_from_address=Int(base) + off),
                               self.vocab.offsets[i + 1] - off, i, False)

    def piece_ptr(self, id: Int) -> BPtr:
        return BPtr(unsafe_from_address=Int(self.vocab.bytes.unsafe_ptr()) + self.vocab.offsets[id])

    def piece_len(self, id: Int) -> Int:
        return self.vocab.offsets[id + 1] - self.vocab.offsets[id]

    def find(self, p: BPtr, n: Int) -> Int:
        return self.lookup.find(p, n)

    def byte_token(self, b: UInt8) -> Int:
        """The byte-fallback id <0xHH> (3 + byte); <unk> in a vocabulary too small to
        have byte tokens, where run.c would index out of bounds."""
        var id = Int(b) + 3
        return id if id < self.vocab.size() else 0

    def encode(self, text: List[UInt8], bos: Bool, eos: Bool) -> List[Int]:
        var tokens = List[Int]()
        if bos:
            tokens.append(BOS)
        var n = len(text)
        var tp = BPtr(unsafe_from_address=Int(text.unsafe_ptr()))
        if n > 0:
            # the dummy prefix: sentencepiece's add_dummy_prefix
            var space = List[UInt8](length=1, fill=32)
            var sid = self.find(BPtr(unsafe_from_address=Int(space.unsafe_ptr())), 1)
            _ = space^
            tokens.append(sid if sid >= 0 else self.byte_token(32))
        # UTF-8 code point groups: a piece if the vocabulary has one, else bytes
        var i = 0
        while i < n:
            var j = i + 1
            while j < n and (Int(text[j]) & 0xC0) == 0x80 and j - i < 4:
                j += 1
            var id = self.find(tp.unsafe_offset(i), j - i)
            if id >= 0:
                tokens.append(id)
            else:
                for b in range(i, j):
                    tokens.append(self.byte_token(text[b]))
            i = j
        self.merge(tokens)
        if eos:
            tokens.append(EOS)
        return tokens^

    def merge(self, mut tokens: List[Int]):
        """Merge the best-scoring adjacent pair until none is in the vocabulary."""
        var buf = List[UInt8](length=2 * self.vocab.max_token_length + 2, fill=0)
        var bp = BPtr(unsafe_from_address=Int(buf.unsafe_ptr()))
        while True:
            var best_score = Float32.MIN
            var best_id = -1
            var best_i = -1
            for i in range(len(tokens) - 1):
                var la = self.piece_len(tokens[i])
                var lb = self.piece_len(tokens[i + 1])
                if la + lb > len(buf):
                    continue  # longer than any piece
                var pa = self.piece_ptr(tokens[i])
                var pb = self.piece_ptr(tokens[i + 1])
                for j in range(la):
                    bp.unsafe_store(j, pa.unsafe_load(j))
                for j in range(lb):
                    bp.unsafe_store(la + j, pb.unsafe_load(j))
                var id = self.find(bp, la + lb)
                if id >= 0 and (best_i < 0 or self.vocab.scores[id] > best_score):
                    best_score = self.vocab.scores[id]
                    best_id = id
                    best_i = i
            if best_i < 0:
                _ = buf^
                return
            tokens[best_i] = best_id
            _ = tokens.pop(best_i + 1)

    def decode(self, prev: Int, token: Int) -> List[UInt8]:
        """The bytes to print for `token` after `prev`."""
        var p = self.piece_ptr(token)
        var n = self.piece_len(token)
        # after BOS, sentencepiece drops the leading space of a piece
        if prev == BOS and n > 0 and p.unsafe_load(0) == 32:
            p = p.unsafe_offset(1)
            n -= 1
        var out = List[UInt8]()
        # a raw byte token <0xHH>
        if n == 6 and p.unsafe_load(0) == 60 and p.unsafe_load(1) == 48 and p.unsafe_load(2) == 120 and p.unsafe_load(5) == 62:
            var hi = hex_digit(p.unsafe_load(3))
            var lo = hex_digit(p.unsafe_load(4))
            if hi >= 0 and lo >= 0:
                out.append(UInt8(hi * 16 + lo))
                return out^
        for i in range(n):
            out.append(p.unsafe_load(i))
        return out^


def hex_digit(b: UInt8) -> Int:
    if b >= 48 and b <= 57:
        return Int(b) - 48
    if b >= 65 and b <= 70:
        return Int(b) - 55
    if b >= 97 and b <= 102:
        return Int(b) - 87
    return -1


def safe_piece(piece: List[UInt8]) -> Bool:
    """run.c's safe_printf: skip empty pieces and lone unprintable bytes."""
    if len(piece) == 0:
        return False
    if len(piece) == 1:
        var b = piece[0]
        var printable = b >= 0x20 and b <= 0x7E
        var space = b == 9 or b == 10 or b == 11 or b == 12 or b == 13
        return printable or space
    return True


# ----------------------------------------------------------------------------
# Sampler: argmax, multinomial and top-p over llama2.c's xorshift RNG.


struct Rng(Movable):
    var state: UInt64

    def __init__(out self, seed: UInt64):
        self.state = seed

    def next_u32(mut self) -> UInt32:
        var s = self.state
        s ^= s >> 12
        s ^= s << 25
        s ^= s >> 27
        self.state = s
        return UInt32((s * UInt64(0x2545F4914F6CDD1D)) >> 32)

    def next_f32(mut self) -> Float32:
        return Float32(self.next_u32() >> 8) / Float32(16777216.0)


def argmax(p: FPtr, n: Int) -> Int:
    var best = 0
    var best_val = p.unsafe_load(0)
    for i in range(1, n):
        if p.unsafe_load(i) > best_val:
            best_val = p.unsafe_load(i)
            best = i
    return best


def sample_mult(probs: FPtr, n: Int, coin: Float32) -> Int:
    var cdf = Float32(0)
    for i in range(n):
        cdf += probs.unsafe_load(i)
        if coin < cdf:
            return i
    return n - 1


def sort_desc(keys: KPtr, tmp: KPtr, counts: KPtr, n: Int):
    """Stable LSD radix sort of packed candidates on their upper 32 bits, so that
    equal probabilities keep their (ascending) id order."""
    var src = keys
    var dst = tmp
    for shift in range(32, 64, 8):
        for b in range(257):
            counts.unsafe_store(b, 0)
        for i in range(n):
            var b = Int((src.unsafe_load(i) >> UInt64(shift)) & 255)
            counts.unsafe_store(b + 1, counts.unsafe_load(b + 1) + 1)
        for b in range(256):
            counts.unsafe_store(b + 1, counts.unsafe_load(b + 1) + counts.unsafe_load(b))
        for i in range(n):
            var k = src.unsafe_load(i)
            var b = Int((k >> UInt64(shift)) & 255)
            var at = Int(counts.unsafe_load(b))
            dst.unsafe_store(at, k)
            counts.unsafe_store(b, UInt64(at + 1))
        var t = src
        src = dst
        dst = t
    # four passes: the sorted keys are back in `keys`


def sample_topp(probs: FPtr, n: Int, topp: Float32, coin: Float32, keys: KPtr, tmp: KPtr, counts: KPtr) -> Int:
    """Nucleus sampling: the smallest set of most likely ids whose mass exceeds topp.
    keys, tmp: (n) scratch; counts: (257) scratch."""
    # ids below the cutoff cannot be in the nucleus: skip sorting them
    var cutoff = (Float32(1.0) - topp) / Float32(n - 1)
    var m = 0
    for i in range(n):
        var p = probs.unsafe_load(i)
        if p >= cutoff:
            # probabilities are >= 0, so their bits order like them: invert for
            # descending order, the id in the low half breaks ties
            var bits = UInt64(~bitcast[DType.uint32, 1](p))
            keys.unsafe_store(m, (bits << 32) | UInt64(i))
            m += 1
    sort_desc(keys, tmp, counts, m)
    var cum = Float32(0)
    var last = m - 1
    for i in range(m):
        cum += probs.unsafe_load(Int(keys.unsafe_load(i) & 0xFFFFFFFF))
        if cum > topp:
            last = i
            break
    # cum is now the mass of the first last + 1 candidates
    var r = coin * cum
    var cdf = Float32(0)
    for i in range(last + 1):
        var id = Int(keys.unsafe_load(i) & 0xFFFFFFFF)
        cdf += probs.unsafe_load(id)
        if r < cdf:
            return id
    return Int(keys.unsafe_load(last) & 0xFFFFFFFF)


struct Sampler(Movable):
    var vocab_size: Int
    var temperature: Float32
    var topp: Float64
    var rng: Rng
    var keys: KPtr  # (vocab) top-p candidates, packed (probability, id)
    var tmp: KPtr  # (vocab) radix sort buffer
    var counts: KPtr  # (257) radix sort histogram

    def __init__(out self, vocab_size: Int, temperature: Float64, topp: Float64, seed: UInt64) raises:
        self.vocab_size = vocab_size
        self.temperature = Float32(temperature)
        self.topp = topp
        self.rng = Rng(seed)
        self.keys = alloc_keys(vocab_size)
        self.tmp = alloc_keys(vocab_size)
        self.counts = alloc_keys(257)

    def free(mut self):
        for p in [self.keys, self.tmp, self.counts]:
            external_call["free", NoneType](p)

    def sample(mut self, logits: FPtr) -> Int:
        var n = self.vocab_size
        if self.temperature == 0:
            return argmax(logits, n)
        for i in range(n):
            logits.unsafe_store(i, logits.unsafe_load(i) / self.temperature)
        softmax(logits, n)
        var coin = self.rng.next_f32()
        if self.topp <= 0 or self.topp >= 1:
            return sample_mult(logits, n, coin)
        return sample_topp(logits, n, Float32(self.topp), coin, self.keys, self.tmp, self.counts)


# ----------------------------------------------------------------------------
# Generation and statistics


struct Stats(Movable):
    var prompt_tokens: Int
    var generated_tokens: Int
    var positions: Int
    var ttft_s: Float64
    var decode_s: Float64

    def __init__(out self):
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.positions = 0
        self.ttft_s = 0
        self.decode_s = 0


def seconds_since(t0: Int) -> Float64:
    return Float64(perf_counter_ns() - t0) / 1e9


def generate(mut s: RunState, m: Model, tok: Tokenizer, mut sampler: Sampler, prompt: List[UInt8],
             steps: Int, ignore_bos: Bool, pool: Pool) raises -> Stats:
    """run.c's loop: feed the prompt, then sample; print each piece as it comes."""
    var stats = Stats()
    var prompt_tokens = tok.encode(prompt, True, False)
    stats.prompt_tokens = len(prompt_tokens)
    var token = prompt_tokens[0]
    var start = perf_counter_ns()
    var first = 0
    var have_first = False
    for pos in range(steps):
        var logits = forward(s, m, token, pos, pool)
        stats.positions += 1
        var next: Int
        if pos < len(prompt_tokens) - 1:
            next = prompt_tokens[pos + 1]
        else:
            next = sampler.sample(logits)
            stats.generated_tokens += 1
            if not have_first:
                first = perf_counter_ns()
                have_first = True
        if next == BOS and not ignore_bos:
            break
        var piece = tok.decode(token, next)
        if safe_piece(piece):
            _ = write_all(1, BPtr(unsafe_from_address=Int(piece.unsafe_ptr())), len(piece))
        _ = piece^  # alive until written: the pointer above does not keep it
        token = next
    var end = perf_counter_ns()
    stats.ttft_s = Float64((first if have_first else end) - start) / 1e9
    stats.decode_s = Float64(end - first) / 1e9 if have_first else 0.0
    return stats^


def fixed(x: Float64, decimals: Int) -> String:
    """x >= 0 in plain decimal with `decimals` digits (JSON has no NaN/Infinity)."""
    if not (x >= 0) or x > 1e15:
        return "0"
    var scale = 1
    for _ in range(decimals):
        scale *= 10
    var v = Int(x * Float64(scale) + 0.5)
    var frac = String(v % scale)
    while frac.byte_length() < decimals:
        frac = "0" + frac
    return String(v // scale) + "." + frac


def stats_line(threads: Int, load_s: Float64, st: Stats) -> String:
    var tok_s = Float64(st.generated_tokens - 1) / st.decode_s if st.generated_tokens > 1 and st.decode_s > 0 else 0.0
    return (
        "polyllama-stats: {\"port\":\"" + PORT_NAME + "\",\"prompt_tokens\":" + String(st.prompt_tokens)
        + ",\"generated_tokens\":" + String(st.generated_tokens) + ",\"positions\":" + String(st.positions)
        + ",\"threads\":" + String(threads) + ",\"load_s\":" + fixed(load_s, 6)
        + ",\"ttft_s\":" + fixed(st.ttft_s, 6) + ",\"decode_s\":" + fixed(st.decode_s, 6)
        + ",\"decode_tok_s\":" + fixed(tok_s, 4) + "}\n"
    )


# ----------------------------------------------------------------------------
# Command line (contract section 2): strict parsing, every problem one line.


struct Args(Movable):
    var checkpoint: String
    var tokenizer: String
    var has_tokenizer: Bool
    var temperature: Float64
    var topp: Float64
    var seed: UInt64
    var steps: Int
    var prompt: List[UInt8]
    var threads: Int
    var logits_mode: Bool
    var output: String
    var has_output: Bool
    var ids: List[Int]
    var has_ids: Bool
    var ignore_bos: Bool

    def __init__(out self):
        self.checkpoint = ""
        self.tokenizer = ""
        self.has_tokenizer = False
        self.temperature = 1.0
        self.topp = 0.9
        self.seed = 0
        self.steps = 256
        self.prompt = List[UInt8]()
        self.threads = 1
        self.logits_mode = False
        self.output = ""
        self.has_output = False
        self.ids = List[Int]()
        self.has_ids = False
        self.ignore_bos = False


comptime USAGE = (
    "usage: run <checkpoint> [-z tokenizer] [-t temperature] [-p topp] [-s seed] [-n steps] "
    + "[-i prompt] [-j threads] [-m generate|logits] [-o file] [-k ids] [-e 0|1]"
)


def is_digit(b: UInt8) -> Bool:
    return b >= 48 and b <= 57


def parse_digits(b: Span[UInt8, _], start: Int, end: Int, mut value: UInt64) -> Bool:
    """b[start:end) is one or more decimal digits; value saturates at UInt64.MAX."""
    if start >= end:
        return False
    for i in range(start, end):
        if not is_digit(b[i]):
            return False
        var d = UInt64(b[i] - 48)
        value = UInt64.MAX if value > (UInt64.MAX - d) // 10 else value * 10 + d
    return True


def parse_int(flag: String, text: String, lo: Int, hi: Int) raises -> Int:
    """An integer [+-]?[0-9]+ in [lo, hi] (the contract's plain decimal)."""
    var b = text.as_bytes()
    var neg = len(b) > 0 and b[0] == 45
    var start = 1 if len(b) > 0 and (b[0] == 43 or b[0] == 45) else 0
    var mag = UInt64(0)
    if not parse_digits(b, start, len(b), mag):
        raise usage_error(flag + " expects an integer, got '" + text + "'")
    if mag > UInt64(1 << 62):
        raise usage_error(flag + " " + text + " is out of range")
    var value = -Int(mag) if neg else Int(mag)
    if value < lo or value > hi:
        raise usage_error(flag + " " + text + " is out of range")
    return value


def parse_steps(text: String) raises -> Int:
    """-n: an integer >= 0 of any number of digits. Everything above seq_len means
    seq_len, so a huge value saturates instead of being refused."""
    var b = text.as_bytes()
    var neg = len(b) > 0 and b[0] == 45
    var start = 1 if len(b) > 0 and (b[0] == 43 or b[0] == 45) else 0
    var mag = UInt64(0)
    if not parse_digits(b, start, len(b), mag):
        raise usage_error("-n expects an integer, got '" + text + "'")
    if neg and mag != 0:  # -0 is 0
        raise usage_error("-n " + text + " is out of range")
    return Int(min(mag, UInt64(1 << 62)))


def parse_u64(flag: String, text: String) raises -> UInt64:
    """A seed: an integer in [0, 2^64)."""
    var b = text.as_bytes()
    var neg = len(b) > 0 and b[0] == 45
    var start = 1 if len(b) > 0 and (b[0] == 43 or b[0] == 45) else 0
    var mag = UInt64(0)
    if not parse_digits(b, start, len(b), mag):
        raise usage_error(flag + " expects an integer, got '" + text + "'")
    # saturation means 2^64 - 1 or more: only the exact maximum is in range
    var overflow = mag == UInt64.MAX and text != "18446744073709551615" and text != "+18446744073709551615"
    if overflow or (neg and mag != 0):  # -0 is 0
        raise usage_error(flag + " " + text + " is out of range")
    return mag


def scale_pow10(mant: UInt64, exp10: Int) -> Float64:
    """mant * 10^exp10: one correctly rounded operation when the power of ten is
    exact (10^0..10^22)."""
    var value = Float64(mant)
    if exp10 > 0:
        var p = Float64(1)
        for _ in range(min(exp10, 400)):
            p *= 10
        value *= p
    elif exp10 < 0:
        var e = -exp10
        while e > 22:
            value /= Float64(1e22)
            e -= 22
        var p = Float64(1)
        for _ in range(e):
            p *= 10
        value /= p
    return value


def parse_float(flag: String, text: String, lo: Float64, hi: Float64) raises -> Float64:
    """A float [+-]?([0-9]+.?[0-9]*|.[0-9]+)([eE][+-]?[0-9]+)? in [lo, hi]: no inf,
    nan, underscores or spaces (the contract's plain decimal)."""
    var b = text.as_bytes()
    var n = len(b)
    var bad = usage_error(flag + " expects a number, got '" + text + "'")
    var i = 0
    var neg = False
    if i < n and (b[i] == 43 or b[i] == 45):
        neg = b[i] == 45
        i += 1
    # mantissa: up to 19 significant digits as an integer, and a power of ten
    var mant = UInt64(0)
    var exp10 = 0
    var digits = 0
    var seen_point = False
    while i < n and (is_digit(b[i]) or (b[i] == 46 and not seen_point)):
        if b[i] == 46:
            seen_point = True
        else:
            if mant < UInt64(1000000000000000000):
                mant = mant * 10 + UInt64(b[i] - 48)
                if seen_point:
                    exp10 -= 1
            elif not seen_point:
                exp10 += 1
            digits += 1
        i += 1
    if digits == 0:
        raise bad^
    if i < n and (b[i] == 101 or b[i] == 69):
        i += 1
        var eneg = i < n and b[i] == 45
        if i < n and (b[i] == 43 or b[i] == 45):
            i += 1
        var e = UInt64(0)
        if not parse_digits(b, i, n, e):
            raise bad^
        i = n
        var ev = Int(min(e, UInt64(100000)))
        exp10 += -ev if eneg else ev
    if i != n:
        raise bad^
    var value = scale_pow10(mant, exp10)
    if neg:
        value = -value
    # 1e999 overflows to infinity, and inf - inf is nan: a finite value minus itself is 0
    if value - value != 0 or value < lo or value > hi:
        raise usage_error(flag + " " + text + " is out of range")
    return value


def parse_ids(text: String) raises -> List[Int]:
    var ids = List[Int]()
    var b = text.as_bytes()
    var start = 0
    for i in range(len(b) + 1):
        if i == len(b) or b[i] == 44:
            var part = string_from(BPtr(unsafe_from_address=Int(b.unsafe_ptr()) + start), i - start)
            try:
                ids.append(parse_int("-k", part, -(1 << 62), 1 << 62))
            except:  # one message for the whole list; ranges are checked with the model
                raise usage_error("-k expects comma-separated token ids, got '" + text + "'")
            start = i + 1
    return ids^


def parse_args(args: List[String]) raises -> Args:
    var a = Args()
    if len(args) == 0 or args[0].startswith("-"):
        raise usage_error("missing checkpoint")
    a.checkpoint = args[0]
    if (len(args) - 1) % 2 != 0:
        raise usage_error("flag " + args[len(args) - 1] + " has no value")
    var i = 1
    while i < len(args):
        var flag = args[i]
        var value = args[i + 1]
        if flag == "-z":
            a.tokenizer = value
            a.has_tokenizer = True
        elif flag == "-t":
            a.temperature = parse_float(flag, value, 0.0, Float64.MAX * 2)
        elif flag == "-p":
            a.topp = parse_float(flag, value, 0.0, 1.0)
        elif flag == "-s":
            a.seed = parse_u64(flag, value)
        elif flag == "-n":
            a.steps = parse_steps(value)
        elif flag == "-i":
            a.prompt = List[UInt8]()
            for byte in value.as_bytes():
                a.prompt.append(byte)
        elif flag == "-j":
            a.threads = parse_int(flag, value, 1, 4096)
        elif flag == "-m":
            if value != "generate" and value != "logits":
                raise usage_error("-m expects generate or logits, got '" + value + "'")
            a.logits_mode = value == "logits"
        elif flag == "-o":
            a.output = value
            a.has_output = True
        elif flag == "-k":
            a.ids = parse_ids(value)
            a.has_ids = True
        elif flag == "-e":
            a.ignore_bos = parse_int(flag, value, 0, 1) == 1
        else:
            raise usage_error("unknown flag " + flag)
        i += 2
    if a.logits_mode and (not a.has_output or not a.has_ids):
        raise usage_error("logits mode needs -o FILE and -k IDS")
    return a^


def write_logits(path: String, m: Model, mut s: RunState, ids: List[Int], pool: Pool) raises -> Stats:
    """Logits mode: the (n, vocab) float32 rows after each position, no header."""
    var cpath = c_path(path)
    # creat() is open(O_WRONLY | O_CREAT | O_TRUNC) without open's variadic mode
    # argument, whose calling convention differs on Apple arm64
    var fd = external_call["creat", Int32](cpath.unsafe_ptr(), UInt32(0o644))
    _ = cpath^
    if fd < 0:
        raise runtime_error(path + ": cannot write")
    var stats = Stats()
    stats.prompt_tokens = len(ids)
    var start = perf_counter_ns()
    for pos in range(len(ids)):
        var logits = forward(s, m, ids[pos], pos, pool)
        stats.positions += 1
        if not write_all(fd, logits.unsafe_bitcast[UInt8](), 4 * m.config.vocab_size):
            _ = external_call["close", Int32](fd)
            raise runtime_error(path + ": cannot write")
    stats.ttft_s = seconds_since(start)
    if external_call["close", Int32](fd) != 0:
        raise runtime_error(path + ": cannot write")
    return stats^


def run(a: Args, t0: Int) raises:
    var model = read_model(a.checkpoint)
    var vocab: Vocab
    if model.has_vocab:
        vocab = model.vocab^
        model.vocab = Vocab()
    elif not a.has_tokenizer:
        raise usage_error("-z tokenizer is required for a .bin checkpoint")
    else:
        vocab = read_tokenizer(a.tokenizer, model.config.vocab_size)
    var tokenizer = Tokenizer(vocab^)
    var state = RunState(model.config)
    var pool = Pool(a.threads)
    if pool.n > 1:
        # the worker threads (Mojo's runtime) are live before the clock stops
        def warm(t: Int) {imm}:
            state.x.unsafe_store(0, 0)

        pool.run(warm)
    var load_s = seconds_since(t0)

    var stats: Stats
    if a.logits_mode:
        var seq = model.config.seq_len
        var ok = len(a.ids) >= 1 and len(a.ids) <= seq
        for id in a.ids:
            ok = ok and id >= 0 and id < model.config.vocab_size
        if not ok:
            raise usage_error("-k needs 1.." + String(seq) + " ids in [0, " + String(model.config.vocab_size) + ")")
        stats = write_logits(a.output, model, state, a.ids, pool)
    else:
        var seed = a.seed
        if seed == 0:
            seed = UInt64(external_call["time", Int64](Int64(0)))
        var sampler = Sampler(model.config.vocab_size, a.temperature, a.topp, seed)
        var steps = a.steps
        if steps == 0 or steps > model.config.seq_len:
            steps = model.config.seq_len
        stats = generate(state, model, tokenizer, sampler, a.prompt, steps, a.ignore_bos, pool)
        sampler.free()
        write_string(1, "\n")
    write_string(2, stats_line(pool.n, load_s, stats))
    state.free()
    model.file.close()


def cli_main() -> Int:
    """The whole program; returns the exit code."""
    var t0 = perf_counter_ns()
    var args = List[String]()
    var av = argv()
    for i in range(1, len(av)):
        args.append(String(av[i]))
    try:
        var a = parse_args(args)
        run(a, t0)
        return 0
    except e:
        var msg = String(e)
        var bytes = msg.as_bytes()
        var code = Int(bytes[0]) - 48 if len(bytes) > 0 and bytes[0] >= 49 and bytes[0] <= 51 else EXIT_RUNTIME
        var text = String(msg[byte=1:]) if code == Int(bytes[0]) - 48 else msg
        var line = "error: " + text + "\n"
        if code == EXIT_USAGE:
            line += USAGE + "\n"
        write_string(2, line)
        return code
