//! Rejections and the responses they become.
//!
//! | case | status | `WWW-Authenticate` | body `code` |
//! | --- | --- | --- | --- |
//! | no key | 401 | `Bearer realm="…"` | `API_KEY_MISSING` |
//! | malformed / unknown / revoked / expired key | 401 | `Bearer realm="…", error="invalid_token"` | `API_KEY_INVALID` |
//! | two different keys, bad header syntax | 400 | `Bearer error="invalid_request"` | `INVALID_REQUEST` |
//! | key of a kind the route refuses (team key on a user route, user key on a team route, `pk_` key where refused), read from the key itself before any lookup | 403 | `Bearer error="insufficient_scope"` | `INSUFFICIENT_SCOPE` |
//! | verifier down, timed out, misconfigured | 503 + `Retry-After` (whole seconds, at most [`MAX_RETRY_AFTER`]) | none | `VERIFIER_UNAVAILABLE` |
//!
//! The refusals decided without I/O come in this order: bad credential syntax (400), then a key
//! that breaks any format rule (401: a key that is not a key has no kind), then a kind or a `pk_`
//! prefix the route refuses (403). So a team key with a bad checksum on a user route gets 401,
//! like a bad key anywhere, and a well-formed one gets 403 whether or not it exists.
//!
//! Bodies are JSON `{"code": "...", "error": "human message"}` with `cache-control: no-store`.
//! Why a key was invalid (unknown, revoked, expired, malformed) is logged, never sent.
//!
//! Replace the response with any `Fn(&Rejection) -> http::Response<B>`:
//!
//! ```
//! use keygate::{MemoryKeyStore, Rejection, RequireApiKey};
//!
//! let layer = RequireApiKey::new(MemoryKeyStore::new()).responder(|rejection: &Rejection| {
//!     http::Response::builder()
//!         .status(rejection.status())
//!         .body(format!("denied: {}", rejection.code()))
//!         .unwrap_or_default()
//! });
//! # let _ = layer;
//! ```

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, Response, StatusCode};

use crate::key::{FormatError, KeyKind};
use crate::verify::{InvalidReason, VerifyError};

/// Why a request was refused.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Rejection {
    /// No key was presented.
    Missing,
    /// The key broke the format; no lookup was made.
    Malformed(FormatError),
    /// The verifier said the key is not valid.
    Invalid(InvalidReason),
    /// The request itself is malformed.
    BadRequest(BadRequest),
    /// The key is of a kind this route refuses. Read from the key itself, before any lookup: the
    /// key may be unknown as well.
    WrongKind {
        /// The kind the route accepts.
        required: KeyKind,
    },
    /// The key is a public (`pk_`) key and this route refuses public keys. Read from the key's
    /// prefix before any lookup (or, rarely, from a verifier that calls an `sk_` key public).
    PublicKeyRefused,
    /// The verifier could not answer.
    Unavailable(VerifyError),
}

/// What made a request malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BadRequest {
    /// Two different keys in one request.
    MultipleKeys,
    /// A credential header that does not parse (bad `Authorization` syntax, not visible ASCII).
    MalformedHeader,
}

impl Rejection {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Missing | Rejection::Malformed(_) | Rejection::Invalid(_) => {
                StatusCode::UNAUTHORIZED
            }
            Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::WrongKind { .. } | Rejection::PublicKeyRefused => StatusCode::FORBIDDEN,
            Rejection::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The body's `code`.
    pub fn code(&self) -> &'static str {
        self.text().0
    }

    /// The body's human-readable `error`. Never says why a key was invalid.
    pub fn message(&self) -> &'static str {
        self.text().1
    }

    /// `(code, message, JSON body)`, all fixed at compile time: a refusal costs no formatting.
    fn text(&self) -> (&'static str, &'static str, &'static str) {
        macro_rules! text {
            ($code:literal, $message:literal) => {
                (
                    $code,
                    $message,
                    concat!("{\"code\":\"", $code, "\",\"error\":\"", $message, "\"}"),
                )
            };
        }
        match self {
            Rejection::Missing => text!("API_KEY_MISSING", "An API key is required."),
            Rejection::Malformed(_) | Rejection::Invalid(_) => {
                text!("API_KEY_INVALID", "The API key is invalid.")
            }
            Rejection::BadRequest(BadRequest::MultipleKeys) => text!(
                "INVALID_REQUEST",
                "The request carries more than one API key."
            ),
            Rejection::BadRequest(BadRequest::MalformedHeader) => {
                text!("INVALID_REQUEST", "The credential header is malformed.")
            }
            Rejection::WrongKind {
                required: KeyKind::User,
            } => text!(
                "INSUFFICIENT_SCOPE",
                "This endpoint requires a user API key."
            ),
            Rejection::WrongKind {
                required: KeyKind::Team,
            } => text!(
                "INSUFFICIENT_SCOPE",
                "This endpoint requires a team API key."
            ),
            Rejection::PublicKeyRefused => text!(
                "INSUFFICIENT_SCOPE",
                "Public API keys are not accepted here."
            ),
            Rejection::Unavailable(_) => text!(
                "VERIFIER_UNAVAILABLE",
                "API key verification is temporarily unavailable."
            ),
        }
    }

    /// The RFC 6750 `error` attribute, if any.
    pub fn bearer_error(&self) -> Option<&'static str> {
        match self {
            Rejection::Missing | Rejection::Unavailable(_) => None,
            Rejection::Malformed(_) | Rejection::Invalid(_) => Some("invalid_token"),
            Rejection::BadRequest(_) => Some("invalid_request"),
            Rejection::WrongKind { .. } | Rejection::PublicKeyRefused => Some("insufficient_scope"),
        }
    }

    /// The JSON body, `{"code": …, "error": …}`.
    pub fn body(&self) -> &'static str {
        self.text().2
    }

    /// Whether this is a client-side failure (4xx) rather than the verifier's (5xx).
    pub fn is_client_error(&self) -> bool {
        self.status().is_client_error()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Malformed(e) => write!(f, "malformed API key: {e}"),
            Rejection::Invalid(r) => write!(f, "invalid API key: {r}"),
            Rejection::Unavailable(e) => write!(f, "verifier unavailable: {e}"),
            other => f.write_str(other.message()),
        }
    }
}

impl std::error::Error for Rejection {}

/// Turns a [`Rejection`] into a response. Implemented for the [`DefaultResponder`] and for any
/// `Fn(&Rejection) -> http::Response<B> + Clone + Send + Sync + 'static`.
pub trait RejectionResponder<B>: Clone + Send + Sync + 'static {
    /// The response for `rejection`.
    fn respond(&self, rejection: &Rejection) -> Response<B>;
}

impl<B, F> RejectionResponder<B> for F
where
    F: Fn(&Rejection) -> Response<B> + Clone + Send + Sync + 'static,
{
    fn respond(&self, rejection: &Rejection) -> Response<B> {
        self(rejection)
    }
}

/// The error table's responses: RFC 6750 challenges and a JSON body.
#[derive(Clone, Debug)]
pub struct DefaultResponder {
    missing: HeaderValue,
    invalid: HeaderValue,
    /// The `Retry-After` value when the verifier suggests none, built once.
    retry_after: HeaderValue,
}

/// The realm used when none is configured.
pub const DEFAULT_REALM: &str = "api";

/// The longest `Retry-After` a 503 ever carries: one day. A longer wait, configured or suggested
/// by a verifier (up to `Duration::MAX`), is sent as this one.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// `wait` as a `Retry-After` value: whole seconds, rounded up (a client that waits exactly this
/// long must not come back too early), at least 1, at most [`MAX_RETRY_AFTER`].
pub(crate) fn retry_after_header(wait: Duration) -> HeaderValue {
    let wait = wait.min(MAX_RETRY_AFTER);
    let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
    HeaderValue::from(secs)
}

impl Default for DefaultResponder {
    fn default() -> Self {
        Self::new(DEFAULT_REALM)
    }
}

impl DefaultResponder {
    /// Responses that name `realm` in their challenges. Quotes and backslashes in the realm
    /// are escaped; characters a header cannot carry are dropped.
    pub fn new(realm: &str) -> Self {
        let realm: String = realm
            .chars()
            .filter(|c| *c == '\t' || (' '..='~').contains(c))
            .flat_map(|c| match c {
                '"' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        let header = |s: String| {
            HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
        };
        Self {
            missing: header(format!("Bearer realm=\"{realm}\"")),
            invalid: header(format!("Bearer realm=\"{realm}\", error=\"invalid_token\"")),
            retry_after: retry_after_header(Duration::from_secs(1)),
        }
    }

    /// The `Retry-After` sent with a 503 when the verifier gave none (default 1 s). Sent in whole
    /// seconds, rounded up, and capped at [`MAX_RETRY_AFTER`], as is a verifier's own.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after_header(retry_after);
        self
    }
}

impl<B: From<Bytes>> RejectionResponder<B> for DefaultResponder {
    fn respond(&self, rejection: &Rejection) -> Response<B> {
        let mut response = Response::new(B::from(Bytes::from_static(rejection.body().as_bytes())));
        *response.status_mut() = rejection.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        let challenge = match rejection {
            Rejection::Missing => Some(self.missing.clone()),
            Rejection::Malformed(_) | Rejection::Invalid(_) => Some(self.invalid.clone()),
            Rejection::BadRequest(_) => {
                Some(HeaderValue::from_static("Bearer error=\"invalid_request\""))
            }
            Rejection::WrongKind { .. } | Rejection::PublicKeyRefused => Some(
                HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
            ),
            Rejection::Unavailable(_) => None,
        };
        if let Some(challenge) = challenge {
            headers.insert(WWW_AUTHENTICATE, challenge);
        }
        if let Rejection::Unavailable(error) = rejection {
            let wait = match error.retry_after() {
                Some(wait) => retry_after_header(wait),
                None => self.retry_after.clone(),
            };
            headers.insert(RETRY_AFTER, wait);
        }
        response
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Rejection {
    fn into_response(self) -> axum_core::response::Response {
        DefaultResponder::default().respond(&self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::VerifyErrorKind;

    fn respond(r: &Rejection) -> Response<Bytes> {
        DefaultResponder::new("test").respond(r)
    }

    #[test]
    fn every_body_is_the_json_of_its_code_and_message() {
        let all = [
            Rejection::Missing,
            Rejection::Malformed(FormatError::Checksum),
            Rejection::Invalid(InvalidReason::Revoked),
            Rejection::BadRequest(BadRequest::MultipleKeys),
            Rejection::BadRequest(BadRequest::MalformedHeader),
            Rejection::WrongKind {
                required: KeyKind::User,
            },
            Rejection::WrongKind {
                required: KeyKind::Team,
            },
            Rejection::PublicKeyRefused,
            Rejection::Unavailable(VerifyError::new(VerifyErrorKind::Store, "x")),
        ];
        for r in all {
            let parsed: serde_json::Value = serde_json::from_str(r.body()).expect("JSON");
            assert_eq!(
                parsed,
                serde_json::json!({ "code": r.code(), "error": r.message() })
            );
        }
    }

    #[test]
    fn realm_is_escaped() {
        let r: Response<Bytes> = DefaultResponder::new("a\"b\\c\n").respond(&Rejection::Missing);
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            "Bearer realm=\"a\\\"b\\\\c\""
        );
    }

    #[test]
    fn unavailable_carries_retry_after_and_no_challenge() {
        let e = VerifyError::new(VerifyErrorKind::Timeout, "slow")
            .with_retry_after(Duration::from_secs(7));
        let r = respond(&Rejection::Unavailable(e));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "7");
        assert!(r.headers().get(WWW_AUTHENTICATE).is_none());
        let r = respond(&Rejection::Unavailable(VerifyError::new(
            VerifyErrorKind::Transport,
            "down",
        )));
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }

    #[test]
    fn retry_after_is_capped_and_never_overflows() {
        let cap = MAX_RETRY_AFTER.as_secs().to_string();
        let rows = [
            ("Duration::MAX", Duration::MAX, cap.as_str()),
            ("u64::MAX seconds", Duration::from_secs(u64::MAX), &cap),
            (
                "just over the cap",
                MAX_RETRY_AFTER + Duration::from_nanos(1),
                &cap,
            ),
            ("the cap", MAX_RETRY_AFTER, &cap),
            ("zero", Duration::ZERO, "1"),
            ("1.5 s", Duration::from_millis(1500), "2"),
        ];
        for (name, wait, expected) in rows {
            // As the responder's default...
            let responder = DefaultResponder::new("test").retry_after(wait);
            let error = VerifyError::new(VerifyErrorKind::Transport, "down");
            let r: Response<Bytes> = responder.respond(&Rejection::Unavailable(error));
            assert_eq!(
                r.headers()[RETRY_AFTER],
                expected,
                "{name}, responder default"
            );
            // ... and as a verifier's suggestion.
            let error = VerifyError::new(VerifyErrorKind::Timeout, "slow").with_retry_after(wait);
            let r = respond(&Rejection::Unavailable(error));
            assert_eq!(r.headers()[RETRY_AFTER], expected, "{name}, verifier hint");
        }
    }

    #[test]
    fn invalid_reasons_are_not_revealed() {
        let bodies: Vec<String> = [
            Rejection::Invalid(InvalidReason::Revoked),
            Rejection::Invalid(InvalidReason::Expired),
            Rejection::Invalid(InvalidReason::NotFound),
            Rejection::Malformed(FormatError::Checksum),
        ]
        .iter()
        .map(|r| String::from_utf8_lossy(respond(r).body()).into_owned())
        .collect();
        assert!(bodies.iter().all(|b| b == &bodies[0]), "{bodies:?}");
        assert_eq!(
            bodies[0],
            r#"{"code":"API_KEY_INVALID","error":"The API key is invalid."}"#
        );
    }
}
