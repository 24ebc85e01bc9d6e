//! Many models in one server: the table of every servable model and its life.
//!
//! The server does not know where models live: a `ModelSource` (given by the binary, over its
//! model directory) lists the names that can be served and loads one by name. The table is
//! re-listed when a request names a model it does not know and on `GET /v1/models`, so models
//! imported while the server runs are served without a restart.
//!
//! Life of a model: `available` -> (first request, or `POST /v1/models/{id}/load`) `loading`
//! -> `loaded` or `failed`. Exactly one load runs per model: concurrent first requests wait on
//! the same load (bounded by `Limits::load_timeout`, then 503 with Retry-After). A failed model
//! answers 503 with the loader's message and is not retried by requests (that would reload a
//! broken file on every call); an explicit load retries it. Loads run on blocking threads and
//! touch no other model, so a model that fails to load disturbs nobody.
//!
//! Limits: with `max_loaded` models or `memory_budget` bytes (`Engine::memory_bytes`: mapped
//! weights + KV cache + workspace) exceeded, the least recently used loaded model is unloaded,
//! idle ones first (a model with requests in flight is chosen only when every candidate is
//! busy; its requests still finish, since they hold the engine). Room is made *before* a load,
//! at the size the source estimates from the model's header (`ModelSource::estimate_bytes`,
//! the same formula the engine reports once loaded) or the size of an earlier load; a load in
//! progress holds that room, so concurrent loads count against the limits, and a load that
//! finds the room held by others waits for them rather than overshooting the budget. Where no
//! estimate exists, room is made right after the load. A model larger than the whole budget
//! is refused before anything is read (`failed`, with both figures), and checked again once
//! loaded. Unloading drops the engine once its last request is done: its threads stop and its
//! KV cache and mapping are freed.
//!
//! A request holds an `Arc` of the engine while it runs; `Arc::strong_count > 1` is therefore
//! the "requests in flight" test, with no counter to keep in step.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use ferry_types::{ApiError, ErrorCode};
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::state::{EmbeddingModel, LoadedModel, ModelSlot, ModelState};

/// Where models come from: implemented by the binary over its model directory.
pub trait ModelSource: Send + Sync {
    /// The names of every model that can be served now.
    fn list(&self) -> Result<Vec<String>, String>;
    /// What `name` will hold in memory once loaded (the engine's `memory_bytes`), read without
    /// loading it; `None` when it cannot be told (the load then makes room afterwards).
    fn estimate_bytes(&self, _name: &str) -> Option<u64> {
        None
    }
    /// Load `name` (blocking: runs on a blocking thread). The error is shown to clients.
    fn load(&self, name: &str) -> Result<Loaded, String>;
    /// `name`'s own engine options (blocking), which apply over the server's flags when it
    /// loads. Sources that keep none refuse.
    fn options(&self, name: &str) -> Result<ModelOptions, ApiError> {
        Err(no_options(name))
    }
    /// Set and unset `name`'s options after checking them against the model (blocking);
    /// returns the options now kept.
    fn update_options(
        &self,
        name: &str,
        _set: &ModelOptions,
        _unset: &[String],
    ) -> Result<ModelOptions, ApiError> {
        Err(no_options(name))
    }
}

/// Per-model options: option name -> value (see `ferry_store::models::OPTION_KEYS`).
pub use ferry_store::ModelOptions;

pub fn no_options(name: &str) -> ApiError {
    ApiError::invalid(
        "model",
        format!("`{name}` has no options of its own here: options are kept for registered models (ferry pull), not for --model paths."),
    )
}

/// A freshly loaded model.
pub enum Loaded {
    Chat(Box<LoadedModel>),
    Embedding(EmbeddingModel),
}

/// How many models may be loaded at once, and how long a request waits for a load.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_loaded: Option<usize>,
    pub memory_budget: Option<u64>,
    pub load_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_loaded: None,
            memory_budget: None,
            load_timeout: Duration::from_secs(300),
        }
    }
}

struct Entry {
    created: u64,
    state: ModelState,
    /// Loaded: the engine's estimate; otherwise the last loaded size (0: never loaded).
    memory_bytes: u64,
    /// While loading: the room this load holds against the limits (its estimate), once it
    /// has been granted; `None` while it waits for room.
    reserved: Option<u64>,
    /// LRU clock value of the last use.
    used: u64,
    /// While loading: becomes true when the load has finished, either way.
    done: Option<watch::Receiver<bool>>,
    /// Seconds the last successful load took.
    load_seconds: Option<f64>,
    /// Requests waiting for this model's load: a model just loaded for them counts as busy
    /// until they have it, so another load cannot evict it under their feet.
    waiters: usize,
}

impl Entry {
    fn new(state: ModelState) -> Self {
        Self {
            created: crate::now(),
            state,
            memory_bytes: 0,
            reserved: None,
            used: 0,
            done: None,
            load_seconds: None,
            waiters: 0,
        }
    }
    fn is_loaded(&self) -> bool {
        matches!(
            self.state,
            ModelState::Loaded(_) | ModelState::LoadedEmbedding(_)
        )
    }
    /// Requests hold a clone of the engine's `Arc` while they run.
    fn busy(&self) -> bool {
        self.waiters > 0
            || match &self.state {
                ModelState::Loaded(m) => Arc::strong_count(m) > 1,
                ModelState::LoadedEmbedding(m) => Arc::strong_count(m) > 1,
                _ => false,
            }
    }
}

#[derive(Default)]
struct Table {
    entries: BTreeMap<String, Entry>,
    clock: u64,
}

/// The model table. Shared (`Arc`) because loads run on tasks of their own.
pub struct Registry {
    table: Mutex<Table>,
    source: OnceLock<Arc<dyn ModelSource>>,
    limits: OnceLock<Limits>,
    /// The models loaded at start, in order; the first is the default where `model` is optional.
    eager: OnceLock<Vec<String>>,
    metrics: Arc<Metrics>,
}

/// What a finished wait found.
enum Step {
    Ready(ModelState),
    Wait(watch::Receiver<bool>, Option<f64>),
    Unknown,
}

impl Registry {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            table: Mutex::default(),
            source: OnceLock::new(),
            limits: OnceLock::new(),
            eager: OnceLock::new(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where models come from (`None` before `configure`).
    pub fn source(&self) -> Option<Arc<dyn ModelSource>> {
        self.source.get().cloned()
    }

    fn limits(&self) -> Limits {
        self.limits.get().cloned().unwrap_or_default()
    }

    /// Set where models come from and the limits (once, before serving). The source's models
    /// are listed at once.
    pub fn configure(&self, source: Arc<dyn ModelSource>, limits: Limits) -> Result<(), String> {
        let _ = self.limits.set(limits);
        if self.source.set(source).is_err() {
            return Err("the model source is already set".into());
        }
        self.refresh_blocking();
        Ok(())
    }

    /// Load `names` now (the `--model` arguments), in order, waiting for each. Readiness and
    /// the default model follow them.
    pub async fn load_at_start(self: &Arc<Self>, names: &[String]) -> Vec<(String, ApiError)> {
        let _ = self.eager.set(names.to_vec());
        let mut failed = Vec::new();
        for n in names {
            if let Err(e) = self.load(n, true).await {
                failed.push((n.clone(), e));
            }
        }
        failed
    }

    /// The model named when a request leaves `model` out: the first loaded at start.
    pub fn default_model(&self) -> Option<String> {
        if let Some(n) = self.eager.get().and_then(|e| e.first()) {
            return Some(n.clone());
        }
        self.lock().entries.keys().next().cloned()
    }

    /// Ready when every model named at start is loaded (an evicted one is ready to reload).
    pub fn ready(&self) -> bool {
        let Some(eager) = self.eager.get() else {
            return false;
        };
        let t = self.lock();
        eager.iter().all(|n| {
            t.entries
                .get(n)
                .is_some_and(|e| e.is_loaded() || e.load_seconds.is_some())
        })
    }

    /// Re-read the source's list: new names become `available`; names gone from it are
    /// dropped unless loaded or loading (those stay until unloaded).
    pub async fn refresh(self: &Arc<Self>) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.refresh_blocking()).await;
    }

    fn refresh_blocking(&self) {
        let Some(source) = self.source.get() else {
            return;
        };
        let names = match source.list() {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("listing models failed: {e}");
                return;
            }
        };
        let mut t = self.lock();
        for n in &names {
            t.entries
                .entry(n.clone())
                .or_insert_with(|| Entry::new(ModelState::Available));
        }
        t.entries.retain(|n, e| {
            names.contains(n) || e.is_loaded() || matches!(e.state, ModelState::Loading)
        });
    }

    /// Every known model, for `/v1/models` and `/metrics`.
    pub fn slots(&self) -> Vec<ModelSlot> {
        self.lock()
            .entries
            .iter()
            .map(|(id, e)| ModelSlot {
                id: id.clone(),
                created: e.created,
                state: e.state.clone(),
                memory_bytes: e.is_loaded().then_some(e.memory_bytes),
            })
            .collect()
    }

    pub fn slot(&self, id: &str) -> Option<ModelSlot> {
        self.slots().into_iter().find(|s| s.id == id)
    }

    /// The loaded model `name`, loading it first if needed (waiting at most the load timeout).
    /// 404 when unknown (after re-listing), 503 when it failed to load or is still loading.
    pub async fn get(self: &Arc<Self>, name: &str) -> Result<ModelState, ApiError> {
        self.wait_loaded(name, false).await
    }

    /// `POST /v1/models/{id}/load`: like `get`, but a failed model is loaded again.
    /// `Ok(None)` when the load is still going at the timeout.
    pub async fn load(
        self: &Arc<Self>,
        name: &str,
        retry_failed: bool,
    ) -> Result<Option<ModelState>, ApiError> {
        match self.wait_loaded(name, retry_failed).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.retry_after.is_some() && e.code == ErrorCode::ServiceUnavailable => {
                let loading = self
                    .lock()
                    .entries
                    .get(name)
                    .is_some_and(|e| matches!(e.state, ModelState::Loading));
                if loading {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        }
    }

    async fn wait_loaded(
        self: &Arc<Self>,
        name: &str,
        mut retry_failed: bool,
    ) -> Result<ModelState, ApiError> {
        let deadline = Instant::now() + self.limits().load_timeout;
        let mut relisted = false;
        let mut _waiting: Option<Waiting<'_>> = None;
        loop {
            let step = {
                let mut t = self.lock();
                t.clock += 1;
                let clock = t.clock;
                match t.entries.get_mut(name) {
                    None => Step::Unknown,
                    Some(e) => match &e.state {
                        ModelState::Loaded(_) | ModelState::LoadedEmbedding(_) => {
                            e.used = clock;
                            Step::Ready(e.state.clone())
                        }
                        ModelState::Failed(why) if !retry_failed => {
                            return Err(failed_error(name, why));
                        }
                        ModelState::Loading => {
                            e.waiters += 1;
                            Step::Wait(
                                e.done.clone().expect("a loading model has a receiver"),
                                e.load_seconds,
                            )
                        }
                        ModelState::Available | ModelState::Failed(_) => {
                            retry_failed = false;
                            e.waiters += 1;
                            let secs = e.load_seconds;
                            Step::Wait(self.start_load(&mut t, name), secs)
                        }
                    },
                }
            };
            match step {
                Step::Ready(s) => return Ok(s),
                Step::Unknown if relisted => return Err(ApiError::model_not_found(name)),
                Step::Unknown => {
                    self.refresh().await;
                    relisted = true;
                }
                Step::Wait(mut rx, secs) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    // Counted until this request has the engine (or gives up): see `waiters`.
                    _waiting = Some(Waiting(self, name));
                    let waited = tokio::time::timeout(left, rx.wait_for(|d| *d))
                        .await
                        .map(|r| r.map(|_| ()));
                    if let Ok(Err(_)) = waited {
                        return Err(loader_gone(name));
                    }
                    if waited.is_err() {
                        let retry = secs.map(|s| s.ceil() as u64).unwrap_or(5).clamp(1, 60);
                        return Err(ApiError::new(
                            ErrorCode::ServiceUnavailable,
                            format!("The model `{name}` is still loading; retry shortly."),
                        )
                        .with_retry_after(retry));
                    }
                }
            }
        }
    }

    /// Mark `name` loading and start its load; returns the receiver that says when it is done.
    fn start_load(self: &Arc<Self>, t: &mut Table, name: &str) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        let known = {
            let e = t.entries.get_mut(name).expect("caller checked");
            e.state = ModelState::Loading;
            e.done = Some(rx.clone());
            e.reserved = None;
            e.memory_bytes
        };
        let me = self.clone();
        let name = name.to_string();
        // Everything that may block (reading the model's header for its size, waiting for
        // room, dropping evicted engines joins their threads; loading reads files) runs on a
        // blocking thread, as does recording the outcome.
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let source = me.source.get();
            // Its size is known from an earlier load, or from its header: make room first.
            let size = if known > 0 {
                Some(known)
            } else {
                source.and_then(|s| s.estimate_bytes(&name))
            };
            let r = match (source, size.map(|b| me.make_room(&name, b))) {
                (_, Some(Err(why))) => Err(why),
                (Some(s), _) => {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.load(&name)))
                        .unwrap_or_else(|_| Err("the loader crashed (see the server log)".into()))
                }
                (None, _) => Err("no model source is configured".into()),
            };
            me.finish_load(&name, r, started.elapsed());
            let _ = tx.send(true);
        });
        rx
    }

    /// Hold room for `name` (loading, about `bytes` once loaded) under the limits: unload
    /// least recently used models as needed; if loads already holding room leave too little,
    /// wait for them to finish and try again. A load waiting holds no room, and a load holding
    /// room never waits, so two loads cannot wait on each other. Refuses a model larger than
    /// the whole memory budget before anything is read. Runs on a blocking thread.
    fn make_room(&self, name: &str, bytes: u64) -> Result<(), String> {
        let limits = self.limits();
        if let Some(budget) = limits.memory_budget.filter(|b| bytes > *b) {
            return Err(too_big(
                bytes,
                budget,
                "estimated from its header before loading",
            ));
        }
        loop {
            let (evicted, wait) = {
                let mut t = self.lock();
                let (evicted, over) = self.evict(&mut t, name, bytes);
                // Over the limits with nothing left to unload: wait for a load holding room.
                let wait = if over {
                    t.entries
                        .iter()
                        .filter(|(n, e)| *n != name && e.reserved.is_some())
                        .find_map(|(_, e)| e.done.clone())
                } else {
                    None
                };
                if wait.is_none() {
                    if let Some(e) = t.entries.get_mut(name) {
                        e.reserved = Some(bytes);
                    }
                }
                (evicted, wait)
            };
            drop(evicted);
            let Some(mut rx) = wait else {
                return Ok(());
            };
            tracing::info!("model {name} waits for a load in progress to make room");
            let handle = tokio::runtime::Handle::current();
            if handle.block_on(rx.wait_for(|d| *d)).is_err() {
                // That load's task is gone; its entry no longer holds room once finished.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn finish_load(&self, name: &str, r: Result<Loaded, String>, took: Duration) {
        let limits = self.limits();
        let mut dropped: Vec<ModelState> = Vec::new();
        {
            let mut t = self.lock();
            t.clock += 1;
            let clock = t.clock;
            let Some(e) = t.entries.get_mut(name) else {
                return;
            };
            e.done = None;
            e.reserved = None;
            let outcome = r.and_then(|l| {
                let (state, bytes) = match l {
                    Loaded::Chat(m) => {
                        let b = m.engine.memory_bytes();
                        (ModelState::Loaded(Arc::new(*m)), b)
                    }
                    Loaded::Embedding(m) => {
                        let b = m.engine.memory_bytes();
                        (ModelState::LoadedEmbedding(Arc::new(m)), b)
                    }
                };
                match limits.memory_budget {
                    Some(budget) if bytes > budget => {
                        dropped.push(state);
                        Err(too_big(bytes, budget, "once loaded"))
                    }
                    _ => Ok((state, bytes)),
                }
            });
            match outcome {
                Ok((state, bytes)) => {
                    e.state = state;
                    e.memory_bytes = bytes;
                    e.used = clock;
                    e.load_seconds = Some(took.as_secs_f64());
                    tracing::info!(
                        "model {name} loaded in {:.2}s (about {})",
                        took.as_secs_f64(),
                        human_bytes(bytes)
                    );
                    self.metrics.observe_load(name, took, true);
                    dropped.extend(self.evict(&mut t, name, 0).0);
                }
                Err(why) => {
                    tracing::error!("model {name} failed to load: {why}");
                    e.state = ModelState::Failed(why);
                    self.metrics.observe_load(name, took, false);
                }
            }
        }
        // Dropping an engine joins its threads: not under the lock.
        drop(dropped);
    }

    /// Unload least recently used models (idle ones first) until the limits hold with `keep`
    /// loaded (or loading, counted at `keep_bytes`) beside the loads that hold room. Returns
    /// the unloaded states, to be dropped off the lock, and whether the limits are still
    /// exceeded (nothing left to unload).
    fn evict(&self, t: &mut Table, keep: &str, keep_bytes: u64) -> (Vec<ModelState>, bool) {
        let limits = self.limits();
        let mut out = Vec::new();
        loop {
            let holding: Vec<u64> = t
                .entries
                .iter()
                .filter(|(n, e)| *n != keep && matches!(e.state, ModelState::Loading))
                .filter_map(|(_, e)| e.reserved)
                .collect();
            let candidates: Vec<(&String, &Entry)> = t
                .entries
                .iter()
                .filter(|(n, e)| *n != keep && e.is_loaded())
                .collect();
            let keep_mem = t
                .entries
                .get(keep)
                .filter(|e| e.is_loaded())
                .map(|e| e.memory_bytes)
                .unwrap_or(keep_bytes);
            let count = candidates.len() + holding.len() + 1;
            let mem: u64 = candidates.iter().map(|(_, e)| e.memory_bytes).sum::<u64>()
                + holding.iter().sum::<u64>()
                + keep_mem;
            let over = limits.max_loaded.is_some_and(|m| count > m.max(1))
                || limits.memory_budget.is_some_and(|b| mem > b);
            if !over {
                return (out, false);
            }
            let Some(victim) = candidates
                .iter()
                .min_by_key(|(_, e)| (e.busy(), e.used))
                .map(|(n, _)| (*n).clone())
            else {
                return (out, true);
            };
            let e = t.entries.get_mut(&victim).expect("listed above");
            if e.busy() {
                tracing::warn!("unloading model {victim} with requests in flight (every loaded model is busy); they finish first");
            }
            tracing::info!("unloading model {victim} (least recently used) to load {keep}");
            let state = std::mem::replace(&mut e.state, ModelState::Available);
            self.metrics.retire(&victim, &state);
            out.push(state);
        }
    }

    /// `POST /v1/models/{id}/unload`: back to `available` (a failed model too, clearing its
    /// error); a model already available is left as it is. Waits for a load in progress.
    pub async fn unload(self: &Arc<Self>, name: &str) -> Result<ModelSlot, ApiError> {
        let deadline = Instant::now() + self.limits().load_timeout;
        let mut relisted = false;
        loop {
            enum U {
                Unknown,
                Wait(watch::Receiver<bool>),
                Done(ModelState),
            }
            let u = {
                let mut t = self.lock();
                match t.entries.get_mut(name) {
                    None => U::Unknown,
                    Some(e) if matches!(e.state, ModelState::Loading) => {
                        U::Wait(e.done.clone().expect("a loading model has a receiver"))
                    }
                    Some(e) => {
                        let state = std::mem::replace(&mut e.state, ModelState::Available);
                        self.metrics.retire(name, &state);
                        U::Done(state)
                    }
                }
            };
            match u {
                U::Done(state) => {
                    if matches!(
                        state,
                        ModelState::Loaded(_) | ModelState::LoadedEmbedding(_)
                    ) {
                        tracing::info!("model {name} unloaded");
                        // Dropping the engine joins its threads: off the async workers.
                        let _ = tokio::task::spawn_blocking(move || drop(state)).await;
                    }
                    return self
                        .slot(name)
                        .ok_or_else(|| ApiError::model_not_found(name));
                }
                U::Unknown if relisted => return Err(ApiError::model_not_found(name)),
                U::Unknown => {
                    self.refresh().await;
                    relisted = true;
                }
                U::Wait(mut rx) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let waited = tokio::time::timeout(left, rx.wait_for(|d| *d)).await;
                    if let Ok(Err(_)) = waited {
                        return Err(loader_gone(name));
                    }
                    if waited.is_err() {
                        return Err(ApiError::new(
                            ErrorCode::ServiceUnavailable,
                            format!("The model `{name}` is loading; retry the unload shortly."),
                        )
                        .with_retry_after(5));
                    }
                }
            }
        }
    }
}

/// One request waiting for a load; dropping it (woken, timed out, or the client gone) counts
/// the wait as over.
struct Waiting<'a>(&'a Registry, &'a str);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.0.lock().entries.get_mut(self.1) {
            e.waiters = e.waiters.saturating_sub(1);
        }
    }
}

/// The load's task ended without saying how (a bug): say so rather than wait forever.
fn too_big(bytes: u64, budget: u64, when: &str) -> String {
    format!(
        "it needs about {} (weights, KV cache, workspace; {when}), more than --memory-budget {}",
        human_bytes(bytes),
        human_bytes(budget)
    )
}

fn loader_gone(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InternalError,
        format!("Loading the model `{name}` stopped unexpectedly; see the server log."),
    )
}

fn failed_error(name: &str, why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ServiceUnavailable,
        format!("The model `{name}` failed to load: {why}. An admin can retry with POST /v1/models/{name}/load."),
    )
}

/// Parse a byte size: `1073741824`, `512MiB`, `2GiB`, `1.5GB`, `800M` (K/M/G/T: powers of
/// 1024 with or without `iB`; `KB`/`MB`/`GB`/`TB`: powers of 1000).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 2GiB, 512MiB, 1073741824)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        u => {
            return Err(format!(
                "unknown size unit {u:?} in {s:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    let v = n * mult as f64;
    if !v.is_finite() || v < 1.0 || v >= u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(v as u64)
}

fn human_bytes(b: u64) -> String {
    let gib = 1u64 << 30;
    if b >= gib {
        format!("{:.2} GiB", b as f64 / gib as f64)
    } else {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes_and_bad_ones_are_refused() {
        assert_eq!(parse_bytes("1073741824"), Ok(1 << 30));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("512M"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes(" 64 KiB "), Ok(64 << 10));
        for bad in ["", "GiB", "-1GiB", "0", "2 parsecs", "1e3", "99999999TiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_models_are_404_and_an_empty_table_is_not_ready() {
        let r = Arc::new(Registry::new(Arc::default()));
        assert!(!r.ready());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt.block_on(r.get("nope")).err().unwrap();
        assert_eq!(e.code, ErrorCode::ModelNotFound);
        let e = rt.block_on(r.unload("nope")).err().unwrap();
        assert_eq!(e.code, ErrorCode::ModelNotFound);
    }
}
