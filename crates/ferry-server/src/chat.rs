//! `POST /v1/chat/completions`: render the chat template, tokenize, run `n` choices, answer as
//! JSON or as SSE chunks.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_engine::{Event, TokenLogprob};
use ferry_models::template::ChatMessage;
use ferry_models::tokenizer::Tokenizer;
use ferry_types::openai::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
    ChatMessageIn, ChoiceLogprobs, ChunkChoice, Content, Delta, TopLogprob,
};
use ferry_types::{ApiError, ErrorCode};
use futures_util::StreamExt;

use crate::body::{parse, JsonBody, Kind};
use crate::error::{HttpError, Result};
use crate::sse::{collect, merged, request_for, sse_response, submit_all, usage};
use crate::state::AppState;

/// Flatten OpenAI messages into template messages. Only text content is supported.
pub fn to_template_messages(
    msgs: &[ChatMessageIn],
) -> std::result::Result<Vec<ChatMessage>, ApiError> {
    msgs.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "user" | "assistant" => m.role.clone(),
                "developer" => "system".to_string(),
                other => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        format!("Role `{other}` is not supported (use system, developer, user or assistant)."),
                    ))
                }
            };
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.r#type.as_str(), &p.text) {
                            ("text", Some(t)) => s.push_str(t),
                            (ty, _) => {
                                return Err(ApiError::new(
                                    ErrorCode::UnsupportedParameter,
                                    format!("Content part of type `{ty}` is not supported; this model takes text."),
                                )
                                .with_param(&format!("messages[{i}].content[{j}]")))
                            }
                        }
                    }
                    s
                }
            };
            if m.name.is_some() {
                return Err(ApiError::new(ErrorCode::UnsupportedParameter, "Message `name` is not supported.")
                    .with_param(&format!("messages[{i}].name")));
            }
            Ok(ChatMessage { role, content })
        })
        .collect()
}

/// The `logprobs.content` entries of tokens.
pub fn chat_logprobs(tok: &Tokenizer, lps: &[TokenLogprob]) -> ChoiceLogprobs {
    let entry = |id: u32, lp: f32| TopLogprob {
        token: token_str(tok, id),
        logprob: lp,
        bytes: tok.token_bytes(id).to_vec(),
    };
    ChoiceLogprobs {
        content: lps
            .iter()
            .map(|l| {
                let e = entry(l.id, l.logprob);
                ferry_types::openai::TokenLogprob {
                    token: e.token,
                    logprob: e.logprob,
                    bytes: e.bytes,
                    top_logprobs: l.top.iter().map(|&(id, lp)| entry(id, lp)).collect(),
                }
            })
            .collect(),
    }
}

pub fn token_str(tok: &Tokenizer, id: u32) -> String {
    String::from_utf8_lossy(tok.token_bytes(id)).into_owned()
}

pub async fn create(State(st): State<Arc<AppState>>, JsonBody(body): JsonBody) -> Result<Response> {
    let req: ChatCompletionRequest =
        parse(body, &["model", "messages"], &[("logprobs", Kind::Bool)])?;
    // `user` identifies the end user for abuse monitoring: it goes to the request's log line.
    if let Some(user) = &req.sampling.user {
        tracing::info!(user = %user, model = %req.model, "request for end user");
    }
    let model = st.model(&req.model).await?;
    let engine = &model.engine;
    let spec = req.validate(engine.vocab_size())?;
    let msgs = to_template_messages(&req.messages)?;
    let prompt_text = model.template.render(&msgs, true).map_err(|e| {
        ApiError::invalid(
            "messages",
            format!("The chat template rejected the messages: {}", e.message()),
        )
    })?;
    let prompt = engine.tokenizer().encode(&prompt_text, true, true);
    let context = engine.context_length();
    let max_tokens = spec
        .max_tokens
        .unwrap_or(context.saturating_sub(prompt.len()));
    if prompt.len() + max_tokens > context {
        return Err(HttpError(
            ApiError::new(
                ErrorCode::ContextLengthExceeded,
                format!(
                    "This model's maximum context length is {context} tokens. However, you requested {} tokens ({} in the messages, {max_tokens} in the completion). Please reduce the length of the messages or completion.",
                    prompt.len() + max_tokens,
                    prompt.len()
                ),
            )
            .with_param("messages"),
        ));
    }
    let n_prompt = prompt.len();
    let reqs = (0..spec.n)
        .map(|i| request_for(&spec, prompt.clone(), max_tokens, i, None))
        .collect();
    let rxs = submit_all(&st, &req.model, engine, reqs, spec.n)?;
    let id = crate::new_id("chatcmpl");
    let created = crate::now();
    let model_id = req.model.clone();
    if !spec.stream {
        let mut choices = Vec::with_capacity(rxs.len());
        let mut completion = 0;
        for (index, rx) in rxs.into_iter().enumerate() {
            let c = collect(rx).await?;
            completion += c.completion_tokens;
            choices.push(ChatChoice {
                index,
                message: AssistantMessage {
                    role: "assistant",
                    content: c.text,
                },
                logprobs: spec
                    .logprobs
                    .map(|_| chat_logprobs(engine.tokenizer(), &c.logprobs)),
                finish_reason: c.finish.map(|f| f.as_str()).unwrap_or("stop"),
            });
        }
        let body = ChatCompletion {
            id,
            object: "chat.completion",
            created,
            model: model_id,
            choices,
            usage: usage(n_prompt, completion),
            system_fingerprint: None,
        };
        return Ok(Json(body).into_response());
    }
    let include_usage = spec.include_usage;
    let want_lp = spec.logprobs.is_some();
    let n = rxs.len();
    let model = model.clone();
    Ok(sse_response(move |w| async move {
        let chunk = |choices: Vec<ChunkChoice>, u: Option<Option<ferry_types::openai::Usage>>| {
            ChatCompletionChunk {
                id: id.clone(),
                object: "chat.completion.chunk",
                created,
                model: model_id.clone(),
                choices,
                usage: if include_usage {
                    Some(u.unwrap_or(None))
                } else {
                    None
                },
                system_fingerprint: None,
            }
        };
        for index in 0..n {
            let first = ChunkChoice {
                index,
                delta: Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                },
                logprobs: None,
                finish_reason: None,
            };
            if !w.data(&chunk(vec![first], None)) {
                return;
            }
        }
        let tok = model.engine.tokenizer();
        let mut events = merged(rxs);
        let mut completion = 0usize;
        let mut open = n;
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
                        let lp = logprob.map(|l| chat_logprobs(tok, std::slice::from_ref(&l)));
                        let c = ChunkChoice {
                            index,
                            delta: Delta {
                                role: None,
                                content: Some(text),
                            },
                            logprobs: lp,
                            finish_reason: None,
                        };
                        w.data(&chunk(vec![c], None))
                    }
                }
                Event::Finished {
                    reason,
                    completion_tokens,
                    ..
                } => {
                    open -= 1;
                    completion += completion_tokens;
                    let c = ChunkChoice {
                        index,
                        delta: Delta::default(),
                        logprobs: None,
                        finish_reason: Some(reason.as_str()),
                    };
                    w.data(&chunk(vec![c], None))
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
            let u = usage(n_prompt, completion);
            if !w.data(&chunk(vec![], Some(Some(u)))) {
                return;
            }
        }
        w.done();
    }))
}
