//! Decode steps of many sequences at a long context, straight through `Llama::forward` (no
//! engine, no HTTP): where attention's share of a decode step is largest.
//!
//! `cargo run --release -p ferry-models --example decode_bench -- <gguf> [streams] [context]
//! [steps] [threads]` (defaults 16 streams, context 1024, 32 steps, 2 threads). Each step is
//! one batch of one decode token per sequence, at positions `context..context + steps`, logits
//! for every token (as the engine asks). The cache below `context` is left as allocated
//! (zeros): attention's cost does not depend on the values, and filling it by prefill would
//! take minutes. Prints the median and mean step time and the aggregate tokens/s.

use std::sync::Arc;
use std::time::Instant;

use ferry_kernels::ThreadPool;
use ferry_models::gguf::GgufFile;
use ferry_models::kv::BlockAllocator;
use ferry_models::llama::{BatchToken, Llama, Workspace};

const BLOCK: usize = 16;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .expect("usage: decode_bench <gguf> [streams] [context] [steps]");
    let arg = |i: usize, d: usize| args.get(i).map_or(d, |s| s.parse().expect("a number"));
    let (streams, context, steps, threads) = (arg(2, 16), arg(3, 1024), arg(4, 32), arg(5, 2));
    let file = Arc::new(GgufFile::open(std::path::Path::new(path)).expect("open gguf"));
    let m = Llama::load(file).expect("load model");
    let pool = ThreadPool::new(threads);
    let per_seq = (context + steps).div_ceil(BLOCK) * BLOCK;
    let mut kv = m.new_kv_cache(streams * per_seq, BLOCK);
    let mut alloc = BlockAllocator::new(kv.n_blocks());
    let tables: Vec<Vec<u32>> = (0..streams)
        .map(|_| alloc.alloc(per_seq / BLOCK).expect("blocks"))
        .collect();
    let refs: Vec<&[u32]> = tables.iter().map(|t| &t[..]).collect();
    let mut ws = Workspace::new(&m.cfg, streams);
    let mut times = Vec::with_capacity(steps);
    for s in 0..steps {
        let batch: Vec<BatchToken> = (0..streams)
            .map(|i| BatchToken {
                token: ((i * 7919 + s * 104729) % m.cfg.vocab_size) as u32,
                pos: context + s,
                seq: i,
                logits: true,
            })
            .collect();
        let t0 = Instant::now();
        m.forward(&pool, &mut ws, &mut kv, &batch, &refs);
        times.push(t0.elapsed().as_secs_f64());
    }
    let mean = times.iter().sum::<f64>() / steps as f64;
    times.sort_by(f64::total_cmp);
    let median = times[steps / 2];
    println!(
        "streams {streams} context {context} steps {steps} threads {threads}: step median \
         {:.2} ms, mean {:.2} ms; {:.1} tokens/s (median)",
        median * 1e3,
        mean * 1e3,
        streams as f64 / median
    );
}
