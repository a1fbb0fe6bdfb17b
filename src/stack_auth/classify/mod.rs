//! What one answer of a check route means: pure functions of the status, the headers, the body,
//! the key and the time, without I/O and without the verifier's state. The verifier acts on the
//! result (retries, logs a misconfiguration once, feeds its breaker).
//!
//! | answer | [`Classified`] |
//! | --- | --- |
//! | 200 JSON: Stack Auth's key object, or `{"is_valid": …}` | verdict (revoked or expired: invalid) |
//! | 200 not JSON, or JSON of no known shape | [`Upstream`](Classified::Upstream) |
//! | 4xx known error `API_KEY_NOT_FOUND`, `WRONG_API_KEY_TYPE`, `API_KEY_REVOKED`, `API_KEY_EXPIRED` | invalid |
//! | 4xx other known error | [`Misconfigured`](Classified::Misconfigured), named by its code |
//! | 4xx known error whose known-error header names another code | [`Upstream`](Classified::Upstream) |
//! | 400 plain text "… API keys are not enabled …" | [`Misconfigured`](Classified::Misconfigured) |
//! | 5xx, 429 | [`Transient`](Classified::Transient), with `Retry-After` (seconds or HTTP date) |
//! | anything else | [`Upstream`](Classified::Upstream) |
//!
//! The status is the `x-hexclave-actual-status` / `x-stack-actual-status` header's when there is
//! one (a proxy may answer an error as 200 with it); the known-error header is read the same way,
//! Hexclave's name first.

use std::time::{Duration, SystemTime};

use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, StatusCode};

use crate::key::{ApiKey, KeyKind};
use crate::stack_protocol::headers::{ACTUAL_STATUS, KNOWN_ERROR};
use crate::stack_protocol::{from_millis, ApiKeyObject, KnownError, KnownErrorCode};
use crate::verify::{InvalidReason, KeyInfo, Owner, Verdict};

/// The longest wait passed on as `Retry-After` (an upstream's, or an open circuit's): one day.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// What an answer means.
#[derive(Debug, PartialEq)]
pub(crate) enum Classified {
    /// A verdict about the key.
    Verdict(Verdict),
    /// Stack Auth refused the verifier's own credentials or configuration: an operator must act.
    Misconfigured {
        /// A short stable name for the cause (an error code), to log it once.
        cause: String,
        /// What to fix.
        advice: String,
    },
    /// An answer that makes no sense; asking again would not help.
    Upstream(String),
    /// A failure that may pass (5xx, 429): worth retrying, after `retry_after` if it was named.
    Transient {
        /// What went wrong.
        message: String,
        /// The upstream's `Retry-After`, capped at [`MAX_RETRY_AFTER`].
        retry_after: Option<Duration>,
    },
}

/// Classifies one answer of the check route for `key`, at time `now`.
pub(crate) fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    key: &ApiKey,
    now: SystemTime,
) -> Classified {
    let status = actual_status(status, headers);
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Classified::Transient {
            message: format!("Stack Auth answered {status}"),
            retry_after: retry_after(headers, now),
        };
    }
    let json = is_json(headers);
    if status == StatusCode::OK {
        if !json {
            return Classified::Upstream(format!(
                "Stack Auth answered 200 with content-type {:?}, not JSON",
                headers.get(CONTENT_TYPE)
            ));
        }
        return match interpret_ok(body, key, now) {
            Ok(verdict) => Classified::Verdict(verdict),
            Err(message) => Classified::Upstream(message),
        };
    }
    if status.is_client_error() && json {
        return match serde_json::from_slice::<KnownError>(body) {
            Ok(known) => match known_error_header_mismatch(headers, &known) {
                Some(message) => Classified::Upstream(message),
                None => known_error(status, &known, key),
            },
            Err(_) => Classified::Upstream(format!(
                "Stack Auth answered {status} with a body that is not a known error"
            )),
        };
    }
    if status == StatusCode::BAD_REQUEST
        && String::from_utf8_lossy(body).contains("API keys are not enabled")
    {
        return Classified::Misconfigured {
            cause: format!("{}-api-keys-disabled", key.kind()),
            advice: format!(
                "Stack Auth says {} API keys are not enabled for this project: enable them in the dashboard (API Keys app)",
                key.kind()
            ),
        };
    }
    Classified::Upstream(format!("Stack Auth answered {status} unexpectedly"))
}

/// The real status: the actual-status header's (Hexclave's name first) if it holds a status,
/// else `status`.
pub(crate) fn actual_status(status: StatusCode, headers: &HeaderMap) -> StatusCode {
    ACTUAL_STATUS
        .get(headers)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u16>().ok())
        .and_then(|v| StatusCode::from_u16(v).ok())
        .unwrap_or(status)
}

/// Why the known-error header (Hexclave's name first) contradicts the body, if it does. A
/// missing header is no contradiction.
pub(crate) fn known_error_header_mismatch(
    headers: &HeaderMap,
    known: &KnownError,
) -> Option<String> {
    let header = KNOWN_ERROR.get(headers)?;
    (header.as_bytes() != known.code.as_bytes()).then(|| {
        format!(
            "the known-error header {:?} disagrees with the body's code {:?}",
            String::from_utf8_lossy(header.as_bytes()),
            known.code
        )
    })
}

/// `Retry-After` as seconds or as an HTTP date, capped at [`MAX_RETRY_AFTER`]. A date that has
/// passed says nothing useful: `None`, so the caller's own jittered backoff applies rather than
/// an immediate retry.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .ok()?,
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        })
}

/// A known error (its header already checked against its code).
fn known_error(status: StatusCode, known: &KnownError, key: &ApiKey) -> Classified {
    let misconfigured = |advice: &str| Classified::Misconfigured {
        cause: known.code.clone(),
        advice: advice.to_owned(),
    };
    let Some(code) = known.known_code() else {
        return misconfigured(&format!(
            "Stack Auth answered {status} {}: {}",
            known.code, known.error
        ));
    };
    let invalid = |reason| Classified::Verdict(Verdict::Invalid(reason));
    match code {
        KnownErrorCode::ApiKeyNotFound => invalid(InvalidReason::NotFound),
        KnownErrorCode::WrongApiKeyType => invalid(InvalidReason::WrongType),
        KnownErrorCode::ApiKeyRevoked => invalid(InvalidReason::Revoked),
        KnownErrorCode::ApiKeyExpired => invalid(InvalidReason::Expired),
        KnownErrorCode::InvalidSecretServerKey => misconfigured(
            "Stack Auth rejected the secret server key: check STACK_SECRET_SERVER_KEY or HEXCLAVE_SECRET_SERVER_KEY (and that it belongs to the project id)",
        ),
        KnownErrorCode::ServerAuthenticationRequired => misconfigured(
            "Stack Auth wants a secret server key: set STACK_SECRET_SERVER_KEY or HEXCLAVE_SECRET_SERVER_KEY",
        ),
        KnownErrorCode::InsufficientAccessType => misconfigured(
            "Stack Auth refused server access for the check: use a secret server key, not a publishable client key",
        ),
        KnownErrorCode::CurrentProjectNotFound | KnownErrorCode::AccessTypeWithoutProjectId => {
            misconfigured(
                "Stack Auth does not know this project: check STACK_PROJECT_ID or HEXCLAVE_PROJECT_ID (and the API URL)",
            )
        }
        _ => misconfigured(&format!(
            "Stack Auth answered {status} {code} to the {} key check: {}",
            key.kind(),
            known.error
        )),
    }
}

/// Fields that only Stack Auth's key object has; the `{"is_valid": …}` shape has none of them.
const KEY_OBJECT_FIELDS: [&str; 4] = ["type", "created_at_millis", "value", "description"];

/// A 200 body: Stack Auth's key object, or the `{"is_valid": …}` shape of its public docs.
///
/// A body with any key-object field is read as a key object, whole and strictly, even if it
/// also has `is_valid` (which there can only refuse, never accept); the short shape is only for
/// bodies without them. Either way a revocation or a past expiry refuses the key.
pub(crate) fn interpret_ok(body: &[u8], key: &ApiKey, now: SystemTime) -> Result<Verdict, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("Stack Auth's 200 is not JSON: {e}"))?;
    let fields = value
        .as_object()
        .ok_or("Stack Auth's 200 is not a JSON object")?;
    let is_valid = match fields.get("is_valid") {
        None => None,
        Some(v) => Some(v.as_bool().ok_or("`is_valid` is not a boolean")?),
    };
    match is_valid {
        Some(is_valid) if !KEY_OBJECT_FIELDS.iter().any(|f| fields.contains_key(*f)) => {
            short_form(fields, is_valid, key, now)
        }
        _ => key_object(value, is_valid, key, now),
    }
}

/// Stack Auth's key object (its Read body), possibly with an `is_valid` beside it.
fn key_object(
    value: serde_json::Value,
    is_valid: Option<bool>,
    key: &ApiKey,
    now: SystemTime,
) -> Result<Verdict, String> {
    let object: ApiKeyObject = serde_json::from_value(value)
        .map_err(|e| format!("Stack Auth's 200 is not an API key object: {e}"))?;
    if object.kind != key.kind() {
        return Ok(Verdict::Invalid(InvalidReason::WrongType));
    }
    if object.manually_revoked_at_millis.is_some() {
        return Ok(Verdict::Invalid(InvalidReason::Revoked));
    }
    let info = object
        .to_key_info()
        .ok_or_else(|| format!("the key object names no {} id", key.kind()))?;
    if info.is_expired_at(now) {
        return Ok(Verdict::Invalid(InvalidReason::Expired));
    }
    if is_valid == Some(false) {
        return Ok(Verdict::Invalid(InvalidReason::NotFound));
    }
    Ok(Verdict::valid(info))
}

/// `{"is_valid": …, "id": …, "user_id": …}` (or `team_id`), with optional `is_public`,
/// `expires_at_millis` and `manually_revoked_at_millis`.
fn short_form(
    fields: &serde_json::Map<String, serde_json::Value>,
    is_valid: bool,
    key: &ApiKey,
    now: SystemTime,
) -> Result<Verdict, String> {
    if millis(fields, "manually_revoked_at_millis")?.is_some() {
        return Ok(Verdict::Invalid(InvalidReason::Revoked));
    }
    let expires_at = millis(fields, "expires_at_millis")?
        .filter(|&ms| ms != 0)
        .map(from_millis);
    if expires_at.is_some_and(|at| at <= now) {
        return Ok(Verdict::Invalid(InvalidReason::Expired));
    }
    if !is_valid {
        return Ok(Verdict::Invalid(InvalidReason::NotFound));
    }
    let owner = match (
        key.kind(),
        string(fields, "user_id")?,
        string(fields, "team_id")?,
    ) {
        (_, Some(_), Some(_)) => return Err("`is_valid: true` names both a user and a team".into()),
        (KeyKind::User, Some(id), None) => Owner::user(id),
        (KeyKind::Team, None, Some(id)) => Owner::team(id),
        (KeyKind::User, None, Some(_)) | (KeyKind::Team, Some(_), None) => {
            return Ok(Verdict::Invalid(InvalidReason::WrongType))
        }
        (_, None, None) => return Err(format!("`is_valid: true` without a {} id", key.kind())),
    };
    let key_id = match string(fields, "id")? {
        Some(id) => id.parse().map_err(|_| "`id` is not a UUID".to_owned())?,
        None => key.key_id(),
    };
    let is_public = match fields.get("is_public") {
        None | Some(serde_json::Value::Null) => key.is_public(),
        Some(v) => v.as_bool().ok_or("`is_public` is not a boolean")?,
    };
    Ok(Verdict::valid(
        KeyInfo::new(key_id, owner, is_public).with_expires_at(expires_at),
    ))
}

/// An optional timestamp in ms: absent or `null` is `None`, anything but an integer an error.
fn millis(
    fields: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<i64>, String> {
    match fields.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("`{name}` is not a timestamp in milliseconds")),
    }
}

/// An optional string: absent or `null` is `None`, anything but a string an error.
fn string<'a>(
    fields: &'a serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<Option<&'a str>, String> {
    match fields.get(name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| format!("`{name}` is not a string")),
    }
}

#[cfg(test)]
mod tests;
