//! JSON bodies with OpenAI-shaped errors: 413 past the size limit, 400 for invalid JSON, and
//! a 400 naming the parameter whose value has the wrong type.

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use ferry_types::{ApiError, ErrorCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::HttpError;
use crate::state::AppState;

/// A JSON request body, as a raw object (type-checked by the handler with `parse`).
pub struct JsonBody(pub Value);

impl FromRequest<std::sync::Arc<AppState>> for JsonBody {
    type Rejection = HttpError;

    async fn from_request(
        req: Request<Body>,
        state: &std::sync::Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let limit = state.config.max_body_bytes;
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| {
                HttpError(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("The request body exceeds the limit of {limit} bytes."),
                ))
            })?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            HttpError(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("The body is not valid JSON: {e}"),
            ))
        })?;
        if !v.is_object() {
            return Err(HttpError(ApiError::new(
                ErrorCode::InvalidRequest,
                "The body must be a JSON object.",
            )));
        }
        Ok(JsonBody(v))
    }
}

/// Expected JSON kinds of the parameters Ferry knows (the first mismatch is reported by name).
#[derive(Clone, Copy)]
pub enum Kind {
    Str,
    Num,
    Int,
    Bool,
    Arr,
    Obj,
    StrOrArr,
    Any,
}

fn fits(kind: Kind, v: &Value) -> bool {
    match kind {
        Kind::Str => v.is_string(),
        Kind::Num => v.is_number(),
        Kind::Int => v.is_i64() || v.is_u64(),
        Kind::Bool => v.is_boolean(),
        Kind::Arr => v.is_array(),
        Kind::Obj => v.is_object(),
        Kind::StrOrArr => v.is_string() || v.is_array(),
        Kind::Any => true,
    }
}

const COMMON: &[(&str, Kind)] = &[
    ("model", Kind::Str),
    ("max_tokens", Kind::Int),
    ("temperature", Kind::Num),
    ("top_p", Kind::Num),
    ("seed", Kind::Int),
    ("stop", Kind::StrOrArr),
    ("n", Kind::Int),
    ("frequency_penalty", Kind::Num),
    ("presence_penalty", Kind::Num),
    ("logit_bias", Kind::Obj),
    ("top_k", Kind::Int),
    ("min_p", Kind::Num),
    ("repetition_penalty", Kind::Num),
    ("stream", Kind::Bool),
    ("stream_options", Kind::Obj),
    ("user", Kind::Str),
    ("messages", Kind::Arr),
    ("max_completion_tokens", Kind::Int),
    ("top_logprobs", Kind::Int),
    ("echo", Kind::Bool),
    ("prompt", Kind::Any),
    ("tokens", Kind::Arr),
    ("add_special_tokens", Kind::Bool),
    ("add_generation_prompt", Kind::Bool),
];

/// Type-check known fields (null counts as absent), check `required`, then deserialize.
pub fn parse<T: DeserializeOwned>(
    mut v: Value,
    required: &[&str],
    extra: &[(&str, Kind)],
) -> Result<T, ApiError> {
    let obj = v.as_object_mut().expect("checked by JsonBody");
    obj.retain(|_, x| !x.is_null());
    for r in required {
        if !obj.contains_key(*r) {
            return Err(ApiError::invalid(
                r,
                format!("Missing required parameter `{r}`."),
            ));
        }
    }
    for (k, kind) in COMMON.iter().chain(extra) {
        if let Some(x) = obj.get(*k) {
            if !fits(*kind, x) {
                return Err(ApiError::invalid(k, format!("Invalid type for `{k}`: {x}")));
            }
        }
    }
    serde_json::from_value(v).map_err(|e| {
        let msg = e.to_string();
        let param = msg.split('`').nth(1).map(|s| s.to_string());
        let mut err = ApiError::new(ErrorCode::InvalidRequest, format!("Invalid request: {msg}"));
        err.param = param;
        err
    })
}
