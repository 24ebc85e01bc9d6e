//! `GET /v1/models` and `GET /v1/models/{id}`, with each model's load state as an extension.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use ferry_types::openai::{ModelCard, ModelList};
use ferry_types::ApiError;

use crate::error::Result;
use crate::state::{AppState, ModelSlot, ModelState};

fn card(s: &ModelSlot) -> ModelCard {
    let (state, max_model_len) = match &s.state {
        ModelState::Loading => ("loading", None),
        ModelState::Loaded(m) => ("loaded", Some(m.engine.context_length())),
        ModelState::LoadedEmbedding(m) => ("loaded", Some(m.engine.context_length())),
        ModelState::Failed(_) => ("failed", None),
    };
    ModelCard {
        id: s.id.clone(),
        object: "model",
        created: s.created,
        owned_by: "ferry".into(),
        state: state.into(),
        max_model_len,
    }
}

pub async fn list(State(st): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: st.slots().iter().map(card).collect(),
    })
}

pub async fn get_one(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>> {
    st.slots()
        .iter()
        .find(|s| s.id == id)
        .map(|s| Json(card(s)))
        .ok_or_else(|| ApiError::model_not_found(&id).into())
}
