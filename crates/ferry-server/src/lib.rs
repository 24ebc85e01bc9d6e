//! Ferry's HTTP API, an axum library: OpenAI-compatible routes (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/models`), health and readiness, and the `/tokenize` and
//! `/detokenize` extensions.
//!
//! One module per resource. Handlers validate, translate to `ferry_engine::GenerateRequest`,
//! and turn engine events into JSON or SSE. Every error leaves through `ApiError` (see
//! `error.rs`), which gives OpenAI's shape and the right status.

mod body;
mod chat;
mod completions;
mod error;
mod health;
mod models;
mod sse;
mod state;
mod tokenize;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

pub use state::{AppState, LoadedModel, ModelSlot, ModelState, ServerConfig};

/// Build the router over a shared state.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get_one))
        .route("/v1/chat/completions", post(chat::create))
        .route("/v1/completions", post(completions::create))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
}

/// Seconds since the epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A random-looking id with a prefix (`chatcmpl-…`), unique within the process.
pub(crate) fn new_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = t ^ n.wrapping_mul(0x9e3779b97f4a7c15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58476d1ce4e5b9);
    format!("{prefix}-{x:016x}{n:04x}")
}
