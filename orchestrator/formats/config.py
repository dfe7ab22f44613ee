"""The model configuration shared by every format, and the limits every reader enforces.

The limits are the port contract's (docs/port-contract.md, section 4): they keep a hostile
header from turning into a huge allocation before the file size has been checked.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import FormatError

MAX_DIM = 65536
MAX_HIDDEN = 262144
MAX_LAYERS = 1024
MAX_VOCAB = 1 << 20
MAX_SEQ = 65536
MAX_KV_BYTES = 4 << 30


@dataclass(frozen=True)
class Config:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int  # always positive here; sharing is its own flag
    seq_len: int
    shared_classifier: bool = True
    # GGUF keys (contract 3); a .bin has none and gets llama2.c's values
    rope_theta: float = 10000.0
    norm_eps: float = 9.999999747378752e-06  # 1e-5 as the float32 a GGUF stores and ports compute with
    bos_id: int = 1
    eos_id: int = 2

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_size

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every weight tensor in llama2.c's names, in run.c (v0) order."""
        L, d, h, kv, v = self.n_layers, self.dim, self.hidden_dim, self.kv_dim, self.vocab_size
        shapes = {
            "token_embedding": (v, d),
            "rms_att": (L, d),
            "wq": (L, d, d),
            "wk": (L, kv, d),
            "wv": (L, kv, d),
            "wo": (L, d, d),
            "rms_ffn": (L, d),
            "w1": (L, h, d),
            "w2": (L, d, h),
            "w3": (L, h, d),
            "rms_final": (d,),
        }
        if not self.shared_classifier:
            shapes["wcls"] = (v, d)
        return shapes

    def weight_count(self) -> int:
        total = 0
        for shape in self.tensor_shapes().values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total

    def weight_bytes(self, weight_type: str = "f32") -> int:
        """Bytes read per token by a batch-1 forward pass (every weight once): float32, or as the
        converter writes the other types: every matrix in F16 or BF16 (2 bytes a value), or in
        Q8_0 where its rows are a multiple of 32 long (34-byte blocks of 32); norms float32."""
        if weight_type == "f32":
            return 4 * self.weight_count()
        if weight_type not in ("q8_0", "f16", "bf16"):
            raise ValueError(f"unknown weight type {weight_type!r}")
        total = 0
        for name, shape in self.tensor_shapes().items():
            n = 1
            for s in shape:
                n *= s
            if name.startswith("rms"):
                total += 4 * n
            elif weight_type != "q8_0":
                total += 2 * n
            else:
                total += 4 * n if shape[-1] % 32 else n // 32 * 34
        return total

    def kv_cache_bytes(self, rows: int | None = None) -> int:
        """The float32 K and V caches for `rows` positions per layer (the whole context if None)."""
        return self.n_layers * (self.seq_len if rows is None else rows) * self.kv_dim * 2 * 4

    def check_kv_cache(self, path, rows: int) -> None:
        """The contract's limit on the cache a run allocates (section 4, validation rule 3)."""
        need = self.kv_cache_bytes(rows)
        if need > MAX_KV_BYTES:
            raise FormatError(path, f"KV cache of {need} bytes for {rows} positions exceeds the 4 GiB limit")

    def validate(self, path) -> "Config":
        fields = dict(dim=self.dim, hidden_dim=self.hidden_dim, n_layers=self.n_layers,
                      n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                      vocab_size=self.vocab_size, seq_len=self.seq_len)
        for name, value in fields.items():
            if value <= 0:
                raise FormatError(path, f"header value {name}={value} must be positive")
        limits = dict(dim=MAX_DIM, hidden_dim=MAX_HIDDEN, n_layers=MAX_LAYERS,
                      vocab_size=MAX_VOCAB, seq_len=MAX_SEQ, n_heads=self.dim)
        for name, limit in limits.items():
            if fields[name] > limit:
                raise FormatError(path, f"header value {name}={fields[name]} exceeds the limit {limit}")
        if self.dim % self.n_heads:
            raise FormatError(path, f"dim={self.dim} is not a multiple of n_heads={self.n_heads}")
        if self.head_size % 2:
            raise FormatError(path, f"head_size={self.head_size} must be even for RoPE")
        if self.n_kv_heads > self.n_heads or self.n_heads % self.n_kv_heads:
            raise FormatError(path, f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        return self

    def describe(self) -> str:
        return (f"dim={self.dim} hidden_dim={self.hidden_dim} n_layers={self.n_layers} "
                f"n_heads={self.n_heads} n_kv_heads={self.n_kv_heads} vocab_size={self.vocab_size} "
                f"seq_len={self.seq_len} shared_classifier={self.shared_classifier}")
