//! The embedding engine: one thread that batches embedding requests across clients.
//!
//! `EmbedEngine::submit` queues a request (a list of token-id sequences) and returns a oneshot
//! receiver; it refuses with `SubmitError::QueueFull` (429) when `max_waiting` requests are
//! already queued. The engine thread takes everything waiting up to a token budget
//! (`max_batch_tokens`; a larger request is run alone, in slices of that budget), runs the
//! encoder over all of it, and replies to each request. Requests whose receiver was dropped
//! (client gone) are skipped. A sequence's vector does not depend on what else is in the batch
//! (`Bert::forward` attends per sequence, without padding).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use ferry_kernels::ThreadPool;
use ferry_models::bert::{Bert, BertWorkspace};
use tokio::sync::oneshot;

use crate::SubmitError;

/// Embedding engine sizing.
#[derive(Debug, Clone)]
pub struct EmbedConfig {
    /// Compute threads (0 = one per core).
    pub threads: usize,
    /// Most tokens in one forward pass.
    pub max_batch_tokens: usize,
    /// Most requests waiting; beyond it `submit` refuses (429).
    pub max_waiting: usize,
    /// Cap on tokens per input, below the model's own maximum; 0 = the model's.
    pub max_context: usize,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            max_batch_tokens: 8192,
            max_waiting: 128,
            max_context: 0,
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct EmbedStats {
    /// Requests queued, not yet taken into a batch.
    pub waiting: AtomicUsize,
    /// Requests in the batch being computed.
    pub running: AtomicUsize,
    /// Requests answered (vectors or an error).
    pub requests: AtomicU64,
    /// Inputs (sequences) embedded.
    pub inputs: AtomicU64,
    pub tokens: AtomicU64,
    pub batches: AtomicU64,
}

/// The vectors of a request, in input order, or why it failed.
pub type EmbedResult = Result<Vec<Vec<f32>>, String>;

struct Job {
    seqs: Vec<Vec<u32>>,
    tx: oneshot::Sender<EmbedResult>,
}

/// A handle to a running embedding engine.
pub struct EmbedEngine {
    tx: Option<mpsc::Sender<Job>>,
    model: Arc<Bert>,
    stats: Arc<EmbedStats>,
    cfg: EmbedConfig,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EmbedEngine {
    /// Start the engine thread for a loaded encoder.
    pub fn start(model: Arc<Bert>, mut cfg: EmbedConfig) -> Self {
        cfg.max_batch_tokens = cfg.max_batch_tokens.max(model.max_tokens());
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(EmbedStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (model, stats, cfg, stop) =
                (model.clone(), stats.clone(), cfg.clone(), stop.clone());
            std::thread::Builder::new()
                .name("ferry-embed".into())
                .spawn(move || run(model, stats, cfg, stop, rx))
                .expect("spawn embedding thread")
        };
        Self {
            tx: Some(tx),
            model,
            stats,
            cfg,
            stop,
            thread: Some(thread),
        }
    }

    pub fn model(&self) -> &Bert {
        &self.model
    }
    /// Most tokens per input (specials included).
    pub fn context_length(&self) -> usize {
        match self.cfg.max_context {
            0 => self.model.max_tokens(),
            cap => self.model.max_tokens().min(cap),
        }
    }
    pub fn dim(&self) -> usize {
        self.model.dim()
    }
    pub fn stats(&self) -> &EmbedStats {
        &self.stats
    }
    pub fn config(&self) -> &EmbedConfig {
        &self.cfg
    }

    /// Memory this engine holds, in bytes: the encoder's weights in their loaded format
    /// (embedding tables in f32) and the forward workspace at its largest (`max_batch_tokens`
    /// tokens). An estimate for memory budgets, not a measurement.
    pub fn memory_bytes(&self) -> u64 {
        Self::estimate_memory(&self.model.cfg, self.model.format, &self.cfg)
    }

    /// What `memory_bytes` will be for an encoder of this shape loaded in `format` and started
    /// with `cfg`: known before loading, so room can be made first.
    pub fn estimate_memory(
        c: &ferry_models::bert::BertConfig,
        format: ferry_models::bert::WeightFormat,
        cfg: &EmbedConfig,
    ) -> u64 {
        use ferry_models::bert::WeightFormat;
        let (h, ff, f) = (c.hidden_size, c.intermediate_size, 4u64);
        let tables = ((c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * h) as u64;
        let matrix = (c.num_hidden_layers * (4 * h * h + 2 * h * ff)) as u64;
        let small = (c.num_hidden_layers * (9 * h + ff) + 2 * h) as u64;
        let matrix_bytes = match format {
            WeightFormat::F32 => matrix * 4,
            WeightFormat::F16 | WeightFormat::BF16 => matrix * 2,
            // 2 bytes a weight and an f32 scale per row (QKV, output, up, down).
            WeightFormat::I16 => matrix * 2 + (c.num_hidden_layers * (5 * h + ff) * 4) as u64,
            WeightFormat::Q8_0 => matrix * 34 / 32,
        };
        let workspace = (cfg.max_batch_tokens * (6 * h + ff)) as u64 * f;
        (tables + small) * f + matrix_bytes + workspace
    }

    /// Queue sequences (each already tokenized with its specials). The vectors arrive on the
    /// returned receiver; dropping it cancels the request if it has not run yet.
    pub fn submit(
        &self,
        seqs: Vec<Vec<u32>>,
    ) -> Result<oneshot::Receiver<EmbedResult>, SubmitError> {
        for s in &seqs {
            if s.is_empty() {
                return Err(SubmitError::EmptyPrompt);
            }
            if s.len() > self.context_length() {
                return Err(SubmitError::ContextLength {
                    prompt: s.len(),
                    max_tokens: 0,
                    context: self.context_length(),
                });
            }
            if let Some(&t) = s.iter().find(|&&t| t as usize >= self.model.cfg.vocab_size) {
                return Err(SubmitError::BadToken(t));
            }
        }
        let waiting = self.stats.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= self.cfg.max_waiting {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(waiting));
        }
        let (tx, rx) = oneshot::channel();
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|q| q.send(Job { seqs, tx }).is_ok());
        if !sent {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Stopped);
        }
        Ok(rx)
    }
}

impl Drop for EmbedEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Closing the channel wakes the thread.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tokens(j: &Job) -> usize {
    j.seqs.iter().map(|s| s.len()).sum()
}

fn run(
    model: Arc<Bert>,
    stats: Arc<EmbedStats>,
    cfg: EmbedConfig,
    stop: Arc<AtomicBool>,
    rx: mpsc::Receiver<Job>,
) {
    let pool = ThreadPool::new(cfg.threads);
    let mut ws = BertWorkspace::default();
    let mut held: Option<Job> = None;
    while !stop.load(Ordering::SeqCst) {
        // Block for the first job, then take whatever else is waiting, up to the budget.
        let first = match held.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            },
        };
        let mut budget = tokens(&first);
        let mut batch = vec![first];
        while budget < cfg.max_batch_tokens {
            match rx.try_recv() {
                Ok(j) => {
                    let t = tokens(&j);
                    if budget + t > cfg.max_batch_tokens {
                        held = Some(j);
                        break;
                    }
                    budget += t;
                    batch.push(j);
                }
                Err(_) => break,
            }
        }
        stats.waiting.fetch_sub(batch.len(), Ordering::SeqCst);
        // Clients that went away are not worth computing for.
        batch.retain(|j| !j.tx.is_closed());
        if batch.is_empty() {
            continue;
        }
        stats.running.store(batch.len(), Ordering::SeqCst);
        let all: Vec<&[u32]> = batch
            .iter()
            .flat_map(|j| j.seqs.iter().map(|s| s.as_slice()))
            .collect();
        let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(all.len());
        let mut failure = None;
        // Slices of at most `max_batch_tokens` tokens (a sequence is never split).
        let mut i = 0;
        while i < all.len() {
            let mut j = i;
            let mut t = 0;
            while j < all.len() && (j == i || t + all[j].len() <= cfg.max_batch_tokens) {
                t += all[j].len();
                j += 1;
            }
            match model.forward(&pool, &all[i..j], &mut ws) {
                Ok(v) => vectors.extend(v),
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            }
            stats.batches.fetch_add(1, Ordering::Relaxed);
            stats.tokens.fetch_add(t as u64, Ordering::Relaxed);
            i = j;
        }
        let mut it = vectors.into_iter();
        stats.running.store(0, Ordering::SeqCst);
        for job in batch {
            stats.requests.fetch_add(1, Ordering::Relaxed);
            if failure.is_none() {
                stats
                    .inputs
                    .fetch_add(job.seqs.len() as u64, Ordering::Relaxed);
            }
            let reply = match &failure {
                Some(e) => Err(e.clone()),
                None => Ok(it.by_ref().take(job.seqs.len()).collect()),
            };
            let _ = job.tx.send(reply);
        }
    }
}
