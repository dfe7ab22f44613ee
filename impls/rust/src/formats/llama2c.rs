//! llama2.c checkpoints, v0 (legacy) and v1: one header reader and one walk over the tensors;
//! the two versions differ only in their Layout (header size, where the fields are, the order
//! of the tensors).

use std::fs::File;
use std::path::Path;

use super::{Checkpoint, Kind, LayerTensors, Storage, Tensor, Tensors};
use crate::errors::{bad_file, Res};
use crate::files::{file_size, le_i32, load_file};
use crate::model::Config;

pub const V1_MAGIC: u32 = 0x616b_3432;

/// One run of float32 tensors in the file.
#[derive(Clone, Copy)]
enum Part {
    TokenEmbedding, // (vocab, dim)
    Layer(usize),   // (n_layers, rows, cols) with the shape Config::layer_shapes()[i]
    RmsFinal,       // (dim)
    FreqCis,        // (seq_len, head_size / 2) twice: legacy RoPE tables, skipped (RoPE is computed)
    Wcls,           // (vocab, dim), only when the classifier is not shared
}

// Config::layer_shapes (and LayerTensors::from_array) order
const RMS_ATT: usize = 0;
const WQ: usize = 1;
const WK: usize = 2;
const WV: usize = 3;
const WO: usize = 4;
const RMS_FFN: usize = 5;
const W1: usize = 6;
const W2: usize = 7;
const W3: usize = 8;

pub struct Layout {
    version: i64,
    pub header_bytes: usize,
    fields_at: usize, // the seven int32 dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
    order: &'static [Part],
}

use Part::{FreqCis, Layer, RmsFinal, TokenEmbedding, Wcls};

pub const V0: Layout = Layout {
    version: 0,
    header_bytes: 28,
    fields_at: 0,
    order: &[
        TokenEmbedding,
        Layer(RMS_ATT),
        Layer(WQ),
        Layer(WK),
        Layer(WV),
        Layer(WO),
        Layer(RMS_FFN),
        Layer(W1),
        Layer(W2),
        Layer(W3),
        RmsFinal,
        FreqCis,
        Wcls,
    ],
};

/// v1 puts the small vectors first, then the matrices.
pub const V1: Layout = Layout {
    version: 1,
    header_bytes: 256,
    fields_at: 8,
    order: &[
        Layer(RMS_ATT),
        Layer(RMS_FFN),
        RmsFinal,
        TokenEmbedding,
        Layer(WQ),
        Layer(WK),
        Layer(WV),
        Layer(WO),
        Layer(W1),
        Layer(W2),
        Layer(W3),
        Wcls,
    ],
};

impl Part {
    /// Floats in this part (u128: computed before the file size confirms them).
    fn floats(self, c: &Config) -> u128 {
        let embed = c.vocab_size as u128 * c.dim as u128;
        match self {
            TokenEmbedding => embed,
            Layer(i) => {
                let (rows, cols) = c.layer_shapes()[i];
                c.n_layers as u128 * rows as u128 * cols as u128
            }
            RmsFinal => c.dim as u128,
            FreqCis => c.seq_len as u128 * c.head_size() as u128,
            Wcls if c.shared_classifier => 0,
            Wcls => embed,
        }
    }
}

/// A v0 or v1 file whose first bytes (up to a v1 header's worth) are `head`.
pub fn read_llama2c(path: &Path, f: &File, head: &[u8], layout: &Layout) -> Res<Checkpoint> {
    let c = read_header(path, head, layout)?;
    let floats: u128 = layout.order.iter().map(|p| p.floats(&c)).sum();
    let size = check_size(path, f, &c, layout.header_bytes as u128 + 4 * floats)?;
    let tensors = locate(&c, layout);
    Ok(Checkpoint { config: c, storage: Storage(load_file(path, f, size)?), tensors, vocab: None })
}

/// The header of either version, checked in the contract's order.
fn read_header(path: &Path, head: &[u8], layout: &Layout) -> Res<Config> {
    let (version, need) = (layout.version, layout.header_bytes);
    if head.len() < need {
        return bad_file(path, format!("truncated: {} bytes, a v{version} header needs {need}", head.len()));
    }
    let h: Vec<i64> = (0..7).map(|i| le_i32(head, layout.fields_at + 4 * i)).collect();
    if version == 0 {
        // a negative vocab_size marks an unshared classifier
        return Config::validate(path, h[0], h[1], h[2], h[3], h[4], h[5].abs(), h[6], h[5] > 0);
    }
    let found = le_i32(head, 4);
    if found != 1 {
        return bad_file(path, format!("unsupported llama2.c format version {found} (only 0 and 1 are fp32)"));
    }
    let shared = head[36];
    if shared > 1 {
        return bad_file(path, format!("shared_classifier flag is {shared}, expected 0 or 1"));
    }
    Config::validate(path, h[0], h[1], h[2], h[3], h[4], h[5], h[6], shared == 1)
}

/// v0/v1 files hold the header and the tensors, nothing more: truncated and oversized files
/// are both refused.
fn check_size(path: &Path, f: &File, config: &Config, expected: u128) -> Res<u64> {
    let actual = file_size(path, f)?;
    if actual as u128 != expected {
        let kind = if (actual as u128) < expected { "truncated" } else { "oversized" };
        return bad_file(
            path,
            format!("{kind}: file is {actual} bytes, header ({}) implies {expected}", config.describe()),
        );
    }
    Ok(actual)
}

/// Hands out consecutive float32 tensors of the file, `at` bytes in.
struct Cut {
    at: usize,
}

impl Cut {
    fn take(&mut self, n: usize) -> Tensor {
        let t = Tensor { at: self.at, len: n, kind: Kind::F32 };
        self.at += 4 * n;
        t
    }
}

/// Where each tensor lies: the layout's parts one after the other from the end of the header.
fn locate(c: &Config, layout: &Layout) -> Tensors {
    let mut cut = Cut { at: layout.header_bytes };
    let mut per_layer: [Vec<Tensor>; 9] = Default::default();
    let mut t = Tensors {
        token_embedding: Tensor::default(),
        layers: Vec::new(),
        rms_final: Tensor::default(),
        wcls: Tensor::default(),
    };
    for &part in layout.order {
        let n = part.floats(c) as usize; // fits: the file is that large
        match part {
            TokenEmbedding => t.token_embedding = cut.take(n),
            Layer(i) => per_layer[i] = (0..c.n_layers).map(|_| cut.take(n / c.n_layers)).collect(),
            RmsFinal => t.rms_final = cut.take(n),
            FreqCis => cut.at += 4 * n,
            // the embedding comes before the classifier in both layouts
            Wcls => t.wcls = if c.shared_classifier { t.token_embedding } else { cut.take(n) },
        }
    }
    t.layers = (0..c.n_layers).map(|l| LayerTensors::from_array(std::array::from_fn(|i| per_layer[i][l]))).collect();
    t
}
