//! Thread pool: -j N = the main thread plus N-1 workers, created once. Each parallel step (a
//! fused matmul, the attention heads) is one job over `items` (rows, heads), cut into a few
//! chunks per thread that threads claim from a shared counter. The caller works too, so on a
//! busy machine a descheduled worker costs at most the chunk it holds, not a whole share.
//! Idle workers spin briefly (the gaps inside a token are microseconds), then sleep.

use std::cell::UnsafeCell;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::errors::{Fail, Res};

pub type Job<'a> = dyn Fn(Range<usize>) + Sync + 'a;

/// The job being run; written only while no chunk of the previous job is in flight.
struct JobSlot {
    job: Option<*const Job<'static>>,
    items: usize,
    grain: usize, // chunk boundaries fall on multiples of grain items
    chunks: usize,
}

struct PoolShared {
    n: usize,
    // (epoch << 32) | chunks left to claim: one word, so that a claim is valid only for the
    // job it was meant for
    ticket: AtomicU64,
    done: AtomicUsize, // chunks finished in the current job
    sleepers: AtomicUsize,
    caller_sleeping: AtomicBool,
    quit: AtomicBool,
    slot: UnsafeCell<JobSlot>,
    lock: Mutex<()>,
    wake: Condvar,     // workers wait here for the next job
    finished: Condvar, // the caller waits here for the last chunk
}

// SAFETY: `slot` is written by the caller of `run` only before it publishes a job (ticket, with
// release) and after every chunk of the previous job is done; a thread reads it only after
// claiming a chunk of the published job (acquire), which keeps that job alive until it is done.
unsafe impl Sync for PoolShared {}
unsafe impl Send for PoolShared {}

pub struct Pool {
    shared: Arc<PoolShared>,
    workers: Vec<JoinHandle<()>>,
}

/// Polls before sleeping (a pause each, some 50-100 us in all): longer than the gap between two
/// jobs of a token, far shorter than a time slice. Sleeping soon matters on a busy machine: a
/// thread that spins through its share of the CPU is scheduled late when the next job comes.
const SPIN_LIMIT: u32 = 2000;
const CHUNKS_PER_THREAD: usize = 4;

impl PoolShared {
    /// Claims one chunk of job `epoch`: its index, or None when none is left.
    fn claim(&self, epoch: u64) -> Option<usize> {
        let mut cur = self.ticket.load(Ordering::Acquire);
        loop {
            let left = cur & 0xffff_ffff;
            if cur >> 32 != epoch || left == 0 {
                return None;
            }
            match self.ticket.compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    // SAFETY: a claimed chunk keeps the job published (see above)
                    let slot = unsafe { &*self.slot.get() };
                    return Some(slot.chunks - left as usize);
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Runs chunks of job `epoch` until none is left.
    fn work(&self, epoch: u64) {
        while let Some(c) = self.claim(epoch) {
            // SAFETY: as in claim
            let slot = unsafe { &*self.slot.get() };
            let chunks = slot.chunks;
            let units = span(slot.items.div_ceil(slot.grain), c, chunks);
            let range = (units.start * slot.grain)..(units.end * slot.grain).min(slot.items);
            if let Some(job) = slot.job {
                unsafe { (*job)(range) };
            }
            // the slot may be reused as soon as the last chunk is counted: read nothing after
            if self.done.fetch_add(1, Ordering::SeqCst) + 1 == chunks && self.caller_sleeping.load(Ordering::SeqCst) {
                let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                self.finished.notify_all();
            }
        }
    }
}

impl Pool {
    pub fn build(n: usize) -> Res<Pool> {
        let shared = Arc::new(PoolShared {
            n,
            ticket: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            caller_sleeping: AtomicBool::new(false),
            quit: AtomicBool::new(false),
            slot: UnsafeCell::new(JobSlot { job: None, items: 0, grain: 1, chunks: 0 }),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            finished: Condvar::new(),
        });
        let mut pool = Pool { shared, workers: Vec::new() };
        for index in 1..n {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || worker_loop(&shared))
                .map_err(|e| Fail::Runtime(format!("cannot start worker thread {index}: {e}")))?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    pub fn threads(&self) -> usize {
        self.shared.n
    }

    /// Runs job over 0..items, cut into ranges (multiples of `grain` items) that the threads
    /// share; returns when all are done, so the job may borrow the caller's data.
    pub fn run(&self, items: usize, grain: usize, job: &Job<'_>) {
        let s = &*self.shared;
        let grain = grain.max(1);
        let chunks = items.div_ceil(grain).min(s.n * CHUNKS_PER_THREAD);
        if s.n == 1 || chunks <= 1 {
            job(0..items);
            return;
        }
        // SAFETY: the lifetime is erased only while this call runs: it returns after every
        // chunk is done, and no thread can claim a chunk of this job after that.
        let ptr: *const Job<'static> = unsafe { std::mem::transmute::<&Job<'_>, &'static Job<'static>>(job) };
        unsafe { *s.slot.get() = JobSlot { job: Some(ptr), items, grain, chunks } };
        s.done.store(0, Ordering::Relaxed);
        let epoch = (s.ticket.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xffff_ffff;
        s.ticket.store((epoch << 32) | chunks as u64, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        s.work(epoch);
        // the other chunks are in flight: spin a little, then sleep until the last one is done
        // (a worker holding one may have been descheduled on a busy machine)
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) != chunks {
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
                continue;
            }
            let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.caller_sleeping.store(true, Ordering::SeqCst);
            while s.done.load(Ordering::SeqCst) != chunks {
                g = s.finished.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.caller_sleeping.store(false, Ordering::SeqCst);
        }
    }

    pub fn free(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let s = &*self.shared;
        s.quit.store(true, Ordering::SeqCst);
        let epoch = (s.ticket.load(Ordering::Relaxed) >> 32).wrapping_add(1) & 0xffff_ffff;
        s.ticket.store(epoch << 32, Ordering::SeqCst);
        {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if !self.workers.is_empty() {
            self.stop();
        }
    }
}

fn worker_loop(s: &PoolShared) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0u32;
        loop {
            let e = s.ticket.load(Ordering::Acquire) >> 32;
            if e != seen {
                seen = e;
                break;
            }
            spins += 1;
            if spins < SPIN_LIMIT {
                std::hint::spin_loop();
                continue;
            }
            // sleep until the next job; the SeqCst pair sleepers/ticket rules out a lost wake-up
            let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            while s.ticket.load(Ordering::SeqCst) >> 32 == seen {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(g);
            spins = 0;
        }
        if s.quit.load(Ordering::Acquire) {
            return;
        }
        s.work(seen);
    }
}

/// Part `index` of `parts` of 0..n, as even as integers allow.
fn span(n: usize, index: usize, parts: usize) -> Range<usize> {
    (n * index / parts)..(n * (index + 1) / parts)
}

/// A shared output buffer that threads write in disjoint ranges.
#[derive(Clone, Copy)]
pub struct Out(*mut f32, usize);

// SAFETY: every job writes a range no other thread touches during that job (see `span`).
unsafe impl Sync for Out {}
unsafe impl Send for Out {}

impl Out {
    pub fn new(v: &mut [f32]) -> Out {
        Out(v.as_mut_ptr(), v.len())
    }

    /// SAFETY: the caller owns `range` exclusively for the duration of the job.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn part(&self, range: Range<usize>) -> &mut [f32] {
        assert!(range.start <= range.end && range.end <= self.1);
        std::slice::from_raw_parts_mut(self.0.add(range.start), range.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{matvec, matvec_rows, Input, Matrix};

    #[test]
    fn pool_covers_every_row_once() {
        for n in [1, 2, 3, 7] {
            let pool = Pool::build(n).unwrap();
            let mut out = vec![0.0f32; 1000];
            let w: Vec<f32> = (0..1000 * 37).map(|i| (i % 13) as f32).collect();
            let x: Vec<f32> = (0..37).map(|i| i as f32).collect();
            for _ in 0..50 {
                matvec(&pool, &mut out, Matrix::F32(&w), Input::f32(&x));
            }
            let mut want = vec![0.0f32; 1000];
            matvec_rows(&w, &x, 0..1000, |i, v| want[i] = v);
            assert_eq!(out, want);
            // every item exactly once, whatever the grain
            for (items, grain) in [(0, 1), (1, 1), (5, 1), (12, 1), (1000, 16), (1001, 16), (33, 64)] {
                let seen: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
                pool.run(items, grain, &|r| {
                    for i in r {
                        seen[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
                assert!(
                    seen.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                    "{n} threads, {items} items, grain {grain}"
                );
            }
            pool.free();
        }
    }
}
