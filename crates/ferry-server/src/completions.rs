//! `POST /v1/completions`: prompts as text or token ids, `echo`, legacy `logprobs`
//! (including prompt log-probabilities with `echo`, as lm-evaluation-harness uses).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_engine::{Event, TokenLogprob};
use ferry_models::tokenizer::Tokenizer;
use ferry_types::openai::{
    Completion, CompletionChoice, CompletionLogprobs, CompletionRequest, Prompt,
};
use ferry_types::{ApiError, ErrorCode};
use futures_util::StreamExt;

use crate::body::{parse, JsonBody, Kind};
use crate::chat::token_str;
use crate::error::Result;
use crate::sse::{collect, merged, request_for, sse_response, submit_all, usage};
use crate::state::AppState;

const DEFAULT_MAX_TOKENS: usize = 16;

fn prompts(p: &Prompt, tok: &Tokenizer) -> std::result::Result<Vec<Vec<u32>>, ApiError> {
    let enc = |s: &str| tok.encode(s, true, true);
    let v = match p {
        Prompt::Text(s) => vec![enc(s)],
        Prompt::Texts(v) => v.iter().map(|s| enc(s)).collect(),
        Prompt::Tokens(t) => vec![t.clone()],
        Prompt::TokenLists(l) => l.clone(),
    };
    if v.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be empty."));
    }
    for t in v.iter().flatten() {
        if *t as usize >= tok.vocab_size() {
            return Err(ApiError::invalid(
                "prompt",
                format!("Token id {t} is out of the vocabulary."),
            ));
        }
    }
    Ok(v)
}

/// Legacy logprobs for a run of tokens: `first_none` marks the first token as having none.
fn legacy(
    tok: &Tokenizer,
    lps: &[TokenLogprob],
    offset: &mut usize,
    first: Option<u32>,
    out: &mut CompletionLogprobs,
) {
    let mut push = |id: u32,
                    lp: Option<f32>,
                    top: Option<BTreeMap<String, f32>>,
                    out: &mut CompletionLogprobs| {
        let s = token_str(tok, id);
        out.text_offset.push(*offset);
        *offset += s.chars().count();
        out.tokens.push(s);
        out.token_logprobs.push(lp);
        out.top_logprobs.push(top);
    };
    if let Some(id) = first {
        push(id, None, None, out);
    }
    for l in lps {
        let top = l
            .top
            .iter()
            .map(|&(id, lp)| (token_str(tok, id), lp))
            .collect();
        push(l.id, Some(l.logprob), Some(top), out);
    }
}

pub async fn create(State(st): State<Arc<AppState>>, JsonBody(body): JsonBody) -> Result<Response> {
    let req: CompletionRequest = parse(body, &["model", "prompt"], &[("logprobs", Kind::Int)])?;
    // `user` identifies the end user for abuse monitoring: it goes to the request's log line.
    if let Some(user) = &req.sampling.user {
        tracing::info!(user = %user, model = %req.model, "request for end user");
    }
    let model = st.model(&req.model).await?;
    let engine = &model.engine;
    let spec = req.validate(engine.vocab_size())?;
    let echo = req.echo.unwrap_or(false);
    let tok = engine.tokenizer();
    let ps = prompts(&req.prompt, tok)?;
    let context = engine.context_length();
    let max_tokens = spec.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    for p in &ps {
        if p.is_empty() {
            return Err(ApiError::invalid("prompt", "A prompt is empty.").into());
        }
        if p.len() + max_tokens > context {
            return Err(ApiError::new(
                ErrorCode::ContextLengthExceeded,
                format!(
                    "This model's maximum context length is {context} tokens, however you requested {} tokens ({} in your prompt; {max_tokens} for the completion). Please reduce your prompt; or completion length.",
                    p.len() + max_tokens,
                    p.len()
                ),
            )
            .with_param("prompt")
            .into());
        }
    }
    if echo && spec.stream {
        return Err(ApiError::invalid("echo", "`echo` is not supported with `stream`.").into());
    }
    let prompt_lp = if echo { spec.logprobs } else { None };
    let mut reqs = Vec::new();
    for p in &ps {
        for i in 0..spec.n {
            reqs.push(request_for(&spec, p.clone(), max_tokens, i, prompt_lp));
        }
    }
    let rxs = submit_all(&st, &req.model, engine, reqs, spec.n)?;
    let id = crate::new_id("cmpl");
    let created = crate::now();
    let model_id = req.model.clone();
    let n = spec.n;
    let prompt_tokens: usize = ps.iter().map(|p| p.len()).sum();
    if !spec.stream {
        let mut choices = Vec::new();
        let mut completion = 0;
        for (index, rx) in rxs.into_iter().enumerate() {
            let c = collect(rx).await?;
            completion += c.completion_tokens;
            let p = &ps[index / n];
            let mut text = String::new();
            let mut logprobs = spec.logprobs.map(|_| CompletionLogprobs::default());
            let mut offset = 0usize;
            if echo {
                text = tok.decode(p);
                if let Some(out) = logprobs.as_mut() {
                    legacy(
                        tok,
                        c.prompt_logprobs.as_deref().unwrap_or(&[]),
                        &mut offset,
                        Some(p[0]),
                        out,
                    );
                }
            }
            text.push_str(&c.text);
            if let Some(out) = logprobs.as_mut() {
                legacy(tok, &c.logprobs, &mut offset, None, out);
            }
            choices.push(CompletionChoice {
                text,
                index,
                logprobs,
                finish_reason: c.finish.map(|f| f.as_str()),
            });
        }
        let body = Completion {
            id,
            object: "text_completion",
            created,
            model: model_id,
            choices,
            usage: Some(Some(usage(prompt_tokens, completion))),
            system_fingerprint: None,
        };
        return Ok(Json(body).into_response());
    }
    let include_usage = spec.include_usage;
    let want_lp = spec.logprobs.is_some();
    let total = rxs.len();
    let model = model.clone();
    Ok(sse_response(move |w| async move {
        let tok = model.engine.tokenizer();
        let chunk = |c: CompletionChoice| Completion {
            id: id.clone(),
            object: "text_completion",
            created,
            model: model_id.clone(),
            choices: vec![c],
            usage: if include_usage { Some(None) } else { None },
            system_fingerprint: None,
        };
        let mut events = merged(rxs);
        let mut completion = 0usize;
        let mut open = total;
        let mut offsets = vec![0usize; total];
        while open > 0 {
            let ev = tokio::select! {
                ev = events.next() => ev,
                _ = w.closed() => return,
            };
            let Some((index, ev)) = ev else { break };
            let ok = match ev {
                Event::PromptLogprobs(_) => true,
                Event::Token { text, logprob, .. } => {
                    if text.is_empty() && !want_lp {
                        true
                    } else {
                        let logprobs = logprob.map(|l| {
                            let mut out = CompletionLogprobs::default();
                            legacy(
                                tok,
                                std::slice::from_ref(&l),
                                &mut offsets[index],
                                None,
                                &mut out,
                            );
                            out
                        });
                        w.data(&chunk(CompletionChoice {
                            text,
                            index,
                            logprobs,
                            finish_reason: None,
                        }))
                    }
                }
                Event::Finished {
                    reason,
                    completion_tokens,
                    ..
                } => {
                    open -= 1;
                    completion += completion_tokens;
                    w.data(&chunk(CompletionChoice {
                        text: String::new(),
                        index,
                        logprobs: None,
                        finish_reason: Some(reason.as_str()),
                    }))
                }
                Event::Error(e) => {
                    w.error(&ApiError::new(ErrorCode::InternalError, e));
                    return;
                }
            };
            if !ok {
                return;
            }
        }
        if include_usage {
            let last = Completion {
                id: id.clone(),
                object: "text_completion",
                created,
                model: model_id.clone(),
                choices: vec![],
                usage: Some(Some(usage(prompt_tokens, completion))),
                system_fingerprint: None,
            };
            if !w.data(&last) {
                return;
            }
        }
        w.done();
    }))
}
