# Unit tests of the Mojo port: tokenizer vectors, decode rules, the sampler's RNG
# and choices, argument parsing, header validation, the huge-page load of the
# weights, Q8_0 (fp16 rounding, activation quantization, the block dot product, the
# reader's refusals, a quantized stories260K's greedy text), and the thread pool's
# dispatches (every share of every region run exactly once), the batched prefill
# (its f32 and Q8_0 matrix-matrix kernels against plain scalar loops, -b, and
# stories260K's batched logits against the one-position ones). Mojo 1.2 has no
# `mojo test` command, so this is a program: it prints "N passed, M failed, K
# skipped" and exits non-zero on any failure.
#
# The tokenizer vectors need the Llama 2 tokenizer.bin, and the generation tests
# stories260K.bin and tok512.bin, found through POLYLLAMA_MODEL_PATH (':'-separated
# directories). Without them those tests are counted as skipped, with the reason
# printed, or fail when CI=true, where a missing model is a broken setup.

from std.collections import List
from std.ffi import external_call
from std.memory import bitcast
from std.os import getenv
from std.sys import exit
from std.math import trunc
from std.time import perf_counter_ns
from model import (
    BPtr, Config, FPtr, KPtr, MappedFile, Matrix, Model, QPtr, Vocab, alloc_floats, alloc_keys, alloc_quants,
    c_path, file_error, free_floats, free_quants, string_from, want_huge_pages, write_all, W_BF16, W_F16, W_F32,
    W_Q8_0,
)
from formats import read_model, read_tokenizer
from pool import COOLDOWN_REGIONS, DISPATCH_LIBRARY, DISPATCH_SPIN, DISPATCH_SYNCHRONIZE, SPIN_NS, Pool
from forward import RunState, forward
from tokenizer import Tokenizer, safe_piece
from sampler import Rng, argmax, sample_mult, sample_topp
from generate import fixed
from cli import Args, parse_args, parse_batch, parse_float, parse_int, parse_steps, parse_u64
from gemm import gemm_f32_rows, gemm_q8_rows, gemm_w_rows
from half import half_matvec_rows, widen_row
from prefill import BatchState, forward_batch
from q8_0 import (
    Q8_BLOCK, Q8_BLOCK_BYTES, block_isum, block_partials_portable, dequantize_row, f32_to_fp16_f32, q8_dot,
    q8_quants, q8_row_bytes, q8_scale, quantize_activation,
)


struct Tally:
    var passed: Int
    var failed: Int
    var skipped: Int

    def __init__(out self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    def check(mut self, ok: Bool, name: String):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL:", name)

    def skip(mut self, name: String, reason: String):
        """A test that cannot run here: counted as skipped, never as passed; a
        failure when CI=true."""
        if getenv("CI") == "true":
            self.check(False, name + ": " + reason + " (required when CI=true)")
        else:
            self.skipped += 1
            print("SKIP:", name + ":", reason)


def ints_equal(a: List[Int], b: List[Int]) -> Bool:
    if len(a) != len(b):
        return False
    for i in range(len(a)):
        if a[i] != b[i]:
            return False
    return True


def show(a: List[Int]) -> String:
    var s = String("[")
    for i in range(len(a)):
        s += (", " if i > 0 else "") + String(a[i])
    return s + "]"


def text_bytes(s: String) -> List[UInt8]:
    var out = List[UInt8]()
    for b in s.as_bytes():
        out.append(b)
    return out^


def find_model_file(name: String) -> String:
    """The first POLYLLAMA_MODEL_PATH directory holding `name`, or ""."""
    var dirs = getenv("POLYLLAMA_MODEL_PATH")
    for d in dirs.split(":"):
        if d.byte_length() == 0:
            continue
        var path = String(d) + "/" + name
        try:
            var f = MappedFile(path)
            f.close()
            return path
        except:
            pass
    return ""


def test_tokenizer(mut t: Tally) raises:
    var path = find_model_file("tokenizer.bin")
    if path.byte_length() == 0:
        t.skip("tokenizer vectors", "tokenizer.bin not found through POLYLLAMA_MODEL_PATH")
        return
    var tok = Tokenizer(read_tokenizer(path, 32000))
    var got = tok.encode(text_bytes("I believe the meaning of life is"), True, False)
    t.check(ints_equal(got, [1, 306, 4658, 278, 6593, 310, 2834, 338]), "encode meaning of life: " + show(got))
    got = tok.encode(text_bytes("Once upon a time"), True, False)
    t.check(ints_equal(got, [1, 9038, 2501, 263, 931]), "encode once upon a time: " + show(got))
    got = tok.encode(text_bytes(""), True, True)
    t.check(ints_equal(got, [1, 2]), "encode empty with eos: " + show(got))
    # decode: a leading space dropped after BOS; <0x0A> is one newline byte
    var piece = tok.decode(1, 9038)
    t.check(String(StringSlice(unsafe_from_utf8=Span(piece))) == "Once", "decode after BOS drops the space")
    piece = tok.decode(9038, 2501)
    t.check(String(StringSlice(unsafe_from_utf8=Span(piece))) == " upon", "decode keeps the space")
    piece = tok.decode(5, 13)
    t.check(len(piece) == 1 and piece[0] == 10, "decode <0x0A> is a newline byte")
    # byte fallback for a character outside the vocabulary (U+10FFFF: 4 bytes)
    got = tok.encode(text_bytes("\U0010FFFF"), False, False)
    t.check(len(got) >= 2 and got[len(got) - 1] == 0xBF + 3, "byte fallback: " + show(got))


def test_safe_piece(mut t: Tally):
    t.check(not safe_piece(List[UInt8]()), "empty piece is not printed")
    t.check(not safe_piece([UInt8(7)]), "BEL is not printed")
    t.check(safe_piece([UInt8(10)]), "newline is printed")
    t.check(safe_piece([UInt8(65)]), "A is printed")
    t.check(safe_piece([UInt8(0xE6), UInt8(0x97)]), "multi-byte piece is printed")


def test_rng(mut t: Tally):
    var r = Rng(42)
    var want = [1456360119, 3359763283, 3393612768, 4054632243]
    var ok = True
    for i in range(4):
        ok = ok and Int(r.next_u32()) == want[i]
    t.check(ok, "xorshift u32 draws for seed 42")
    r = Rng(42)
    t.check(r.next_f32() == Float32(0.3390852212905884), "xorshift f32 draw for seed 42")
    r = Rng(1)
    t.check(Int(r.next_u32()) == 1206177355 and Int(r.next_u32()) == 2882512552, "xorshift draws for seed 1")


def test_choices(mut t: Tally) raises:
    var p = alloc_floats(5)
    var values = [Float32(0.1), Float32(0.3), Float32(0.05), Float32(0.3), Float32(0.25)]
    for i in range(5):
        p.unsafe_store(i, values[i])
    t.check(argmax(p, 5) == 1, "argmax: the first of equal maxima")
    var keys = alloc_keys(5)
    var tmp = alloc_keys(5)
    var counts = alloc_keys(257)
    # (coin, top-p 0.5, top-p 0.9, multinomial): from the reference sampler
    var coins = [Float32(0.0), Float32(0.2), Float32(0.5), Float32(0.7), Float32(0.99)]
    var want5 = [1, 1, 3, 3, 3]
    var want9 = [1, 1, 3, 4, 0]
    var wantm = [0, 1, 3, 3, 4]
    for i in range(5):
        t.check(sample_topp(p, 5, Float32(0.5), coins[i], keys, tmp, counts) == want5[i], "top-p 0.5 coin " + String(coins[i]))
        t.check(sample_topp(p, 5, Float32(0.9), coins[i], keys, tmp, counts) == want9[i], "top-p 0.9 coin " + String(coins[i]))
        t.check(sample_mult(p, 5, coins[i]) == wantm[i], "multinomial coin " + String(coins[i]))


def usage_code(args: List[String]) -> Int:
    """The exit code digit parse_args raises with, 0 when it accepts."""
    try:
        _ = parse_args(args)
        return 0
    except e:
        return Int(String(e).as_bytes()[0]) - 48


def test_args(mut t: Tally) raises:
    t.check(usage_code(["m.bin", "-t", "0.8", "-p", "0.9", "-s", "42", "-n", "5", "-j", "2"]) == 0, "good flags")
    var bad: List[List[String]] = [
        List[String](), ["-t", "1"], ["m.bin", "-x", "1"], ["m.bin", "-t"], ["m.bin", "-t", "abc"],
        ["m.bin", "-j", "0"], ["m.bin", "-n", "-3"], ["m.bin", "-p", "2"], ["m.bin", "-t", "nan"],
        ["m.bin", "-m", "x"], ["m.bin", "-m", "logits", "-o", "f"], ["m.bin", "-e", "2"],
        ["m.bin", "-s", "18446744073709551616"], ["m.bin", "-k", "1,,2", "-m", "logits", "-o", "f"],
    ]
    for i in range(len(bad)):
        t.check(usage_code(bad[i]) == 2, "usage error for case " + String(i))
    t.check(parse_float("-t", "1e-1", 0.0, 1.0) == 0.1, "float with exponent")
    t.check(parse_float("-t", ".5", 0.0, 1.0) == 0.5 and parse_float("-t", "5.", 0.0, 9.0) == 5.0, "float forms")
    t.check(parse_float("-p", "0.9", 0.0, 1.0) == 0.9, "0.9 is exactly Python's 0.9")
    t.check(parse_int("-n", "+12", 0, 1 << 31) == 12, "int with sign")
    var not_plain: List[List[String]] = [
        ["m.bin", "-t", "inf"], ["m.bin", "-t", " 1"], ["m.bin", "-n", "1_0"], ["m.bin", "-t", "1e"],
        ["m.bin", "-t", "."], ["m.bin", "-j", "0x2"], ["m.bin", "-k", "1, 2", "-m", "logits", "-o", "f"],
    ]
    for i in range(len(not_plain)):
        t.check(usage_code(not_plain[i]) == 2, "not plain decimal, case " + String(i))
    t.check(parse_u64("-s", "18446744073709551615") == UInt64.MAX, "largest seed")
    t.check(fixed(1.2345678, 6) == "1.234568" and fixed(0.00001, 4) == "0.0000", "fixed-point formatting")


def test_number_flags(mut t: Tally) raises:
    """-n takes any number of digits (above seq_len means seq_len); -j is in
    [1, 4096]; -s in [0, 2^64 - 1]."""
    t.check(parse_steps("1099511627776") == 1099511627776, "-n above 2^32")
    t.check(parse_steps("99999999999999999999999999") >= 1 << 62, "-n beyond 64 bits saturates")
    t.check(parse_steps("-0") == 0, "-n -0 is 0")
    t.check(usage_code(["m.bin", "-n", "99999999999999999999999999"]) == 0, "-n with 26 digits is accepted")
    t.check(usage_code(["m.bin", "-n", "-1"]) == 2, "-n -1 is a usage error")
    t.check(usage_code(["m.bin", "-j", "4096"]) == 0, "-j 4096 is accepted")
    t.check(usage_code(["m.bin", "-j", "4097"]) == 2, "-j 4097 is a usage error")
    t.check(usage_code(["m.bin", "-s", "18446744073709551615"]) == 0, "-s 2^64 - 1 is accepted")
    t.check(usage_code(["m.bin", "-s", "18446744073709551616"]) == 2, "-s 2^64 is a usage error")
    # -b: an integer >= 1 of any number of digits (clamped to seq_len with the model)
    t.check(parse_batch("1") == 1 and parse_batch("+64") == 64 and parse_batch("512") == 512, "-b values")
    t.check(parse_batch("99999999999999999999999999") >= 1 << 62, "-b beyond 64 bits saturates")
    t.check(usage_code(["m.bin", "-b", "7"]) == 0, "-b 7 is accepted")
    t.check(usage_code(["m.bin", "-b", "99999999999999999999999999"]) == 0, "-b with 26 digits is accepted")
    var bad_b: List[List[String]] = [
        ["m.bin", "-b", "0"], ["m.bin", "-b", "-1"], ["m.bin", "-b", "x"], ["m.bin", "-b"], ["m.bin", "-b", "-0"],
        ["m.bin", "-b", "1.5"], ["m.bin", "-b", " 2"], ["m.bin", "-b", ""],
    ]
    for i in range(len(bad_b)):
        t.check(usage_code(bad_b[i]) == 2, "-b usage error, case " + String(i))


# ----------------------------------------------------------------------------
# Model files written here, broken one way at a time


def put_u32(mut b: List[UInt8], v: UInt32):
    for i in range(4):
        b.append(UInt8((v >> UInt32(8 * i)) & 0xFF))


def put_u64(mut b: List[UInt8], v: Int):
    put_u32(b, UInt32(v & 0xFFFFFFFF))
    put_u32(b, UInt32(v >> 32))


def put_str(mut b: List[UInt8], s: String):
    put_u64(b, s.byte_length())
    for c in s.as_bytes():
        b.append(c)


comptime NAN_BITS = UInt32(0x7FC00000)
comptime NEG_INF_BITS = UInt32(0xFF800000)


def score_bits(i: Int, breakage: String) -> UInt32:
    """Token i's score, -i, unless `breakage` breaks it."""
    if breakage == "NaN score" and i == 5:
        return NAN_BITS
    if breakage == "infinite score" and i == 7:
        return NEG_INF_BITS
    return bitcast[DType.uint32, 1](Float32(-i))


def byte_piece(b: Int) -> String:
    var hex = "0123456789ABCDEF"
    return "<0x" + String(hex[byte=b >> 4]) + String(hex[byte=b & 15]) + ">"


struct GgufWriter(Movable):
    """A GGUF file under construction: key-value section, tensor infos, data size."""

    var kv: List[UInt8]
    var n_kv: Int
    var infos: List[UInt8]
    var n_tensors: Int
    var data_len: Int

    def __init__(out self):
        self.kv = List[UInt8]()
        self.n_kv = 0
        self.infos = List[UInt8]()
        self.n_tensors = 0
        self.data_len = 0

    def key(mut self, k: String, vtype: Int):
        put_str(self.kv, k)
        put_u32(self.kv, UInt32(vtype))
        self.n_kv += 1

    def u32_key(mut self, k: String, v: Int):
        self.key(k, 4)
        put_u32(self.kv, UInt32(v))

    def f32_key(mut self, k: String, v: Float32):
        self.key(k, 6)
        put_u32(self.kv, bitcast[DType.uint32, 1](v))

    def f64_key(mut self, k: String, v: Float64):
        self.key(k, 12)
        put_u64(self.kv, Int(bitcast[DType.int64, 1](v)))

    def i32_key(mut self, k: String, v: Int):
        self.key(k, 5)
        put_u32(self.kv, UInt32(v & 0xFFFFFFFF))

    def str_key(mut self, k: String, v: String):
        self.key(k, 8)
        put_str(self.kv, v)

    def scores(mut self, breakage: String):
        self.key("tokenizer.ggml.scores", 9)
        put_u32(self.kv, 6)
        put_u64(self.kv, 260)
        for i in range(260):
            put_u32(self.kv, score_bits(i, breakage))

    def info(mut self, name: String, d0: Int, d1: Int, offset: Int, ttype: Int = 0):
        """Tensor info with dims [d0, d1] (innermost first), or [d0] when d1 == 0."""
        put_str(self.infos, name)
        put_u32(self.infos, UInt32(2 if d1 > 0 else 1))
        put_u64(self.infos, d0)
        if d1 > 0:
            put_u64(self.infos, d1)
        put_u32(self.infos, UInt32(ttype))
        put_u64(self.infos, offset)
        self.n_tensors += 1

    def add(mut self, name: String, d0: Int, d1: Int, ttype: Int = 0) -> Int:
        """A zero tensor (F32, Q8_0 when ttype is 8, F16 or BF16 when 1 or 30) at the next 32-byte boundary of
        the data; returns its offset."""
        var at = (self.data_len + 31) // 32 * 32
        self.info(name, d0, d1, at, ttype)
        var size = q8_row_bytes(d0) * max(d1, 1) if ttype == 8 else (2 if ttype == 1 or ttype == 30 else 4) * d0 * max(d1, 1)
        self.data_len = at + size
        return at

    def bytes(self) -> List[UInt8]:
        var out: List[UInt8] = [71, 71, 85, 70]  # GGUF
        put_u32(out, 3)
        put_u64(out, self.n_tensors)
        put_u64(out, self.n_kv)
        out += self.kv.copy()
        out += self.infos.copy()
        var end = (len(out) + 31) // 32 * 32 + self.data_len
        while len(out) < end:
            out.append(0)
        return out^


def tiny_header(mut w: GgufWriter, dim: Int, hidden: Int, breakage: String):
    """The keys of a one-layer model (2 heads, seq_len 4) with the smallest legal
    vocabulary (<unk>, <s>, </s>, the 256 byte tokens, "▁")."""
    w.key("general.architecture", 8)
    put_str(w.kv, "llama")
    w.u32_key("llama.embedding_length", dim)
    w.u32_key("llama.feed_forward_length", hidden)
    w.u32_key("llama.block_count", 1)
    w.u32_key("llama.attention.head_count", 2)
    w.u32_key("" if breakage == "empty key" else "llama.context_length", 4)
    if breakage == "duplicate key":
        w.u32_key("llama.block_count", 1)
    w.key("tokenizer.ggml.tokens", 9)
    put_u32(w.kv, 8)
    put_u64(w.kv, 260)
    for i in range(259):
        put_str(w.kv, "<unk>" if i == 0 else ("<s>" if i == 1 else ("</s>" if i == 2 else byte_piece(i - 3))))
    put_str(w.kv, "\u2582" if breakage == "no space piece" else "\u2581")
    w.scores(breakage)
    if breakage == "duplicate tokenizer key":
        w.scores(breakage)
    hyper_keys(w, breakage)


def hyper_keys(mut w: GgufWriter, breakage: String):
    """Contract 3's keys: all of them with other values than the defaults ("other
    keys"), or one of them of the wrong kind or out of range."""
    if breakage == "other keys":
        w.f64_key("llama.rope.freq_base", 500000.0)
        w.key("llama.attention.layer_norm_rms_epsilon", 6)
        put_u32(w.kv, bitcast[DType.uint32, 1](Float32(1e-6)))
        w.key("llama.rope.dimension_count", 10)  # u64
        put_u64(w.kv, 4)
        w.key("tokenizer.ggml.bos_token_id", 3)  # i16
        w.kv.append(5)
        w.kv.append(0)
        w.key("tokenizer.ggml.eos_token_id", 0)  # u8
        w.kv.append(6)
        w.str_key("llama.rope.scaling.type", "none")
        w.u32_key("llama.expert_count", 0)
    if breakage == "integer theta":
        w.u32_key("llama.rope.freq_base", 1000000)
    if breakage == "theta string":
        w.str_key("llama.rope.freq_base", "10000")
    if breakage == "theta 1":
        w.f32_key("llama.rope.freq_base", 1.0)
    if breakage == "theta inf":
        w.f64_key("llama.rope.freq_base", Float64(1e308) * 10)
    if breakage == "eps 0":
        w.f32_key("llama.attention.layer_norm_rms_epsilon", 0.0)
    if breakage == "eps 1":
        w.u32_key("llama.attention.layer_norm_rms_epsilon", 1)
    if breakage == "eps NaN":
        w.key("llama.attention.layer_norm_rms_epsilon", 6)
        put_u32(w.kv, NAN_BITS)
    if breakage == "eps bool":
        w.key("llama.attention.layer_norm_rms_epsilon", 7)
        w.kv.append(1)
    if breakage == "rope dims 2":
        w.u32_key("llama.rope.dimension_count", 2)
    if breakage == "rope dims float":
        w.f32_key("llama.rope.dimension_count", 4.0)
    if breakage == "bos 260":
        w.u32_key("tokenizer.ggml.bos_token_id", 260)
    if breakage == "eos -1":
        w.i32_key("tokenizer.ggml.eos_token_id", -1)
    if breakage == "bos string":
        w.str_key("tokenizer.ggml.bos_token_id", "1")
    if breakage == "scaling linear":
        w.str_key("llama.rope.scaling.type", "linear")
    if breakage == "scaling number":
        w.u32_key("llama.rope.scaling.type", 0)
    if breakage == "experts 8":
        w.u32_key("llama.expert_count", 8)


def tiny_gguf(breakage: String) -> List[UInt8]:
    """A one-layer model of dim 8 and hidden 16, broken as `breakage` says."""
    var w = GgufWriter()
    tiny_header(w, 8, 16, breakage)
    _ = w.add("token_embd.weight", 8, 260)
    _ = w.add("output_norm.weight", 8, 0)
    var norm_at = w.add("blk.0.attn_norm.weight", 8, 0)
    if breakage == "overlapping tensors":
        w.info("blk.0.attn_q.weight", 8, 8, norm_at)
    else:
        _ = w.add("blk.0.attn_q.weight", 8, 8)
    for name in ["attn_k", "attn_v", "attn_output"]:
        _ = w.add("blk.0." + name + ".weight", 8, 8)
    _ = w.add("blk.0.ffn_norm.weight", 8, 0)
    _ = w.add("blk.0.ffn_gate.weight", 8, 16)
    _ = w.add("blk.0.ffn_down.weight", 16, 8)
    if breakage == "unaligned tensor offset":
        w.info("blk.0.ffn_up.weight", 8, 16, w.data_len + 4)
        w.data_len += 4 + 4 * 128
    else:
        _ = w.add("blk.0.ffn_up.weight", 8, 16)
    if breakage == "duplicate tensor":
        _ = w.add("blk.0.attn_k.weight", 8, 8)
    if breakage == "unknown tensor":
        _ = w.add("extra.weight", 8, 0)
    if breakage == "second layer's tensor":
        _ = w.add("blk.1.attn_norm.weight", 8, 0)
    return w.bytes()


comptime Q8 = 8


def tiny_q8_gguf(breakage: String) -> List[UInt8]:
    """A one-layer model of dim 32 and hidden 48 as the converter writes it in Q8_0:
    every matrix Q8_0 but ffn_down (rows of 48), norms F32, an unshared classifier,
    the last tensor; broken as `breakage` says."""
    var w = GgufWriter()
    tiny_header(w, 32, 48, "")
    _ = w.add("token_embd.weight", 32, 260, Q8)
    _ = w.add("output_norm.weight", 32, 0)
    _ = w.add("blk.0.attn_norm.weight", 32, 0, Q8 if breakage == "norm" else 0)
    var q_at = w.add("blk.0.attn_q.weight", 32, 32, Q8)
    if breakage == "tensor inside another's blocks":
        # past where the blocks would end if they were 32 values of 1 byte each
        w.info("blk.0.attn_k.weight", 32, 32, q_at + 32 * 32, Q8)
    else:
        _ = w.add("blk.0.attn_k.weight", 32, 32, 9 if breakage == "type Q8_1" else Q8)
    _ = w.add("blk.0.attn_v.weight", 32, 32, Q8)
    _ = w.add("blk.0.attn_output.weight", 32, 32, Q8)
    _ = w.add("blk.0.ffn_norm.weight", 32, 0)
    _ = w.add("blk.0.ffn_gate.weight", 32, 48, Q8)
    _ = w.add("blk.0.ffn_down.weight", 48, 32, Q8 if breakage == "rows of 48" else 0)
    _ = w.add("blk.0.ffn_up.weight", 32, 48, Q8)
    _ = w.add("output.weight", 32, 260, Q8)
    var out = w.bytes()
    if breakage == "truncated blocks":
        out.shrink(len(out) - 17)
    if breakage == "last block missing":
        out.shrink(len(out) - Q8_BLOCK_BYTES)
    return out^


def test_q8_refusals(mut t: Tally) raises:
    """A mixed F32 / Q8_0 file loads, each matrix with its type; the Q8_0 files a
    reader that sizes tensors by their blocks must refuse are refused."""
    var path = write_temp("tiny-q8.gguf", tiny_q8_gguf(""))
    t.check(refusal(path, -1) == "", "the tiny Q8_0 GGUF loads: " + refusal(path, -1))
    var m = read_model(path)
    t.check(m.weights.token_embedding.q8 and m.weights.wcls.q8 and m.weights.wq[0].q8 and m.weights.w3[0].q8
            and not m.weights.w2[0].q8, "each matrix keeps its type (ffn_down F32, the others Q8_0)")
    m.file.close()
    remove(path)
    var cases: List[String] = [
        "rows of 48", "norm", "type Q8_1", "tensor inside another's blocks", "truncated blocks",
        "last block missing",
    ]
    var wants: List[String] = [
        "tensor blk.0.ffn_down.weight is Q8_0 with rows of 48 values, not a multiple of the block size 32",
        "tensor blk.0.attn_norm.weight is Q8_0", "tensor blk.0.attn_k.weight has type 9",
        "tensors blk.0.attn_q.weight and blk.0.attn_k.weight overlap", "tensor output.weight lies outside the file",
        "tensor output.weight lies outside the file",
    ]
    for i in range(len(cases)):
        expect_refusal(t, "gguf q8_0 " + cases[i], tiny_q8_gguf(cases[i]), -1, wants[i])


def tiny_tokenizer(breakage: String) -> List[UInt8]:
    """A tokenizer.bin of the smallest legal vocabulary (200 tokens for "too few")."""
    var out = List[UInt8]()
    put_u32(out, 8)
    var n = 200 if breakage == "too few tokens" else 260
    for i in range(n):
        var piece = "<unk>" if i == 0 else ("\n<s>\n" if i == 1 else ("\n</s>\n" if i == 2 else byte_piece((i - 3) % 256)))
        if i == n - 1:
            piece = "@@" if breakage == "no space piece" else " "
        put_u32(out, score_bits(i, breakage))
        put_u32(out, UInt32(piece.byte_length()))
        for c in piece.as_bytes():
            out.append(c)
    return out^


def write_temp(name: String, data: List[UInt8]) -> String:
    var path = "/tmp/polyllama-mojo-test-" + String(Int(external_call["getpid", Int32]())) + "-" + name
    var cpath = c_path(path)
    var fd = external_call["creat", Int32](cpath.unsafe_ptr(), UInt32(0o644))
    _ = write_all(fd, BPtr(unsafe_from_address=Int(data.unsafe_ptr())), len(data))
    _ = external_call["close", Int32](fd)
    _ = cpath^
    return path


def remove(path: String):
    var cpath = c_path(path)
    _ = external_call["unlink", Int32](cpath.unsafe_ptr())
    _ = cpath^


def refusal(path: String, vocab_size: Int) -> String:
    """What reading `path` raises ("" when it loads): a model for vocab_size < 0,
    else a tokenizer.bin of that vocabulary."""
    try:
        if vocab_size < 0:
            var m = read_model(path)
            m.file.close()
        else:
            _ = read_tokenizer(path, vocab_size)
        return ""
    except e:
        return String(e)


def expect_refusal(mut t: Tally, breakage: String, data: List[UInt8], vocab_size: Int, want: String):
    var path = write_temp("breakage.bin", data)
    var msg = refusal(path, vocab_size)
    remove(path)
    var ok = msg.startswith("3" + path + ": ") and msg.find(want) >= 0
    t.check(ok, breakage + ": got '" + msg + "', want exit 3 saying '" + want + "'")


def test_gguf_refusals(mut t: Tally):
    """Contract section 4: the GGUF files llama.cpp refuses; section 5: the rules of
    the embedded tokenizer."""
    var path = write_temp("tiny.gguf", tiny_gguf(""))
    t.check(refusal(path, -1) == "", "the tiny GGUF loads: " + refusal(path, -1))
    remove(path)
    var cases: List[String] = [
        "empty key", "duplicate key", "duplicate tokenizer key", "duplicate tensor", "unknown tensor",
        "second layer's tensor", "unaligned tensor offset", "overlapping tensors", "NaN score",
        "infinite score", "no space piece",
    ]
    var wants: List[String] = [
        "is empty", "key llama.block_count appears twice", "key tokenizer.ggml.scores appears twice",
        "tensor blk.0.attn_k.weight appears twice", "unexpected tensor extra.weight",
        "unexpected tensor blk.1.attn_norm.weight", "not a multiple of general.alignment=32", "overlap",
        "token 5 has a NaN score", "token 7 has an infinite score", "no piece \" \"",
    ]
    for i in range(len(cases)):
        expect_refusal(t, "gguf " + cases[i], tiny_gguf(cases[i]), -1, wants[i])


def test_tokenizer_refusals(mut t: Tally):
    """Contract section 5 for tokenizer.bin, checked as it is read."""
    var path = write_temp("tok.bin", tiny_tokenizer(""))
    t.check(refusal(path, 260) == "", "the smallest legal tokenizer.bin loads: " + refusal(path, 260))
    remove(path)
    expect_refusal(t, "tokenizer no space piece", tiny_tokenizer("no space piece"), 260, "no piece \" \"")
    expect_refusal(t, "tokenizer NaN score", tiny_tokenizer("NaN score"), 260, "token 5 has a NaN score")
    expect_refusal(t, "tokenizer infinite score", tiny_tokenizer("infinite score"), 260, "token 7 has an infinite score")
    expect_refusal(t, "tokenizer too few tokens", tiny_tokenizer("too few tokens"), 200, "at least 259")


def pattern_byte(i: Int) -> UInt8:
    return UInt8((i * 131 + (i >> 12)) & 255)


def test_huge_page_load(mut t: Tally) raises:
    """The huge-page load holds the file's bytes, the same as the mapping it replaces;
    the size crosses 2 MiB boundaries and ends off a page."""
    var n = (3 << 20) + 4099
    var data = List[UInt8](capacity=n)
    for i in range(n):
        data.append(pattern_byte(i))
    var path = write_temp("huge.bin", data)
    var f = MappedFile(path)
    var mapped = f.data
    var same = True
    for i in range(n):
        same = same and f.data.unsafe_load(i) == data[i]
    t.check(same, "the file mapping holds the file")
    f.load_huge_pages(path)
    t.check(Int(f.data) != Int(mapped) if want_huge_pages() else Int(f.data) == Int(mapped),
            "the huge-page load replaces the mapping unless POLYLLAMA_HUGEPAGES=0")
    same = f.size == n
    for i in range(n):
        same = same and f.data.unsafe_load(i) == data[i]
    t.check(same, "the huge-page load holds the file")
    f.close()
    remove(path)
    path = write_temp("empty.bin", List[UInt8]())
    f = MappedFile(path)
    f.load_huge_pages(path)
    t.check(f.size == 0, "an empty file loads as empty")
    f.close()
    remove(path)


def config_code(c: Config) -> Int:
    try:
        c.validate("x")
        return 0
    except e:
        return Int(String(e).as_bytes()[0]) - 48


def kv_code(c: Config, rows: Int) -> Int:
    try:
        c.check_kv_cache("x", rows)
        return 0
    except e:
        return Int(String(e).as_bytes()[0]) - 48


def test_validate(mut t: Tally):
    t.check(config_code(Config(288, 768, 6, 6, 6, 32000, 256, True)) == 0, "15M header is valid")
    t.check(config_code(Config(288, 768, 6, 6, 6, 32000, 0, True)) == 3, "seq_len 0")
    t.check(config_code(Config(65537, 768, 6, 1, 1, 32000, 256, True)) == 3, "dim over the limit")
    t.check(config_code(Config(288, 768, 6, 7, 7, 32000, 256, True)) == 3, "dim not a multiple of heads")
    t.check(config_code(Config(288, 768, 6, 6, 4, 32000, 256, True)) == 3, "heads not a multiple of kv heads")
    t.check(config_code(Config(6, 768, 6, 2, 2, 32000, 256, True)) == 3, "odd head size")
    # the KV cache is sized for the run's positions (contract 3), not the header's context
    t.check(config_code(Config(65536, 1, 1024, 1, 1, 1, 65536, True)) == 0, "a 4 GiB+ context is no refusal by itself")
    t.check(kv_code(Config(65536, 1, 1024, 1, 1, 1, 65536, True), 4) == 0, "4 positions of a huge model fit")
    t.check(kv_code(Config(65536, 1, 1024, 1, 1, 1, 65536, True), 9) == 3, "9 positions exceed 4 GiB")
    t.check(kv_code(Config(4096, 11008, 32, 32, 32, 32000, 4096, True), 4096) == 0, "7B at full context: exactly 4 GiB")
    t.check(kv_code(Config(4096, 11008, 32, 32, 32, 32000, 8192, True), 4097) == 3, "7B at 4097 positions")


# ----------------------------------------------------------------------------
# Q8_0 kernels, each against a plain scalar loop


def fp16_bits(x: Float32) -> UInt16:
    return bitcast[DType.uint16, 1](x.cast[DType.float16]())


def put_scale(block: BPtr, bits: UInt16):
    block.unsafe_store(0, UInt8(bits & 0xFF))
    block.unsafe_store(1, UInt8(bits >> 8))


def scalar_isum(block: BPtr, qx: QPtr) -> Int:
    var s = 0
    for i in range(Q8_BLOCK):
        s += Int(bitcast[DType.int8, 1](block.unsafe_load(2 + i))) * Int(qx.unsafe_load(i))
    return s


def round_ties_even(v: Float32) -> Float32:
    var r = trunc(v)
    var f = abs(v - r)  # exact: the fraction of a float is a float
    var odd = Int(r) % 2 != 0
    if f > 0.5 or (f == 0.5 and odd):
        r += Float32(1) if v > 0 else Float32(-1)
    return r


def round_half_away(v: Float32) -> Float32:
    """C's roundf, which llama.cpp's reference quantizer uses for the weights."""
    var r = trunc(v)
    if abs(v - r) >= 0.5:
        r += Float32(1) if v > 0 else Float32(-1)
    return r


def test_fp16(mut t: Tally) raises:
    """The activation scale is rounded to fp16 to nearest, ties to even; block scales
    are read from bytes at any alignment."""
    t.check(f32_to_fp16_f32(Float32(1.00048828125)) == 1.0, "fp16 tie between 1 and 1 + 2^-10 goes to 1")
    t.check(f32_to_fp16_f32(Float32(1.00146484375)) == Float32(1.001953125), "fp16 tie goes up to the even neighbour")
    t.check(f32_to_fp16_f32(Float32(65519.0)) == 65504.0, "65519 rounds to the largest fp16")
    t.check(f32_to_fp16_f32(Float32(3 * 2.0 ** -25)) == Float32(2.0 ** -23), "subnormal tie goes to even")
    t.check(f32_to_fp16_f32(Float32(2.0 ** -25)) == 0.0, "half the smallest subnormal goes to 0")
    var buf = alloc_quants(8).unsafe_bitcast[UInt8]()
    var odd = buf.unsafe_offset(1)
    put_scale(odd, 0x3C00)
    t.check(q8_scale(odd) == 1.0, "scale 1.0 at an odd address")
    put_scale(odd, 0x0001)
    t.check(q8_scale(odd) == Float32(2.0 ** -24), "subnormal scale")
    put_scale(odd, 0xC500)
    t.check(q8_scale(odd) == -5.0, "negative scale")
    free_quants(buf.unsafe_bitcast[Int8]())


def test_quantize_activation(mut t: Tally) raises:
    """Ties to even at exact .5 (block 0: amax 127 makes the multiplier exactly 1),
    an all-zero block, a negative amax, and random blocks against a scalar loop."""
    var nb = 12
    var n = nb * Q8_BLOCK
    var x = alloc_floats(n)
    var qx = alloc_quants(n)
    var dx = alloc_floats(nb)
    var ties = [Float32(127), 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 126.5, -126.5, 4.5, -3.5]
    var want = [127, 0, 2, 2, 0, -2, -2, 4, 126, -126, 4, -4]
    for i in range(len(ties)):
        x.unsafe_store(i, ties[i])
    # block 1 stays all zero; block 2's amax is negative: multiplier 0.5, 63.5 -> 64 and 0.5 -> 0
    x.unsafe_store(64, -254.0)
    x.unsafe_store(65, 127.0)
    x.unsafe_store(66, 1.0)
    x.unsafe_store(67, -3.0)
    var rng = Rng(7)
    for i in range(3 * Q8_BLOCK, n):
        var scale = Float32(1 << (i // Q8_BLOCK))  # blocks of different magnitudes
        x.unsafe_store(i, (rng.next_f32() - Float32(0.5)) * scale)
    quantize_activation(qx, dx, x, n)
    var ok = dx.unsafe_load(0) == 1.0
    for i in range(Q8_BLOCK):
        ok = ok and Int(qx.unsafe_load(i)) == (want[i] if i < len(want) else 0)
    t.check(ok, "activation ties round to even")
    ok = dx.unsafe_load(1) == 0.0
    for i in range(Q8_BLOCK, 2 * Q8_BLOCK):
        ok = ok and qx.unsafe_load(i) == 0
    t.check(ok, "an all-zero block quantizes to zeros with scale 0")
    t.check(Int(qx.unsafe_load(64)) == -127 and Int(qx.unsafe_load(65)) == 64 and Int(qx.unsafe_load(66)) == 0
            and Int(qx.unsafe_load(67)) == -2 and dx.unsafe_load(2) == f32_to_fp16_f32(Float32(254) / 127),
            "a block whose amax is negative")
    ok = True
    for b in range(3, nb):
        var amax = Float32(0)
        for i in range(Q8_BLOCK):
            amax = max(amax, abs(x.unsafe_load(b * Q8_BLOCK + i)))
        var id = Float32(127) / amax
        ok = ok and dx.unsafe_load(b) == f32_to_fp16_f32(amax / Float32(127))
        for i in range(Q8_BLOCK):
            var q = round_ties_even(x.unsafe_load(b * Q8_BLOCK + i) * id)
            ok = ok and Float32(qx.unsafe_load(b * Q8_BLOCK + i)) == q
    t.check(ok, "random blocks quantize as the scalar loop does")
    free_floats(x)
    free_floats(dx)
    free_quants(qx)


def test_block_dot(mut t: Tally) raises:
    """Each block's int32 dot product, by the build's kernel and by the portable one,
    equals the scalar loop on random blocks (w over all of int8, -128 included; x
    within +-127, as quantized) and at the extremes."""
    var nb = 66
    var w = alloc_quants(nb * Q8_BLOCK_BYTES).unsafe_bitcast[UInt8]()
    var qx = alloc_quants(nb * Q8_BLOCK)
    var rng = Rng(11)
    for b in range(nb):
        for i in range(Q8_BLOCK_BYTES):
            w.unsafe_store(b * Q8_BLOCK_BYTES + i, UInt8(rng.next_u32() & 255))
        for i in range(Q8_BLOCK):
            qx.unsafe_store(b * Q8_BLOCK + i, Int8(Int(rng.next_u32() % 255) - 127))
    for b in range(nb - 2, nb):  # -128 * -+127 in every lane
        for i in range(Q8_BLOCK):
            w.unsafe_store(b * Q8_BLOCK_BYTES + 2 + i, 0x80)
            qx.unsafe_store(b * Q8_BLOCK + i, Int8(-127 if b == nb - 2 else 127))
    var ok = True
    var ok_portable = True
    for b in range(nb):
        var block = w.unsafe_offset(b * Q8_BLOCK_BYTES)
        var x = qx.unsafe_offset(b * Q8_BLOCK)
        var want = scalar_isum(block, x)
        ok = ok and Int(block_isum(block, x)) == want
        var portable = block_partials_portable(q8_quants(block), x.unsafe_load[width=Q8_BLOCK]())
        ok_portable = ok_portable and Int(portable.reduce_add()) == want
    t.check(ok, "block dot product (build target's kernel) equals the scalar loop")
    t.check(ok_portable, "block dot product (portable kernel) equals the scalar loop")
    t.check(scalar_isum(w.unsafe_offset((nb - 2) * Q8_BLOCK_BYTES), qx.unsafe_offset((nb - 2) * Q8_BLOCK)) == 520192,
            "the extreme block's sum is 32 * 128 * 127")
    free_quants(w.unsafe_bitcast[Int8]())
    free_quants(qx)


def test_q8_dot(mut t: Tally) raises:
    """A row's dot product keeps each block's sum with its own scales: scales of
    different powers of two, quants small enough that every order of the float sum
    is exact, so the result must equal the scalar loop's exactly. Row lengths cover
    whole groups of eight blocks, the single blocks after them, and both."""
    var lengths = [1, 2, 7, 8, 9, 16, 17, 43]
    var rng = Rng(3)
    var ok = True
    for li in range(len(lengths)):
        var nb = lengths[li]
        var w = alloc_quants(nb * Q8_BLOCK_BYTES).unsafe_bitcast[UInt8]()
        var qx = alloc_quants(nb * Q8_BLOCK)
        var dx = alloc_floats(nb)
        for b in range(nb):
            var block = w.unsafe_offset(b * Q8_BLOCK_BYTES)
            # 2^0..2^3, and 0 (a block whose amax was 0) now and then
            put_scale(block, 0 if b % 5 == 4 else fp16_bits(Float32(1 << (b % 4))))
            dx.unsafe_store(b, 0.0 if b % 7 == 6 else Float32(1 << (b % 2)))
            for i in range(Q8_BLOCK):
                block.unsafe_store(2 + i, UInt8((Int(rng.next_u32() % 15) - 7) & 255))
                qx.unsafe_store(b * Q8_BLOCK + i, Int8(Int(rng.next_u32() % 15) - 7))
        var want = Float32(0)
        for b in range(nb):
            var block = w.unsafe_offset(b * Q8_BLOCK_BYTES)
            want += Float32(scalar_isum(block, qx.unsafe_offset(b * Q8_BLOCK))) * (q8_scale(block) * dx.unsafe_load(b))
        var got = q8_dot(w, qx, dx, nb)
        if got != want:
            ok = False
            print("  q8_dot of", nb, "blocks:", got, "want", want)
        free_quants(w.unsafe_bitcast[Int8]())
        free_quants(qx)
        free_floats(dx)
    t.check(ok, "row dot product equals the scalar loop")
    # dequantizing a row: d * q
    var row = alloc_quants(2 * Q8_BLOCK_BYTES).unsafe_bitcast[UInt8]()
    for b in range(2):
        put_scale(row.unsafe_offset(b * Q8_BLOCK_BYTES), fp16_bits(Float32(0.5) if b == 0 else Float32(-3)))
        for i in range(Q8_BLOCK):
            row.unsafe_store(b * Q8_BLOCK_BYTES + 2 + i, UInt8((i * 37 + b) & 255))
    var out = alloc_floats(2 * Q8_BLOCK)
    dequantize_row(out, row, 2 * Q8_BLOCK)
    ok = True
    for b in range(2):
        for i in range(Q8_BLOCK):
            var q = Float32(bitcast[DType.int8, 1](UInt8((i * 37 + b) & 255)))
            ok = ok and out.unsafe_load(b * Q8_BLOCK + i) == (Float32(0.5) if b == 0 else Float32(-3)) * q
    t.check(ok, "a dequantized row is d * q")
    free_quants(row.unsafe_bitcast[Int8]())
    free_floats(out)


# ----------------------------------------------------------------------------
# Generation on stories260K, as float32 and quantized the way the converter does


def quantize_matrix(src: Matrix, rows: Int, cols: Int, mut owned: List[QPtr]) raises -> Matrix:
    """The converter's quantizer, llama.cpp's quantize_row_q8_0_ref: d = amax / 127,
    q = roundf(x * (1 / d)), d stored as fp16. Float32 rows whose length is not a
    multiple of 32 stay as they are, as the converter leaves them."""
    if cols % Q8_BLOCK != 0:
        return src
    var x = src.floats()
    var nb = cols // Q8_BLOCK
    var dst = alloc_quants(rows * nb * Q8_BLOCK_BYTES)
    owned.append(dst)
    var bytes = dst.unsafe_bitcast[UInt8]()
    for r in range(rows):
        for b in range(nb):
            var v = x.unsafe_offset(r * cols + b * Q8_BLOCK)
            var block = bytes.unsafe_offset((r * nb + b) * Q8_BLOCK_BYTES)
            var amax = Float32(0)
            for i in range(Q8_BLOCK):
                amax = max(amax, abs(v.unsafe_load(i)))
            var d = amax / Float32(127)
            var id = Float32(1) / d if d != 0 else Float32(0)
            put_scale(block, fp16_bits(d))
            for i in range(Q8_BLOCK):
                block.unsafe_store(2 + i, bitcast[DType.uint8, 1](Int8(Int(round_half_away(v.unsafe_load(i) * id)))))
    return Matrix(bytes, W_Q8_0)


def quantize_model(mut m: Model, mut owned: List[QPtr]) raises:
    var c = m.config.copy()
    var d = c.dim
    var kv = c.kv_dim()
    var h = c.hidden_dim
    var shared = Int(m.weights.wcls.data) == Int(m.weights.token_embedding.data)
    m.weights.token_embedding = quantize_matrix(m.weights.token_embedding, c.vocab_size, d, owned)
    m.weights.wcls = m.weights.token_embedding if shared else quantize_matrix(m.weights.wcls, c.vocab_size, d, owned)
    for l in range(c.n_layers):
        m.weights.wq[l] = quantize_matrix(m.weights.wq[l], d, d, owned)
        m.weights.wk[l] = quantize_matrix(m.weights.wk[l], kv, d, owned)
        m.weights.wv[l] = quantize_matrix(m.weights.wv[l], kv, d, owned)
        m.weights.wo[l] = quantize_matrix(m.weights.wo[l], d, d, owned)
        m.weights.w1[l] = quantize_matrix(m.weights.w1[l], h, d, owned)
        m.weights.w2[l] = quantize_matrix(m.weights.w2[l], d, h, owned)
        m.weights.w3[l] = quantize_matrix(m.weights.w3[l], h, d, owned)


def pool_regions(n: Int, dispatch: Int, regions: Int) raises -> Bool:
    """Runs `regions` regions of n shares on a Pool; share t adds 1 to its own count.
    After each region every count must equal the regions run so far: a share skipped,
    run twice, or still running when run() returned breaks it. Every 500th region
    share 0 busy-waits past SPIN_NS, so the spinning wait's fall back to
    synchronize() (and the cooldown after it) is exercised too; most regions are
    near-empty, the spin's case."""
    var counts = alloc_keys(n)
    var region = alloc_keys(1)
    var pool = Pool(n, dispatch)

    def share(t: Int) {imm}:
        if t == 0 and region.unsafe_load(0) % 500 == 499:
            var start = perf_counter_ns()
            while Int(perf_counter_ns() - start) < 2 * SPIN_NS:
                pass
        counts.unsafe_store(t, counts.unsafe_load(t) + 1)

    var ok = True
    for r in range(regions):
        region.unsafe_store(0, UInt64(r))
        pool.run(share)
        for t in range(n):
            if counts.unsafe_load(t) != UInt64(r + 1):
                ok = False
        if not ok:
            print("pool: n", n, "dispatch", dispatch, "region", r, "share counts off")
            break
    if dispatch == DISPATCH_SPIN and n > 1:
        print("pool: n", n, "spins that gave up (each then", COOLDOWN_REGIONS, "synchronize() waits):", pool.fallbacks(), "in", regions, "regions")
    _ = pool^
    external_call["free", NoneType](counts)
    external_call["free", NoneType](region)
    return ok


def test_pool(mut t: Tally) raises:
    """Every dispatch runs each share exactly once per region and returns only after
    all of them, at 2 and 3 shares and at 8, more than this machine's workers."""
    for n in [1, 2, 3, 8]:
        for dispatch in [DISPATCH_SPIN, DISPATCH_SYNCHRONIZE, DISPATCH_LIBRARY]:
            var regions = 10000 if dispatch == DISPATCH_SPIN else 2000
            t.check(pool_regions(n, dispatch, regions),
                    "pool: " + String(regions) + " regions of " + String(n) + " shares, dispatch " + String(dispatch))


def golden(name: String) raises -> String:
    """A text of tests/data/golden/ (written by the reference): a run's whole stdout, less the
    closing newline that generate prints after the pieces."""
    # the port's own file reader: the standard library's open() declares libc's open() with
    # another signature than model.mojo's, which the compiler refuses in one program
    var file = MappedFile("../../tests/data/golden/" + name)
    var n = file.size
    if n < 1 or file.data[n - 1] != UInt8(ord("\n")):
        file.close()
        raise Error("golden text " + name + " does not end a run's output")
    var text = string_from(file.data, n - 1)
    file.close()
    return text


def greedy_text(m: Model, tok: Tokenizer, prompt: String, steps: Int, nthreads: Int) raises -> String:
    """The generate loop (force the prompt, argmax, stop at BOS, safe pieces) into a string."""
    var s = RunState(m.config, steps)
    var pool = Pool(nthreads)
    var ids = tok.encode(text_bytes(prompt), True, False)
    var text = List[UInt8]()
    var token = ids[0]
    for pos in range(steps):
        var next = argmax(forward(s, m, token, pos, pool), m.config.vocab_size)
        if pos < len(ids) - 1:
            next = ids[pos + 1]
        if next == 1:
            break
        var piece = tok.decode(token, next)
        if safe_piece(piece):
            text += piece^
        token = next
    s.free()
    return String(StringSlice(unsafe_from_utf8=Span(text)))


def test_generation(mut t: Tally) raises:
    var model_path = find_model_file("stories260K.bin")
    var tok_path = find_model_file("tok512.bin")
    if model_path.byte_length() == 0 or tok_path.byte_length() == 0:
        t.skip("stories260K generation", "stories260K.bin or tok512.bin not found through POLYLLAMA_MODEL_PATH")
        return
    var m = read_model(model_path)
    var tok = Tokenizer(read_tokenizer(tok_path, m.config.vocab_size))
    var f32 = golden("stories260K.f32.greedy.txt")
    var prompted = golden("stories260K.f32.prompt.txt")
    var q8 = golden("stories260K.q8_0.greedy.txt")
    for nthreads in range(1, 3):
        var got = greedy_text(m, tok, "", 256, nthreads)
        t.check(got == f32, "stories260K greedy at -j " + String(nthreads) + ": '" + got + "'")
        got = greedy_text(m, tok, "Once upon a time, there was a", 96, nthreads)
        t.check(got == prompted, "stories260K greedy from a prompt at -j " + String(nthreads) + ": '" + got + "'")
    var owned = List[QPtr]()
    quantize_model(m, owned)
    t.check(m.weights.wq[0].q8 and not m.weights.w2[0].q8, "stories260K quantized but ffn_down (rows of 172)")
    for nthreads in range(1, 3):
        var got = greedy_text(m, tok, "", 128, nthreads)
        t.check(got == q8, "stories260K Q8_0 greedy at -j " + String(nthreads) + ": '" + got + "'")
    for p in owned:
        free_quants(p)
    m.file.close()


# ----------------------------------------------------------------------------
# The batched prefill's kernels against plain scalar loops


def rand_unit(mut rng: Rng) -> Float32:
    return Float32(Int(rng.next_u32() % 2001) - 1000) / 1000


def test_gemm_f32(mut t: Tally) raises:
    """The f32 kernel, out(T, n) = X(T, d) @ W(n, d)^T, for T in {1, 7, 33}, n not a multiple of the
    tile's rows, d with and without a vector tail, whole and split into row ranges
    (as the workers split it), against a float64 scalar loop."""
    var rng = Rng(11)
    var ok = True
    for ti in range(3):
        var T = [1, 7, 33][ti]
        for ni in range(3):
            var n = [5, 13, 38][ni]
            for di in range(3):
                var d = [64, 96, 172][di]
                var x = alloc_floats(T * d)
                var w = alloc_floats(n * d)
                var got = alloc_floats(T * n)
                for i in range(T * d):
                    x.unsafe_store(i, rand_unit(rng))
                for i in range(n * d):
                    w.unsafe_store(i, rand_unit(rng))
                for split_at in range(2):
                    var cut = 0 if split_at == 0 else n // 2
                    gemm_f32_rows(got, n, x, T, w, d, 0, cut)
                    gemm_f32_rows(got, n, x, T, w, d, cut, n)
                    for r in range(T):
                        for c in range(n):
                            var want = Float64(0)
                            var mag = Float64(0)
                            for k in range(d):
                                var p = Float64(x.unsafe_load(r * d + k)) * Float64(w.unsafe_load(c * d + k))
                                want += p
                                mag += abs(p)
                            var g = Float64(got.unsafe_load(r * n + c))
                            if abs(g - want) > 1e-6 * (mag + 1):
                                ok = False
                                print("  f32 gemm T", T, "n", n, "d", d, "at", r, c, ":", g, "want", want)
                free_floats(x)
                free_floats(w)
                free_floats(got)
    t.check(ok, "f32 matrix-matrix kernel equals the scalar loop")


def test_gemm_q8(mut t: Tally) raises:
    """The Q8_0 matrix-matrix kernel: every block's exact int32 sum times its two
    scales, against the scalar loop, for T in {1, 7, 33}, n not a multiple of the
    tile, rows of whole groups of eight blocks, of single blocks, and both; the
    quants include the extremes (w = -128, x = +-127), where an unsigned trick
    that overflowed would show."""
    var rng = Rng(5)
    var ok = True
    for ti in range(3):
        var T = [1, 7, 33][ti]
        for ni in range(2):
            var n = [5, 18][ni]
            for di in range(4):
                var d = [64, 96, 256, 352][di]
                var nb = d // Q8_BLOCK
                var stride = q8_row_bytes(d)
                var w = alloc_quants(n * stride).unsafe_bitcast[UInt8]()
                var qx = alloc_quants(T * d)
                var dx = alloc_floats(T * nb)
                var got = alloc_floats(T * n)
                for r in range(n):
                    for b in range(nb):
                        var block = w.unsafe_offset(r * stride + b * Q8_BLOCK_BYTES)
                        put_scale(block, fp16_bits(Float32(1 << Int(rng.next_u32() % 4)) / 64))
                        var extreme = (r + b) % 5 == 0
                        for i in range(Q8_BLOCK):
                            var q = -128 if extreme else Int(rng.next_u32() % 255) - 127
                            block.unsafe_store(2 + i, UInt8(q & 255))
                for r in range(T):
                    for b in range(nb):
                        dx.unsafe_store(r * nb + b, Float32(1 << Int(rng.next_u32() % 3)) / 8)
                        var extreme = (r + b) % 3 == 0
                        for i in range(Q8_BLOCK):
                            var q = (127 if i % 2 == 0 else -127) if extreme else Int(rng.next_u32() % 255) - 127
                            qx.unsafe_store(r * d + b * Q8_BLOCK + i, Int8(q))
                gemm_q8_rows(got, n, qx, dx, T, w, d, 0, n // 2)
                gemm_q8_rows(got, n, qx, dx, T, w, d, n // 2, n)
                for r in range(T):
                    for c in range(n):
                        var want = Float64(0)
                        var mag = Float64(0)
                        for b in range(nb):
                            var block = w.unsafe_offset(c * stride + b * Q8_BLOCK_BYTES)
                            var isum = scalar_isum(block, qx.unsafe_offset(r * d + b * Q8_BLOCK))
                            var p = Float64(Float32(isum) * (q8_scale(block) * dx.unsafe_load(r * nb + b)))
                            want += p
                            mag += abs(p)
                        var g = Float64(got.unsafe_load(r * n + c))
                        if abs(g - want) > 1e-6 * (mag + 1):
                            ok = False
                            print("  q8 gemm T", T, "n", n, "d", d, "at", r, c, ":", g, "want", want)
                free_quants(w.unsafe_bitcast[Int8]())
                free_quants(qx)
                free_floats(dx)
                free_floats(got)
    t.check(ok, "Q8_0 matrix-matrix kernel equals the scalar loop")


def one_position_logits(m: Model, ids: List[Int], nthreads: Int) raises -> List[Float32]:
    var s = RunState(m.config, len(ids))
    var pool = Pool(nthreads)
    var out = List[Float32]()
    for pos in range(len(ids)):
        var logits = forward(s, m, ids[pos], pos, pool)
        for i in range(m.config.vocab_size):
            out.append(logits.unsafe_load(i))
    s.free()
    return out^


def batched_logits(m: Model, ids: List[Int], batch: Int, nthreads: Int) raises -> List[Float32]:
    var s = RunState(m.config, len(ids))
    var b = BatchState(m.config, batch, True, nthreads, len(ids))
    var pool = Pool(nthreads)
    var out = List[Float32]()
    var p0 = 0
    while p0 < len(ids):
        var nrows = min(b.rows, len(ids) - p0)
        forward_batch(s, b, m, ids, p0, nrows, p0, 0, pool)
        for i in range(nrows * m.config.vocab_size):
            out.append(b.logits.unsafe_load(i))
        p0 += nrows
    s.free()
    b.free()
    return out^


def logits_agree(a: List[Float32], b: List[Float32], vocab: Int, rel: Float32, check_argmax: Bool) -> Bool:
    """Row by row: max |a - b| <= rel * (1 + max |a|), and the same argmax."""
    for r in range(len(a) // vocab):
        var top = Float32(0)
        var diff = Float32(0)
        var ia = 0
        var ib = 0
        for i in range(vocab):
            var x = a[r * vocab + i]
            var y = b[r * vocab + i]
            top = max(top, abs(x))
            diff = max(diff, abs(x - y))
            if x > a[r * vocab + ia]:
                ia = i
            if y > b[r * vocab + ib]:
                ib = i
        if diff > rel * (1 + top) or (check_argmax and ia != ib):
            print("  row", r, "differs by", diff, "of", top, "argmax", ia, ib)
            return False
    return True


def test_batched_logits(mut t: Tally) raises:
    """The batched logits of stories260K equal the one-position ones within the contract's
    tolerance, for batches of 1, 7 and all the positions, on 1 and 2 workers; and on
    the model quantized to Q8_0 within the loose bound (a rounding near a tie may
    part them, docs/port-contract.md section 8)."""
    var model_path = find_model_file("stories260K.bin")
    if model_path.byte_length() == 0:
        t.skip("stories260K batched logits", "stories260K.bin not found through POLYLLAMA_MODEL_PATH")
        return
    var m = read_model(model_path)
    var ids = List[Int]()
    ids.append(1)
    for i in range(39):
        ids.append((7 * i + 300) % m.config.vocab_size)
    var vocab = m.config.vocab_size
    var want = one_position_logits(m, ids, 1)
    for nthreads in range(1, 3):
        for bi in range(3):
            var batch = [1, 7, 40][bi]
            var got = batched_logits(m, ids, batch, nthreads)
            t.check(logits_agree(want, got, vocab, 1e-4, True),
                    "stories260K batched logits at -b " + String(batch) + " -j " + String(nthreads))
    var owned = List[QPtr]()
    quantize_model(m, owned)
    var want_q = one_position_logits(m, ids, 1)
    for bi in range(3):
        var batch = [1, 7, 40][bi]
        var got = batched_logits(m, ids, batch, 2)
        t.check(logits_agree(want_q, got, vocab, 5e-2, False),
                "stories260K Q8_0 batched logits at -b " + String(batch) + " -j 2")
    for p in owned:
        free_quants(p)
    m.file.close()


# ----------------------------------------------------------------------------
# Contract 3: the GGUF keys, F16 and BF16


def test_gguf_keys(mut t: Tally) raises:
    """The keys' defaults, other values of any numeric type, and the refusals: a
    wrong kind or an out-of-range value, RoPE scaling, experts."""
    var path = write_temp("keys.gguf", tiny_gguf(""))
    var m = read_model(path)
    t.check(m.config.rope_theta == 10000 and m.config.norm_eps == Float32(1e-5) and m.config.bos_id == 1
            and m.config.eos_id == 2, "absent keys take llama.cpp's defaults")
    m.file.close()
    remove(path)
    path = write_temp("keys.gguf", tiny_gguf("other keys"))
    m = read_model(path)
    t.check(m.config.rope_theta == 500000 and m.config.norm_eps == Float32(1e-6) and m.config.bos_id == 5
            and m.config.eos_id == 6, "keys of f64, f32, u64, i16 and u8 types are read")
    m.file.close()
    remove(path)
    path = write_temp("keys.gguf", tiny_gguf("integer theta"))
    m = read_model(path)
    t.check(m.config.rope_theta == 1000000, "an integer RoPE base is read")
    m.file.close()
    remove(path)
    var cases: List[String] = [
        "theta string", "theta 1", "theta inf", "eps 0", "eps 1", "eps NaN", "eps bool", "rope dims 2",
        "rope dims float", "bos 260", "eos -1", "bos string", "scaling linear", "scaling number", "experts 8",
    ]
    var wants: List[String] = [
        "key llama.rope.freq_base must be a number", "key llama.rope.freq_base=1.0", "key llama.rope.freq_base=inf",
        "key llama.attention.layer_norm_rms_epsilon=0.0", "key llama.attention.layer_norm_rms_epsilon=1.0",
        "key llama.attention.layer_norm_rms_epsilon=nan", "key llama.attention.layer_norm_rms_epsilon must be a number",
        "key llama.rope.dimension_count=2 must equal head_size=4", "key llama.rope.dimension_count must be an integer",
        "key tokenizer.ggml.bos_token_id=260 is outside [0, 260)", "key tokenizer.ggml.eos_token_id=-1 is outside",
        "key tokenizer.ggml.bos_token_id must be an integer", "key llama.rope.scaling.type is 'linear'",
        "key llama.rope.scaling.type must be a string", "key llama.expert_count=8",
    ]
    for i in range(len(cases)):
        expect_refusal(t, "gguf key " + cases[i], tiny_gguf(cases[i]), -1, wants[i])


def test_special_ids(mut t: Tally) raises:
    """A GGUF's BOS and EOS ids replace 1 and 2 in encode, and BOS in decode's rule."""
    var path = find_model_file("tokenizer.bin")
    if path.byte_length() == 0:
        t.skip("special ids", "tokenizer.bin not found through POLYLLAMA_MODEL_PATH")
        return
    var tok = Tokenizer(read_tokenizer(path, 32000), 5, 6)
    var ids = tok.encode(text_bytes("Once"), True, True)
    t.check(len(ids) >= 3 and ids[0] == 5 and ids[len(ids) - 1] == 6, "encode starts with BOS 5, ends with EOS 6: " + show(ids))
    var once = ids[1]
    var piece = tok.decode(5, once)
    t.check(String(StringSlice(unsafe_from_utf8=Span(piece))) == "Once", "decode after BOS 5 drops the space")
    piece = tok.decode(1, once)
    t.check(String(StringSlice(unsafe_from_utf8=Span(piece))) == " Once", "decode after id 1 keeps it when BOS is 5")


def test_theta_eps(mut t: Tally) raises:
    """A non-default RoPE base or norm epsilon changes the logits, the same way in the
    one-position and the batched forward pass."""
    var model_path = find_model_file("stories260K.bin")
    if model_path.byte_length() == 0:
        t.skip("theta and eps", "stories260K.bin not found through POLYLLAMA_MODEL_PATH")
        return
    var m = read_model(model_path)
    var ids = List[Int]()
    for i in range(12):
        ids.append(1 if i == 0 else (11 * i + 260) % m.config.vocab_size)
    var vocab = m.config.vocab_size
    var base = one_position_logits(m, ids, 1)
    for k in range(2):
        m.config.rope_theta = Float32(500000) if k == 0 else Float32(10000)
        m.config.norm_eps = Float32(1e-5) if k == 0 else Float32(0.25)
        var what = "RoPE base 500000" if k == 0 else "eps 0.25"
        var one = one_position_logits(m, ids, 1)
        var moved = Float32(0)
        for i in range(len(one)):
            moved = max(moved, abs(one[i] - base[i]))
        t.check(moved > 1e-3, what + " moves the logits (by " + String(moved) + ")")
        t.check(logits_agree(one, batched_logits(m, ids, 5, 2), vocab, 1e-4, True),
                what + ": batched logits equal the one-position ones")
    m.file.close()


def pow2(k: Int) -> Float64:
    var v = Float64(1)
    for _ in range(abs(k)):
        v = v * 2 if k > 0 else v / 2
    return v


def half_value(bits: Int, exp_bits: Int, mant_bits: Int) -> Float64:
    """A 16-bit pattern's value by the format's definition (F16: 5 exponent bits and
    10 mantissa bits; BF16: 8 and 7); NaN for a NaN pattern."""
    var sign = Float64(-1) if (bits >> 15) & 1 == 1 else Float64(1)
    var e = (bits >> mant_bits) & ((1 << exp_bits) - 1)
    var m = bits & ((1 << mant_bits) - 1)
    var bias = (1 << (exp_bits - 1)) - 1
    if e == (1 << exp_bits) - 1:
        var inf = Float64(1e308) * 10
        return sign * inf if m == 0 else inf - inf
    if e == 0:
        return sign * Float64(m) * pow2(1 - bias - mant_bits)
    return sign * (1 + Float64(m) * pow2(-mant_bits)) * pow2(e - bias)


def same_value(got: Float32, want: Float64) -> Bool:
    return (got != got and want != want) or Float64(got) == want


def test_half_widen(mut t: Tally) raises:
    """Every F16 and BF16 bit pattern (subnormals, infinities, NaN) converted to
    float32, vector lanes and tail, against the format's definition."""
    var bits = alloc_quants(2 * 65536 + 2).unsafe_bitcast[UInt8]()
    var hp = bits.unsafe_bitcast[UInt16]()
    for i in range(65536):
        hp.unsafe_store(i, UInt16(i))
    var got = alloc_floats(65536)
    for k in range(2):
        var bad = 0
        # 65533 values: the last ones through the scalar tail
        if k == 0:
            widen_row[W_F16](got, bits, 65533)
            widen_row[W_F16](got.unsafe_offset(65533), bits.unsafe_offset(2 * 65533), 3)
        else:
            widen_row[W_BF16](got, bits, 65533)
            widen_row[W_BF16](got.unsafe_offset(65533), bits.unsafe_offset(2 * 65533), 3)
        for i in range(65536):
            var want = half_value(i, 5, 10) if k == 0 else half_value(i, 8, 7)
            if not same_value(got.unsafe_load(i), want):
                if bad < 5:
                    print("  widen", k, hex(i), got.unsafe_load(i), "want", want)
                bad += 1
        t.check(bad == 0, ("F16" if k == 0 else "BF16") + ": every bit pattern converts exactly (subnormals, NaN)")
    free_floats(got)
    free_quants(bits.unsafe_bitcast[Int8]())


def random_half_bits[K: Int](mut rng: Rng) -> UInt16:
    """A weight of moderate size (products stay far from overflow), subnormals
    included: F16 exponents 0 .. 16, BF16 exponents 0 and 112 .. 128."""
    var r = rng.next_u32()
    var sign = UInt16((r >> 31) & 1) << 15
    comptime if K == W_F16:
        var e = UInt16(r % 17)
        return sign | (e << 10) | UInt16((r >> 8) & 1023)
    else:
        var e = UInt16(0 if r % 9 == 0 else 112 + (r >> 4) % 17)
        return sign | (e << 7) | UInt16((r >> 12) & 127)


def half_kernel_case[K: Int](mut t: Tally, name: String) raises:
    """The one-position (matvec) and batched (tiled) 16-bit kernels against a plain
    loop of float64(w) * float64(x), the activation unrounded (contract 3): T in
    {1, 7, 33}, rows not a multiple of the tiles, d = 64, 96, 172, 288; whole and
    split in two row ranges, as workers split them. Some activations lie halfway
    between two 16-bit values, where a kernel that rounded them (llama.cpp does)
    would be off by half a 16-bit step."""
    var rng = Rng(UInt64(K + 17))
    var ok_mv = True
    var ok_mm = True
    for ti in range(3):
        var T = [1, 7, 33][ti]
        for ni in range(3):
            var n = [5, 13, 38][ni]
            for di in range(4):
                var d = [64, 96, 172, 288][di]
                var x = alloc_floats(T * d)
                var w = alloc_quants(2 * n * d).unsafe_bitcast[UInt8]()
                var wp = w.unsafe_bitcast[UInt16]()
                var got = alloc_floats(T * n)
                var half_ulp = pow2(-11) if K == W_F16 else pow2(-8)
                for i in range(T * d):
                    var v = rand_unit(rng)
                    if i % 5 == 0:  # a tie: halfway between two neighbours in [1, 2)
                        v = Float32((1 + Float64(2 * (i % 7) + 1) * half_ulp) * Float64(1 if i % 2 == 0 else -1))
                    x.unsafe_store(i, v)
                for i in range(n * d):
                    wp.unsafe_store(i, random_half_bits[K](rng))
                var want = List[Float64](length=T * n, fill=0)
                var mag = List[Float64](length=T * n, fill=0)
                for r in range(T):
                    for c in range(n):
                        for k in range(d):
                            var wv = half_value(Int(wp.unsafe_load(c * d + k)), 5, 10) if K == W_F16 else half_value(
                                Int(wp.unsafe_load(c * d + k)), 8, 7)
                            var p = wv * Float64(x.unsafe_load(r * d + k))
                            want[r * n + c] += p
                            mag[r * n + c] += abs(p)
                var cut = n // 2
                for r in range(T):
                    half_matvec_rows[K](got.unsafe_offset(r * n), x.unsafe_offset(r * d), w, d, 0, cut)
                    half_matvec_rows[K](got.unsafe_offset(r * n), x.unsafe_offset(r * d), w, d, cut, n)
                for i in range(T * n):
                    if abs(Float64(got.unsafe_load(i)) - want[i]) > 1e-6 * (mag[i] + 1):
                        ok_mv = False
                        print("  ", name, "matvec T", T, "n", n, "d", d, "at", i, ":", got.unsafe_load(i), "want", want[i])
                for i in range(T * n):
                    got.unsafe_store(i, 0)
                gemm_w_rows[K](got, n, x, T, w, d, 0, cut)
                gemm_w_rows[K](got, n, x, T, w, d, cut, n)
                for i in range(T * n):
                    if abs(Float64(got.unsafe_load(i)) - want[i]) > 1e-6 * (mag[i] + 1):
                        ok_mm = False
                        print("  ", name, "gemm T", T, "n", n, "d", d, "at", i, ":", got.unsafe_load(i), "want", want[i])
                free_floats(x)
                free_floats(got)
                free_quants(w.unsafe_bitcast[Int8]())
    t.check(ok_mv, name + " one-position kernel equals the scalar loop")
    t.check(ok_mm, name + " matrix-matrix kernel equals the scalar loop")


def test_half_kernels(mut t: Tally) raises:
    half_kernel_case[W_F16](t, "F16")
    half_kernel_case[W_BF16](t, "BF16")


def tiny_half_gguf(breakage: String) -> List[UInt8]:
    """A one-layer model of dim 32 and hidden 48 as llama.cpp's converter writes it
    with --outtype f16: every matrix F16 (attn_v BF16, to mix them), norms F32, an
    unshared classifier, the last tensor (so a reader sizing it by 4 bytes a value
    finds it outside the file); broken as `breakage` says."""
    var w = GgufWriter()
    tiny_header(w, 32, 48, "")
    var F16 = 1
    var BF16 = 30
    _ = w.add("token_embd.weight", 32, 260, BF16 if breakage == "bf16 embedding" else F16)
    _ = w.add("output_norm.weight", 32, 0)
    _ = w.add("blk.0.attn_norm.weight", 32, 0, F16 if breakage == "f16 norm" else (BF16 if breakage == "bf16 norm" else 0))
    var q_at = w.add("blk.0.attn_q.weight", 32, 32, F16)
    if breakage == "tensor inside another":
        # where the data would end at 1 byte a value
        w.info("blk.0.attn_k.weight", 32, 32, q_at + 32 * 32, F16)
    else:
        _ = w.add("blk.0.attn_k.weight", 32, 32, 2 if breakage == "type Q4_0" else F16)
    _ = w.add("blk.0.attn_v.weight", 32, 32, BF16)
    _ = w.add("blk.0.attn_output.weight", 32, 32, F16)
    _ = w.add("blk.0.ffn_norm.weight", 32, 0)
    _ = w.add("blk.0.ffn_gate.weight", 32, 48, F16)
    _ = w.add("blk.0.ffn_down.weight", 48, 32, F16)
    _ = w.add("blk.0.ffn_up.weight", 32, 48, F16)
    _ = w.add("output.weight", 32, 260, F16)
    var out = w.bytes()
    if breakage == "truncated":
        out.shrink(len(out) - 2)
    return out^


def test_half_files(mut t: Tally) raises:
    """F16 and BF16 files load, each matrix with its type, sized 2 bytes a value; a
    16-bit norm, other types, overlapping and truncated data are refused."""
    var path = write_temp("tiny-f16.gguf", tiny_half_gguf(""))
    t.check(refusal(path, -1) == "", "the tiny F16 GGUF loads: " + refusal(path, -1))
    var m = read_model(path)
    t.check(m.weights.token_embedding.kind == W_F16 and m.weights.wcls.kind == W_F16 and m.weights.wv[0].kind == W_BF16
            and m.weights.w2[0].kind == W_F16, "each matrix keeps its type (attn_v BF16, the others F16)")
    m.file.close()
    remove(path)
    path = write_temp("tiny-bf16.gguf", tiny_half_gguf("bf16 embedding"))
    t.check(refusal(path, -1) == "", "a BF16 token_embd loads: " + refusal(path, -1))
    remove(path)
    var cases: List[String] = ["f16 norm", "bf16 norm", "type Q4_0", "tensor inside another", "truncated"]
    var wants: List[String] = [
        "tensor blk.0.attn_norm.weight is F16; only matrices may be", "tensor blk.0.attn_norm.weight is BF16",
        "tensor blk.0.attn_k.weight has type 2", "tensors blk.0.attn_q.weight and blk.0.attn_k.weight overlap",
        "tensor output.weight lies outside the file",
    ]
    for i in range(len(cases)):
        expect_refusal(t, "gguf 16-bit " + cases[i], tiny_half_gguf(cases[i]), -1, wants[i])


def to_half(src: Matrix, rows: Int, cols: Int, kind: Int, mut owned: List[QPtr]) raises -> Matrix:
    """A float32 matrix stored as F16 or BF16, rounded to nearest even as the
    converter writes it."""
    var x = src.floats()
    var dst = alloc_quants(2 * rows * cols)
    owned.append(dst)
    var hp = dst.unsafe_bitcast[UInt16]()
    for i in range(rows * cols):
        var v = x.unsafe_load(i)
        if kind == W_F16:
            hp.unsafe_store(i, bitcast[DType.uint16, 1](v.cast[DType.float16]()))
        else:
            var u = bitcast[DType.uint32, 1](v)  # finite weights: ties to even on the bits
            hp.unsafe_store(i, UInt16((u + 0x7FFF + ((u >> 16) & 1)) >> 16))
    return Matrix(dst.unsafe_bitcast[UInt8](), kind)


def half_model(mut m: Model, kind: Int, mut owned: List[QPtr]) raises:
    var c = m.config.copy()
    var d = c.dim
    var kv = c.kv_dim()
    var h = c.hidden_dim
    var shared = Int(m.weights.wcls.data) == Int(m.weights.token_embedding.data)
    m.weights.token_embedding = to_half(m.weights.token_embedding, c.vocab_size, d, kind, owned)
    m.weights.wcls = m.weights.token_embedding if shared else to_half(m.weights.wcls, c.vocab_size, d, kind, owned)
    for l in range(c.n_layers):
        m.weights.wq[l] = to_half(m.weights.wq[l], d, d, kind, owned)
        m.weights.wk[l] = to_half(m.weights.wk[l], kv, d, kind, owned)
        m.weights.wv[l] = to_half(m.weights.wv[l], kv, d, kind, owned)
        m.weights.wo[l] = to_half(m.weights.wo[l], d, d, kind, owned)
        m.weights.w1[l] = to_half(m.weights.w1[l], h, d, kind, owned)
        m.weights.w2[l] = to_half(m.weights.w2[l], d, h, kind, owned)
        m.weights.w3[l] = to_half(m.weights.w3[l], h, d, kind, owned)


def test_half_model(mut t: Tally) raises:
    """stories260K with F16 (then BF16) matrices, ffn_down's rows of 172 included: the
    batched logits equal the one-position ones within the contract's tolerance at
    -b 1, 7 and 40 on 1 and 2 workers (the activations stay float32, so only the
    order of float32 sums differs), and lie near the float32 model's."""
    var model_path = find_model_file("stories260K.bin")
    if model_path.byte_length() == 0:
        t.skip("stories260K F16/BF16", "stories260K.bin not found through POLYLLAMA_MODEL_PATH")
        return
    for k in range(2):
        var kind = W_F16 if k == 0 else W_BF16
        var name = "F16" if k == 0 else "BF16"
        var m = read_model(model_path)
        var ids = List[Int]()
        ids.append(1)
        for i in range(39):
            ids.append((7 * i + 300) % m.config.vocab_size)
        var vocab = m.config.vocab_size
        var f32 = one_position_logits(m, ids, 1)
        var owned = List[QPtr]()
        half_model(m, kind, owned)
        var want = one_position_logits(m, ids, 1)
        t.check(logits_agree(f32, want, vocab, 5e-2, False), "stories260K " + name + " logits near the F32 ones")
        for nthreads in range(1, 3):
            for bi in range(3):
                var batch = [1, 7, 40][bi]
                t.check(logits_agree(want, batched_logits(m, ids, batch, nthreads), vocab, 1e-4, True),
                        "stories260K " + name + " batched logits at -b " + String(batch) + " -j " + String(nthreads))
        for p in owned:
            free_quants(p)
        m.file.close()


def main():
    var t = Tally()
    try:
        test_tokenizer(t)
        test_safe_piece(t)
        test_rng(t)
        test_choices(t)
        test_args(t)
        test_validate(t)
        test_number_flags(t)
        test_gguf_refusals(t)
        test_tokenizer_refusals(t)
        test_huge_page_load(t)
        test_fp16(t)
        test_quantize_activation(t)
        test_block_dot(t)
        test_q8_dot(t)
        test_q8_refusals(t)
        test_pool(t)
        test_generation(t)
        test_gemm_f32(t)
        test_gemm_q8(t)
        test_batched_logits(t)
        test_gguf_keys(t)
        test_special_ids(t)
        test_theta_eps(t)
        test_half_widen(t)
        test_half_kernels(t)
        test_half_files(t)
        test_half_model(t)
    except e:
        t.check(False, "unexpected error: " + String(e))
    print(t.passed, "passed,", t.failed, "failed,", t.skipped, "skipped")
    exit(1 if t.failed > 0 else 0)
