//! Refusals in Stack Auth's style: known errors (JSON body and the known-error header in both
//! forms) and plain-text errors.

use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use http::{HeaderValue, StatusCode};
use serde_json::json;

use crate::key::KeyKind;
use crate::stack_protocol::headers::KNOWN_ERROR;
use crate::stack_protocol::{KnownError, KnownErrorCode};
use crate::store::StoreError;
use crate::verify::InvalidReason;

/// A refusal in Stack Auth's style.
#[derive(Debug)]
pub(super) enum ApiError {
    /// A known error, answered with its code's status.
    Known(StatusCode, KnownError),
    /// A plain-text error (Stack Auth's `StatusError`), without a known-error header.
    Plain(StatusCode, String),
}

pub(super) type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// The known error `code` with message `error`, at the code's status.
    pub(super) fn known(code: KnownErrorCode, error: impl Into<String>) -> Self {
        ApiError::Known(code.status(), KnownError::of(code, error))
    }

    /// The known error `code` with message `error` and `details`.
    pub(super) fn detailed(
        code: KnownErrorCode,
        error: impl Into<String>,
        details: serde_json::Value,
    ) -> Self {
        ApiError::Known(
            code.status(),
            KnownError::of(code, error).with_details(details),
        )
    }

    /// `SCHEMA_ERROR`, with `details.message`.
    pub(super) fn schema(message: impl Into<String>) -> Self {
        let message = message.into();
        Self::detailed(
            KnownErrorCode::SchemaError,
            format!("Request validation failed: {message}"),
            json!({ "message": message }),
        )
    }

    pub(super) fn body_parsing(message: impl Into<String>) -> Self {
        Self::known(KnownErrorCode::BodyParsingError, message)
    }

    pub(super) fn not_found() -> Self {
        Self::known(KnownErrorCode::ApiKeyNotFound, "API key not found.")
    }

    /// The check's refusal of a stored key that is not valid for the `expected` route.
    pub(super) fn invalid(reason: InvalidReason, expected: KeyKind) -> Self {
        match reason {
            InvalidReason::NotFound => Self::not_found(),
            InvalidReason::WrongType => {
                let actual = match expected {
                    KeyKind::User => KeyKind::Team,
                    KeyKind::Team => KeyKind::User,
                };
                Self::detailed(
                    KnownErrorCode::WrongApiKeyType,
                    format!(
                        "This endpoint is for {expected} API keys, but a {actual} API key was provided."
                    ),
                    json!({ "expected_type": expected, "actual_type": actual }),
                )
            }
            InvalidReason::Revoked => {
                Self::known(KnownErrorCode::ApiKeyRevoked, "API key has been revoked.")
            }
            InvalidReason::Expired => {
                Self::known(KnownErrorCode::ApiKeyExpired, "API key has expired.")
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ApiError::not_found(),
            other => {
                tracing::error!(error = %other, "key store failed");
                ApiError::Plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The key store failed.".into(),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Known(status, known) => {
                let code = HeaderValue::from_str(&known.code).ok();
                let body = serde_json::to_vec(&known).unwrap_or_default();
                let mut response = (status, body).into_response();
                let headers = response.headers_mut();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/json; charset=utf-8"),
                );
                if let Some(code) = code {
                    KNOWN_ERROR.insert_both(headers, code);
                }
                response
            }
            ApiError::Plain(status, text) => {
                let mut response = (status, text).into_response();
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                response
            }
        }
    }
}
