//! Fidelity of the BERT WordPiece tokenizer and encoder against Hugging Face `tokenizers` and
//! sentence-transformers, on the real all-MiniLM-L6-v2.
//!
//! Goldens: `tests/data/embedding_goldens.json`, made by
//! `scripts/goldens/make_embedding_goldens.py`: per sentence, the token ids and the normalized
//! sentence-transformers embedding. Token ids must be equal; embeddings must have cosine
//! similarity >= 0.9999.
//!
//! The model directory is `$FERRY_TEST_EMBED_DIR`, else `<repo>/.ferry-cache/models/all-MiniLM-L6-v2`
//! (made by `scripts/fetch-model.sh`). A missing model fails the tests unless
//! `FERRY_SKIP_MODEL_TESTS=1`.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use ferry_kernels::ThreadPool;
use ferry_models::bert::{Bert, BertWorkspace, WeightFormat};
use serde_json::Value;

const MIN_COSINE: f64 = 0.9999;

fn model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FERRY_TEST_EMBED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.ferry-cache/models/all-MiniLM-L6-v2")
        });
    if Bert::is_model_dir(&dir) {
        return Some(dir);
    }
    if std::env::var_os("FERRY_SKIP_MODEL_TESTS").is_some_and(|v| v == "1") {
        eprintln!("skipping: no embedding model at {}", dir.display());
        return None;
    }
    panic!(
        "embedding model not found at {} (needs config.json and model.safetensors): run \
         scripts/fetch-model.sh, or set FERRY_TEST_EMBED_DIR (FERRY_SKIP_MODEL_TESTS=1 skips)",
        dir.display()
    );
}

struct Env {
    model: Bert,
    pool: ThreadPool,
}

fn env() -> Option<std::sync::MutexGuard<'static, Env>> {
    static ENV: OnceLock<Option<Mutex<Env>>> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = model_dir()?;
        let model = Bert::load(&dir).expect("load the embedding model");
        Some(Mutex::new(Env {
            model,
            pool: ThreadPool::new(2),
        }))
    })
    .as_ref()
    .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
}

fn goldens() -> Vec<(String, Vec<u32>, Vec<f32>)> {
    let s = include_str!("data/embedding_goldens.json");
    let v: Value = serde_json::from_str(s).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["text"].as_str().unwrap().to_string(),
                c["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as u32)
                    .collect(),
                c["embedding"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            )
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    d / (na * nb)
}

#[test]
fn token_ids_equal_hf_tokenizers() {
    let Some(e) = env() else { return };
    let g = goldens();
    assert!(g.len() >= 20);
    for (text, ids, _) in &g {
        let got = e.model.tokenizer().encode(text, true, None);
        assert_eq!(&got, ids, "token ids of {text:?}");
    }
}

#[test]
fn embeddings_match_sentence_transformers() {
    let Some(e) = env() else { return };
    let g = goldens();
    let seqs: Vec<&[u32]> = g.iter().map(|c| c.1.as_slice()).collect();
    let mut ws = BertWorkspace::default();
    let out = e.model.forward(&e.pool, &seqs, &mut ws).unwrap();
    let mut worst = (1.0f64, "");
    for ((text, _, want), got) in g.iter().zip(&out) {
        assert_eq!(got.len(), want.len());
        let c = cosine(got, want);
        if c < worst.0 {
            worst = (c, text);
        }
        let norm: f64 = got.iter().map(|x| (*x as f64).powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-4, "normalized");
    }
    eprintln!("worst cosine {:.7} ({:?} weights)", worst.0, e.model.format);
    assert!(
        worst.0 >= MIN_COSINE,
        "cosine {} for {:?}",
        worst.0,
        worst.1
    );
    // Batch invariance: each sentence alone gives the same vector, bit for bit.
    for (i, s) in seqs.iter().enumerate().step_by(5) {
        let solo = e.model.forward(&e.pool, &[s], &mut ws).unwrap();
        assert_eq!(solo[0], out[i], "sentence {i} alone");
    }
}

/// Accuracy and speed of every weight format (informational):
/// `cargo test --release -p ferry-models --test embedding_golden -- --ignored --nocapture`.
#[test]
#[ignore]
fn weight_format_survey() {
    let Some(dir) = model_dir() else { return };
    let g = goldens();
    let pool = ThreadPool::new(2);
    let seqs: Vec<&[u32]> = g.iter().map(|c| c.1.as_slice()).collect();
    // A batch of 32 typical (short) sentences, as in scripts/bench_embeddings.py.
    let short: Vec<&[u32]> = seqs
        .iter()
        .filter(|s| s.len() < 60)
        .cycle()
        .take(32)
        .copied()
        .collect();
    for f in [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::BF16,
        WeightFormat::Q8_0,
        WeightFormat::I16,
    ] {
        let m = Bert::load_with(&dir, f).unwrap();
        let mut ws = BertWorkspace::default();
        let out = m.forward(&pool, &seqs, &mut ws).unwrap();
        let worst = g
            .iter()
            .zip(&out)
            .map(|(c, o)| cosine(o, &c.2))
            .fold(1.0, f64::min);
        m.forward(&pool, &short, &mut ws).unwrap();
        let t = Instant::now();
        let reps = 10;
        for _ in 0..reps {
            m.forward(&pool, &short, &mut ws).unwrap();
        }
        let sps = (reps * short.len()) as f64 / t.elapsed().as_secs_f64();
        let toks: usize = short.iter().map(|s| s.len()).sum();
        eprintln!(
            "{f:?}: worst cosine {worst:.7}, {sps:.0} sentences/s ({toks} tokens per batch of 32)"
        );
    }
}
