//! Shared server state: the served models and their load state, and limits.

use std::sync::Arc;

use ferry_engine::Engine;
use ferry_models::template::ChatTemplate;
use ferry_types::{ApiError, ErrorCode};

/// Server-wide limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub max_body_bytes: usize,
    /// The metadata database (API keys, usage); without it there are no keys.
    pub store: Option<Arc<ferry_store::Store>>,
    /// Require API keys even while the store holds none.
    pub require_auth: bool,
    /// Largest accepted file upload (`POST /v1/files`), bytes; streamed to disk.
    pub max_upload_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            store: None,
            require_auth: false,
            max_upload_bytes: 512 << 20,
        }
    }
}

/// Where a model is in its life.
#[derive(Clone)]
pub enum ModelState {
    /// Registered, not loaded: the first request loads it.
    Available,
    Loading,
    Loaded(Arc<LoadedModel>),
    /// An embedding model (served by `POST /v1/embeddings` only).
    LoadedEmbedding(Arc<EmbeddingModel>),
    Failed(String),
}

/// An embedding model ready to serve.
pub struct EmbeddingModel {
    pub engine: ferry_engine::embed::EmbedEngine,
}

/// A (chat) model ready to serve.
pub struct LoadedModel {
    pub engine: Engine,
    pub template: ChatTemplate,
}

/// One served model.
#[derive(Clone)]
pub struct ModelSlot {
    pub id: String,
    pub created: u64,
    pub state: ModelState,
    /// The engine's memory estimate while loaded.
    pub memory_bytes: Option<u64>,
}

pub struct AppState {
    pub config: ServerConfig,
    /// Every servable model and its life (`registry.rs`).
    pub models: Arc<crate::registry::Registry>,
    pub auth: crate::auth::Auth,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub drain: crate::drain::Drain,
    /// Files, training jobs and trained models (`lifecycle.rs`).
    pub lifecycle: crate::lifecycle::Lifecycle,
}

impl AppState {
    pub fn new(config: ServerConfig) -> Arc<Self> {
        let metrics: Arc<crate::metrics::Metrics> = Default::default();
        Arc::new(Self {
            auth: crate::auth::Auth::new(&config),
            lifecycle: crate::lifecycle::Lifecycle::new(&config),
            config,
            models: Arc::new(crate::registry::Registry::new(metrics.clone())),
            metrics,
            drain: Default::default(),
        })
    }

    /// True when every model named at start is loaded.
    pub fn ready(&self) -> bool {
        self.models.ready()
    }

    /// The chat model called `id`, loaded on first use (waiting for a load in progress, up
    /// to the load timeout): 404 if unknown, 400 for an embedding model, 503 if it failed to
    /// load or is still loading.
    pub async fn model(&self, id: &str) -> Result<Arc<LoadedModel>, ApiError> {
        match self.models.get(id).await? {
            ModelState::Loaded(l) => Ok(l),
            ModelState::LoadedEmbedding(_) => Err(ApiError::invalid(
                "model",
                format!("The model `{id}` is an embedding model: use it with /v1/embeddings."),
            )),
            _ => Err(changing(id)),
        }
    }

    /// The embedding model called `id`, loaded on first use: 404 if unknown, 400 for a chat
    /// model, 503 if it failed to load or is still loading.
    pub async fn embedding_model(&self, id: &str) -> Result<Arc<EmbeddingModel>, ApiError> {
        match self.models.get(id).await? {
            ModelState::LoadedEmbedding(e) => Ok(e),
            ModelState::Loaded(_) => Err(ApiError::invalid(
                "model",
                format!("The model `{id}` is not an embedding model: use /v1/chat/completions or /v1/completions."),
            )),
            _ => Err(changing(id)),
        }
    }

    /// The model for routes where `model` is optional: the first named at start.
    pub fn default_model(&self) -> Option<String> {
        self.models.default_model()
    }

    pub fn slots(&self) -> Vec<ModelSlot> {
        self.models.slots()
    }
}

fn changing(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ServiceUnavailable,
        format!("The model `{id}` is changing state; retry."),
    )
    .with_retry_after(1)
}
