//! Files: opening, reading a header, memory-mapping, all failures as one `error:` line.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::errors::{bad_file, os_problem, Res};

pub fn open_file(path: &Path) -> Res<File> {
    match File::open(path) {
        Ok(f) => match f.metadata() {
            Ok(m) if m.is_dir() => bad_file(path, "cannot open: is a directory"),
            Ok(_) => Ok(f),
            Err(e) => bad_file(path, format!("cannot open: {}", os_problem(&e))),
        },
        Err(e) => bad_file(path, format!("cannot open: {}", os_problem(&e))),
    }
}

pub fn file_size(path: &Path, f: &File) -> Res<u64> {
    f.metadata().map(|m| m.len()).or_else(|e| bad_file(path, format!("cannot open: {}", os_problem(&e))))
}

/// Up to n bytes from the file's current position (fewer when it is shorter).
pub fn read_head(path: &Path, f: &mut File, n: usize) -> Res<Vec<u8>> {
    let mut head = Vec::with_capacity(n);
    Read::by_ref(f).take(n as u64).read_to_end(&mut head).or_else(|e| bad_file(path, format!("cannot read: {e}")))?;
    Ok(head)
}

pub fn map_file(path: &Path, f: &File) -> Res<memmap2::Mmap> {
    // populate: fault the pages in now (counted in load_s) rather than during the first tokens
    // SAFETY: the file is opened read-only; like every mmap reader we assume it is not
    // truncated underneath us while we run.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(f) }
        .or_else(|e| bad_file(path, format!("cannot map: {e}")))?;
    #[cfg(unix)]
    let _ = map.advise(memmap2::Advice::WillNeed); // where MAP_POPULATE does not exist (macOS)
    Ok(map)
}

/// The little-endian int32 at byte `at`, widened so that header arithmetic cannot overflow.
pub fn le_i32(b: &[u8], at: usize) -> i64 {
    i32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as i64
}
