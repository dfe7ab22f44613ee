"""The golden texts every port's own unit tests read (tests/data/golden/), written by the numpy
reference: one source of truth for what a port must print, instead of a copy typed into each
language's tests. `invoke golden` writes them; tests/test_golden.py regenerates them and fails
when a committed file differs, so a file cannot drift from the reference.

Each file holds exactly the bytes the port prints on stdout for its command line (README.md in
that folder lists them); a port's test that builds the text through its own API compares it with
the file's bytes less the final newline.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import PolyllamaError
from ..files import write_atomic
from ..formats import read_model, read_tokenizer
from ..models.convert import gguf_for
from ..models.store import Resolved, Store
from ..reference import Sampler, Tokenizer, Transformer, generate
from .discover import ROOT

GOLDEN_DIR = ROOT / "tests" / "data" / "golden"


@dataclass(frozen=True)
class Golden:
    name: str  # the file's name in GOLDEN_DIR
    weights: str  # f32: the llama2.c file with its tokenizer; q8_0: its Q8_0 GGUF export
    prompt: bytes
    steps: int

    def command(self) -> str:
        model = "stories260K.bin -z tok512.bin" if self.weights == "f32" else "stories260K.tok512.q8_0.gguf"
        return f'<port> {model} -t 0 -n {self.steps} -i "{self.prompt.decode()}"'


CASES = (
    Golden("stories260K.f32.greedy.txt", "f32", b"", 256),
    # 128 steps: further on, a near-tie of the activations' Q8_0 rounding (port contract, section
    # 8) parts some ports from the reference, which validation's tie rule accepts and a test cannot
    Golden("stories260K.q8_0.greedy.txt", "q8_0", b"", 128),
    Golden("stories260K.f32.prompt.txt", "f32", b"Once upon a time, there was a", 96),
)


def text(case: Golden, resolved: Resolved, out_dir: Path) -> bytes:
    """What the reference prints for the case: greedy, so the sampler's seed plays no part."""
    if case.weights == "f32":
        model = read_model(resolved.path)
        tok = Tokenizer(read_tokenizer(resolved.tokenizer, model.config.vocab_size))
    else:
        model = read_model(gguf_for(resolved, out_dir, type="q8_0"))
        tok = Tokenizer(model.tokenizer, model.config.bos_id, model.config.eos_id)
    return generate(Transformer(model), tok, Sampler(0.0, 0.9, 1), case.prompt, case.steps).text


def real_stories260k(store: Store) -> Resolved:
    r = store.resolve("stories260K", allow_synthetic=False)
    if r.origin != "real" or r.tokenizer_origin != "real":
        raise PolyllamaError("the golden texts need the real stories260K and tok512.bin "
                             "(POLYLLAMA_MODEL_PATH, or `invoke models.fetch stories260K`)")
    return r


def readme() -> str:
    rows = "\n".join(f"| `{c.name}` | `{c.command()}` |" for c in CASES)
    return ("# Golden texts\n\nWritten by the numpy reference (`invoke golden`, orchestrator/ports/golden.py), "
            "never by hand; tests/test_golden.py fails when a file differs from what the reference prints.\n"
            "Each file is exactly the port's stdout for the command beside it (the real stories260K and "
            "tok512.bin; the Q8_0 file is `invoke models.convert --type q8_0` of them):\n\n"
            "| file | command |\n| --- | --- |\n" + rows + "\n")


def write_all(store: Store, out_dir: Path, golden_dir: Path = GOLDEN_DIR) -> list[Path]:
    r = real_stories260k(store)
    golden_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for case in CASES:
        path = golden_dir / case.name
        write_atomic(path, text(case, r, out_dir))
        written.append(path)
    write_atomic(golden_dir / "README.md", readme().encode())
    return written + [golden_dir / "README.md"]
