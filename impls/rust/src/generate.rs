//! Generation: run.c's loop and the logits mode (contract section 2), both reporting the
//! statistics line (section 3).

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::cli::Args;
use crate::errors::{os_problem, usage, Fail, Res};
use crate::model::{forward, forward_batch, Logits, Model};
use crate::pool::Pool;
use crate::sampler::Sampler;
use crate::model::Config;
use crate::tokenizer::{printable, Tokenizer};
use crate::PORT;

#[derive(Default)]
pub struct Stats {
    prompt_tokens: usize,
    generated_tokens: usize,
    positions: usize,
    ttft_s: f64,
    prefill_s: f64,
    prefill_tokens: usize,
    decode_s: f64,
}

/// `-n`: 0, or more than the model's positions, means seq_len.
fn clamp_steps(steps: usize, seq_len: usize) -> usize {
    if steps == 0 || steps > seq_len {
        seq_len
    } else {
        steps
    }
}

/// The positions a run reaches, which the KV cache holds: the steps after clamping (generate),
/// or the number of -k ids (logits mode; they are checked here, a usage error when bad).
pub fn run_positions(args: &Args, c: &Config) -> Res<usize> {
    if args.logits_mode {
        return Ok(checked_ids(args, c)?.len());
    }
    Ok(clamp_steps(args.steps, c.seq_len))
}

/// -k's ids: 1..seq_len of them, each in [0, vocab).
fn checked_ids(args: &Args, c: &Config) -> Res<Vec<u32>> {
    let ids = args.ids.as_deref().unwrap_or(&[]);
    let (seq, vocab) = (c.seq_len, c.vocab_size);
    if ids.is_empty() || ids.len() > seq || ids.iter().any(|&t| t < 0 || t >= vocab as i128) {
        return usage(format!("-k needs 1..{seq} ids in [0, {vocab})"));
    }
    Ok(ids.iter().map(|&t| t as u32).collect())
}

/// Generate mode: run.c's seed (0 = the time), steps clamped to seq_len, then the loop.
pub fn run_generate(args: &Args, m: &mut Model, tok: &Tokenizer, pool: &Pool) -> Res<Stats> {
    let seed = if args.seed > 0 {
        args.seed
    } else {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_secs())
    };
    let mut sampler = Sampler::build(args.temperature, args.topp, seed);
    let steps = clamp_steps(args.steps, m.config.seq_len);
    generate(m, tok, &mut sampler, pool, &args.prompt, steps, args.ignore_bos)
}

/// Logits mode: -k's ids checked against the model, their logits written to -o.
pub fn run_logits(args: &Args, m: &mut Model, pool: &Pool) -> Res<Stats> {
    let ids = checked_ids(args, &m.config)?;
    logits_to_file(m, pool, &ids, args.output.as_deref().unwrap_or(Path::new("")))
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

    // prefill: the prompt's positions in batches; logits only for the last prompt position,
    // and only when the prompt fits the steps
    let n_prefill = prompt_tokens.len().min(steps);
    prefill(m, pool, &prompt_tokens[..n_prefill], n_prefill == prompt_tokens.len());
    st.positions = n_prefill;
    st.prefill_tokens = n_prefill;
    st.prefill_s = start.elapsed().as_secs_f64();

    // decode: run.c's loop, forward only for the positions the prefill did not run
    let mut first: Option<Instant> = None;
    let mut token = prompt_tokens[0];
    for pos in 0..steps {
        if pos >= n_prefill {
            forward(&m.config, &m.weights, &mut m.state, pool, token as usize, pos);
            st.positions += 1;
        }
        let next = if pos + 1 < prompt_tokens.len() {
            prompt_tokens[pos + 1]
        } else {
            st.generated_tokens += 1;
            let id = sampler.sample(m.state.logits()) as u32;
            first.get_or_insert_with(Instant::now);
            id
        };
        if next == tok.bos() && !ignore_bos {
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

/// Positions 0 .. tokens.len() in consecutive batches of at most the state's batch rows; with
/// `last_logits`, the last position's logits are left in the state's logits. A batch of one
/// position is run.c's forward.
fn prefill(m: &mut Model, pool: &Pool, tokens: &[u32], last_logits: bool) {
    let batch = m.state.batch_rows();
    let mut p0 = 0;
    while p0 < tokens.len() {
        let chunk = &tokens[p0..(p0 + batch).min(tokens.len())];
        let last = p0 + chunk.len() == tokens.len();
        if chunk.len() == 1 {
            forward(&m.config, &m.weights, &mut m.state, pool, chunk[0] as usize, p0);
        } else {
            let want = if last && last_logits { Logits::Last } else { Logits::None };
            forward_batch(&m.config, &m.weights, &mut m.state, pool, chunk, p0, want);
        }
        p0 += chunk.len();
    }
}

/// Logits after each position of `ids`, computed in batches, written as raw little-endian
/// float32 rows.
fn logits_to_file(m: &mut Model, pool: &Pool, ids: &[u32], path: &Path) -> Res<Stats> {
    let cannot = |e: std::io::Error| Fail::Runtime(format!("{}: cannot write: {}", path.display(), os_problem(&e)));
    let mut f = std::io::BufWriter::new(File::create(path).map_err(cannot)?);
    let mut elapsed = 0.0;
    let batch = m.state.batch_rows();
    let mut row = Vec::new();
    let mut p0 = 0;
    while p0 < ids.len() {
        let chunk = &ids[p0..(p0 + batch).min(ids.len())];
        let t0 = Instant::now();
        let logits = if chunk.len() == 1 {
            forward(&m.config, &m.weights, &mut m.state, pool, chunk[0] as usize, p0)
        } else {
            forward_batch(&m.config, &m.weights, &mut m.state, pool, chunk, p0, Logits::All)
        };
        elapsed += t0.elapsed().as_secs_f64();
        row.clear();
        row.extend(logits.iter().flat_map(|v| v.to_le_bytes()));
        f.write_all(&row).map_err(cannot)?;
        p0 += chunk.len();
    }
    f.flush().map_err(cannot)?;
    Ok(Stats {
        prompt_tokens: ids.len(),
        positions: ids.len(),
        ttft_s: elapsed,
        prefill_s: elapsed,
        prefill_tokens: ids.len(),
        ..Stats::default()
    })
}

pub fn stats_line(threads: usize, batch: usize, load_s: f64, st: &Stats) -> String {
    let tok_s =
        if st.generated_tokens > 1 && st.decode_s > 0.0 { (st.generated_tokens - 1) as f64 / st.decode_s } else { 0.0 };
    let prefill_tok_s = if st.prefill_s > 0.0 { st.prefill_tokens as f64 / st.prefill_s } else { 0.0 };
    format!(
        "polyllama-stats: {{\"port\":\"{PORT}\",\"prompt_tokens\":{},\"generated_tokens\":{},\"positions\":{},\
\"threads\":{threads},\"batch\":{batch},\"load_s\":{load_s:.6},\"ttft_s\":{:.6},\"prefill_s\":{:.6},\
\"prefill_tok_s\":{prefill_tok_s:.4},\"decode_s\":{:.6},\"decode_tok_s\":{tok_s:.4}}}",
        st.prompt_tokens, st.generated_tokens, st.positions, st.ttft_s, st.prefill_s, st.decode_s
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step count of any size becomes seq_len, as 0 does.
    #[test]
    fn steps_clamp_to_seq_len() {
        assert_eq!(clamp_steps(0, 512), 512);
        assert_eq!(clamp_steps(1, 512), 1);
        assert_eq!(clamp_steps(512, 512), 512);
        assert_eq!(clamp_steps(513, 512), 512);
        assert_eq!(clamp_steps(1099511627776, 512), 512);
        assert_eq!(clamp_steps(usize::MAX, 512), 512);
    }
}
