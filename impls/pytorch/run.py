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
from orchestrator.reference.cli import main, manifest_formats, rows_needed, switch  # noqa: E402

PORT = "pytorch"


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
        with warnings.catch_warnings():
            # The mapping is read-only and torch warns that writing through the tensor would be
            # undefined; nothing here writes to a weight, and copying 440 MB to silence a warning
            # would defeat the mmap.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

            # run.c's names and shapes (Model.bound): token_embedding, per-layer lists of rms_att,
            # wq, wk, wv, wo, rms_ffn, w1, w2, w3, then rms_final and wcls
            # 16-bit weights widened once to float32 (exact), as the contract computes with them
            for name, tensor in model.dequantized().bound(torch.from_numpy).items():
                setattr(self, name, tensor)
        self.key_cache, self.value_cache = self.make_cache()
        # RoPE frequency of each pair within a head, computed in float32 as the reference does;
        # the angle tables are made per position, since a (seq_len, head_size) table can be huge.
        hs = c.head_size
        head_dim = torch.arange(0, hs, 2, dtype=torch.float32)
        self.inv_freq = 1.0 / torch.pow(torch.tensor(c.rope_theta), head_dim / hs)  # (head_size/2,)
        self.eps = c.norm_eps  # the file's (contract 3), 1e-5 for a .bin
        self.scale = 1.0 / float(hs) ** 0.5

    def make_cache(self):
        """Keys and values, each (layer, seq_len, kv_dim)."""
        c = self.c
        return (self.torch.zeros(c.n_layers, c.seq_len, c.kv_dim, dtype=self.torch.float32),
                self.torch.zeros(c.n_layers, c.seq_len, c.kv_dim, dtype=self.torch.float32))

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
            xb = F.rms_norm(x, (c.dim,), self.rms_att[l], self.eps)
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

            xb = F.rms_norm(x, (c.dim,), self.rms_ffn[l], self.eps)
            hidden = F.silu(torch.mv(self.w1[l], xb)) * torch.mv(self.w3[l], xb)  # (hidden_dim,)
            x += torch.mv(self.w2[l], hidden)

        x = F.rms_norm(x, (c.dim,), self.rms_final, self.eps)
        return torch.mv(self.wcls, x).numpy()  # (vocab,)

    def forward_batch(self, tokens: list[int], pos0: int, all_logits: bool):
        """Positions pos0 .. pos0+T-1 at once, row t being forward(tokens[t], pos0 + t): one
        matrix-matrix product per weight matrix, so each weight is read once per batch. Returns
        the logits of every row (T, vocab), or of the last row only (1, vocab)."""
        if len(tokens) == 1:  # a one-row product is the decode step's matrix-vector one
            return self.forward(tokens[0], pos0)[None]
        torch, c = self.torch, self.c
        F = torch.nn.functional
        T, end = len(tokens), pos0 + len(tokens)
        x = self.token_embedding.index_select(0, torch.tensor(tokens))  # (T, dim), a copy
        rows = torch.arange(pos0, end)
        angle = rows.to(torch.float32)[:, None] * self.inv_freq  # (T, head_size/2)
        cis = torch.polar(torch.ones_like(angle), angle)[:, None]  # (T, 1, head_size/2)
        # row t sees cache rows 0 .. pos0+t: the earlier batches and its own batch up to itself
        visible = torch.arange(end)[None, :] <= rows[:, None]  # (T, end)
        for l in range(c.n_layers):
            xb = F.rms_norm(x, (c.dim,), self.rms_att[l], self.eps)
            q = self.rope_rows(F.linear(xb, self.wq[l]), cis)  # (T, dim)
            # every row's key and value is in the cache before any row attends
            self.key_cache[l, pos0:end] = self.rope_rows(F.linear(xb, self.wk[l]), cis)
            torch.mm(xb, self.wv[l].t(), out=self.value_cache[l, pos0:end])
            x += F.linear(self.attend(q, self.key_cache[l, :end], self.value_cache[l, :end], visible), self.wo[l])

            xb = F.rms_norm(x, (c.dim,), self.rms_ffn[l], self.eps)
            x += F.linear(F.silu(F.linear(xb, self.w1[l])) * F.linear(xb, self.w3[l]), self.w2[l])

        last = x if all_logits else x[-1:]
        return F.linear(F.rms_norm(last, (c.dim,), self.rms_final, self.eps), self.wcls).numpy()

    def rope_rows(self, mat, cis):
        """rope() for each row of a (T, width) matrix, row t by its own position's angles."""
        torch = self.torch
        pairs = torch.view_as_complex(mat.view(mat.shape[0], -1, self.c.head_size // 2, 2))
        return torch.view_as_real(pairs * cis).view(mat.shape)

    def attend(self, q, keys, values, visible):
        """Causal grouped-query attention of T query rows (T, dim) over S cache rows (S, kv_dim),
        `visible` (T, S) saying which rows each query sees: scaled_dot_product_attention, PyTorch's
        fused attention, with query head h reading KV head h // kv_mul (enable_gqa). The inputs
        are 4-D (batch 1, heads, rows, head_size): the CPU's flash-attention kernel (split over
        heads and query blocks) takes only that layout, and 3-D ones fall back to the unfused
        math path (score matrices, a separate softmax and masking ops)."""
        torch, c = self.torch, self.c
        hs = c.head_size
        out = torch.nn.functional.scaled_dot_product_attention(
            q.view(1, -1, c.n_heads, hs).transpose(1, 2),  # (1, heads, T, hs)
            keys.view(1, -1, c.n_kv_heads, hs).transpose(1, 2),  # (1, kv_heads, S, hs)
            values.view(1, -1, c.n_kv_heads, hs).transpose(1, 2),
            attn_mask=visible, scale=self.scale, enable_gqa=True)  # (1, heads, T, hs)
        return out.transpose(1, 2).reshape(-1, c.dim)


# ----------------------------------------------------------------------------------------------
# the same forward pass, compiled

class CompiledTransformer(Transformer):
    """The forward pass as one torch.compile'd graph (Inductor: generated C++ with OpenMP), so a
    step is one call into native code instead of hundreds of op dispatches from Python.

    Compiled once: every shape is fixed for the whole run. Token and position enter as 0-d
    tensors, never as Python ints (a new int would be a new constant and a recompile), and
    attention spans all `rows` cache rows with the rows after `pos` masked out. `rows` is as many
    positions as this run can reach (the CLI's steps, or its -k ids), not seq_len: a run of 256
    steps on a 1024-position model then reads 256 rows of cache a layer, not 1024. The one
    compilation happens here, in the constructor, so it counts as loading.

    The compiled function is module-level and gets every tensor as an argument, so its guards
    check shapes, not which Transformer they belong to: a second model of the same shape in one
    process (the tests make many) reuses the compiled code instead of recompiling towards
    Dynamo's recompile limit.
    """

    def __init__(self, model: Model, torch, rows: int, batch: int = 1):
        self.rows = rows = max(1, min(rows, model.config.seq_len))
        super().__init__(model, torch)
        c = self.c
        self.positions = torch.arange(rows)
        self.weights = (self.token_embedding, self.rms_att, self.wq, self.wk, self.wv, self.wo, self.rms_ffn,
                        self.w1, self.w2, self.w3, self.rms_final, self.wcls)
        self.shape = (c.dim, c.n_layers, c.n_kv_heads, c.n_heads // c.n_kv_heads, c.head_size, rows, self.scale, self.eps)
        self._token = torch.zeros((), dtype=torch.int64)
        self._pos = torch.zeros((), dtype=torch.int64)
        self._pos0 = torch.zeros((), dtype=torch.int64)
        if CompiledTransformer.compiled is None:
            CompiledTransformer.compiled = torch.compile(decode_step, fullgraph=True, dynamic=False)
        # Warm-up: the compilation, and the first run of the generated code. It writes cache row
        # 0, which position 0 overwrites before anything reads it.
        try:
            with warnings.catch_warnings():
                # stderr holds the statistics line or one error line; Inductor warns on its way
                # to an error (no Python.h, say) that the error line then names
                warnings.simplefilter("ignore")
                self._run()
                # The batched pass is a second graph, compiled here too when the run can batch
                # (batch >= 2 and room for two rows): its warm-up batch writes cache rows that
                # the run's own positions overwrite before any row reads them.
                self.batch = max(1, min(batch, rows))
                if self.batch >= 2:
                    self._run_batch(torch.zeros(self.batch, dtype=torch.int64), 0)
        except Exception as e:  # the CLI prints one line, and Inductor's first line names no cause
            raise RuntimeError(f"torch.compile failed: {compile_failure(e)} "
                               "(POLYLLAMA_TORCH_COMPILE=0 runs without it)") from e

    compiled = None
    compiled_batch = None

    def make_cache(self):
        """Keys and values, each a list of (rows, kv_dim): one tensor per layer, because a write
        into one layer's slice of a shared tensor is functionalized into a copy of that whole
        tensor, every layer of every step."""
        c = self.c
        return ([self.torch.zeros(self.rows, c.kv_dim) for _ in range(c.n_layers)],
                [self.torch.zeros(self.rows, c.kv_dim) for _ in range(c.n_layers)])

    def _run(self):
        return CompiledTransformer.compiled(self.weights, self.key_cache, self.value_cache, self.positions,
                                            self.inv_freq, self._token, self._pos, self.shape)

    def forward(self, token: int, pos: int):
        if not 0 <= pos < self.rows:
            raise IndexError(f"position {pos}: this run's cache holds {self.rows}")
        # fill_ keeps the same two input tensors, values only: nothing for a guard to see
        self._token.fill_(token)
        self._pos.fill_(pos)
        return self._run().numpy()

    def _run_batch(self, tokens, pos0: int):
        """The compiled batched pass: the final-normed rows (T, dim).

        One graph for every batch length: the token vector's length is marked dynamic (T >= 2;
        one row takes the decode step), as torch.compile's documentation advises for a size known
        to vary, so a run's full batches and its shorter last one share the code compiled at load
        instead of compiling a graph per length while the prompt runs. Everything else stays
        static, as in the decode step; the matrix products are library GEMM calls either way, so
        a symbolic row count costs them nothing."""
        torch = self.torch
        if CompiledTransformer.compiled_batch is None:
            CompiledTransformer.compiled_batch = torch.compile(prefill_step, fullgraph=True)
        torch._dynamo.mark_dynamic(tokens, 0)
        self._pos0.fill_(pos0)
        return CompiledTransformer.compiled_batch(self.weights, self.key_cache, self.value_cache, self.positions,
                                                  self.inv_freq, tokens, self._pos0, self.shape)

    def forward_batch(self, tokens: list[int], pos0: int, all_logits: bool):
        if len(tokens) == 1:
            return self.forward(tokens[0], pos0)[None]
        if not (0 <= pos0 and pos0 + len(tokens) <= self.rows):
            raise IndexError(f"positions {pos0}..{pos0 + len(tokens) - 1}: this run's cache holds {self.rows}")
        torch = self.torch
        x = self._run_batch(torch.tensor(tokens, dtype=torch.int64), pos0)
        # the classifier outside the graph: one library GEMM over the rows asked for, and one
        # compiled graph whether every row's logits are kept or only the last one's
        return torch.nn.functional.linear(x if all_logits else x[-1:], self.wcls).numpy()


def compile_failure(e: Exception) -> str:
    """The line of a compilation error that names its cause: the C++ compiler's own error (a
    missing Python.h, say) when there is one."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "error:" in ln:
            return ln
    # else the first line that is not Dynamo's preamble or its advice on debugging
    cause = [ln for ln in lines if not ln.endswith("raised:") and "TORCH" not in ln]
    return cause[0] if cause else type(e).__name__


def decode_step(weights, key_cache, value_cache, positions, inv_freq, token, pos, shape):
    """One position, (token, pos) as 0-d tensors -> logits (vocab,); written for torch.compile."""
    import torch
    F = torch.nn.functional
    emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, wcls = weights
    dim, n_layers, n_kv, kv_mul, hs, T, scale, eps = shape
    x = emb.index_select(0, token.view(1)).view(-1)  # (dim,); emb[token] would read the token out as an int
    angle = pos.to(torch.float32) * inv_freq  # (head_size/2,)
    cos, sin = torch.cos(angle), torch.sin(angle)

    def rope(vec):
        # run.c's rotation of the pairs (vec[2i], vec[2i+1]) in real arithmetic: Inductor does not
        # generate code for complex tensors
        pairs = vec.view(-1, hs // 2, 2)
        v0, v1 = pairs[..., 0], pairs[..., 1]
        return torch.stack((v0 * cos - v1 * sin, v0 * sin + v1 * cos), dim=-1).view(-1)

    # rows after pos hold nothing yet (or a later position of an earlier call): never read
    hidden_rows = (positions > pos).view(1, 1, T)
    where = pos.view(1)
    for l in range(n_layers):
        xb = F.rms_norm(x, (dim,), rms_att[l], eps)
        q = rope(torch.mv(wq[l], xb))  # (dim,)
        k = rope(torch.mv(wk[l], xb))  # (kv_dim,)
        v = torch.mv(wv[l], xb)  # (kv_dim,)
        key_cache[l].index_copy_(0, where, k.view(1, -1))
        value_cache[l].index_copy_(0, where, v.view(1, -1))

        # grouped-query attention over every row, the unwritten ones masked
        keys = key_cache[l].view(T, n_kv, hs).transpose(0, 1)  # (kv_heads, T, hs)
        values = value_cache[l].view(T, n_kv, hs).transpose(0, 1)
        qg = q.view(n_kv, kv_mul, hs)
        scores = torch.matmul(qg, keys.transpose(1, 2)) * scale  # (kv_heads, kv_mul, T)
        scores = torch.softmax(scores.masked_fill(hidden_rows, float("-inf")), dim=-1)
        att = torch.matmul(scores, values).reshape(dim)  # (dim,)
        x = x + torch.mv(wo[l], att)

        xb = F.rms_norm(x, (dim,), rms_ffn[l], eps)
        hidden = F.silu(torch.mv(w1[l], xb)) * torch.mv(w3[l], xb)  # (hidden_dim,)
        x = x + torch.mv(w2[l], hidden)

    x = F.rms_norm(x, (dim,), rms_final, eps)
    return torch.mv(wcls, x)  # (vocab,)


def prefill_step(weights, key_cache, value_cache, positions, inv_freq, tokens, pos0, shape):
    """Positions pos0 .. pos0+T-1 at once, T = len(tokens) (dynamic), pos0 a 0-d tensor -> the
    rows after the final rmsnorm (T, dim); written for torch.compile. Row t is decode_step's
    position pos0 + t, with one matrix-matrix product per weight matrix."""
    import torch
    F = torch.nn.functional
    emb, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, wcls = weights
    dim, n_layers, n_kv, kv_mul, hs, S, scale, eps = shape
    T = tokens.shape[0]
    x = emb.index_select(0, tokens)  # (T, dim)
    rows = pos0 + torch.arange(T)  # each row's position
    angle = rows.to(torch.float32).view(T, 1) * inv_freq  # (T, head_size/2)
    cos, sin = torch.cos(angle).view(T, 1, hs // 2), torch.sin(angle).view(T, 1, hs // 2)

    def rope(mat):
        pairs = mat.view(T, -1, hs // 2, 2)
        v0, v1 = pairs[..., 0], pairs[..., 1]
        return torch.stack((v0 * cos - v1 * sin, v0 * sin + v1 * cos), dim=-1).view(T, -1)

    # row t sees cache rows 0 .. pos0+t: the earlier batches, and its own batch up to itself; the
    # rows after that hold nothing yet (or a later position of an earlier call)
    visible = positions.view(1, S) <= rows.view(T, 1)  # (T, S)
    for l in range(n_layers):
        xb = F.rms_norm(x, (dim,), rms_att[l], eps)
        q = rope(F.linear(xb, wq[l]))  # (T, dim)
        # every row's key and value is in the cache before any row attends
        key_cache[l].index_copy_(0, rows, rope(F.linear(xb, wk[l])))
        value_cache[l].index_copy_(0, rows, F.linear(xb, wv[l]))
        # 4-D, as Transformer.attend explains: the layout of the CPU's flash-attention kernel
        att = F.scaled_dot_product_attention(
            q.view(1, T, n_kv * kv_mul, hs).transpose(1, 2),  # (1, heads, T, hs)
            key_cache[l].view(1, S, n_kv, hs).transpose(1, 2),  # (1, kv_heads, S, hs)
            value_cache[l].view(1, S, n_kv, hs).transpose(1, 2),
            attn_mask=visible, scale=scale, enable_gqa=True)  # (1, heads, T, hs)
        x = x + F.linear(att.transpose(1, 2).reshape(T, dim), wo[l])

        xb = F.rms_norm(x, (dim,), rms_ffn[l], eps)
        x = x + F.linear(F.silu(F.linear(xb, w1[l])) * F.linear(xb, w3[l]), w2[l])

    return F.rms_norm(x, (dim,), rms_final, eps)


# ----------------------------------------------------------------------------------------------
# command line: the reference's, around this Transformer

def backend(model: Model, args) -> Transformer:
    """The CLI's hook; torch's thread pools can be sized once per process, so later calls reuse it."""
    compiled = switch("POLYLLAMA_TORCH_COMPILE")
    if backend.torch is None:
        backend.torch = init_torch(args.threads)
        backend.torch.inference_mode().__enter__()  # for the rest of the process: nothing needs autograd
    if compiled:
        return CompiledTransformer(model, backend.torch, rows_needed(model, args), getattr(args, "batch", 512))
    return Transformer(model, backend.torch)


backend.torch = None


if __name__ == "__main__":
    # torch reports a failed allocation as RuntimeError
    sys.exit(main(port=PORT, backend=backend, formats=manifest_formats(os.path.dirname(os.path.abspath(__file__))),
                  runtime_errors=(RuntimeError,)))
