"""polyllama's PyTorch port: llama2.c's forward pass in torch ops (CPU, float32).

Only the Transformer is new here. The command line, tokenizer, sampler and generation loop are
the reference core's (orchestrator/reference), imported rather than copied, so the text on
stdout and the statistics line come from the same code as the reference's.

torch is imported only after the arguments and the model files have been checked: a usage error
or a bad file answers in milliseconds instead of after a one-second framework import.
"""
from __future__ import annotations

import os
import sys
import warnings

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)

from orchestrator.formats import Model  # noqa: E402
from orchestrator.reference.cli import main  # noqa: E402

PORT = "pytorch"
EPS = 1e-5


# ----------------------------------------------------------------------------------------------
# threads

def init_torch(threads: int):
    """Imports torch and sizes its pools once, as PyTorch's CPU tuning guide advises: `threads`
    intra-op workers (OpenMP splits every matmul), one inter-op worker because a decode step is a
    single chain of dependent ops. OpenMP's wait policy is left at the library's default, which
    spins briefly between ops before its workers sleep: forcing PASSIVE (sleep at once) made
    two-thread runs 1.7-2.6x slower on a quiet machine (the port's README has the figures); an
    OMP_WAIT_POLICY set by the user still wins, since libgomp reads it when torch loads it.
    """
    import torch

    torch.set_num_interop_threads(1)
    torch.set_num_threads(threads)
    return torch


# ----------------------------------------------------------------------------------------------
# model: weights and run state

class Transformer:
    """Weights as torch views of the memory-mapped file, plus the KV cache of one sequence.

    `forward(token, pos)` returns the logits as a numpy array, which is what the reference
    sampler and logits writer take; the array shares the tensor's memory.
    """

    def __init__(self, model: Model, torch):
        self.torch = torch
        self.c = c = model.config
        w = model.weights
        L = c.n_layers
        with warnings.catch_warnings():
            # The mapping is read-only and torch warns that writing through the tensor would be
            # undefined; nothing here writes to a weight, and copying 440 MB to silence a warning
            # would defeat the mmap.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

            def view(a):
                return torch.from_numpy(a)

            def layers(name):
                # v0/v1 give one (layer, ...) array, GGUF a list of per-layer arrays
                return [view(w[name][l]) for l in range(L)]

            self.token_embedding = view(w["token_embedding"])  # (vocab, dim)
            self.rms_att = layers("rms_att")  # L x (dim,)
            self.wq = layers("wq")  # L x (dim, dim)
            self.wk = layers("wk")  # L x (kv_dim, dim)
            self.wv = layers("wv")  # L x (kv_dim, dim)
            self.wo = layers("wo")  # L x (dim, dim)
            self.rms_ffn = layers("rms_ffn")  # L x (dim,)
            self.w1 = layers("w1")  # L x (hidden_dim, dim)
            self.w2 = layers("w2")  # L x (dim, hidden_dim)
            self.w3 = layers("w3")  # L x (hidden_dim, dim)
            self.rms_final = view(w["rms_final"])  # (dim,)
            self.wcls = view(model.classifier)  # (vocab, dim)
        # (layer, seq_len, kv_dim)
        self.key_cache = torch.zeros(L, c.seq_len, c.kv_dim, dtype=torch.float32)
        self.value_cache = torch.zeros(L, c.seq_len, c.kv_dim, dtype=torch.float32)
        # RoPE frequency of each pair within a head, computed in float32 as the reference does;
        # the angle tables are made per position, since a (seq_len, head_size) table can be huge.
        hs = c.head_size
        head_dim = torch.arange(0, hs, 2, dtype=torch.float32)
        self.inv_freq = 1.0 / torch.pow(torch.tensor(10000.0), head_dim / hs)  # (head_size/2,)
        self.scale = 1.0 / float(hs) ** 0.5

    # ------------------------------------------------------------------------------------------
    # forward pass

    def rope(self, vec, cis):
        """Rotates the adjacent pairs (vec[2i], vec[2i+1]) of every head by the angles in cis:
        a pair read as the complex number vec[2i] + i vec[2i+1], times cos a + i sin a, is
        (v0 cos a - v1 sin a, v0 sin a + v1 cos a), run.c's rotation, in three ops."""
        torch = self.torch
        pairs = torch.view_as_complex(vec.view(-1, self.c.head_size // 2, 2))  # (heads, head_size/2)
        return torch.view_as_real(pairs * cis).view(-1)

    def forward(self, token: int, pos: int):
        torch, c = self.torch, self.c
        F = torch.nn.functional
        n_kv, hs = c.n_kv_heads, c.head_size
        kv_mul = c.n_heads // n_kv
        x = self.token_embedding[token].clone()  # (dim,)
        angle = float(pos) * self.inv_freq  # (head_size/2,)
        cis = torch.polar(torch.ones_like(angle), angle)  # cos + i sin, shared by every layer
        for l in range(c.n_layers):
            xb = F.rms_norm(x, (c.dim,), self.rms_att[l], EPS)
            q = self.rope(torch.mv(self.wq[l], xb), cis)  # (dim,)
            k = self.rope(torch.mv(self.wk[l], xb), cis)  # (kv_dim,)
            self.key_cache[l, pos] = k
            torch.mv(self.wv[l], xb, out=self.value_cache[l, pos])  # (kv_dim,)

            # grouped-query attention over positions 0..pos: query head h reads KV head h // kv_mul
            keys = self.key_cache[l, : pos + 1].view(pos + 1, n_kv, hs).transpose(0, 1)  # (kv_heads, T, hs)
            values = self.value_cache[l, : pos + 1].view(pos + 1, n_kv, hs).transpose(0, 1)
            qg = q.view(n_kv, kv_mul, hs)
            scores = torch.softmax(torch.matmul(qg, keys.transpose(1, 2)) * self.scale, dim=-1)  # (kv_heads, kv_mul, T)
            att = torch.matmul(scores, values).reshape(c.dim)  # (dim,)
            x += torch.mv(self.wo[l], att)

            xb = F.rms_norm(x, (c.dim,), self.rms_ffn[l], EPS)
            hidden = F.silu(torch.mv(self.w1[l], xb)) * torch.mv(self.w3[l], xb)  # (hidden_dim,)
            x += torch.mv(self.w2[l], hidden)

        x = F.rms_norm(x, (c.dim,), self.rms_final, EPS)
        return torch.mv(self.wcls, x).numpy()  # (vocab,)


# ----------------------------------------------------------------------------------------------
# command line: the reference's, around this Transformer

def backend(model: Model, args) -> Transformer:
    """The CLI's hook; torch's thread pools can be sized once per process, so later calls reuse it."""
    if backend.torch is None:
        backend.torch = init_torch(args.threads)
        backend.torch.inference_mode().__enter__()  # for the rest of the process: nothing needs autograd
    return Transformer(model, backend.torch)


backend.torch = None


if __name__ == "__main__":
    # torch reports a failed allocation as RuntimeError
    sys.exit(main(port=PORT, backend=backend, runtime_errors=(RuntimeError,)))
