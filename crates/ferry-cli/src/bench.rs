//! `ferry bench`: prefill and single-stream decode speed of a model, measured in-process
//! through the engine (no HTTP), as JSON lines for `scripts/bench.py` or a table.

use std::time::Instant;

use anyhow::Result;
use clap::Args;
use ferry_engine::{Event, GenerateRequest, SamplingParams};

use crate::EngineArgs;

#[derive(Args)]
pub struct BenchArgs {
    #[arg(default_value = crate::DEFAULT_MODEL)]
    model: String,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    prompt_tokens: u32,
    /// Tokens generated for the decode measurement (after the first).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..))]
    decode_tokens: u32,
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeats: u32,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

fn timed(
    engine: &ferry_engine::Engine,
    prompt: Vec<u32>,
    max_tokens: usize,
) -> Result<(f64, f64, usize)> {
    let req = GenerateRequest {
        prompt,
        max_tokens,
        sampling: SamplingParams {
            temperature: 0.0,
            ..Default::default()
        },
        stop: vec![],
        logprobs: None,
        prompt_logprobs: None,
    };
    let t0 = Instant::now();
    let mut rx = engine.submit(req).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut first = None;
    let mut n = 0;
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            Event::Token { .. } => {
                n += 1;
                first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
            }
            Event::Finished { .. } => break,
            Event::Error(e) => anyhow::bail!(e),
            Event::PromptLogprobs(_) => {}
        }
    }
    Ok((first.unwrap_or(0.0), t0.elapsed().as_secs_f64(), n))
}

pub fn run(a: BenchArgs) -> Result<()> {
    let (_, path) = crate::store::resolve(&a.model)?;
    let mut cfg = a.engine.config();
    let (prompt_tokens, decode_tokens) = (a.prompt_tokens as usize, a.decode_tokens as usize);
    cfg.max_batch_tokens = cfg.max_batch_tokens.max(prompt_tokens);
    let l = crate::load(&path, cfg)?;
    let e = &l.engine;
    let vocab = e.vocab_size() as u32;
    // Deterministic prompts of ordinary tokens (avoid the special ids at either end).
    let spread = vocab.saturating_sub(2000).max(1);
    let tokens = |n: usize| -> Vec<u32> {
        (0..n as u32)
            .map(|i| (1000 + (i * 7919) % spread).min(vocab - 1))
            .collect()
    };
    let prompt = tokens(prompt_tokens);
    // Warm up.
    timed(e, tokens(16), 4)?;
    let mut pp = Vec::new();
    let mut tg = Vec::new();
    for _ in 0..a.repeats {
        // Prefill: time to the first token of a prompt_tokens prompt (one sampled token).
        let (ttft, _, _) = timed(e, prompt.clone(), 1)?;
        pp.push(prompt_tokens as f64 / ttft);
        // Decode: tokens after the first over the time after the first, from a short prompt.
        let (first, total, n) = timed(e, tokens(8), decode_tokens + 1)?;
        tg.push((n.saturating_sub(1)) as f64 / (total - first));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|x, y| x.total_cmp(y));
        v[v.len() / 2]
    };
    let (pp, tg) = (med(&mut pp), med(&mut tg));
    let wbytes = e.model().weight_bytes();
    let order = e.model().matmul_order().name();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"model": a.model, "threads": e.config().threads, "prompt_tokens": a.prompt_tokens,
                "decode_tokens": a.decode_tokens, "prefill_tps": pp, "decode_tps": tg, "weight_bytes": wbytes,
                "kernels": ferry_kernels::backend_name(), "matmul_order": order})
        );
    } else {
        println!(
            "model {} ({:.1} MB of weights read per token; {} kernels, matmul order {order})",
            a.model,
            wbytes as f64 / 1e6,
            ferry_kernels::backend_name()
        );
        println!("prefill  pp{:<5} {:>8.1} tokens/s", a.prompt_tokens, pp);
        println!(
            "decode   tg{:<5} {:>8.1} tokens/s  ({:.1} GB/s of weights)",
            a.decode_tokens,
            tg,
            tg * wbytes as f64 / 1e9
        );
    }
    Ok(())
}
