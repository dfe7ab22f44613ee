# Unit tests of llama2.mojo: tokenizer vectors, decode rules, the sampler's RNG and
# choices, argument parsing and header validation. Mojo 1.2 has no `mojo test`
# command, so this is a program: it prints "N passed, N failed" and exits non-zero
# on any failure.
#
# The tokenizer vectors need the Llama 2 tokenizer.bin, found through
# POLYLLAMA_MODEL_PATH (':'-separated directories). Without it the tests skip,
# or fail when CI=true.

from std.collections import List
from std.os import getenv
from std.sys import exit
from llama2 import (
    Args, Config, FPtr, KPtr, Rng, Tokenizer, Vocab, alloc_floats, alloc_keys, argmax,
    file_error, fixed, parse_args, parse_float, parse_int, parse_u64, read_tokenizer,
    safe_piece, sample_mult, sample_topp, MappedFile,
)


struct Tally:
    var passed: Int
    var failed: Int

    def __init__(out self):
        self.passed = 0
        self.failed = 0

    def check(mut self, ok: Bool, name: String):
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            print("FAIL:", name)


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
        if getenv("CI") == "true":
            t.check(False, "tokenizer.bin not found through POLYLLAMA_MODEL_PATH (required when CI=true)")
        else:
            print("skip: tokenizer.bin not found through POLYLLAMA_MODEL_PATH")
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


def config_code(c: Config) -> Int:
    try:
        c.validate("x")
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
    t.check(config_code(Config(65536, 1, 1024, 1, 1, 1, 65536, True)) == 3, "KV cache over 4 GiB")


def main():
    var t = Tally()
    try:
        test_tokenizer(t)
        test_safe_piece(t)
        test_rng(t)
        test_choices(t)
        test_args(t)
        test_validate(t)
    except e:
        t.check(False, "unexpected error: " + String(e))
    print(t.passed, "passed,", t.failed, "failed")
    exit(1 if t.failed > 0 else 0)
