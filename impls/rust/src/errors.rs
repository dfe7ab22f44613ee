//! Errors: each one becomes a single `error:` line and an exit code (contract section 3).

use std::path::Path;

#[derive(Debug)]
pub enum Fail {
    /// a bad flag or value (exit 2)
    Usage(String),
    /// a missing, unreadable or malformed model or tokenizer file (exit 3)
    File(String),
    /// allocation, thread or output failures (exit 1)
    Runtime(String),
}

impl Fail {
    pub fn exit_code(&self) -> i32 {
        match self {
            Fail::Runtime(_) => 1,
            Fail::Usage(_) => 2,
            Fail::File(_) => 3,
        }
    }
}

pub type Res<T> = Result<T, Fail>;

pub fn bad_file<T>(path: &Path, problem: impl std::fmt::Display) -> Res<T> {
    Err(Fail::File(format!("{}: {problem}", path.display())))
}

pub fn usage<T>(msg: impl Into<String>) -> Res<T> {
    Err(Fail::Usage(msg.into()))
}

/// An I/O error as the contract's messages spell the common cases.
pub fn os_problem(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_string(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        _ => e.to_string(),
    }
}
