//! Test helpers: model files from POLYLLAMA_MODEL_PATH, scratch files, a synthetic vocabulary.

use std::path::{Path, PathBuf};

use crate::errors::{Fail, Res};

/// The golden texts every port's tests read (tests/data/golden/, written by the reference).
pub fn golden(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/golden").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A file from POLYLLAMA_MODEL_PATH (`:`-separated). Only tests that build.rs compiled in (the
/// files were there, or CI=true) call it, so a missing file is a failure.
pub fn model_file(name: &str) -> String {
    let dirs = std::env::var("POLYLLAMA_MODEL_PATH").unwrap_or_default();
    for dir in dirs.split(':').filter(|d| !d.is_empty()) {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p.to_string_lossy().into_owned();
        }
    }
    panic!("{name} not found in POLYLLAMA_MODEL_PATH={dirs:?}");
}

/// A file in the temp directory, removed when dropped; the name must be unique among tests
/// (they run in parallel).
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str, bytes: &[u8]) -> Scratch {
        let path = std::env::temp_dir().join(format!("polyllama-rust-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).expect("the temp directory is writable");
        Scratch(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The smallest vocabulary the contract allows plus a few merges: `<unk>`, BOS, EOS, the 256
/// byte tokens, then " ", "a", "b", "ab", " a".
pub fn synthetic_pieces() -> Vec<Vec<u8>> {
    let mut pieces = vec![b"<unk>".to_vec(), b"\n<s>\n".to_vec(), b"\n</s>\n".to_vec()];
    pieces.extend((0..=255u8).map(|b| format!("<0x{b:02X}>").into_bytes()));
    pieces.extend([&b" "[..], b"a", b"b", b"ab", b" a"].map(|p| p.to_vec()));
    pieces
}

/// tokenizer.bin bytes: max_token_length, then (score, length, bytes) per token.
pub fn tokenizer_bin(pieces: &[Vec<u8>], scores: &[f32]) -> Vec<u8> {
    let max_len = pieces.iter().map(|p| p.len()).max().unwrap_or(1).max(1) as i32;
    let mut out = max_len.to_le_bytes().to_vec();
    for (piece, score) in pieces.iter().zip(scores) {
        out.extend(score.to_le_bytes());
        out.extend((piece.len() as i32).to_le_bytes());
        out.extend(piece);
    }
    out
}

/// Asserts a bad-file error (exit 3) whose one line names `path` and says `problem`.
pub fn expect_file_error<T>(result: Res<T>, path: &Path, problem: &str) {
    match result {
        Err(Fail::File(msg)) => {
            assert!(msg.starts_with(&format!("{}: ", path.display())), "{msg}");
            assert!(msg.contains(problem), "{msg:?} does not say {problem:?}");
            assert!(!msg.contains('\n'), "{msg:?} is not one line");
        }
        Err(other) => panic!("expected a bad-file error saying {problem:?}, got {other:?}"),
        Ok(_) => panic!("expected a bad-file error saying {problem:?}, got success"),
    }
}

/// llama.cpp's `quantize_row_q8_0_ref`, as the converter writes Q8_0 weights: per block of 32,
/// d = max |x| / 127, q = x * (1 / d) rounded half away from zero, d stored as fp16.
pub fn quantize_q8_0(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / crate::q8::BLOCK * crate::q8::BLOCK_BYTES);
    for block in x.chunks_exact(crate::q8::BLOCK) {
        let amax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(crate::q8::f32_to_f16(d).to_le_bytes());
        out.extend(block.iter().map(|v| (v * id).round() as i8 as u8));
    }
    out
}

/// splitmix64: test data that is the same on every run and target.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// uniform in [-1, 1)
    pub fn float(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}
