//! Micro-benchmark of the dense F32 GEMM (`gemm::gemm_f32`) on all-MiniLM-L6-v2's shapes
//! (hidden 384, intermediate 1536; fused QKV 1152 × 384).
//!
//! `cargo run --release -p ferry-kernels --example gemm_bench [threads] [tokens] [seconds]`
//! prints GFLOP/s (2·rows·cols·tokens per call) per shape and for the whole layer mix, both by
//! wall clock and per CPU second (the machine may be shared). `FERRY_KERNELS=scalar` forces
//! the portable kernel. Each shape also runs the int16 GEMM (`igemm::gemm_i16`), alternating
//! with F32 three times (the machine may be shared); the `i16/f32` column is the ratio of the
//! median wall-clock rates.

use std::time::Instant;

use ferry_kernels::gemm::{gemm_f32, PackedF32};
use ferry_kernels::igemm::{self, gemm_i16, I16Scratch, PackedI16};
use ferry_kernels::ThreadPool;

/// CPU seconds used by this process so far (user + system), from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let Ok(st) = std::fs::read_to_string("/proc/self/stat") else {
        return f64::NAN;
    };
    let rest = st.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(640);
    let secs: f64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let pool = ThreadPool::new(threads);
    let mut seed = 7u64;
    let mut rnd = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
    };
    let shapes = [
        ("qkv", 1152, 384),
        ("attn_out", 384, 384),
        ("up", 1536, 384),
        ("down", 384, 1536),
    ];
    let (mut flops_all, mut wall_all, mut cpu_all) = (0.0, 0.0, 0.0);
    let (mut flops_all_i, mut wall_all_i, mut cpu_all_i) = (0.0, 0.0, 0.0);
    println!(
        "threads {threads}, tokens {n}, int16 kernels: {}",
        igemm::backend()
    );
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (name, rows, cols) in shapes {
        let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| rnd()).collect();
        let p = PackedF32::new(&w, rows, cols).unwrap();
        let pi = PackedI16::new(&w, rows, cols).unwrap();
        let mut scratch = I16Scratch::default();
        let mut out = vec![0f32; n * rows];
        let flops_call = 2.0 * (rows * cols * n) as f64;
        let mut run = |int: bool| -> (f64, f64, f64) {
            let (t0, c0) = (Instant::now(), cpu_seconds());
            let mut calls = 0usize;
            while t0.elapsed().as_secs_f64() < secs {
                if int {
                    gemm_i16(
                        &pool,
                        &pi,
                        &x,
                        n,
                        Default::default(),
                        &mut out,
                        &mut scratch,
                    );
                } else {
                    gemm_f32(&pool, &p, &x, n, &mut out);
                }
                calls += 1;
            }
            let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
            (flops_call * calls as f64, wall, cpu)
        };
        run(false);
        run(true);
        let (mut rf, mut ri) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (f, w, c) = run(false);
            rf.push(f / w / 1e9);
            flops_all += f;
            wall_all += w;
            cpu_all += c;
            let (f, w, c) = run(true);
            ri.push(f / w / 1e9);
            flops_all_i += f;
            wall_all_i += w;
            cpu_all_i += c;
        }
        let (mf, mi) = (median(rf), median(ri));
        println!(
            "{name:>9} {rows:>5}x{cols:<5} f32 {mf:7.1} GFLOP/s  i16 {mi:7.1} GFLOP/s  i16/f32 {:.2}x",
            mi / mf
        );
    }
    println!(
        "      all             f32 {:7.1} GFLOP/s wall ({:.1} per CPU-s)  i16 {:7.1} GFLOP/s wall ({:.1} per CPU-s)",
        flops_all / wall_all / 1e9,
        flops_all / cpu_all / 1e9,
        flops_all_i / wall_all_i / 1e9,
        flops_all_i / cpu_all_i / 1e9,
    );
}
