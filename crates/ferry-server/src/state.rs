//! Shared server state: the served models and their load state, and limits.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

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
}

pub struct AppState {
    pub config: ServerConfig,
    pub models: RwLock<BTreeMap<String, ModelSlot>>,
    pub auth: crate::auth::Auth,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub drain: crate::drain::Drain,
    /// Files, training jobs and trained models (`lifecycle.rs`).
    pub lifecycle: crate::lifecycle::Lifecycle,
}

impl AppState {
    pub fn new(config: ServerConfig) -> Arc<Self> {
        Arc::new(Self {
            auth: crate::auth::Auth::new(&config),
            lifecycle: crate::lifecycle::Lifecycle::new(&config),
            config,
            models: RwLock::new(BTreeMap::new()),
            metrics: Default::default(),
            drain: Default::default(),
        })
    }

    /// Register a model as loading.
    pub fn add_loading(&self, id: &str) {
        let slot = ModelSlot {
            id: id.to_string(),
            created: crate::now(),
            state: ModelState::Loading,
        };
        self.models
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), slot);
    }

    pub fn set_state(&self, id: &str, state: ModelState) {
        if let Some(s) = self
            .models
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
        {
            s.state = state;
        }
    }

    /// True when every registered model is loaded.
    pub fn ready(&self) -> bool {
        let m = self.models.read().unwrap_or_else(|e| e.into_inner());
        !m.is_empty()
            && m.values().all(|s| {
                matches!(
                    s.state,
                    ModelState::Loaded(_) | ModelState::LoadedEmbedding(_)
                )
            })
    }

    /// The loaded model called `id`: 404 if unknown, 503 if not loaded.
    pub fn model(&self, id: &str) -> Result<Arc<LoadedModel>, ApiError> {
        let m = self.models.read().unwrap_or_else(|e| e.into_inner());
        match m.get(id).map(|s| &s.state) {
            None => Err(ApiError::model_not_found(id)),
            Some(ModelState::Loaded(l)) => Ok(l.clone()),
            Some(ModelState::LoadedEmbedding(_)) => Err(ApiError::invalid(
                "model",
                format!("The model `{id}` is an embedding model: use it with /v1/embeddings."),
            )),
            Some(ModelState::Loading) => Err(ApiError::new(
                ErrorCode::ServiceUnavailable,
                format!("The model `{id}` is loading."),
            )
            .with_retry_after(2)),
            Some(ModelState::Failed(why)) => Err(ApiError::new(
                ErrorCode::ServiceUnavailable,
                format!("The model `{id}` failed to load: {why}"),
            )),
        }
    }

    /// The loaded embedding model called `id`: 404 if unknown, 400 for a chat model, 503 if
    /// not loaded.
    pub fn embedding_model(&self, id: &str) -> Result<Arc<EmbeddingModel>, ApiError> {
        let m = self.models.read().unwrap_or_else(|e| e.into_inner());
        match m.get(id).map(|s| &s.state) {
            Some(ModelState::LoadedEmbedding(e)) => Ok(e.clone()),
            Some(ModelState::Loaded(_)) => Err(ApiError::invalid(
                "model",
                format!("The model `{id}` is not an embedding model: use /v1/chat/completions or /v1/completions."),
            )),
            _ => {
                drop(m);
                // Unknown, loading or failed: the same answers as for chat models.
                match self.model(id) {
                    Err(e) => Err(e),
                    Ok(_) => Err(ApiError::new(
                        ErrorCode::ServiceUnavailable,
                        format!("The model `{id}` is changing state; retry."),
                    )
                    .with_retry_after(1)),
                }
            }
        }
    }

    /// The only model, for routes where `model` is optional.
    pub fn default_model(&self) -> Option<String> {
        let m = self.models.read().unwrap_or_else(|e| e.into_inner());
        m.keys().next().cloned()
    }

    pub fn slots(&self) -> Vec<ModelSlot> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}
