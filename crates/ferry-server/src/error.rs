//! `ApiError` as an HTTP response, and the mapping of engine errors onto the error table.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_engine::SubmitError;
use ferry_types::{ApiError, ErrorCode};

/// Newtype so that `ApiError` (defined in ferry-types) can be an axum response.
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, axum::Json(self.0.body())).into_response();
        if let Some(s) = self.0.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        r
    }
}

pub type Result<T> = std::result::Result<T, HttpError>;

pub fn from_submit(e: SubmitError) -> ApiError {
    match e {
        SubmitError::QueueFull(_) => ApiError::new(
            ErrorCode::RateLimitExceeded,
            format!("The server is busy: {e}. Retry shortly."),
        )
        .with_retry_after(1),
        SubmitError::ContextLength { .. } => ApiError::new(
            ErrorCode::ContextLengthExceeded,
            format!("This model's maximum context length is exceeded: {e}."),
        )
        .with_param("messages"),
        SubmitError::EmptyPrompt => ApiError::invalid("prompt", "The prompt is empty."),
        SubmitError::BadToken(t) => {
            ApiError::invalid("prompt", format!("Token id {t} is out of the vocabulary."))
        }
        SubmitError::Stopped => {
            ApiError::new(ErrorCode::ServiceUnavailable, "The model is shutting down.")
                .with_retry_after(1)
        }
    }
}

pub async fn not_found(uri: axum::http::Uri) -> HttpError {
    HttpError(ApiError::new(
        ErrorCode::NotFound,
        format!("No route for {}.", uri.path()),
    ))
}

pub async fn method_not_allowed() -> Response {
    let e = ApiError::new(
        ErrorCode::InvalidRequest,
        "Method not allowed for this route.",
    );
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(e.body())).into_response()
}

/// Run a store call off the async threads; store errors become 500s (logged), invalid input 400.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ferry_store::Result<T> + Send + 'static,
) -> std::result::Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(ferry_store::Error::Invalid(m))) => Err(ApiError::new(ErrorCode::InvalidRequest, m)),
        Ok(Err(e)) => {
            tracing::error!("metadata store: {e}");
            Err(ApiError::new(
                ErrorCode::InternalError,
                "The metadata store failed.",
            ))
        }
        Err(e) => {
            tracing::error!("metadata store task: {e}");
            Err(ApiError::new(
                ErrorCode::InternalError,
                "The metadata store failed.",
            ))
        }
    }
}
