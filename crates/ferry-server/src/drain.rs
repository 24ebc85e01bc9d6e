//! Graceful drain: after `begin` (SIGTERM), new requests get 503 with `Retry-After` while the
//! ones in flight, streams included, finish. A request counts as in flight until its response
//! body has been sent (or the client went away).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferry_types::{ApiError, ErrorCode};

use crate::error::HttpError;
use crate::state::AppState;

/// Seconds a refused client is told to wait (another instance, or this one restarted).
const RETRY_AFTER: u64 = 5;

#[derive(Default)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: Arc<AtomicUsize>,
}

impl Drain {
    /// Refuse new requests from now on.
    pub fn begin(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Requests whose responses are not yet complete.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Wait until nothing is in flight; false if `timeout` passed first.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let t = Instant::now();
        loop {
            if self.in_flight() == 0 {
                return true;
            }
            if t.elapsed() >= timeout {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn enter(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.in_flight.clone())
    }
}

struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that holds its request's in-flight count until it is dropped.
struct Counted {
    inner: Body,
    _guard: InFlight,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pub async fn layer(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    // Counted before the check, so `begin` then `wait_idle` cannot miss a request.
    let guard = st.drain.enter();
    if st.drain.is_draining()
        && req.extensions().get::<MatchedPath>().map(|m| m.as_str()) != Some("/health")
    {
        return HttpError(
            ApiError::new(
                ErrorCode::ServiceUnavailable,
                "The server is shutting down and takes no new requests.",
            )
            .with_retry_after(RETRY_AFTER),
        )
        .into_response();
    }
    next.run(req).await.map(|b| {
        Body::new(Counted {
            inner: b,
            _guard: guard,
        })
    })
}
