//! Admin routes for API keys (admin scope; see `auth.rs`): `POST /v1/admin/keys` (the key is
//! in this response only), `GET /v1/admin/keys`, `DELETE /v1/admin/keys/{id}` (revoke) and
//! `GET /v1/admin/keys/{id}/usage`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_store::{ApiKey, NewKey, Scope, Store};
use ferry_types::{ApiError, ErrorCode};
use serde_json::{json, Value};

use crate::body::JsonBody;
use crate::error::{blocking, Result};
use crate::state::AppState;

fn store(st: &AppState) -> std::result::Result<Arc<Store>, ApiError> {
    st.auth.store().cloned().ok_or_else(|| {
        ApiError::new(
            ErrorCode::ServiceUnavailable,
            "This server runs without a metadata store; keys are unavailable.",
        )
    })
}

fn key_json(k: &ApiKey) -> Value {
    let mut v = serde_json::to_value(k).unwrap_or_else(|_| json!({}));
    if let Some(o) = v.as_object_mut() {
        o.insert("object".into(), json!("api_key"));
    }
    v
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("No API key `{id}`.")).with_param("id")
}

fn positive(v: &Value, name: &str, max: u64) -> std::result::Result<Option<u64>, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => match x.as_u64() {
            Some(n) if n > 0 && n <= max => Ok(Some(n)),
            _ => Err(ApiError::invalid(
                name,
                format!("`{name}` must be a positive integer up to {max}, or null for no limit."),
            )),
        },
    }
}

pub async fn create(State(st): State<Arc<AppState>>, JsonBody(body): JsonBody) -> Result<Response> {
    let store = store(&st)?;
    if let Some(k) = body.as_object().and_then(|o| {
        o.keys()
            .find(|k| !["name", "scope", "rpm", "tpm"].contains(&k.as_str()))
    }) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedParameter,
            format!("Unknown parameter `{k}` (use name, scope, rpm, tpm)."),
        )
        .with_param(k)
        .into());
    }
    let name = match body.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ApiError::invalid("name", "`name` must be a string.").into()),
        None => return Err(ApiError::invalid("name", "Missing required parameter `name`.").into()),
    };
    let scope = match body.get("scope") {
        None | Some(Value::Null) => Scope::Inference,
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| ApiError::invalid("scope", "`scope` must be `inference` or `admin`."))?,
        Some(_) => return Err(ApiError::invalid("scope", "`scope` must be a string.").into()),
    };
    let rpm = positive(&body, "rpm", u32::MAX as u64)?.map(|n| n as u32);
    let tpm = positive(&body, "tpm", i64::MAX as u64)?;
    let new = NewKey {
        name,
        scope,
        rpm,
        tpm,
    };
    let created = blocking(move || store.create_key(&new)).await?;
    st.auth.reload_now().await;
    tracing::info!(key = %created.key.id, scope = %created.key.scope, "API key created");
    let mut v = key_json(&created.key);
    if let Some(o) = v.as_object_mut() {
        o.insert("key".into(), json!(created.secret));
    }
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

pub async fn list(State(st): State<Arc<AppState>>) -> Result<Json<Value>> {
    let store = store(&st)?;
    let keys = blocking(move || store.list_keys()).await?;
    Ok(Json(json!({
        "object": "list",
        "data": keys.iter().map(key_json).collect::<Vec<_>>(),
    })))
}

pub async fn revoke(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    let store = store(&st)?;
    let key = {
        let id = id.clone();
        blocking(move || {
            Ok(if store.revoke_key(&id)? {
                store.get_key(&id)?
            } else {
                None
            })
        })
        .await?
    };
    let Some(key) = key else {
        return Err(not_found(&id).into());
    };
    st.auth.reload_now().await;
    tracing::info!(key = %key.id, "API key revoked");
    Ok(Json(key_json(&key)))
}

pub async fn usage(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Json<Value>> {
    let store = store(&st)?;
    st.auth.flush().await;
    let rows = {
        let id = id.clone();
        blocking(move || {
            Ok(match store.get_key(&id)? {
                Some(_) => Some(store.usage(Some(&id))?),
                None => None,
            })
        })
        .await?
    };
    let Some(rows) = rows else {
        return Err(not_found(&id).into());
    };
    let total = |f: fn(&ferry_store::UsageRow) -> u64| rows.iter().map(f).sum::<u64>();
    Ok(Json(json!({
        "object": "list",
        "key_id": id,
        "data": rows,
        "total": {
            "requests": total(|r| r.requests),
            "prompt_tokens": total(|r| r.prompt_tokens),
            "completion_tokens": total(|r| r.completion_tokens),
        },
    })))
}
