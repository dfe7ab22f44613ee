# The command line (contract section 2): strict parsing, each flag taking exactly
# one value, and the run it asks for; every problem is one `error:` line and an
# exit code.

from std.collections import List
from std.ffi import external_call
from std.sys import argv
from std.time import perf_counter_ns
from model import BPtr, EXIT_RUNTIME, EXIT_USAGE, Vocab, string_from, usage_error, write_string
from formats import read_model, read_tokenizer
from forward import RunState
from prefill import BatchState
from generate import Stats, generate, seconds_since, stats_line, write_logits
from pool import Pool
from sampler import Sampler
from tokenizer import Tokenizer


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
    var batch: Int

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
        self.batch = 512


comptime USAGE = (
    "usage: run <checkpoint> [-z tokenizer] [-t temperature] [-p topp] [-s seed] [-n steps] "
    + "[-i prompt] [-j threads] [-m generate|logits] [-o file] [-k ids] [-e 0|1] [-b batch]"
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


def parse_batch(text: String) raises -> Int:
    """-b: an integer >= 1 of any number of digits; everything above seq_len means
    seq_len (clamped with the model), so a huge value saturates instead of being
    refused."""
    var b = text.as_bytes()
    var neg = len(b) > 0 and b[0] == 45
    var start = 1 if len(b) > 0 and (b[0] == 43 or b[0] == 45) else 0
    var mag = UInt64(0)
    if not parse_digits(b, start, len(b), mag):
        raise usage_error("-b expects an integer, got '" + text + "'")
    if neg or mag == 0:
        raise usage_error("-b " + text + " is out of range")
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
        elif flag == "-b":
            a.batch = parse_batch(value)
        elif flag == "-e":
            a.ignore_bos = parse_int(flag, value, 0, 1) == 1
        else:
            raise usage_error("unknown flag " + flag)
        i += 2
    if a.logits_mode and (not a.has_output or not a.has_ids):
        raise usage_error("logits mode needs -o FILE and -k IDS")
    return a^


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
    var tokenizer = Tokenizer(vocab^, model.config.bos_id, model.config.eos_id)
    # the positions this run reaches, with the command line and the file checked:
    # the KV cache holds those, not the whole context
    var seq = model.config.seq_len
    var steps = a.steps
    if steps == 0 or steps > seq:
        steps = seq
    var kv_rows = steps
    if a.logits_mode:
        var ok = len(a.ids) >= 1 and len(a.ids) <= seq
        for id in a.ids:
            ok = ok and id >= 0 and id < model.config.vocab_size
        if not ok:
            raise usage_error("-k needs 1.." + String(seq) + " ids in [0, " + String(model.config.vocab_size) + ")")
        kv_rows = len(a.ids)
    model.config.check_kv_cache(a.checkpoint, kv_rows)
    var state = RunState(model.config, kv_rows)
    var batch = BatchState(model.config, a.batch, a.logits_mode, a.threads, kv_rows)
    var pool = Pool(a.threads)
    if pool.n > 1:
        # the worker threads (Mojo's runtime) are live before the clock stops
        def warm(t: Int) {imm}:
            state.x.unsafe_store(0, 0)

        pool.run(warm)
    var load_s = seconds_since(t0)

    var stats: Stats
    if a.logits_mode:
        stats = write_logits(a.output, model, state, batch, a.ids, pool)
    else:
        var seed = a.seed
        if seed == 0:
            seed = UInt64(external_call["time", Int64](Int64(0)))
        var sampler = Sampler(model.config.vocab_size, a.temperature, a.topp, seed)
        stats = generate(state, batch, model, tokenizer, sampler, a.prompt, steps, a.ignore_bos, pool)
        sampler.free()
        write_string(1, "\n")
    write_string(2, stats_line(pool.n, load_s, stats))
    state.free()
    batch.free()
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
