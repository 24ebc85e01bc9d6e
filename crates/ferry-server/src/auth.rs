//! API keys: authentication, scopes, per-key rate limits and usage accounting.
//!
//! Auth is on when the store holds any key (revoked ones count) or with `require_auth`; then
//! every route but `/health` and `/ready` needs `Authorization: Bearer <key>` (401
//! `invalid_api_key` when missing, unknown or revoked) and `/v1/admin/*` needs an admin key
//! (403). Keys are looked up in an in-memory snapshot of the store (constant-time compares,
//! reloaded when older than `REFRESH` and at once after admin changes, so keys made or
//! revoked with the CLI take effect within a second).
//!
//! Limits are one-minute sliding windows in memory: `rpm` counts requests, `tpm` counts the
//! prompt and completion tokens of finished generations; over either, 429 with `Retry-After`
//! (seconds until the window frees). Usage per key, model and minute is batched in memory and
//! written to the store every second (and before usage is read, and at shutdown).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferry_store::{ApiKey, KeySet, Scope, Store, UsageDelta};
use ferry_types::{ApiError, ErrorCode};

use crate::error::HttpError;
use crate::state::{AppState, ServerConfig};

/// How old the key snapshot may get before a request reloads it.
const REFRESH: Duration = Duration::from_secs(1);
const WINDOW: Duration = Duration::from_secs(60);
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Routes that never need a key.
pub(crate) fn is_open_route(route: &str) -> bool {
    matches!(route, "/health" | "/ready")
}

pub(crate) fn is_admin_route(route: &str) -> bool {
    route == "/v1/admin"
        || route.starts_with("/v1/admin/")
        || route == "/v1/models/{id}/load"
        || route == "/v1/models/{id}/unload"
        || route == "/v1/models/{id}/options"
}

struct Snapshot {
    keys: KeySet,
    at: Instant,
    /// The last read of the store failed: refuse every key-needing request (fail closed).
    failed: bool,
}

pub struct Auth {
    store: Option<Arc<Store>>,
    require: bool,
    snapshot: RwLock<Snapshot>,
    reload: tokio::sync::Mutex<()>,
    shared: Arc<Shared>,
}

impl Auth {
    pub(crate) fn new(config: &ServerConfig) -> Self {
        let (keys, failed) = match &config.store {
            None => (KeySet::default(), false),
            Some(s) => match s.key_set() {
                Ok(k) => (k, false),
                Err(e) => {
                    tracing::error!("reading API keys: {e}; refusing requests until it works");
                    (KeySet::default(), true)
                }
            },
        };
        Self {
            store: config.store.clone(),
            require: config.require_auth,
            snapshot: RwLock::new(Snapshot {
                keys,
                at: Instant::now(),
                failed,
            }),
            reload: tokio::sync::Mutex::new(()),
            shared: Arc::new(Shared {
                store: config.store.clone(),
                windows: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                flusher: AtomicBool::new(false),
            }),
        }
    }

    /// Whether requests need a key (as of the last snapshot).
    pub fn enabled(&self) -> bool {
        let s = self.snap();
        self.require || s.failed || !s.keys.is_empty()
    }

    pub(crate) fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    fn snap(&self) -> std::sync::RwLockReadGuard<'_, Snapshot> {
        self.snapshot.read().unwrap_or_else(|e| e.into_inner())
    }

    fn stale(&self) -> bool {
        self.snap().at.elapsed() >= REFRESH
    }

    async fn refresh(&self) {
        if self.store.is_none() || !self.stale() {
            return;
        }
        let _g = self.reload.lock().await;
        if self.stale() {
            self.load().await;
        }
    }

    /// Reload the keys now (after a change through the admin routes).
    pub(crate) async fn reload_now(&self) {
        let _g = self.reload.lock().await;
        self.load().await;
    }

    async fn load(&self) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let r = tokio::task::spawn_blocking(move || store.key_set()).await;
        let mut s = self.snapshot.write().unwrap_or_else(|e| e.into_inner());
        s.at = Instant::now();
        match r {
            Ok(Ok(keys)) => {
                s.keys = keys;
                s.failed = false;
            }
            Ok(Err(e)) => {
                tracing::error!("reloading API keys: {e}");
                s.failed = true;
            }
            Err(e) => {
                tracing::error!("reloading API keys: {e}");
                s.failed = true;
            }
        }
    }

    fn find(&self, secret: &str) -> Option<ApiKey> {
        self.snap().keys.find(secret).cloned()
    }

    /// Write pending usage to the store.
    pub async fn flush(&self) {
        self.shared.flush().await
    }

    /// Write pending usage to the store, blocking (for shutdown, outside the runtime's tasks).
    pub fn flush_blocking(&self) {
        self.shared.flush_blocking()
    }
}

/// The part of `Auth` that outlives a request (captured by streams and the flusher).
struct Shared {
    store: Option<Arc<Store>>,
    windows: Mutex<HashMap<String, Window>>,
    /// (key id, model, minute) -> counts not yet written.
    pending: Mutex<HashMap<(String, String, u64), Counts>>,
    flusher: AtomicBool,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    requests: u64,
    prompt: u64,
    completion: u64,
}

impl Shared {
    /// Rate limits: `Err(seconds)` when the key must wait.
    fn admit(&self, key: &ApiKey) -> Result<(), u64> {
        if key.rpm.is_none() && key.tpm.is_none() {
            return Ok(());
        }
        let mut w = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        w.entry(key.id.clone())
            .or_default()
            .admit(Instant::now(), key.rpm, key.tpm)
            .map_err(|d| (d.as_secs_f64().ceil() as u64).max(1))
    }

    fn add(self: &Arc<Self>, key_id: &str, model: &str, c: Counts) {
        if self.store.is_none() {
            return;
        }
        let tokens = c.prompt + c.completion;
        if tokens > 0 {
            if let Some(w) = self
                .windows
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(key_id)
            {
                w.add_tokens(Instant::now(), tokens);
            }
        }
        let minute = crate::now() / 60 * 60;
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let e = p
                .entry((key_id.to_string(), model.to_string(), minute))
                .or_default();
            e.requests += c.requests;
            e.prompt += c.prompt;
            e.completion += c.completion;
        }
        self.start_flusher();
    }

    fn start_flusher(self: &Arc<Self>) {
        if self.flusher.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.flusher.store(false, Ordering::SeqCst);
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(FLUSH_EVERY).await;
                let Some(s) = weak.upgrade() else { break };
                s.flush().await;
            }
        });
    }

    fn take(&self) -> Vec<UsageDelta> {
        let p = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        p.into_iter()
            .map(|((key_id, model, at), c)| UsageDelta {
                key_id,
                model,
                at,
                requests: c.requests,
                prompt_tokens: c.prompt,
                completion_tokens: c.completion,
            })
            .collect()
    }

    fn put_back(&self, deltas: Vec<UsageDelta>) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for d in deltas {
            let e = p.entry((d.key_id, d.model, d.at)).or_default();
            e.requests += d.requests;
            e.prompt += d.prompt_tokens;
            e.completion += d.completion_tokens;
        }
    }

    async fn flush(self: &Arc<Self>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let deltas = self.take();
        if deltas.is_empty() {
            return;
        }
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || match store.record_usage(&deltas) {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::error!("recording key usage: {e}; will retry");
                me.put_back(deltas);
                Err(())
            }
        })
        .await;
        if let Err(e) = r {
            tracing::error!("recording key usage: {e}");
        }
    }

    fn flush_blocking(&self) {
        let Some(store) = &self.store else { return };
        let deltas = self.take();
        if let Err(e) = store.record_usage(&deltas) {
            tracing::error!("recording key usage at shutdown: {e}");
        }
    }
}

/// Sliding one-minute windows of one key.
#[derive(Default)]
struct Window {
    requests: VecDeque<Instant>,
    tokens: VecDeque<(Instant, u64)>,
    token_sum: u64,
}

impl Window {
    fn prune(&mut self, now: Instant) {
        let expired = |t: Instant| now.saturating_duration_since(t) >= WINDOW;
        while self.requests.front().is_some_and(|&t| expired(t)) {
            self.requests.pop_front();
        }
        while let Some(&(t, n)) = self.tokens.front() {
            if !expired(t) {
                break;
            }
            self.tokens.pop_front();
            self.token_sum -= n;
        }
    }

    /// Count a request if both limits allow it; otherwise how long until they would.
    fn admit(&mut self, now: Instant, rpm: Option<u32>, tpm: Option<u64>) -> Result<(), Duration> {
        self.prune(now);
        let frees = |t: Instant| WINDOW.saturating_sub(now.saturating_duration_since(t));
        let mut wait = Duration::ZERO;
        if let Some(r) = rpm.map(|r| r as usize) {
            if self.requests.len() >= r {
                wait = wait.max(frees(self.requests[self.requests.len() - r]));
            }
        }
        if let Some(t) = tpm {
            if self.token_sum >= t {
                let mut left = self.token_sum;
                for &(at, n) in &self.tokens {
                    left -= n;
                    if left < t {
                        wait = wait.max(frees(at));
                        break;
                    }
                }
            }
        }
        if wait > Duration::ZERO {
            return Err(wait);
        }
        if rpm.is_some() {
            self.requests.push_back(now);
        }
        Ok(())
    }

    fn add_tokens(&mut self, now: Instant, n: u64) {
        self.prune(now);
        match self.tokens.back_mut() {
            Some((t, m)) if now.saturating_duration_since(*t) < Duration::from_secs(1) => *m += n,
            _ => self.tokens.push_back((now, n)),
        }
        self.token_sum += n;
    }
}

tokio::task_local! {
    static CALLER: Caller;
}

/// The key a request came with, for usage accounting by the generation plumbing.
#[derive(Clone)]
pub(crate) struct Caller {
    key_id: String,
    shared: Arc<Shared>,
}

impl Caller {
    /// The caller of the current request, if it came with a key.
    pub(crate) fn current() -> Option<Caller> {
        CALLER.try_with(|c| c.clone()).ok()
    }

    pub(crate) fn record_request(&self, model: &str) {
        self.shared.add(
            &self.key_id,
            model,
            Counts {
                requests: 1,
                ..Counts::default()
            },
        );
    }

    pub(crate) fn record_tokens(&self, model: &str, prompt: usize, completion: usize) {
        self.shared.add(
            &self.key_id,
            model,
            Counts {
                requests: 0,
                prompt: prompt as u64,
                completion: completion as u64,
            },
        );
    }
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let t = token.trim();
    (!t.is_empty()).then_some(t)
}

fn refuse(e: ApiError) -> Response {
    let unauthorized = e.code == ErrorCode::InvalidApiKey;
    let mut r = HttpError(e).into_response();
    if unauthorized {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// The middleware: authenticate, authorize, rate-limit, then run the request with its caller.
pub async fn layer(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    if is_open_route(&route) {
        return next.run(req).await;
    }
    let auth = &st.auth;
    auth.refresh().await;
    if !auth.enabled() {
        return next.run(req).await;
    }
    let invalid = |m: &str| refuse(ApiError::new(ErrorCode::InvalidApiKey, m));
    if req.headers().get(header::AUTHORIZATION).is_none() {
        return invalid(
            "You didn't provide an API key. Send it in the header `Authorization: Bearer <key>`.",
        );
    }
    let Some(key) = bearer(req.headers()).and_then(|s| auth.find(s)) else {
        return invalid("Incorrect API key provided.");
    };
    if !key.active() {
        return invalid("This API key has been revoked.");
    }
    if is_admin_route(&route) && key.scope != Scope::Admin {
        return refuse(ApiError::new(
            ErrorCode::PermissionDenied,
            "This route needs an admin key; this key has the inference scope.",
        ));
    }
    if let Err(secs) = auth.shared.admit(&key) {
        let what = match (key.rpm, key.tpm) {
            (Some(r), Some(t)) => format!("{r} requests or {t} tokens per minute"),
            (Some(r), None) => format!("{r} requests per minute"),
            (None, Some(t)) => format!("{t} tokens per minute"),
            (None, None) => "its limits".into(),
        };
        return refuse(
            ApiError::new(
                ErrorCode::RateLimitExceeded,
                format!(
                    "Rate limit reached for key {}: {what}. Retry in {secs}s.",
                    key.id
                ),
            )
            .with_retry_after(secs),
        );
    }
    tracing::debug!(key = %key.id, "authenticated");
    let caller = Caller {
        key_id: key.id.clone(),
        shared: auth.shared.clone(),
    };
    CALLER.scope(caller, next.run(req)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_window_slides() {
        let t0 = Instant::now();
        let mut w = Window::default();
        assert!(w.admit(t0, Some(2), None).is_ok());
        assert!(w.admit(t0 + Duration::from_secs(10), Some(2), None).is_ok());
        let wait = w
            .admit(t0 + Duration::from_secs(20), Some(2), None)
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(40));
        // The first request leaves the window after a minute.
        assert!(w.admit(t0 + Duration::from_secs(60), Some(2), None).is_ok());
        assert_eq!(
            w.admit(t0 + Duration::from_secs(61), Some(2), None)
                .unwrap_err(),
            Duration::from_secs(9)
        );
    }

    #[test]
    fn tpm_window_counts_recorded_tokens() {
        let t0 = Instant::now();
        let mut w = Window::default();
        assert!(w.admit(t0, None, Some(100)).is_ok());
        w.add_tokens(t0, 60);
        assert!(w
            .admit(t0 + Duration::from_secs(5), None, Some(100))
            .is_ok());
        w.add_tokens(t0 + Duration::from_secs(5), 50);
        // 110 >= 100: wait until the first 60 leave (t0 + 60s).
        assert_eq!(
            w.admit(t0 + Duration::from_secs(30), None, Some(100))
                .unwrap_err(),
            Duration::from_secs(30)
        );
        assert!(w
            .admit(t0 + Duration::from_secs(60), None, Some(100))
            .is_ok());
        assert_eq!(w.token_sum, 50);
    }

    #[test]
    fn bearer_parsing() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  x "),
        );
        assert_eq!(bearer(&h), Some("x"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn route_classes() {
        assert!(is_open_route("/health"));
        assert!(!is_open_route("/metrics"));
        assert!(is_admin_route("/v1/admin/keys/{id}"));
        assert!(!is_admin_route("/v1/administer"));
        assert!(is_admin_route("/v1/models/{id}/load"));
        assert!(is_admin_route("/v1/models/{id}/unload"));
        assert!(is_admin_route("/v1/models/{id}/options"));
        assert!(!is_admin_route("/v1/models/{id}"));
    }
}
