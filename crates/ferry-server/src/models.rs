//! `GET /v1/models` and `GET /v1/models/{id}`, with each model's load state as an extension;
//! `POST /v1/models/{id}/load` and `/unload` (admin scope, see `auth.rs`). The model table and
//! its rules live in `registry.rs`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ferry_types::openai::{EngineSettings, ModelCard, ModelList};
use ferry_types::{ApiError, ErrorCode};
use serde_json::{json, Value};

use crate::body::JsonBody;
use crate::ModelOptions;

use crate::error::Result;
use crate::state::{AppState, ModelSlot, ModelState};

fn card(s: &ModelSlot) -> ModelCard {
    let (state, max_model_len, error, engine) = match &s.state {
        ModelState::Available => ("available", None, None, None),
        ModelState::Loading => ("loading", None, None, None),
        ModelState::Loaded(m) => {
            let c = m.engine.config();
            let e = EngineSettings {
                threads: c.threads,
                max_batch_tokens: c.max_batch_tokens,
                max_waiting: c.max_waiting,
                kv_cache_tokens: Some(c.kv_cache_tokens),
                max_running: Some(c.max_running),
            };
            ("loaded", Some(m.engine.context_length()), None, Some(e))
        }
        ModelState::LoadedEmbedding(m) => {
            let c = m.engine.config();
            let e = EngineSettings {
                threads: c.threads,
                max_batch_tokens: c.max_batch_tokens,
                max_waiting: c.max_waiting,
                kv_cache_tokens: None,
                max_running: None,
            };
            ("loaded", Some(m.engine.context_length()), None, Some(e))
        }
        ModelState::Failed(why) => ("failed", None, Some(why.clone()), None),
    };
    ModelCard {
        id: s.id.clone(),
        object: "model",
        created: s.created,
        owned_by: "ferry".into(),
        state: state.into(),
        max_model_len,
        memory_bytes: s.memory_bytes,
        error,
        engine,
    }
}

/// Every registered model (re-listed, so models imported since the start appear).
pub async fn list(State(st): State<Arc<AppState>>) -> Json<ModelList> {
    st.models.refresh().await;
    Json(ModelList {
        object: "list",
        data: st.slots().iter().map(card).collect(),
    })
}

pub async fn get_one(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>> {
    if st.models.slot(&id).is_none() {
        st.models.refresh().await;
    }
    st.models
        .slot(&id)
        .map(|s| Json(card(&s)))
        .ok_or_else(|| ApiError::model_not_found(&id).into())
}

/// Load a model now (a failed one is retried): 200 with its card once loaded, 202 with the
/// `loading` card when the load outlasts the load timeout, 404 for unknown models, 503 with
/// the loader's message when it fails.
pub async fn load(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<ModelCard>)> {
    let done = st.models.load(&id, true).await?;
    let slot = st
        .models
        .slot(&id)
        .ok_or_else(|| ApiError::model_not_found(&id))?;
    let status = if done.is_some() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(card(&slot))))
}

/// Unload a model (its engine stops once its requests in flight are done): 200 with the
/// `available` card. Idempotent: unloading a model that is not loaded is a no-op 200 (a
/// `failed` one becomes `available`, clearing the error). 404 for unknown models.
pub async fn unload(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>> {
    Ok(Json(card(&st.models.unload(&id).await?)))
}

/// `GET /v1/models/{id}/options` (admin): the model's own engine options.
pub async fn get_options(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let source = source(&st)?;
    let name = id.clone();
    let opts = tokio::task::spawn_blocking(move || source.options(&name))
        .await
        .map_err(|e| ApiError::new(ErrorCode::InternalError, e.to_string()))??;
    Ok(Json(options_body(&id, &opts)))
}

/// `PATCH /v1/models/{id}/options` (admin): a JSON merge patch of the model's options — a
/// number sets one, `null` removes it (the server's flag applies again). Checked against the
/// model (400 naming the option); applies from the model's next load (`.../unload`, then use).
pub async fn patch_options(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>> {
    let source = source(&st)?;
    let obj = body.as_object().ok_or_else(|| {
        ApiError::invalid(
            "options",
            "The body must be a JSON object of options, e.g. {\"context_length\": 2048}.",
        )
    })?;
    let mut set = ModelOptions::new();
    let mut unset = Vec::new();
    for (k, v) in obj {
        match v {
            Value::Null => unset.push(k.clone()),
            v => match v.as_u64() {
                Some(n) => {
                    set.insert(k.clone(), n);
                }
                None => {
                    return Err(ApiError::invalid(
                        k,
                        format!("`{k}` must be a positive whole number or null, got {v}."),
                    )
                    .into())
                }
            },
        }
    }
    let name = id.clone();
    let opts = tokio::task::spawn_blocking(move || source.update_options(&name, &set, &unset))
        .await
        .map_err(|e| ApiError::new(ErrorCode::InternalError, e.to_string()))??;
    Ok(Json(options_body(&id, &opts)))
}

fn source(st: &AppState) -> Result<Arc<dyn crate::ModelSource>> {
    st.models.source().ok_or_else(|| {
        ApiError::new(
            ErrorCode::ServiceUnavailable,
            "No model source is configured.",
        )
        .into()
    })
}

fn options_body(id: &str, opts: &ModelOptions) -> Value {
    json!({"object": "model.options", "id": id, "options": opts})
}
