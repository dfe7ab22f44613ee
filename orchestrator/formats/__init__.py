"""Model and tokenizer file formats: llama2.c v0/v1 checkpoints, tokenizer.bin, GGUF (F32, F16, BF16, Q8_0)."""
from .checkpoint import read_v0, read_v1, sniff, write_v0, write_v1
from .config import Config
from .gguf_file import read_gguf, write_gguf
from .half import HalfTensor
from .model import WEIGHT_TYPES, Model, tensor_type
from .q8_0 import Q8Tensor
from .tokenizer_file import Vocab, read_tokenizer, write_tokenizer


def read_model(path) -> Model:
    """Any supported checkpoint; GGUF files bring their tokenizer along."""
    fmt = sniff(path)
    if fmt == "gguf":
        return read_gguf(path)
    return read_v1(path) if fmt == "v1" else read_v0(path)


__all__ = ["Config", "HalfTensor", "Model", "Q8Tensor", "Vocab", "WEIGHT_TYPES", "tensor_type", "read_model", "read_v0", "read_v1",
           "read_gguf", "sniff", "read_tokenizer", "write_v0", "write_v1", "write_gguf", "write_tokenizer"]
