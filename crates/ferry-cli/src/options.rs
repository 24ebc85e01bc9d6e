//! Per-model engine options (`ferry config`, `PATCH /v1/models/{id}/options`): checked against
//! the model they are for, stored in the registry (`ferry_store::models`), and applied over
//! the server's flags when the model loads.

use ferry_engine::EngineConfig;
use ferry_store::models::check_option;
use ferry_store::ModelOptions;
use ferry_types::{ApiError, ErrorCode};

use crate::store;

/// Options that only a chat (GGUF) model's engine has.
const CHAT_ONLY: &[&str] = &["kv_cache_tokens", "max_running", "max_batch_tokens"];

/// A model's stored options over `cfg`.
pub fn apply(cfg: &mut EngineConfig, opts: &ModelOptions) {
    for (k, &v) in opts {
        let v = usize::try_from(v).unwrap_or(usize::MAX);
        match k.as_str() {
            "threads" => cfg.threads = v,
            "kv_cache_tokens" => cfg.kv_cache_tokens = v,
            "max_running" => cfg.max_running = v,
            "max_batch_tokens" => cfg.max_batch_tokens = v,
            "max_waiting" => cfg.max_waiting = v,
            "context_length" => cfg.max_context = v,
            // The store refuses keys it does not know; `main.rs`'s test keeps the lists equal.
            other => tracing::warn!("model option {other:?} is not applied"),
        }
    }
}

/// Set and unset options of the registered model `name` after checking them against it: known
/// keys, positive values, a context cap no higher than the model's own context, a KV cache of
/// at least one block, no chat-only option on an embedding model. Errors are API errors
/// (404 for an unknown model, 400 naming the option) so the server and the CLI say the same.
pub fn update(name: &str, set: &ModelOptions, unset: &[String]) -> Result<ModelOptions, ApiError> {
    let bad = |k: &str, msg: String| ApiError::invalid(k, msg);
    for (k, &v) in set {
        check_option(k, v).map_err(|m| bad(k, m))?;
    }
    for k in unset {
        check_option(k, 1).map_err(|m| bad(k, m))?;
    }
    let internal = |e: anyhow::Error| ApiError::new(ErrorCode::InternalError, format!("{e:#}"));
    let rec = match store::record(name) {
        Ok(r) => r,
        Err(_) => return Err(ApiError::model_not_found(name)),
    };
    let path = store::model_path(&rec).map_err(internal)?;
    let (context, what) = if rec.format == "hf-dir" {
        if let Some(k) = set.keys().find(|k| CHAT_ONLY.contains(&k.as_str())) {
            return Err(bad(
                k,
                format!(
                    "{k} applies to chat (GGUF) models only; {} is an embedding model",
                    rec.name
                ),
            ));
        }
        let c = ferry_models::bert::BertConfig::from_dir(&path)
            .map_err(|e| internal(anyhow::anyhow!("reading {}: {e}", path.display())))?;
        (c.max_position_embeddings, "its position embeddings")
    } else {
        let read = || -> anyhow::Result<usize> {
            let f = ferry_models::gguf::GgufFile::open(&path)?;
            Ok(ferry_models::llama::LlamaConfig::from_gguf(&f)?.context_length)
        };
        let c = read().map_err(|e| internal(e.context(format!("reading {}", path.display()))))?;
        (c, "its trained context")
    };
    if let Some(&c) = set.get("context_length") {
        if c > context as u64 {
            return Err(bad(
                "context_length",
                format!(
                    "context_length={c} is above {}'s own maximum of {context} tokens ({what}); the option can only lower it",
                    rec.name
                ),
            ));
        }
    }
    if let Some(&k) = set.get("kv_cache_tokens") {
        if k < 16 {
            return Err(bad(
                "kv_cache_tokens",
                format!("kv_cache_tokens={k} is below one KV block (16 tokens)"),
            ));
        }
    }
    let db = store::db().map_err(internal)?;
    db.update_model_options(&rec.name, set, unset)
        .map_err(|e| internal(e.into()))
}
