"""The llama.cpp peer's native driver (build/driver) against the reference core, through its
command line: logits, greedy and seeded sampled text on tiny synthetic GGUFs (shared and
unshared classifier, grouped-query attention, a vocabulary with multi-byte pieces) and on
stories260K's GGUF export; the statistics line; the flag rules; and every kind of bad GGUF the
driver must refuse before llama.cpp sees it (the contract's rules, the four gaps between our readers and llama.cpp's among
them, and the files llama.cpp itself would abort on).

Run from this folder after the build: python -m pytest -q test_port.py
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the conformance helpers every port's checks share

from orchestrator.formats import Config, Model, Vocab, read_model, read_tokenizer, write_gguf, write_v0  # noqa: E402
from orchestrator.reference import Sampler, Tokenizer, Transformer, generate, logits_for  # noqa: E402
from conformance import assert_close  # noqa: E402

DRIVER = HERE / "build" / "driver"
IN_CI = os.environ.get("CI") == "true"
IDS = [1, 203, 211, 9, 18, 299, 2, 5, 77, 100, 200, 250, 1, 17, 298, 42, 3, 260, 261, 0]


def need(reason: str):
    if IN_CI:
        pytest.fail(f"{reason} (required when CI=true)")
    pytest.skip(reason)


@pytest.fixture(scope="session", autouse=True)
def driver_built():
    if not DRIVER.is_file():
        need(f"{DRIVER} is not built (invoke build-all --ports llamacpp)")


def run(*args, timeout=120, exact=False) -> subprocess.CompletedProcess:
    """exact: a generation with the logits run's F32 K/V cache and no flash attention (the
    driver's POLYLLAMA_LLAMACPP_EXACT=1), for text compared byte for byte with the reference;
    otherwise llama.cpp's default F16 cache and flash attention "auto", as the benchmark runs it."""
    env = {k: v for k, v in os.environ.items() if k != "POLYLLAMA_LLAMACPP_EXACT"}
    if exact:
        env["POLYLLAMA_LLAMACPP_EXACT"] = "1"
    return subprocess.run([str(DRIVER), *map(str, args)], capture_output=True, timeout=timeout, cwd=HERE, env=env)


def stats(r: subprocess.CompletedProcess) -> dict:
    lines = r.stderr.decode().splitlines()
    assert lines and lines[-1].startswith("polyllama-stats: "), r.stderr
    return json.loads(lines[-1].removeprefix("polyllama-stats: "))


def assert_refused(r: subprocess.CompletedProcess, code: int, *words: str) -> None:
    lines = r.stderr.decode(errors="replace").splitlines()
    assert r.returncode == code, r.stderr
    assert lines and lines[0].startswith("error: "), r.stderr
    assert sum(ln.startswith("error:") for ln in lines) == 1, r.stderr
    if code != 2:
        assert len(lines) == 1, r.stderr  # llama.cpp's own log kept off stderr
    assert r.stdout == b""
    for w in words:
        assert w in lines[0], lines[0]


# ----------------------------------------------------------------------------------------------
# models

def tiny_vocab(size: int = 300) -> Vocab:
    """<unk>, BOS, EOS, the 256 byte tokens, a space, letters, two-byte UTF-8 pieces, merges."""
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [f"<0x{b:02X}>".encode() for b in range(256)]
    pieces += [b" "] + [bytes([c]) for c in b"abcdefghijklmnopqrstuvwxyz"] + ["é".encode(), "ü".encode()]
    rng = np.random.default_rng(11)
    while len(pieces) < size:
        word = bytes(int(c) for c in rng.choice(list(b"abcdeht"), int(rng.integers(2, 5))))
        word = b" " + word if rng.random() < 0.5 else word
        if word not in pieces:
            pieces.append(word)
    scores = [0.0] * 259 + [-float(i) for i in range(size - 259)]
    return Vocab(tuple(pieces), tuple(scores), max(map(len, pieces)))


def tiny_model(shared: bool, seed: int) -> Model:
    config = Config(64, 172, 2, 8, 2, 300, 48, shared_classifier=shared)
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in config.tensor_shapes().items():
        scale, base = (0.1, 1.0) if name.startswith("rms") else (0.5, 0.0)
        weights[name] = (base + scale * rng.standard_normal(shape)).astype(np.float32)
    return Model(config, weights)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny")
    files = {}
    for tag, shared, seed in (("shared", True, 7), ("unshared", False, 8)):
        files[tag] = d / f"tiny.{tag}.gguf"
        write_gguf(files[tag], tiny_model(shared, seed), tiny_vocab())
    return files


@pytest.fixture(scope="module")
def stories260K(tmp_path_factory) -> Path:
    for d in os.environ.get("POLYLLAMA_MODEL_PATH", "").split(os.pathsep):
        if d and (Path(d) / "stories260K.bin").is_file() and (Path(d) / "tok512.bin").is_file():
            model = read_model(Path(d) / "stories260K.bin")
            path = tmp_path_factory.mktemp("s260") / "stories260K.gguf"
            write_gguf(path, model, read_tokenizer(Path(d) / "tok512.bin", model.config.vocab_size))
            return path
    need("stories260K.bin / tok512.bin not found on POLYLLAMA_MODEL_PATH")


def reference_text(path: Path, prompt: bytes, steps: int, temperature=0.0, topp=0.9, seed=1) -> bytes:
    model = read_model(path)
    return generate(Transformer(model), Tokenizer(model.tokenizer), Sampler(temperature, topp, seed), prompt, steps).text


# ----------------------------------------------------------------------------------------------
# agreement with the reference

def driver_logits(path: Path, ids: list[int], tmp_path: Path, threads: int = 1) -> np.ndarray:
    out = tmp_path / "logits.f32"
    r = run(path, "-m", "logits", "-k", ",".join(map(str, ids)), "-o", out, "-j", threads)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b""
    s = stats(r)
    assert (s["prompt_tokens"], s["positions"], s["generated_tokens"]) == (len(ids), len(ids), 0)
    return np.fromfile(out, dtype="<f4").reshape(len(ids), -1)


@pytest.mark.parametrize("tag", ["shared", "unshared"])
def test_logits_match_reference_on_tiny_models(tiny, tag, tmp_path):
    model = read_model(tiny[tag])
    assert_close(logits_for(Transformer(model), IDS), driver_logits(tiny[tag], IDS, tmp_path))


def test_logits_match_reference_on_stories260K_with_two_threads(stories260K, tmp_path):
    ids = [1, 403, 411, 9, 18, 300] + list(range(3, 200))
    ref = logits_for(Transformer(read_model(stories260K)), ids)
    assert_close(ref, driver_logits(stories260K, ids, tmp_path, threads=2))


@pytest.mark.parametrize("prompt", [b"", b"ab the cat", "é€ü x\x7f".encode()], ids=["empty", "merges", "utf8-bytes"])
def test_greedy_text_matches_reference_on_a_tiny_model(tiny, prompt):
    r = run(tiny["shared"], "-t", "0", "-n", "40", "-i", prompt.decode(), exact=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == reference_text(tiny["shared"], prompt, 40)


@pytest.mark.parametrize("temperature,topp,seed,prompt", [
    (0.0, 0.9, 1, b"Once upon a time, there was a"),
    (0.8, 0.9, 42, b"Once upon a time"),
    (1.0, 1.0, 7, b""),  # the full distribution
    (1.2, 0.3, 18446744073709551615, b"Tim"),
    (0.9, 0.001, 5, b"The"),  # a nucleus of one
], ids=["greedy", "topp", "full", "seed-max", "tiny-topp"])
def test_text_matches_reference_on_stories260K(stories260K, temperature, topp, seed, prompt):
    r = run(stories260K, "-t", temperature, "-p", topp, "-s", seed, "-n", 150, "-i", prompt.decode(), exact=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == reference_text(stories260K, prompt, 150, temperature, topp, seed)


def test_greedy_text_with_llama_cpp_defaults_on_stories260K(stories260K):
    """The benchmark's settings (F16 K/V, flash attention "auto"), as validate's greedy text runs
    them: the rounding of K and V moves no argmax on stories260K."""
    prompt = b"Once upon a time, there was a"
    r = run(stories260K, "-t", "0", "-n", 96, "-i", prompt.decode())
    assert r.returncode == 0, r.stderr
    assert r.stdout == reference_text(stories260K, prompt, 96, 0.0, 0.9, 1)


# ----------------------------------------------------------------------------------------------
# statistics line and the command line's numbers

def test_statistics_line_is_stderr_only_line(tiny):
    r = run(tiny["shared"], "-t", "0.7", "-s", "3", "-n", "20", "-e", "1", "-i", "ab", "-j", "2")
    assert r.returncode == 0, r.stderr
    assert len(r.stderr.decode().splitlines()) == 1, r.stderr  # llama.cpp's log kept quiet
    line = r.stderr.decode().strip()
    assert "e-" not in line and "e+" not in line and "nan" not in line.lower()
    s = stats(r)
    assert list(s) == ["port", "prompt_tokens", "generated_tokens", "positions", "threads", "batch", "load_s", "ttft_s",
                       "prefill_s", "prefill_tok_s", "decode_s", "decode_tok_s"]
    prompt_tokens = len(Tokenizer(tiny_vocab()).encode(b"ab"))
    assert s["port"] == "llamacpp" and s["threads"] == 2
    assert (s["prompt_tokens"], s["positions"]) == (prompt_tokens, 20)
    assert s["generated_tokens"] == 20 - prompt_tokens + 1
    assert s["load_s"] > 0 and s["ttft_s"] > 0 and s["decode_s"] > 0
    assert abs(s["decode_tok_s"] - (s["generated_tokens"] - 1) / s["decode_s"]) <= 1e-3 * s["decode_tok_s"] + 1e-3
    assert s["batch"] == 48 and 0 < s["prefill_s"] <= s["ttft_s"]  # the default 512, clamped to the context
    # the time the rate implies, within the printed figures' rounding (the rate's 4 decimals weigh
    # more when a busy host slows the prefill down)
    rate = s["prefill_tok_s"]
    assert abs(prompt_tokens / rate - s["prefill_s"]) <= 1e-6 + prompt_tokens * 5e-5 / rate**2


@pytest.mark.parametrize("steps", ["0", "48", "+49", "1099511627776", "99999999999999999999999999"])
def test_steps_of_any_size_clamp_to_seq_len(tiny, steps):
    r = run(tiny["shared"], "-t", "0", "-e", "1", "-n", steps)
    assert r.returncode == 0, r.stderr
    assert stats(r)["positions"] == 48


@pytest.mark.parametrize("flags", [["-s", "18446744073709551615"], ["-s", "0"], ["-j", "3"], ["-p", "0"],
                                   ["-p", "1"], ["-t", "1e-3"], ["-t", ".5"], ["-e", "0"], ["-z", "ignored.bin"]])
def test_boundary_flags_run(tiny, flags):
    r = run(tiny["shared"], "-n", "8", *flags)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("flags", [
    ["-j", "4097"], ["-j", "0"], ["-j", "x"], ["-s", "18446744073709551616"], ["-s", "-1"], ["-n", "-3"],
    ["-n", "1_0"], ["-t", "inf"], ["-t", "nan"], ["-t", "1e999"], ["-t", "-1"], ["-t", "0x1"], ["-t", " 1"],
    ["-p", "2"], ["-p", "-0.1"], ["-m", "chat"], ["-e", "5"], ["-q", "1"], ["-t"], ["-m", "logits"],
    ["-m", "logits", "-o", "x.f32"], ["-m", "logits", "-o", "x.f32", "-k", "1,,2"],
])
def test_bad_flags_are_usage_errors(tiny, flags):
    assert_refused(run(tiny["shared"], *flags), 2)


def test_missing_checkpoint_is_a_usage_error():
    assert_refused(run(), 2)
    assert_refused(run("-t", "0"), 2)


@pytest.mark.parametrize("ids", ["300", "-1", "1," * 48 + "1", "99999999999999999999999"])
def test_logits_ids_outside_the_model_are_usage_errors(tiny, ids, tmp_path):
    assert_refused(run(tiny["shared"], "-m", "logits", "-o", tmp_path / "x", "-k", ids), 2)


def test_unwritable_logits_file_is_a_runtime_error(tiny, tmp_path):
    assert_refused(run(tiny["shared"], "-m", "logits", "-o", tmp_path, "-k", "1,2"), 1, "cannot write")


# ----------------------------------------------------------------------------------------------
# llama.cpp's own benchmark, as the orchestrator's peer check runs it

def test_peer_check_command_reports_tokens_per_second(tiny):
    import tomllib

    spec = tomllib.loads((HERE / "port.toml").read_text())["peer_check"]
    subs = {"{model}": str(tiny["shared"]), "{threads}": "1", "{steps}": "32"}
    argv = [subs.get(a, str(HERE / a) if a.startswith("build/") else a) for a in spec["command"]]
    r = subprocess.run(argv + ["-r", "2"], capture_output=True, text=True, timeout=300, cwd=HERE)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    value = result
    for part in spec["tok_s"].split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    assert len(result) == 1 and result[0]["n_gen"] == 32 and result[0]["n_prompt"] == 0
    assert result[0]["n_threads"] == 1 and value > 0


# ----------------------------------------------------------------------------------------------
# bad files: a GGUF as editable lists, changed one thing at a time

_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _value_size(data: bytes, off: int, vtype: int) -> int:
    if vtype in _SIZES:
        return _SIZES[vtype]
    if vtype == 8:
        return 8 + struct.unpack_from("<Q", data, off)[0]
    etype, count = struct.unpack_from("<IQ", data, off)
    size = 12
    for _ in range(count):
        size += _value_size(data, off + size, etype)
    return size


def gstr(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


class Gguf:
    def __init__(self, blob: bytes):
        self.version, n_tensors, n_kv = struct.unpack_from("<IQQ", blob, 4)
        off, self.kvs, self.tensors = 24, [], []
        for _ in range(n_kv):
            n = struct.unpack_from("<Q", blob, off)[0]
            key, off = blob[off + 8:off + 8 + n].decode(), off + 8 + n
            vtype = struct.unpack_from("<I", blob, off)[0]
            size = _value_size(blob, off + 4, vtype)
            self.kvs.append([key, vtype, blob[off + 4:off + 4 + size]])
            off += 4 + size
        for _ in range(n_tensors):
            n = struct.unpack_from("<Q", blob, off)[0]
            name, off = blob[off + 8:off + 8 + n].decode(), off + 8 + n
            ndim = struct.unpack_from("<I", blob, off)[0]
            dims = list(struct.unpack_from(f"<{ndim}Q", blob, off + 4))
            ttype, offset = struct.unpack_from("<IQ", blob, off + 4 + 8 * ndim)
            off += 4 + 8 * ndim + 12
            self.tensors.append([name, dims, ttype, offset])
        self.data = blob[-(-off // 32) * 32:]

    def kv(self, key: str) -> list:
        return next(e for e in self.kvs if e[0] == key)

    def tensor(self, name: str) -> list:
        return next(t for t in self.tensors if t[0] == name)

    def dump(self) -> bytes:
        out = [b"GGUF", struct.pack("<IQQ", self.version, len(self.tensors), len(self.kvs))]
        out += [gstr(k) + struct.pack("<I", t) + v for k, t, v in self.kvs]
        out += [gstr(n) + struct.pack(f"<I{len(d)}QIQ", len(d), *d, t, o) for n, d, t, o in self.tensors]
        head = b"".join(out)
        return head + b"\0" * (-len(head) % 32) + self.data


def _set_score(g: Gguf, index: int, value: float) -> None:
    entry = g.kv("tokenizer.ggml.scores")
    entry[2] = entry[2][:12 + 4 * index] + struct.pack("<f", value) + entry[2][16 + 4 * index:]


def _extra_tensor(g: Gguf) -> None:
    g.data += b"\0" * (-len(g.data) % 32)
    g.tensors.append(["extra.weight", [64], 0, len(g.data)])
    g.data += b"\0" * 256


def _set_key(g: Gguf, key: str, vtype: int, raw: bytes) -> None:
    """Replace a key's value (type and bytes), or add the key."""
    for e in g.kvs:
        if e[0] == key:
            e[1], e[2] = vtype, raw
            return
    g.kvs.append([key, vtype, raw])


def _f32(x: float) -> tuple[int, bytes]:
    return 6, struct.pack("<f", x)


def _u32(x: int) -> tuple[int, bytes]:
    return 4, struct.pack("<I", x)


def _i32(x: int) -> tuple[int, bytes]:
    return 5, struct.pack("<i", x)


def _str(x: str) -> tuple[int, bytes]:
    return 8, gstr(x)


def _retype(g: Gguf, name: str, ttype: int) -> None:  # same place, fewer bytes for a 16-bit type
    g.tensor(name)[2] = ttype


def _swap_offsets(g: Gguf) -> None:  # contract-valid, but not in the order llama.cpp insists on
    q, o = g.tensor("blk.0.attn_q.weight"), g.tensor("blk.0.attn_output.weight")
    q[3], o[3] = o[3], q[3]


BAD = {
    # no " " piece, refused before any prompt is read
    "no space piece": lambda g: g.kv("tokenizer.ggml.tokens").__setitem__(
        2, g.kv("tokenizer.ggml.tokens")[2].replace(gstr("\u2581"), gstr("\u2582"), 1)),
    # gap 3: scores must be finite
    "NaN score": lambda g: _set_score(g, 3, float("nan")),
    "infinite score": lambda g: _set_score(g, 280, float("inf")),
    # gap 4: what llama.cpp's GGUF loader refuses
    "empty key": lambda g: g.kv("general.name").__setitem__(0, ""),
    "repeated key": lambda g: g.kvs.append(list(g.kv("llama.block_count"))),
    "repeated tokenizer key": lambda g: g.kvs.append(list(g.kv("tokenizer.ggml.scores"))),
    "repeated tensor": lambda g: g.tensors.__setitem__(3, [g.tensors[2][0], *g.tensors[3][1:]]),
    "unknown tensor": _extra_tensor,
    "unaligned offset": lambda g: (g.tensors[-1].__setitem__(3, g.tensors[-1][3] + 4),
                                   setattr(g, "data", g.data + b"\0" * 64)),
    "overlapping tensors": lambda g: g.tensors[2].__setitem__(3, g.tensors[1][3]),
    # what llama.cpp would abort on, or compute differently from the contract
    "repeated token text": lambda g: g.kv("tokenizer.ggml.tokens").__setitem__(
        2, g.kv("tokenizer.ggml.tokens")[2].replace(gstr("b"), gstr("a"), 1)),
    "not a llama tokenizer": lambda g: g.kv("tokenizer.ggml.model").__setitem__(2, gstr("gpt2")),
    "unknown llama key": lambda g: _set_key(g, "llama.attention.key_length", *_u32(8)),
    "rope scaling factor not f32": lambda g: _set_key(g, "llama.rope.scaling.factor", *_u32(2)),
    # contract 3's keys: wrong kinds, values out of range, what this architecture does not compute
    "freq_base a string": lambda g: _set_key(g, "llama.rope.freq_base", *_str("10000")),
    "freq_base 1": lambda g: _set_key(g, "llama.rope.freq_base", *_f32(1.0)),
    "freq_base NaN": lambda g: _set_key(g, "llama.rope.freq_base", *_f32(float("nan"))),
    "freq_base infinite": lambda g: _set_key(g, "llama.rope.freq_base", 12, struct.pack("<d", float("inf"))),
    "eps 0": lambda g: _set_key(g, "llama.attention.layer_norm_rms_epsilon", *_f32(0.0)),
    "eps 1": lambda g: _set_key(g, "llama.attention.layer_norm_rms_epsilon", *_u32(1)),
    "eps negative": lambda g: _set_key(g, "llama.attention.layer_norm_rms_epsilon", *_f32(-1e-5)),
    "eps a bool": lambda g: _set_key(g, "llama.attention.layer_norm_rms_epsilon", 7, b"\1"),
    "rope dimension count": lambda g: _set_key(g, "llama.rope.dimension_count", *_u32(4)),
    "rope dimension count a float": lambda g: _set_key(g, "llama.rope.dimension_count", *_f32(8.0)),
    "rope scaling linear": lambda g: _set_key(g, "llama.rope.scaling.type", *_str("linear")),
    "rope scaling yarn": lambda g: _set_key(g, "llama.rope.scaling.type", *_str("yarn")),
    "rope scaling type a number": lambda g: _set_key(g, "llama.rope.scaling.type", *_u32(0)),
    "experts": lambda g: _set_key(g, "llama.expert_count", *_u32(8)),
    "experts used without experts": lambda g: _set_key(g, "llama.expert_used_count", *_u32(2)),
    "expert count a string": lambda g: _set_key(g, "llama.expert_count", *_str("0")),
    "BOS outside the vocabulary": lambda g: _set_key(g, "tokenizer.ggml.bos_token_id", *_u32(300)),
    "BOS negative": lambda g: _set_key(g, "tokenizer.ggml.bos_token_id", *_i32(-1)),
    "EOS outside the vocabulary": lambda g: _set_key(g, "tokenizer.ggml.eos_token_id", 10, struct.pack("<Q", 1 << 40)),
    "EOS a string": lambda g: _set_key(g, "tokenizer.ggml.eos_token_id", *_str("2")),
    # 16-bit tensors: matrices only, and only the types the contract names
    "F16 norm": lambda g: _retype(g, "blk.0.attn_norm.weight", 1),
    "BF16 norm": lambda g: _retype(g, "output_norm.weight", 30),
    "Q4_0 matrix": lambda g: _retype(g, "blk.0.attn_q.weight", 2),
    "F64 matrix": lambda g: _retype(g, "blk.1.ffn_up.weight", 28),
    "alignment not u32": lambda g: g.kvs.append(["general.alignment", 10, struct.pack("<Q", 32)]),
    "more layers than llama.cpp": lambda g: g.kv("llama.block_count").__setitem__(2, struct.pack("<I", 600)),
    "split file": lambda g: g.kvs.append(["split.count", 2, struct.pack("<H", 2)]),
    # passes the driver's checks; llama.cpp's loader refuses it and its reason is passed on
    "tensors out of llama.cpp's order": _swap_offsets,
}


# what the one line must name, beyond the file
BAD_WORDS = {
    "freq_base a string": ("llama.rope.freq_base",), "freq_base 1": ("llama.rope.freq_base",),
    "eps 0": ("layer_norm_rms_epsilon",), "eps a bool": ("layer_norm_rms_epsilon",),
    "rope dimension count": ("llama.rope.dimension_count", "head_size"),
    "rope scaling linear": ("llama.rope.scaling.type",), "experts": ("llama.expert_count",),
    "BOS outside the vocabulary": ("bos_token_id",), "EOS a string": ("eos_token_id",),
    "F16 norm": ("blk.0.attn_norm.weight", "norm"), "BF16 norm": ("output_norm.weight", "norm"),
    "Q4_0 matrix": ("blk.0.attn_q.weight", "type 2"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_gguf_is_refused_with_one_line(tiny, case, tmp_path):
    g = Gguf(tiny["shared"].read_bytes())
    if case == "repeated token text":
        assert gstr("a") in g.kv("tokenizer.ggml.tokens")[2] and gstr("b") in g.kv("tokenizer.ggml.tokens")[2]
    BAD[case](g)
    path = tmp_path / "bad.gguf"
    path.write_bytes(g.dump())
    words = ("llama.cpp:",) if case == "tensors out of llama.cpp's order" else BAD_WORDS.get(case, ())
    assert_refused(run(path, "-t", "0", "-n", "4"), 3, str(path), *words)


def test_the_unchanged_copy_runs(tiny, tmp_path):
    path = tmp_path / "copy.gguf"
    path.write_bytes(Gguf(tiny["shared"].read_bytes()).dump())
    assert run(path, "-t", "0", "-n", "4").returncode == 0


def test_vocabulary_without_space_piece_is_refused_without_a_prompt(tmp_path):
    vocab = tiny_vocab()
    path = tmp_path / "nospace.gguf"
    write_gguf(path, tiny_model(True, 7), replace(vocab, pieces=tuple(b"@@" if p == b" " else p for p in vocab.pieces)))
    assert_refused(run(path), 3, "' '")
    assert_refused(run(path, "-i", "x"), 3, "' '")


def test_token_texts_that_llama_cpp_would_merge_are_refused(tmp_path):
    """llama.cpp keys its vocabulary by C string: a piece cut at a NUL can repeat another."""
    vocab = tiny_vocab()
    pieces = list(vocab.pieces)
    pieces[-1] = b"a\0b"
    path = tmp_path / "nul.gguf"
    write_gguf(path, tiny_model(True, 7), replace(vocab, pieces=tuple(pieces)))
    assert_refused(run(path), 3, "repeats the text of token")


def test_files_that_are_not_gguf_are_refused(tiny, tmp_path):
    v0 = tmp_path / "model.bin"
    write_v0(v0, tiny_model(True, 7))
    assert_refused(run(v0, "-z", "tok.bin"), 3, "GGUF only")
    assert_refused(run(tmp_path / "missing.gguf"), 3, "cannot open")
    assert_refused(run(tmp_path), 3, "cannot open")
    blob = tiny["shared"].read_bytes()
    for name, data in (("empty", b""), ("half", blob[: len(blob) // 2]), ("header", blob[:24]),
                       ("version", blob[:4] + struct.pack("<I", 1) + blob[8:]),
                       ("counts", blob[:8] + struct.pack("<Q", 1 << 60) + blob[16:])):
        bad = tmp_path / f"{name}.gguf"
        bad.write_bytes(data)
        assert_refused(run(bad), 3, str(bad))


# ----------------------------------------------------------------------------------------------
# contract 3: the file's own hyper-parameters, and a KV cache sized for the run

def sparse_gguf(path: Path, tiny_path: Path, *, dim: int, hidden: int, n_layers: int, n_heads: int, seq_len: int,
                ttype: int = 1) -> None:
    """A model of any shape whose weights are a hole in a sparse file (zeros): tiny's tokenizer,
    its `llama.*` keys set to the shape, 16-bit matrices (ttype) and F32 norms."""
    g = Gguf(tiny_path.read_bytes())
    for key, value in (("llama.embedding_length", dim), ("llama.feed_forward_length", hidden),
                       ("llama.block_count", n_layers), ("llama.attention.head_count", n_heads),
                       ("llama.attention.head_count_kv", n_heads), ("llama.context_length", seq_len),
                       ("llama.rope.dimension_count", dim // n_heads)):
        _set_key(g, key, *_u32(value))
    vocab = len(tiny_vocab())
    shapes = [("token_embd.weight", [dim, vocab])]
    for layer in range(n_layers):
        b = f"blk.{layer}."
        shapes += [(b + "attn_norm.weight", [dim]), (b + "attn_q.weight", [dim, dim]), (b + "attn_k.weight", [dim, dim]),
                   (b + "attn_v.weight", [dim, dim]), (b + "attn_output.weight", [dim, dim]),
                   (b + "ffn_norm.weight", [dim]), (b + "ffn_gate.weight", [dim, hidden]),
                   (b + "ffn_down.weight", [hidden, dim]), (b + "ffn_up.weight", [dim, hidden])]
    shapes.append(("output_norm.weight", [dim]))
    g.tensors, offset = [], 0
    for name, dims in shapes:
        t = 0 if len(dims) == 1 else ttype
        g.tensors.append([name, dims, t, offset])
        offset += -(-int(np.prod(dims)) * (4 if t == 0 else 2) // 32) * 32
    g.data = b""
    head = g.dump()
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(len(head) + offset)


def max_rss_kib(*args) -> tuple[subprocess.CompletedProcess, int]:
    """The driver's run and its peak resident set (KiB), measured in a process of its own."""
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True); "
             "sys.stderr.buffer.write(r.stderr); sys.exit(r.returncode if r.returncode else "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))")
    r = subprocess.run([sys.executable, "-c", probe, str(DRIVER), *map(str, args)], capture_output=True, timeout=300)
    return r, int(r.stdout) if r.returncode == 0 else 0


@pytest.fixture(scope="module")
def long_context(tiny, tmp_path_factory) -> Path:
    """65536 positions of 5 layers with 2048-wide keys: 5 GiB of F32 K/V at full context, past the
    contract's 4 GiB; 2.5 GiB for llama.cpp's F16 cache. The weights, 176 MB of F16, are a hole."""
    path = tmp_path_factory.mktemp("long") / "long.gguf"
    sparse_gguf(path, tiny["shared"], dim=2048, hidden=256, n_layers=5, n_heads=16, seq_len=65536)
    return path


def test_kv_cache_over_4_gib_for_the_run_is_refused(long_context):
    for flags in (["-n", "0"], ["-n", "65536"], ["-n", "99999999"]):
        assert_refused(run(long_context, *flags), 3, str(long_context),
                       "KV cache of 5368709120 bytes for 65536 positions exceeds the 4 GiB limit")
    assert_refused(run(long_context, "-n", "52429"), 3, "for 52429 positions")  # one past 4 GiB


def test_kv_cache_holds_the_positions_the_run_reaches(long_context, tmp_path):
    """-n 4 on a 65536-position model allocates 4 positions (llama.cpp pads to 256 cells), not
    the 2.5 GiB cache of its whole context; so does a logits run of 3 ids."""
    r, rss = max_rss_kib(long_context, "-t", "0", "-n", "4", "-e", "1")
    assert r.returncode == 0, r.stderr
    assert stats(r)["positions"] == 4
    assert rss < 1024 * 1024, f"{rss} KiB"
    r, rss = max_rss_kib(long_context, "-m", "logits", "-k", "1,2,3", "-o", tmp_path / "l.f32")
    assert r.returncode == 0, r.stderr
    assert rss < 1024 * 1024, f"{rss} KiB"
    assert np.fromfile(tmp_path / "l.f32", dtype="<f4").shape == (3 * 300,)


# ----------------------------------------------------------------------------------------------
# files written by llama.cpp's own quantizer (build/llama-quantize, from the same source)

QUANTIZE = HERE / "build" / "llama-quantize"


@pytest.mark.parametrize("target", ["Q8_0", "F16", "BF16"])
def test_llama_quantize_output_matches_reference(stories260K, target, tmp_path):
    """stories260K's F32 GGUF through llama-quantize: the driver reads what llama.cpp writes, and
    its logits agree with the reference's on that same file. llama.cpp rounds the activation of a
    16-bit product to 16 bits where the contract keeps float32, so the F16 and BF16 matrices are
    held to validate's referee tolerance; the Q8_0 file to Q8_RTOL, the tolerance of a rounding
    near a tie: its ffn_down, with rows of 172, is written as F16 (llama-quantize's fallback), and
    llama.cpp's 16-bit rounding of that product's input sets off the cascade everywhere."""
    from orchestrator.ports.rounding import tie_free_ids
    from orchestrator.ports.validate import Q8_RTOL, REFEREE_RTOL

    if not QUANTIZE.is_file():
        need(f"{QUANTIZE} is not built (invoke build-all --ports llamacpp)")
    out = tmp_path / f"stories260K.{target}.gguf"
    r = subprocess.run([str(QUANTIZE), str(stories260K), str(out), target], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    model = read_model(out)
    # what llama-quantize wrote: Q8_0 falls back to F16 for rows that are no multiple of 32
    assert set(model.types()) == {"Q8_0": {"f32", "q8_0", "f16"}, "F16": {"f32", "f16"}, "BF16": {"f32", "bf16"}}[target]
    default = [1, 403, 411, 9, 18, 300] + list(range(3, 21))
    ids, tight = tie_free_ids(model, default) if target == "Q8_0" else (default, len(default))
    if "q8_0" in model.types() and ({"f16", "bf16"} & set(model.types())):
        # llama.cpp's 16-bit rounding of ffn_down's input moves the activations that the next
        # Q8_0 products quantize far beyond a tie's margin: no position is tie-free for it
        tight = 0
    ref = logits_for(Transformer(model), ids)
    got = driver_logits(out, ids, tmp_path)
    loose = REFEREE_RTOL["gguf-bf16" if target == "BF16" else "gguf-f16"]
    rtol = np.where(np.arange(len(ids)) < tight, loose, max(loose, Q8_RTOL))
    scale = 1 + np.abs(ref).max(axis=1)
    worst = np.abs(got - ref).max(axis=1) / scale
    assert (worst <= rtol).all(), f"relative differences {worst}"
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * rtol * scale  # a close call may go either way
    assert (got.argmax(axis=1) == ref.argmax(axis=1))[clear].all()


def hyper_model() -> Model:
    """The tiny model with every key of contract section 4's table away from its default. BOS 27
    is a token its greedy run reaches, so the stop rule is exercised too."""
    m = tiny_model(True, 7)
    return replace(m, config=replace(m.config, rope_theta=500000.0, norm_eps=1e-6, bos_id=27, eos_id=7))


@pytest.fixture(scope="module")
def hyper(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hyper") / "hyper.gguf"
    write_gguf(path, hyper_model(), tiny_vocab())
    return path


def test_file_theta_eps_and_bos_follow_the_file(hyper, tmp_path):
    model = read_model(hyper)
    assert (model.config.rope_theta, model.config.bos_id) == (500000.0, 27)
    assert_close(logits_for(Transformer(model), IDS), driver_logits(hyper, IDS, tmp_path))
    prompt = b"ab the cat"
    r = run(hyper, "-t", "0", "-n", "48", "-i", prompt.decode(), exact=True)
    assert r.returncode == 0, r.stderr
    ref = generate(Transformer(model), Tokenizer(model.tokenizer, 27, 7), Sampler(0.0, 0.9, 1), prompt, 48)
    assert ref.stats.positions < 48  # the file's BOS stopped it
    assert r.stdout == ref.text
    assert stats(r)["positions"] == ref.stats.positions
    assert stats(r)["prompt_tokens"] == ref.stats.prompt_tokens


def test_keys_of_any_integer_or_float_type_are_read(hyper, tmp_path):
    """The contract takes any integer (or, for theta and eps, float) type where llama.cpp's loader
    insists on u32 and f32: the driver hands llama.cpp the values it read."""
    g = Gguf(hyper.read_bytes())
    _set_key(g, "llama.rope.freq_base", *_u32(500000))
    _set_key(g, "llama.attention.layer_norm_rms_epsilon", 12, struct.pack("<d", 1e-6))
    _set_key(g, "llama.context_length", 10, struct.pack("<Q", 48))
    _set_key(g, "llama.attention.head_count_kv", 3, struct.pack("<h", 2))
    _set_key(g, "tokenizer.ggml.bos_token_id", *_i32(27))
    _set_key(g, "llama.rope.scaling.type", *_str("none"))
    _set_key(g, "llama.rope.scaling.factor", *_f32(4.0))  # inert without scaling
    _set_key(g, "llama.expert_count", *_u32(0))
    path = tmp_path / "types.gguf"
    path.write_bytes(g.dump())
    model = read_model(path)
    assert_close(logits_for(Transformer(model), IDS), driver_logits(path, IDS, tmp_path))
    # and without an epsilon, which llama.cpp requires and the contract defaults to 1e-5
    g.kvs = [e for e in g.kvs if e[0] != "llama.attention.layer_norm_rms_epsilon"]
    path.write_bytes(g.dump())
    model = read_model(path)
    assert model.config.norm_eps == np.float32(1e-5)
    assert_close(logits_for(Transformer(model), IDS), driver_logits(path, IDS, tmp_path))
