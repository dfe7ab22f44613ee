"""The model store: a manifest of known models, a search path, and where each file came from.

Files are looked up in the directories of POLYLLAMA_MODEL_PATH, then in `models/`. Whatever the
store makes (synthetic models, GGUF exports, downloads) goes to `models/`, which git ignores.
Every resolved model says whether it is the real published file (sha256 checked) or synthetic.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import PolyllamaError, UsageError
from ..formats import Config

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = ROOT / "models"
MANIFEST = MODELS_DIR / "manifest.toml"
PATH_VAR = "POLYLLAMA_MODEL_PATH"
SYNTHETIC_TAG = ".synthetic"


@dataclass(frozen=True)
class Entry:
    name: str
    file: str
    bytes: int
    sha256: str
    url: str
    tokenizer: str | None = None
    config: Config | None = None
    vocab_size: int | None = None
    gguf: bool = False  # a shape that exists as GGUF files only: synthetic stand-ins per weight type


@dataclass(frozen=True)
class Resolved:
    """A model ready to run: its checkpoint, its tokenizer and where both came from."""
    name: str
    path: Path
    tokenizer: Path | None
    origin: str  # "real", "synthetic" or "unverified" (right name, wrong checksum)
    tokenizer_origin: str | None
    config: Config
    gguf: bool = False  # a GGUF-only shape: `path` is one of its typed files (Store.find_typed)


def _config(m: dict) -> Config:
    dim, hidden, layers, heads, kv_heads, vocab, seq = m["config"]
    keys = {k: m[k] for k in ("rope_theta", "norm_eps") if k in m}
    if "norm_eps" in keys:  # as a GGUF stores it: a float32
        keys["norm_eps"] = struct.unpack("<f", struct.pack("<f", keys["norm_eps"]))[0]
    return Config(dim, hidden, layers, heads, kv_heads, vocab, seq,
                  shared_classifier=m.get("format") != "gguf", **keys)


def load_manifest(path: Path = MANIFEST) -> tuple[dict[str, Entry], dict[str, Entry]]:
    data = tomllib.loads(path.read_text())
    models = {n: Entry(n, m["file"], m["bytes"], m["sha256"], m["url"], m["tokenizer"], _config(m),
                       gguf=m.get("format") == "gguf")
              for n, m in data["models"].items()}
    toks = {n: Entry(n, t["file"], t["bytes"], t["sha256"], t["url"], vocab_size=t["vocab_size"])
            for n, t in data["tokenizers"].items()}
    return models, toks


def search_path() -> list[Path]:
    extra = [Path(p).expanduser() for p in os.environ.get(PATH_VAR, "").split(os.pathsep) if p]
    return [p.resolve() for p in extra] + [MODELS_DIR]


def find_file(filename: str) -> Path | None:
    for d in search_path():
        candidate = d / filename
        if candidate.is_file():
            return candidate
    return None


_digest_cache: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digest_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _digest_cache[key] = h.hexdigest()
    return _digest_cache[key]


def origin_of(path: Path, entry: Entry) -> str:
    if SYNTHETIC_TAG in path.name:
        return "synthetic"
    return "real" if path.stat().st_size == entry.bytes and sha256_of(path) == entry.sha256 else "unverified"


def synthetic_name(filename: str, weight_type: str | None = None) -> str:
    """`stories15M.synthetic.bin`; for a GGUF-only shape one file per weight type,
    `tinyllama-1.1B.synthetic.q8_0.gguf`."""
    stem, ext = os.path.splitext(filename)
    return f"{stem}{SYNTHETIC_TAG}{'.' + weight_type if weight_type else ''}{ext}"


class Store:
    def __init__(self, manifest: Path = MANIFEST):
        self.models, self.tokenizers = load_manifest(manifest)

    def entry(self, name: str) -> Entry:
        if name not in self.models:
            raise UsageError(f"unknown model {name!r}; known: {', '.join(self.models)}")
        return self.models[name]

    def find_tokenizer(self, name: str) -> tuple[Path | None, str | None]:
        entry = self.tokenizers[name]
        real = find_file(entry.file)
        if real:
            return real, origin_of(real, entry)
        synth = find_file(synthetic_name(entry.file))
        return (synth, "synthetic") if synth else (None, None)

    def find_model(self, name: str, allow_synthetic: bool = True) -> tuple[Path | None, str | None]:
        """The real file when present, else the synthetic stand-in; (None, None) when neither is."""
        entry = self.entry(name)
        if entry.gguf:  # no published file to check: one synthetic GGUF per weight type
            found = [p for t in ("f16", "bf16", "q8_0", "f32")
                     if (p := find_file(synthetic_name(entry.file, t)))] if allow_synthetic else []
            return (found[0], "synthetic") if found else (None, None)
        path = find_file(entry.file)
        if path:
            return path, origin_of(path, entry)
        synth = find_file(synthetic_name(entry.file)) if allow_synthetic else None
        return (synth, "synthetic") if synth else (None, None)

    def find_typed(self, name: str, weight_type: str) -> Path | None:
        """A GGUF-only shape's synthetic file of one weight type, if made."""
        return find_file(synthetic_name(self.entry(name).file, weight_type))

    def resolve(self, name: str, allow_synthetic: bool = True) -> Resolved:
        """The model and its tokenizer as found on the search path (synth.ensure makes missing ones)."""
        entry = self.entry(name)
        path, origin = self.find_model(name, allow_synthetic)
        if path is None:
            raise PolyllamaError(f"model {name} not found in {', '.join(map(str, search_path()))}; "
                                 f"run `invoke models.fetch {name}` or `invoke models.synth {name}`")
        tok, tok_origin = self.find_tokenizer(entry.tokenizer)
        if tok is None:
            raise PolyllamaError(f"tokenizer {entry.tokenizer} for {name} not found; "
                                 f"run `invoke models.fetch {name}` or `invoke models.synth {name}`")
        return Resolved(name, path, tok, origin, tok_origin, entry.config, entry.gguf)

    def listing(self) -> list[dict]:
        rows = []
        for name, entry in self.models.items():
            real = find_file(entry.file)
            synth = find_file(synthetic_name(entry.file))
            stem = Path(entry.file).stem
            gguf = next((g for d in search_path() for g in sorted(d.glob(f"{stem}*.gguf"))), None)
            rows.append({
                "model": name,
                "real": f"{origin_of(real, entry)}: {real}" if real else "-",
                "synthetic": str(synth) if synth else "-",
                "gguf": str(gguf) if gguf else "-",
                "weights MB": round(entry.config.weight_bytes() / 1e6, 1),
            })
        return rows
