//! `POST /tokenize` and `POST /detokenize` (vLLM-compatible extensions).

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use ferry_types::openai::reject_unknown;
use ferry_types::openai::{
    DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse,
};
use ferry_types::ApiError;

use crate::body::{parse, JsonBody};
use crate::chat::to_template_messages;
use crate::error::Result;
use crate::state::AppState;

fn model_id(st: &AppState, m: &Option<String>) -> std::result::Result<String, ApiError> {
    m.clone()
        .or_else(|| st.default_model())
        .ok_or_else(|| ApiError::model_not_found(""))
}

pub async fn tokenize(
    State(st): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<TokenizeResponse>> {
    let req: TokenizeRequest = parse(body, &[], &[])?;
    reject_unknown(&req.extra)?;
    let model = st.model(&model_id(&st, &req.model)?).await?;
    let tok = model.engine.tokenizer();
    let tokens = match (&req.prompt, &req.messages) {
        (Some(p), None) => tok.encode(p, req.add_special_tokens.unwrap_or(true), true),
        (None, Some(m)) => {
            let msgs = to_template_messages(m)?;
            let text = model
                .template
                .render(&msgs, req.add_generation_prompt.unwrap_or(true))
                .map_err(|e| ApiError::invalid("messages", e.message().to_string()))?;
            tok.encode(&text, req.add_special_tokens.unwrap_or(true), true)
        }
        _ => {
            return Err(
                ApiError::invalid("prompt", "Give exactly one of `prompt` or `messages`.").into(),
            )
        }
    };
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        tokens,
        max_model_len: model.engine.context_length(),
    }))
}

pub async fn detokenize(
    State(st): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<DetokenizeResponse>> {
    let req: DetokenizeRequest = parse(body, &["tokens"], &[])?;
    reject_unknown(&req.extra)?;
    let model = st.model(&model_id(&st, &req.model)?).await?;
    let tok = model.engine.tokenizer();
    if let Some(t) = req.tokens.iter().find(|&&t| t as usize >= tok.vocab_size()) {
        return Err(
            ApiError::invalid("tokens", format!("Token id {t} is out of the vocabulary.")).into(),
        );
    }
    Ok(Json(DetokenizeResponse {
        prompt: tok.decode(&req.tokens),
    }))
}
