//! The error table. Every error Ferry returns to a client is an `ApiError`: one `ErrorCode`
//! decides the HTTP status and OpenAI's `type`; the body is OpenAI's
//! `{"error": {"message", "type", "param", "code"}}`.

use serde::Serialize;

/// Every kind of error a client can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Malformed body or an out-of-range parameter (400).
    InvalidRequest,
    /// Prompt plus `max_tokens` exceeds the model's context (400).
    ContextLengthExceeded,
    /// A parameter Ferry does not support (400).
    UnsupportedParameter,
    /// Missing or bad API key (401).
    InvalidApiKey,
    /// The key may not use this route (403).
    PermissionDenied,
    /// Unknown model (404).
    ModelNotFound,
    /// Unknown route or object (404).
    NotFound,
    /// Body larger than the limit (413).
    PayloadTooLarge,
    /// Well-formed but semantically unusable input (422).
    UnprocessableEntity,
    /// Admission queue full or quota exceeded (429, with Retry-After).
    RateLimitExceeded,
    /// Not ready, draining, or the model failed (503).
    ServiceUnavailable,
    /// A bug or an unexpected failure (500).
    InternalError,
}

impl ErrorCode {
    /// (HTTP status, OpenAI `type`, `code` string).
    pub fn describe(self) -> (u16, &'static str, &'static str) {
        match self {
            Self::InvalidRequest => (400, "invalid_request_error", "invalid_request"),
            Self::ContextLengthExceeded => {
                (400, "invalid_request_error", "context_length_exceeded")
            }
            Self::UnsupportedParameter => (400, "invalid_request_error", "unsupported_parameter"),
            Self::InvalidApiKey => (401, "authentication_error", "invalid_api_key"),
            Self::PermissionDenied => (403, "permission_error", "permission_denied"),
            Self::ModelNotFound => (404, "invalid_request_error", "model_not_found"),
            Self::NotFound => (404, "invalid_request_error", "not_found"),
            Self::PayloadTooLarge => (413, "invalid_request_error", "payload_too_large"),
            Self::UnprocessableEntity => (422, "invalid_request_error", "unprocessable_entity"),
            Self::RateLimitExceeded => (429, "rate_limit_error", "rate_limit_exceeded"),
            Self::ServiceUnavailable => (503, "server_error", "service_unavailable"),
            Self::InternalError => (500, "server_error", "internal_error"),
        }
    }
    pub fn status(self) -> u16 {
        self.describe().0
    }
}

/// An error as a client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub param: Option<String>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message).with_param(param)
    }
    pub fn model_not_found(model: &str) -> Self {
        Self::new(
            ErrorCode::ModelNotFound,
            format!("The model `{model}` does not exist."),
        )
        .with_param("model")
    }
    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    pub fn status(&self) -> u16 {
        self.code.status()
    }
    /// OpenAI's error body.
    pub fn body(&self) -> ErrorBody {
        let (_, ty, code) = self.code.describe();
        ErrorBody {
            error: ErrorDetail {
                message: self.message.clone(),
                r#type: ty,
                param: self.param.clone(),
                code,
            },
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code.describe().2)
    }
}

impl std::error::Error for ApiError {}

#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub message: String,
    pub r#type: &'static str,
    pub param: Option<String>,
    pub code: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = ApiError::invalid("temperature", "temperature must be between 0 and 2");
        let v = serde_json::to_value(e.body()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "temperature");
        assert_eq!(v["error"]["code"], "invalid_request");
        assert_eq!(e.status(), 400);
        assert_eq!(ApiError::model_not_found("x").status(), 404);
    }
}
