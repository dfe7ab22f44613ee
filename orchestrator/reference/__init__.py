"""The reference core: run.c's algorithm in numpy. Every port is validated against it."""
from .generate import Generation, RunStats, generate, logits_for
from .model import Transformer
from .sampler import Rng, Sampler
from .tokenizer import Tokenizer

__all__ = ["Generation", "RunStats", "Rng", "Sampler", "Tokenizer", "Transformer", "generate", "logits_for"]
