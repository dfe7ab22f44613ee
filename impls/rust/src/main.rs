//! polyllama, the Rust port: inference for Karpathy's llama2.c model family (Llama 2
//! architecture, fp32, or GGUF's 8-bit Q8_0 matrices), written after run.c and following
//! docs/port-contract.md.
//!
//! This file wires the modules together in run.c's order: flags, model file, tokenizer, run
//! state and thread pool, then generation or logits. Everything read from a file or a flag is
//! checked before it is trusted: bad input ends in one `error:` line and the contract's exit
//! code, never in a panic.

mod cli;
mod errors;
mod files;
mod formats;
mod gemm;
mod generate;
mod half;
mod kernels;
mod model;
mod pool;
mod q8;
mod q8_gemm;
mod sampler;
#[cfg(test)]
mod testutil;
mod tokenizer;

use std::ffi::OsString;
use std::time::Instant;

use cli::{parse_args, Args, USAGE};
use errors::{usage, Fail, Res};
use formats::{read_checkpoint, Checkpoint};
use generate::{run_generate, run_logits, run_positions, stats_line};
use model::{Model, RunState};
use pool::Pool;
use tokenizer::Tokenizer;

#[cfg(target_endian = "big")]
compile_error!("polyllama reads little-endian float32 weights in place; big-endian hosts are not supported");

/// The manifest's `name`, reported in the statistics line.
const PORT: &str = "rust";

/// The GGUF's own tokenizer (any -z is ignored), or -z's tokenizer.bin; either is checked as it
/// loads, before any prompt is read.
fn load_tokenizer(args: &Args, ckpt: &mut Checkpoint) -> Res<Tokenizer> {
    let (bos, eos) = (ckpt.config.bos, ckpt.config.eos);
    let tokenizer = match (ckpt.vocab.take(), &args.tokenizer) {
        (Some(embedded), _) => Tokenizer::build(&args.checkpoint, embedded),
        (None, None) => usage("-z tokenizer is required for a .bin checkpoint"),
        (None, Some(path)) => Tokenizer::load(path, ckpt.config.vocab_size),
    }?;
    Ok(tokenizer.with_special(bos, eos))
}

fn run(argv: &[OsString]) -> Res<()> {
    let t0 = Instant::now();
    let args = parse_args(argv)?;
    let mut ckpt = read_checkpoint(&args.checkpoint)?;
    let config = ckpt.config;
    let tokenizer = load_tokenizer(&args, &mut ckpt)?;
    // the KV cache holds the positions this run reaches, checked and allocated once, now that
    // the command line and the file are
    let rows = run_positions(&args, &config)?;
    config.check_kv_cache(&args.checkpoint, rows)?;
    let state = RunState::build(&config, args.batch, rows)?;
    let mut model = Model { config, weights: ckpt.weights()?, state };
    let pool = Pool::build(args.threads)?;
    let load_s = t0.elapsed().as_secs_f64();

    let stats = if args.logits_mode {
        run_logits(&args, &mut model, &pool)?
    } else {
        run_generate(&args, &mut model, &tokenizer, &pool)?
    };
    eprintln!("{}", stats_line(pool.threads(), model.state.batch_rows(), load_s, &stats));
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
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    if let Err(e) = run(&argv) {
        match &e {
            Fail::Usage(msg) => eprintln!("error: {msg}\n{USAGE}"),
            Fail::File(msg) | Fail::Runtime(msg) => eprintln!("error: {msg}"),
        }
        std::process::exit(e.exit_code());
    }
}
