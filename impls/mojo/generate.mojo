# Generation: run.c's loop (prompt, then sampling, each piece printed as it
# comes), the logits mode, and the statistics line both report.

from std.collections import List
from std.ffi import external_call
from std.time import perf_counter_ns
from model import BPtr, Model, c_path, runtime_error, write_all
from forward import RunState, forward
from prefill import BatchState, forward_batch
from pool import Pool
from sampler import Sampler
from tokenizer import Tokenizer, safe_piece

comptime PORT_NAME = "mojo"


struct Stats(Movable):
    var prompt_tokens: Int
    var generated_tokens: Int
    var positions: Int
    var batch: Int
    var ttft_s: Float64
    var prefill_s: Float64
    var prefill_tokens: Int
    var decode_s: Float64

    def __init__(out self):
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.positions = 0
        self.batch = 1
        self.ttft_s = 0
        self.prefill_s = 0
        self.prefill_tokens = 0
        self.decode_s = 0


def seconds_since(t0: Int) -> Float64:
    return Float64(perf_counter_ns() - t0) / 1e9


def generate(mut s: RunState, mut b: BatchState, m: Model, tok: Tokenizer, mut sampler: Sampler,
             prompt: List[UInt8], steps: Int, ignore_bos: Bool, pool: Pool) raises -> Stats:
    """run.c's loop with the prompt batched: the prompt's positions through
    forward_batch, b.rows at a time (the last batch's last row's logits only when the
    whole prompt is prefilled), then one position at a time, sampling; each piece
    printed as it comes."""
    var stats = Stats()
    stats.batch = b.batch
    var prompt_tokens = tok.encode(prompt, True, False)
    var n_prompt = len(prompt_tokens)
    stats.prompt_tokens = n_prompt
    var n_prefill = min(n_prompt, steps)
    var token = prompt_tokens[0]
    var start = perf_counter_ns()
    var p0 = 0
    while p0 < n_prefill:
        var nrows = min(b.rows, n_prefill - p0)
        var last = p0 + nrows == n_prefill and n_prefill == n_prompt
        forward_batch(s, b, m, prompt_tokens, p0, nrows, p0, nrows - 1 if last else nrows, pool)
        stats.positions += nrows
        p0 += nrows
    var prefill_end = perf_counter_ns()
    stats.prefill_tokens = n_prefill
    stats.prefill_s = Float64(prefill_end - start) / 1e9
    var first = 0
    var have_first = False
    for pos in range(steps):
        var next: Int
        if pos < n_prompt - 1:
            next = prompt_tokens[pos + 1]
        else:
            # the prompt's last position's logits are the prefill's last row
            var logits = b.logits
            if pos > n_prompt - 1:
                logits = forward(s, m, token, pos, pool)
                stats.positions += 1
            next = sampler.sample(logits)
            stats.generated_tokens += 1
            if not have_first:
                first = perf_counter_ns()
                have_first = True
        if next == tok.bos_id and not ignore_bos:
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
    var pp_tok_s = Float64(st.prefill_tokens) / st.prefill_s if st.prefill_s > 0 else 0.0
    return (
        "polyllama-stats: {\"port\":\"" + PORT_NAME + "\",\"prompt_tokens\":" + String(st.prompt_tokens)
        + ",\"generated_tokens\":" + String(st.generated_tokens) + ",\"positions\":" + String(st.positions)
        + ",\"threads\":" + String(threads) + ",\"batch\":" + String(st.batch) + ",\"load_s\":" + fixed(load_s, 6)
        + ",\"ttft_s\":" + fixed(st.ttft_s, 6) + ",\"prefill_s\":" + fixed(st.prefill_s, 6)
        + ",\"prefill_tok_s\":" + fixed(pp_tok_s, 4) + ",\"decode_s\":" + fixed(st.decode_s, 6)
        + ",\"decode_tok_s\":" + fixed(tok_s, 4) + "}\n"
    )


def write_logits(path: String, m: Model, mut s: RunState, mut b: BatchState, ids: List[Int],
                 pool: Pool) raises -> Stats:
    """Logits mode: forward_batch over the ids, b.rows at a time, every row's logits
    kept: the (n, vocab) float32 rows after each position, no header."""
    var cpath = c_path(path)
    # creat() is open(O_WRONLY | O_CREAT | O_TRUNC) without open's variadic mode
    # argument, whose calling convention differs on Apple arm64
    var fd = external_call["creat", Int32](cpath.unsafe_ptr(), UInt32(0o644))
    _ = cpath^
    if fd < 0:
        raise runtime_error(path + ": cannot write")
    var stats = Stats()
    stats.batch = b.batch
    stats.prompt_tokens = len(ids)
    var start = perf_counter_ns()
    var p0 = 0
    while p0 < len(ids):
        var nrows = min(b.rows, len(ids) - p0)
        forward_batch(s, b, m, ids, p0, nrows, p0, 0, pool)
        stats.positions += nrows
        p0 += nrows
        if not write_all(fd, b.logits.unsafe_bitcast[UInt8](), 4 * nrows * m.config.vocab_size):
            _ = external_call["close", Int32](fd)
            raise runtime_error(path + ": cannot write")
    stats.ttft_s = seconds_since(start)
    stats.prefill_s = stats.ttft_s
    stats.prefill_tokens = len(ids)
    if external_call["close", Int32](fd) != 0:
        raise runtime_error(path + ": cannot write")
    return stats^
