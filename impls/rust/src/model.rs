//! The model: its configuration and limits, the weights (float slices, or Q8_0 blocks for the
//! matrices of a Q8_0 GGUF), the run state, and run.c's `forward`.

use std::cell::RefCell;
use std::ops::Range;
use std::path::Path;

use crate::errors::{bad_file, Fail, Res};
use crate::gemm::{self, OutMat};
use crate::half;
use crate::kernels::{dot_lanes, fmadd, matvec, matvec_add, rmsnorm, softmax, Input, Matrix, ROW_GRAIN};
use crate::pool::{Out, Pool};
use crate::q8::Activation;
use crate::q8_gemm::{self, QRows};

// ----------------------------------------------------------------------------
// Model: configuration and the limits every reader enforces (contract section 4)

const MAX_DIM: i64 = 65536;
const MAX_HIDDEN: i64 = 262144;
const MAX_LAYERS: i64 = 1024;
const MAX_VOCAB: i64 = 1 << 20;
const MAX_SEQ: i64 = 65536;
const MAX_KV_BYTES: u128 = 4 << 30;

/// llama2.c's values, which a .bin file cannot change and a GGUF may (its keys, formats/gguf.rs).
pub const DEFAULT_THETA: f32 = 10000.0;
pub const DEFAULT_EPS: f32 = 1e-5;
pub const DEFAULT_BOS: u32 = 1;
pub const DEFAULT_EOS: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    pub dim: usize,        // transformer width
    pub hidden_dim: usize, // FFN width
    pub n_layers: usize,
    pub n_heads: usize,    // query heads
    pub n_kv_heads: usize, // key/value heads (fewer than n_heads = grouped-query attention)
    pub vocab_size: usize, // always positive here; sharing is its own flag
    pub seq_len: usize,    // maximum positions
    pub shared_classifier: bool,
    /// RoPE base (GGUF `llama.rope.freq_base`; 10000 for .bin files)
    pub theta: f32,
    /// rmsnorm's epsilon (GGUF `llama.attention.layer_norm_rms_epsilon`; 1e-5 for .bin files)
    pub eps: f32,
    /// BOS: encode's first id and the id that stops generation (GGUF's, or 1)
    pub bos: u32,
    /// EOS: encode's `eos` id (GGUF's, or 2)
    pub eos: u32,
}

impl Config {
    /// Checks raw header values (any sign, any size) in the contract's order, in 64-bit.
    #[allow(clippy::too_many_arguments)]
    pub fn validate(
        path: &Path,
        dim: i64,
        hidden_dim: i64,
        n_layers: i64,
        n_heads: i64,
        n_kv_heads: i64,
        vocab_size: i64,
        seq_len: i64,
        shared_classifier: bool,
    ) -> Res<Config> {
        let fields = [
            ("dim", dim),
            ("hidden_dim", hidden_dim),
            ("n_layers", n_layers),
            ("n_heads", n_heads),
            ("n_kv_heads", n_kv_heads),
            ("vocab_size", vocab_size),
            ("seq_len", seq_len),
        ];
        for (name, value) in fields {
            if value <= 0 {
                return bad_file(path, format!("header value {name}={value} must be positive"));
            }
        }
        let limits = [
            ("dim", dim, MAX_DIM),
            ("hidden_dim", hidden_dim, MAX_HIDDEN),
            ("n_layers", n_layers, MAX_LAYERS),
            ("vocab_size", vocab_size, MAX_VOCAB),
            ("seq_len", seq_len, MAX_SEQ),
            ("n_heads", n_heads, dim),
        ];
        for (name, value, limit) in limits {
            if value > limit {
                return bad_file(path, format!("header value {name}={value} exceeds the limit {limit}"));
            }
        }
        if dim % n_heads != 0 {
            return bad_file(path, format!("dim={dim} is not a multiple of n_heads={n_heads}"));
        }
        let head_size = dim / n_heads;
        if head_size % 2 != 0 {
            return bad_file(path, format!("head_size={head_size} must be even for RoPE"));
        }
        if n_kv_heads > n_heads || n_heads % n_kv_heads != 0 {
            return bad_file(path, format!("n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}"));
        }
        Ok(Config {
            dim: dim as usize,
            hidden_dim: hidden_dim as usize,
            n_layers: n_layers as usize,
            n_heads: n_heads as usize,
            n_kv_heads: n_kv_heads as usize,
            vocab_size: vocab_size as usize,
            seq_len: seq_len as usize,
            shared_classifier,
            theta: DEFAULT_THETA,
            eps: DEFAULT_EPS,
            bos: DEFAULT_BOS,
            eos: DEFAULT_EOS,
        })
    }

    /// Bytes of a KV cache holding `rows` positions of every layer (keys and values, float32).
    pub fn kv_bytes(&self, rows: usize) -> u128 {
        self.n_layers as u128 * rows as u128 * self.kv_dim() as u128 * 2 * 4
    }

    /// The KV cache for a run that reaches `rows` positions (validation rule 3): at most 4 GiB,
    /// else a bad-file error for `path`.
    pub fn check_kv_cache(&self, path: &Path, rows: usize) -> Res<()> {
        let bytes = self.kv_bytes(rows);
        if bytes > MAX_KV_BYTES {
            return bad_file(path, format!("KV cache of {bytes} bytes for {rows} positions exceeds the 4 GiB limit"));
        }
        Ok(())
    }

    pub fn head_size(&self) -> usize {
        self.dim / self.n_heads
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_size()
    }

    /// Floats in one layer's tensors, in run.c order: rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3.
    pub fn layer_shapes(&self) -> [(usize, usize); 9] {
        let (d, h, kv) = (self.dim, self.hidden_dim, self.kv_dim());
        [(1, d), (d, d), (kv, d), (kv, d), (d, d), (1, d), (h, d), (d, h), (h, d)]
    }

    pub fn describe(&self) -> String {
        format!(
            "dim={} hidden_dim={} n_layers={} n_heads={} n_kv_heads={} vocab_size={} seq_len={} shared_classifier={}",
            self.dim,
            self.hidden_dim,
            self.n_layers,
            self.n_heads,
            self.n_kv_heads,
            self.vocab_size,
            self.seq_len,
            if self.shared_classifier { "True" } else { "False" }
        )
    }
}

// ----------------------------------------------------------------------------
// Model: the weights, which formats::Checkpoint::weights lends from the file. Norms are always
// float32; each matrix is float32 or Q8_0 on its own (a GGUF may mix them, even within a layer).

pub struct Weights<'a> {
    pub token_embedding: Matrix<'a>, // (vocab, dim)
    pub layers: Vec<LayerWeights<'a>>,
    pub rms_final: &'a [f32], // (dim)
    pub wcls: Matrix<'a>,     // (vocab, dim)
}

pub struct LayerWeights<'a> {
    pub rms_att: &'a [f32], // (dim)
    pub wq: Matrix<'a>,     // (dim, dim)
    pub wk: Matrix<'a>,     // (kv_dim, dim)
    pub wv: Matrix<'a>,     // (kv_dim, dim)
    pub wo: Matrix<'a>,     // (dim, dim)
    pub rms_ffn: &'a [f32], // (dim)
    pub w1: Matrix<'a>,     // (hidden_dim, dim)
    pub w2: Matrix<'a>,     // (dim, hidden_dim)
    pub w3: Matrix<'a>,     // (hidden_dim, dim)
}

// ----------------------------------------------------------------------------
// Model: the run state (activations and KV cache), allocated once

pub struct RunState {
    x: Vec<f32>,           // (dim) the residual stream
    xb: Vec<f32>,          // (dim) normed input of a block, then the attention output
    hb: Vec<f32>,          // (hidden_dim) the FFN's hidden activation
    q: Vec<f32>,           // (dim) query of the current position
    rope: Vec<(f32, f32)>, // (head_size / 2) cos and sin of the current position
    kv_rows: usize,        // positions the cache holds: those the run can reach
    key_cache: Vec<f32>,   // (layer, kv_rows, kv_dim)
    value_cache: Vec<f32>, // (layer, kv_rows, kv_dim)
    logits: Vec<f32>,      // (vocab)
    xq: Activation,        // (max(dim, hidden_dim)) a matmul group's input quantized, for Q8_0 matrices
    batch: Batch,          // the batched pass's rows
}

/// The batched forward pass's scratch, for up to `rows` = min(batch, seq_len) positions at once,
/// sized once at load. Pages of the logits rows are only touched in logits mode.
struct Batch {
    rows: usize,
    x: Vec<f32>,           // (rows, dim) residual streams
    xb: Vec<f32>,          // (rows, dim) normed inputs, then the attention outputs
    q: Vec<f32>,           // (rows, dim) queries
    hb: Vec<f32>,          // (rows, hidden_dim) the FFN's silu(gate) * up
    rope: Vec<(f32, f32)>, // (rows, head_size / 2) each row's cos and sin
    logits: Vec<f32>,      // (rows, vocab)
    xq: q8_gemm::Rows,     // (rows, max(dim, hidden_dim)) quantized for Q8_0 matrices
}

impl Batch {
    fn build(c: &Config, batch: usize) -> Res<Batch> {
        let rows = batch.clamp(1, c.seq_len);
        let n = |cols: usize| rows.checked_mul(cols).ok_or_else(|| Fail::Runtime("batch buffers overflow".into()));
        Ok(Batch {
            rows,
            x: zeroed(n(c.dim)?)?,
            xb: zeroed(n(c.dim)?)?,
            q: zeroed(n(c.dim)?)?,
            hb: zeroed(n(c.hidden_dim)?)?,
            rope: vec![(1.0, 0.0); n(c.head_size() / 2)?],
            logits: zeroed(n(c.vocab_size)?)?,
            xq: q8_gemm::Rows::with_capacity(rows, c.dim.max(c.hidden_dim))?,
        })
    }
}

/// A zeroed float buffer; allocation failure is an error, not an abort.
fn zeroed(n: usize) -> Res<Vec<f32>> {
    let oom = || Fail::Runtime(format!("cannot allocate {n} floats"));
    if n == 0 {
        return Ok(Vec::new());
    }
    let layout = std::alloc::Layout::array::<f32>(n).map_err(|_| oom())?;
    // SAFETY: the layout is non-zero sized; alloc_zeroed gives pages the OS zeroes lazily, so a
    // large KV cache costs nothing until used. All-zero bits are 0.0f32, and a Vec built from the
    // pointer with this exact capacity frees it with the same layout.
    unsafe {
        let p = std::alloc::alloc_zeroed(layout) as *mut f32;
        if p.is_null() {
            return Err(oom());
        }
        Ok(Vec::from_raw_parts(p, n, n))
    }
}

impl RunState {
    /// The logits of the last position run.
    pub fn logits(&mut self) -> &mut [f32] {
        &mut self.logits
    }

    /// Positions a batched pass takes at once: `-b` clamped to 1..=seq_len.
    pub fn batch_rows(&self) -> usize {
        self.batch.rows
    }

    /// The run state for positions 0 .. kv_rows (at most seq_len; the caller checked the KV
    /// cache's size with Config::check_kv_cache), batches of up to `batch` positions.
    pub fn build(c: &Config, batch: usize, kv_rows: usize) -> Res<RunState> {
        let kv_rows = kv_rows.clamp(1, c.seq_len);
        let kv = c.n_layers * kv_rows * c.kv_dim();
        Ok(RunState {
            kv_rows,
            x: zeroed(c.dim)?,
            xb: zeroed(c.dim)?,
            hb: zeroed(c.hidden_dim)?,
            q: zeroed(c.dim)?,
            rope: vec![(1.0, 0.0); c.head_size() / 2],
            key_cache: zeroed(kv)?,
            value_cache: zeroed(kv)?,
            logits: zeroed(c.vocab_size)?,
            xq: Activation::with_capacity(c.dim.max(c.hidden_dim)),
            batch: Batch::build(c, batch)?,
        })
    }
}

/// Everything `forward` reads and writes, bundled for the generation loops.
pub struct Model<'a> {
    pub config: Config,
    pub weights: Weights<'a>,
    pub state: RunState,
}

thread_local! {
    /// Each thread's attention scores for one head, (pos + 1) long.
    static ATT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

// ----------------------------------------------------------------------------
// Forward pass (run.c's `forward`): one token at one position, the logits back.

pub fn forward<'s>(
    c: &Config,
    w: &Weights,
    s: &'s mut RunState,
    pool: &Pool,
    token: usize,
    pos: usize,
) -> &'s mut [f32] {
    let (dim, hidden, hs) = (c.dim, c.hidden_dim, c.head_size());
    let kv_dim = c.kv_dim();
    let kv_mul = c.n_heads / c.n_kv_heads; // query heads per KV head
    assert!(pos < s.kv_rows, "the position fits the cache");

    w.token_embedding.row_into(token, &mut s.x);

    // RoPE angles depend on the position within the head only: one table per token
    for (j, cs) in s.rope.iter_mut().enumerate() {
        let freq = 1.0 / c.theta.powf((2 * j) as f32 / hs as f32);
        let (sin, cos) = (pos as f32 * freq).sin_cos();
        *cs = (cos, sin);
    }

    for (l, lw) in w.layers.iter().enumerate() {
        rmsnorm(&mut s.xb, &s.x, lw.rms_att, c.eps);

        // q, k, v in one job; k and v go straight into the cache at (l, pos)
        let at = (l * s.kv_rows + pos) * kv_dim;
        {
            let q = Out::new(&mut s.q);
            let k = Out::new(&mut s.key_cache[at..at + kv_dim]);
            let v = Out::new(&mut s.value_cache[at..at + kv_dim]);
            let xb = Input::new(&s.xb, &mut s.xq, &[lw.wq, lw.wk, lw.wv]);
            let segments =
                [(q, lw.wq, 0, dim), (k, lw.wk, dim, dim + kv_dim), (v, lw.wv, dim + kv_dim, dim + 2 * kv_dim)];
            pool.run(dim + 2 * kv_dim, ROW_GRAIN, &|mine| {
                for (out, mat, lo, hi) in segments {
                    let (a, b) = (mine.start.max(lo), mine.end.min(hi));
                    if a < b {
                        // SAFETY: this thread owns rows [a, b) of the fused q/k/v output
                        let dst = unsafe { out.part(a - lo..b - lo) };
                        mat.rows(xb, a - lo..b - lo, |i, v| dst[i] = v);
                    }
                }
            });
        }

        // RoPE: rotate adjacent pairs of q and k by the position's angles
        let k = &mut s.key_cache[at..at + kv_dim];
        for i in (0..dim).step_by(2) {
            let (cos, sin) = s.rope[(i % hs) / 2];
            let (q0, q1) = (s.q[i], s.q[i + 1]);
            s.q[i] = q0 * cos - q1 * sin;
            s.q[i + 1] = q0 * sin + q1 * cos;
            if i < kv_dim {
                let (k0, k1) = (k[i], k[i + 1]);
                k[i] = k0 * cos - k1 * sin;
                k[i + 1] = k0 * sin + k1 * cos;
            }
        }

        // multi-head attention over positions 0..=pos, heads split across the pool
        {
            let xb = Out::new(&mut s.xb);
            let (q, kc, vc) = (&s.q, &s.key_cache, &s.value_cache);
            let layer = l * s.kv_rows * kv_dim;
            let scale = 1.0 / (hs as f32).sqrt();
            pool.run(c.n_heads, 1, &|heads| {
                ATT.with(|cell| {
                    let mut att = cell.borrow_mut();
                    if att.len() < pos + 1 {
                        att.resize(pos + 1, 0.0);
                    }
                    let att = &mut att[..pos + 1];
                    for h in heads.clone() {
                        let qh = &q[h * hs..(h + 1) * hs];
                        let kvo = (h / kv_mul) * hs; // grouped-query: head h reads KV head h / kv_mul
                        for (ti, a) in att.iter_mut().enumerate() {
                            let base = layer + ti * kv_dim + kvo;
                            *a = dot_lanes::<8>(qh, &kc[base..base + hs]) * scale;
                        }
                        softmax(att);
                        // SAFETY: this thread owns these heads, so these xb entries
                        let out = unsafe { xb.part(h * hs..(h + 1) * hs) };
                        out.fill(0.0);
                        for (ti, &a) in att.iter().enumerate() {
                            let base = layer + ti * kv_dim + kvo;
                            for (o, &v) in out.iter_mut().zip(&vc[base..base + hs]) {
                                *o = fmadd(a, v, *o);
                            }
                        }
                    }
                });
            });
        }

        // x += wo @ attention output (dim, dim)
        matvec_add(pool, &mut s.x, lw.wo, Input::new(&s.xb, &mut s.xq, &[lw.wo]));

        // FFN: hb = silu(w1 @ xb) * (w3 @ xb), both matmuls in one job; x += w2 @ hb
        rmsnorm(&mut s.xb, &s.x, lw.rms_ffn, c.eps);
        {
            let hb = Out::new(&mut s.hb);
            let xb = Input::new(&s.xb, &mut s.xq, &[lw.w1, lw.w3]);
            pool.run(hidden, ROW_GRAIN, &|r| {
                // SAFETY: this thread owns rows r of hb
                let dst = unsafe { hb.part(r.clone()) };
                lw.w1.rows(xb, r.clone(), |i, gate| dst[i] = gate / (1.0 + (-gate).exp()));
                lw.w3.rows(xb, r, |i, up| dst[i] *= up);
            });
        }
        matvec_add(pool, &mut s.x, lw.w2, Input::new(&s.hb, &mut s.xq, &[lw.w2]));
    }

    rmsnorm(&mut s.xb, &s.x, w.rms_final, c.eps);
    matvec(pool, &mut s.logits, w.wcls, Input::new(&s.xb, &mut s.xq, &[w.wcls])); // (vocab, dim)
    &mut s.logits
}

// ----------------------------------------------------------------------------
// The batched forward pass (contract 2): positions p0 .. p0 + T at once, row t being
// forward(tokens[t], p0 + t). Each weight matrix is read once per batch, not once per position.

/// Which rows' logits a batched pass computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    None,
    Last,
    All,
}

/// A batch's activation rows for a group of products: the floats, and the rows quantized when
/// a matrix of the group is Q8_0 (once for all of them; F16 and BF16 matrices take the floats).
#[derive(Clone, Copy)]
struct BatchInput<'a> {
    x: &'a [f32],
    t: usize,
    d: usize,
    q: Option<QRows<'a>>,
}

impl<'a> BatchInput<'a> {
    fn new(
        pool: &Pool,
        x: &'a [f32],
        t: usize,
        d: usize,
        buf: &'a mut q8_gemm::Rows,
        group: &[Matrix],
    ) -> BatchInput<'a> {
        let q = group.iter().any(Matrix::is_q8).then(|| buf.quantize(pool, x, t, d));
        BatchInput { x, t, d, q }
    }
}

/// W[r] . X[t] for the weight rows `rows` and every row t: put(t, r - rows.start, value).
#[inline(always)]
fn batch_rows(m: Matrix, x: BatchInput, rows: Range<usize>, put: impl FnMut(usize, usize, f32)) {
    match m {
        Matrix::F32(w) => gemm::gemm_rows(gemm::Kernel::best(), w, x.x, x.d, x.t, rows, put),
        Matrix::Q8(w) => {
            let q = x.q.expect("a Q8_0 matrix gets quantized rows");
            q8_gemm::gemm_rows(q8_gemm::Kernel::best(), w, q, rows, put)
        }
        Matrix::Half(ty, w) => half::gemm_rows(ty, w, x.x, x.d, x.t, rows, put),
    }
}

/// Query rows per item of the batched attention.
const ATT_ROWS: usize = 16;

/// Weight rows per claimable chunk of a batched product: each thread takes whole blocks of
/// weight rows, so it streams its own share of the weights once per batch.
const GEMM_GRAIN: usize = 16;

/// out = X @ W^T (or out += it), (t, n): the pool splits W's n rows once.
fn batch_product(pool: &Pool, m: Matrix, x: BatchInput, out: OutMat, add: bool, n: usize) {
    pool.run(n, GEMM_GRAIN, &|r| {
        let base = r.start;
        batch_rows(m, x, r, |t, i, v| {
            // SAFETY: this thread owns weight rows r, so these output columns
            let o = unsafe { out.at(t, base + i) };
            if add {
                *o += v;
            } else {
                *o = v;
            }
        });
    });
}

pub fn forward_batch<'s>(
    c: &Config,
    w: &Weights,
    s: &'s mut RunState,
    pool: &Pool,
    tokens: &[u32],
    p0: usize,
    want: Logits,
) -> &'s [f32] {
    let t = tokens.len();
    let (dim, hidden, hs, vocab) = (c.dim, c.hidden_dim, c.head_size(), c.vocab_size);
    let kv_dim = c.kv_dim();
    let kv_mul = c.n_heads / c.n_kv_heads; // query heads per KV head
    let b = &mut s.batch;
    assert!(t >= 1 && t <= b.rows && p0 + t <= s.kv_rows, "a batch fits the scratch and the cache");

    for (i, &tok) in tokens.iter().enumerate() {
        w.token_embedding.row_into(tok as usize, &mut b.x[i * dim..(i + 1) * dim]);
    }
    // each row's RoPE angles, as forward computes them for its position
    let half = hs / 2;
    for i in 0..t {
        let pos = p0 + i;
        for (j, cs) in b.rope[i * half..(i + 1) * half].iter_mut().enumerate() {
            let freq = 1.0 / c.theta.powf((2 * j) as f32 / hs as f32);
            let (sin, cos) = (pos as f32 * freq).sin_cos();
            *cs = (cos, sin);
        }
    }

    for (l, lw) in w.layers.iter().enumerate() {
        for i in 0..t {
            rmsnorm(&mut b.xb[i * dim..(i + 1) * dim], &b.x[i * dim..(i + 1) * dim], lw.rms_att, c.eps);
        }

        // Q, K, V in one job; K and V go straight into the cache at (l, p0 .. p0 + t)
        let at = (l * s.kv_rows + p0) * kv_dim;
        {
            let xin = BatchInput::new(pool, &b.xb[..t * dim], t, dim, &mut b.xq, &[lw.wq, lw.wk, lw.wv]);
            let q = OutMat::new(&mut b.q[..t * dim], dim);
            let k = OutMat::new(&mut s.key_cache[at..at + t * kv_dim], kv_dim);
            let v = OutMat::new(&mut s.value_cache[at..at + t * kv_dim], kv_dim);
            let segments =
                [(q, lw.wq, 0, dim), (k, lw.wk, dim, dim + kv_dim), (v, lw.wv, dim + kv_dim, dim + 2 * kv_dim)];
            pool.run(dim + 2 * kv_dim, GEMM_GRAIN, &|mine| {
                for (out, mat, lo, hi) in segments {
                    let (a, e) = (mine.start.max(lo), mine.end.min(hi));
                    if a < e {
                        // SAFETY: this thread owns rows [a, e) of the fused output
                        batch_rows(mat, xin, a - lo..e - lo, |tt, i, val| unsafe { *out.at(tt, a - lo + i) = val });
                    }
                }
            });
        }

        // RoPE on every row with its own position; every row's K is in the cache before any
        // row attends
        for i in 0..t {
            let rope = &b.rope[i * half..(i + 1) * half];
            let q = &mut b.q[i * dim..(i + 1) * dim];
            let k = &mut s.key_cache[at + i * kv_dim..at + (i + 1) * kv_dim];
            for j in (0..dim).step_by(2) {
                let (cos, sin) = rope[(j % hs) / 2];
                let (q0, q1) = (q[j], q[j + 1]);
                q[j] = q0 * cos - q1 * sin;
                q[j + 1] = q0 * sin + q1 * cos;
                if j < kv_dim {
                    let (k0, k1) = (k[j], k[j + 1]);
                    k[j] = k0 * cos - k1 * sin;
                    k[j + 1] = k0 * sin + k1 * cos;
                }
            }
        }

        // causal attention, split across the pool by (block of rows, head): one block's scores
        // against the keys are a small matrix product (the float32 kernel, keys as its weight
        // rows), so each key is loaded once per block, not once per row. item = head * blocks +
        // block, so a chunk of items holds rows early and late, short and long.
        {
            let xb = OutMat::new(&mut b.xb[..t * dim], dim);
            let (q, kc, vc) = (&b.q, &s.key_cache, &s.value_cache);
            let layer = l * s.kv_rows * kv_dim;
            let scale = 1.0 / (hs as f32).sqrt();
            let blocks = t.div_ceil(ATT_ROWS);
            pool.run(blocks * c.n_heads, 1, &|items| {
                ATT.with(|cell| {
                    let mut buf = cell.borrow_mut();
                    for item in items {
                        let (h, blk) = (item / blocks, item % blocks);
                        let (i0, i1) = (blk * ATT_ROWS, ((blk + 1) * ATT_ROWS).min(t));
                        let keys = p0 + i1; // the last row attends to positions 0 .. p0 + i1 - 1
                        if buf.len() < ATT_ROWS * keys {
                            buf.resize(ATT_ROWS * keys, 0.0);
                        }
                        let kvo = (h / kv_mul) * hs; // grouped-query: head h reads KV head h / kv_mul
                        let k_rows = &kc[layer + kvo..layer + (keys - 1) * kv_dim + kvo + hs];
                        let q_rows = &q[i0 * dim + h * hs..(i1 - 1) * dim + (h + 1) * hs];
                        // scores (row, key) for keys 0 .. keys; a row's keys past its own
                        // position are computed and never read
                        gemm::gemm_rows_strided(
                            gemm::Kernel::best(),
                            (k_rows, kv_dim),
                            (q_rows, dim),
                            hs,
                            i1 - i0,
                            0..keys,
                            |r, key, v| buf[r * keys + key] = v * scale,
                        );
                        for i in i0..i1 {
                            let att = &mut buf[(i - i0) * keys..(i - i0) * keys + p0 + i + 1];
                            softmax(att);
                            // SAFETY: this thread owns the pair (i, h), so these xb entries
                            let out = unsafe { xb.part(i, h * hs..(h + 1) * hs) };
                            out.fill(0.0);
                            for (ti, &a) in att.iter().enumerate() {
                                let base = layer + ti * kv_dim + kvo;
                                for (o, &v) in out.iter_mut().zip(&vc[base..base + hs]) {
                                    *o = fmadd(a, v, *o);
                                }
                            }
                        }
                    }
                });
            });
        }

        // X += ATT @ wo^T
        let xin = BatchInput::new(pool, &b.xb[..t * dim], t, dim, &mut b.xq, &[lw.wo]);
        batch_product(pool, lw.wo, xin, OutMat::new(&mut b.x[..t * dim], dim), true, dim);

        // FFN: H = silu(XB @ w1^T) * (XB @ w3^T), both products in one job; X += H @ w2^T
        for i in 0..t {
            rmsnorm(&mut b.xb[i * dim..(i + 1) * dim], &b.x[i * dim..(i + 1) * dim], lw.rms_ffn, c.eps);
        }
        {
            let xin = BatchInput::new(pool, &b.xb[..t * dim], t, dim, &mut b.xq, &[lw.w1, lw.w3]);
            let hb = OutMat::new(&mut b.hb[..t * hidden], hidden);
            pool.run(hidden, GEMM_GRAIN, &|r| {
                let base = r.start;
                // SAFETY (both): this thread owns weight rows r, so these columns of hb
                batch_rows(lw.w1, xin, r.clone(), |tt, i, gate| unsafe {
                    *hb.at(tt, base + i) = gate / (1.0 + (-gate).exp())
                });
                batch_rows(lw.w3, xin, r, |tt, i, up| unsafe { *hb.at(tt, base + i) *= up });
            });
        }
        let xin = BatchInput::new(pool, &b.hb[..t * hidden], t, hidden, &mut b.xq, &[lw.w2]);
        batch_product(pool, lw.w2, xin, OutMat::new(&mut b.x[..t * dim], dim), true, dim);
    }

    match want {
        Logits::None => &s.logits[..0],
        Logits::Last => {
            // one row: the one-token classifier
            rmsnorm(&mut s.xb, &b.x[(t - 1) * dim..t * dim], w.rms_final, c.eps);
            matvec(pool, &mut s.logits, w.wcls, Input::new(&s.xb, &mut s.xq, &[w.wcls]));
            &s.logits
        }
        Logits::All => {
            for i in 0..t {
                rmsnorm(&mut b.xb[i * dim..(i + 1) * dim], &b.x[i * dim..(i + 1) * dim], w.rms_final, c.eps);
            }
            let xin = BatchInput::new(pool, &b.xb[..t * dim], t, dim, &mut b.xq, &[w.wcls]);
            batch_product(pool, w.wcls, xin, OutMat::new(&mut b.logits[..t * vocab], vocab), false, vocab);
            &b.logits[..t * vocab]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::read_checkpoint;
    use crate::testutil::{golden, model_file, quantize_q8_0};
    use crate::tokenizer::{printable, Tokenizer};

    /// What the port prints for a greedy run: generate's loop (force the prompt, argmax, stop
    /// at BOS, printable pieces), then the closing newline.
    fn greedy_text(
        c: &Config,
        w: &Weights,
        tokenizer: &Tokenizer,
        threads: usize,
        prompt: &str,
        steps: usize,
    ) -> String {
        let Ok(pool) = Pool::build(threads) else { panic!("the pool starts") };
        let Ok(mut state) = RunState::build(c, 1, c.seq_len) else { panic!("the run state fits") };
        let ids = tokenizer.encode(prompt.as_bytes(), true, false);
        let mut text = Vec::new();
        let mut token = ids[0];
        for pos in 0..steps {
            let logits = forward(c, w, &mut state, &pool, token as usize, pos);
            let next = match ids.get(pos + 1) {
                Some(&forced) => forced,
                None => (0..logits.len()).fold(0, |best, i| if logits[i] > logits[best] { i } else { best }) as u32,
            };
            if next == c.bos {
                break; // BOS delimits sequences
            }
            let piece = tokenizer.decode(token, next);
            if printable(piece) {
                text.extend_from_slice(piece);
            }
            token = next;
        }
        pool.free();
        String::from_utf8_lossy(&text).into_owned() + "\n"
    }

    /// stories260K greedy at one and two threads, from BOS and from a prompt: the golden texts.
    #[test]
    #[cfg_attr(not(polyllama_models), ignore = "needs stories260K.bin and tok512.bin in POLYLLAMA_MODEL_PATH")]
    fn stories260k_greedy_is_the_references() {
        let (model, tok) = (model_file("stories260K.bin"), model_file("tok512.bin"));
        let Ok(ckpt) = read_checkpoint(Path::new(&model)) else { panic!("stories260K.bin reads") };
        let c = ckpt.config;
        let Ok(w) = ckpt.weights() else { panic!("its weights are in bounds") };
        let Ok(tokenizer) = Tokenizer::load(Path::new(&tok), c.vocab_size) else { panic!("tok512.bin loads") };
        for threads in [1, 2] {
            let text = greedy_text(&c, &w, &tokenizer, threads, "", 256);
            assert_eq!(text, golden("stories260K.f32.greedy.txt"), "at -j {threads}");
            let text = greedy_text(&c, &w, &tokenizer, threads, "Once upon a time, there was a", 96);
            assert_eq!(text, golden("stories260K.f32.prompt.txt"), "at -j {threads}");
        }
    }

    /// stories260K with every matrix the converter writes as Q8_0 (`invoke models.convert --type
    /// q8_0`: rows a multiple of 32 long, so not ffn_down, whose rows are hidden_dim = 172)
    /// quantized here as it does, then greedy from BOS at one and two threads: the golden text
    /// of the converted file.
    #[test]
    #[cfg_attr(not(polyllama_models), ignore = "needs stories260K.bin and tok512.bin in POLYLLAMA_MODEL_PATH")]
    fn stories260k_q8_0_greedy_is_the_references() {
        let (model, tok) = (model_file("stories260K.bin"), model_file("tok512.bin"));
        let Ok(ckpt) = read_checkpoint(Path::new(&model)) else { panic!("stories260K.bin reads") };
        let c = ckpt.config;
        let Ok(w) = ckpt.weights() else { panic!("its weights are in bounds") };
        let Ok(tokenizer) = Tokenizer::load(Path::new(&tok), c.vocab_size) else { panic!("tok512.bin loads") };
        let store = Q8Store::new(&c, &w);
        let weights = store.weights(&c, &w);
        for threads in [1, 2] {
            let text = greedy_text(&c, &weights, &tokenizer, threads, "", 128);
            assert_eq!(text, golden("stories260K.q8_0.greedy.txt"), "at -j {threads}");
        }
    }

    /// stories260K's matrices as the converter writes them to Q8_0 (`invoke models.convert
    /// --type q8_0`: rows a multiple of 32 long, so not ffn_down, whose rows are hidden_dim = 172).
    struct Q8Store {
        embedding: Vec<u8>,
        classifier: Option<Vec<u8>>,
        layers: Vec<[Option<Vec<u8>>; 7]>,
    }

    impl Q8Store {
        fn new(c: &Config, w: &Weights) -> Q8Store {
            let q8 = |m: Matrix, cols: usize| {
                cols.is_multiple_of(32).then(|| quantize_q8_0(m.f32().expect("float32 weights")))
            };
            let (d, h) = (c.dim, c.hidden_dim);
            let layers: Vec<[Option<Vec<u8>>; 7]> = w
                .layers
                .iter()
                .map(|l| [q8(l.wq, d), q8(l.wk, d), q8(l.wv, d), q8(l.wo, d), q8(l.w1, d), q8(l.w2, h), q8(l.w3, d)])
                .collect();
            assert!(layers.iter().all(|q| q[5].is_none() && q.iter().filter(|m| m.is_some()).count() == 6));
            Q8Store {
                embedding: q8(w.token_embedding, d).expect("dim is a multiple of 32"),
                classifier: if c.shared_classifier { None } else { q8(w.wcls, d) },
                layers,
            }
        }

        fn weights<'x>(&'x self, c: &Config, w: &Weights<'x>) -> Weights<'x> {
            fn pick<'a>(f32: Matrix<'a>, q8: &'a Option<Vec<u8>>) -> Matrix<'a> {
                q8.as_deref().map_or(f32, Matrix::Q8)
            }
            Weights {
                token_embedding: Matrix::Q8(&self.embedding),
                layers: w
                    .layers
                    .iter()
                    .zip(&self.layers)
                    .map(|(l, q)| LayerWeights {
                        rms_att: l.rms_att,
                        wq: pick(l.wq, &q[0]),
                        wk: pick(l.wk, &q[1]),
                        wv: pick(l.wv, &q[2]),
                        wo: pick(l.wo, &q[3]),
                        rms_ffn: l.rms_ffn,
                        w1: pick(l.w1, &q[4]),
                        w2: pick(l.w2, &q[5]),
                        w3: pick(l.w3, &q[6]),
                    })
                    .collect(),
                rms_final: w.rms_final,
                wcls: if c.shared_classifier { Matrix::Q8(&self.embedding) } else { pick(w.wcls, &self.classifier) },
            }
        }
    }

    /// Every row of forward_batch's logits (and its last-row logits) against forward's, one
    /// position at a time, within the contract's tolerance and with the same argmax, for batch
    /// sizes that leave remainders and at one and two threads. `tol` relative to 1 + max |logit|:
    /// 1e-4 for float32; for Q8_0 the contract's bound after a rounding near a tie, 5e-2 (a
    /// batched kernel sums in another order, which can round an activation near a tie the other
    /// way), with the argmax checked only where the two best logits are further apart than
    /// twice that.
    fn batched_logits_match_one_position(c: &Config, w: &Weights, label: &str, tol: f32) {
        let (vocab, n) = (c.vocab_size, 40.min(c.seq_len));
        let ids: Vec<u32> = (0..n).map(|i| if i == 0 { 1 } else { ((7 * i + 300) % vocab) as u32 }).collect();
        let Ok(pool) = Pool::build(1) else { panic!("the pool starts") };
        let Ok(mut state) = RunState::build(c, 1, c.seq_len) else { panic!("the run state fits") };
        let want: Vec<Vec<f32>> = ids
            .iter()
            .enumerate()
            .map(|(pos, &id)| forward(c, w, &mut state, &pool, id as usize, pos).to_vec())
            .collect();
        pool.free();
        let argmax = |r: &[f32]| (0..r.len()).fold(0, |b, i| if r[i] > r[b] { i } else { b });
        let close = |got: &[f32], want: &[f32], what: &str| {
            let scale = 1.0 + want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let diff = got.iter().zip(want).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff <= tol * scale, "{label} {what}: {diff} of {scale}");
            let best = argmax(want);
            let second = (0..want.len()).filter(|&i| i != best).fold(f32::NEG_INFINITY, |m, i| m.max(want[i]));
            if want[best] - second > 2.0 * tol * scale || tol <= 1e-4 {
                assert_eq!(argmax(got), best, "{label} {what}: argmax");
            }
        };
        for (batch, threads) in [(2, 1), (7, 1), (16, 2), (33, 1), (n, 1), (n, 2), (1000, 2)] {
            let Ok(pool) = Pool::build(threads) else { panic!("the pool starts") };
            let Ok(mut state) = RunState::build(c, batch, c.seq_len) else { panic!("the run state fits") };
            let rows = state.batch_rows();
            assert_eq!(rows, batch.min(c.seq_len));
            let mut p0 = 0;
            while p0 < n {
                let chunk = &ids[p0..(p0 + rows).min(n)];
                let t = chunk.len();
                let what = |i: usize| format!("-b {batch} -j {threads} position {}", p0 + i);
                if t > 1 {
                    let all = forward_batch(c, w, &mut state, &pool, chunk, p0, Logits::All).to_vec();
                    for i in 0..t {
                        close(&all[i * vocab..(i + 1) * vocab], &want[p0 + i], &what(i));
                    }
                    // the same batch again (its cache rows rewritten), the last row's logits only
                    let last = forward_batch(c, w, &mut state, &pool, chunk, p0, Logits::Last).to_vec();
                    close(&last, &want[p0 + t - 1], &format!("{} (last row only)", what(t - 1)));
                } else {
                    close(forward(c, w, &mut state, &pool, chunk[0] as usize, p0), &want[p0], &what(0));
                }
                p0 += t;
            }
            pool.free();
        }
    }

    #[test]
    #[cfg_attr(not(polyllama_models), ignore = "needs stories260K.bin in POLYLLAMA_MODEL_PATH")]
    fn stories260k_batched_logits_are_one_positions() {
        let model = model_file("stories260K.bin");
        let Ok(ckpt) = read_checkpoint(Path::new(&model)) else { panic!("stories260K.bin reads") };
        let c = ckpt.config;
        let Ok(w) = ckpt.weights() else { panic!("its weights are in bounds") };
        batched_logits_match_one_position(&c, &w, "f32", 1e-4);
        let store = Q8Store::new(&c, &w);
        batched_logits_match_one_position(&c, &store.weights(&c, &w), "q8_0", 5e-2);
    }

    #[test]
    fn config_limits() {
        assert!(Config::validate(Path::new("m"), 64, 172, 5, 8, 4, 512, 512, true).is_ok());
        assert!(Config::validate(Path::new("m"), 0, 172, 5, 8, 4, 512, 512, true).is_err());
        assert!(Config::validate(Path::new("m"), 64, 172, 5, 8, 3, 512, 512, true).is_err()); // 8 % 3
        assert!(Config::validate(Path::new("m"), 66, 172, 5, 6, 6, 512, 512, true).is_err()); // head_size 11
        // the KV cache is checked for the positions a run reaches, not for seq_len
        let Ok(big) = Config::validate(Path::new("m"), 65536, 172, 1024, 2, 2, 512, 65536, true) else {
            panic!("a 4 GiB-per-position model is a valid header")
        };
        assert!(big.check_kv_cache(Path::new("m"), 4).is_ok());
        assert!(big.check_kv_cache(Path::new("m"), 8).is_ok()); // exactly 4 GiB
        assert!(big.check_kv_cache(Path::new("m"), 9).is_err());
        assert!(Config::validate(Path::new("m"), 64, 172, 5, 128, 4, 512, 512, true).is_err());
        // n_heads > dim
    }
}
