//! polyllama, the Rust port: inference for Karpathy's llama2.c model family (Llama 2
//! architecture, fp32), written after run.c and following docs/port-contract.md.
//!
//! One file, top to bottom like run.c: errors, model (config, checkpoint readers, weights,
//! state), thread pool, forward pass, tokenizer, sampler, generation, command line, tests.
//! Everything read from a file or a flag is checked before it is trusted: bad input ends in one
//! `error:` line and the contract's exit code, never in a panic.

use std::cell::{RefCell, UnsafeCell};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

#[cfg(target_endian = "big")]
compile_error!("polyllama reads little-endian float32 weights in place; big-endian hosts are not supported");

const PORT: &str = "rust";
const USAGE: &str = "usage: run <checkpoint> [-z tokenizer] [-t temperature] [-p topp] [-s seed] [-n steps] \
[-i prompt] [-j threads] [-m generate|logits] [-o file] [-k ids] [-e 0|1]";

// ----------------------------------------------------------------------------
// Errors: each one becomes a single `error:` line and an exit code (contract section 3)

#[derive(Debug)]
enum Fail {
    /// a bad flag or value (exit 2)
    Usage(String),
    /// a missing, unreadable or malformed model or tokenizer file (exit 3)
    File(String),
    /// allocation, thread or output failures (exit 1)
    Runtime(String),
}

impl Fail {
    fn exit_code(&self) -> i32 {
        match self {
            Fail::Runtime(_) => 1,
            Fail::Usage(_) => 2,
            Fail::File(_) => 3,
        }
    }
}

type Res<T> = Result<T, Fail>;

fn bad_file<T>(path: &Path, problem: impl std::fmt::Display) -> Res<T> {
    Err(Fail::File(format!("{}: {problem}", path.display())))
}

fn usage<T>(msg: impl Into<String>) -> Res<T> {
    Err(Fail::Usage(msg.into()))
}

// ----------------------------------------------------------------------------
// Model: configuration and the limits every reader enforces (contract section 4)

const MAX_DIM: i64 = 65536;
const MAX_HIDDEN: i64 = 262144;
const MAX_LAYERS: i64 = 1024;
const MAX_VOCAB: i64 = 1 << 20;
const MAX_SEQ: i64 = 65536;
const MAX_KV_BYTES: i64 = 4 << 30;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Config {
    dim: usize,        // transformer width
    hidden_dim: usize, // FFN width
    n_layers: usize,
    n_heads: usize,    // query heads
    n_kv_heads: usize, // key/value heads (fewer than n_heads = grouped-query attention)
    vocab_size: usize, // always positive here; sharing is its own flag
    seq_len: usize,    // maximum positions
    shared_classifier: bool,
}

impl Config {
    /// Checks raw header values (any sign, any size) in the contract's order, in 64-bit.
    #[allow(clippy::too_many_arguments)]
    fn validate(
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
        let kv_bytes = n_layers * seq_len * n_kv_heads * head_size * 2 * 4;
        if kv_bytes > MAX_KV_BYTES {
            return bad_file(path, format!("KV cache of {kv_bytes} bytes exceeds the 4 GiB limit"));
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
        })
    }

    fn head_size(&self) -> usize {
        self.dim / self.n_heads
    }

    fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_size()
    }

    /// Floats in one layer's tensors, in run.c order: rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3.
    fn layer_shapes(&self) -> [(usize, usize); 9] {
        let (d, h, kv) = (self.dim, self.hidden_dim, self.kv_dim());
        [(1, d), (d, d), (kv, d), (kv, d), (d, d), (1, d), (h, d), (d, h), (h, d)]
    }

    /// Every weight float of the model (u128: computed before anything is trusted).
    fn weight_count(&self) -> u128 {
        let per_layer: u128 = self.layer_shapes().iter().map(|&(r, c)| r as u128 * c as u128).sum();
        let embed = self.vocab_size as u128 * self.dim as u128;
        let wcls = if self.shared_classifier { 0 } else { embed };
        embed + self.n_layers as u128 * per_layer + self.dim as u128 + wcls
    }

    fn describe(&self) -> String {
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
// Model: checkpoint files. The weights stay in the page cache, memory-mapped.

/// Where the weight floats live: the mapped file, or (GGUF data not 4-byte aligned) one copy.
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<f32>),
}

impl Storage {
    fn floats(&self) -> &[f32] {
        match self {
            // SAFETY: a mapping starts on a page boundary, so it is aligned for f32, and every
            // bit pattern is a valid f32; the length is rounded down to whole floats.
            Storage::Mapped(m) => unsafe { std::slice::from_raw_parts(m.as_ptr() as *const f32, m.len() / 4) },
            Storage::Owned(v) => v,
        }
    }
}

/// A tensor as a float range of the storage.
#[derive(Clone, Copy, Debug, Default)]
struct Tensor {
    off: usize,
    len: usize,
}

/// One layer's tensors, as located in the file.
#[derive(Clone, Copy, Debug, Default)]
struct LayerTensors {
    rms_att: Tensor, // (dim)
    wq: Tensor,      // (dim, dim)
    wk: Tensor,      // (kv_dim, dim)
    wv: Tensor,      // (kv_dim, dim)
    wo: Tensor,      // (dim, dim)
    rms_ffn: Tensor, // (dim)
    w1: Tensor,      // (hidden_dim, dim)
    w2: Tensor,      // (dim, hidden_dim)
    w3: Tensor,      // (hidden_dim, dim)
}

impl LayerTensors {
    fn from_array(t: [Tensor; 9]) -> LayerTensors {
        let [rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3] = t;
        LayerTensors { rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3 }
    }
}

/// The tokenizer's pieces and scores, from tokenizer.bin or embedded in a GGUF file.
struct Vocab {
    pieces: Vec<Vec<u8>>,
    scores: Vec<f64>,
}

/// A validated model file: config, where each tensor is, and (GGUF) the tokenizer.
struct Checkpoint {
    config: Config,
    storage: Storage,
    token_embedding: Tensor, // (vocab, dim)
    layers: Vec<LayerTensors>,
    rms_final: Tensor, // (dim)
    wcls: Tensor,      // (vocab, dim): the token embedding when the classifier is shared
    vocab: Option<Vocab>,
}

/// The weights as float slices, borrowed from a Checkpoint.
struct Weights<'a> {
    token_embedding: &'a [f32], // (vocab, dim)
    layers: Vec<LayerWeights<'a>>,
    rms_final: &'a [f32], // (dim)
    wcls: &'a [f32],      // (vocab, dim)
}

struct LayerWeights<'a> {
    rms_att: &'a [f32], // (dim)
    wq: &'a [f32],      // (dim, dim)
    wk: &'a [f32],      // (kv_dim, dim)
    wv: &'a [f32],      // (kv_dim, dim)
    wo: &'a [f32],      // (dim, dim)
    rms_ffn: &'a [f32], // (dim)
    w1: &'a [f32],      // (hidden_dim, dim)
    w2: &'a [f32],      // (dim, hidden_dim)
    w3: &'a [f32],      // (hidden_dim, dim)
}

const V1_MAGIC: u32 = 0x616b_3432;
const V0_HEADER_BYTES: usize = 28;
const V1_HEADER_BYTES: usize = 256;

impl Checkpoint {
    fn weights(&self) -> Res<Weights<'_>> {
        let all = self.storage.floats();
        let get = |t: Tensor| -> Res<&[f32]> {
            t.off
                .checked_add(t.len)
                .and_then(|end| all.get(t.off..end))
                .ok_or_else(|| Fail::Runtime("internal error: tensor outside the weights".into()))
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for t in &self.layers {
            layers.push(LayerWeights {
                rms_att: get(t.rms_att)?,
                wq: get(t.wq)?,
                wk: get(t.wk)?,
                wv: get(t.wv)?,
                wo: get(t.wo)?,
                rms_ffn: get(t.rms_ffn)?,
                w1: get(t.w1)?,
                w2: get(t.w2)?,
                w3: get(t.w3)?,
            });
        }
        Ok(Weights {
            token_embedding: get(self.token_embedding)?,
            layers,
            rms_final: get(self.rms_final)?,
            wcls: get(self.wcls)?,
        })
    }
}

fn open_file(path: &Path) -> Res<File> {
    match File::open(path) {
        Ok(f) => match f.metadata() {
            Ok(m) if m.is_dir() => bad_file(path, "cannot open: is a directory"),
            Ok(_) => Ok(f),
            Err(e) => bad_file(path, format!("cannot open: {}", os_problem(&e))),
        },
        Err(e) => bad_file(path, format!("cannot open: {}", os_problem(&e))),
    }
}

fn os_problem(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}

fn file_size(path: &Path, f: &File) -> Res<u64> {
    f.metadata().map(|m| m.len()).or_else(|e| bad_file(path, format!("cannot open: {}", os_problem(&e))))
}

/// Up to n bytes from the start of the file (fewer when it is shorter).
fn read_head(path: &Path, f: &mut File, n: usize) -> Res<Vec<u8>> {
    let mut head = Vec::with_capacity(n);
    Read::by_ref(f).take(n as u64).read_to_end(&mut head).or_else(|e| bad_file(path, format!("cannot read: {e}")))?;
    Ok(head)
}

fn map_file(path: &Path, f: &File) -> Res<memmap2::Mmap> {
    // populate: fault the pages in now (counted in load_s) rather than during the first tokens
    // SAFETY: the file is opened read-only; like every mmap reader we assume it is not
    // truncated underneath us while we run.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(f) }
        .or_else(|e| bad_file(path, format!("cannot map: {e}")))?;
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::WillNeed); // where MAP_POPULATE does not exist (macOS)
    Ok(map)
}

fn le_i32(b: &[u8], at: usize) -> i64 {
    i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as i64
}

/// Sniffs the format from the first bytes: GGUF magic, v1 magic, or the legacy v0 header.
fn read_checkpoint(path: &Path) -> Res<Checkpoint> {
    let mut f = open_file(path)?;
    let head = read_head(path, &mut f, 8)?;
    if head.len() >= 4 && &head[..4] == b"GGUF" {
        return read_gguf(path, &f);
    }
    if head.len() >= 4 && u32::from_le_bytes([head[0], head[1], head[2], head[3]]) == V1_MAGIC {
        return read_v1(path, &mut f);
    }
    read_v0(path, &mut f)
}

fn check_size(path: &Path, f: &File, config: &Config, expected: u128) -> Res<()> {
    let actual = file_size(path, f)?;
    if actual as u128 != expected {
        let kind = if (actual as u128) < expected { "truncated" } else { "oversized" };
        return bad_file(
            path,
            format!("{kind}: file is {actual} bytes, header ({}) implies {expected}", config.describe()),
        );
    }
    Ok(())
}

/// Hands out consecutive float ranges of a llama2.c file.
struct Cut {
    at: usize,
}

impl Cut {
    fn take(&mut self, n: usize) -> Tensor {
        let t = Tensor { off: self.at, len: n };
        self.at += n;
        t
    }

    /// A (n_layers, rows, cols) tensor, as one range per layer.
    fn layered(&mut self, c: &Config, rows: usize, cols: usize) -> Vec<Tensor> {
        (0..c.n_layers).map(|_| self.take(rows * cols)).collect()
    }
}

/// A v0 or v1 checkpoint from where its tensors lie: the two layouts differ only in order.
/// `per_layer` holds rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, each one tensor per layer.
fn mapped_checkpoint(
    path: &Path,
    f: &mut File,
    c: Config,
    token_embedding: Tensor,
    per_layer: [Vec<Tensor>; 9],
    rms_final: Tensor,
    wcls: Tensor,
) -> Res<Checkpoint> {
    let layers = (0..c.n_layers).map(|l| LayerTensors::from_array(std::array::from_fn(|i| per_layer[i][l]))).collect();
    Ok(Checkpoint {
        config: c,
        storage: Storage::Mapped(map_file(path, f)?),
        token_embedding,
        layers,
        rms_final,
        wcls,
        vocab: None,
    })
}

fn read_v0(path: &Path, f: &mut File) -> Res<Checkpoint> {
    f.rewind_or(path)?;
    let head = read_head(path, f, V0_HEADER_BYTES)?;
    if head.len() < V0_HEADER_BYTES {
        return bad_file(path, format!("truncated: {} bytes, a v0 header needs {V0_HEADER_BYTES}", head.len()));
    }
    let h: Vec<i64> = (0..7).map(|i| le_i32(&head, 4 * i)).collect();
    // a negative vocab_size marks an unshared classifier
    let c = Config::validate(path, h[0], h[1], h[2], h[3], h[4], h[5].abs(), h[6], h[5] > 0)?;
    let freq = 2 * c.seq_len as u128 * (c.head_size() / 2) as u128;
    check_size(path, f, &c, V0_HEADER_BYTES as u128 + 4 * (c.weight_count() + freq))?;

    let (d, h, kv) = (c.dim, c.hidden_dim, c.kv_dim());
    let mut cut = Cut { at: V0_HEADER_BYTES / 4 };
    let token_embedding = cut.take(c.vocab_size * d);
    let rms_att = cut.layered(&c, 1, d);
    let wq = cut.layered(&c, d, d);
    let wk = cut.layered(&c, kv, d);
    let wv = cut.layered(&c, kv, d);
    let wo = cut.layered(&c, d, d);
    let rms_ffn = cut.layered(&c, 1, d);
    let w1 = cut.layered(&c, h, d);
    let w2 = cut.layered(&c, d, h);
    let w3 = cut.layered(&c, h, d);
    let rms_final = cut.take(d);
    cut.take(c.seq_len * c.head_size()); // legacy freq_cis_real and freq_cis_imag: RoPE is computed
    let wcls = if c.shared_classifier { token_embedding } else { cut.take(c.vocab_size * d) };
    let per_layer = [rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3];
    mapped_checkpoint(path, f, c, token_embedding, per_layer, rms_final, wcls)
}

fn read_v1(path: &Path, f: &mut File) -> Res<Checkpoint> {
    f.rewind_or(path)?;
    let head = read_head(path, f, V1_HEADER_BYTES)?;
    if head.len() < V1_HEADER_BYTES {
        return bad_file(path, format!("truncated: {} bytes, a v1 header needs {V1_HEADER_BYTES}", head.len()));
    }
    let version = le_i32(&head, 4);
    if version != 1 {
        return bad_file(path, format!("unsupported llama2.c format version {version} (only 0 and 1 are fp32)"));
    }
    let h: Vec<i64> = (0..7).map(|i| le_i32(&head, 8 + 4 * i)).collect();
    let shared = head[36];
    if shared > 1 {
        return bad_file(path, format!("shared_classifier flag is {shared}, expected 0 or 1"));
    }
    let c = Config::validate(path, h[0], h[1], h[2], h[3], h[4], h[5], h[6], shared == 1)?;
    check_size(path, f, &c, V1_HEADER_BYTES as u128 + 4 * c.weight_count())?;

    // v1 puts the small vectors first, then the matrices
    let (d, h, kv) = (c.dim, c.hidden_dim, c.kv_dim());
    let mut cut = Cut { at: V1_HEADER_BYTES / 4 };
    let rms_att = cut.layered(&c, 1, d);
    let rms_ffn = cut.layered(&c, 1, d);
    let rms_final = cut.take(d);
    let token_embedding = cut.take(c.vocab_size * d);
    let wq = cut.layered(&c, d, d);
    let wk = cut.layered(&c, kv, d);
    let wv = cut.layered(&c, kv, d);
    let wo = cut.layered(&c, d, d);
    let w1 = cut.layered(&c, h, d);
    let w2 = cut.layered(&c, d, h);
    let w3 = cut.layered(&c, h, d);
    let wcls = if c.shared_classifier { token_embedding } else { cut.take(c.vocab_size * d) };
    let per_layer = [rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3];
    mapped_checkpoint(path, f, c, token_embedding, per_layer, rms_final, wcls)
}

trait RewindOr {
    fn rewind_or(&mut self, path: &Path) -> Res<()>;
}

impl RewindOr for File {
    fn rewind_or(&mut self, path: &Path) -> Res<()> {
        use std::io::Seek;
        self.rewind().or_else(|e| bad_file(path, format!("cannot read: {e}")))
    }
}

// ----------------------------------------------------------------------------
// Model: GGUF (v2/v3, all tensors F32, llama.cpp's `llama` names, tokenizer embedded)

const GGUF_MAX_ENTRIES: u64 = 65536;
const GGUF_DEFAULT_ALIGNMENT: i128 = 32;

/// A GGUF metadata value; arrays of numbers stay in the file, unparsed.
enum Value<'a> {
    Int(i128),
    Bool(bool), // not an integer, whatever its byte says
    Float(f64),
    Str(&'a [u8]),
    Strings(Vec<&'a [u8]>),
    Numbers { etype: u32, raw: &'a [u8], count: usize },
}

/// Bytes per scalar of a GGUF value type (None: not a scalar).
fn gguf_scalar_size(t: u32) -> Option<usize> {
    match t {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

/// The i-th element of a scalar array, or one scalar: (integer, float) views.
fn gguf_scalar(t: u32, b: &[u8]) -> Value<'static> {
    let u = |n: usize| -> u64 { b[..n].iter().rev().fold(0u64, |acc, &x| (acc << 8) | x as u64) };
    match t {
        0 => Value::Int(b[0] as i128),
        1 => Value::Int(b[0] as i8 as i128),
        2 => Value::Int(u(2) as u16 as i128),
        3 => Value::Int(u(2) as u16 as i16 as i128),
        4 => Value::Int(u(4) as u32 as i128),
        5 => Value::Int(u(4) as u32 as i32 as i128),
        6 => Value::Float(f32::from_bits(u(4) as u32) as f64),
        7 => Value::Bool(b[0] != 0),
        10 => Value::Int(u(8) as i128),
        11 => Value::Int(u(8) as i64 as i128),
        _ => Value::Float(f64::from_bits(u(8))),
    }
}

struct Cursor<'a> {
    path: &'a Path,
    data: &'a [u8],
    off: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> Res<&'a [u8]> {
        let left = (self.data.len() - self.off) as u64;
        if n > left {
            return bad_file(self.path, format!("truncated or corrupt: {what} runs past the end of the file"));
        }
        let s = &self.data[self.off..self.off + n as usize];
        self.off += n as usize;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Res<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Res<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    fn string(&mut self, what: &str) -> Res<&'a [u8]> {
        let n = self.u64(what)?;
        self.take(n, what)
    }

    fn value(&mut self, vtype: u32, what: &str) -> Res<Value<'a>> {
        if let Some(size) = gguf_scalar_size(vtype) {
            return Ok(gguf_scalar(vtype, self.take(size as u64, what)?));
        }
        match vtype {
            8 => Ok(Value::Str(self.string(what)?)),
            9 => {
                let etype = self.u32(what)?;
                let count = self.u64(what)?;
                if let Some(size) = gguf_scalar_size(etype) {
                    let raw = self.take(count.saturating_mul(size as u64), what)?;
                    Ok(Value::Numbers { etype, raw, count: count as usize })
                } else if etype == 8 {
                    // every string takes at least its 8-byte length: bounds the count by the file
                    let left = (self.data.len() - self.off) as u64;
                    if count.checked_mul(8).is_none_or(|n| n > left) {
                        return bad_file(
                            self.path,
                            format!("truncated or corrupt: {what} runs past the end of the file"),
                        );
                    }
                    let mut out = Vec::with_capacity(count as usize);
                    for _ in 0..count {
                        out.push(self.string(what)?);
                    }
                    Ok(Value::Strings(out))
                } else {
                    bad_file(self.path, format!("{what}: unsupported array element type {etype}"))
                }
            }
            _ => bad_file(self.path, format!("{what}: unknown value type {vtype}")),
        }
    }
}

fn gguf_int(path: &Path, kv: &HashMap<&[u8], Value>, key: &str, default: Option<i128>) -> Res<i128> {
    match kv.get(key.as_bytes()) {
        Some(Value::Int(v)) => Ok(*v),
        Some(_) => bad_file(path, format!("key {key} must be an integer")),
        None => default.map_or_else(|| bad_file(path, format!("missing required key {key}")), Ok),
    }
}

/// A name from the file as it may appear in a one-line message: escaped, and cut short.
fn shown(raw: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(raw).escape_debug().collect();
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// A header integer narrowed for Config::validate, saturating so that the limits still reject it.
fn clamp_i64(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

fn read_gguf(path: &Path, f: &File) -> Res<Checkpoint> {
    let size = file_size(path, f)?;
    let map = map_file(path, f)?;
    let mut cur = Cursor { path, data: &map[..], off: 4 };
    let version = cur.u32("version")?;
    if version != 2 && version != 3 {
        return bad_file(path, format!("unsupported GGUF version {version} (2 and 3 are read)"));
    }
    let n_tensors = cur.u64("tensor count")?;
    let n_kv = cur.u64("kv count")?;
    if n_tensors > GGUF_MAX_ENTRIES || n_kv > GGUF_MAX_ENTRIES {
        return bad_file(
            path,
            format!("implausible counts: {n_tensors} tensors, {n_kv} keys (limit {GGUF_MAX_ENTRIES})"),
        );
    }
    let mut kv: HashMap<&[u8], Value> = HashMap::new();
    for _ in 0..n_kv {
        let key = cur.string("key")?;
        let what = shown(key);
        let vtype = cur.u32(&format!("type of {what}"))?;
        let value = cur.value(vtype, &what)?;
        kv.insert(key, value);
    }
    // name -> (dims innermost first, type, offset from the data start)
    let mut infos: HashMap<&[u8], (Vec<u64>, u32, u64)> = HashMap::new();
    for _ in 0..n_tensors {
        let name = cur.string("tensor name")?;
        let what = shown(name);
        let n_dims = cur.u32(&what)?;
        if n_dims > 4 {
            return bad_file(path, format!("tensor {what} has {n_dims} dimensions"));
        }
        let dims = (0..n_dims).map(|_| cur.u64(&what)).collect::<Res<Vec<u64>>>()?;
        let ttype = cur.u32(&what)?;
        let offset = cur.u64(&what)?;
        infos.insert(name, (dims, ttype, offset));
    }

    match kv.get(&b"general.architecture"[..]) {
        Some(Value::Str(b"llama")) => {}
        Some(Value::Str(other)) => {
            return bad_file(path, format!("general.architecture is '{}', expected 'llama'", shown(other)))
        }
        _ => return bad_file(path, "general.architecture is missing, expected 'llama'"),
    }
    let align = gguf_int(path, &kv, "general.alignment", Some(GGUF_DEFAULT_ALIGNMENT))?;
    if align <= 0 || align & (align - 1) != 0 || align > 65536 {
        return bad_file(path, format!("general.alignment={align} is not a power of two up to 65536"));
    }
    let align = align as usize;
    let data_start = cur.off.div_ceil(align) * align;

    let tokens = match kv.get(&b"tokenizer.ggml.tokens"[..]) {
        Some(Value::Strings(t)) if !t.is_empty() => t,
        _ => return bad_file(path, "missing tokenizer.ggml.tokens"),
    };
    let scores: Vec<f64> = match kv.get(&b"tokenizer.ggml.scores"[..]) {
        Some(Value::Numbers { etype, raw, count }) if *count == tokens.len() => {
            numbers(*etype, raw, *count).into_iter().map(|v| v.1).collect()
        }
        _ => return bad_file(path, "tokenizer.ggml.scores missing or not one per token"),
    };
    let heads = gguf_int(path, &kv, "llama.attention.head_count", None)?;
    let c = Config::validate(
        path,
        clamp_i64(gguf_int(path, &kv, "llama.embedding_length", None)?),
        clamp_i64(gguf_int(path, &kv, "llama.feed_forward_length", None)?),
        clamp_i64(gguf_int(path, &kv, "llama.block_count", None)?),
        clamp_i64(heads),
        clamp_i64(gguf_int(path, &kv, "llama.attention.head_count_kv", Some(heads))?),
        tokens.len() as i64,
        clamp_i64(gguf_int(path, &kv, "llama.context_length", None)?),
        !infos.contains_key(&b"output.weight"[..]),
    )?;

    // Tensors are read in place when they are 4-byte aligned in the file (the usual case);
    // otherwise the data section is copied once into aligned memory.
    let base = if data_start % 4 == 0 { 0 } else { data_start };
    let tensor = |name: &str, shape: &[usize]| -> Res<Tensor> {
        let Some((dims, ttype, offset)) = infos.get(name.as_bytes()) else {
            return bad_file(path, format!("missing tensor {name}"));
        };
        if *ttype != 0 {
            return bad_file(path, format!("tensor {name} has type {ttype}; only F32 (0) is supported"));
        }
        // GGUF lists dims innermost first: a (rows, cols) matrix has dims [cols, rows]
        let want: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        if *dims != want {
            return bad_file(path, format!("tensor {name} has dims {dims:?}, expected {want:?}"));
        }
        let count: usize = shape.iter().product();
        let start = data_start as u128 + *offset as u128;
        let nbytes = 4 * count as u128;
        if offset % 4 != 0 || start + nbytes > size as u128 {
            return bad_file(path, format!("tensor {name} lies outside the file"));
        }
        Ok(Tensor { off: (start as usize - base) / 4, len: count })
    };
    let (d, h, kv_dim) = (c.dim, c.hidden_dim, c.kv_dim());
    let token_embedding = tensor("token_embd.weight", &[c.vocab_size, d])?;
    let rms_final = tensor("output_norm.weight", &[d])?;
    let wcls = if c.shared_classifier { token_embedding } else { tensor("output.weight", &[c.vocab_size, d])? };
    let mut layers = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let t = |suffix: &str, shape: &[usize]| tensor(&format!("blk.{l}.{suffix}.weight"), shape);
        layers.push(LayerTensors {
            rms_att: t("attn_norm", &[d])?,
            wq: t("attn_q", &[d, d])?,
            wk: t("attn_k", &[kv_dim, d])?,
            wv: t("attn_v", &[kv_dim, d])?,
            wo: t("attn_output", &[d, d])?,
            rms_ffn: t("ffn_norm", &[d])?,
            w1: t("ffn_gate", &[h, d])?,
            w2: t("ffn_down", &[d, h])?,
            w3: t("ffn_up", &[h, d])?,
        });
    }

    // tokens spell spaces as U+2581; BOS/EOS control tokens get llama2.c's pieces back
    let types: Option<Vec<i128>> = match kv.get(&b"tokenizer.ggml.token_type"[..]) {
        None => None,
        Some(Value::Numbers { etype, raw, count }) if matches!(etype, 0..=5 | 10 | 11) => {
            (*count == tokens.len()).then(|| numbers(*etype, raw, *count).into_iter().map(|v| v.0).collect())
        }
        Some(_) => return bad_file(path, "tokenizer.ggml.token_type must be an array of integers"),
    };
    let pieces = tokens.iter().enumerate().map(|(i, text)| gguf_piece(text, types.as_ref().map(|t| t[i]))).collect();
    let vocab = Vocab { pieces, scores };

    let storage = if base == 0 {
        Storage::Mapped(map)
    } else {
        let bytes = &map[data_start.min(map.len())..];
        let mut v = Vec::new();
        v.try_reserve_exact(bytes.len() / 4).map_err(|_| Fail::Runtime("cannot allocate the weights".into()))?;
        v.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        Storage::Owned(v)
    };
    Ok(Checkpoint { config: c, storage, token_embedding, layers, rms_final, wcls, vocab: Some(vocab) })
}

/// A numeric GGUF array as (integer, float) pairs; integers of float arrays are truncated.
fn numbers(etype: u32, raw: &[u8], count: usize) -> Vec<(i128, f64)> {
    let size = gguf_scalar_size(etype).unwrap_or(1);
    (0..count)
        .map(|i| match gguf_scalar(etype, &raw[i * size..(i + 1) * size]) {
            Value::Int(v) => (v, v as f64),
            Value::Float(x) => (x as i128, x),
            Value::Bool(v) => (v as i128, v as u8 as f64),
            _ => (0, 0.0),
        })
        .collect()
}

fn gguf_piece(text: &[u8], ttype: Option<i128>) -> Vec<u8> {
    if ttype == Some(3) && text == b"<s>" {
        return b"\n<s>\n".to_vec();
    }
    if ttype == Some(3) && text == b"</s>" {
        return b"\n</s>\n".to_vec();
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with("\u{2581}".as_bytes()) {
            out.push(b' ');
            i += 3;
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

// ----------------------------------------------------------------------------
// Model: the run state (activations and KV cache), allocated once

struct RunState {
    x: Vec<f32>,           // (dim) the residual stream
    xb: Vec<f32>,          // (dim) normed input of a block, then the attention output
    hb: Vec<f32>,          // (hidden_dim) the FFN's hidden activation
    q: Vec<f32>,           // (dim) query of the current position
    rope: Vec<(f32, f32)>, // (head_size / 2) cos and sin of the current position
    key_cache: Vec<f32>,   // (layer, seq_len, kv_dim)
    value_cache: Vec<f32>, // (layer, seq_len, kv_dim)
    logits: Vec<f32>,      // (vocab)
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
    fn build(c: &Config) -> Res<RunState> {
        let kv = c.n_layers * c.seq_len * c.kv_dim();
        Ok(RunState {
            x: zeroed(c.dim)?,
            xb: zeroed(c.dim)?,
            hb: zeroed(c.hidden_dim)?,
            q: zeroed(c.dim)?,
            rope: vec![(1.0, 0.0); c.head_size() / 2],
            key_cache: zeroed(kv)?,
            value_cache: zeroed(kv)?,
            logits: zeroed(c.vocab_size)?,
        })
    }
}

// ----------------------------------------------------------------------------
// Thread pool: -j N = the main thread plus N-1 workers, created once. Each parallel step (a
// fused matmul, the attention heads) is one job over `items` (rows, heads), cut into a few
// chunks per thread that threads claim from a shared counter. The caller works too, so on a
// busy machine a descheduled worker costs at most the chunk it holds, not a whole share.
// Idle workers spin briefly (the gaps inside a token are microseconds), then sleep.

type Job<'a> = dyn Fn(Range<usize>) + Sync + 'a;

/// The job being run; written only while no chunk of the previous job is in flight.
struct JobSlot {
    job: Option<*const Job<'static>>,
    items: usize,
    grain: usize, // chunk boundaries fall on multiples of grain items
    chunks: usize,
}

struct PoolShared {
    n: usize,
    // (epoch << 32) | chunks left to claim: one word, so that a claim is valid only for the
    // job it was meant for
    ticket: AtomicU64,
    done: AtomicUsize, // chunks finished in the current job
    sleepers: AtomicUsize,
    caller_sleeping: AtomicBool,
    quit: AtomicBool,
    slot: UnsafeCell<JobSlot>,
    lock: Mutex<()>,
    wake: Condvar,     // workers wait here for the next job
    finished: Condvar, // the caller waits here for the last chunk
}

// SAFETY: `slot` is written by the caller of `run` only before it publishes a job (ticket, with
// release) and after every chunk of the previous job is done; a thread reads it only after
// claiming a chunk of the published job (acquire), which keeps that job alive until it is done.
unsafe impl Sync for PoolShared {}
unsafe impl Send for PoolShared {}

struct Pool {
    shared: Arc<PoolShared>,
    workers: Vec<JoinHandle<()>>,
}

/// Polls before sleeping (a pause each, some 50-100 us in all): longer than the gap between two
/// jobs of a token, far shorter than a time slice. Sleeping soon matters on a busy machine: a
/// thread that spins through its share of the CPU is scheduled late when the next job comes.
const SPIN_LIMIT: u32 = 2000;
const CHUNKS_PER_THREAD: usize = 4;

impl PoolShared {
    /// Claims one chunk of job `epoch`: its index, or None when none is left.
    fn claim(&self, epoch: u64) -> Option<usize> {
        let mut cur = self.ticket.load(Ordering::Acquire);
        loop {
            let left = cur & 0xffff_ffff;
            if cur >> 32 != epoch || left == 0 {
                return None;
            }
            match self.ticket.compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    // SAFETY: a claimed chunk keeps the job published (see above)
                    let slot = unsafe { &*self.slot.get() };
                    return Some(slot.chunks - left as usize);
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Runs chunks of job `epoch` until none is left.
    fn work(&self, epoch: u64) {
        while let Some(c) = self.claim(epoch) {
            // SAFETY: as in claim
            let slot = unsafe { &*self.slot.get() };
            let chunks = slot.chunks;
            let units = span(slot.items.div_ceil(slot.grain), c, chunks);
            let range = (units.start * slot.grain)..(units.end * slot.grain).min(slot.items);
            if let Some(job) = slot.job {
                unsafe { (*job)(range) };
            }
            // the slot may be reused as soon as the last chunk is counted: read nothing after
            if self.done.fetch_add(1, Ordering::SeqCst) + 1 == chunks && self.caller_sleeping.load(Ordering::SeqCst) {
                let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.finished.notify_all();
            }
        }
    }
}

impl Pool {
    fn build(n: usize) -> Res<Pool> {
        let shared = Arc::new(PoolShared {
            n,
            ticket: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            caller_sleeping: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            slot: UnsafeCell::new(JobSlot { job: None, items: 0, grain: 1, chunks: 0 }),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            finished: Condvar::new(),
        });
        let mut pool = Pool { shared, workers: Vec::new() };
        for index in 1..n {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || worker_loop(&shared))
                .map_err(|e| Fail::Runtime(format!("cannot start worker thread {index}: {e}")))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    fn threads(&self) -> usize {
        self.shared.n
    }

    /// Runs job over 0..items, cut into ranges (multiples of `grain` items) that the threads
    /// share; returns when all are done, so the job may borrow the caller's data.
    fn run(&self, items: usize, grain: usize, job: &Job<'_>) {
        let s = &*self.shared;
        let grain = grain.max(1);
        let chunks = items.div_ceil(grain).min(s.n * CHUNKS_PER_THREAD);
        if s.n == 1 || chunks <= 1 {
            job(0..items);
            return;
        }
        // SAFETY: the lifetime is erased only while this call runs: it returns after every
        // chunk is done, and no thread can claim a chunk of this job after that.
        let ptr: *const Job<'static> = unsafe { std::mem::transmute::<&Job<'_>, &'static Job<'static>>(job) };
        unsafe { *s.slot.get() = JobSlot { job: Some(ptr), items, grain, chunks } };
        s.done.store(0, Ordering::Relaxed);
        let epoch = (s.ticket.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xffff_ffff;
        s.ticket.store((epoch << 32) | chunks as u64, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        s.work(epoch);
        // the other chunks are in flight: spin a little, then sleep until the last one is done
        // (a worker holding one may have been descheduled on a busy machine)
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) != chunks {
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
                continue;
            }
            let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.caller_sleeping.store(true, Ordering::SeqCst);
            while s.done.load(Ordering::SeqCst) != chunks {
                g = s.finished.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.caller_sleeping.store(false, Ordering::SeqCst);
        }
    }

    fn free(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let s = &*self.shared;
        s.quit.store(true, Ordering::SeqCst);
        let epoch = (s.ticket.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xffff_ffff;
        s.ticket.store(epoch << 32, Ordering::SeqCst);
        {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.stop();
        }
    }
}

fn worker_loop(s: &PoolShared) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        loop {
            let e = s.ticket.load(Ordering::Acquire) >> 32;
            if e != seen {
                seen = e;
                break;
            }
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
                continue;
            }
            // sleep until the next job; the SeqCst pair sleepers/ticket rules out a lost wake-up
            let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            while s.ticket.load(Ordering::SeqCst) >> 32 == seen {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(g);
            spins = 0;
        }
        if s.quit.load(Ordering::Acquire) {
            return;
        }
        s.work(seen);
    }
}

/// Part `index` of `parts` of 0..n, as even as integers allow.
fn span(n: usize, index: usize, parts: usize) -> Range<usize> {
    (n * index / parts)..(n * (index + 1) / parts)
}

/// A shared output buffer that threads write in disjoint ranges.
#[derive(Clone, Copy)]
struct Out(*mut f32, usize);

// SAFETY: every job writes a range no other thread touches during that job (see `span`).
unsafe impl Sync for Out {}
unsafe impl Send for Out {}

impl Out {
    fn new(v: &mut [f32]) -> Out {
        Out(v.as_mut_ptr(), v.len())
    }

    /// SAFETY: the caller owns `range` exclusively for the duration of the job.
    #[allow(clippy::mut_from_ref)]
    unsafe fn part(&self, range: Range<usize>) -> &mut [f32] {
        assert!(range.start <= range.end && range.end <= self.1);
        std::slice::from_raw_parts_mut(self.0.add(range.start), range.len())
    }
}

// ----------------------------------------------------------------------------
// Forward pass: the kernels. Batch-1 decoding streams every weight once per token, so the
// matmul must keep the memory bus busy: four weight rows at a time (dot4), 16 independent
// float lanes each. Plain fixed-size loops that the compiler vectorises on any target (AVX2 /
// AVX-512 with -C target-cpu=native, NEON on arm64); no target-specific code.

#[inline(always)]
fn fmadd(a: f32, b: f32, c: f32) -> f32 {
    // a real fused multiply-add where the hardware has one; a libm call would be far slower
    #[cfg(any(target_feature = "fma", target_arch = "aarch64"))]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(any(target_feature = "fma", target_arch = "aarch64")))]
    {
        a * b + c
    }
}

/// a . b with K independent lanes: K = 32 for long rows, 8 for attention's head-sized vectors
/// (a wide accumulator would spend more on its final reduction than on an 8-float head).
#[inline(always)]
fn dot_lanes<const K: usize>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; K];
    let (ac, bc) = (a.chunks_exact(K), b.chunks_exact(K));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..K {
            acc[i] = fmadd(x[i], y[i], acc[i]);
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ar.iter().zip(br) {
        tail = fmadd(*x, *y, tail);
    }
    lane_sum(acc) + tail
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes::<32>(a, b)
}

/// Four rows of W against x at once: x is loaded once for four weight streams, and the four
/// streams keep more memory requests in flight than one (about 1.4x the bandwidth of a
/// row-at-a-time loop on the Xeon this was tuned on). 16 lanes per row = 8 vector accumulators.
#[inline(always)]
fn dot4(w: &[f32], x: &[f32]) -> [f32; 4] {
    const K: usize = 16;
    let n = x.len();
    let (w0, rest) = w.split_at(n);
    let (w1, rest) = rest.split_at(n);
    let (w2, w3) = rest.split_at(n);
    let w3 = &w3[..n];
    let (mut a0, mut a1, mut a2, mut a3) = ([0.0f32; K], [0.0f32; K], [0.0f32; K], [0.0f32; K]);
    let lanes = x
        .chunks_exact(K)
        .zip(w0.chunks_exact(K))
        .zip(w1.chunks_exact(K))
        .zip(w2.chunks_exact(K))
        .zip(w3.chunks_exact(K));
    for ((((xs, r0), r1), r2), r3) in lanes {
        for i in 0..K {
            a0[i] = fmadd(r0[i], xs[i], a0[i]);
            a1[i] = fmadd(r1[i], xs[i], a1[i]);
            a2[i] = fmadd(r2[i], xs[i], a2[i]);
            a3[i] = fmadd(r3[i], xs[i], a3[i]);
        }
    }
    let mut s = [lane_sum(a0), lane_sum(a1), lane_sum(a2), lane_sum(a3)];
    for j in n - n % K..n {
        for (si, wr) in s.iter_mut().zip([w0, w1, w2, w3]) {
            *si = fmadd(wr[j], x[j], *si);
        }
    }
    s
}

/// The sum of K lanes (K a multiple of 8): folded to 8 lanes, then a fixed tree that compiles
/// to a few shuffles.
#[inline(always)]
fn lane_sum<const K: usize>(a: [f32; K]) -> f32 {
    let mut e = [0.0f32; 8];
    for (i, v) in a.iter().enumerate() {
        e[i % 8] += v;
    }
    let f = [e[0] + e[4], e[1] + e[5], e[2] + e[6], e[3] + e[7]];
    (f[0] + f[2]) + (f[1] + f[3])
}

/// W[r] . x for each row r in `rows` of W (.., x.len()), handed to `put(r - rows.start, value)`.
#[inline(always)]
fn matvec_rows(w: &[f32], x: &[f32], rows: Range<usize>, mut put: impl FnMut(usize, f32)) {
    let n = x.len();
    let mut r = rows.start;
    while r + 4 <= rows.end {
        for (k, v) in dot4(&w[r * n..(r + 4) * n], x).into_iter().enumerate() {
            put(r + k - rows.start, v);
        }
        r += 4;
    }
    for r in r..rows.end {
        put(r - rows.start, dot(&w[r * n..(r + 1) * n], x));
    }
}

/// Output rows per claimable chunk are a multiple of this: whole 64-byte lines of output per
/// thread, and whole groups of four rows for dot4.
const ROW_GRAIN: usize = 16;

/// out += W @ x, rows split across the pool (the residual connection fused in).
fn matvec_add(pool: &Pool, out: &mut [f32], w: &[f32], x: &[f32]) {
    let o = Out::new(out);
    pool.run(out.len(), ROW_GRAIN, &|r| {
        // SAFETY: this thread owns rows r
        let dst = unsafe { o.part(r.clone()) };
        matvec_rows(w, x, r, |i, v| dst[i] += v);
    });
}

/// out = W @ x, rows split across the pool.
fn matvec(pool: &Pool, out: &mut [f32], w: &[f32], x: &[f32]) {
    let o = Out::new(out);
    pool.run(out.len(), ROW_GRAIN, &|r| {
        // SAFETY: this thread owns rows r
        let dst = unsafe { o.part(r.clone()) };
        matvec_rows(w, x, r, |i, v| dst[i] = v);
    });
}

fn rmsnorm(out: &mut [f32], x: &[f32], w: &[f32]) {
    let ss = dot(x, x) / x.len() as f32 + 1e-5;
    let inv = 1.0 / ss.sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(w) {
        *o = wi * (xi * inv);
    }
}

fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = (*v - max).exp();
    }
    let sum = pairwise_sum(x);
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// numpy's float32 summation order (pairwise, 8 lanes, blocks of 128). The sampler compares a
/// random coin with running sums of 32000 tiny probabilities; summing in the reference's order
/// keeps near-flat distributions from drifting onto a neighbouring token.
fn pairwise_sum(a: &[f32]) -> f32 {
    let n = a.len();
    if n < 8 {
        return a.iter().fold(0.0f32, |s, &v| s + v);
    }
    if n <= 128 {
        let mut r = [0.0f32; 8];
        r.copy_from_slice(&a[..8]);
        let whole = n - n % 8;
        for chunk in a[8..whole].chunks_exact(8) {
            for j in 0..8 {
                r[j] += chunk[j];
            }
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &a[whole..] {
            res += v;
        }
        return res;
    }
    let half = n / 2 - (n / 2) % 8;
    pairwise_sum(&a[..half]) + pairwise_sum(&a[half..])
}

thread_local! {
    /// Each thread's attention scores for one head, (pos + 1) long.
    static ATT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

// ----------------------------------------------------------------------------
// Forward pass (run.c's `forward`): one token at one position, the logits back.

fn forward<'s>(c: &Config, w: &Weights, s: &'s mut RunState, pool: &Pool, token: usize, pos: usize) -> &'s mut [f32] {
    let (dim, hidden, hs) = (c.dim, c.hidden_dim, c.head_size());
    let kv_dim = c.kv_dim();
    let kv_mul = c.n_heads / c.n_kv_heads; // query heads per KV head

    s.x.copy_from_slice(&w.token_embedding[token * dim..(token + 1) * dim]);

    // RoPE angles depend on the position within the head only: one table per token
    for (j, cs) in s.rope.iter_mut().enumerate() {
        let freq = 1.0 / 10000f32.powf((2 * j) as f32 / hs as f32);
        let (sin, cos) = (pos as f32 * freq).sin_cos();
        *cs = (cos, sin);
    }

    for (l, lw) in w.layers.iter().enumerate() {
        rmsnorm(&mut s.xb, &s.x, lw.rms_att);

        // q, k, v in one job; k and v go straight into the cache at (l, pos)
        let at = (l * c.seq_len + pos) * kv_dim;
        {
            let q = Out::new(&mut s.q);
            let k = Out::new(&mut s.key_cache[at..at + kv_dim]);
            let v = Out::new(&mut s.value_cache[at..at + kv_dim]);
            let xb = &s.xb;
            let segments =
                [(q, lw.wq, 0, dim), (k, lw.wk, dim, dim + kv_dim), (v, lw.wv, dim + kv_dim, dim + 2 * kv_dim)];
            pool.run(dim + 2 * kv_dim, ROW_GRAIN, &|mine| {
                for (out, mat, lo, hi) in segments {
                    let (a, b) = (mine.start.max(lo), mine.end.min(hi));
                    if a < b {
                        // SAFETY: this thread owns rows [a, b) of the fused q/k/v output
                        let dst = unsafe { out.part(a - lo..b - lo) };
                        matvec_rows(mat, xb, a - lo..b - lo, |i, v| dst[i] = v);
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
            let layer = l * c.seq_len * kv_dim;
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
        matvec_add(pool, &mut s.x, lw.wo, &s.xb);

        // FFN: hb = silu(w1 @ xb) * (w3 @ xb), both matmuls in one job; x += w2 @ hb
        rmsnorm(&mut s.xb, &s.x, lw.rms_ffn);
        {
            let hb = Out::new(&mut s.hb);
            let xb = &s.xb;
            pool.run(hidden, ROW_GRAIN, &|r| {
                // SAFETY: this thread owns rows r of hb
                let dst = unsafe { hb.part(r.clone()) };
                matvec_rows(lw.w1, xb, r.clone(), |i, gate| dst[i] = gate / (1.0 + (-gate).exp()));
                matvec_rows(lw.w3, xb, r, |i, up| dst[i] *= up);
            });
        }
        matvec_add(pool, &mut s.x, lw.w2, &s.hb);
    }

    rmsnorm(&mut s.xb, &s.x, w.rms_final);
    matvec(pool, &mut s.logits, w.wcls, &s.xb); // (vocab, dim)
    &mut s.logits
}

// ----------------------------------------------------------------------------
// Tokenizer: llama2.c's byte-pair encoding (contract section 5)

const BOS: u32 = 1;
const EOS: u32 = 2;
const MAX_TOKEN_LENGTH: i64 = 1024;

struct Tokenizer {
    vocab: Vocab,
    lookup: HashMap<Vec<u8>, u32>, // piece -> lowest id spelling it
}

/// Reads tokenizer.bin, which must hold exactly `vocab_size` tokens.
fn read_tokenizer(path: &Path, vocab_size: usize) -> Res<Vocab> {
    let mut f = open_file(path)?;
    let size = file_size(path, &f)?;
    if size < 4 {
        return bad_file(path, "truncated: no max_token_length header");
    }
    let head = read_head(path, &mut f, 4)?;
    let max_len = le_i32(&head, 0);
    if !(1..=MAX_TOKEN_LENGTH).contains(&max_len) {
        return bad_file(path, format!("max_token_length={max_len} outside 1..{MAX_TOKEN_LENGTH}"));
    }
    // the largest file that can hold vocab_size tokens: never read more than that
    let limit = 4 + vocab_size as u64 * (8 + max_len as u64);
    if size > limit {
        return bad_file(
            path,
            format!(
                "has {size} bytes, more than {vocab_size} tokens can fill: \
                                       its vocabulary is larger than the model's {vocab_size}"
            ),
        );
    }
    let mut data = head;
    data.try_reserve_exact(size as usize).map_err(|_| Fail::Runtime(format!("cannot allocate {size} bytes")))?;
    f.read_to_end(&mut data).or_else(|e| bad_file(path, format!("cannot read: {e}")))?;
    let mut pieces = Vec::with_capacity(vocab_size);
    let mut scores = Vec::with_capacity(vocab_size);
    let mut off = 4usize;
    for i in 0..vocab_size {
        if off + 8 > data.len() {
            return bad_file(path, format!("has only {i} tokens, the model's vocabulary is {vocab_size}"));
        }
        let score = f32::from_le_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]);
        let len = le_i32(&data, off + 4);
        off += 8;
        if !(0..=max_len).contains(&len) {
            return bad_file(path, format!("token {i} has length {len}, outside 0..{max_len}"));
        }
        if score.is_nan() {
            return bad_file(path, format!("token {i} has a NaN score"));
        }
        let len = len as usize;
        if off + len > data.len() {
            return bad_file(path, format!("truncated inside token {i}"));
        }
        pieces.push(data[off..off + len].to_vec());
        scores.push(score as f64);
        off += len;
    }
    if off != data.len() {
        return bad_file(
            path,
            format!(
                "has {} bytes after token {}: its vocabulary is larger than the model's {vocab_size}",
                data.len() - off,
                vocab_size - 1
            ),
        );
    }
    Ok(Vocab { pieces, scores })
}

/// A mergeable adjacent pair: best score first, then the leftmost.
struct Candidate {
    score: f64,
    left: usize,
    right: usize,
    pieces: (u32, u32), // the tokens at left and right when this was pushed
    id: u32,            // the merged token
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score.total_cmp(&other.score).then(other.left.cmp(&self.left))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Candidate {}

/// encode needs the 256 byte tokens for its fallback and the " " piece for its dummy prefix.
fn check_vocab(path: &Path, vocab: &Vocab) -> Res<()> {
    let n = vocab.pieces.len();
    if n < 259 {
        return bad_file(path, format!("a vocabulary of {n} tokens has no room for the 256 byte tokens"));
    }
    if !vocab.pieces.iter().any(|p| p == b" ") {
        return bad_file(path, "the vocabulary has no ' ' piece for the dummy prefix");
    }
    Ok(())
}

impl Tokenizer {
    fn build(vocab: Vocab) -> Tokenizer {
        let mut lookup = HashMap::with_capacity(vocab.pieces.len());
        for (i, p) in vocab.pieces.iter().enumerate() {
            lookup.entry(p.clone()).or_insert(i as u32); // a duplicated piece keeps its lower id
        }
        Tokenizer { vocab, lookup }
    }

    fn vocab_size(&self) -> usize {
        self.vocab.pieces.len()
    }

    /// The byte-fallback id of a byte (<0x00> is id 3; check_vocab made sure it exists).
    fn byte_token(&self, b: u8) -> u32 {
        let id = b as u32 + 3;
        if (id as usize) < self.vocab_size() {
            id
        } else {
            0
        }
    }

    fn encode(&self, text: &[u8], bos: bool, eos: bool) -> Vec<u32> {
        let mut tokens = self.unmerged(text, bos);
        self.merge(&mut tokens);
        if eos {
            tokens.push(EOS);
        }
        tokens
    }

    /// BOS, the dummy prefix, then one token per UTF-8 code point (or per byte, as fallback).
    fn unmerged(&self, text: &[u8], bos: bool) -> Vec<u32> {
        let mut tokens = Vec::with_capacity(text.len() + 3);
        if bos {
            tokens.push(BOS);
        }
        if !text.is_empty() {
            // the dummy prefix: SentencePiece's add_dummy_prefix
            tokens.push(self.lookup.get(&b" "[..]).copied().unwrap_or_else(|| self.byte_token(b' ')));
        }
        // one UTF-8 code point at a time (at most 4 bytes), as run.c groups them
        let mut i = 0;
        while i < text.len() {
            let start = i;
            i += 1;
            while i < text.len() && text[i] & 0xC0 == 0x80 && i - start < 4 {
                i += 1;
            }
            let group = &text[start..i];
            match self.lookup.get(group) {
                Some(&id) => tokens.push(id),
                None => tokens.extend(group.iter().map(|&b| self.byte_token(b))),
            }
        }
        tokens
    }

    /// The merge of two adjacent pieces, if the vocabulary has it with a usable score (NaN and
    /// -inf never win run.c's strictly-greater comparison).
    fn pair(&self, a: u32, b: u32, buf: &mut Vec<u8>) -> Option<(f64, u32)> {
        buf.clear();
        buf.extend_from_slice(&self.vocab.pieces[a as usize]);
        buf.extend_from_slice(&self.vocab.pieces[b as usize]);
        let id = *self.lookup.get(&buf[..])?;
        let score = self.vocab.scores[id as usize];
        (score > f64::NEG_INFINITY).then_some((score, id))
    }

    /// Repeatedly merges the adjacent pair with the best score (leftmost on ties). run.c rescans
    /// the whole sequence for every merge; a heap of candidate pairs over a linked list makes
    /// the same merges in O(n log n), so a long prompt cannot stall the start.
    fn merge(&self, tokens: &mut Vec<u32>) {
        let n = tokens.len();
        if n < 2 {
            return;
        }
        // positions keep their sequence order, so the lowest left position is the leftmost pair
        const NONE: usize = usize::MAX;
        let mut next: Vec<usize> = (1..=n).map(|i| if i < n { i } else { NONE }).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| if i > 0 { i - 1 } else { NONE }).collect();
        let mut heap = std::collections::BinaryHeap::new();
        let mut buf = Vec::new();
        for i in 0..n - 1 {
            if let Some((score, id)) = self.pair(tokens[i], tokens[i + 1], &mut buf) {
                heap.push(Candidate { score, left: i, right: i + 1, pieces: (tokens[i], tokens[i + 1]), id });
            }
        }
        while let Some(c) = heap.pop() {
            // stale unless the two are still neighbours spelling the same pieces
            if next[c.left] != c.right || (tokens[c.left], tokens[c.right]) != c.pieces {
                continue;
            }
            tokens[c.left] = c.id;
            let after = next[c.right];
            next[c.left] = after;
            next[c.right] = NONE;
            prev[c.right] = NONE;
            if after != NONE {
                prev[after] = c.left;
            }
            let before = prev[c.left];
            for (l, r) in [(before, c.left), (c.left, after)] {
                if l == NONE || r == NONE {
                    continue;
                }
                if let Some((score, id)) = self.pair(tokens[l], tokens[r], &mut buf) {
                    heap.push(Candidate { score, left: l, right: r, pieces: (tokens[l], tokens[r]), id });
                }
            }
        }
        // walk the list from the first position (never merged away: it is always a left side)
        let mut out = Vec::with_capacity(n);
        let mut i = 0;
        while i != NONE {
            out.push(tokens[i]);
            i = next[i];
        }
        *tokens = out;
    }

    /// The bytes to print for `token` following `prev`.
    fn decode(&self, prev: u32, token: u32) -> &[u8] {
        let mut piece = &self.vocab.pieces[token as usize][..];
        if prev == BOS && piece.first() == Some(&b' ') {
            piece = &piece[1..];
        }
        match byte_piece(piece) {
            Some(b) => &BYTE_STRINGS[b as usize..b as usize + 1],
            None => piece,
        }
    }
}

/// 0..=255: the one-byte strings that `<0xHH>` pieces decode to.
static BYTE_STRINGS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

/// The byte of a piece spelled exactly `<0xHH>`.
fn byte_piece(p: &[u8]) -> Option<u8> {
    if p.len() != 6 || !p.starts_with(b"<0x") || p[5] != b'>' {
        return None;
    }
    let hex = |c: u8| (c as char).to_digit(16);
    Some((hex(p[3])? * 16 + hex(p[4])?) as u8)
}

/// run.c's safe_printf: nothing for an empty piece or a lone unprintable control byte.
fn printable(piece: &[u8]) -> bool {
    match piece {
        [] => false,
        [b] => (0x20..=0x7e).contains(b) || matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r'),
        _ => true,
    }
}

// ----------------------------------------------------------------------------
// Sampler (contract section 7): xorshift RNG, argmax, multinomial, top-p

struct Rng {
    state: u64,
}

impl Rng {
    fn next_u32(&mut self) -> u32 {
        let mut s = self.state;
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        self.state = s;
        (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as u32
    }

    fn next_f32(&mut self) -> f32 {
        (self.next_u32() >> 8) as f32 / 16777216.0
    }
}

struct Sampler {
    temperature: f32,
    topp: f64,
    rng: Rng,
    candidates: Vec<(f32, u32)>, // top-p scratch: (probability, id)
}

/// The first index of the largest value.
fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// The first index whose running probability exceeds coin, else the last.
fn sample_mult(probs: &[f32], coin: f32) -> usize {
    let mut cdf = 0.0f32;
    for (i, &p) in probs.iter().enumerate() {
        cdf += p;
        if coin < cdf {
            return i;
        }
    }
    probs.len().saturating_sub(1)
}

/// Nucleus sampling: the smallest set of most likely ids whose probability exceeds topp.
fn sample_topp(probs: &[f32], topp: f32, coin: f32, candidates: &mut Vec<(f32, u32)>) -> usize {
    // ids below the cutoff cannot be in the nucleus: skipping them makes the sort cheap
    let cutoff = (1.0f32 - topp) / (probs.len() as f32 - 1.0);
    candidates.clear();
    candidates.extend(probs.iter().enumerate().filter(|(_, &p)| p >= cutoff).map(|(i, &p)| (p, i as u32)));
    if candidates.is_empty() {
        // only when topp < 1/vocab and the distribution is flat: run.c indexes out of bounds here
        return argmax(probs);
    }
    candidates.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut cdf = 0.0f32;
    let mut last = candidates.len() - 1;
    for (i, &(p, _)) in candidates.iter().enumerate() {
        cdf += p;
        if cdf > topp {
            last = i;
            break;
        }
    }
    let r = coin * cdf;
    let mut run = 0.0f32;
    for &(p, id) in &candidates[..=last] {
        run += p;
        if r < run {
            return id as usize;
        }
    }
    candidates[last].1 as usize
}

impl Sampler {
    fn build(temperature: f64, topp: f64, seed: u64) -> Sampler {
        Sampler { temperature: temperature as f32, topp, rng: Rng { state: seed }, candidates: Vec::new() }
    }

    fn sample(&mut self, logits: &mut [f32]) -> usize {
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        for v in logits.iter_mut() {
            *v /= self.temperature;
        }
        softmax(logits);
        let coin = self.rng.next_f32();
        if self.topp <= 0.0 || self.topp >= 1.0 {
            sample_mult(logits, coin)
        } else {
            sample_topp(logits, self.topp as f32, coin, &mut self.candidates)
        }
    }
}

// ----------------------------------------------------------------------------
// Generation: run.c's loop, and the logits mode; both report the statistics line

#[derive(Default)]
struct Stats {
    prompt_tokens: usize,
    generated_tokens: usize,
    positions: usize,
    ttft_s: f64,
    decode_s: f64,
}

struct Model<'a> {
    config: Config,
    weights: Weights<'a>,
    state: RunState,
}

fn generate(
    m: &mut Model,
    tok: &Tokenizer,
    sampler: &mut Sampler,
    pool: &Pool,
    prompt: &[u8],
    steps: usize,
    ignore_bos: bool,
) -> Res<Stats> {
    let prompt_tokens = tok.encode(prompt, true, false);
    let mut st = Stats { prompt_tokens: prompt_tokens.len(), ..Stats::default() };
    let mut out = std::io::stdout().lock();
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let mut token = prompt_tokens[0];
    for pos in 0..steps {
        let logits = forward(&m.config, &m.weights, &mut m.state, pool, token as usize, pos);
        st.positions += 1;
        let next = if pos + 1 < prompt_tokens.len() {
            prompt_tokens[pos + 1]
        } else {
            st.generated_tokens += 1;
            let id = sampler.sample(logits) as u32;
            first.get_or_insert_with(Instant::now);
            id
        };
        if next == BOS && !ignore_bos {
            break;
        }
        let piece = tok.decode(token, next);
        if printable(piece) {
            out.write_all(piece)
                .and_then(|_| out.flush())
                .map_err(|e| Fail::Runtime(format!("cannot write to stdout: {e}")))?;
        }
        token = next;
    }
    let end = Instant::now();
    out.write_all(b"\n")
        .and_then(|_| out.flush())
        .map_err(|e| Fail::Runtime(format!("cannot write to stdout: {e}")))?;
    st.ttft_s = (first.unwrap_or(end) - start).as_secs_f64();
    st.decode_s = first.map_or(0.0, |f| (end - f).as_secs_f64());
    Ok(st)
}

/// Logits after each position of `ids`, written as raw little-endian float32 rows.
fn logits_to_file(m: &mut Model, pool: &Pool, ids: &[u32], path: &Path) -> Res<Stats> {
    let cannot = |e: std::io::Error| Fail::Runtime(format!("{}: cannot write: {}", path.display(), os_problem(&e)));
    let mut f = std::io::BufWriter::new(File::create(path).map_err(cannot)?);
    let start = Instant::now();
    let mut row = Vec::with_capacity(4 * m.config.vocab_size);
    for (pos, &id) in ids.iter().enumerate() {
        let logits = forward(&m.config, &m.weights, &mut m.state, pool, id as usize, pos);
        row.clear();
        row.extend(logits.iter().flat_map(|v| v.to_le_bytes()));
        f.write_all(&row).map_err(cannot)?;
    }
    f.flush().map_err(cannot)?;
    Ok(Stats {
        prompt_tokens: ids.len(),
        positions: ids.len(),
        ttft_s: start.elapsed().as_secs_f64(),
        ..Stats::default()
    })
}

fn stats_line(threads: usize, load_s: f64, st: &Stats) -> String {
    let tok_s =
        if st.generated_tokens > 1 && st.decode_s > 0.0 { (st.generated_tokens - 1) as f64 / st.decode_s } else { 0.0 };
    format!(
        "polyllama-stats: {{\"port\":\"{PORT}\",\"prompt_tokens\":{},\"generated_tokens\":{},\"positions\":{},\
\"threads\":{threads},\"load_s\":{load_s:.6},\"ttft_s\":{:.6},\"decode_s\":{:.6},\"decode_tok_s\":{tok_s:.4}}}",
        st.prompt_tokens, st.generated_tokens, st.positions, st.ttft_s, st.decode_s
    )
}

// ----------------------------------------------------------------------------
// Command line (contract section 2)

#[derive(Debug)]
struct Args {
    checkpoint: PathBuf,
    tokenizer: Option<PathBuf>,
    temperature: f64,
    topp: f64,
    seed: u64,
    steps: usize,
    prompt: Vec<u8>,
    threads: usize,
    logits_mode: bool,
    output: Option<PathBuf>,
    ids: Option<Vec<i128>>,
    ignore_bos: bool,
}

fn os_bytes(s: &std::ffi::OsStr) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        s.as_bytes().to_vec()
    }
    #[cfg(not(unix))]
    {
        s.to_string_lossy().into_owned().into_bytes()
    }
}

/// Integers as the contract spells them: `[+-]?[0-9]+`, nothing else.
fn is_plain_int(t: &str) -> bool {
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Floats as the contract spells them: `[+-]?([0-9]+.?[0-9]*|.[0-9]+)([eE][+-]?[0-9]+)?`
/// (no inf, nan, underscores, hex or spaces).
fn is_plain_float(t: &str) -> bool {
    let t = t.strip_prefix(['+', '-']).unwrap_or(t);
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = digits(int) && digits(frac) && !(int.is_empty() && frac.is_empty());
    mantissa_ok && exponent.is_none_or(is_plain_int)
}

fn parse_int(flag: &str, text: &str, lo: i128, hi: i128) -> Res<i128> {
    let v: i128 = match text.parse() {
        Ok(v) if is_plain_int(text) => v,
        // a plain integer too long for i128 is certainly out of range
        Err(_) if is_plain_int(text) => return usage(format!("{flag} {text} is out of range")),
        _ => return usage(format!("{flag} expects an integer, got '{text}'")),
    };
    if v < lo || v > hi {
        return usage(format!("{flag} {text} is out of range"));
    }
    Ok(v)
}

fn parse_float(flag: &str, text: &str, lo: f64, hi: f64) -> Res<f64> {
    let v: f64 = match text.parse() {
        Ok(v) if is_plain_float(text) => v,
        _ => return usage(format!("{flag} expects a number, got '{text}'")),
    };
    if !v.is_finite() || v < lo || v > hi {
        return usage(format!("{flag} {text} is out of range"));
    }
    Ok(v)
}

fn parse_args(argv: &[std::ffi::OsString]) -> Res<Args> {
    let first = match argv.first() {
        Some(a) if !os_bytes(a).starts_with(b"-") => PathBuf::from(a),
        _ => return usage("missing checkpoint"),
    };
    let mut args = Args {
        checkpoint: first,
        tokenizer: None,
        temperature: 1.0,
        topp: 0.9,
        seed: 0,
        steps: 256,
        prompt: Vec::new(),
        threads: 1,
        logits_mode: false,
        output: None,
        ids: None,
        ignore_bos: false,
    };
    let rest = &argv[1..];
    if rest.len() % 2 == 1 {
        return usage(format!("flag {} has no value", rest[rest.len() - 1].to_string_lossy()));
    }
    for pair in rest.chunks_exact(2) {
        let flag = pair[0].to_string_lossy();
        let value = pair[1].to_string_lossy();
        let v = &*value;
        match &*flag {
            "-z" => args.tokenizer = Some(PathBuf::from(&pair[1])),
            "-t" => args.temperature = parse_float("-t", v, 0.0, f64::INFINITY)?,
            "-p" => args.topp = parse_float("-p", v, 0.0, 1.0)?,
            "-s" => args.seed = parse_int("-s", v, 0, u64::MAX as i128)? as u64,
            "-n" => args.steps = parse_int("-n", v, 0, 1 << 31)? as usize,
            "-i" => args.prompt = os_bytes(&pair[1]),
            "-j" => args.threads = parse_int("-j", v, 1, 4096)? as usize,
            "-m" => match v {
                "generate" => args.logits_mode = false,
                "logits" => args.logits_mode = true,
                _ => return usage(format!("-m expects generate or logits, got '{v}'")),
            },
            "-o" => args.output = Some(PathBuf::from(&pair[1])),
            "-k" => {
                let ids: Option<Vec<i128>> =
                    v.split(',').map(|t| if is_plain_int(t) { t.parse().ok() } else { None }).collect();
                match ids {
                    Some(ids) => args.ids = Some(ids),
                    None => return usage(format!("-k expects comma-separated token ids, got '{v}'")),
                }
            }
            "-e" => args.ignore_bos = parse_int("-e", v, 0, 1)? == 1,
            _ => return usage(format!("unknown flag {flag}")),
        }
    }
    if args.logits_mode && (args.output.is_none() || args.ids.is_none()) {
        return usage("logits mode needs -o FILE and -k IDS");
    }
    Ok(args)
}

fn run(argv: &[std::ffi::OsString]) -> Res<()> {
    let t0 = Instant::now();
    let args = parse_args(argv)?;
    let mut ckpt = read_checkpoint(&args.checkpoint)?;
    let config = ckpt.config;
    let embedded = ckpt.vocab.is_some();
    let vocab = match (ckpt.vocab.take(), &args.tokenizer) {
        (Some(embedded), _) => embedded, // GGUF: its own tokenizer (any -z is ignored)
        (None, None) => return usage("-z tokenizer is required for a .bin checkpoint"),
        (None, Some(path)) => read_tokenizer(path, config.vocab_size)?,
    };
    let vocab_file = args.tokenizer.as_deref().filter(|_| !embedded).unwrap_or(&args.checkpoint);
    check_vocab(vocab_file, &vocab)?;
    let tokenizer = Tokenizer::build(vocab);
    let mut model = Model { config, weights: ckpt.weights()?, state: RunState::build(&config)? };
    let pool = Pool::build(args.threads)?;
    let load_s = t0.elapsed().as_secs_f64();

    let stats = if args.logits_mode {
        let ids = args.ids.as_deref().unwrap_or(&[]);
        let (seq, vocab) = (config.seq_len, config.vocab_size);
        if ids.is_empty() || ids.len() > seq || ids.iter().any(|&t| t < 0 || t >= vocab as i128) {
            return usage(format!("-k needs 1..{seq} ids in [0, {vocab})"));
        }
        let ids: Vec<u32> = ids.iter().map(|&t| t as u32).collect();
        logits_to_file(&mut model, &pool, &ids, args.output.as_deref().unwrap_or(Path::new("")))?
    } else {
        let seed = if args.seed > 0 {
            args.seed
        } else {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
        };
        let mut sampler = Sampler::build(args.temperature, args.topp, seed);
        let steps = if args.steps == 0 || args.steps > config.seq_len { config.seq_len } else { args.steps };
        generate(&mut model, &tokenizer, &mut sampler, &pool, &args.prompt, steps, args.ignore_bos)?
    };
    eprintln!("{}", stats_line(pool.threads(), load_s, &stats));
    pool.free();
    Ok(())
}

fn main() {
    // a bug must still end in one error line, not a backtrace
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        eprintln!("error: internal error: {msg}");
        std::process::exit(1);
    }));
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Err(e) = run(&argv) {
        match &e {
            Fail::Usage(msg) => eprintln!("error: {msg}\n{USAGE}"),
            Fail::File(msg) | Fail::Runtime(msg) => eprintln!("error: {msg}"),
        }
        std::process::exit(e.exit_code());
    }
}

// ----------------------------------------------------------------------------
// Tests: `cargo test --release`

#[cfg(test)]
mod tests {
    use super::*;

    /// tokenizer.bin through POLYLLAMA_MODEL_PATH; None (skip) unless CI=true, which fails.
    fn model_file(name: &str) -> Option<String> {
        let dirs = std::env::var("POLYLLAMA_MODEL_PATH").unwrap_or_default();
        for dir in dirs.split(':').filter(|d| !d.is_empty()) {
            let p = std::path::Path::new(dir).join(name);
            if p.is_file() {
                return Some(p.to_string_lossy().into_owned());
            }
        }
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{name} not found in POLYLLAMA_MODEL_PATH={dirs:?} (required when CI=true)");
        }
        eprintln!("skipping: {name} not found in POLYLLAMA_MODEL_PATH");
        None
    }

    fn llama_tokenizer() -> Option<Tokenizer> {
        let path = model_file("tokenizer.bin")?;
        Some(Tokenizer::build(read_tokenizer(Path::new(&path), 32000).expect("tokenizer.bin reads")))
    }

    #[test]
    fn encode_known_vectors() {
        let Some(t) = llama_tokenizer() else { return };
        assert_eq!(
            t.encode(b"I believe the meaning of life is", true, false),
            vec![1, 306, 4658, 278, 6593, 310, 2834, 338]
        );
        assert_eq!(t.encode(b"Once upon a time", true, false), vec![1, 9038, 2501, 263, 931]);
        assert_eq!(t.encode(b"", true, false), vec![1]);
        assert_eq!(t.encode(b"hi", true, true).last(), Some(&EOS));
    }

    #[test]
    fn encode_decode_round_trip_with_byte_fallback() {
        let Some(t) = llama_tokenizer() else { return };
        for text in ["Zoë 日本", "hello\u{1F600} world", "tabs\tand\nnewlines"] {
            let ids = t.encode(text.as_bytes(), true, false);
            let mut out = Vec::new();
            for w in ids.windows(2) {
                out.extend_from_slice(t.decode(w[0], w[1]));
            }
            assert_eq!(out, text.as_bytes(), "{text}: {ids:?}");
        }
    }

    /// run.c's merge loop, rescanning every time: the oracle for the heap version.
    fn merge_by_rescanning(t: &Tokenizer, tokens: &mut Vec<u32>) {
        let mut buf = Vec::new();
        loop {
            let mut best: (f64, u32, Option<usize>) = (f64::NEG_INFINITY, 0, None);
            for i in 0..tokens.len().saturating_sub(1) {
                if let Some((score, id)) = t.pair(tokens[i], tokens[i + 1], &mut buf) {
                    if score > best.0 {
                        best = (score, id, Some(i));
                    }
                }
            }
            let Some(i) = best.2 else { return };
            tokens[i] = best.1;
            tokens.remove(i + 1);
        }
    }

    #[test]
    fn heap_merge_equals_rescanning() {
        let Some(t) = llama_tokenizer() else { return };
        let words: [&[u8]; 12] = [
            b"a",
            b"e",
            b" ",
            b"the",
            "\u{eb}".as_bytes(),
            "\u{65e5}".as_bytes(),
            b"\n",
            b"ing",
            b"Once",
            b"  ",
            b"ab",
            b"\xff",
        ];
        let mut state = 12345u64;
        for _ in 0..300 {
            let mut text = Vec::new();
            for _ in 0..1 + state % 40 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                text.extend_from_slice(words[(state >> 33) as usize % words.len()]);
            }
            let fast = t.encode(&text, true, false);
            let mut oracle = t.unmerged(&text, true);
            merge_by_rescanning(&t, &mut oracle);
            assert_eq!(fast, oracle, "{:?}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn tokenizer_rejects_wrong_vocab_size() {
        let Some(path) = model_file("tokenizer.bin") else { return };
        assert!(matches!(read_tokenizer(Path::new(&path), 31999), Err(Fail::File(_))));
        assert!(matches!(read_tokenizer(Path::new(&path), 32001), Err(Fail::File(_))));
    }

    #[test]
    fn byte_pieces_and_safe_print() {
        assert_eq!(byte_piece(b"<0x0A>"), Some(10));
        assert_eq!(byte_piece(b"<0xfF>"), Some(255));
        assert_eq!(byte_piece(b"<0xG0>"), None);
        assert_eq!(byte_piece(b"<0x0A> "), None);
        assert!(printable(b"a") && printable(b"\n") && printable(b" ") && printable(&[0xC3, 0xAB]));
        assert!(!printable(b"") && !printable(&[0x07]) && !printable(&[0xFF]));
    }

    #[test]
    fn xorshift_draws_match_the_reference() {
        // from orchestrator/reference/sampler.py Rng(42)
        let mut r = Rng { state: 42 };
        let draws: Vec<u32> = (0..4).map(|_| r.next_u32()).collect();
        assert_eq!(draws, vec![EXPECT_U32[0], EXPECT_U32[1], EXPECT_U32[2], EXPECT_U32[3]]);
        let mut r = Rng { state: 42 };
        assert_eq!(r.next_f32().to_bits(), 1051565204);
        assert_eq!(EXPECT_F32_FIRST.to_bits(), 1051565204);
    }

    const EXPECT_U32: [u32; 4] = [1456360119, 3359763283, 3393612768, 4054632243];
    const EXPECT_F32_FIRST: f32 = 0.339_085_22; // f32 bits 1051565204

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.1, 3.0, -1.0, 3.0]), 1);
        assert_eq!(argmax(&[5.0]), 0);
        let mut s = Sampler::build(0.0, 0.9, 7);
        assert_eq!(s.sample(&mut [1.0, 2.0, 2.0, 0.5]), 1);
        assert_eq!(s.rng.state, 7, "greedy sampling draws nothing");
    }

    #[test]
    fn multinomial_and_top_p() {
        let probs = [0.1f32, 0.4, 0.2, 0.3];
        assert_eq!(sample_mult(&probs, 0.05), 0);
        assert_eq!(sample_mult(&probs, 0.45), 1);
        assert_eq!(sample_mult(&probs, 0.99999), 3);
        let mut scratch = Vec::new();
        // sorted: 1 (0.4), 3 (0.3), 2 (0.2), 0 (0.1); topp 0.6 keeps {1, 3} (sum 0.7)
        assert_eq!(sample_topp(&probs, 0.6, 0.0, &mut scratch), 1);
        assert_eq!(sample_topp(&probs, 0.6, 0.5, &mut scratch), 1);
        assert_eq!(sample_topp(&probs, 0.6, 0.6, &mut scratch), 3);
        assert_eq!(sample_topp(&probs, 0.6, 0.99, &mut scratch), 3);
        // ties: the lower id first
        let tied = [0.25f32, 0.25, 0.25, 0.25];
        assert_eq!(sample_topp(&tied, 0.3, 0.1, &mut scratch), 0);
        assert_eq!(sample_topp(&tied, 0.3, 0.9, &mut scratch), 1);
    }

    #[test]
    fn sampler_sequence_for_a_seed() {
        // softmax(logits / 0.8), top-p 0.9, seed 42: the reference's choices
        let logits = [1.0f32, 2.0, 0.5, 3.0, -1.0, 2.5, 0.0, 1.5];
        let mut s = Sampler::build(0.8, 0.9, 42);
        let picks: Vec<usize> = (0..8).map(|_| s.sample(&mut logits.clone())).collect();
        assert_eq!(picks, EXPECT_PICKS.to_vec());
        let mut s = Sampler::build(1.0, 1.0, 42);
        let picks: Vec<usize> = (0..8).map(|_| s.sample(&mut logits.clone())).collect();
        assert_eq!(picks, EXPECT_PICKS_FULL.to_vec());
    }

    const EXPECT_PICKS: [usize; 8] = [3, 1, 1, 7, 5, 1, 3, 3];
    const EXPECT_PICKS_FULL: [usize; 8] = [3, 5, 5, 7, 5, 5, 2, 3];

    #[test]
    fn pairwise_sum_matches_numpy_order() {
        // np.float32 sums of these arrays, computed by numpy
        let a: Vec<f32> = (0..1000).map(|i| 1.0 / (i as f32 + 1.0)).collect();
        assert_eq!(pairwise_sum(&a).to_bits(), EXPECT_PAIRWISE_BITS);
        assert_eq!(pairwise_sum(&[1.0, 2.0, 3.0]), 6.0);
    }

    const EXPECT_PAIRWISE_BITS: u32 = 1089439996;

    #[test]
    fn config_limits() {
        assert!(Config::validate(Path::new("m"), 64, 172, 5, 8, 4, 512, 512, true).is_ok());
        assert!(Config::validate(Path::new("m"), 0, 172, 5, 8, 4, 512, 512, true).is_err());
        assert!(Config::validate(Path::new("m"), 64, 172, 5, 8, 3, 512, 512, true).is_err()); // 8 % 3
        assert!(Config::validate(Path::new("m"), 66, 172, 5, 6, 6, 512, 512, true).is_err()); // head_size 11
        assert!(Config::validate(Path::new("m"), 65536, 172, 1024, 2, 2, 512, 65536, true).is_err()); // KV > 4 GiB
        assert!(Config::validate(Path::new("m"), 64, 172, 5, 128, 4, 512, 512, true).is_err());
        // n_heads > dim
    }

    #[test]
    fn args_are_strict() {
        let a = |v: &[&str]| parse_args(&v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>());
        assert!(a(&["m.bin", "-t", "0.5", "-n", "10", "-j", "2"]).is_ok());
        for bad in [
            &["-t", "1"][..],
            &[],
            &["m", "-t"],
            &["m", "-t", "abc"],
            &["m", "-j", "0"],
            &["m", "-n", "-3"],
            &["m", "-p", "2"],
            &["m", "-q", "1"],
            &["m", "-t", "nan"],
            &["m", "-m", "logits"],
            &["m", "-e", "2"],
            &["m", "-t", "inf"],
            &["m", "-n", "1_0"],
            &["m", "-n", " 5"],
            &["m", "-t", "0x1p3"],
            &["m", "-t", "."],
            &["m", "-t", "1e"],
            &["m", "-j", "+"],
            &["m", "-k", "1,,2"],
            &["m", "-t", "1e999"],
        ] {
            assert!(matches!(a(bad), Err(Fail::Usage(_))), "{bad:?}");
        }
        for good in ["1", "+1.5", "-0", ".5", "5.", "1e3", "1.5E-2", "0.9"] {
            assert!(is_plain_float(good), "{good}");
        }
        assert!(a(&["m", "-t", "1e3", "-p", ".5", "-n", "+7", "-s", "00", "-k", "1,-2"]).is_ok());
    }

    #[test]
    fn pool_covers_every_row_once() {
        for n in [1, 2, 3, 7] {
            let pool = Pool::build(n).unwrap();
            let mut out = vec![0.0f32; 1000];
            let w: Vec<f32> = (0..1000 * 37).map(|i| (i % 13) as f32).collect();
            let x: Vec<f32> = (0..37).map(|i| i as f32).collect();
            for _ in 0..50 {
                matvec(&pool, &mut out, &w, &x);
            }
            let mut want = vec![0.0f32; 1000];
            matvec_rows(&w, &x, 0..1000, |i, v| want[i] = v);
            assert_eq!(out, want);
            // every item exactly once, whatever the grain
            for (items, grain) in [(0, 1), (1, 1), (5, 1), (12, 1), (1000, 16), (1001, 16), (33, 64)] {
                let seen: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
                pool.run(items, grain, &|r| {
                    for i in r {
                        seen[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(
                    seen.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                    "{n} threads, {items} items, grain {grain}"
                );
            }
            pool.free();
        }
    }
}
