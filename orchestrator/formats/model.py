"""The in-memory model every reader returns and every writer takes."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .config import Config


@dataclass
class Model:
    config: Config
    weights: dict[str, np.ndarray]
    fmt: str = "memory"
    path: str | None = None
    tokenizer: object | None = field(default=None, repr=False)  # set by GGUF, which embeds one

    @property
    def classifier(self) -> np.ndarray:
        return self.weights["token_embedding"] if self.config.shared_classifier else self.weights["wcls"]
