"""The port contract's command line (docs/port-contract.md, sections 2 and 3) for the reference.

Kept strict on purpose: it is also the executable definition of what every port must accept
and refuse.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass

from ..errors import FormatError
from ..formats import read_model, read_tokenizer
from .generate import RunStats, clamp_steps, generate, logits_for
from .model import Transformer
from .sampler import Sampler
from .tokenizer import Tokenizer

USAGE = ("usage: run <checkpoint> [-z tokenizer] [-t temperature] [-p topp] [-s seed] [-n steps] "
         "[-i prompt] [-j threads] [-m generate|logits] [-o file] [-k ids] [-e 0|1] [-b batch]")
EXIT_RUNTIME, EXIT_USAGE, EXIT_BAD_FILE = 1, 2, 3


class Usage(Exception):
    pass


@dataclass
class Args:
    checkpoint: str
    tokenizer: str | None = None
    temperature: float = 1.0
    topp: float = 0.9
    seed: int = 0
    steps: int = 256
    prompt: bytes = b""
    threads: int = 1
    mode: str = "generate"
    output: str | None = None
    ids: list[int] | None = None
    ignore_bos: bool = False
    batch: int = 512


_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _number(flag: str, text: str, kind, lo=None, hi=None):
    """Plain decimal only: no 'inf', 'nan', underscores or spaces (contract section 2)."""
    if not (_INT if kind is int else _FLOAT).fullmatch(text):
        raise Usage(f"{flag} expects {'an integer' if kind is int else 'a number'}, got {text!r}")
    value = kind(text)
    if kind is float and not math.isfinite(value):
        raise Usage(f"{flag} {text} is out of range")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise Usage(f"{flag} {text} is out of range")
    return value


def parse_args(argv: list[bytes | str]) -> Args:
    argv = [a if isinstance(a, bytes) else os.fsencode(a) for a in argv]
    if not argv or argv[0].startswith(b"-"):
        raise Usage("missing checkpoint")
    args = Args(checkpoint=os.fsdecode(argv[0]))
    rest = argv[1:]
    if len(rest) % 2:
        raise Usage(f"flag {os.fsdecode(rest[-1])} has no value")
    for flag_b, value_b in zip(rest[0::2], rest[1::2]):
        flag, value = os.fsdecode(flag_b), os.fsdecode(value_b)
        if flag == "-z":
            args.tokenizer = value
        elif flag == "-t":
            args.temperature = _number(flag, value, float, 0.0)
        elif flag == "-p":
            args.topp = _number(flag, value, float, 0.0, 1.0)
        elif flag == "-s":
            args.seed = _number(flag, value, int, 0, (1 << 64) - 1)
        elif flag == "-n":
            args.steps = _number(flag, value, int, 0)  # any size: above seq_len it clamps
        elif flag == "-i":
            args.prompt = value_b
        elif flag == "-j":
            args.threads = _number(flag, value, int, 1, 4096)
        elif flag == "-m":
            if value not in ("generate", "logits"):
                raise Usage(f"-m expects generate or logits, got {value!r}")
            args.mode = value
        elif flag == "-o":
            args.output = value
        elif flag == "-k":
            if not all(_INT.fullmatch(t) for t in value.split(",")):
                raise Usage(f"-k expects comma-separated token ids, got {value!r}")
            args.ids = [int(t) for t in value.split(",")]
        elif flag == "-e":
            args.ignore_bos = _number(flag, value, int, 0, 1) == 1
        elif flag == "-b":
            args.batch = _number(flag, value, int, 1)  # any size: above seq_len it clamps
        else:
            raise Usage(f"unknown flag {flag}")
    if args.mode == "logits" and (args.output is None or args.ids is None):
        raise Usage("logits mode needs -o FILE and -k IDS")
    return args


def stats_line(port: str, threads: int, load_s: float, stats) -> str:
    # fixed-point numbers: the contract forbids exponents, which json.dumps would use for 1e-05
    return ("polyllama-stats: {" + f'"port":{json.dumps(port)},"prompt_tokens":{stats.prompt_tokens},'
            f'"generated_tokens":{stats.generated_tokens},"positions":{stats.positions},"threads":{threads},'
            f'"batch":{stats.batch},"load_s":{load_s:.6f},"ttft_s":{stats.ttft_s:.6f},'
            f'"prefill_s":{stats.prefill_s:.6f},"prefill_tok_s":{stats.prefill_tok_s:.4f},'
            f'"decode_s":{stats.decode_s:.6f},"decode_tok_s":{stats.decode_tok_s:.4f}' + "}")


class BackendError(Exception):
    """A backend (a framework or an engine) failed at run time; the message is one line."""


def switch(name: str) -> bool:
    """A hosted port's on/off environment variable (its lever): unset or 1 on, 0 off, else a usage error."""
    value = os.environ.get(name, "1")
    if value not in ("0", "1"):
        raise Usage(f"{name}={value}: expected 0 or 1")
    return value == "1"


def rows_needed(model, args: Args) -> int:
    """The cache rows a run can reach: its -k ids, or its steps clamped as generate() clamps them
    (what a compiled step with fixed shapes sizes its cache for)."""
    if getattr(args, "mode", None) == "logits":
        return len(args.ids)
    return clamp_steps(args.steps, model.config.seq_len)


def numpy_backend(model, args: Args) -> Transformer:
    return Transformer(model, rows=rows_needed(model, args))


def run(args: Args, port: str, backend=numpy_backend, formats=("v0", "v1", "gguf")) -> int:
    """`backend(model, args)` returns the object that computes logits: `forward(token, pos)`, and
    optionally `forward_batch(tokens, pos0, all_logits)` (the batched prefill, contract section 6)
    and `close()`. It is called after the
    files and flags are checked, so a framework's import counts in load_s and a bad input answers
    before it; everything else (tokenizer, sampler, generation, output) is shared by every
    Python-hosted port."""
    t0 = time.perf_counter()
    model = read_model(args.checkpoint)
    # a port that lists a gguf-* type reads F32 GGUF tensors too (contract section 1)
    if not model.formats <= set(formats) | ({"gguf"} if any(f.startswith("gguf-") for f in formats) else set()):
        raise FormatError(args.checkpoint, f"a {'+'.join(sorted(model.formats))} checkpoint: "
                                           f"{port} reads {', '.join(formats)} only")
    if model.tokenizer is not None:
        vocab = model.tokenizer
    elif args.tokenizer is None:
        raise Usage("-z tokenizer is required for a .bin checkpoint")
    else:
        vocab = read_tokenizer(args.tokenizer, model.config.vocab_size)
    c = model.config
    args.batch = min(args.batch, c.seq_len)
    if args.mode == "logits" and not (1 <= len(args.ids) <= c.seq_len and all(0 <= t < c.vocab_size for t in args.ids)):
        raise Usage(f"-k needs 1..{c.seq_len} ids in [0, {c.vocab_size})")
    c.check_kv_cache(args.checkpoint, rows_needed(model, args))
    transformer, tokenizer = backend(model, args), Tokenizer(vocab, c.bos_id, c.eos_id)
    load_s = time.perf_counter() - t0
    try:
        if args.mode == "logits":
            start = time.perf_counter()
            out = logits_for(transformer, args.ids, args.batch)
            took = time.perf_counter() - start
            stats = RunStats(prompt_tokens=len(args.ids), positions=len(args.ids), batch=args.batch, ttft_s=took,
                             prefill_positions=len(args.ids), prefill_s=took)
            try:
                with open(args.output, "wb") as f:
                    f.write(out.astype("<f4").tobytes())
            except OSError as e:
                raise BackendError(f"{args.output}: cannot write: {e.strerror}") from None
        else:
            seed = args.seed if args.seed > 0 else int(time.time())
            sampler = Sampler(args.temperature, args.topp, seed)
            stdout = sys.stdout.buffer

            def emit(piece: bytes) -> None:
                stdout.write(piece)
                stdout.flush()

            gen = generate(transformer, tokenizer, sampler, args.prompt, clamp_steps(args.steps, c.seq_len),
                           args.ignore_bos, emit, args.batch)
            stdout.write(b"\n")
            stdout.flush()
            stats = gen.stats
    finally:
        close = getattr(transformer, "close", None)
        if close:
            close()
    print(stats_line(port, args.threads, load_s, stats), file=sys.stderr)
    return 0


def manifest_formats(port_dir: str) -> tuple[str, ...]:
    """What a Python-hosted port's port.toml says it reads: the one list `main` holds files to."""
    import tomllib
    with open(os.path.join(port_dir, "port.toml"), "rb") as f:
        return tuple(tomllib.load(f)["formats"])


def main(argv: list[str] | None = None, port: str = "python", backend=numpy_backend,
         formats=("v0", "v1", "gguf"), runtime_errors: tuple = ()) -> int:
    """`runtime_errors`: a backend's own exception types that mean "failed at run time" (exit 1).
    `formats`: what the port reads (manifest_formats of its folder)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args([os.fsencode(a) for a in argv])
        return run(args, port, backend, formats)
    except Usage as e:
        print(f"error: {e}\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    except FormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_FILE
    except (BackendError, MemoryError, *runtime_errors) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else 'out of memory'}", file=sys.stderr)
        return EXIT_RUNTIME
    except BrokenPipeError:  # stdout closed early (| head): not an error worth a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130
