//! Shared state of the model lifecycle service (files, training jobs, predictions): the
//! metadata store and data directory, the upload limit, the runner's wake-up signal, cancel
//! flags of running jobs, and the cache of loaded trained models.
//!
//! Rooms: `files.rs` (uploads, `multipart.rs` parses them while streaming to disk),
//! `training.rs` (job spec and routes), `runner.rs` (the training thread), `predictions.rs`
//! (trained models and predictions).
//!
//! Auth: these routes need a key of `inference` scope when keys are on (like the generation
//! routes; `admin` is only for key management). Files and jobs are shared by every key of a
//! server, not isolated per key.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ferry_store::Store;
use ferry_types::{ApiError, ErrorCode};

use crate::state::{AppState, ServerConfig};

/// A trained model loaded for predictions (see `predictions.rs`).
pub(crate) type Cached = Arc<crate::predictions::Artifact>;

pub struct Lifecycle {
    store: Option<Arc<Store>>,
    pub(crate) max_upload_bytes: u64,
    wake: (Mutex<bool>, Condvar),
    pub(crate) cancels: Mutex<HashMap<String, Arc<AtomicBool>>>,
    pub(crate) models: Mutex<HashMap<String, Cached>>,
}

impl Lifecycle {
    pub(crate) fn new(config: &ServerConfig) -> Self {
        Self {
            store: config.store.clone(),
            max_upload_bytes: config.max_upload_bytes,
            wake: (Mutex::new(false), Condvar::new()),
            cancels: Mutex::new(HashMap::new()),
            models: Mutex::new(HashMap::new()),
        }
    }

    /// The metadata store, or 503 when the server runs without one.
    pub(crate) fn store(&self) -> Result<Arc<Store>, ApiError> {
        self.store.clone().ok_or_else(|| {
            ApiError::new(
                ErrorCode::ServiceUnavailable,
                "This server runs without a metadata store; files and training are unavailable.",
            )
        })
    }

    /// The data directory (`$FERRY_HOME`).
    pub(crate) fn home(&self) -> Result<PathBuf, ApiError> {
        Ok(self.store()?.home())
    }

    /// Wake the runner (a job was queued).
    pub(crate) fn notify(&self) {
        let (m, c) = &self.wake;
        *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
        c.notify_all();
    }

    /// Wait until notified or `timeout`.
    pub(crate) fn wait(&self, timeout: Duration) {
        let (m, c) = &self.wake;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        if !*g {
            g = c
                .wait_timeout(g, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *g = false;
    }
}

/// Recover and start the lifecycle service: jobs left `running` by a previous process are
/// marked failed ("interrupted by restart"), temporary upload files are swept, and the
/// training thread starts. Call once, after building the state, before serving.
pub fn start(state: &Arc<AppState>) -> std::io::Result<()> {
    let Ok(store) = state.lifecycle.store() else {
        return Ok(());
    };
    ferry_store::files::sweep_temporaries(&ferry_store::files::files_dir(&store.home()));
    match store.fail_interrupted_jobs() {
        Ok(ids) => {
            for id in ids {
                tracing::warn!(
                    "training job {id} was running when the server stopped; marked failed"
                );
            }
        }
        Err(e) => tracing::error!("recovering training jobs: {e}"),
    }
    crate::runner::spawn(state.clone())
}
