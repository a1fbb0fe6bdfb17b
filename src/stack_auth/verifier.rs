//! [`StackAuthVerifier`]: checks keys through Stack Auth's check endpoints.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, StatusCode};
use rand::TryRngCore;
use tokio::time::Instant;

use super::breaker::{Admission, Breaker, ProbeId};
use super::{default_client, ConfigError, StackAuthClient, StackAuthConfig};
use crate::key::{ApiKey, KeyKind};
use crate::stack_protocol::{from_millis, ApiKeyObject, CheckRequest, KnownError};
use crate::verify::{
    InvalidReason, KeyInfo, KeyVerifier, Owner, RevocationListener, RevocationListeners, Verdict,
    VerifyError, VerifyErrorKind,
};

/// Default time one attempt may take.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time all attempts together may take.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(3);
/// Default number of retries after the first attempt.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Default cap on a response body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default number of consecutive failed checks that opens the circuit.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
/// Default time the circuit stays open before a probe.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(10);

/// Distinct misconfiguration causes logged loudly once each; later new causes share one line.
const MAX_LOGGED_CAUSES: usize = 32;
/// Longest cause (an upstream error code) kept in the set of logged causes.
const MAX_CAUSE_LEN: usize = 64;

const ACTUAL_STATUS: &str = "x-stack-actual-status";
const KNOWN_ERROR: &str = "x-stack-known-error";

/// Checks keys with `POST {base}/api/v1/{user,team}-api-keys/check`. Cheap to clone.
///
/// - The route comes from the key's own `user`/`team` segment.
/// - 200 → valid (Stack Auth's key object, or the `{"is_valid": …}` shape of its public docs),
///   unless the body says the key is revoked or expired.
/// - `API_KEY_NOT_FOUND`, `WRONG_API_KEY_TYPE`, `API_KEY_REVOKED`, `API_KEY_EXPIRED` → invalid.
/// - Misconfiguration (bad server key, unknown project, API keys disabled, …) → error, logged
///   once per cause with what to fix.
/// - Connection errors, timeouts, 5xx and 429 → retried with jittered backoff within a total
///   deadline, then an error; a circuit breaker answers at once while the upstream keeps failing.
///
/// Errors become 503 with `Retry-After`; nothing but verdicts is cached by
/// [`CachedVerifier`](crate::CachedVerifier).
#[derive(Clone)]
pub struct StackAuthVerifier {
    shared: Arc<Shared>,
}

struct Shared {
    config: StackAuthConfig,
    client: reqwest::Client,
    headers: HeaderMap,
    user_check: String,
    team_check: String,
    attempt_timeout: Duration,
    deadline: Duration,
    max_retries: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    max_body: usize,
    breaker: Breaker,
    listeners: Arc<RevocationListeners>,
    /// Misconfiguration causes already logged, at most [`MAX_LOGGED_CAUSES`].
    logged: Mutex<HashSet<String>>,
    /// Whether the "further causes suppressed" line was logged.
    logged_overflow: AtomicBool,
}

/// Builds a [`StackAuthVerifier`].
#[must_use]
pub struct StackAuthVerifierBuilder {
    config: StackAuthConfig,
    client: Option<reqwest::Client>,
    attempt_timeout: Duration,
    deadline: Duration,
    max_retries: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    max_body: usize,
    breaker_threshold: u32,
    breaker_cooldown: Duration,
}

impl StackAuthVerifierBuilder {
    /// Uses this client (connection pool, TLS, proxy settings) instead of building one.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Time one attempt may take (default 1 s).
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Time all attempts and backoffs together may take (default 3 s).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Retries after the first attempt, on connection errors, timeouts, 5xx and 429 only
    /// (default 2).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// Backoff before retry `n` is about `base × 2ⁿ⁻¹`, at most `max`, jittered (defaults 50 ms
    /// and 500 ms). A 429's `Retry-After` is used instead when it fits in the deadline.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max;
        self
    }

    /// The largest response body read (default 64 KiB); a larger one is an error.
    pub fn max_body_bytes(mut self, max: usize) -> Self {
        self.max_body = max;
        self
    }

    /// Opens the circuit after `threshold` consecutive failed checks, for `cooldown`, then
    /// probes once (defaults 5 and 10 s). A threshold of 0 disables the breaker.
    pub fn circuit_breaker(mut self, threshold: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cooldown = cooldown;
        self
    }

    /// Builds the verifier: the headers and URLs are prepared here, once.
    pub fn build(self) -> Result<StackAuthVerifier, ConfigError> {
        let headers = self.config.headers()?;
        let client = match self.client {
            Some(client) => client,
            None => default_client()?,
        };
        Ok(StackAuthVerifier {
            shared: Arc::new(Shared {
                user_check: self.config.url("user-api-keys/check"),
                team_check: self.config.url("team-api-keys/check"),
                config: self.config,
                client,
                headers,
                attempt_timeout: self.attempt_timeout,
                deadline: self.deadline,
                max_retries: self.max_retries,
                backoff_base: self.backoff_base,
                backoff_max: self.backoff_max,
                max_body: self.max_body,
                breaker: Breaker::new(self.breaker_threshold, self.breaker_cooldown),
                listeners: Arc::new(RevocationListeners::default()),
                logged: Mutex::new(HashSet::new()),
                logged_overflow: AtomicBool::new(false),
            }),
        })
    }
}

impl StackAuthVerifier {
    /// A builder with the documented defaults.
    pub fn builder(config: StackAuthConfig) -> StackAuthVerifierBuilder {
        StackAuthVerifierBuilder {
            config,
            client: None,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
            max_retries: DEFAULT_MAX_RETRIES,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            max_body: DEFAULT_MAX_BODY_BYTES,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
        }
    }

    /// A verifier configured from `STACK_API_URL`, `STACK_PROJECT_ID` and
    /// `STACK_SECRET_SERVER_KEY`, with the defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::builder(StackAuthConfig::from_env()?).build()
    }

    /// An admin client on the same configuration and connection pool. Keys it revokes are
    /// dropped at once from every cache built on this verifier.
    pub fn admin_client(&self) -> StackAuthClient {
        StackAuthClient::from_parts(
            self.shared.config.clone(),
            self.shared.client.clone(),
            self.shared.headers.clone(),
            Arc::clone(&self.shared.listeners),
        )
    }

    /// The configuration.
    pub fn config(&self) -> &StackAuthConfig {
        &self.shared.config
    }
}

impl std::fmt::Debug for StackAuthVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackAuthVerifier")
            .field("config", &self.shared.config)
            .field("attempt_timeout", &self.shared.attempt_timeout)
            .field("deadline", &self.shared.deadline)
            .field("max_retries", &self.shared.max_retries)
            .finish_non_exhaustive()
    }
}

/// What one attempt came to.
enum Attempt {
    /// A final answer: a verdict, or an error not worth retrying.
    Done(Result<Verdict, VerifyError>),
    /// A transient failure; the upstream may have said when to come back.
    Retry(VerifyError, Option<Duration>),
}

/// Frees the half-open probe's slot if the call holding it is dropped half way. Calls that hold
/// no probe leave the breaker alone.
struct ProbeGuard<'a> {
    breaker: &'a Breaker,
    probe: Option<ProbeId>,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(probe) = self.probe.take() {
            self.breaker.abandon_probe(probe);
        }
    }
}

impl KeyVerifier for StackAuthVerifier {
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        let shared = &self.shared;
        let probe = match shared.breaker.admit() {
            Admission::Allowed => None,
            Admission::Probe(probe) => Some(probe),
            Admission::Rejected(wait) => {
                return Err(VerifyError::new(
                    VerifyErrorKind::CircuitOpen,
                    "Stack Auth kept failing; not calling it until the breaker's cooldown ends",
                )
                .with_retry_after(wait))
            }
        };
        let mut guard = ProbeGuard {
            breaker: &shared.breaker,
            probe,
        };
        let result = shared.check(key).await;
        guard.probe = None;
        match &result {
            Ok(_) => shared.breaker.record_success(),
            Err(error) => {
                if shared.breaker.record_failure() {
                    tracing::error!(%error, "Stack Auth circuit opened: checks answer 503 at once until it recovers");
                }
            }
        }
        result
    }

    fn subscribe_revocations(&self, listener: RevocationListener) {
        self.shared.listeners.add(listener);
    }
}

impl Shared {
    async fn check(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        let deadline = Instant::now() + self.deadline;
        let url = match key.kind() {
            KeyKind::User => &self.user_check,
            KeyKind::Team => &self.team_check,
        };
        let body = serde_json::to_vec(&CheckRequest {
            api_key: key.expose_secret().to_owned(),
        })
        .map(Bytes::from)
        .map_err(|e| VerifyError::new(VerifyErrorKind::Upstream, e.to_string()))?;
        let mut retries = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let per_attempt = self.attempt_timeout.min(remaining);
            let outcome = if per_attempt.is_zero() {
                Attempt::Done(Err(timeout(self.deadline)))
            } else {
                match tokio::time::timeout(per_attempt, self.attempt(url, body.clone(), key)).await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Attempt::Retry(timeout(per_attempt), None),
                }
            };
            let (error, hint) = match outcome {
                Attempt::Done(result) => return result,
                Attempt::Retry(error, hint) => (error, hint),
            };
            let wait = hint.unwrap_or_else(|| self.backoff(retries));
            let give_up = retries >= self.max_retries
                || Instant::now()
                    .checked_add(wait)
                    .is_none_or(|at| at >= deadline);
            tracing::debug!(%error, retries, ?wait, give_up, "Stack Auth check failed");
            if give_up {
                return Err(match hint {
                    Some(hint) => error.with_retry_after(hint),
                    None => error,
                });
            }
            retries += 1;
            tokio::time::sleep(wait).await;
        }
    }

    /// `base × 2ⁿ`, capped, with equal jitter (half fixed, half random).
    fn backoff(&self, retries: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32.checked_shl(retries).unwrap_or(u32::MAX))
            .min(self.backoff_max);
        let random = rand::rngs::OsRng.try_next_u32().unwrap_or(0);
        let half = exp / 2;
        half + half.mul_f64(f64::from(random) / f64::from(u32::MAX))
    }

    async fn attempt(&self, url: &str, body: Bytes, key: &ApiKey) -> Attempt {
        let sent = self
            .client
            .post(url)
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => return Attempt::Retry(transport(&error), None),
        };
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > self.max_body {
                        return Attempt::Done(Err(VerifyError::new(
                            VerifyErrorKind::Upstream,
                            format!("Stack Auth's answer is larger than {} bytes", self.max_body),
                        )));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(error) => return Attempt::Retry(transport(&error), None),
            }
        }
        self.classify(status, &headers, &body, key)
    }

    fn classify(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        key: &ApiKey,
    ) -> Attempt {
        // A proxy may have turned an error into a 200 the way Stack's SDK asks it to.
        let status = headers
            .get(ACTUAL_STATUS)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u16>().ok())
            .and_then(|v| StatusCode::from_u16(v).ok())
            .unwrap_or(status);
        let upstream = |message: String| VerifyError::new(VerifyErrorKind::Upstream, message);
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            let hint = headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|secs| Duration::from_secs(secs.min(86_400)));
            return Attempt::Retry(upstream(format!("Stack Auth answered {status}")), hint);
        }
        let is_json = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        let result = if status == StatusCode::OK {
            if is_json {
                interpret_ok(body, key).map_err(upstream)
            } else {
                Err(upstream(format!(
                    "Stack Auth answered 200 with content-type {:?}, not JSON",
                    headers.get(CONTENT_TYPE)
                )))
            }
        } else if status.is_client_error() && is_json {
            match serde_json::from_slice::<KnownError>(body) {
                Ok(known) => self.interpret_known_error(status, headers, known),
                Err(_) => Err(upstream(format!(
                    "Stack Auth answered {status} with a body that is not a known error"
                ))),
            }
        } else if status == StatusCode::BAD_REQUEST
            && String::from_utf8_lossy(body).contains("API keys are not enabled")
        {
            Err(self.misconfigured(
                "api-keys-disabled",
                &format!(
                    "Stack Auth says {} API keys are not enabled for this project: enable them in the dashboard (API Keys app)",
                    key.kind()
                ),
            ))
        } else {
            Err(upstream(format!(
                "Stack Auth answered {status} unexpectedly"
            )))
        };
        Attempt::Done(result)
    }

    fn interpret_known_error(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        known: KnownError,
    ) -> Result<Verdict, VerifyError> {
        if let Some(header) = headers.get(KNOWN_ERROR) {
            if header.as_bytes() != known.code.as_bytes() {
                return Err(VerifyError::new(
                    VerifyErrorKind::Upstream,
                    format!(
                        "x-stack-known-error disagrees with the body's code {:?}",
                        known.code
                    ),
                ));
            }
        }
        let invalid = |reason| Ok(Verdict::Invalid(reason));
        match known.code.as_str() {
            "API_KEY_NOT_FOUND" => invalid(InvalidReason::NotFound),
            "WRONG_API_KEY_TYPE" => invalid(InvalidReason::WrongType),
            "API_KEY_REVOKED" => invalid(InvalidReason::Revoked),
            "API_KEY_EXPIRED" => invalid(InvalidReason::Expired),
            "INVALID_SECRET_SERVER_KEY" => Err(self.misconfigured(
                &known.code,
                "Stack Auth rejected the secret server key: check STACK_SECRET_SERVER_KEY (and that it belongs to STACK_PROJECT_ID)",
            )),
            "SERVER_AUTHENTICATION_REQUIRED" => Err(self.misconfigured(
                &known.code,
                "Stack Auth wants a secret server key: set STACK_SECRET_SERVER_KEY",
            )),
            "INSUFFICIENT_ACCESS_TYPE" => Err(self.misconfigured(
                &known.code,
                "Stack Auth refused server access for the check: use a secret server key, not a publishable client key",
            )),
            "CURRENT_PROJECT_NOT_FOUND" | "ACCESS_TYPE_WITHOUT_PROJECT_ID" => Err(self.misconfigured(
                &known.code,
                "Stack Auth does not know this project: check STACK_PROJECT_ID (and STACK_API_URL)",
            )),
            other => Err(self.misconfigured(
                other,
                &format!("Stack Auth answered {status} {other}: {}", known.error),
            )),
        }
    }

    /// An operator must act: log it loudly the first time, quietly after. At most
    /// [`MAX_LOGGED_CAUSES`] causes are remembered (the upstream names them); past that, one
    /// line says further causes are suppressed and new ones are logged quietly.
    fn misconfigured(&self, cause: &str, advice: &str) -> VerifyError {
        let cause = truncate(cause, MAX_CAUSE_LEN);
        let first = {
            let mut logged = self.logged.lock().unwrap_or_else(PoisonError::into_inner);
            if logged.contains(cause) {
                Some(false)
            } else if logged.len() < MAX_LOGGED_CAUSES {
                Some(logged.insert(cause.to_owned()))
            } else {
                None
            }
        };
        match first {
            Some(true) => tracing::error!(cause, "{advice}"),
            Some(false) => tracing::debug!(cause, "Stack Auth still misconfigured"),
            None if !self.logged_overflow.swap(true, Ordering::Relaxed) => tracing::error!(
                cause,
                "{advice} (further new Stack Auth misconfiguration causes are logged at debug level only)"
            ),
            None => tracing::debug!(cause, "{advice}"),
        }
        VerifyError::new(VerifyErrorKind::Misconfigured, advice)
    }
}

fn timeout(after: Duration) -> VerifyError {
    VerifyError::new(
        VerifyErrorKind::Timeout,
        format!("Stack Auth did not answer within {after:?}"),
    )
}

fn transport(error: &reqwest::Error) -> VerifyError {
    let kind = if error.is_timeout() {
        VerifyErrorKind::Timeout
    } else {
        VerifyErrorKind::Transport
    };
    // reqwest's message names the URL, which carries no key.
    VerifyError::new(kind, format!("Stack Auth request failed: {error}"))
}

/// `s`, cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Fields that only Stack Auth's key object has; the `{"is_valid": …}` shape has none of them.
const KEY_OBJECT_FIELDS: [&str; 4] = ["type", "created_at_millis", "value", "description"];

/// A 200 body: Stack Auth's key object, or the `{"is_valid": …}` shape of its public docs.
///
/// A body with any key-object field is read as a key object, whole and strictly, even if it
/// also has `is_valid` (which there can only refuse, never accept); the short shape is only for
/// bodies without them. Either way a revocation or a past expiry refuses the key.
fn interpret_ok(body: &[u8], key: &ApiKey) -> Result<Verdict, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("Stack Auth's 200 is not JSON: {e}"))?;
    let fields = value
        .as_object()
        .ok_or("Stack Auth's 200 is not a JSON object")?;
    let is_valid = match fields.get("is_valid") {
        None => None,
        Some(v) => Some(v.as_bool().ok_or("`is_valid` is not a boolean")?),
    };
    let now = SystemTime::now();
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
mod tests {
    use std::io;

    use serde_json::json;
    use tracing_subscriber::util::SubscriberInitExt;
    use uuid::Uuid;

    use super::*;
    use crate::key::Deployment;

    fn verifier() -> StackAuthVerifier {
        StackAuthVerifier::builder(
            StackAuthConfig::new("6a1f0c52-2b0e-4d8f-9c1a-3e5b7d9f1a2c", "ssk_unit")
                .base_url("http://127.0.0.1:9"),
        )
        .build()
        .expect("verifier")
    }

    fn user_key() -> ApiKey {
        ApiKey::generate(Uuid::new_v4(), KeyKind::User, false, Deployment::SelfHosted).expect("rng")
    }

    /// Log lines, captured in memory.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn errors(&self) -> usize {
            let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|l| l.trim_start().starts_with("ERROR"))
                .count()
        }
    }

    #[test]
    fn logged_causes_stay_bounded() {
        let capture = Capture::default();
        let writer = capture.clone();
        let _default = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .finish()
            .set_default();
        let verifier = verifier();
        let shared = &verifier.shared;
        // An upstream inventing a new error code on every answer, twice over.
        for _ in 0..2 {
            for i in 0..1_000 {
                let error = shared.misconfigured(&format!("MADE_UP_{i}"), "fix it");
                assert_eq!(error.kind(), VerifyErrorKind::Misconfigured);
            }
        }
        let held = shared
            .logged
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        assert_eq!(held, MAX_LOGGED_CAUSES);
        // One loud line per remembered cause, and one saying that the rest are quiet.
        assert_eq!(capture.errors(), MAX_LOGGED_CAUSES + 1);
    }

    #[test]
    fn a_long_cause_is_remembered_truncated() {
        let verifier = verifier();
        let shared = &verifier.shared;
        let long = "é".repeat(10_000);
        shared.misconfigured(&long, "fix it");
        shared.misconfigured(&long, "fix it");
        let logged = shared.logged.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(logged.len(), 1);
        assert!(logged.iter().all(|c| c.len() <= MAX_CAUSE_LEN));
    }

    fn key_object(key: &ApiKey, extra: serde_json::Value) -> Vec<u8> {
        let mut object = json!({
            "id": key.key_id().to_string(),
            "description": "unit",
            "created_at_millis": 1_745_000_000_000_i64,
            "is_public": false,
            "value": { "last_four": key.last_four() },
            "type": "user",
            "user_id": "u1",
        });
        if let (Some(object), Some(extra)) = (object.as_object_mut(), extra.as_object()) {
            object.extend(extra.clone());
        }
        object.to_string().into_bytes()
    }

    #[test]
    fn is_valid_never_overrides_a_key_objects_revocation_or_expiry() {
        let key = user_key();
        let verdict = |extra| interpret_ok(&key_object(&key, extra), &key);
        assert!(verdict(json!({ "is_valid": true }))
            .expect("verdict")
            .is_valid());
        assert_eq!(
            verdict(json!({ "is_valid": true, "manually_revoked_at_millis": 1 })),
            Ok(Verdict::Invalid(InvalidReason::Revoked))
        );
        assert_eq!(
            verdict(json!({ "is_valid": true, "expires_at_millis": 1 })),
            Ok(Verdict::Invalid(InvalidReason::Expired))
        );
        assert_eq!(
            verdict(json!({ "is_valid": false })),
            Ok(Verdict::Invalid(InvalidReason::NotFound))
        );
        assert!(verdict(json!({ "is_valid": null })).is_err());
    }

    #[test]
    fn the_short_form_honours_revocation_and_expiry_and_refuses_nonsense() {
        let key = user_key();
        let verdict = |body: serde_json::Value| interpret_ok(body.to_string().as_bytes(), &key);
        assert!(verdict(json!({ "is_valid": true, "user_id": "u1" }))
            .expect("verdict")
            .is_valid());
        assert_eq!(
            verdict(json!({ "is_valid": true, "user_id": "u1", "manually_revoked_at_millis": 5 })),
            Ok(Verdict::Invalid(InvalidReason::Revoked))
        );
        assert_eq!(
            verdict(json!({ "is_valid": true, "user_id": "u1", "expires_at_millis": 5 })),
            Ok(Verdict::Invalid(InvalidReason::Expired))
        );
        assert_eq!(
            verdict(json!({ "is_valid": true, "team_id": "t1" })),
            Ok(Verdict::Invalid(InvalidReason::WrongType))
        );
        for nonsense in [
            json!({ "is_valid": true, "user_id": "u1", "team_id": "t1" }),
            json!({ "is_valid": true, "user_id": 7 }),
            json!({ "is_valid": true, "user_id": "u1", "expires_at_millis": "soon" }),
            json!({ "is_valid": true, "user_id": "u1", "manually_revoked_at_millis": true }),
            json!({ "is_valid": true, "user_id": "u1", "is_public": "no" }),
            json!({ "is_valid": true, "user_id": "u1", "type": "user" }),
            json!([{ "is_valid": true, "user_id": "u1" }]),
        ] {
            assert!(verdict(nonsense.clone()).is_err(), "{nonsense}");
        }
    }
}
