//! Memory read bandwidth the way the decode kernels read: each thread streams its own part of a
//! 1 GiB buffer with 64-byte vector loads and software prefetches 8 KiB ahead (as
//! `x86::packed16::Ahead`), summing so nothing is optimized away. A bound for single-stream
//! decode of models larger than the last-level cache; numpy's sum (what `scripts/bench.py`
//! prints) reads less.
//!
//! `cargo run --release -p ferry-kernels --example read_bw [threads] [repeats]` (defaults 2, 5)
//! prints GB/s per repeat and the median.

use std::time::Instant;

const BYTES: usize = 1 << 30;
const AHEAD: usize = 8192;

/// Sum of `v` read 64 bytes (16 floats) at a time into four accumulators, prefetching ahead.
fn stream(v: &[f32]) -> f32 {
    let mut acc = [[0f32; 16]; 4];
    for (i, step) in v.chunks_exact(64).enumerate() {
        #[cfg(target_arch = "x86_64")]
        for l in 0..4 {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let at = (i * 256 + AHEAD + 64 * l) as isize;
            // SAFETY: a prefetch never faults; the address is computed without dereferencing.
            unsafe { _mm_prefetch::<_MM_HINT_T0>((v.as_ptr() as *const i8).wrapping_offset(at)) };
        }
        for (a, part) in acc.iter_mut().zip(step.chunks_exact(16)) {
            for (x, y) in a.iter_mut().zip(part) {
                *x += y;
            }
        }
    }
    acc.iter().flatten().sum()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(2);
    let repeats: usize = args.next().and_then(|v| v.parse().ok()).unwrap_or(5);
    // Written once, so every page is resident before the timed reads.
    let buf: Vec<f32> = (0..BYTES / 4).map(|i| (i % 7) as f32).collect();
    let per = buf.len() / threads / 64 * 64;
    let mut rates = Vec::new();
    for r in 0..repeats {
        let t0 = Instant::now();
        let total: f32 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..threads)
                .map(|t| {
                    let part = &buf[t * per..(t + 1) * per];
                    s.spawn(move || stream(part))
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let gbs = (per * threads * 4) as f64 / t0.elapsed().as_secs_f64() / 1e9;
        println!(
            "repeat {}: {threads} threads, {gbs:.1} GB/s (sum {total:.0})",
            r + 1
        );
        rates.push(gbs);
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!(
        "median {:.1} GB/s over {repeats} repeats",
        rates[rates.len() / 2]
    );
}
