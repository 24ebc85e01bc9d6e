//! Shared generation plumbing: submitting one engine request per choice, collecting events,
//! and the SSE response whose lines a producer task writes.

use std::convert::Infallible;

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use ferry_engine::{Engine, Event, FinishReason, GenerateRequest, SamplingParams, TokenLogprob};
use ferry_types::openai::{SamplingSpec, Usage};
use ferry_types::ApiError;
use futures_util::stream::{self, Stream, StreamExt};
use serde::Serialize;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::auth::Caller;
use crate::error::from_submit;
use crate::metrics::Timing;
use crate::state::AppState;

/// The engine request for choice `index` of a request.
pub fn request_for(
    spec: &SamplingSpec,
    prompt: Vec<u32>,
    max_tokens: usize,
    index: usize,
    prompt_logprobs: Option<usize>,
) -> GenerateRequest {
    GenerateRequest {
        prompt,
        max_tokens,
        sampling: SamplingParams {
            temperature: spec.temperature,
            top_p: spec.top_p,
            top_k: spec.top_k,
            min_p: spec.min_p,
            frequency_penalty: spec.frequency_penalty,
            presence_penalty: spec.presence_penalty,
            repetition_penalty: spec.repetition_penalty,
            logit_bias: spec.logit_bias.clone(),
            // Choices of one request differ; the same request with the same seed repeats.
            seed: spec.seed.map(|s| s.wrapping_add(index as u64)),
        },
        stop: spec.stop.clone(),
        logprobs: spec.logprobs,
        prompt_logprobs,
    }
}

/// Submit all, or none: on a refusal the already-queued ones are dropped (cancelled).
/// `reqs` are `n` choices per prompt, in order; the result's receivers feed `/metrics` and the
/// caller's key usage (a prompt's tokens count once, with its first choice).
pub fn submit_all(
    st: &AppState,
    model: &str,
    engine: &Engine,
    reqs: Vec<GenerateRequest>,
    n: usize,
) -> Result<Vec<Tracked>, ApiError> {
    let caller = Caller::current();
    let mut out = Vec::with_capacity(reqs.len());
    for (i, r) in reqs.into_iter().enumerate() {
        let prompt_len = r.prompt.len();
        let rx = engine.submit(r).map_err(from_submit)?;
        out.push(Tracked {
            rx,
            timing: Timing::new(st.metrics.clone(), model),
            caller: caller.clone(),
            model: model.to_string(),
            prompt_len: if i % n.max(1) == 0 { prompt_len } else { 0 },
            generated: 0,
            finished: false,
        });
    }
    if let Some(c) = &caller {
        c.record_request(model);
    }
    Ok(out)
}

/// One choice's event channel, observed on the way: latency metrics, and token usage of the
/// caller's key when the choice finishes (or, if the client left, what was generated so far).
pub struct Tracked {
    rx: UnboundedReceiver<Event>,
    timing: Timing,
    caller: Option<Caller>,
    model: String,
    /// Prompt tokens to bill with this choice (0 for a prompt's later choices).
    prompt_len: usize,
    generated: usize,
    finished: bool,
}

impl Tracked {
    pub async fn recv(&mut self) -> Option<Event> {
        let ev = self.rx.recv().await?;
        self.timing.see(&ev);
        match &ev {
            Event::Token { .. } => self.generated += 1,
            Event::Finished {
                completion_tokens, ..
            } => {
                self.finished = true;
                if let Some(c) = &self.caller {
                    c.record_tokens(&self.model, self.prompt_len, *completion_tokens);
                }
            }
            Event::Error(_) => self.finished = true,
            Event::PromptLogprobs(_) => {}
        }
        Some(ev)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.finished && self.generated > 0 {
            if let Some(c) = &self.caller {
                c.record_tokens(&self.model, self.prompt_len, self.generated);
            }
        }
    }
}

/// Everything one choice produced.
#[derive(Default)]
pub struct Collected {
    pub text: String,
    pub tokens: Vec<u32>,
    pub logprobs: Vec<TokenLogprob>,
    pub prompt_logprobs: Option<Vec<TokenLogprob>>,
    pub finish: Option<FinishReason>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Wait for one choice to finish.
pub async fn collect(mut rx: Tracked) -> Result<Collected, ApiError> {
    let mut c = Collected::default();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::PromptLogprobs(lp) => c.prompt_logprobs = Some(lp),
            Event::Token { id, text, logprob } => {
                c.text.push_str(&text);
                c.tokens.push(id);
                if let Some(lp) = logprob {
                    c.logprobs.push(lp);
                }
            }
            Event::Finished {
                reason,
                prompt_tokens,
                completion_tokens,
                ..
            } => {
                c.finish = Some(reason);
                c.prompt_tokens = prompt_tokens;
                c.completion_tokens = completion_tokens;
                return Ok(c);
            }
            Event::Error(e) => return Err(ApiError::new(ferry_types::ErrorCode::InternalError, e)),
        }
    }
    Err(ApiError::new(
        ferry_types::ErrorCode::InternalError,
        "generation ended without a result",
    ))
}

pub fn usage(prompt: usize, completion: usize) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: prompt + completion,
    }
}

/// Events of several choices merged, tagged with the choice index.
pub fn merged(rxs: Vec<Tracked>) -> impl Stream<Item = (usize, Event)> + Send + Unpin {
    stream::select_all(rxs.into_iter().enumerate().map(|(i, rx)| {
        Box::pin(stream::unfold(rx, move |mut rx| async move {
            rx.recv().await.map(|e| ((i, e), rx))
        }))
    }))
}

/// Writer side of an SSE response.
pub struct SseWriter(UnboundedSender<SseEvent>);

impl SseWriter {
    /// Send one `data:` line; false when the client is gone.
    pub fn data<T: Serialize>(&self, v: &T) -> bool {
        let s = serde_json::to_string(v).unwrap_or_else(|_| "{}".into());
        self.0.send(SseEvent::default().data(s)).is_ok()
    }
    /// Resolves when the client has gone away.
    pub async fn closed(&self) {
        self.0.closed().await
    }
    pub fn done(&self) {
        let _ = self.0.send(SseEvent::default().data("[DONE]"));
    }
    /// An error after the stream started: OpenAI's error object as a data line, then the end.
    pub fn error(&self, e: &ApiError) {
        let _ = self.data(&e.body());
    }
}

/// An SSE response fed by `produce`, which runs as its own task. When the client disconnects,
/// the writer's sends fail and the producer should return (dropping engine receivers cancels
/// their sequences).
pub fn sse_response<F, Fut>(produce: F) -> Response
where
    F: FnOnce(SseWriter) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = unbounded_channel::<SseEvent>();
    tokio::spawn(tracing::Instrument::in_current_span(produce(SseWriter(tx))));
    let s = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(s.boxed()).into_response()
}
