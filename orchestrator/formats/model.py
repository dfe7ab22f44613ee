"""The in-memory model every reader returns and every writer takes."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .config import Config
from .half import HalfTensor
from .q8_0 import Q8Tensor, eligible, quantize

WEIGHT_TYPES = ("f32", "q8_0", "f16", "bf16")
WHOLE = ("token_embedding", "rms_final", "wcls")  # one tensor each; every other weight has one per layer
# what a port lists in port.toml to read a GGUF holding tensors of each type (contract section 4)
GGUF_FORMAT = {"f32": "gguf", "q8_0": "gguf-q8_0", "f16": "gguf-f16", "bf16": "gguf-bf16"}


def tensor_type(t) -> str:
    """'q8_0' for Q8_0 blocks, 'f16' or 'bf16' for 16-bit values, 'f32' for a float32 array."""
    if isinstance(t, Q8Tensor):
        return "q8_0"
    return t.kind if isinstance(t, HalfTensor) else "f32"


@dataclass
class Model:
    """Weights under run.c's names. A layered weight is one (n_layers, ...) array, or a list of
    per-layer tensors (GGUF, where each layer's tensor has its own type); a GGUF matrix may be a
    Q8Tensor instead of a float32 array."""
    config: Config
    weights: dict[str, np.ndarray]
    fmt: str = "memory"
    path: str | None = None
    tokenizer: object | None = field(default=None, repr=False)  # set by GGUF, which embeds one

    @property
    def classifier(self) -> np.ndarray:
        return self.weights["token_embedding"] if self.config.shared_classifier else self.weights["wcls"]

    def tensors(self):
        """(name, layer or None, tensor) for every tensor, layers unrolled, in run.c's order."""
        for name in self.config.tensor_shapes():
            value = self.weights[name]
            if name in WHOLE:
                yield name, None, value
            else:
                yield from ((name, layer, t) for layer, t in enumerate(value))

    def types(self) -> dict[str, int]:
        """How many tensors of each weight type the model holds, e.g. {'f32': 20, 'q8_0': 15}."""
        counts: dict[str, int] = {}
        for _, _, t in self.tensors():
            counts[tensor_type(t)] = counts.get(tensor_type(t), 0) + 1
        return counts

    def tensor_bytes(self) -> int:
        """Bytes of every tensor as stored: what a batch-1 decode step reads."""
        return sum(t.nbytes if isinstance(t, (Q8Tensor, HalfTensor)) else 4 * np.asarray(t).size
                   for _, _, t in self.tensors())

    @property
    def weight_type(self) -> str:
        """The model's type by its matrices: 'q8_0' when any tensor is Q8_0, else 'bf16' or 'f16'
        when any is 16-bit, else 'f32'."""
        types = self.types()
        return next((t for t in ("q8_0", "bf16", "f16") if t in types), "f32")

    @property
    def formats(self) -> set[str]:
        """The port.toml format names a port must list to read this model: its own format (v0, v1)
        or, for a GGUF, `gguf` and one name per non-F32 tensor type it holds."""
        if self.fmt not in ("gguf", "gguf-q8_0", "gguf-f16", "gguf-bf16"):
            return {self.fmt}
        return {"gguf"} | {GGUF_FORMAT[t] for t in self.types()}

    def _mapped(self, fn) -> dict:
        """fn applied to every tensor; layered weights become per-layer lists, as GGUF keeps them."""
        return {name: fn(value) if name in WHOLE else [fn(t) for t in value] for name, value in self.weights.items()}

    def bound(self, fn) -> dict:
        """What a framework port holds: every weight through fn (its tensor maker), layered weights
        as per-layer lists, and `wcls` the classifier (the embedding's own tensor where it is shared).
        Shapes under run.c's names: token_embedding and wcls (vocab, dim); per layer rms_att and
        rms_ffn (dim,), wq and wo (dim, dim), wk and wv (kv_dim, dim), w1 and w3 (hidden_dim, dim),
        w2 (dim, hidden_dim); rms_final (dim,)."""
        out = self._mapped(fn)
        out["wcls"] = out["token_embedding"] if self.config.shared_classifier else out["wcls"]
        return out

    def dequantized(self) -> "Model":
        """Every tensor as float32 (Q8_0 blocks multiplied out, 16-bit values widened: both exact);
        the model itself when it has only float32 tensors, so that a float32 model is never copied."""
        if self.weight_type == "f32":
            return self

        def f32(t):
            return t.dequantize() if isinstance(t, (Q8Tensor, HalfTensor)) else t
        return replace(self, weights={k: np.stack(v) if isinstance(v, list) else v
                                      for k, v in self._mapped(f32).items()}, fmt="memory")

    def quantized(self) -> "Model":
        """The Q8_0 model the converter writes: every matrix whose rows are a multiple of 32 long in
        Q8_0 (llama.cpp's reference quantizer), everything else float32; Q8_0 tensors pass through."""
        def q8(t):
            if isinstance(t, Q8Tensor):
                return t
            t = np.asarray(t.dequantize() if isinstance(t, HalfTensor) else t, dtype=np.float32)
            return quantize(t) if eligible(t.shape) else t
        return replace(self, weights=self._mapped(q8), fmt="memory")

    def halved(self, kind: str) -> "Model":
        """The F16 or BF16 model llama.cpp's converter writes (`--outtype f16|bf16`): every matrix
        in the 16-bit type, norms float32. From Q8_0 blocks through their exact float32 values."""
        def half(t):
            if isinstance(t, HalfTensor) and t.kind == kind:
                return t
            t = np.asarray(t.dequantize() if isinstance(t, (Q8Tensor, HalfTensor)) else t, dtype=np.float32)
            return HalfTensor.from_f32(t, kind) if t.ndim == 2 else t
        return replace(self, weights=self._mapped(half), fmt="memory")

    def as_type(self, weight_type: str) -> "Model":
        """The model in a weight type, as the converter writes it."""
        if weight_type == "q8_0":
            return self.quantized()
        return self.dequantized() if weight_type == "f32" else self.halved(weight_type)
