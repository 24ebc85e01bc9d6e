//! The engine with the real default model: cancellation frees memory, preemption under a small
//! KV cache keeps greedy output unchanged, and the waiting queue is bounded.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_engine::{Engine, EngineConfig, Event, GenerateRequest, SamplingParams, SubmitError};
use ferry_models::gguf::GgufFile;
use ferry_models::llama::Llama;
use ferry_models::tokenizer::Tokenizer;

fn model_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FERRY_TEST_GGUF") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../.ferry-cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "model not found at {}: run scripts/fetch-model.sh (or set FERRY_TEST_GGUF)",
        p.display()
    );
    p
}

fn engine(cfg: EngineConfig) -> Engine {
    let file = Arc::new(GgufFile::open(&model_path()).unwrap());
    let tok = Arc::new(Tokenizer::from_gguf(&file).unwrap());
    let model = Arc::new(Llama::load(file).unwrap());
    Engine::start(model, tok, cfg)
}

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt,
        max_tokens,
        // End-of-generation tokens are banned so that lengths are predictable.
        sampling: SamplingParams {
            temperature: 0.0,
            logit_bias: vec![(0, -100.0), (2, -100.0), (4, -100.0)],
            ..Default::default()
        },
        stop: vec![],
        logprobs: None,
        prompt_logprobs: None,
    }
}

fn tokens(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> Vec<u32> {
    let mut out = vec![];
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            Event::Token { id, .. } => out.push(id),
            Event::Finished { .. } => break,
            Event::Error(e) => panic!("{e}"),
            Event::PromptLogprobs(_) => {}
        }
    }
    out
}

fn wait_until(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn prompt(e: &Engine, text: &str) -> Vec<u32> {
    e.tokenizer().encode(text, true, true)
}

#[test]
fn dropping_the_receiver_cancels_and_frees_kv_blocks() {
    let e = engine(EngineConfig {
        threads: 2,
        kv_cache_tokens: 2048,
        ..Default::default()
    });
    let mut rx = e
        .submit(greedy(
            prompt(&e, "Write a very long story about a dragon."),
            1000,
        ))
        .unwrap();
    // Wait for generation to be under way.
    for _ in 0..3 {
        let ev = rx.blocking_recv();
        assert!(matches!(ev, Some(Event::Token { .. })), "{ev:?}");
    }
    assert!(e.stats().kv_blocks_used.load(Ordering::Relaxed) > 0);
    let steps_at_drop = e.stats().steps.load(Ordering::Relaxed);
    drop(rx);
    wait_until("the sequence to be freed", || {
        e.stats().running.load(Ordering::Relaxed) == 0
            && e.stats().kv_blocks_used.load(Ordering::Relaxed) == 0
    });
    // Freed within a step or two of the drop, not after running to max_tokens.
    assert!(e.stats().steps.load(Ordering::Relaxed) <= steps_at_drop + 2);
}

#[test]
fn preemption_under_a_small_cache_keeps_greedy_output() {
    let texts = [
        "Tell me about the moon.",
        "List five fruits.",
        "What is rust?",
        "Say hello in French.",
    ];
    let solo = engine(EngineConfig {
        threads: 2,
        kv_cache_tokens: 4096,
        ..Default::default()
    });
    let want: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| tokens(&mut solo.submit(greedy(prompt(&solo, t), 48)).unwrap()))
        .collect();
    drop(solo);
    // 160 token slots cannot hold four sequences of ~8 + 48 tokens at once.
    let small = engine(EngineConfig {
        threads: 2,
        kv_cache_tokens: 160,
        block_size: 16,
        ..Default::default()
    });
    let mut rxs: Vec<_> = texts
        .iter()
        .map(|t| small.submit(greedy(prompt(&small, t), 48)).unwrap())
        .collect();
    let got: Vec<Vec<u32>> = rxs.iter_mut().map(tokens).collect();
    assert_eq!(got, want);
    assert!(
        small.stats().preemptions.load(Ordering::Relaxed) > 0,
        "the test should force preemption"
    );
    wait_until("blocks to be released", || {
        small.stats().kv_blocks_used.load(Ordering::Relaxed) == 0
    });
}

#[test]
fn queue_bound_and_context_checks() {
    let e = engine(EngineConfig {
        threads: 2,
        kv_cache_tokens: 1024,
        max_running: 1,
        max_waiting: 2,
        ..Default::default()
    });
    let p = prompt(&e, "Count to one hundred.");
    let mut held = vec![];
    let mut refused = 0;
    for _ in 0..6 {
        match e.submit(greedy(p.clone(), 200)) {
            Ok(rx) => held.push(rx),
            Err(SubmitError::QueueFull(_)) => refused += 1,
            Err(other) => panic!("{other}"),
        }
    }
    assert!(refused >= 3, "refused {refused}");
    assert!(matches!(
        e.submit(greedy(vec![], 1)),
        Err(SubmitError::EmptyPrompt)
    ));
    assert!(matches!(
        e.submit(greedy(p.clone(), 5000)),
        Err(SubmitError::ContextLength { .. })
    ));
    assert!(matches!(
        e.submit(greedy(vec![9_999_999], 1)),
        Err(SubmitError::BadToken(_))
    ));
}

/// Unloading a model drops its engine: that must stop the engine thread and its compute
/// threads, end the requests still running (with an error event, not silence), and release
/// the model and KV cache — nothing may keep them alive.
#[test]
fn dropping_the_engine_stops_its_threads_and_frees_the_model() {
    let file = Arc::new(GgufFile::open(&model_path()).unwrap());
    let tok = Arc::new(Tokenizer::from_gguf(&file).unwrap());
    let model = Arc::new(Llama::load(file).unwrap());
    let e = Engine::start(
        model.clone(),
        tok.clone(),
        EngineConfig {
            threads: 2,
            kv_cache_tokens: 1024,
            ..Default::default()
        },
    );
    assert!(e.memory_bytes() > model.file_size() as u64);
    assert_eq!(
        Arc::strong_count(&model),
        3,
        "ours, the engine's, its thread's"
    );
    let mut rx = e
        .submit(greedy(prompt(&e, "Tell a very long story."), 900))
        .unwrap();
    assert!(matches!(rx.blocking_recv(), Some(Event::Token { .. })));
    let t = Instant::now();
    drop(e);
    // Within a step, not after the 900 tokens.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // `drop` joined the engine thread (which joins its compute pool), so every clone is gone.
    assert_eq!(Arc::strong_count(&model), 1);
    assert_eq!(Arc::strong_count(&tok), 1);
    let mut last = None;
    while let Some(ev) = rx.blocking_recv() {
        last = Some(ev);
    }
    assert!(matches!(last, Some(Event::Error(_))), "{last:?}");
}
