//! Request ids, one `tracing` span per request (id, method, route), a log line with status and
//! latency, and the HTTP metrics. The outermost middleware, so it sees every response.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::state::AppState;

pub const REQUEST_ID: &str = "x-request-id";

/// An incoming id is echoed when it is short and plain (letters, digits, `-_.:`).
fn valid(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

pub async fn layer(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid(v))
        .map(str::to_string)
        .unwrap_or_else(|| crate::new_id("req"));
    // The route template, not the raw path: bounded label values.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let span = tracing::info_span!("request", id = %id, method = %method, route = %route);
    let mut resp = next.run(req).instrument(span.clone()).await;
    let latency = start.elapsed();
    let status = resp.status().as_u16();
    st.metrics.observe_http(&route, &method, status, latency);
    span.in_scope(|| tracing::info!(status, latency_ms = latency.as_secs_f64() * 1e3, "request"));
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::valid;

    #[test]
    fn request_id_validation() {
        assert!(valid("abc-123_x.y:z"));
        assert!(!valid(""));
        assert!(!valid("a b"));
        assert!(!valid("a\"b"));
        assert!(!valid(&"x".repeat(129)));
    }
}
