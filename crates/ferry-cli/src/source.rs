//! The server's model source (`ferry_server::ModelSource`) over Ferry's model directory:
//! every registered model (`store::list`), plus the `--model` arguments given as paths, which
//! are served under their file or directory name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use ferry_engine::EngineConfig;
use ferry_server::{Loaded, LoadedModel, ModelOptions, ModelSource};
use ferry_types::{ApiError, ErrorCode};

use crate::store;

pub struct StoreSource {
    /// Models given as paths at start: name -> file or directory.
    pinned: BTreeMap<String, PathBuf>,
    cfg: EngineConfig,
}

impl StoreSource {
    pub fn new(pinned: BTreeMap<String, PathBuf>, cfg: EngineConfig) -> Arc<Self> {
        Arc::new(Self { pinned, cfg })
    }

    /// The server's engine settings with the model's own options (`ferry config`) over them;
    /// `--model` paths have none.
    fn config(&self, name: &str) -> Result<EngineConfig, String> {
        let mut cfg = self.cfg.clone();
        if !self.pinned.contains_key(name) {
            let opts = store::options(name).map_err(|e| format!("{e:#}"))?;
            crate::options::apply(&mut cfg, &opts);
        }
        Ok(cfg)
    }

    fn path(&self, name: &str) -> Result<PathBuf, String> {
        Ok(match self.pinned.get(name) {
            Some(p) => p.clone(),
            // Resolved at each use: a model re-imported under the same name is picked up.
            None => store::resolve(name).map_err(|e| format!("{e:#}"))?.1,
        })
    }
}

impl ModelSource for StoreSource {
    fn list(&self) -> Result<Vec<String>, String> {
        let mut names: Vec<String> = store::list()
            .map_err(|e| format!("{e:#}"))?
            .into_iter()
            .map(|m| m.name)
            .collect();
        names.extend(self.pinned.keys().cloned());
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn estimate_bytes(&self, name: &str) -> Option<u64> {
        let path = self.path(name).ok()?;
        crate::estimate_memory(&path, &self.config(name).ok()?).ok()
    }

    fn options(&self, name: &str) -> Result<ModelOptions, ApiError> {
        if self.pinned.contains_key(name) {
            return Err(ferry_server::no_options(name));
        }
        if store::record(name).is_err() {
            return Err(ApiError::model_not_found(name));
        }
        store::options(name).map_err(|e| ApiError::new(ErrorCode::InternalError, format!("{e:#}")))
    }

    fn update_options(
        &self,
        name: &str,
        set: &ModelOptions,
        unset: &[String],
    ) -> Result<ModelOptions, ApiError> {
        if self.pinned.contains_key(name) {
            return Err(ferry_server::no_options(name));
        }
        crate::options::update(name, set, unset)
    }

    fn load(&self, name: &str) -> Result<Loaded, String> {
        let path = self.path(name)?;
        let cfg = self.config(name)?;
        if path.is_dir() {
            let m = crate::load_embedding(&path, &cfg).map_err(|e| format!("{e:#}"))?;
            return Ok(Loaded::Embedding(m));
        }
        let l = crate::load(&path, cfg).map_err(|e| format!("{e:#}"))?;
        Ok(Loaded::Chat(Box::new(LoadedModel {
            engine: l.engine,
            template: l.template,
        })))
    }
}
