//! `GET /metrics`: Prometheus text exposition, written by hand. Engine metrics use vLLM's
//! names and a `model_name` label, so vLLM dashboards work: latency histograms observed by
//! `Tracked` (see `sse.rs`), gauges and token counters read from `Engine::stats()`. Embedding
//! engines report under the same names (running and waiting requests, prompt tokens, end to
//! end latency) plus `ferry:embedding_inputs_total`. HTTP metrics (`ferry_http_*`) are
//! labelled with the matched route template.
//!
//! Model lifecycle: `ferry:model_loaded` (1/0 for every known model), `ferry:model_memory_bytes`
//! (loaded models), `ferry:model_load_duration_seconds` and `ferry:model_load_failures_total`.
//! Gauges exist only while a model is loaded; counters of an unloaded engine are folded into
//! `retired` so that totals stay monotonic across unload and reload.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use ferry_engine::Event;

use crate::state::{AppState, ModelState};

const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_BUCKETS: &[f64] = &[
    0.001, 0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
];
const LOAD_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0,
];
const HTTP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    /// Per bucket, not cumulative; the last one is +Inf.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }
    fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.sum += v;
    }
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut acc = 0;
        for (i, c) in self.counts.iter().enumerate() {
            acc += c;
            let le = self
                .bounds
                .get(i)
                .map(|b| b.to_string())
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {acc}");
        }
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {acc}");
    }
}

struct ModelHistograms {
    ttft: Histogram,
    itl: Histogram,
    e2e: Histogram,
    queue: Histogram,
}

impl Default for ModelHistograms {
    fn default() -> Self {
        Self {
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(REQUEST_BUCKETS),
            queue: Histogram::new(REQUEST_BUCKETS),
        }
    }
}

/// Counters of engines that were unloaded.
#[derive(Default, Clone, Copy)]
struct Retired {
    embedding: bool,
    prompt_tokens: u64,
    generation_tokens: u64,
    embedding_inputs: u64,
}

#[derive(Default)]
struct Inner {
    models: BTreeMap<String, ModelHistograms>,
    retired: BTreeMap<String, Retired>,
    /// Load durations (successful loads) and failed loads, per model.
    loads: BTreeMap<String, (Histogram, u64)>,
    /// (route, method, status) -> count.
    http: BTreeMap<(String, String, u16), u64>,
    http_duration: BTreeMap<String, Histogram>,
}

/// The server's metrics registry.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// What to observe about one engine request.
pub(crate) enum Observation {
    FirstToken(Duration),
    InterToken(Duration),
    Finished {
        e2e: Duration,
        queued: Duration,
    },
    /// An embeddings request answered, from submit to vectors.
    Embedded(Duration),
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn observe(&self, model: &str, o: Observation) {
        let mut g = self.lock();
        let m = match g.models.get_mut(model) {
            Some(m) => m,
            None => g.models.entry(model.to_string()).or_default(),
        };
        match o {
            Observation::FirstToken(d) => m.ttft.observe(d.as_secs_f64()),
            Observation::InterToken(d) => m.itl.observe(d.as_secs_f64()),
            Observation::Finished { e2e, queued } => {
                m.e2e.observe(e2e.as_secs_f64());
                m.queue.observe(queued.as_secs_f64());
            }
            Observation::Embedded(d) => m.e2e.observe(d.as_secs_f64()),
        }
    }

    /// A load of `model` finished, well or not.
    pub(crate) fn observe_load(&self, model: &str, took: Duration, ok: bool) {
        let mut g = self.lock();
        let e = g
            .loads
            .entry(model.to_string())
            .or_insert_with(|| (Histogram::new(LOAD_BUCKETS), 0));
        if ok {
            e.0.observe(took.as_secs_f64());
        } else {
            e.1 += 1;
        }
    }

    /// `model` is being unloaded: keep its engine's counters.
    pub(crate) fn retire(&self, model: &str, state: &ModelState) {
        if !matches!(
            state,
            ModelState::Loaded(_) | ModelState::LoadedEmbedding(_)
        ) {
            return;
        }
        let mut g = self.lock();
        let r = g.retired.entry(model.to_string()).or_default();
        match state {
            ModelState::Loaded(m) => {
                let x = m.engine.stats();
                r.prompt_tokens += x.prompt_tokens.load(Ordering::Relaxed);
                r.generation_tokens += x.generated_tokens.load(Ordering::Relaxed);
            }
            ModelState::LoadedEmbedding(m) => {
                let x = m.engine.stats();
                r.embedding = true;
                r.prompt_tokens += x.tokens.load(Ordering::Relaxed);
                r.embedding_inputs += x.inputs.load(Ordering::Relaxed);
            }
            _ => {}
        }
    }

    pub(crate) fn observe_http(&self, route: &str, method: &str, status: u16, d: Duration) {
        let mut g = self.lock();
        *g.http
            .entry((route.to_string(), method.to_string(), status))
            .or_default() += 1;
        g.http_duration
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(HTTP_BUCKETS))
            .observe(d.as_secs_f64());
    }

    /// The exposition text, over a snapshot of every known model.
    fn render(&self, models: &[ModelSample]) -> String {
        let mut out = String::new();
        let g = self.lock();
        let label = |m: &str| format!("model_name=\"{}\"", escape(m));
        let head = |out: &mut String, name: &str, ty: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {ty}");
        };

        // Gauges: loaded engines only (an unloaded model has none, rather than stale ones).
        type Gauge = fn(&EngineSample) -> Option<f64>;
        let gauges: [(&str, &str, Gauge); 3] = [
            (
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                |s| Some(s.running as f64),
            ),
            (
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                |s| Some(s.waiting as f64),
            ),
            (
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
                |s| s.kv_usage,
            ),
        ];
        for (name, help, f) in gauges {
            head(&mut out, name, "gauge", help);
            for m in models {
                if let Some(v) = m.engine.as_ref().and_then(f) {
                    let _ = writeln!(out, "{name}{{{}}} {v}", label(&m.name));
                }
            }
        }
        // Counters: the live engine's plus those of its unloaded predecessors.
        let totals: Vec<(&str, Retired)> = models
            .iter()
            .filter_map(|m| {
                let r = g.retired.get(&m.name).copied();
                let t = match (&m.engine, r) {
                    (None, r) => r?,
                    (Some(s), r) => {
                        let r = r.unwrap_or_default();
                        Retired {
                            embedding: s.embedding,
                            prompt_tokens: r.prompt_tokens + s.prompt_tokens,
                            generation_tokens: r.generation_tokens + s.generation_tokens,
                            embedding_inputs: r.embedding_inputs + s.embedding_inputs,
                        }
                    }
                };
                Some((m.name.as_str(), t))
            })
            .collect();
        type Counter = fn(&Retired) -> Option<u64>;
        let counters: [(&str, &str, Counter); 3] = [
            (
                "vllm:prompt_tokens_total",
                "Number of prefill tokens processed.",
                |t| Some(t.prompt_tokens),
            ),
            (
                "vllm:generation_tokens_total",
                "Number of generation tokens processed.",
                |t| (!t.embedding).then_some(t.generation_tokens),
            ),
            (
                "ferry:embedding_inputs_total",
                "Number of inputs (sequences) embedded.",
                |t| t.embedding.then_some(t.embedding_inputs),
            ),
        ];
        for (name, help, f) in counters {
            head(&mut out, name, "counter", help);
            for (m, t) in &totals {
                if let Some(v) = f(t) {
                    let _ = writeln!(out, "{name}{{{}}} {v}", label(m));
                }
            }
        }

        head(
            &mut out,
            "ferry:model_loaded",
            "gauge",
            "1 while the model is loaded, 0 otherwise.",
        );
        for m in models {
            let v = u8::from(m.engine.is_some());
            let _ = writeln!(out, "ferry:model_loaded{{{}}} {v}", label(&m.name));
        }
        head(
            &mut out,
            "ferry:model_memory_bytes",
            "gauge",
            "Memory estimate of a loaded model: mapped weights, KV cache, workspace.",
        );
        for m in models {
            if let Some(b) = m.memory_bytes {
                let _ = writeln!(out, "ferry:model_memory_bytes{{{}}} {b}", label(&m.name));
            }
        }
        head(
            &mut out,
            "ferry:model_load_duration_seconds",
            "histogram",
            "Time to load a model (successful loads).",
        );
        for (m, (h, _)) in &g.loads {
            h.write(&mut out, "ferry:model_load_duration_seconds", &label(m));
        }
        head(
            &mut out,
            "ferry:model_load_failures_total",
            "counter",
            "Loads that failed.",
        );
        for (m, (_, n)) in &g.loads {
            let _ = writeln!(out, "ferry:model_load_failures_total{{{}}} {n}", label(m));
        }

        // (name, help, histogram, chat models only).
        type Pick = fn(&ModelHistograms) -> &Histogram;
        let hists: [(&str, &str, Pick, bool); 4] = [
            (
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                |m| &m.ttft,
                true,
            ),
            (
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                |m| &m.itl,
                true,
            ),
            (
                "vllm:e2e_request_latency_seconds",
                "Histogram of end to end request latency in seconds.",
                |m| &m.e2e,
                false,
            ),
            (
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in the waiting queue in seconds.",
                |m| &m.queue,
                true,
            ),
        ];
        let embedding: Vec<&str> = totals
            .iter()
            .filter(|(_, t)| t.embedding)
            .map(|(m, _)| *m)
            .collect();
        // Every loaded model has its series, observed or not.
        let empty = ModelHistograms::default();
        let mut names: Vec<&str> = models
            .iter()
            .filter(|m| m.engine.is_some())
            .map(|m| m.name.as_str())
            .collect();
        names.extend(g.models.keys().map(|k| k.as_str()));
        names.sort_unstable();
        names.dedup();
        for (name, help, pick, chat_only) in hists {
            head(&mut out, name, "histogram", help);
            for m in &names {
                if chat_only && embedding.contains(m) {
                    continue;
                }
                pick(g.models.get(*m).unwrap_or(&empty)).write(&mut out, name, &label(m));
            }
        }

        head(
            &mut out,
            "ferry_http_requests_total",
            "counter",
            "HTTP requests by matched route, method and status.",
        );
        for ((route, method, status), n) in &g.http {
            let _ = writeln!(
                out,
                "ferry_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                escape(route),
                escape(method)
            );
        }
        head(
            &mut out,
            "ferry_http_request_duration_seconds",
            "histogram",
            "Time to the response head, by matched route.",
        );
        for (route, h) in &g.http_duration {
            h.write(
                &mut out,
                "ferry_http_request_duration_seconds",
                &format!("route=\"{}\"", escape(route)),
            );
        }
        out
    }
}

/// One known model at the time of a scrape.
pub(crate) struct ModelSample {
    name: String,
    /// Loaded: its engine's gauges and counters.
    engine: Option<EngineSample>,
    memory_bytes: Option<u64>,
}

/// Gauges and counters of one engine (chat or embedding).
#[derive(Default, Clone)]
pub(crate) struct EngineSample {
    embedding: bool,
    running: usize,
    waiting: usize,
    /// Chat engines only.
    kv_usage: Option<f64>,
    prompt_tokens: u64,
    generation_tokens: u64,
    embedding_inputs: u64,
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn sample(state: &ModelState) -> Option<EngineSample> {
    match state {
        ModelState::Loaded(m) => {
            let x = m.engine.stats();
            let total = x.kv_blocks_total.load(Ordering::Relaxed);
            let used = x.kv_blocks_used.load(Ordering::Relaxed);
            Some(EngineSample {
                embedding: false,
                running: x.running.load(Ordering::Relaxed),
                waiting: x.waiting.load(Ordering::Relaxed),
                kv_usage: Some(if total == 0 {
                    0.0
                } else {
                    used as f64 / total as f64
                }),
                prompt_tokens: x.prompt_tokens.load(Ordering::Relaxed),
                generation_tokens: x.generated_tokens.load(Ordering::Relaxed),
                embedding_inputs: 0,
            })
        }
        ModelState::LoadedEmbedding(m) => {
            let x = m.engine.stats();
            Some(EngineSample {
                embedding: true,
                running: x.running.load(Ordering::Relaxed),
                waiting: x.waiting.load(Ordering::Relaxed),
                kv_usage: None,
                prompt_tokens: x.tokens.load(Ordering::Relaxed),
                generation_tokens: 0,
                embedding_inputs: x.inputs.load(Ordering::Relaxed),
            })
        }
        _ => None,
    }
}

pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let models: Vec<ModelSample> = st
        .slots()
        .into_iter()
        .map(|s| ModelSample {
            engine: sample(&s.state),
            memory_bytes: s.memory_bytes,
            name: s.id,
        })
        .collect();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(&models),
    )
        .into_response()
}

/// Watches one engine request's events: time to first token, inter-token latency, end to
/// end latency and queue time, measured from `submit`.
pub(crate) struct Timing {
    metrics: Arc<Metrics>,
    model: String,
    submitted: Instant,
    last: Option<Instant>,
}

impl Timing {
    pub(crate) fn new(metrics: Arc<Metrics>, model: &str) -> Self {
        Self {
            metrics,
            model: model.to_string(),
            submitted: Instant::now(),
            last: None,
        }
    }

    pub(crate) fn see(&mut self, ev: &Event) {
        let now = Instant::now();
        match ev {
            Event::Token { .. } => {
                let o = match self.last {
                    None => Observation::FirstToken(now - self.submitted),
                    Some(t) => Observation::InterToken(now - t),
                };
                self.last = Some(now);
                self.metrics.observe(&self.model, o);
            }
            Event::Finished { queued, .. } => self.metrics.observe(
                &self.model,
                Observation::Finished {
                    e2e: now - self.submitted,
                    queued: *queued,
                },
            ),
            Event::PromptLogprobs(_) | Event::Error(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        for v in [0.05, 0.1, 0.5, 3.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.write(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.1\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 4\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 3.65\n"), "{out}");
    }

    fn chat(name: &str, running: usize, prompt: u64) -> ModelSample {
        ModelSample {
            name: name.into(),
            engine: Some(EngineSample {
                running,
                waiting: 2,
                kv_usage: Some(0.25),
                prompt_tokens: prompt,
                generation_tokens: 5,
                ..Default::default()
            }),
            memory_bytes: Some(1000),
        }
    }

    #[test]
    fn render_has_every_family_and_escapes_labels() {
        let m = Metrics::default();
        m.observe("m\"1", Observation::FirstToken(Duration::from_millis(30)));
        m.observe_http("/v1/models", "GET", 200, Duration::from_millis(2));
        m.observe_load("m\"1", Duration::from_millis(700), true);
        let emb = ModelSample {
            name: "e".into(),
            engine: Some(EngineSample {
                embedding: true,
                running: 3,
                prompt_tokens: 40,
                embedding_inputs: 4,
                ..Default::default()
            }),
            memory_bytes: Some(10),
        };
        let out = m.render(&[chat("m\"1", 1, 10), emb]);
        for l in [
            "vllm:num_requests_running{model_name=\"m\\\"1\"} 1",
            "vllm:num_requests_waiting{model_name=\"m\\\"1\"} 2",
            "vllm:kv_cache_usage_perc{model_name=\"m\\\"1\"} 0.25",
            "vllm:prompt_tokens_total{model_name=\"m\\\"1\"} 10",
            "vllm:generation_tokens_total{model_name=\"m\\\"1\"} 5",
            "vllm:time_to_first_token_seconds_count{model_name=\"m\\\"1\"} 1",
            "vllm:e2e_request_latency_seconds_count{model_name=\"m\\\"1\"} 0",
            "# TYPE vllm:request_queue_time_seconds histogram",
            "ferry_http_requests_total{route=\"/v1/models\",method=\"GET\",status=\"200\"} 1",
            "ferry_http_request_duration_seconds_count{route=\"/v1/models\"} 1",
            "vllm:num_requests_running{model_name=\"e\"} 3",
            "vllm:prompt_tokens_total{model_name=\"e\"} 40",
            "ferry:embedding_inputs_total{model_name=\"e\"} 4",
            "ferry:model_loaded{model_name=\"e\"} 1",
            "ferry:model_memory_bytes{model_name=\"m\\\"1\"} 1000",
            "ferry:model_load_duration_seconds_count{model_name=\"m\\\"1\"} 1",
            "ferry:model_load_failures_total{model_name=\"m\\\"1\"} 0",
        ] {
            assert!(out.lines().any(|x| x == l), "missing {l}:\n{out}");
        }
        // Chat-only series are not made up for embedding models.
        assert!(!out.contains("vllm:kv_cache_usage_perc{model_name=\"e\"}"));
        assert!(!out.contains("vllm:time_to_first_token_seconds_count{model_name=\"e\"}"));
        assert!(out.contains("vllm:e2e_request_latency_seconds_count{model_name=\"e\"} 0"));
        assert!(!out.contains("vllm:generation_tokens_total{model_name=\"e\"}"));
    }

    #[test]
    fn unloaded_models_keep_monotonic_counters_and_lose_gauges() {
        let m = Metrics::default();
        // Loaded, counted 10 prompt tokens, then unloaded (its counters retired by hand here).
        m.lock().retired.insert(
            "a".into(),
            Retired {
                prompt_tokens: 10,
                generation_tokens: 5,
                ..Default::default()
            },
        );
        let gone = ModelSample {
            name: "a".into(),
            engine: None,
            memory_bytes: None,
        };
        let never = ModelSample {
            name: "b".into(),
            engine: None,
            memory_bytes: None,
        };
        let out = m.render(&[gone, never]);
        for l in [
            "ferry:model_loaded{model_name=\"a\"} 0",
            "ferry:model_loaded{model_name=\"b\"} 0",
            "vllm:prompt_tokens_total{model_name=\"a\"} 10",
        ] {
            assert!(out.lines().any(|x| x == l), "missing {l}:\n{out}");
        }
        for absent in [
            "vllm:num_requests_running{model_name=\"a\"}",
            "vllm:kv_cache_usage_perc{model_name=\"a\"}",
            "ferry:model_memory_bytes{model_name=\"a\"}",
            "vllm:prompt_tokens_total{model_name=\"b\"}",
            "vllm:time_to_first_token_seconds_count{model_name=\"b\"}",
        ] {
            assert!(!out.contains(absent), "stale {absent}:\n{out}");
        }
        // Reloaded: the new engine counts from zero; the total goes on from 10.
        let out = m.render(&[chat("a", 0, 3)]);
        assert!(out
            .lines()
            .any(|x| x == "vllm:prompt_tokens_total{model_name=\"a\"} 13"));
        assert!(out
            .lines()
            .any(|x| x == "vllm:generation_tokens_total{model_name=\"a\"} 10"));
    }
}
