//! A persistent thread pool for data-parallel kernels.
//!
//! `run(n_tasks, f)` calls `f(i)` for every `i < n_tasks` across the pool's threads (the calling
//! thread takes part) and returns when all calls have finished. Workers are spawned once.
//! `run_owned(n, f)` does the same with items owned by threads (contiguous ranges, stolen from
//! only when a thread is done with its own), for passes that should keep a batch's rows on the
//! core that produced them.
//!
//! Dispatch is lock-free on the hot path: a job is published by bumping a generation number
//! packed with the next task index in one atomic word; threads claim tasks by compare-and-swap
//! on that word, so a thread holding a stale generation can never claim (or run) a task of a
//! newer job. Idle workers spin for a short while (`SPIN`) before sleeping on a condvar, so
//! back-to-back matmuls of a decode step do not pay a futex wake-up each.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = *const (dyn Fn(usize) + Sync);

/// Task-index value of a generation whose job words are being written: nothing can be claimed.
const CLOSED: u64 = 0xffff_ffff;

/// How long an idle worker polls for new work before it sleeps.
const SPIN: Duration = Duration::from_micros(200);

struct Shared {
    /// `generation << 32 | next task index`.
    state: AtomicU64,
    /// The current job's fat pointer (data, vtable) and its size.
    job: [AtomicUsize; 2],
    n_tasks: AtomicUsize,
    /// Tasks of the current job that have finished.
    done: AtomicUsize,
    shutdown: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

/// A fixed set of worker threads.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    run_lock: Mutex<()>,
}

fn job_bits(j: Job) -> [usize; 2] {
    // SAFETY: a `*const dyn Trait` is two pointer-sized words.
    unsafe { std::mem::transmute::<Job, [usize; 2]>(j) }
}

impl ThreadPool {
    /// A pool with `n_threads` threads in all, the caller's included (so `n_threads - 1`
    /// workers). `0` means one per available core.
    pub fn new(n_threads: usize) -> Self {
        let n_threads = if n_threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            n_threads
        };
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: [AtomicUsize::new(0), AtomicUsize::new(0)],
            n_tasks: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..n_threads)
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("ferry-compute-{i}"))
                    .spawn(move || {
                        THREAD_INDEX.with(|c| c.set(i));
                        worker(&s)
                    })
                    .expect("spawn compute thread")
            })
            .collect();
        Self {
            shared,
            workers,
            n_threads,
            run_lock: Mutex::new(()),
        }
    }

    /// Threads in the pool, the caller's included.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Run `f(0..n_tasks)` in parallel and wait for all of it.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.n_threads == 1 || n_tasks == 1 {
            (0..n_tasks).for_each(f);
            return;
        }
        assert!(n_tasks < u32::MAX as usize, "too many tasks");
        let _serial = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: erase the closure's lifetime. Tasks are claimed only under this job's
        // generation, and we do not return before every claimed task has finished.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        let [j0, j1] = job_bits(job);
        let gen = (s.state.load(Ordering::Relaxed) >> 32) + 1;
        // Close the previous generation before touching the job words: while they change, no
        // claim can succeed (a worker still holding the old generation would otherwise see the
        // new `n_tasks` with the old, still-open generation and claim a task twice).
        s.state.store((gen << 32) | CLOSED, Ordering::SeqCst);
        s.job[0].store(j0, Ordering::Relaxed);
        s.job[1].store(j1, Ordering::Relaxed);
        s.n_tasks.store(n_tasks, Ordering::Relaxed);
        s.done.store(0, Ordering::Relaxed);
        // Open it: the stores above happen-before any claim that sees this value.
        s.state.store(gen << 32, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        work(s, gen, job, n_tasks);
        let mut spins = 0u32;
        while s.done.load(Ordering::Acquire) < n_tasks {
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// Batches with fewer rows than this run `ThreadPool::for_each_row` inline: below it a
/// dispatch costs more than the rows (decode's few tokens).
const PAR_MIN_ROWS: usize = 32;

/// A pointer to rows that tasks write disjointly.
struct RowsPtr<T>(*mut T);
// SAFETY: each row is handed to one task only (see `for_each_row`).
unsafe impl<T: Send> Sync for RowsPtr<T> {}
impl<T> RowsPtr<T> {
    // A method, so that closures capture the whole (Sync) wrapper rather than its field.
    fn get(&self) -> *mut T {
        self.0
    }
}

impl ThreadPool {
    /// `f(i, row_i)` for every row of `buf` (rows of `row` elements), spread over the pool
    /// when there are many rows (a prompt's tokens), inline when there are few. For work
    /// that is independent per row (norms, activation quantization, rope), so the result is
    /// the same however the rows are split.
    pub fn for_each_row<T: Send>(
        &self,
        buf: &mut [T],
        row: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        assert!(row > 0 && buf.len().is_multiple_of(row), "whole rows");
        let n = buf.len() / row;
        if n < PAR_MIN_ROWS || self.n_threads == 1 {
            for (i, r) in buf.chunks_exact_mut(row).enumerate() {
                f(i, r);
            }
            return;
        }
        let per = n.div_ceil(4 * self.n_threads).max(8);
        let base = RowsPtr(buf.as_mut_ptr());
        self.run(n.div_ceil(per), &|t| {
            for i in t * per..((t + 1) * per).min(n) {
                // SAFETY: row `i` lies inside `buf`, which outlives `run`, and belongs to task
                // `t` alone.
                let r = unsafe { std::slice::from_raw_parts_mut(base.get().add(i * row), row) };
                f(i, r);
            }
        });
    }
}

thread_local! {
    /// This thread's index in the pool it works for (0 for any other thread, the callers).
    static THREAD_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Items `lo..hi` still to claim, packed `lo << 32 | hi`; alone on its cache line, so the
/// owner's claims do not contend with another range's.
#[repr(align(64))]
struct Range(AtomicU64);

impl Range {
    fn new(lo: usize, hi: usize) -> Self {
        Self(AtomicU64::new(((lo as u64) << 32) | hi as u64))
    }

    /// Claim the first item left, with the end of the range as it was then; `None` if empty.
    fn front(&self) -> Option<(usize, usize)> {
        self.claim(|lo, hi| ((lo + 1, hi), (lo, hi)))
    }

    /// Claim the last item left (a thief, from the end its owner reaches last).
    fn back(&self) -> Option<usize> {
        self.claim(|lo, hi| ((lo, hi - 1), (hi - 1, hi)))
            .map(|(g, _)| g)
    }

    fn claim(&self, take: impl Fn(u64, u64) -> ((u64, u64), (u64, u64))) -> Option<(usize, usize)> {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let (lo, hi) = (cur >> 32, cur & 0xffff_ffff);
            if lo >= hi {
                return None;
            }
            let ((nlo, nhi), (g, end)) = take(lo, hi);
            match self.0.compare_exchange_weak(
                cur,
                (nlo << 32) | nhi,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some((g as usize, end as usize)),
                Err(now) => cur = now,
            }
        }
    }
}

/// Most threads whose `run_owned` claims live on the stack (a larger pool allocates them).
const STACK_RANGES: usize = 16;

impl ThreadPool {
    /// `f(i, end)` for every `i < n`, like `run`, but with items owned by threads: `0..n` is
    /// cut into one contiguous range per thread of the pool, and each thread (by its index in
    /// the pool; the caller is 0) runs its own range from the front before it steals single
    /// items from the backs of the others'. `end` is how far the items from `i` on were the
    /// running thread's when it claimed `i` (the end of its range then; `i + 1` for a stolen
    /// item): a bound for prefetching ahead. The same `n` over the same pool gives each thread
    /// the same items from call to call, so a batch split the same way in consecutive passes (a
    /// product, then the next over its output) keeps each token's rows in one core's caches
    /// instead of moving them between the cores; and a decode step's one range per thread is
    /// one stream for the prefetchers with no thread idle at the end.
    pub fn run_owned(&self, n: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let nth = self.n_threads;
        if n == 0 {
            return;
        }
        if nth == 1 || n == 1 {
            (0..n).for_each(|i| f(i, n));
            return;
        }
        let range = |i: usize| Range::new(n * i / nth, n * (i + 1) / nth);
        let go = |ranges: &[Range]| {
            self.run(nth, &|_| {
                let me = THREAD_INDEX.with(|c| c.get()) % nth;
                while let Some((i, end)) = ranges[me].front() {
                    f(i, end);
                }
                for k in 1..nth {
                    let victim = &ranges[(me + k) % nth];
                    while let Some(i) = victim.back() {
                        f(i, i + 1);
                    }
                }
            })
        };
        // Called per product of a decode step: no allocation for the usual pool sizes.
        if nth <= STACK_RANGES {
            let ranges: [Range; STACK_RANGES] =
                std::array::from_fn(|i| if i < nth { range(i) } else { Range::new(0, 0) });
            go(&ranges[..nth]);
        } else {
            go(&(0..nth).map(range).collect::<Vec<_>>());
        }
    }
}

/// Claim and run tasks of generation `gen` until none are left.
fn work(s: &Shared, gen: u64, job: Job, n_tasks: usize) {
    loop {
        let cur = s.state.load(Ordering::Acquire);
        if cur >> 32 != gen || (cur & 0xffff_ffff) as usize >= n_tasks {
            return;
        }
        if s.state
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // SAFETY: the claim succeeded under `gen`, so `run` for this job has not returned
            // and keeps the closure alive until `done` reaches `n_tasks`.
            unsafe { (*job)((cur & 0xffff_ffff) as usize) };
            s.done.fetch_add(1, Ordering::AcqRel);
        }
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Wait for a new generation: spin first, then sleep.
        let t0 = Instant::now();
        let mut spins = 0u32;
        let gen = loop {
            let st = s.state.load(Ordering::Acquire);
            let g = st >> 32;
            if (g != seen && st & 0xffff_ffff != CLOSED) || s.shutdown.load(Ordering::Acquire) {
                break g;
            }
            spins += 1;
            if !spins.is_multiple_of(64) || t0.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let mut guard = guard;
            while s.state.load(Ordering::SeqCst) >> 32 == seen && !s.shutdown.load(Ordering::SeqCst)
            {
                guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
            spins = 0;
        };
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        seen = gen;
        // The job words are written before the generation that published them. A read torn by
        // a newer `run` is never called: claims re-check the generation.
        let bits = [
            s.job[0].load(Ordering::Acquire),
            s.job[1].load(Ordering::Acquire),
        ];
        // SAFETY: the words came from `job_bits` of a `Job`.
        let job = unsafe { std::mem::transmute::<[usize; 2], Job>(bits) };
        let n_tasks = s.n_tasks.load(Ordering::Acquire);
        work(s, gen, job, n_tasks);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_hand_out_every_item_once_to_owners_and_thieves() {
        for total in [0usize, 1, 7, 1000] {
            let r = Range::new(0, total);
            let hits: Vec<AtomicUsize> = (0..total).map(|_| AtomicUsize::new(0)).collect();
            std::thread::scope(|sc| {
                sc.spawn(|| {
                    while let Some((g, end)) = r.front() {
                        assert!(g < end && end <= total);
                        hits[g].fetch_add(1, Ordering::Relaxed);
                    }
                });
                for _ in 0..2 {
                    sc.spawn(|| {
                        while let Some(g) = r.back() {
                            hits[g].fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "{total}"
            );
        }
    }

    #[test]
    fn owned_items_run_once_and_each_thread_starts_with_its_own() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads);
            for n in [0usize, 1, 2, 5, 64, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                // The first item each thread ran (usize::MAX: none).
                let first: Vec<AtomicUsize> =
                    (0..threads).map(|_| AtomicUsize::new(usize::MAX)).collect();
                pool.run_owned(n, &|i, end| {
                    assert!(i < end && end <= n);
                    hits[i].fetch_add(1, Ordering::Relaxed);
                    let me = THREAD_INDEX.with(|c| c.get());
                    let _ = first[me].compare_exchange(
                        usize::MAX,
                        i,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                if n > 1 {
                    // Only its owner claims from the front of a range, and before anything
                    // else: a thread's first item is the start of its own range, or (its range
                    // emptied by thieves, or empty) one of another's.
                    for (k, f) in first.iter().enumerate() {
                        let (lo, hi) = (n * k / threads, n * (k + 1) / threads);
                        let f = f.load(Ordering::Relaxed);
                        assert!(f == lo || !(lo..hi).contains(&f), "{threads} {n} {k}: {f}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_task_runs_once() {
        let pool = ThreadPool::new(3);
        for n in [0, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn for_each_row_visits_every_row_once_with_its_index() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads);
            for n in [0, 1, 31, 32, 33, 100, 517] {
                let mut buf = vec![0usize; 3 * n];
                pool.for_each_row(&mut buf, 3, &|i, r| {
                    for v in r.iter_mut() {
                        *v += i + 1;
                    }
                });
                let want: Vec<usize> = (0..n).flat_map(|i| [i + 1; 3]).collect();
                assert_eq!(buf, want, "{threads} threads, {n} rows");
            }
        }
    }

    #[test]
    fn many_back_to_back_jobs_and_sleeping_workers() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        for round in 0..20_000 {
            pool.run(1 + round % 5, &|i| {
                total.fetch_add(i + 1, Ordering::Relaxed);
            });
            if round % 5000 == 0 {
                // Let the worker fall asleep, then wake it.
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        let want: usize = (0..20_000).map(|r| (1..=1 + r % 5).sum::<usize>()).sum();
        assert_eq!(total.load(Ordering::Relaxed), want);
    }

    #[test]
    fn growing_and_shrinking_jobs_run_each_task_exactly_once() {
        // Regression: a worker holding the previous generation could claim a task of the next
        // job while its words were being written (seen as a wrong total under load).
        let pool = ThreadPool::new(3);
        let hits: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
        for round in 0..20_000usize {
            let n = [1, 64, 2, 33, 5][round % 5];
            pool.run(n, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            for (i, h) in hits.iter().enumerate() {
                assert_eq!(
                    h.swap(0, Ordering::Relaxed),
                    usize::from(i < n),
                    "round {round} task {i}"
                );
            }
        }
    }
}
