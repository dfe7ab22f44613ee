//! Checkpoint formats (contract section 4): the sniffing, and what every reader produces, a
//! validated Checkpoint whose weights are used in place, in memory the file was loaded into.

mod gguf;
mod llama2c;

use std::path::Path;

use crate::errors::{Fail, Res};
use crate::files::{open_file, read_head};
use crate::half::Half;
use crate::kernels::Matrix;
use crate::model::{Config, LayerWeights, Weights};
use crate::q8;
use crate::tokenizer::Vocab;

/// Sniffs the format from the first bytes: GGUF magic, v1 magic, or the legacy v0 header.
pub fn read_checkpoint(path: &Path) -> Res<Checkpoint> {
    let mut f = open_file(path)?;
    let head = read_head(path, &mut f, llama2c::V1.header_bytes)?;
    if head.starts_with(b"GGUF") {
        return gguf::read_gguf(path, &f);
    }
    let layout = if head.starts_with(&llama2c::V1_MAGIC.to_le_bytes()) { &llama2c::V1 } else { &llama2c::V0 };
    llama2c::read_llama2c(path, &f, &head, layout)
}

// ----------------------------------------------------------------------------
// Formats: what a reader hands over

/// Where the weights live: the loaded file (files::load_file: read into huge pages, or mapped),
/// or (GGUF data not 4-byte aligned) one copy of its data section.
struct Storage(memmap2::Mmap);

impl Storage {
    fn floats(&self) -> &[f32] {
        let m = &self.0;
        // SAFETY: a mapping starts on a page boundary, so it is aligned for f32, and every bit
        // pattern is a valid f32; the length is rounded down to whole floats.
        unsafe { std::slice::from_raw_parts(m.as_ptr() as *const f32, m.len() / 4) }
    }

    fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// How a tensor's values are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum Kind {
    #[default]
    F32,
    /// GGUF's Q8_0 (q8.rs), matrices only
    Q8,
    /// GGUF's F16 or BF16 (half.rs), matrices only
    Half(Half),
}

/// A tensor in the storage: its first byte (4-byte aligned for F32), its values, their kind.
#[derive(Clone, Copy, Debug, Default)]
struct Tensor {
    at: usize,
    len: usize,
    kind: Kind,
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
    /// From the nine tensors in Config::layer_shapes order.
    fn from_array(t: [Tensor; 9]) -> LayerTensors {
        let [rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3] = t;
        LayerTensors { rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3 }
    }
}

/// Where every tensor of the model lies in the storage.
struct Tensors {
    token_embedding: Tensor, // (vocab, dim)
    layers: Vec<LayerTensors>,
    rms_final: Tensor, // (dim)
    wcls: Tensor,      // (vocab, dim): the token embedding when the classifier is shared
}

/// A validated model file: config, where each tensor is, and (GGUF) the tokenizer.
pub struct Checkpoint {
    pub config: Config,
    storage: Storage,
    tensors: Tensors,
    pub vocab: Option<Vocab>,
}

impl Checkpoint {
    /// The weights as slices of the storage (bounds-checked once, here).
    pub fn weights(&self) -> Res<Weights<'_>> {
        let (floats, bytes) = (self.storage.floats(), self.storage.bytes());
        let outside = || Fail::Runtime("internal error: tensor outside the weights".into());
        let vector = |t: Tensor| -> Res<&[f32]> {
            if t.kind != Kind::F32 || !t.at.is_multiple_of(4) {
                return Err(outside());
            }
            t.len.checked_add(t.at / 4).and_then(|end| floats.get(t.at / 4..end)).ok_or_else(outside)
        };
        let matrix = |t: Tensor| -> Res<Matrix> {
            match t.kind {
                Kind::F32 => vector(t).map(Matrix::F32),
                Kind::Q8 => {
                    let n = q8::row_bytes(t.len); // the reader checked: whole rows of whole blocks
                    let q = n.checked_add(t.at).and_then(|end| bytes.get(t.at..end)).ok_or_else(outside)?;
                    Ok(Matrix::Q8(q))
                }
                Kind::Half(ty) => {
                    let n = t.len.checked_mul(2).ok_or_else(outside)?;
                    let h = n.checked_add(t.at).and_then(|end| bytes.get(t.at..end)).ok_or_else(outside)?;
                    Ok(Matrix::Half(ty, h))
                }
            }
        };
        let t = &self.tensors;
        let mut layers = Vec::with_capacity(t.layers.len());
        for lt in &t.layers {
            layers.push(LayerWeights {
                rms_att: vector(lt.rms_att)?,
                wq: matrix(lt.wq)?,
                wk: matrix(lt.wk)?,
                wv: matrix(lt.wv)?,
                wo: matrix(lt.wo)?,
                rms_ffn: vector(lt.rms_ffn)?,
                w1: matrix(lt.w1)?,
                w2: matrix(lt.w2)?,
                w3: matrix(lt.w3)?,
            });
        }
        Ok(Weights {
            token_embedding: matrix(t.token_embedding)?,
            layers,
            rms_final: vector(t.rms_final)?,
            wcls: matrix(t.wcls)?,
        })
    }
}
