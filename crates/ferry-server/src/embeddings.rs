//! `POST /v1/embeddings`: tokenize (or take token ids), check lengths against the model's
//! context (400 `context_length_exceeded`, or cut when the `truncate` extension is set), queue on
//! the embedding engine (429 when full), and answer in OpenAI's shape with `float` or `base64`
//! vectors.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use ferry_types::openai::{
    f32_base64, EmbeddingData, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage,
    EmbeddingVector, EncodingFormat,
};
use ferry_types::{ApiError, ErrorCode};

use crate::body::{parse, JsonBody, Kind};
use crate::error::{from_submit, Result};
use crate::state::AppState;

const FIELDS: &[(&str, Kind)] = &[
    ("input", Kind::Any),
    ("encoding_format", Kind::Str),
    ("dimensions", Kind::Int),
    ("truncate", Kind::Bool),
];

pub async fn create(
    State(st): State<Arc<AppState>>,
    JsonBody(body): JsonBody,
) -> Result<Json<EmbeddingResponse>> {
    let req: EmbeddingRequest = parse(body, &["model", "input"], FIELDS)?;
    let model = st.embedding_model(&req.model).await?;
    let engine = &model.engine;
    let spec = req.validate(engine.dim())?;
    let max = engine.context_length();
    let tok = engine.model().tokenizer();
    let seqs: Vec<Vec<u32>> = match spec.input {
        EmbeddingInput::Texts(texts) => texts
            .iter()
            .map(|t| tok.encode(t, true, spec.truncate.then_some(max)))
            .collect(),
        EmbeddingInput::Tokens(seqs) => seqs
            .into_iter()
            .map(|mut s| {
                // Token ids are taken as they are (no specials added), like OpenAI's.
                if spec.truncate {
                    s.truncate(max);
                }
                s
            })
            .collect(),
    };
    for (i, s) in seqs.iter().enumerate() {
        if s.len() > max {
            return Err(ApiError::new(
                ErrorCode::ContextLengthExceeded,
                format!(
                    "Input {i} has {} tokens; this model's maximum context length is {max} tokens. Shorten it, or set `truncate: true`.",
                    s.len()
                ),
            )
            .with_param("input")
            .into());
        }
    }
    let prompt_tokens: usize = seqs.iter().map(|s| s.len()).sum();
    let submitted = std::time::Instant::now();
    let rx = engine.submit(seqs).map_err(|e| {
        let mut err = from_submit(e);
        if err.param.is_some() {
            err.param = Some("input".into());
        }
        err
    })?;
    let vectors = rx
        .await
        .map_err(|_| ApiError::new(ErrorCode::ServiceUnavailable, "The model stopped."))?
        .map_err(|e| ApiError::new(ErrorCode::InternalError, format!("Embedding failed: {e}")))?;
    st.metrics.observe(
        &req.model,
        crate::metrics::Observation::Embedded(submitted.elapsed()),
    );
    // Count the request and its tokens against the caller's key (rpm/tpm and usage).
    if let Some(c) = crate::auth::Caller::current() {
        c.record_request(&req.model);
        c.record_tokens(&req.model, prompt_tokens, 0);
    }
    let data = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingData {
            object: "embedding",
            index,
            embedding: match spec.format {
                EncodingFormat::Float => EmbeddingVector::Float(v),
                EncodingFormat::Base64 => EmbeddingVector::Base64(f32_base64(&v)),
            },
        })
        .collect();
    Ok(Json(EmbeddingResponse {
        object: "list",
        data,
        model: req.model,
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    }))
}
