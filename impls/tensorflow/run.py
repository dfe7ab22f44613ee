"""polyllama's TensorFlow port: llama2.c's forward pass as one tf.function (CPU, float32).

Only the Transformer is new here. The command line, tokenizer, sampler and generation loop are
the reference core's (orchestrator/reference), imported rather than copied, so the text on
stdout and the statistics line come from the same code as the reference's.

TensorFlow is imported only after the arguments and the model files have been checked: a usage
error or a bad file answers in milliseconds instead of after a two-second framework import.
"""
from __future__ import annotations

import os
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
sys.path.insert(0, ROOT)

from orchestrator.formats import Model  # noqa: E402
from orchestrator.reference.cli import main, manifest_formats, rows_needed, switch  # noqa: E402

PORT = "tensorflow"


class ImportFailure(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# threads, and keeping TensorFlow quiet

def init_tensorflow(threads: int):
    """Imports TensorFlow and sizes its pools before any op runs (afterwards they are fixed):
    `threads` intra-op workers split every matmul, one inter-op worker because a decode step is
    a single chain of dependent ops.

    TF_CPP_MIN_LOG_LEVEL silences the C++ INFO/WARNING logs, but a few lines (absl's "before
    InitializeLog" notice, oneDNN's banner) are written during the import before that setting is
    read, so stderr itself is parked in a file for the import and replayed only if it fails: the
    statistics line must stay the last line of stderr.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as parked:
        os.dup2(parked.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
            tf.get_logger().setLevel("ERROR")
        except Exception as e:  # ImportError, or a broken install raising anything else
            parked.seek(0)
            detail = parked.read().decode(errors="replace").strip().splitlines()
            raise ImportFailure(f"cannot import tensorflow: {e}" + (f" ({detail[-1]})" if detail else "")) from None
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return tf


# ----------------------------------------------------------------------------------------------
# model: weights and run state

class Transformer:
    """Weights as TF constants, the KV cache as variables, and the decode step as a tf.function
    traced once at load for a scalar (token, pos): every later step is one graph execution.

    TF cannot wrap a read-only memory map that is not 64-byte aligned, so the weights are copied
    into TF's allocator once, layer by layer, at load; never per token.
    """

    def __init__(self, model: Model, tf, xla: bool = True, rows: int | None = None, batch: int = 1):
        self.tf = tf
        self.xla = xla
        self.c = c = model.config
        # run.c's names and shapes (Model.bound): token_embedding, per-layer lists of rms_att, wq,
        # wk, wv, wo, rms_ffn, w1, w2, w3, then rms_final and wcls
        # 16-bit weights widened to float32 (exact), as the contract computes with them
        for name, tensor in model.dequantized().bound(lambda a: tf.constant(a, dtype=tf.float32)).items():
            setattr(self, name, tensor)
        # XLA compiles for fixed shapes, and a slice whose length is a tensor value has none: under
        # XLA attention spans every cache row, the rows after pos masked. So that cache holds only
        # the rows this run can reach (`rows`: its steps or -k ids), not seq_len.
        self.rows = max(1, min(rows or c.seq_len, c.seq_len)) if xla else c.seq_len
        self.positions = tf.range(self.rows)
        # L x (rows, kv_dim): one variable per layer, so a step touches only its own rows
        self.key_cache = [tf.Variable(tf.zeros((self.rows, c.kv_dim)), trainable=False) for _ in range(c.n_layers)]
        self.value_cache = [tf.Variable(tf.zeros((self.rows, c.kv_dim)), trainable=False) for _ in range(c.n_layers)]
        # RoPE frequency of each pair within a head, float32 as in the reference
        hs = c.head_size
        head_dim = tf.range(0, hs, 2, dtype=tf.float32)
        self.inv_freq = 1.0 / tf.pow(tf.constant(c.rope_theta, tf.float32), head_dim / hs)  # (head_size/2,)
        self.eps = c.norm_eps  # the file's (contract 3), 1e-5 for a .bin
        self.scale = 1.0 / float(hs) ** 0.5
        spec = tf.TensorSpec([], tf.int32)
        self.step = tf.function(self._step, input_signature=[spec, spec], autograph=False, jit_compile=xla)
        # Trace and run once now, so that tracing and grappler's first-run graph rewrites (or
        # XLA's one compilation) count as loading, not as the first token. The dummy step writes
        # only cache row 0, which position 0 overwrites before anything reads it.
        self.step(tf.constant(0, tf.int32), tf.constant(0, tf.int32))
        # The batched pass: a plain tf.function graph in both modes, traced once for every batch
        # length (T unknown in the signature). Not XLA: XLA compiles anew for each concrete
        # shape (seconds each, and a run's last batch is usually shorter than the others), and
        # its CPU matrix products ran the batch no faster than TF's own MatMul kernels (oneDNN),
        # which take any T as it comes; with a batch of rows the products dominate, so XLA's
        # fusion of the small ops has little to win (the README has the comparison). Traced and
        # run once now on two rows, which the run's own positions overwrite before any row reads
        # them.
        self.batch = max(1, min(batch, self.rows))
        self.batch_step = tf.function(self._batch_step, input_signature=[tf.TensorSpec([None], tf.int32), spec],
                                      autograph=False, jit_compile=False)
        if self.batch >= 2:
            self.batch_step(tf.zeros([2], tf.int32), tf.constant(0, tf.int32))

    # ------------------------------------------------------------------------------------------
    # forward pass

    def _rmsnorm(self, x, w):
        tf = self.tf
        return w * (x * tf.math.rsqrt(tf.reduce_mean(tf.square(x)) + self.eps))

    def _rope(self, vec, cos, sin):
        """Rotates the adjacent pairs (vec[2i], vec[2i+1]) of every head by the angles of pos."""
        tf = self.tf
        pairs = tf.reshape(vec, [-1, self.c.head_size // 2, 2])  # (heads, head_size/2, 2)
        v0, v1 = pairs[..., 0], pairs[..., 1]
        return tf.reshape(tf.stack([v0 * cos - v1 * sin, v0 * sin + v1 * cos], axis=-1), [-1])

    def _step(self, token, pos):
        """The graph of one position: (token, pos) -> logits (vocab,). Layers are unrolled at
        trace time; the attention span pos + 1 is dynamic, or under XLA all rows with a mask."""
        tf, c = self.tf, self.c
        mv = tf.linalg.matvec
        n_kv, hs = c.n_kv_heads, c.head_size
        kv_mul = c.n_heads // n_kv
        angle = tf.cast(pos, tf.float32) * self.inv_freq
        cos, sin = tf.cos(angle), tf.sin(angle)  # (head_size/2,)
        x = tf.gather(self.token_embedding, token)  # (dim,)
        for l in range(c.n_layers):
            xb = self._rmsnorm(x, self.rms_att[l])
            q = self._rope(mv(self.wq[l], xb), cos, sin)  # (dim,)
            k = self._rope(mv(self.wk[l], xb), cos, sin)  # (kv_dim,)
            v = mv(self.wv[l], xb)  # (kv_dim,)
            # a scatter, not a sliced assign: XLA needs a slice's bounds at compile time, so
            # `cache[pos].assign` would make pos a constant and compile once per position
            row = tf.reshape(pos, [1])
            self.key_cache[l].scatter_update(tf.IndexedSlices(k[None], row))
            self.value_cache[l].scatter_update(tf.IndexedSlices(v[None], row))

            # grouped-query attention over positions 0..pos: query head h reads KV head h // kv_mul
            span = slice(None) if self.xla else slice(None, pos + 1)
            keys = tf.transpose(tf.reshape(self.key_cache[l][span], [-1, n_kv, hs]), [1, 0, 2])  # (kv_heads, T, hs)
            values = tf.transpose(tf.reshape(self.value_cache[l][span], [-1, n_kv, hs]), [1, 0, 2])
            qg = tf.reshape(q, [n_kv, kv_mul, hs])
            scores = tf.matmul(qg, keys, transpose_b=True) * self.scale  # (kv_heads, kv_mul, T)
            if self.xla:  # rows after pos hold nothing yet, or a later position of an earlier call
                scores = tf.where(self.positions > pos, float("-inf"), scores)
            scores = tf.nn.softmax(scores, axis=-1)
            att = tf.reshape(tf.matmul(scores, values), [c.dim])  # (dim,)
            x = x + mv(self.wo[l], att)

            xb = self._rmsnorm(x, self.rms_ffn[l])
            hidden = tf.nn.silu(mv(self.w1[l], xb)) * mv(self.w3[l], xb)  # (hidden_dim,)
            x = x + mv(self.w2[l], hidden)

        x = self._rmsnorm(x, self.rms_final)
        return mv(self.wcls, x)  # (vocab,)

    def forward(self, token: int, pos: int):
        tf = self.tf
        if not 0 <= pos < self.rows:
            raise IndexError(f"position {pos}: this run's cache holds {self.rows}")
        return self.step(tf.constant(token, tf.int32), tf.constant(pos, tf.int32)).numpy()

    # ------------------------------------------------------------------------------------------
    # the batched forward pass

    def _rmsnorm_rows(self, x, w):
        """_rmsnorm of each row of a (T, width) matrix."""
        tf = self.tf
        return w * (x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True) + self.eps))

    def _rope_rows(self, mat, cos, sin):
        """_rope of each row of a (T, width) matrix, by that row's angles (cos, sin: (T, 1, head_size/2))."""
        tf = self.tf
        shape = tf.shape(mat)
        pairs = tf.reshape(mat, [shape[0], -1, self.c.head_size // 2, 2])  # (T, heads, head_size/2, 2)
        v0, v1 = pairs[..., 0], pairs[..., 1]
        return tf.reshape(tf.stack([v0 * cos - v1 * sin, v0 * sin + v1 * cos], axis=-1), shape)

    def _batch_step(self, tokens, pos0):
        """The graph of positions pos0 .. pos0+T-1 at once, T = len(tokens): the rows after the
        final rmsnorm (T, dim). Row t is _step's position pos0 + t, with one matrix-matrix product
        per weight matrix, so each weight is read once per batch."""
        tf, c = self.tf, self.c
        mm = tf.linalg.matmul
        n_kv, hs = c.n_kv_heads, c.head_size
        kv_mul = c.n_heads // n_kv
        T = tf.shape(tokens)[0]
        rows = pos0 + tf.range(T)  # each row's position
        angle = tf.cast(rows, tf.float32)[:, None] * self.inv_freq  # (T, head_size/2)
        cos, sin = tf.cos(angle)[:, None, :], tf.sin(angle)[:, None, :]  # (T, 1, head_size/2)
        x = tf.gather(self.token_embedding, tokens)  # (T, dim)
        # row t sees cache rows 0 .. pos0+t: the earlier batches, and its own batch up to itself
        span = slice(None, pos0 + T)
        visible = (tf.range(pos0 + T)[None, :] <= rows[:, None])[None, :, None, :]  # (1, T, 1, pos0 + T)
        for l in range(c.n_layers):
            xb = self._rmsnorm_rows(x, self.rms_att[l])
            q = self._rope_rows(mm(xb, self.wq[l], transpose_b=True), cos, sin)  # (T, dim)
            k = self._rope_rows(mm(xb, self.wk[l], transpose_b=True), cos, sin)  # (T, kv_dim)
            v = mm(xb, self.wv[l], transpose_b=True)  # (T, kv_dim)
            # every row's key and value is in the cache before any row attends (automatic control
            # dependencies order the reads below after these writes)
            self.key_cache[l].scatter_update(tf.IndexedSlices(k, rows))
            self.value_cache[l].scatter_update(tf.IndexedSlices(v, rows))

            # grouped-query attention: the kv_mul query heads of a KV head and the T rows form
            # one (T * kv_mul, hs) matrix against that head's (S, hs) keys
            keys = tf.transpose(tf.reshape(self.key_cache[l][span], [-1, n_kv, hs]), [1, 0, 2])  # (kv_heads, S, hs)
            values = tf.transpose(tf.reshape(self.value_cache[l][span], [-1, n_kv, hs]), [1, 0, 2])
            qg = tf.reshape(tf.transpose(tf.reshape(q, [T, n_kv, kv_mul, hs]), [1, 0, 2, 3]), [n_kv, -1, hs])
            scores = tf.reshape(mm(qg, keys, transpose_b=True) * self.scale, [n_kv, T, kv_mul, -1])
            scores = tf.nn.softmax(tf.where(visible, scores, float("-inf")), axis=-1)  # (kv_heads, T, kv_mul, S)
            att = mm(tf.reshape(scores, [n_kv, T * kv_mul, -1]), values)  # (kv_heads, T * kv_mul, hs)
            att = tf.reshape(tf.transpose(tf.reshape(att, [n_kv, T, kv_mul, hs]), [1, 0, 2, 3]), [T, c.dim])
            x = x + mm(att, self.wo[l], transpose_b=True)

            xb = self._rmsnorm_rows(x, self.rms_ffn[l])
            hidden = tf.nn.silu(mm(xb, self.w1[l], transpose_b=True)) * mm(xb, self.w3[l], transpose_b=True)
            x = x + mm(hidden, self.w2[l], transpose_b=True)

        return self._rmsnorm_rows(x, self.rms_final)

    def forward_batch(self, tokens: list[int], pos0: int, all_logits: bool):
        """Positions pos0 .. pos0+T-1 at once, row t being forward(tokens[t], pos0 + t): the logits
        of every row (T, vocab), or of the last row only (1, vocab)."""
        tf = self.tf
        if len(tokens) == 1:  # a one-row product is the decode step's matrix-vector one
            return self.forward(tokens[0], pos0)[None]
        if not (0 <= pos0 and pos0 + len(tokens) <= self.rows):
            raise IndexError(f"positions {pos0}..{pos0 + len(tokens) - 1}: this run's cache holds {self.rows}")
        x = self.batch_step(tf.constant(tokens, tf.int32), tf.constant(pos0, tf.int32))
        # the classifier outside the graph: one matrix product over the rows asked for, and one
        # traced graph whether every row's logits are kept or only the last one's
        return tf.linalg.matmul(x if all_logits else x[-1:], self.wcls, transpose_b=True).numpy()


# ----------------------------------------------------------------------------------------------
# command line: the reference's, around this Transformer

def backend(model: Model, args) -> Transformer:
    """The CLI's hook; TF's thread pools can be sized once per process, so later calls reuse it."""
    xla = switch("POLYLLAMA_TF_XLA")
    if backend.tf is None:
        backend.tf = init_tensorflow(args.threads)
    return Transformer(model, backend.tf, xla, rows_needed(model, args), getattr(args, "batch", 512))


backend.tf = None


if __name__ == "__main__":
    sys.exit(main(port=PORT, backend=backend, formats=manifest_formats(os.path.dirname(os.path.abspath(__file__))),
                  runtime_errors=(ImportFailure,)))
