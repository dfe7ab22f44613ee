//! Files: opening, reading a header, loading the weights, all failures as one `error:` line.

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

/// The whole file as read-only memory, where the forward pass reads every weight.
///
/// On Linux the file is read into anonymous memory advised into transparent huge pages: with
/// THP in `madvise` mode (Debian's default) a file mapping stays in 4 KiB pages, and a pass over
/// hundreds of MB of weights then misses the TLB on nearly every page. `POLYLLAMA_HUGEPAGES=0`
/// keeps the file mapping, for before/after runs; other systems always map the file. So does a
/// file larger than half the memory the system has available: anonymous memory cannot be given
/// back under pressure, the page cache behind a mapping can.
pub fn load_file(path: &Path, f: &File, size: u64) -> Res<memmap2::Mmap> {
    #[cfg(target_os = "linux")]
    if huge_pages_wanted() && available_memory().is_none_or(|avail| size <= avail / 2) {
        return read_into_huge_pages(path, f, size);
    }
    let _ = size; // the mapping takes the size from the file itself
    map_file(path, f)
}

/// Unless POLYLLAMA_HUGEPAGES is exactly `0`.
#[cfg(target_os = "linux")]
fn huge_pages_wanted() -> bool {
    std::env::var_os("POLYLLAMA_HUGEPAGES").is_none_or(|v| v != "0")
}

/// MemAvailable from /proc/meminfo, in bytes (None where it cannot be read).
#[cfg(target_os = "linux")]
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Anonymous read-write memory of `len` bytes, advised into huge pages where that is wanted.
/// Not populated: the first write faults in each page, by then advised, as a huge page.
pub fn anon_region(len: usize) -> std::io::Result<memmap2::MmapMut> {
    let region = memmap2::MmapMut::map_anon(len)?;
    #[cfg(target_os = "linux")]
    if huge_pages_wanted() {
        let _ = region.advise(memmap2::Advice::HugePage); // a refusal only costs speed
    }
    Ok(region)
}

/// read(2)s straight into the region, rather than copying from a mapping, so that at most one
/// copy of the file is ever resident; then the weights are made read-only, as in a file mapping.
#[cfg(target_os = "linux")]
fn read_into_huge_pages(path: &Path, f: &File, size: u64) -> Res<memmap2::Mmap> {
    use std::os::unix::fs::FileExt;
    let too_big = |e: String| bad_file(path, format!("cannot allocate {size} bytes: {e}"));
    let len = match usize::try_from(size) {
        Ok(n) => n,
        Err(_) => return too_big("larger than the address space".into()),
    };
    let mut region = match anon_region(len) {
        Ok(r) => r,
        Err(e) => return too_big(e.to_string()),
    };
    f.read_exact_at(&mut region, 0).or_else(|e| bad_file(path, format!("cannot read: {}", os_problem(&e))))?;
    region.make_read_only().or_else(|e| bad_file(path, format!("cannot protect the weights: {e}")))
}

fn map_file(path: &Path, f: &File) -> Res<memmap2::Mmap> {
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
