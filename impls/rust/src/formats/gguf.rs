//! GGUF (v2/v3, llama.cpp's `llama` names, tokenizer embedded; tensors F32, or Q8_0 for matrices
//! whose rows are whole blocks, each tensor on its own): the header, the metadata section, the
//! tensor infos, then the tensor table checked against the model's tensors. What llama.cpp's
//! loader refuses is refused here too.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;

use super::{Checkpoint, Kind, LayerTensors, Storage, Tensor, Tensors};
use crate::errors::{bad_file, Fail, Res};
use crate::files::{anon_region, file_size, load_file};
use crate::half::Half;
use crate::model::{Config, DEFAULT_BOS, DEFAULT_EOS, DEFAULT_EPS, DEFAULT_THETA};
use crate::q8;
use crate::tokenizer::Vocab;

const GGUF_MAX_ENTRIES: u64 = 65536;
const GGUF_DEFAULT_ALIGNMENT: i128 = 32;
const GGML_TYPE_F32: u32 = 0;
const GGML_TYPE_F16: u32 = 1;
const GGML_TYPE_Q8_0: u32 = 8;
const GGML_TYPE_BF16: u32 = 30;

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
            9 => self.array(what),
            _ => bad_file(self.path, format!("{what}: unknown value type {vtype}")),
        }
    }

    /// An array of scalars (left unparsed in the file) or of strings.
    fn array(&mut self, what: &str) -> Res<Value<'a>> {
        let etype = self.u32(what)?;
        let count = self.u64(what)?;
        if let Some(size) = gguf_scalar_size(etype) {
            let raw = self.take(count.saturating_mul(size as u64), what)?;
            return Ok(Value::Numbers { etype, raw, count: count as usize });
        }
        if etype != 8 {
            return bad_file(self.path, format!("{what}: unsupported array element type {etype}"));
        }
        // every string takes at least its 8-byte length: bounds the count by the file
        let left = (self.data.len() - self.off) as u64;
        if count.checked_mul(8).is_none_or(|n| n > left) {
            return bad_file(self.path, format!("truncated or corrupt: {what} runs past the end of the file"));
        }
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            out.push(self.string(what)?);
        }
        Ok(Value::Strings(out))
    }
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

/// A name from the file as it may appear in a one-line message: escaped, and cut short.
fn shown(raw: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(raw).escape_debug().collect();
    match text.char_indices().nth(80) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

// ----------------------------------------------------------------------------
// GGUF: the file, section by section

/// The metadata: each key non-empty and present once.
type Kv<'a> = HashMap<&'a [u8], Value<'a>>;

/// One tensor info: its name, dims (innermost first), type, and offset from the data start.
struct TensorInfo<'a> {
    name: &'a [u8],
    dims: Vec<u64>,
    ttype: u32,
    offset: u64,
}

/// A GGUF checkpoint, its sections read in file order, then checked against the model they
/// describe.
pub fn read_gguf(path: &Path, f: &File) -> Res<Checkpoint> {
    let size = file_size(path, f)?;
    let map = load_file(path, f, size)?;
    let mut cur = Cursor { path, data: &map[..], off: 4 };
    let (n_tensors, n_kv) = read_header(&mut cur)?;
    let kv = read_kv_section(&mut cur, n_kv)?;
    let infos = read_tensor_infos(&mut cur, n_tensors)?;
    check_architecture(path, &kv)?;
    let align = alignment(path, &kv)?;
    let data_start = cur.off.div_ceil(align) * align;
    let (tokens, scores) = tokenizer_arrays(path, &kv)?;
    let shared = !infos.iter().any(|t| t.name == b"output.weight");
    let c = gguf_config(path, &kv, tokens.len(), shared)?;
    let mut table = TensorTable::new(path, &infos, data_start, align, size);
    let tensors = table.model_tensors(&c)?;
    table.check_nothing_else(&c)?;
    table.check_no_overlap()?;
    let vocab = gguf_vocab(path, &kv, tokens, scores)?;
    let storage = gguf_storage(map, data_start)?;
    Ok(Checkpoint { config: c, storage, tensors, vocab: Some(vocab) })
}

/// Version, tensor count and kv count (both bounded before anything is sized from them).
fn read_header(cur: &mut Cursor) -> Res<(u64, u64)> {
    let version = cur.u32("version")?;
    if version != 2 && version != 3 {
        return bad_file(cur.path, format!("unsupported GGUF version {version} (2 and 3 are read)"));
    }
    let n_tensors = cur.u64("tensor count")?;
    let n_kv = cur.u64("kv count")?;
    if n_tensors > GGUF_MAX_ENTRIES || n_kv > GGUF_MAX_ENTRIES {
        return bad_file(
            cur.path,
            format!("implausible counts: {n_tensors} tensors, {n_kv} keys (limit {GGUF_MAX_ENTRIES})"),
        );
    }
    Ok((n_tensors, n_kv))
}

/// The metadata section. llama.cpp refuses an empty key and a key given twice: so do we.
fn read_kv_section<'a>(cur: &mut Cursor<'a>, n_kv: u64) -> Res<Kv<'a>> {
    let mut kv = HashMap::new();
    for _ in 0..n_kv {
        let key = cur.string("key")?;
        if key.is_empty() {
            return bad_file(cur.path, "a metadata key is empty");
        }
        let what = shown(key);
        let vtype = cur.u32(&format!("type of {what}"))?;
        let value = cur.value(vtype, &what)?;
        if kv.insert(key, value).is_some() {
            return bad_file(cur.path, format!("metadata key {what} appears twice"));
        }
    }
    Ok(kv)
}

/// The tensor infos, in file order; a name given twice is refused, as llama.cpp does.
fn read_tensor_infos<'a>(cur: &mut Cursor<'a>, n_tensors: u64) -> Res<Vec<TensorInfo<'a>>> {
    let mut infos = Vec::new();
    let mut seen = HashSet::new();
    for _ in 0..n_tensors {
        let name = cur.string("tensor name")?;
        let what = shown(name);
        if !seen.insert(name) {
            return bad_file(cur.path, format!("tensor {what} appears twice"));
        }
        let n_dims = cur.u32(&what)?;
        if n_dims > 4 {
            return bad_file(cur.path, format!("tensor {what} has {n_dims} dimensions"));
        }
        let dims = (0..n_dims).map(|_| cur.u64(&what)).collect::<Res<Vec<u64>>>()?;
        let ttype = cur.u32(&what)?;
        let offset = cur.u64(&what)?;
        infos.push(TensorInfo { name, dims, ttype, offset });
    }
    Ok(infos)
}

fn check_architecture(path: &Path, kv: &Kv) -> Res<()> {
    match kv.get(&b"general.architecture"[..]) {
        Some(Value::Str(b"llama")) => Ok(()),
        Some(Value::Str(other)) => {
            bad_file(path, format!("general.architecture is '{}', expected 'llama'", shown(other)))
        }
        _ => bad_file(path, "general.architecture is missing, expected 'llama'"),
    }
}

/// general.alignment: where the data section starts, and what every tensor offset is a multiple of.
fn alignment(path: &Path, kv: &Kv) -> Res<usize> {
    let align = gguf_int(path, kv, "general.alignment", Some(GGUF_DEFAULT_ALIGNMENT))?;
    if align <= 0 || align & (align - 1) != 0 || align > 65536 {
        return bad_file(path, format!("general.alignment={align} is not a power of two up to 65536"));
    }
    Ok(align as usize)
}

fn gguf_int(path: &Path, kv: &Kv, key: &str, default: Option<i128>) -> Res<i128> {
    match kv.get(key.as_bytes()) {
        Some(Value::Int(v)) => Ok(*v),
        Some(_) => bad_file(path, format!("key {key} must be an integer")),
        None => default.map_or_else(|| bad_file(path, format!("missing required key {key}")), Ok),
    }
}

/// A header integer narrowed for Config::validate, saturating so that the limits still reject it.
fn clamp_i64(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// The model's shape from the `llama.*` keys; the vocabulary is the tokenizer's. Then the
/// hyperparameters llama.cpp reads from the file (RoPE base, rmsnorm epsilon, BOS and EOS), with
/// its defaults where a key is absent; and what this architecture does not compute is refused.
fn gguf_config(path: &Path, kv: &Kv, vocab_size: usize, shared_classifier: bool) -> Res<Config> {
    let int = |key: &str, default: Option<i128>| gguf_int(path, kv, key, default);
    let heads = int("llama.attention.head_count", None)?;
    let mut c = Config::validate(
        path,
        clamp_i64(int("llama.embedding_length", None)?),
        clamp_i64(int("llama.feed_forward_length", None)?),
        clamp_i64(int("llama.block_count", None)?),
        clamp_i64(heads),
        clamp_i64(int("llama.attention.head_count_kv", Some(heads))?),
        vocab_size as i64,
        clamp_i64(int("llama.context_length", None)?),
        shared_classifier,
    )?;
    let theta = gguf_float(path, kv, "llama.rope.freq_base", DEFAULT_THETA as f64)?;
    c.theta = float_in(path, "llama.rope.freq_base", theta, |v| v > 1.0, "finite and > 1")?;
    let eps = gguf_float(path, kv, "llama.attention.layer_norm_rms_epsilon", DEFAULT_EPS as f64)?;
    c.eps = float_in(path, "llama.attention.layer_norm_rms_epsilon", eps, |v| v > 0.0 && v < 1.0, "finite, > 0 and < 1")?;
    let hs = c.head_size() as i128;
    let rot = int("llama.rope.dimension_count", Some(hs))?;
    if rot != hs {
        return bad_file(
            path,
            format!("llama.rope.dimension_count={rot} must equal head_size={hs} (partial rotation is not supported)"),
        );
    }
    let token = |key: &str, default: u32| -> Res<u32> {
        let id = int(key, Some(default as i128))?;
        if id < 0 || id >= vocab_size as i128 {
            return bad_file(path, format!("{key}={id} is outside the vocabulary [0, {vocab_size})"));
        }
        Ok(id as u32)
    };
    c.bos = token("tokenizer.ggml.bos_token_id", DEFAULT_BOS)?;
    c.eos = token("tokenizer.ggml.eos_token_id", DEFAULT_EOS)?;
    match kv.get(&b"llama.rope.scaling.type"[..]) {
        None | Some(Value::Str(b"none")) => {}
        Some(Value::Str(other)) => {
            return bad_file(
                path,
                format!("llama.rope.scaling.type is '{}'; only 'none' is supported", shown(other)),
            )
        }
        Some(_) => return bad_file(path, "key llama.rope.scaling.type must be a string"),
    }
    let experts = int("llama.expert_count", Some(0))?;
    if experts > 0 {
        return bad_file(path, format!("llama.expert_count={experts}: mixture-of-experts models are not supported"));
    }
    Ok(c)
}

/// A float key of any numeric type (integers too), or its default when absent.
fn gguf_float(path: &Path, kv: &Kv, key: &str, default: f64) -> Res<f64> {
    match kv.get(key.as_bytes()) {
        Some(Value::Float(v)) => Ok(*v),
        Some(Value::Int(v)) => Ok(*v as f64),
        Some(_) => bad_file(path, format!("key {key} must be a number")),
        None => Ok(default),
    }
}

/// A float key's value as the forward pass uses it (float32), refused unless it is finite and
/// `ok` (checked on the value as the file states it, as the reference does).
fn float_in(path: &Path, key: &str, v: f64, ok: impl Fn(f64) -> bool, range: &str) -> Res<f32> {
    if !v.is_finite() || !ok(v) {
        return bad_file(path, format!("{key}={v} is out of range (must be {range})"));
    }
    Ok(v as f32)
}

// ----------------------------------------------------------------------------
// GGUF: the tensor table

/// A tensor's bytes relative to the data start, for the overlap check.
struct Claim {
    start: u128,
    end: u128,
    name: String,
}

/// The file's tensor infos, located one by one as the model asks for them.
struct TensorTable<'t, 'a> {
    path: &'t Path,
    infos: &'t [TensorInfo<'a>],
    by_name: HashMap<&'a [u8], &'t TensorInfo<'a>>,
    data_start: usize,
    base: usize, // the file byte that is byte 0 of the storage (see gguf_storage)
    align: usize,
    file_size: u64,
    claims: Vec<Claim>,
}

impl<'t, 'a> TensorTable<'t, 'a> {
    fn new(path: &'t Path, infos: &'t [TensorInfo<'a>], data_start: usize, align: usize, file_size: u64) -> Self {
        let by_name = infos.iter().map(|t| (t.name, t)).collect();
        let base = if data_start.is_multiple_of(4) { 0 } else { data_start };
        TensorTable { path, infos, by_name, data_start, base, align, file_size, claims: Vec::new() }
    }

    /// The tensor `name` of `shape` (rows, cols) or (n): F32, or for a matrix F16, BF16 or Q8_0
    /// (rows of whole blocks); those dims, its offset a multiple of general.alignment, its data
    /// inside the file (sizes in 128-bit, so no header value can wrap them).
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Res<Tensor> {
        let path = self.path;
        let Some(info) = self.by_name.get(name.as_bytes()) else {
            return bad_file(path, format!("missing tensor {name}"));
        };
        let kind = match info.ttype {
            GGML_TYPE_F32 => Kind::F32,
            GGML_TYPE_Q8_0 => Kind::Q8,
            GGML_TYPE_F16 => Kind::Half(Half::F16),
            GGML_TYPE_BF16 => Kind::Half(Half::Bf16),
            t => {
                return bad_file(
                    path,
                    format!("tensor {name} has type {t}; only F32 (0), F16 (1), Q8_0 (8) and BF16 (30) are supported"),
                )
            }
        };
        // GGUF lists dims innermost first: a (rows, cols) matrix has dims [cols, rows]
        let want: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        if info.dims != want {
            return bad_file(path, format!("tensor {name} has dims {:?}, expected {want:?}", info.dims));
        }
        let count: usize = shape.iter().product();
        let nbytes = match (kind, shape) {
            (Kind::F32, _) => 4 * count as u128,
            (Kind::Q8, &[rows, cols]) if cols % q8::BLOCK == 0 => rows as u128 * q8::row_bytes(cols) as u128,
            (Kind::Q8, &[_, cols]) => {
                let why = format!("rows of {cols} values, not a multiple of the block size {}", q8::BLOCK);
                return bad_file(path, format!("tensor {name} is Q8_0 with {why}"));
            }
            (Kind::Q8, _) => {
                return bad_file(path, format!("tensor {name} is Q8_0; only matrices may be, norms are F32"));
            }
            (Kind::Half(_), &[_, _]) => 2 * count as u128,
            (Kind::Half(ty), _) => {
                let ty = ty.name();
                return bad_file(path, format!("tensor {name} is {ty}; only matrices may be, norms are F32"));
            }
        };
        let offset = info.offset;
        if offset % self.align as u64 != 0 {
            let align = self.align;
            return bad_file(
                path,
                format!("tensor {name} offset {offset} is not a multiple of general.alignment={align}"),
            );
        }
        let start = self.data_start as u128 + offset as u128;
        // float32 data is read in place as f32, so it must be 4-byte aligned in the storage;
        // Q8_0 blocks are 34 bytes and read bytewise, so they may start anywhere
        if (kind == Kind::F32 && offset % 4 != 0) || start + nbytes > self.file_size as u128 {
            return bad_file(path, format!("tensor {name} lies outside the file"));
        }
        self.claims.push(Claim { start: offset as u128, end: offset as u128 + nbytes, name: name.to_string() });
        Ok(Tensor { at: start as usize - self.base, len: count, kind })
    }

    /// Every tensor of the model, by llama.cpp's names.
    fn model_tensors(&mut self, c: &Config) -> Res<Tensors> {
        let (d, h, kv_dim) = (c.dim, c.hidden_dim, c.kv_dim());
        let token_embedding = self.tensor("token_embd.weight", &[c.vocab_size, d])?;
        let rms_final = self.tensor("output_norm.weight", &[d])?;
        let wcls =
            if c.shared_classifier { token_embedding } else { self.tensor("output.weight", &[c.vocab_size, d])? };
        let mut layers = Vec::with_capacity(c.n_layers);
        for l in 0..c.n_layers {
            let mut t = |suffix: &str, shape: &[usize]| self.tensor(&format!("blk.{l}.{suffix}.weight"), shape);
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
        Ok(Tensors { token_embedding, layers, rms_final, wcls })
    }

    /// The file holds the model's tensors and no others (names are unique, so counting the
    /// ones claimed is enough to know; the search only names the first stranger).
    fn check_nothing_else(&self, c: &Config) -> Res<()> {
        if self.claims.len() == self.infos.len() {
            return Ok(());
        }
        let claimed: HashSet<&[u8]> = self.claims.iter().map(|t| t.name.as_bytes()).collect();
        let stranger = self.infos.iter().find(|t| !claimed.contains(t.name)).map_or(String::new(), |t| shown(t.name));
        let (expected, layers) = (self.claims.len(), c.n_layers);
        bad_file(
            self.path,
            format!("tensor {stranger} is not one of the model's {expected} tensors (block_count={layers})"),
        )
    }

    /// No byte belongs to two tensors.
    fn check_no_overlap(&mut self) -> Res<()> {
        self.claims.sort_unstable_by_key(|t| t.start);
        for pair in self.claims.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.end > b.start {
                return bad_file(self.path, format!("tensors {} and {} overlap", a.name, b.name));
            }
        }
        Ok(())
    }
}

/// The weights in place when the data section is 4-byte aligned in the file (the usual case);
/// otherwise the data section is copied once into page-aligned memory (in huge pages, like the
/// file itself, where they are wanted), and the file's copy is released.
fn gguf_storage(map: memmap2::Mmap, data_start: usize) -> Res<Storage> {
    if data_start.is_multiple_of(4) {
        return Ok(Storage(map));
    }
    let bytes = &map[data_start.min(map.len())..];
    let cannot = |e: std::io::Error| Fail::Runtime(format!("cannot allocate the weights: {e}"));
    // every byte: a Q8_0 tensor may end on any byte (float32 ones end on whole floats)
    let mut copy = anon_region(bytes.len()).map_err(cannot)?;
    copy.copy_from_slice(bytes); // little-endian floats, as the host's (main.rs)
    Ok(Storage(copy.make_read_only().map_err(cannot)?))
}

// ----------------------------------------------------------------------------
// GGUF: the embedded tokenizer

/// tokenizer.ggml.tokens, and tokenizer.ggml.scores with one score per token.
fn tokenizer_arrays<'k, 'a>(path: &Path, kv: &'k Kv<'a>) -> Res<(&'k [&'a [u8]], Vec<f64>)> {
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
    Ok((tokens, scores))
}

/// The vocabulary: tokens spell spaces as U+2581, and BOS/EOS control tokens get llama2.c's
/// pieces back. (Tokenizer::build checks it, as it checks tokenizer.bin's.)
fn gguf_vocab(path: &Path, kv: &Kv, tokens: &[&[u8]], scores: Vec<f64>) -> Res<Vocab> {
    let types: Option<Vec<i128>> = match kv.get(&b"tokenizer.ggml.token_type"[..]) {
        None => None,
        Some(Value::Numbers { etype, raw, count }) if matches!(etype, 0..=5 | 10 | 11) => {
            (*count == tokens.len()).then(|| numbers(*etype, raw, *count).into_iter().map(|v| v.0).collect())
        }
        Some(_) => return bad_file(path, "tokenizer.ggml.token_type must be an array of integers"),
    };
    let pieces = tokens.iter().enumerate().map(|(i, text)| gguf_piece(text, types.as_ref().map(|t| t[i]))).collect();
    Ok(Vocab { pieces, scores })
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

#[cfg(test)]
mod tests {
    use crate::formats::read_checkpoint;
    use crate::kernels::Matrix;
    use crate::testutil::{expect_file_error, synthetic_pieces, Scratch};
    use crate::tokenizer::Tokenizer;

    const DIM: u64 = 8;
    const HIDDEN: u64 = 16;

    fn gstr(s: &[u8]) -> Vec<u8> {
        let mut out = (s.len() as u64).to_le_bytes().to_vec();
        out.extend(s);
        out
    }

    const F32: u32 = 0;
    const F16: u32 = 1;
    const Q8_0: u32 = 8;
    const BF16: u32 = 30;

    /// A GGUF file as lists a test can change: kv entries (key, type, value bytes), tensor infos
    /// (name, dims, offset, type), and the data section.
    struct Gguf {
        kvs: Vec<(String, u32, Vec<u8>)>,
        tensors: Vec<(String, Vec<u64>, u64, u32)>,
        data: Vec<u8>,
        /// where add_tensor puts the next tensor: offsets are multiples of this
        pack: usize,
    }

    /// The size of a tensor's data: dims innermost first, as GGUF lists them.
    fn tensor_bytes(dims: &[u64], ttype: u32) -> usize {
        let count = dims.iter().product::<u64>() as usize;
        match ttype {
            Q8_0 => count / 32 * 34,
            F16 | BF16 => 2 * count,
            _ => 4 * count,
        }
    }

    impl Gguf {
        /// A valid one-layer model (dim 8, hidden 16, 2 heads, seq_len 4, shared classifier)
        /// carrying this vocabulary.
        fn tiny(pieces: &[Vec<u8>], scores: &[f32]) -> Gguf {
            Gguf::shaped(pieces, scores, DIM, HIDDEN, &[])
        }

        /// The one-layer model with these widths, the tensors named in `q8` Q8_0, the rest F32.
        fn shaped(pieces: &[Vec<u8>], scores: &[f32], dim: u64, hidden: u64, q8: &[&str]) -> Gguf {
            let mut tokens = 8u32.to_le_bytes().to_vec();
            tokens.extend((pieces.len() as u64).to_le_bytes());
            for p in pieces {
                // GGUF spells spaces as U+2581
                tokens.extend(gstr(String::from_utf8_lossy(p).replace(' ', "\u{2581}").as_bytes()));
            }
            let mut score_bytes = 6u32.to_le_bytes().to_vec();
            score_bytes.extend((scores.len() as u64).to_le_bytes());
            score_bytes.extend(scores.iter().flat_map(|s| s.to_le_bytes()));
            let int = |v: u32| (4, v.to_le_bytes().to_vec());
            let mut g = Gguf { kvs: Vec::new(), tensors: Vec::new(), data: Vec::new(), pack: 32 };
            for (key, (vtype, value)) in [
                ("general.architecture", (8, gstr(b"llama"))),
                ("general.name", (8, gstr(b"tiny"))),
                ("llama.embedding_length", int(dim as u32)),
                ("llama.feed_forward_length", int(hidden as u32)),
                ("llama.block_count", int(1)),
                ("llama.attention.head_count", int(2)),
                ("llama.context_length", int(4)),
                ("tokenizer.ggml.tokens", (9, tokens)),
                ("tokenizer.ggml.scores", (9, score_bytes)),
            ] {
                g.kvs.push((key.to_string(), vtype, value));
            }
            let vocab = pieces.len() as u64;
            let names: [(&str, &[u64]); 11] = [
                ("token_embd.weight", &[dim, vocab]),
                ("output_norm.weight", &[dim]),
                ("blk.0.attn_norm.weight", &[dim]),
                ("blk.0.attn_q.weight", &[dim, dim]),
                ("blk.0.attn_k.weight", &[dim, dim]),
                ("blk.0.attn_v.weight", &[dim, dim]),
                ("blk.0.attn_output.weight", &[dim, dim]),
                ("blk.0.ffn_norm.weight", &[dim]),
                ("blk.0.ffn_gate.weight", &[dim, hidden]),
                ("blk.0.ffn_down.weight", &[hidden, dim]),
                ("blk.0.ffn_up.weight", &[dim, hidden]),
            ];
            for (name, dims) in names {
                g.add_typed(name, dims, if q8.contains(&name) { Q8_0 } else { F32 });
            }
            g
        }

        /// Appends an F32 tensor's info and its (zero) data at the next aligned offset.
        fn add_tensor(&mut self, name: &str, dims: &[u64]) {
            self.add_typed(name, dims, F32);
        }

        /// Appends a tensor's info and its (zero) data at the next multiple of `pack` (and of
        /// 4, for F32).
        fn add_typed(&mut self, name: &str, dims: &[u64], ttype: u32) {
            let pack = if ttype == F32 { self.pack.max(4) } else { self.pack };
            self.data.resize(self.data.len().div_ceil(pack) * pack, 0);
            self.tensors.push((name.to_string(), dims.to_vec(), self.data.len() as u64, ttype));
            self.data.resize(self.data.len() + tensor_bytes(dims, ttype), 0);
        }

        /// A tensor's data, to fill in.
        fn data_of(&mut self, name: &str) -> &mut [u8] {
            let t = self.tensors.iter().find(|t| t.0 == name).expect("a tensor");
            let (at, n) = (t.2 as usize, tensor_bytes(&t.1, t.3));
            &mut self.data[at..at + n]
        }

        fn bytes(&self) -> Vec<u8> {
            self.bytes_padded(32)
        }

        /// The file, its data section starting at the next multiple of `align`.
        fn bytes_padded(&self, align: usize) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(3u32.to_le_bytes());
            out.extend((self.tensors.len() as u64).to_le_bytes());
            out.extend((self.kvs.len() as u64).to_le_bytes());
            for (key, vtype, value) in &self.kvs {
                out.extend(gstr(key.as_bytes()));
                out.extend(vtype.to_le_bytes());
                out.extend(value);
            }
            for (name, dims, offset, ttype) in &self.tensors {
                out.extend(gstr(name.as_bytes()));
                out.extend((dims.len() as u32).to_le_bytes());
                dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
                out.extend(ttype.to_le_bytes());
                out.extend(offset.to_le_bytes());
            }
            out.resize(out.len().div_ceil(align) * align, 0);
            out.extend(&self.data);
            out
        }

        fn kv(&self, key: &str) -> (String, u32, Vec<u8>) {
            self.kvs.iter().find(|kv| kv.0 == key).cloned().expect("the key is there")
        }
    }

    /// The tiny model with the synthetic vocabulary and its scores.
    fn good() -> Gguf {
        let pieces = synthetic_pieces();
        let scores: Vec<f32> = (0..pieces.len()).map(|i| -(i as f32)).collect();
        Gguf::tiny(&pieces, &scores)
    }

    #[test]
    fn an_unaligned_data_section_is_copied_intact() {
        // general.alignment=1 lets the data start off a 4-byte boundary, so the reader must copy
        // the floats to aligned memory; every float is its own index, to see each one land
        let mut g = good();
        g.kvs.push(("general.alignment".to_string(), 4, 1u32.to_le_bytes().to_vec()));
        for (i, b) in g.data.chunks_exact_mut(4).enumerate() {
            b.copy_from_slice(&(i as f32).to_le_bytes());
        }
        let name_at = g.kvs.iter().position(|kv| kv.0 == "general.name").expect("the key is there");
        for name in ["tiny", "tiny1", "tiny12", "tiny123"] {
            g.kvs[name_at].2 = gstr(name.as_bytes());
            if !(g.bytes_padded(1).len() - g.data.len()).is_multiple_of(4) {
                break;
            }
        }
        assert_ne!((g.bytes_padded(1).len() - g.data.len()) % 4, 0, "the data section is unaligned");
        let f = Scratch::new("gguf-unaligned.gguf", &g.bytes_padded(1));
        let Ok(ckpt) = read_checkpoint(f.path()) else { panic!("the unaligned GGUF reads") };
        let Ok(w) = ckpt.weights() else { panic!("its weights are in bounds") };
        let starts_at = |name: &str| g.tensors.iter().find(|t| t.0 == name).expect("a tensor").2 as usize / 4;
        let counts_from = |t: &[f32], first: usize| t.iter().enumerate().all(|(k, &v)| v == (first + k) as f32);
        fn floats<'a>(m: Matrix<'a>) -> &'a [f32] {
            m.f32().expect("an F32 matrix")
        }
        assert!(counts_from(floats(w.token_embedding), starts_at("token_embd.weight")));
        assert!(counts_from(w.rms_final, starts_at("output_norm.weight")));
        assert!(counts_from(floats(w.layers[0].w2), starts_at("blk.0.ffn_down.weight")));
        assert!(counts_from(floats(w.layers[0].w3), starts_at("blk.0.ffn_up.weight")));
    }

    #[test]
    fn a_tiny_gguf_reads_and_its_tokenizer_loads() {
        let f = Scratch::new("gguf-good.gguf", &good().bytes());
        let Ok(ckpt) = read_checkpoint(f.path()) else { panic!("the tiny GGUF reads") };
        assert_eq!((ckpt.config.dim, ckpt.config.n_layers, ckpt.config.vocab_size), (8, 1, 264));
        assert!(ckpt.config.shared_classifier);
        assert!(ckpt.weights().is_ok());
        assert!(Tokenizer::build(f.path(), ckpt.vocab.expect("embedded")).is_ok());
    }

    /// What llama.cpp's loader refuses, refused here too.
    #[test]
    fn files_llama_cpp_refuses_are_refused() {
        type Change = fn(&mut Gguf);
        let cases: [(&str, Change, &str); 8] = [
            ("empty-key", |g| g.kvs[1].0.clear(), "a metadata key is empty"),
            ("dup-key", |g| g.kvs.push(g.kv("llama.block_count")), "llama.block_count appears twice"),
            ("dup-tok-key", |g| g.kvs.push(g.kv("tokenizer.ggml.scores")), "tokenizer.ggml.scores appears twice"),
            ("dup-tensor", |g| g.add_tensor("output_norm.weight", &[DIM]), "tensor output_norm.weight appears twice"),
            ("extra-tensor", |g| g.add_tensor("extra.weight", &[32]), "extra.weight is not one of the model's 11"),
            (
                "unaligned",
                |g| {
                    g.tensors.last_mut().expect("tensors").2 += 4;
                    g.data.extend([0; 64]);
                },
                "is not a multiple of general.alignment=32",
            ),
            ("overlap", |g| g.tensors[2].2 = g.tensors[1].2, "overlap"),
            ("overlap-part", |g| g.tensors[4].2 -= 32, "tensors blk.0.attn_q.weight and blk.0.attn_k.weight overlap"),
        ];
        for (name, change, problem) in cases {
            let mut g = good();
            change(&mut g);
            let f = Scratch::new(&format!("gguf-{name}.gguf"), &g.bytes());
            expect_file_error(read_checkpoint(f.path()), f.path(), problem);
        }
    }

    /// The contract's tokenizer refusals for the embedded tokenizer: no "▁" token, or a score that is NaN
    /// or infinite, is refused when the tokenizer loads.
    #[test]
    fn the_embedded_tokenizer_is_checked_on_load() {
        let pieces = synthetic_pieces();
        let scores: Vec<f32> = (0..pieces.len()).map(|i| -(i as f32)).collect();
        let no_space: Vec<Vec<u8>> =
            pieces.iter().map(|p| if p == b" " { b"@@".to_vec() } else { p.clone() }).collect();
        let mut non_finite = Vec::new();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut s = scores.clone();
            s[3] = bad;
            non_finite.push(s);
        }
        let cases = [
            ("no-space", Gguf::tiny(&no_space, &scores), "no ' ' piece"),
            ("nan", Gguf::tiny(&pieces, &non_finite[0]), "token 3 has a non-finite score NaN"),
            ("inf", Gguf::tiny(&pieces, &non_finite[1]), "token 3 has a non-finite score inf"),
            ("neg-inf", Gguf::tiny(&pieces, &non_finite[2]), "token 3 has a non-finite score -inf"),
        ];
        for (name, g, problem) in cases {
            let f = Scratch::new(&format!("gguf-vocab-{name}.gguf"), &g.bytes());
            let Ok(ckpt) = read_checkpoint(f.path()) else { panic!("{name}: the model part of the file is fine") };
            expect_file_error(Tokenizer::build(f.path(), ckpt.vocab.expect("embedded")), f.path(), problem);
        }
    }

    /// Every matrix Q8_0 but ffn_down, whose rows (hidden = 48) are not whole blocks of 32: the
    /// mix the converter writes for stories260K.
    const Q8_MATRICES: [&str; 6] = [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.0.attn_v.weight",
        "blk.0.attn_output.weight",
        "blk.0.ffn_gate.weight",
    ];

    fn good_q8() -> Gguf {
        let pieces = synthetic_pieces();
        let scores: Vec<f32> = (0..pieces.len()).map(|i| -(i as f32)).collect();
        let mut names = Q8_MATRICES.to_vec();
        names.push("blk.0.ffn_up.weight"); // last in the file: the truncation case cuts into it
        Gguf::shaped(&pieces, &scores, 32, 48, &names)
    }

    /// Q8_0 and F32 tensors in one file and one layer, read where they lie: in place, and when
    /// the data section is copied (general.alignment=1, not 4-byte aligned), Q8_0 tensors packed
    /// at any byte and the last one ending off a 4-byte boundary.
    #[test]
    fn q8_0_and_f32_tensors_mix_and_read_intact() {
        for packed in [false, true] {
            let mut pieces = synthetic_pieces();
            pieces.push(b"ba".to_vec()); // 265 rows: the embedding and classifier take 9010 bytes each
            let scores: Vec<f32> = (0..pieces.len()).map(|i| -(i as f32)).collect();
            let mut g = Gguf::shaped(&pieces, &scores, 32, 48, &Q8_MATRICES);
            if packed {
                g.kvs.push(("general.alignment".to_string(), 4, 1u32.to_le_bytes().to_vec()));
                g.pack = 1;
                g.tensors.clear();
                g.data.clear();
                let names: Vec<(&str, u64, u64)> = vec![
                    ("token_embd.weight", 32, 265),
                    ("output_norm.weight", 32, 1),
                    ("blk.0.attn_norm.weight", 32, 1),
                    ("blk.0.attn_q.weight", 32, 32),
                    ("blk.0.attn_k.weight", 32, 32),
                    ("blk.0.attn_v.weight", 32, 32),
                    ("blk.0.attn_output.weight", 32, 32),
                    ("blk.0.ffn_norm.weight", 32, 1),
                    ("blk.0.ffn_gate.weight", 32, 48),
                    ("blk.0.ffn_down.weight", 48, 32),
                    ("blk.0.ffn_up.weight", 32, 48),
                ];
                for (name, cols, rows) in names {
                    let dims: &[u64] = if rows == 1 { &[cols] } else { &[cols, rows] };
                    g.add_typed(name, dims, if Q8_MATRICES.contains(&name) { Q8_0 } else { F32 });
                }
                g.add_typed("output.weight", &[32, 265], Q8_0); // an unshared classifier, Q8_0, last
                assert_ne!(g.data.len() % 4, 0, "the data section ends off a 4-byte boundary");
                let name_at = g.kvs.iter().position(|kv| kv.0 == "general.name").expect("the key is there");
                for name in ["tiny", "tiny1", "tiny12", "tiny123"] {
                    g.kvs[name_at].2 = gstr(name.as_bytes());
                    if !(g.bytes_padded(1).len() - g.data.len()).is_multiple_of(4) {
                        break;
                    }
                }
            }
            // every byte its own pattern, to see each land where it belongs
            for (i, b) in g.data.iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
            // row 3 of the embedding: scale 0.5, quants -16..15
            let row3 = &mut g.data_of("token_embd.weight")[3 * 34..4 * 34];
            row3[..2].copy_from_slice(&0x3800u16.to_le_bytes());
            row3[2..].iter_mut().enumerate().for_each(|(i, q)| *q = (i as i8 - 16) as u8);
            let bytes = if packed { g.bytes_padded(1) } else { g.bytes() };
            if packed {
                assert_ne!((bytes.len() - g.data.len()) % 4, 0, "the data section is unaligned");
            }
            let f = Scratch::new(&format!("gguf-q8-mixed-{packed}.gguf"), &bytes);
            let ckpt = match read_checkpoint(f.path()) {
                Ok(c) => c,
                Err(e) => panic!("the mixed GGUF reads: {e:?}"),
            };
            assert_eq!(ckpt.config.shared_classifier, !packed);
            let Ok(w) = ckpt.weights() else { panic!("its weights are in bounds") };
            let l = &w.layers[0];
            let matrices = [
                ("token_embd.weight", w.token_embedding),
                ("blk.0.attn_q.weight", l.wq),
                ("blk.0.attn_k.weight", l.wk),
                ("blk.0.attn_v.weight", l.wv),
                ("blk.0.attn_output.weight", l.wo),
                ("blk.0.ffn_gate.weight", l.w1),
                ("blk.0.ffn_down.weight", l.w2),
                ("blk.0.ffn_up.weight", l.w3),
                (if packed { "output.weight" } else { "token_embd.weight" }, w.wcls),
            ];
            for (name, m) in matrices {
                let want = g.data_of(name).to_vec();
                let q8 = Q8_MATRICES.contains(&name) || name == "output.weight";
                let got: Vec<u8> = match m {
                    Matrix::Q8(q) if q8 => q.to_vec(),
                    Matrix::F32(v) if !q8 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    _ => panic!("{name} is not of its type in the file"),
                };
                assert!(got == want, "{name} (packed: {packed})");
            }
            let norm: Vec<u8> = w.rms_final.iter().flat_map(|x| x.to_le_bytes()).collect();
            assert!(norm == g.data_of("output_norm.weight"));
            let mut row = vec![0.0f32; 32];
            w.token_embedding.row_into(3, &mut row);
            assert!(row.iter().enumerate().all(|(i, &v)| v == 0.5 * (i as f32 - 16.0)), "{row:?}");
        }
    }

    /// What a Q8_0 tensor may not be: rows that are not whole blocks, a norm, cut short by the end
    /// of the file, or running into the next tensor; and a type neither F32 nor Q8_0.
    #[test]
    fn bad_q8_0_tensors_are_refused() {
        type Change = fn(&mut Gguf);
        let cases: [(&str, Change, &str); 5] = [
            (
                "rows",
                |g| g.tensors[9].3 = Q8_0,
                "tensor blk.0.ffn_down.weight is Q8_0 with rows of 48 values, not a multiple of the block size 32",
            ),
            ("norm", |g| g.tensors[2].3 = Q8_0, "tensor blk.0.attn_norm.weight is Q8_0; only matrices may be"),
            (
                "type",
                |g| g.tensors[3].3 = 2,
                "tensor blk.0.attn_q.weight has type 2; only F32 (0), F16 (1), Q8_0 (8) and BF16 (30) are supported",
            ),
            (
                "truncated",
                |g| {
                    let n = g.data.len();
                    g.data.truncate(n - 1);
                },
                "tensor blk.0.ffn_up.weight lies outside the file",
            ),
            (
                // as float32 bytes (4 per value) or as one byte per value, attn_q (32 x 32) would
                // end before attn_k; its 32 blocks of 34 bytes do not
                "overlap",
                |g| g.tensors[4].2 = g.tensors[3].2 + 32 * 32,
                "tensors blk.0.attn_q.weight and blk.0.attn_k.weight overlap",
            ),
        ];
        let f = Scratch::new("gguf-q8-good.gguf", &good_q8().bytes());
        assert!(read_checkpoint(f.path()).is_ok_and(|c| c.weights().is_ok()), "the unchanged file reads");
        for (name, change, problem) in cases {
            let mut g = good_q8();
            change(&mut g);
            let f = Scratch::new(&format!("gguf-q8-{name}.gguf"), &g.bytes());
            expect_file_error(read_checkpoint(f.path()), f.path(), problem);
        }
    }

    /// Each matrix in its own type, F16 and BF16 mixed with F32 in one layer, every value a
    /// different 16-bit pattern; `packed`: offsets at any even byte and a data section that is
    /// not 4-byte aligned, so the reader copies it.
    fn good_half(packed: bool) -> Gguf {
        let pieces = synthetic_pieces();
        let scores: Vec<f32> = (0..pieces.len()).map(|i| -(i as f32)).collect();
        let mut g = Gguf::shaped(&pieces, &scores, DIM, HIDDEN, &[]);
        let types = [
            ("token_embd.weight", BF16),
            ("blk.0.attn_q.weight", F16),
            ("blk.0.attn_k.weight", BF16),
            ("blk.0.attn_v.weight", F32),
            ("blk.0.attn_output.weight", F16),
            ("blk.0.ffn_gate.weight", BF16),
            ("blk.0.ffn_down.weight", F16),
            ("blk.0.ffn_up.weight", F16),
        ];
        let old = std::mem::take(&mut g.tensors);
        g.data.clear();
        if packed {
            g.kvs.push(("general.alignment".to_string(), 4, 2u32.to_le_bytes().to_vec()));
            g.pack = 2;
        }
        for (name, dims, _, _) in old {
            let ttype = types.iter().find(|t| t.0 == name).map_or(F32, |t| t.1);
            g.add_typed(&name, &dims, ttype);
        }
        if packed {
            g.add_typed("output.weight", &[DIM, pieces.len() as u64], F16); // an unshared classifier, last
        }
        for (i, b) in g.data.chunks_exact_mut(2).enumerate() {
            b.copy_from_slice(&(i as u16 ^ 0x1234).to_le_bytes());
        }
        g
    }

    #[test]
    fn f16_and_bf16_tensors_mix_with_f32_and_read_intact() {
        use crate::half::{bf16_to_f32, f16_bits_to_f32, Half};
        for packed in [false, true] {
            let mut g = good_half(packed);
            let bytes = if packed {
                // make the data section start off a 4-byte boundary
                let at = g.kvs.iter().position(|kv| kv.0 == "general.name").expect("the key is there");
                for name in ["tiny", "tiny1", "tiny12", "tiny123"] {
                    g.kvs[at].2 = gstr(name.as_bytes());
                    if !(g.bytes_padded(2).len() - g.data.len()).is_multiple_of(4) {
                        break;
                    }
                }
                let b = g.bytes_padded(2);
                assert_ne!((b.len() - g.data.len()) % 4, 0, "the data section is unaligned");
                b
            } else {
                g.bytes()
            };
            let f = Scratch::new(&format!("gguf-half-{packed}.gguf"), &bytes);
            let ckpt = read_checkpoint(f.path()).unwrap_or_else(|e| panic!("the 16-bit GGUF reads: {e:?}"));
            assert_eq!(ckpt.config.shared_classifier, !packed);
            let w = ckpt.weights().unwrap_or_else(|e| panic!("its weights are in bounds: {e:?}"));
            let l = &w.layers[0];
            let matrices = [
                ("token_embd.weight", w.token_embedding, Some(Half::Bf16)),
                ("blk.0.attn_q.weight", l.wq, Some(Half::F16)),
                ("blk.0.attn_k.weight", l.wk, Some(Half::Bf16)),
                ("blk.0.attn_v.weight", l.wv, None),
                ("blk.0.attn_output.weight", l.wo, Some(Half::F16)),
                ("blk.0.ffn_gate.weight", l.w1, Some(Half::Bf16)),
                ("blk.0.ffn_down.weight", l.w2, Some(Half::F16)),
                ("blk.0.ffn_up.weight", l.w3, Some(Half::F16)),
                (if packed { "output.weight" } else { "token_embd.weight" }, w.wcls, Some(if packed { Half::F16 } else { Half::Bf16 })),
            ];
            for (name, m, ty) in matrices {
                let want = g.data_of(name).to_vec();
                let got: Vec<u8> = match (m, ty) {
                    (Matrix::Half(t, h), Some(ty)) if t == ty => h.to_vec(),
                    (Matrix::F32(v), None) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                    _ => panic!("{name} is not of its type in the file"),
                };
                assert!(got == want, "{name} (packed: {packed})");
            }
            // the embedding lookup widens its row
            let raw = g.data_of("token_embd.weight")[3 * 2 * DIM as usize..4 * 2 * DIM as usize].to_vec();
            let mut row = vec![0.0f32; DIM as usize];
            w.token_embedding.row_into(3, &mut row);
            for (k, v) in row.iter().enumerate() {
                assert_eq!(v.to_bits(), bf16_to_f32(u16::from_le_bytes([raw[2 * k], raw[2 * k + 1]])).to_bits());
            }
            let raw = g.data_of("blk.0.attn_q.weight")[..2 * DIM as usize].to_vec();
            l.wq.row_into(0, &mut row);
            for (k, v) in row.iter().enumerate() {
                let want = f16_bits_to_f32(u16::from_le_bytes([raw[2 * k], raw[2 * k + 1]]));
                assert!(v.to_bits() == want.to_bits() || (v.is_nan() && want.is_nan()));
            }
        }
    }

    /// What a 16-bit tensor may not be: a norm, cut short by the end of the file, or running
    /// into the next tensor at its 2-byte size.
    #[test]
    fn bad_16_bit_tensors_are_refused() {
        type Change = fn(&mut Gguf);
        let cases: [(&str, Change, &str); 5] = [
            ("f16-norm", |g| g.tensors[2].3 = F16, "tensor blk.0.attn_norm.weight is F16; only matrices may be"),
            ("bf16-norm", |g| g.tensors[1].3 = BF16, "tensor output_norm.weight is BF16; only matrices may be"),
            ("other-type", |g| g.tensors[3].3 = 2, "tensor blk.0.attn_q.weight has type 2"),
            (
                "truncated",
                |g| {
                    let n = g.data.len();
                    g.data.truncate(n - 1);
                },
                "tensor blk.0.ffn_up.weight lies outside the file",
            ),
            (
                // at 1 byte a value attn_q (8 x 8, F16) would end before attn_k; at 2 it does not
                "overlap",
                |g| g.tensors[4].2 = g.tensors[3].2 + 96,
                "tensors blk.0.attn_q.weight and blk.0.attn_k.weight overlap",
            ),
        ];
        let f = Scratch::new("gguf-half-good.gguf", &good_half(false).bytes());
        assert!(read_checkpoint(f.path()).is_ok_and(|c| c.weights().is_ok()), "the unchanged file reads");
        for (name, change, problem) in cases {
            let mut g = good_half(false);
            change(&mut g);
            let f = Scratch::new(&format!("gguf-half-{name}.gguf"), &g.bytes());
            expect_file_error(read_checkpoint(f.path()), f.path(), problem);
        }
    }

    /// A key's value bytes for GGUF type `vtype`.
    fn kv_num(vtype: u32, v: f64) -> Vec<u8> {
        match vtype {
            0 => vec![v as u8],
            1 => vec![v as i8 as u8],
            2 => (v as u16).to_le_bytes().to_vec(),
            3 => (v as i16).to_le_bytes().to_vec(),
            4 => (v as u32).to_le_bytes().to_vec(),
            5 => (v as i32).to_le_bytes().to_vec(),
            6 => (v as f32).to_le_bytes().to_vec(),
            7 => vec![(v != 0.0) as u8],
            10 => (v as u64).to_le_bytes().to_vec(),
            11 => (v as i64).to_le_bytes().to_vec(),
            _ => v.to_le_bytes().to_vec(),
        }
    }

    fn with_keys(keys: &[(&str, u32, Vec<u8>)]) -> Gguf {
        let mut g = good();
        for (key, vtype, value) in keys {
            g.kvs.retain(|kv| kv.0 != *key);
            g.kvs.push((key.to_string(), *vtype, value.clone()));
        }
        g
    }

    #[test]
    fn the_keys_are_read_with_llama_cpps_defaults() {
        let f = Scratch::new("gguf-keys-default.gguf", &good().bytes());
        let c = read_checkpoint(f.path()).unwrap_or_else(|e| panic!("{e:?}")).config;
        assert_eq!((c.theta, c.eps, c.bos, c.eos), (10000.0, 1e-5, 1, 2));
        // any numeric type: a float64 theta, a float32 eps, ids of small and signed integer types
        let cases: [(&str, [(&str, u32, f64); 4], (f32, f32, u32, u32)); 3] = [
            (
                "wide",
                [
                    ("llama.rope.freq_base", 12, 500000.0),
                    ("llama.attention.layer_norm_rms_epsilon", 6, 1e-6),
                    ("tokenizer.ggml.bos_token_id", 3, 5.0),
                    ("tokenizer.ggml.eos_token_id", 0, 250.0),
                ],
                (500000.0, 1e-6, 5, 250),
            ),
            (
                "int-theta",
                [
                    ("llama.rope.freq_base", 5, 1000000.0),
                    ("llama.attention.layer_norm_rms_epsilon", 12, 0.5),
                    ("tokenizer.ggml.bos_token_id", 11, 0.0),
                    ("tokenizer.ggml.eos_token_id", 10, 1.0),
                ],
                (1e6, 0.5, 0, 1),
            ),
            (
                "u16-theta",
                [
                    ("llama.rope.freq_base", 2, 2.0),
                    ("llama.rope.dimension_count", 1, 4.0),
                    ("llama.expert_count", 4, 0.0),
                    ("tokenizer.ggml.eos_token_id", 2, 2.0),
                ],
                (2.0, 1e-5, 1, 2),
            ),
        ];
        for (name, keys, want) in cases {
            let keys: Vec<(&str, u32, Vec<u8>)> = keys.iter().map(|&(k, t, v)| (k, t, kv_num(t, v))).collect();
            let mut g = with_keys(&keys);
            g.kvs.push(("llama.rope.scaling.type".to_string(), 8, gstr(b"none")));
            let f = Scratch::new(&format!("gguf-keys-{name}.gguf"), &g.bytes());
            let c = read_checkpoint(f.path()).unwrap_or_else(|e| panic!("{name}: {e:?}")).config;
            assert_eq!((c.theta, c.eps, c.bos, c.eos), want, "{name}");
        }
    }

    /// A key of the wrong kind or out of its range, and what the architecture does not compute,
    /// refused with one line naming the key.
    #[test]
    fn bad_keys_are_refused_naming_the_key() {
        let theta = "llama.rope.freq_base";
        let eps = "llama.attention.layer_norm_rms_epsilon";
        let (rot, bos, eos) = ("llama.rope.dimension_count", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id");
        let (scaling, experts) = ("llama.rope.scaling.type", "llama.expert_count");
        let cases: Vec<(&str, u32, Vec<u8>)> = vec![
            (theta, 8, gstr(b"10000")),
            (theta, 7, vec![1]),
            (theta, 6, kv_num(6, 1.0)),
            (theta, 12, kv_num(12, f64::NAN)),
            (theta, 12, kv_num(12, f64::INFINITY)),
            (theta, 5, kv_num(5, -5.0)),
            (eps, 6, kv_num(6, 0.0)),
            (eps, 6, kv_num(6, 1.0)),
            (eps, 6, kv_num(6, -1e-5)),
            (eps, 6, kv_num(6, f64::NAN)),
            (eps, 8, gstr(b"1e-5")),
            (rot, 4, kv_num(4, 2.0)),
            (rot, 6, kv_num(6, 4.0)),
            (bos, 4, kv_num(4, 264.0)),
            (bos, 6, kv_num(6, 1.0)),
            (bos, 7, vec![1]),
            (eos, 5, kv_num(5, -1.0)),
            (eos, 8, gstr(b"2")),
            (scaling, 8, gstr(b"linear")),
            (scaling, 4, kv_num(4, 0.0)),
            (experts, 4, kv_num(4, 8.0)),
            (experts, 8, gstr(b"0")),
        ];
        for (i, (key, vtype, value)) in cases.into_iter().enumerate() {
            let g = with_keys(&[(key, vtype, value)]);
            let f = Scratch::new(&format!("gguf-bad-key-{i}.gguf"), &g.bytes());
            expect_file_error(read_checkpoint(f.path()), f.path(), key);
        }
    }

    /// The file's theta and eps are the ones the forward pass uses: each moves the logits, and
    /// the defaults written out give the same logits as no keys at all.
    #[test]
    fn theta_and_eps_change_the_logits() {
        use crate::model::{forward, RunState};
        use crate::pool::Pool;
        use crate::testutil::Lcg;
        let logits = |keys: &[(&str, u32, Vec<u8>)], name: &str| -> Vec<f32> {
            let mut g = with_keys(keys);
            let mut rng = Lcg(5);
            for b in g.data.chunks_exact_mut(4) {
                b.copy_from_slice(&(rng.float() * 0.8).to_le_bytes());
            }
            let f = Scratch::new(&format!("gguf-logits-{name}.gguf"), &g.bytes());
            let ckpt = read_checkpoint(f.path()).unwrap_or_else(|e| panic!("{e:?}"));
            let c = ckpt.config;
            let w = ckpt.weights().unwrap_or_else(|e| panic!("{e:?}"));
            let pool = Pool::build(1).unwrap_or_else(|e| panic!("{e:?}"));
            let mut state = RunState::build(&c, 1, c.seq_len).unwrap_or_else(|e| panic!("{e:?}"));
            let mut out = Vec::new();
            for (pos, id) in [1usize, 40, 41, 7].into_iter().enumerate() {
                out.extend_from_slice(forward(&c, &w, &mut state, &pool, id, pos));
            }
            pool.free();
            out
        };
        let base = logits(&[], "none");
        let defaults = logits(
            &[
                ("llama.rope.freq_base", 6, kv_num(6, 10000.0)),
                ("llama.attention.layer_norm_rms_epsilon", 6, kv_num(6, 1e-5)),
            ],
            "defaults",
        );
        assert!(base == defaults, "the defaults written out are the defaults");
        let diff = |a: &[f32], b: &[f32]| a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        let theta = logits(&[("llama.rope.freq_base", 6, kv_num(6, 500000.0))], "theta");
        let eps = logits(&[("llama.attention.layer_norm_rms_epsilon", 6, kv_num(6, 0.25))], "eps");
        assert!(diff(&base, &theta) > 1e-3, "theta moves the logits: {}", diff(&base, &theta));
        assert!(diff(&base, &eps) > 1e-3, "eps moves the logits: {}", diff(&base, &eps));
        // position 0 has no rotation: theta cannot move its logits
        let v = base.len() / 4;
        assert_eq!(diff(&base[..v], &theta[..v]), 0.0);
    }
}
