//! In-process embedding throughput (no HTTP): the sentence mix of `scripts/bench_embeddings.py`
//! (5-40 words from the same word list), tokenized, then `Bert::forward` on batches of 32.
//!
//! `cargo run --release -p ferry-models --example embed_bench [threads] [sentences] [rounds]`
//! with the model in `.ferry-cache/models/all-MiniLM-L6-v2` (or `$FERRY_TEST_EMBED_DIR`);
//! `FERRY_BERT_WEIGHTS` picks the weight format. Prints sentences/s (best round) and tokens.

use std::path::PathBuf;
use std::time::Instant;

use ferry_kernels::ThreadPool;
use ferry_models::bert::{Bert, BertWorkspace};

const WORDS: &str = "the a model server vector search query document cat dog river mountain city \
    music science history language quickly slowly bright dark ancient modern small large engine \
    train data results shows between under over with without about question answer learning \
    system coffee morning evening network memory processor weather forecast market price student \
    teacher";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(512);
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = std::env::var_os("FERRY_TEST_EMBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.ferry-cache/models/all-MiniLM-L6-v2")
        });
    let model = Bert::load(&dir).expect("load the model");
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut seed = 1u64;
    let mut next = |m: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as usize) % m
    };
    let lens = [5, 8, 10, 12, 15, 20, 25, 30, 40];
    let texts: Vec<String> = (0..n)
        .map(|_| {
            let k = lens[next(lens.len())];
            let s: Vec<&str> = (0..k).map(|_| words[next(words.len())]).collect();
            format!("{}.", s.join(" "))
        })
        .collect();
    let pool = ThreadPool::new(threads);
    let mut ws = BertWorkspace::default();
    let mut best = 0f64;
    let mut tokens = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        tokens = 0;
        for batch in texts.chunks(32) {
            let ids: Vec<Vec<u32>> = batch
                .iter()
                .map(|s| model.tokenizer().encode(s, true, None))
                .collect();
            let seqs: Vec<&[u32]> = ids.iter().map(|v| v.as_slice()).collect();
            tokens += seqs.iter().map(|s| s.len()).sum::<usize>();
            model.forward(&pool, &seqs, &mut ws).expect("forward");
        }
        best = best.max(n as f64 / t.elapsed().as_secs_f64());
    }
    println!(
        "{:?} weights, {threads} threads: {best:.1} sentences/s ({:.1} tokens/sentence)",
        model.format,
        tokens as f64 / n as f64
    );
}
