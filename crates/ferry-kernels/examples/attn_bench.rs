//! The attention of one prefill layer (SmolLM2-135M's shape by default: head size 64, 9 query
//! heads over 3 KV heads, a 512-token prompt), as `Llama::forward` splits it: one `AttnGroup`
//! per (8 tokens, KV head), on one thread. Prints the best and median time of the layer over
//! the repeats, so attention changes can be compared without the rest of a prefill.
//!
//! `cargo run --release -p ferry-kernels --example attn_bench -- [tokens] [repeats] [hd]
//! [per_task] [last]`: `per_task` tokens per group (8, as prefill; 1 is a decode step's group),
//! and only the last `last` tokens attend (default all; `1024 20 64 1 16` is 16 decode steps
//! at context ~1024, one group each, like 16 streams' attention).

use std::time::Instant;

use ferry_kernels::ggml_attn::{store_f16, AttnGroup};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: usize| args.get(i).map_or(d, |s| s.parse().expect("a number"));
    let (n, reps, hd) = (arg(1, 512), arg(2, 20), arg(3, 64));
    let (per_task, last) = (arg(4, 8), arg(5, usize::MAX).min(n));
    let (n_kv, group, block) = (3usize, 3usize, 16usize);
    let kvd = n_kv * hd;
    let mut seed = 1u64;
    let mut rnd = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
    };
    let kf: Vec<f32> = (0..n * kvd).map(|_| rnd()).collect();
    let vf: Vec<f32> = (0..n * kvd).map(|_| rnd()).collect();
    let q: Vec<f32> = (0..n * n_kv * group * hd).map(|_| rnd()).collect();
    let (mut k, mut v) = (vec![0u16; n * kvd], vec![0u16; n * kvd]);
    store_f16(&kf, &mut k);
    store_f16(&vf, &mut v);
    let mut g = AttnGroup::default();
    let scale = 1.0 / (hd as f32).sqrt();
    let mut times = Vec::new();
    let mut check = 0f32;
    for _ in 0..reps {
        let t0 = Instant::now();
        for i0 in (n - last..n).step_by(per_task) {
            for kvh in 0..n_kv {
                g.clear(hd);
                for i in i0..(i0 + per_task).min(n) {
                    for h in 0..group {
                        let qh = (kvh * group + h) * hd;
                        let qi = i * n_kv * group * hd + qh;
                        g.push(&q[qi..qi + hd], i);
                    }
                }
                g.run(&k, &v, block, kvd, |b| b * block * kvd + kvh * hd, scale);
                check += g.out(0)[0];
            }
        }
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "tokens {n} hd {hd}: layer best {:.3} ms, median {:.3} ms (check {check:.4})",
        times[0],
        times[reps / 2]
    );
}
