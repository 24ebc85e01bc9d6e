//! Micro-benchmark of `matmul` on the SmolLM2-135M shapes.
//!
//! `cargo run --release -p ferry-kernels --example kbench [threads] [type]`
//! prints GFLOP/s (2·rows·cols·tokens per call) and GB/s of weight bytes read per call, for
//! n_tokens 1, 4, 16, 64 and 512. `type` (default Q4_1) applies to the linear layers; the
//! 576→49152 output layer is always Q8_0. `FERRY_KERNELS=scalar` forces the scalar kernels,
//! `FERRY_KERNELS=avx2` the AVX2 ones. A third argument keeps one token count, a fourth `lin`
//! skips the output layer: `kbench 1 F16 512 lin`. Matrices are packed (`PackedMatrix`) where
//! the backend has x16 kernels, as the model loader does, summed in the order
//! `FERRY_MATMUL_ORDER` names; `FERRY_NO_PACK=1` leaves them as read.

use std::time::Instant;

/// CPU seconds used by this process so far: `CLOCK_PROCESS_CPUTIME_ID` (nanoseconds), else
/// (user + system) ticks from `/proc/self/stat` (10 ms steps: coarse on a shared machine,
/// where a run may get a third of a CPU).
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0 {
        return ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9;
    }
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
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

use ferry_kernels::{
    backend_name, matmul, GgmlType, MatmulScratch, Matrix, PackedMatrix, ThreadPool,
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let lin = match args.get(2).map(|s| s.as_str()) {
        Some("Q4_0") => GgmlType::Q4_0,
        Some("Q8_0") => GgmlType::Q8_0,
        Some("Q5_0") => GgmlType::Q5_0,
        Some("Q5_1") => GgmlType::Q5_1,
        Some("Q4_K") => GgmlType::Q4K,
        Some("Q5_K") => GgmlType::Q5K,
        Some("Q6_K") => GgmlType::Q6K,
        Some("F16") => GgmlType::F16,
        _ => GgmlType::Q4_1,
    };
    let pool = ThreadPool::new(threads);
    let order = ferry_kernels::Order::from_env().expect("FERRY_MATMUL_ORDER");
    println!(
        "backend {}, {} threads, order {order:?}",
        backend_name(),
        threads
    );
    let shapes: [(usize, usize, GgmlType); 5] = [
        (576, 576, lin),
        (576, 192, lin),
        (576, 1536, lin),
        (1536, 576, lin),
        (576, 49152, GgmlType::Q8_0),
    ];
    let only_n: Option<usize> = args.get(3).and_then(|s| s.parse().ok());
    println!(
        "{:>14} {:>5} {:>6} {:>10} {:>9} {:>9} {:>6} {:>12}",
        "shape", "type", "ntok", "us/call", "GFLOP/s", "GB/s(w)", "CPUs", "GFLOP/cpu-s"
    );
    let mut seed = 0x1234_5678_u64;
    let mut rnd = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as u32
    };
    // A fourth argument `lin` skips the output layer (for quicker runs of the linear layers).
    let lin_only = args.get(4).is_some_and(|s| s == "lin");
    for (cols, rows, ty) in shapes {
        if lin_only && ty != lin {
            continue;
        }
        // K-quants only fit the 1536-wide input (576 is not a multiple of 256).
        let Some(rb) = ty.row_bytes(cols) else {
            continue;
        };
        let mut data: Vec<u8> = (0..rb * rows).map(|_| rnd() as u8).collect();
        if ty.block_size() > 1 {
            // Sane f16 scales (0.01) where each block format keeps them.
            let offs: &[usize] = match ty {
                GgmlType::Q6K => &[208],
                GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
                _ => &[0],
            };
            for blk in data.chunks_exact_mut(ty.type_size()) {
                for &o in offs {
                    blk[o..o + 2]
                        .copy_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
                }
            }
        } else {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
            }
        }
        let w = Matrix::new(ty, rows, cols, &data).unwrap();
        // Packed for the small-batch kernels as a model loader does (`FERRY_NO_PACK=1`: not).
        let packed = std::env::var_os("FERRY_NO_PACK")
            .is_none()
            .then(|| PackedMatrix::new(&w, order))
            .flatten();
        let w = w.with_packed(packed.as_ref());
        for n in [1usize, 4, 16, 64, 512] {
            if only_n.is_some_and(|o| o != n) {
                continue;
            }
            let x: Vec<f32> = (0..n * cols)
                .map(|_| rnd() as f32 / u32::MAX as f32 - 0.5)
                .collect();
            let mut out = vec![0f32; n * rows];
            let mut s = MatmulScratch::default();
            matmul(&pool, &w, &x, n, &mut out, &mut s);
            let flop = 2.0 * (rows * cols * n) as f64;
            let iters = ((3e9 / flop) as usize).clamp(3, 20000);
            let mut best = f64::MAX;
            let (w0, c0) = (Instant::now(), cpu_seconds());
            for _ in 0..3 {
                let t0 = Instant::now();
                for _ in 0..iters {
                    matmul(&pool, &w, &x, n, &mut out, &mut s);
                }
                best = best.min(t0.elapsed().as_secs_f64() / iters as f64);
            }
            let (wall, cpu) = (w0.elapsed().as_secs_f64(), cpu_seconds() - c0);
            let per_cpu = flop * (3 * iters) as f64 / cpu / 1e9;
            println!(
                "{:>14} {:>5} {:>6} {:>10.1} {:>9.1} {:>9.1} {:>6.2} {:>12.1}",
                format!("{cols}->{rows}"),
                ty.name(),
                n,
                best * 1e6,
                flop / best / 1e9,
                data.len() as f64 / best / 1e9,
                cpu / wall,
                per_cpu
            );
        }
    }
}
