# Generation: run.c's loop (prompt, then sampling, each piece printed as it
# comes), the logits mode, and the statistics line both report.

from std.collections import List
from std.ffi import external_call
from std.time import perf_counter_ns
from model import BPtr, Model, c_path, runtime_error, write_all
from forward import RunState, forward
from pool import Pool
from sampler import Sampler
from tokenizer import BOS, Tokenizer, safe_piece

comptime PORT_NAME = "mojo"


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
