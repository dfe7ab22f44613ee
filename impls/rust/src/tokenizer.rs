//! The tokenizer (contract section 5): tokenizer.bin, the checks every vocabulary passes as it
//! loads, and llama2.c's byte-pair encode, decode and safe_print.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::errors::{bad_file, Fail, Res};
use crate::files::{file_size, le_i32, open_file, read_head};

/// llama2.c's ids, which a GGUF may change (tokenizer.ggml.bos_token_id / eos_token_id).
pub const BOS: u32 = crate::model::DEFAULT_BOS;
const EOS: u32 = crate::model::DEFAULT_EOS;
const MAX_TOKEN_LENGTH: i64 = 1024;

/// The tokenizer's pieces and scores, from tokenizer.bin or embedded in a GGUF file.
pub struct Vocab {
    pub pieces: Vec<Vec<u8>>,
    pub scores: Vec<f64>,
}

pub struct Tokenizer {
    vocab: Vocab,
    lookup: HashMap<Vec<u8>, u32>, // piece -> lowest id spelling it
    bos: u32,
    eos: u32,
}

// ----------------------------------------------------------------------------
// Tokenizer: reading tokenizer.bin, and the checks any vocabulary passes before it is used

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
    parse_tokens(path, &data, max_len, vocab_size)
}

/// The `vocab_size` tokens after the 4-byte header (score, length, bytes each), and nothing more.
fn parse_tokens(path: &Path, data: &[u8], max_len: i64, vocab_size: usize) -> Res<Vocab> {
    let mut pieces = Vec::with_capacity(vocab_size);
    let mut scores = Vec::with_capacity(vocab_size);
    let mut off = 4usize;
    for i in 0..vocab_size {
        if off + 8 > data.len() {
            return bad_file(path, format!("has only {i} tokens, the model's vocabulary is {vocab_size}"));
        }
        let score = f32::from_le_bytes([data[off], data[off + 1], data[off + 2], data[off + 3]]);
        let len = le_i32(data, off + 4);
        off += 8;
        if !(0..=max_len).contains(&len) {
            return bad_file(path, format!("token {i} has length {len}, outside 0..{max_len}"));
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

/// encode needs the 256 byte tokens for its fallback and the " " piece for its dummy prefix,
/// and the merge rule compares scores, which NaN or an infinity would make meaningless.
fn check_vocab(path: &Path, vocab: &Vocab) -> Res<()> {
    let n = vocab.pieces.len();
    if n < 259 {
        return bad_file(path, format!("a vocabulary of {n} tokens has no room for the 256 byte tokens"));
    }
    if !vocab.pieces.iter().any(|p| p == b" ") {
        return bad_file(path, "the vocabulary has no ' ' piece for the dummy prefix");
    }
    if let Some((i, score)) = vocab.scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
        return bad_file(path, format!("token {i} has a non-finite score {score}"));
    }
    Ok(())
}

// ----------------------------------------------------------------------------
// Tokenizer: encode (run.c's merge rule), decode, safe_print

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

impl Tokenizer {
    /// tokenizer.bin for a model of `vocab_size` tokens, checked as it loads.
    pub fn load(path: &Path, vocab_size: usize) -> Res<Tokenizer> {
        Tokenizer::build(path, read_tokenizer(path, vocab_size)?)
    }

    /// A tokenizer over `vocab` (read from `path`), refused unless it passes check_vocab: so
    /// every tokenizer is checked when it is loaded, before any prompt is read.
    pub fn build(path: &Path, vocab: Vocab) -> Res<Tokenizer> {
        check_vocab(path, &vocab)?;
        let mut lookup = HashMap::with_capacity(vocab.pieces.len());
        for (i, p) in vocab.pieces.iter().enumerate() {
            lookup.entry(p.clone()).or_insert(i as u32); // a duplicated piece keeps its lower id
        }
        Ok(Tokenizer { vocab, lookup, bos: BOS, eos: EOS })
    }

    /// The model's BOS and EOS ids (the GGUF's keys; the reader checked them against the
    /// vocabulary, which is this tokenizer's).
    pub fn with_special(self, bos: u32, eos: u32) -> Tokenizer {
        debug_assert!((bos as usize) < self.vocab_size() && (eos as usize) < self.vocab_size());
        Tokenizer { bos, eos, ..self }
    }

    /// The id that starts every encoding and stops generation.
    pub fn bos(&self) -> u32 {
        self.bos
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

    pub fn encode(&self, text: &[u8], bos: bool, eos: bool) -> Vec<u32> {
        let mut tokens = self.unmerged(text, bos);
        self.merge(&mut tokens);
        if eos {
            tokens.push(self.eos);
        }
        tokens
    }

    /// BOS, the dummy prefix, then one token per UTF-8 code point (or per byte, as fallback).
    fn unmerged(&self, text: &[u8], bos: bool) -> Vec<u32> {
        let mut tokens = Vec::with_capacity(text.len() + 3);
        if bos {
            tokens.push(self.bos);
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
    pub fn decode(&self, prev: u32, token: u32) -> &[u8] {
        let mut piece = &self.vocab.pieces[token as usize][..];
        if prev == self.bos && piece.first() == Some(&b' ') {
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
pub fn printable(piece: &[u8]) -> bool {
    match piece {
        [] => false,
        [b] => (0x20..=0x7e).contains(b) || matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r'),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{expect_file_error, model_file, synthetic_pieces, tokenizer_bin, Scratch};

    fn llama_tokenizer() -> Tokenizer {
        let path = model_file("tokenizer.bin");
        Tokenizer::load(Path::new(&path), 32000).unwrap_or_else(|_| panic!("{path} reads"))
    }

    #[test]
    #[cfg_attr(not(polyllama_models), ignore = "needs tokenizer.bin in POLYLLAMA_MODEL_PATH")]
    fn encode_known_vectors() {
        let t = llama_tokenizer();
        assert_eq!(
            t.encode(b"I believe the meaning of life is", true, false),
            vec![1, 306, 4658, 278, 6593, 310, 2834, 338]
        );
        assert_eq!(t.encode(b"Once upon a time", true, false), vec![1, 9038, 2501, 263, 931]);
        assert_eq!(t.encode(b"", true, false), vec![1]);
        assert_eq!(t.encode(b"hi", true, true).last(), Some(&EOS));
    }

    #[test]
    #[cfg_attr(not(polyllama_models), ignore = "needs tokenizer.bin in POLYLLAMA_MODEL_PATH")]
    fn encode_decode_round_trip_with_byte_fallback() {
        let t = llama_tokenizer();
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
    #[cfg_attr(not(polyllama_models), ignore = "needs tokenizer.bin in POLYLLAMA_MODEL_PATH")]
    fn heap_merge_equals_rescanning() {
        let t = llama_tokenizer();
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
    #[cfg_attr(not(polyllama_models), ignore = "needs tokenizer.bin in POLYLLAMA_MODEL_PATH")]
    fn tokenizer_rejects_wrong_vocab_size() {
        let path = model_file("tokenizer.bin");
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

    /// The contract's refusals: a vocabulary without a " " piece is refused when it loads, before any
    /// prompt (empty or not) is encoded.
    #[test]
    fn a_vocabulary_without_a_space_piece_is_refused_on_load() {
        let pieces = synthetic_pieces();
        let scores = vec![0.0f32; pieces.len()];
        let good = Scratch::new("space-good.bin", &tokenizer_bin(&pieces, &scores));
        assert!(Tokenizer::load(good.path(), pieces.len()).is_ok());
        let without: Vec<Vec<u8>> = pieces.iter().map(|p| if p == b" " { b"@@".to_vec() } else { p.clone() }).collect();
        let bad = Scratch::new("space-bad.bin", &tokenizer_bin(&without, &scores));
        expect_file_error(Tokenizer::load(bad.path(), pieces.len()), bad.path(), "no ' ' piece");
    }

    /// The contract's refusals: NaN and infinite scores in tokenizer.bin are refused (the GGUF side is
    /// tested in formats::gguf).
    #[test]
    fn non_finite_scores_are_refused() {
        let pieces = synthetic_pieces();
        for (name, bad) in [("nan", f32::NAN), ("inf", f32::INFINITY), ("neg-inf", f32::NEG_INFINITY)] {
            let mut scores = vec![-1.5f32; pieces.len()];
            scores[5] = bad;
            let f = Scratch::new(&format!("score-{name}.bin"), &tokenizer_bin(&pieces, &scores));
            expect_file_error(Tokenizer::load(f.path(), pieces.len()), f.path(), "token 5 has a non-finite score");
        }
    }
}
