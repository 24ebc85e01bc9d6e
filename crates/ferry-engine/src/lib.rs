//! The serving engine: an admission queue, a continuous-batching scheduler over a paged KV
//! cache, sampling, detokenization and cancellation.
//!
//! One engine thread owns the model's mutable state (KV cache, workspace) and runs steps: each
//! step admits waiting requests while cache blocks allow, builds one flattened batch (a decode
//! token for every running sequence plus prompt chunks up to a token budget), runs the model
//! once, samples, and sends events to each request's channel. A request whose receiver was
//! dropped (client gone) is removed and its blocks freed at the next step.
//!
//! The HTTP layer sees only `Engine`, `GenerateRequest` and `Event`: no tensor types.

pub mod embed;
pub mod sampler;
pub mod text;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use ferry_kernels::ThreadPool;
use ferry_models::kv::{BlockAllocator, KvCache};
use ferry_models::llama::{BatchToken, Llama, LlamaConfig, Workspace};
use ferry_models::tokenizer::Tokenizer;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

pub use sampler::{SamplingParams, TokenLogprob};

/// Engine sizing.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Compute threads (0 = one per core).
    pub threads: usize,
    /// KV cache capacity in tokens, across all sequences.
    pub kv_cache_tokens: usize,
    pub block_size: usize,
    /// Most sequences decoding at once.
    pub max_running: usize,
    /// Most tokens in one step (prompt chunks are cut to fit).
    pub max_batch_tokens: usize,
    /// Most requests waiting for admission; beyond it `submit` refuses (429).
    pub max_waiting: usize,
    /// Cap on a sequence's length, prompt and completion together (vLLM's `max_model_len`);
    /// 0 = the model's own context. The context in force is the least of this, the model's
    /// and `kv_cache_tokens`.
    pub max_context: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            kv_cache_tokens: 16384,
            block_size: 16,
            max_running: 32,
            max_batch_tokens: 256,
            max_waiting: 128,
            max_context: 0,
        }
    }
}

fn effective_context(model: usize, cfg: &EngineConfig) -> usize {
    let cap = if cfg.max_context == 0 {
        usize::MAX
    } else {
        cfg.max_context
    };
    model.min(cap).min(cfg.kv_cache_tokens)
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// A generation request in token space.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Top alternatives per generated token, if logprobs are wanted.
    pub logprobs: Option<usize>,
    /// Top alternatives per prompt token, if prompt logprobs are wanted (completions `echo`).
    pub prompt_logprobs: Option<usize>,
}

/// What a request's channel receives, in order: at most one `PromptLogprobs`, any number of
/// `Token`s, then exactly one of `Finished` or `Error`.
#[derive(Debug, Clone)]
pub enum Event {
    /// Log-probabilities of prompt tokens 1.. (token 0 has none).
    PromptLogprobs(Vec<TokenLogprob>),
    /// A generated token and the text it releases (may be empty while text is held back).
    Token {
        id: u32,
        text: String,
        logprob: Option<TokenLogprob>,
    },
    Finished {
        reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Time from `submit` to first admission (the queue time; `/metrics`).
        queued: std::time::Duration,
    },
    Error(String),
}

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubmitError {
    #[error("the request queue is full ({0} waiting)")]
    QueueFull(usize),
    #[error("prompt of {prompt} tokens plus max_tokens {max_tokens} exceeds the context of {context} tokens")]
    ContextLength {
        prompt: usize,
        max_tokens: usize,
        context: usize,
    },
    #[error("prompt is empty")]
    EmptyPrompt,
    #[error("token id {0} is out of the vocabulary")]
    BadToken(u32),
    #[error("the engine has stopped")]
    Stopped,
}

/// Counters and gauges read by `/metrics` and `ferry ps`.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub running: AtomicUsize,
    pub waiting: AtomicUsize,
    pub kv_blocks_used: AtomicUsize,
    pub kv_blocks_total: AtomicUsize,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub steps: AtomicU64,
    pub preemptions: AtomicU64,
}

struct Submission {
    req: GenerateRequest,
    tx: UnboundedSender<Event>,
    at: std::time::Instant,
}

/// A handle to a running engine. Cheap to share (`Arc`).
pub struct Engine {
    tx: mpsc::Sender<Submission>,
    model: Arc<Llama>,
    tokenizer: Arc<Tokenizer>,
    stats: Arc<EngineStats>,
    cfg: EngineConfig,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Engine {
    /// Start the engine thread for a loaded model.
    pub fn start(model: Arc<Llama>, tokenizer: Arc<Tokenizer>, mut cfg: EngineConfig) -> Self {
        cfg.kv_cache_tokens = cfg.kv_cache_tokens.max(cfg.block_size);
        cfg.max_batch_tokens = cfg.max_batch_tokens.max(cfg.max_running).max(1);
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(EngineStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (model, tokenizer, stats, cfg, stop) = (
                model.clone(),
                tokenizer.clone(),
                stats.clone(),
                cfg.clone(),
                stop.clone(),
            );
            std::thread::Builder::new()
                .name("ferry-engine".into())
                .spawn(move || Scheduler::new(model, tokenizer, stats, cfg, stop).run(rx))
                .expect("spawn engine thread")
        };
        Self {
            tx,
            model,
            tokenizer,
            stats,
            cfg,
            stop,
            thread: Some(thread),
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    pub fn model(&self) -> &Llama {
        &self.model
    }
    /// The longest sequence (prompt and completion) this engine runs: the least of the
    /// model's context, `max_context` (when set) and the KV cache's capacity.
    pub fn context_length(&self) -> usize {
        effective_context(self.model.cfg.context_length, &self.cfg)
    }
    pub fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Memory this engine holds, in bytes: the mapped weights (the whole GGUF file), the KV
    /// cache (preallocated at start) and the step workspace at its largest (activations and
    /// logits for `max_batch_tokens` tokens). An estimate for memory budgets, not a measurement.
    pub fn memory_bytes(&self) -> u64 {
        Self::estimate_memory(&self.model.cfg, self.model.file_size() as u64, &self.cfg)
    }

    /// What `memory_bytes` will be for a model of this shape, read from a file of `file_size`
    /// bytes, started with `cfg`: known before loading, so room can be made first.
    pub fn estimate_memory(m: &LlamaConfig, file_size: u64, cfg: &EngineConfig) -> u64 {
        let f = std::mem::size_of::<f32>() as u64;
        let slots = cfg.kv_cache_tokens.div_ceil(cfg.block_size).max(1) * cfg.block_size;
        // Keys and values are cached as f16.
        let kv = 2 * (m.n_layer * slots * m.kv_dim() * std::mem::size_of::<u16>()) as u64;
        let t = cfg.max_batch_tokens as u64;
        let per_token = 5 * m.n_embd + 2 * m.kv_dim() + 2 * m.n_ff + m.vocab_size;
        file_size + kv + t * per_token as u64 * f
    }

    /// Check a request against the model's limits without queueing it.
    pub fn check(&self, prompt_len: usize, max_tokens: usize) -> Result<(), SubmitError> {
        let context = self.context_length();
        if prompt_len == 0 {
            return Err(SubmitError::EmptyPrompt);
        }
        if prompt_len + max_tokens > context {
            return Err(SubmitError::ContextLength {
                prompt: prompt_len,
                max_tokens,
                context,
            });
        }
        Ok(())
    }

    /// Queue a request. Events arrive on the returned channel; dropping it cancels.
    pub fn submit(&self, req: GenerateRequest) -> Result<UnboundedReceiver<Event>, SubmitError> {
        self.check(req.prompt.len(), req.max_tokens)?;
        if let Some(&t) = req
            .prompt
            .iter()
            .find(|&&t| t as usize >= self.vocab_size())
        {
            return Err(SubmitError::BadToken(t));
        }
        let waiting = self.stats.waiting.fetch_add(1, Ordering::SeqCst);
        if waiting >= self.cfg.max_waiting {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::QueueFull(waiting));
        }
        let (tx, rx) = unbounded_channel();
        let at = std::time::Instant::now();
        if self.tx.send(Submission { req, tx, at }).is_err() {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::Stopped);
        }
        Ok(rx)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the thread if it is blocked on the channel.
        let (tx, _) = mpsc::channel();
        let _ = std::mem::replace(&mut self.tx, tx);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Seq {
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    n_prompt: usize,
    /// Positions whose K/V are in the cache.
    n_cached: usize,
    blocks: Vec<u32>,
    max_tokens: usize,
    sampler: sampler::Sampler,
    text: text::TextStream,
    logprobs: Option<usize>,
    prompt_logprobs: Option<usize>,
    prompt_lp: Vec<TokenLogprob>,
    tx: UnboundedSender<Event>,
    admitted: u64,
    submitted: std::time::Instant,
    /// Set at the first admission (a preempted sequence keeps it).
    queued: Option<std::time::Duration>,
}

impl Seq {
    fn generated(&self) -> usize {
        self.tokens.len() - self.n_prompt
    }
    fn prefilling(&self) -> bool {
        self.n_cached < self.tokens.len() - 1 || self.tokens.len() == self.n_prompt
    }
}

struct Scheduler {
    model: Arc<Llama>,
    tok: Arc<Tokenizer>,
    stats: Arc<EngineStats>,
    cfg: EngineConfig,
    stop: Arc<AtomicBool>,
    pool: ThreadPool,
    ws: Workspace,
    kv: KvCache,
    alloc: BlockAllocator,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    admissions: u64,
    entropy: u64,
    lp_buf: Vec<f32>,
}

impl Scheduler {
    fn new(
        model: Arc<Llama>,
        tok: Arc<Tokenizer>,
        stats: Arc<EngineStats>,
        cfg: EngineConfig,
        stop: Arc<AtomicBool>,
    ) -> Self {
        let pool = ThreadPool::new(cfg.threads);
        let ws = Workspace::new(&model.cfg, cfg.max_batch_tokens);
        let kv = model.new_kv_cache(cfg.kv_cache_tokens, cfg.block_size);
        let alloc = BlockAllocator::new(kv.n_blocks());
        stats
            .kv_blocks_total
            .store(kv.n_blocks(), Ordering::Relaxed);
        let entropy = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Self {
            model,
            tok,
            stats,
            cfg,
            stop,
            pool,
            ws,
            kv,
            alloc,
            waiting: VecDeque::new(),
            running: Vec::new(),
            admissions: 0,
            entropy,
            lp_buf: Vec::new(),
        }
    }

    fn enqueue(&mut self, s: Submission) {
        let vocab = self.model.cfg.vocab_size;
        self.entropy = self
            .entropy
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let sampler = sampler::Sampler::new(s.req.sampling, vocab, &s.req.prompt, self.entropy);
        let n_prompt = s.req.prompt.len();
        self.waiting.push_back(Seq {
            tokens: s.req.prompt,
            n_prompt,
            n_cached: 0,
            blocks: Vec::new(),
            max_tokens: s.req.max_tokens,
            sampler,
            text: text::TextStream::new(s.req.stop),
            logprobs: s.req.logprobs,
            prompt_logprobs: s.req.prompt_logprobs,
            prompt_lp: Vec::new(),
            tx: s.tx,
            admitted: 0,
            submitted: s.at,
            queued: None,
        });
    }

    fn run(mut self, rx: mpsc::Receiver<Submission>) {
        loop {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            // Take new work; block only when idle.
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(s) => self.enqueue(s),
                    Err(_) => break,
                }
            }
            while let Ok(s) = rx.try_recv() {
                self.enqueue(s);
            }
            self.drop_cancelled();
            self.admit();
            self.publish();
            if !self.running.is_empty() {
                self.step();
            }
            self.publish();
        }
        for s in self.running.drain(..).chain(self.waiting.drain(..)) {
            let _ =
                s.tx.send(Event::Error("the engine is shutting down".into()));
        }
    }

    fn publish(&self) {
        self.stats
            .running
            .store(self.running.len(), Ordering::Relaxed);
        self.stats
            .kv_blocks_used
            .store(self.alloc.total() - self.alloc.n_free(), Ordering::Relaxed);
    }

    fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].tx.is_closed() {
                let s = self.running.swap_remove(i);
                self.alloc.release(s.blocks);
            } else {
                i += 1;
            }
        }
        let before = self.waiting.len();
        self.waiting.retain(|s| !s.tx.is_closed());
        let gone = before - self.waiting.len();
        if gone > 0 {
            self.stats.waiting.fetch_sub(gone, Ordering::SeqCst);
        }
    }

    fn blocks_for(&self, n_tokens: usize) -> usize {
        n_tokens.div_ceil(self.cfg.block_size)
    }

    /// Admit waiting sequences (FIFO) while there is room for their whole current context.
    fn admit(&mut self) {
        while self.running.len() < self.cfg.max_running {
            let Some(front) = self.waiting.front() else {
                break;
            };
            let need = self.blocks_for(front.tokens.len() + 1);
            // Keep a block per running sequence in reserve so decoding can progress.
            if need + self.running.len() > self.alloc.n_free() && !self.running.is_empty() {
                break;
            }
            let Some(blocks) = self.alloc.alloc(need) else {
                break;
            };
            let mut s = self.waiting.pop_front().expect("front exists");
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            s.blocks = blocks;
            self.admissions += 1;
            s.admitted = self.admissions;
            s.queued.get_or_insert_with(|| s.submitted.elapsed());
            self.running.push(s);
        }
    }

    /// Make sure sequence `i` has blocks for `upto` positions. When the cache is full, the
    /// most recently admitted other sequence is preempted (its blocks freed; it goes back to
    /// the front of the queue and recomputes its context later, re-sending nothing) and
    /// `false` is returned: indices into `running` changed, so the caller plans again.
    fn ensure_blocks(&mut self, i: usize, upto: usize) -> bool {
        let need = self
            .blocks_for(upto)
            .saturating_sub(self.running[i].blocks.len());
        if need == 0 {
            return true;
        }
        if let Some(b) = self.alloc.alloc(need) {
            self.running[i].blocks.extend(b);
            return true;
        }
        let victim = (0..self.running.len())
            .filter(|&j| j != i)
            .max_by_key(|&j| self.running[j].admitted);
        let j = victim.unwrap_or(i);
        let mut v = self.running.swap_remove(j);
        self.alloc.release(std::mem::take(&mut v.blocks));
        if victim.is_none() {
            // Cannot happen while `Engine::check` bounds every request by the cache size.
            let _ = v.tx.send(Event::Error(
                "the KV cache cannot hold this sequence".into(),
            ));
            return false;
        }
        v.n_cached = 0;
        self.stats.preemptions.fetch_add(1, Ordering::Relaxed);
        self.stats.waiting.fetch_add(1, Ordering::SeqCst);
        self.waiting.push_front(v);
        false
    }

    fn step(&mut self) {
        let budget = self.cfg.max_batch_tokens;
        // Plan: (seq index, start position, count, want logits per token policy).
        let mut plan: Vec<(usize, usize, usize)> = Vec::with_capacity(self.running.len());
        let mut used = 0usize;
        // Decode tokens first, then prompt chunks, oldest first.
        let mut order: Vec<usize> = (0..self.running.len()).collect();
        order.sort_by_key(|&i| (self.running[i].prefilling(), self.running[i].admitted));
        for &i in &order {
            if used >= budget {
                break;
            }
            let s = &self.running[i];
            let start = s.n_cached;
            let remaining = s.tokens.len() - start;
            let mut count = remaining.min(budget - used);
            if s.prompt_logprobs.is_some() && s.n_cached < s.n_prompt {
                count = count.min(32);
            }
            if count == 0 {
                continue;
            }
            if !self.ensure_blocks(i, start + count) {
                return;
            }
            plan.push((i, start, count));
            used += count;
        }
        let mut batch: Vec<BatchToken> = Vec::with_capacity(used);
        for (slot, &(i, start, count)) in plan.iter().enumerate() {
            let s = &self.running[i];
            let end = start + count;
            for p in start..end {
                let last = p + 1 == s.tokens.len();
                let want = last || (s.prompt_logprobs.is_some() && p + 1 < s.n_prompt);
                batch.push(BatchToken {
                    token: s.tokens[p],
                    pos: p,
                    seq: slot,
                    logits: want,
                });
            }
        }
        let tables: Vec<&[u32]> = plan
            .iter()
            .map(|&(i, _, _)| self.running[i].blocks.as_slice())
            .collect();
        self.model
            .forward(&self.pool, &mut self.ws, &mut self.kv, &batch, &tables);
        drop(tables);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let vocab = self.model.cfg.vocab_size;
        let mut li = 0usize;
        let mut finished: Vec<usize> = Vec::new();
        for &(i, start, count) in &plan {
            let end = start + count;
            let s = &mut self.running[i];
            let mut sample_row = None;
            for p in start..end {
                let last = p + 1 == s.tokens.len();
                let want = last || (s.prompt_logprobs.is_some() && p + 1 < s.n_prompt);
                if !want {
                    continue;
                }
                let row = li;
                li += 1;
                if p + 1 < s.n_prompt {
                    if let Some(k) = s.prompt_logprobs {
                        let logits = &self.ws.logits[row * vocab..(row + 1) * vocab];
                        s.prompt_lp
                            .push(sampler::logprobs_of(logits, s.tokens[p + 1], k));
                    }
                }
                if last {
                    sample_row = Some(row);
                }
            }
            s.n_cached = end;
            if s.n_cached == s.n_prompt && s.generated() == 0 {
                self.stats
                    .prompt_tokens
                    .fetch_add(s.n_prompt as u64, Ordering::Relaxed);
                if s.prompt_logprobs.is_some() {
                    let _ =
                        s.tx.send(Event::PromptLogprobs(std::mem::take(&mut s.prompt_lp)));
                }
                if s.max_tokens == 0 {
                    finished.push(i);
                    let _ = s.tx.send(Event::Finished {
                        reason: FinishReason::Length,
                        prompt_tokens: s.n_prompt,
                        completion_tokens: 0,
                        queued: s.queued.unwrap_or_default(),
                    });
                    continue;
                }
            }
            let Some(row) = sample_row else { continue };
            let logits = &mut self.ws.logits[row * vocab..(row + 1) * vocab];
            // Log-probabilities are of the model's distribution, before sampling transforms.
            if s.logprobs.is_some() {
                self.lp_buf.clear();
                self.lp_buf.extend_from_slice(logits);
            }
            let id = s.sampler.sample(logits);
            let logprob = s
                .logprobs
                .map(|k| sampler::logprobs_of(&self.lp_buf, id, k));
            s.sampler.accept(id);
            s.tokens.push(id);
            self.stats.generated_tokens.fetch_add(1, Ordering::Relaxed);
            let eog = self.tok.is_eog(id);
            let feed = if eog || self.tok.is_special(id) {
                text::Feed {
                    text: String::new(),
                    stopped: false,
                }
            } else {
                s.text.feed(self.tok.token_bytes(id))
            };
            let at_limit = s.generated() >= s.max_tokens
                || s.tokens.len() >= effective_context(self.model.cfg.context_length, &self.cfg);
            let reason = if eog || feed.stopped {
                Some(FinishReason::Stop)
            } else if at_limit {
                Some(FinishReason::Length)
            } else {
                None
            };
            let mut text = feed.text;
            if reason.is_some() && !feed.stopped {
                text.push_str(&s.text.finish());
            }
            let _ = s.tx.send(Event::Token { id, text, logprob });
            if let Some(reason) = reason {
                let _ = s.tx.send(Event::Finished {
                    reason,
                    prompt_tokens: s.n_prompt,
                    completion_tokens: s.generated(),
                    queued: s.queued.unwrap_or_default(),
                });
                finished.push(i);
            }
        }
        finished.sort_unstable_by(|a, b| b.cmp(a));
        for i in finished {
            let s = self.running.swap_remove(i);
            self.alloc.release(s.blocks);
        }
    }
}
