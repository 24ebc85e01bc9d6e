//! Peak multiply-accumulate throughput of the candidate GEMM instructions on this CPU:
//! `vfmadd231ps` (F32, 16 MACs per zmm instruction), `vpdpbusd` (u8 × i8 → i32, 64 MACs),
//! `vpdpwssd` (i16 × i16 → i32, 32 MACs), and the AVX2 `vpmaddubsw`+`vpmaddwd`+`vpaddd`
//! sequence (u8 × i8, 32 MACs per three ymm instructions), each over 12 independent
//! accumulator chains (enough to cover latency × ports), on 1 and 2 threads.
//!
//! `cargo run --release -p ferry-kernels --example int_peak`
//! prints GMAC/s per instruction and thread count (and the ratio to F32 FMA).

use std::hint::black_box;
use std::time::Instant;

#[cfg(target_arch = "x86_64")]
mod k {
    use std::arch::x86_64::*;

    const C: usize = 12;

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma(iters: u64) -> f32 {
        let a = _mm512_set1_ps(1.0000001);
        let b = _mm512_set1_ps(0.9999999);
        let mut acc = [_mm512_setzero_ps(); C];
        for _ in 0..iters {
            for c in &mut acc {
                *c = _mm512_fmadd_ps(a, b, *c);
            }
        }
        let mut s = _mm512_setzero_ps();
        for c in acc {
            s = _mm512_add_ps(s, c);
        }
        _mm512_reduce_add_ps(s)
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn dpbusd(iters: u64) -> i32 {
        let a = _mm512_set1_epi8(3);
        let b = _mm512_set1_epi8(-2);
        let mut acc = [_mm512_setzero_si512(); C];
        for _ in 0..iters {
            for c in &mut acc {
                *c = _mm512_dpbusd_epi32(*c, a, b);
            }
        }
        let mut s = _mm512_setzero_si512();
        for c in acc {
            s = _mm512_add_epi32(s, c);
        }
        _mm512_reduce_add_epi32(s)
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn dpwssd(iters: u64) -> i32 {
        let a = _mm512_set1_epi16(3);
        let b = _mm512_set1_epi16(-2);
        let mut acc = [_mm512_setzero_si512(); C];
        for _ in 0..iters {
            for c in &mut acc {
                *c = _mm512_dpwssd_epi32(*c, a, b);
            }
        }
        let mut s = _mm512_setzero_si512();
        for c in acc {
            s = _mm512_add_epi32(s, c);
        }
        _mm512_reduce_add_epi32(s)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn maddubs(iters: u64) -> i32 {
        let a = _mm256_set1_epi8(3);
        let b = _mm256_set1_epi8(-2);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_si256(); C];
        let mut a = a;
        for _ in 0..iters {
            // An empty asm block that "changes" `a`, so that the products cannot be hoisted.
            // SAFETY: the block has no instructions.
            unsafe { std::arch::asm!("/* {0} */", inout(ymm_reg) a, options(nomem, nostack)) };
            for c in &mut acc {
                let p = _mm256_maddubs_epi16(a, b);
                *c = _mm256_add_epi32(*c, _mm256_madd_epi16(p, ones));
            }
        }
        let mut s = _mm256_setzero_si256();
        for c in acc {
            s = _mm256_add_epi32(s, c);
        }
        let mut v = [0i32; 8];
        // SAFETY: `v` holds 8 i32.
        unsafe { _mm256_storeu_si256(v.as_mut_ptr().cast(), s) };
        v.iter().sum()
    }

    pub const CHAINS: u64 = C as u64;
}

#[cfg(target_arch = "x86_64")]
fn main() {
    let iters: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(50_000_000);
    let has = |f: &str| match f {
        "avx512f" => is_x86_feature_detected!("avx512f"),
        "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
        "avx2" => is_x86_feature_detected!("avx2"),
        _ => false,
    };
    // (name, MACs per instruction-group, needed feature, runner)
    type Run = fn(u64) -> f64;
    let cases: [(&str, f64, &str, Run); 4] = [
        ("vfmadd231ps zmm (f32)", 16.0, "avx512f", |n| {
            // SAFETY: the feature was detected before the call.
            unsafe { black_box(k::fma(n)) as f64 }
        }),
        ("vpdpbusd zmm (u8*i8)", 64.0, "avx512vnni", |n| {
            // SAFETY: as above.
            unsafe { black_box(k::dpbusd(n)) as f64 }
        }),
        ("vpdpwssd zmm (i16*i16)", 32.0, "avx512vnni", |n| {
            // SAFETY: as above.
            unsafe { black_box(k::dpwssd(n)) as f64 }
        }),
        ("vpmaddubsw+vpmaddwd+vpaddd ymm", 32.0, "avx2", |n| {
            // SAFETY: as above.
            unsafe { black_box(k::maddubs(n)) as f64 }
        }),
    ];
    let mut fma_rate = [0f64; 2];
    for (name, macs, feat, run) in cases {
        if !has(feat) {
            println!("{name}: {feat} not available");
            continue;
        }
        for (ti, threads) in [1usize, 2].into_iter().enumerate() {
            let mut best = 0f64;
            for _ in 0..3 {
                let t = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        s.spawn(|| black_box(run(black_box(iters))));
                    }
                });
                let secs = t.elapsed().as_secs_f64();
                let gmacs = (iters * k::CHAINS) as f64 * macs * threads as f64 / secs / 1e9;
                best = best.max(gmacs);
            }
            if name.starts_with("vfmadd") {
                fma_rate[ti] = best;
            }
            println!(
                "{name:34} {threads} thread(s): {best:7.1} GMAC/s ({:.2}x f32 FMA)",
                best / fma_rate[ti]
            );
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("x86-64 only");
}
