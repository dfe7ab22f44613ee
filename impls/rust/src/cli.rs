//! The command line (contract section 2): strict flags, each taking exactly one value.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;

use crate::errors::{usage, Res};

pub const USAGE: &str = "usage: run <checkpoint> [-z tokenizer] [-t temperature] [-p topp] [-s seed] [-n steps] \
[-i prompt] [-j threads] [-m generate|logits] [-o file] [-k ids] [-e 0|1] [-b batch]";

#[derive(Debug)]
pub struct Args {
    pub checkpoint: PathBuf,
    pub tokenizer: Option<PathBuf>,
    pub temperature: f64,
    pub topp: f64,
    pub seed: u64,
    pub steps: usize,
    pub prompt: Vec<u8>,
    pub threads: usize,
    pub logits_mode: bool,
    pub output: Option<PathBuf>,
    pub ids: Option<Vec<i128>>,
    pub ignore_bos: bool,
    /// -b: positions a batched forward pass takes at once (the caller clamps it to seq_len)
    pub batch: usize,
}

fn os_bytes(s: &OsStr) -> Vec<u8> {
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

/// A count with any number of digits (`-n`): at least 0, saturating at usize::MAX, which the
/// caller clamps to seq_len like any value above it.
fn parse_count(flag: &str, text: &str) -> Res<usize> {
    if !is_plain_int(text) {
        return usage(format!("{flag} expects an integer, got '{text}'"));
    }
    let (negative, digits) = match text.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let value = digits.bytes().fold(0usize, |v, b| v.saturating_mul(10).saturating_add((b - b'0') as usize));
    if negative && value != 0 {
        return usage(format!("{flag} {text} is out of range"));
    }
    Ok(value)
}

impl Args {
    /// The defaults of section 2.
    fn new(checkpoint: PathBuf) -> Args {
        Args {
            checkpoint,
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
            batch: 512,
        }
    }

    /// Applies one flag and its value.
    fn set(&mut self, flag: &str, raw: &OsStr) -> Res<()> {
        let value = raw.to_string_lossy();
        let v = &*value;
        match flag {
            "-z" => self.tokenizer = Some(PathBuf::from(raw)),
            "-t" => self.temperature = parse_float("-t", v, 0.0, f64::INFINITY)?,
            "-p" => self.topp = parse_float("-p", v, 0.0, 1.0)?,
            "-s" => self.seed = parse_int("-s", v, 0, u64::MAX as i128)? as u64,
            "-n" => self.steps = parse_count("-n", v)?,
            "-i" => self.prompt = os_bytes(raw),
            "-j" => self.threads = parse_int("-j", v, 1, 4096)? as usize,
            "-m" => match v {
                "generate" => self.logits_mode = false,
                "logits" => self.logits_mode = true,
                _ => return usage(format!("-m expects generate or logits, got '{v}'")),
            },
            "-o" => self.output = Some(PathBuf::from(raw)),
            "-k" => {
                let ids: Option<Vec<i128>> =
                    v.split(',').map(|t| if is_plain_int(t) { t.parse().ok() } else { None }).collect();
                match ids {
                    Some(ids) => self.ids = Some(ids),
                    None => return usage(format!("-k expects comma-separated token ids, got '{v}'")),
                }
            }
            "-e" => self.ignore_bos = parse_int("-e", v, 0, 1)? == 1,
            "-b" => match parse_count("-b", v)? {
                0 => return usage(format!("-b {v} is out of range")),
                b => self.batch = b,
            },
            _ => return usage(format!("unknown flag {flag}")),
        }
        Ok(())
    }
}

pub fn parse_args(argv: &[OsString]) -> Res<Args> {
    let first = match argv.first() {
        Some(a) if !os_bytes(a).starts_with(b"-") => PathBuf::from(a),
        _ => return usage("missing checkpoint"),
    };
    let mut args = Args::new(first);
    let rest = &argv[1..];
    if rest.len() % 2 == 1 {
        return usage(format!("flag {} has no value", rest[rest.len() - 1].to_string_lossy()));
    }
    for pair in rest.chunks_exact(2) {
        args.set(&pair[0].to_string_lossy(), &pair[1])?;
    }
    if args.logits_mode && (args.output.is_none() || args.ids.is_none()) {
        return usage("logits mode needs -o FILE and -k IDS");
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::Fail;

    fn parse(v: &[&str]) -> Res<Args> {
        parse_args(&v.iter().map(OsString::from).collect::<Vec<_>>())
    }

    #[test]
    fn args_are_strict() {
        let a = parse;
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

    /// -n takes any number of digits (the caller clamps it to seq_len),
    /// -j is in [1, 4096], -s in [0, 2^64 - 1].
    #[test]
    fn numeric_flags_at_their_limits() {
        let steps = |n: &str| parse(&["m", "-n", n]).map(|a| a.steps).unwrap_or_else(|e| panic!("-n {n}: {e:?}"));
        assert_eq!(steps("1099511627776"), 1099511627776);
        assert_eq!(steps("99999999999999999999999999"), usize::MAX);
        assert_eq!(steps("+0000000000000000000000000000000000000000007"), 7);
        assert_eq!(steps("0"), 0);
        assert_eq!(steps("-0"), 0);
        assert!(matches!(parse(&["m", "-n", "-1"]), Err(Fail::Usage(_))));
        assert!(matches!(parse(&["m", "-n", "-99999999999999999999999999"]), Err(Fail::Usage(_))));
        assert_eq!(parse(&["m", "-j", "4096"]).map(|a| a.threads).ok(), Some(4096));
        assert!(matches!(parse(&["m", "-j", "4097"]), Err(Fail::Usage(_))));
        assert_eq!(parse(&["m", "-s", "18446744073709551615"]).map(|a| a.seed).ok(), Some(u64::MAX));
        assert!(matches!(parse(&["m", "-s", "18446744073709551616"]), Err(Fail::Usage(_))));
        assert!(matches!(parse(&["m", "-s", "-1"]), Err(Fail::Usage(_))));
    }

    /// -b: an integer >= 1 of any number of digits (the caller clamps it to seq_len); 512 unset.
    #[test]
    fn batch_flag() {
        let batch = |b: &str| parse(&["m", "-b", b]).map(|a| a.batch).unwrap_or_else(|e| panic!("-b {b}: {e:?}"));
        assert_eq!(parse(&["m"]).map(|a| a.batch).ok(), Some(512));
        assert_eq!(batch("1"), 1);
        assert_eq!(batch("+64"), 64);
        assert_eq!(batch("0007"), 7);
        assert_eq!(batch("99999999999999999999999999"), usize::MAX);
        for bad in ["0", "-0", "-1", "x", "", "1.5", " 2", "1e3", "-99999999999999999999"] {
            assert!(matches!(parse(&["m", "-b", bad]), Err(Fail::Usage(_))), "-b {bad:?}");
        }
        assert!(matches!(parse(&["m", "-b"]), Err(Fail::Usage(_))));
    }
}
