"""llama.cpp as a polyllama peer: the project's GGUF export run by llama.cpp (llama-cpp-python's
low-level bindings), behind the port contract's command line.

llama.cpp computes the logits; everything around them is the reference core's
(orchestrator/reference): argument parsing, the GGUF reader that validates the file and supplies
the tokenizer, encode/decode, the sampler and the generation loop. So the text on stdout depends
on llama.cpp only through its logits, and a seed draws the same numbers as in every port.
llama.cpp's own tokenizer and samplers are not used: its sampler chain has a different RNG and
top-p rule, so sampled text could never be compared.

llama_cpp is imported only after the arguments and the model file have been checked.
"""
from __future__ import annotations


import os
import sys

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)

from orchestrator.errors import FormatError  # noqa: E402
from orchestrator.formats import Model  # noqa: E402
from orchestrator.reference.cli import main  # noqa: E402

PORT = "llamacpp"
GGML_TYPE_F32 = 0
MAX_BATCH = 512  # tokens per llama_decode in logits mode: llama.cpp's default n_batch


class EngineError(Exception):
    """llama.cpp refused something; the message is one line."""


# ----------------------------------------------------------------------------------------------
# llama.cpp: library, model, context

def init_llama():
    """Imports the bindings, routes llama.cpp's and ggml's log to nowhere (the statistics line
    must stay the last line of stderr) and initialises the CPU backend.

    ggml's CPU threads are an OpenMP team (GGML_OPENMP=ON). OpenMP's idle workers spin by
    default; on a machine with more runnable threads than cores a spinning worker holds the core
    its partner needs and every barrier waits out a scheduler time slice (measured 15-20x slower
    at -j 2 on a shared 2-core VM). PASSIVE makes them sleep. It must be set before the library
    loads libgomp; an explicit setting wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import llama_cpp as ll
    except Exception as e:  # ImportError, or a library that fails to load
        raise EngineError(f"cannot import llama_cpp: {e}") from None
    init_llama.quiet = ll.llama_log_callback(lambda level, text, user: None)  # kept alive
    ll.llama_log_set(init_llama.quiet, None)
    ll.llama_backend_init()
    return ll


class LlamaCpp:
    """One llama.cpp model and context, shaped like the reference Transformer: `c` is the
    config and `forward(token, pos)` returns the logits (vocab,) after that position.

    The weights stay in llama.cpp's own mmap of the file; the KV cache is F32 (type_k = type_v =
    GGML_TYPE_F32) so that nothing is rounded to F16 and the comparison with the fp32 ports is
    fair; flash attention is off, which keeps the attention in plain F32 matmul + softmax.
    """

    def __init__(self, ll, model: Model, threads: int, n_batch: int):
        self.ll, self.c = ll, model.config
        mp = ll.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.load_mode = ll.LLAMA_LOAD_MODE_MMAP
        self.model = ll.llama_model_load_from_file(os.fsencode(model.path), mp)
        if not self.model:
            raise FormatError(model.path, "llama.cpp cannot load this GGUF file")
        cp = ll.llama_context_default_params()
        cp.n_ctx = self.c.seq_len
        cp.n_batch = cp.n_ubatch = n_batch
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = threads  # ggml's OpenMP pool, created once
        cp.type_k = cp.type_v = GGML_TYPE_F32
        cp.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.embeddings = False
        cp.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, cp)
        if not self.ctx:
            self.free()
            raise EngineError("llama.cpp cannot create a context (out of memory?)")
        self.n_vocab = self.c.vocab_size
        self.batch = ll.llama_batch_init(n_batch, 0, 1)
        self.n_batch = n_batch

    def close(self) -> None:
        ll = self.ll
        if getattr(self, "batch", None) is not None:
            ll.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            ll.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            ll.llama_model_free(self.model)
            self.model = None

    def _decode(self, tokens: list[int], start: int, all_logits: bool) -> None:
        """Runs tokens at positions start.. in one llama_decode."""
        b = self.batch
        b.n_tokens = len(tokens)
        for i, t in enumerate(tokens):
            b.token[i] = t
            b.pos[i] = start + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = all_logits or i == len(tokens) - 1
        rc = self.ll.llama_decode(self.ctx, b)
        if rc != 0:
            raise EngineError(f"llama_decode failed with status {rc} at position {start}")

    def _logits(self, i: int) -> np.ndarray:
        ptr = self.ll.llama_get_logits_ith(self.ctx, i)
        if not ptr:
            raise EngineError(f"llama.cpp returned no logits for output {i}")
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def forward(self, token: int, pos: int) -> np.ndarray:
        """One decode step (batch of one): the same single-token path as run.c."""
        self._decode([token], pos, False)
        return self._logits(-1)

    def logits_all(self, tokens: list[int]) -> np.ndarray:
        """(len(tokens), vocab) float32: every position's logits, in batches of n_batch with an
        output for every token (what llama-cpp-python's logits_all=True asks for)."""
        rows = []
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            self._decode(chunk, start, True)
            rows.extend(self._logits(i) for i in range(len(chunk)))
        return np.stack(rows).astype("<f4")


# ----------------------------------------------------------------------------------------------
# generation and command line (the reference's, around llama.cpp)

# ----------------------------------------------------------------------------------------------
# command line: the reference's, around llama.cpp

def backend(model: Model, args) -> LlamaCpp:
    n_batch = min(MAX_BATCH, len(args.ids)) if args.mode == "logits" else 1
    return LlamaCpp(init_llama(), model, args.threads, n_batch)


if __name__ == "__main__":
    sys.exit(main(port=PORT, backend=backend, formats=("gguf",), runtime_errors=(EngineError,)))
