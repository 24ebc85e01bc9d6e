//! Ferry's HTTP API, an axum library: OpenAI-compatible routes (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/models`), health and readiness, and the `/tokenize` and
//! `/detokenize` extensions.
//!
//! Service parts: API keys with scopes, rate limits and usage (`auth.rs`, admin routes in
//! `admin.rs`), `GET /metrics` (`metrics.rs`), request ids and access logs (`trace.rs`), and
//! graceful drain (`drain.rs`), as middleware around every route.
//!
//! The model lifecycle service (`lifecycle.rs`): files (`files.rs`), training jobs
//! (`training.rs`, run by `runner.rs`) and predictions from trained models (`predictions.rs`).
//!
//! One module per resource. Handlers validate, translate to `ferry_engine::GenerateRequest`,
//! and turn engine events into JSON or SSE. Every error leaves through `ApiError` (see
//! `error.rs`), which gives OpenAI's shape and the right status.

mod admin;
mod auth;
mod body;
mod chat;
mod completions;
mod drain;
mod embeddings;
mod error;
mod files;
mod health;
pub mod lifecycle;
mod metrics;
mod models;
mod multipart;
mod predictions;
mod registry;
mod runner;
mod sse;
mod state;
mod tokenize;
mod trace;
mod training;

use std::sync::Arc;

use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, post};
use axum::Router;

pub use registry::{no_options, parse_bytes, Limits, Loaded, ModelOptions, ModelSource, Registry};
pub use state::{AppState, EmbeddingModel, LoadedModel, ModelSlot, ModelState, ServerConfig};
pub use {auth::Auth, drain::Drain, metrics::Metrics};

/// Build the router over a shared state.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/v1/models", get(models::list))
        .route("/v1/models/{id}", get(models::get_one))
        .route("/v1/models/{id}/load", post(models::load))
        .route("/v1/models/{id}/unload", post(models::unload))
        .route(
            "/v1/models/{id}/options",
            get(models::get_options).patch(models::patch_options),
        )
        .route("/v1/chat/completions", post(chat::create))
        .route("/v1/completions", post(completions::create))
        .route("/v1/embeddings", post(embeddings::create))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/admin/keys", get(admin::list).post(admin::create))
        .route("/v1/admin/keys/{id}", delete(admin::revoke))
        .route("/v1/admin/keys/{id}/usage", get(admin::usage))
        .route("/v1/files", get(files::list).post(files::create))
        .route(
            "/v1/files/{id}",
            get(files::get_one).delete(files::delete_one),
        )
        .route("/v1/files/{id}/content", get(files::content))
        .route(
            "/v1/training/jobs",
            get(training::list).post(training::create),
        )
        .route("/v1/training/jobs/{id}", get(training::get_one))
        .route("/v1/training/jobs/{id}/cancel", post(training::cancel))
        .route("/v1/training/jobs/{id}/events", get(training::events))
        .route("/v1/training/jobs/{id}/artifacts", get(training::artifacts))
        .route(
            "/v1/training/jobs/{id}/artifacts/{name}",
            get(training::artifact),
        )
        .route("/v1/training/models", get(predictions::list_models))
        .route("/v1/predictions", post(predictions::create))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        // Outermost last: request id, span and HTTP metrics; then drain; then keys.
        .layer(from_fn_with_state(state.clone(), auth::layer))
        .layer(from_fn_with_state(state.clone(), drain::layer))
        .layer(from_fn_with_state(state.clone(), trace::layer))
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
