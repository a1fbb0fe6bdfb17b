//! [`StackAuthVerifier`]: checks keys through Stack Auth's check endpoints.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue};
use rand::TryRngCore;
use tokio::time::Instant;
use tracing::Instrument;

use super::breaker::{Admission, Breaker, ProbeId};
use super::classify::{classify, Classified, MAX_RETRY_AFTER};
use super::{
    default_client, error_chain, ConfigError, StackAuthClient, StackAuthConfig,
    StackAuthVerifierBuilder,
};
use crate::key::{ApiKey, KeyKind};
use crate::stack_protocol::CheckRequest;
use crate::verify::{
    KeyVerifier, RevocationListener, RevocationListeners, Verdict, VerifyError, VerifyErrorKind,
};

/// Distinct misconfiguration causes logged loudly once each; later new causes share one line.
const MAX_LOGGED_CAUSES: usize = 32;
/// Longest cause (an upstream error code) kept in the set of logged causes.
const MAX_CAUSE_LEN: usize = 64;

/// Checks keys with `POST {base}/api/v1/{user,team}-api-keys/check` of Stack Auth (now
/// Hexclave). Cheap to clone.
///
/// - The route comes from the key's own `user`/`team` segment.
/// - 200 → valid (Stack Auth's key object, or the `{"is_valid": …}` shape of its public docs),
///   unless the body says the key is revoked or expired.
/// - The invalid-key known errors (not found, wrong type, revoked, expired) → invalid.
/// - Misconfiguration (bad server key, unknown project, API keys disabled, …) → error, logged
///   once per cause with what to fix.
/// - Connection errors, timeouts, 5xx and 429 → retried with jittered backoff within a total
///   deadline, then an error. `Retry-After` is honoured in seconds or as an HTTP date.
/// - Each route (user keys, team keys) has its own circuit breaker, which answers at once while
///   that route keeps failing; see [`circuit_breaker`](StackAuthVerifierBuilder::circuit_breaker).
///
/// Response headers are read under their `x-hexclave-*` name first, then `x-stack-*`. Requests
/// carry only the `x-stack-*` names: every backend version understands them (an older
/// self-hosted one understands nothing else), and a current one treats both alike.
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
    user: Route,
    team: Route,
    attempt_timeout: Duration,
    deadline: Duration,
    max_retries: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    max_body: usize,
    listeners: Arc<RevocationListeners>,
    /// Misconfiguration causes already logged, at most [`MAX_LOGGED_CAUSES`].
    logged: Mutex<HashSet<String>>,
    /// Whether the "further causes suppressed" line was logged.
    logged_overflow: AtomicBool,
}

/// One check route and its own breaker: an outage or a misconfiguration of one route never
/// refuses keys of the other kind.
struct Route {
    kind: KeyKind,
    url: String,
    breaker: Breaker,
}

impl StackAuthVerifier {
    pub(super) fn from_builder(builder: StackAuthVerifierBuilder) -> Result<Self, ConfigError> {
        let headers = builder.config.headers()?;
        let client = match builder.client {
            Some(client) => client,
            None => default_client()?,
        };
        let route = |kind: KeyKind, path: &str| Route {
            kind,
            url: builder.config.url(path),
            breaker: Breaker::new(builder.breaker_threshold, builder.breaker_cooldown)
                .with_route(kind),
        };
        Ok(StackAuthVerifier {
            shared: Arc::new(Shared {
                user: route(KeyKind::User, "user-api-keys/check"),
                team: route(KeyKind::Team, "team-api-keys/check"),
                config: builder.config,
                client,
                headers,
                attempt_timeout: builder.attempt_timeout,
                deadline: builder.deadline,
                max_retries: builder.max_retries,
                backoff_base: builder.backoff_base,
                backoff_max: builder.backoff_max,
                max_body: builder.max_body,
                listeners: Arc::new(RevocationListeners::default()),
                logged: Mutex::new(HashSet::new()),
                logged_overflow: AtomicBool::new(false),
            }),
        })
    }

    /// A verifier configured by [`StackAuthConfig::from_env`] (`HEXCLAVE_*` or `STACK_*`
    /// variables), with the defaults.
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
        let route = shared.route(key.kind());
        let probe = match route.breaker.admit() {
            Admission::Allowed => None,
            Admission::Probe(probe) => Some(probe),
            Admission::Rejected(wait) => {
                return Err(VerifyError::new(
                    VerifyErrorKind::CircuitOpen,
                    format!(
                        "Stack Auth's {} key check kept failing; not calling it until the breaker's cooldown ends",
                        route.kind
                    ),
                )
                .with_retry_after(wait.min(MAX_RETRY_AFTER)))
            }
        };
        let mut guard = ProbeGuard {
            breaker: &route.breaker,
            probe,
        };
        let span = tracing::debug_span!(
            "keygate.stack_auth.check",
            route = route.kind.as_str(),
            status = tracing::field::Empty,
            attempts = tracing::field::Empty,
        );
        let result = shared.check(&route.url, key).instrument(span).await;
        guard.probe = None;
        match &result {
            // A misconfiguration is an answer, not an outage: see `circuit_breaker`.
            Ok(_) => route.breaker.record_success(),
            Err(error) if error.kind() == VerifyErrorKind::Misconfigured => {
                route.breaker.record_success();
            }
            Err(error) => {
                if route.breaker.record_failure() {
                    tracing::error!(
                        %error,
                        route = %route.kind,
                        "Stack Auth circuit opened: checks of {} keys answer 503 at once until it recovers",
                        route.kind
                    );
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
    fn route(&self, kind: KeyKind) -> &Route {
        match kind {
            KeyKind::User => &self.user,
            KeyKind::Team => &self.team,
        }
    }

    async fn check(&self, url: &str, key: &ApiKey) -> Result<Verdict, VerifyError> {
        // `None`: a deadline too far to add to the clock, i.e. none.
        let deadline = Instant::now().checked_add(self.deadline);
        let body = serde_json::to_vec(&CheckRequest {
            api_key: key.expose_secret().to_owned(),
        })
        .map(Bytes::from)
        .map_err(|e| VerifyError::new(VerifyErrorKind::Upstream, e.to_string()))?;
        // For the span: attempts made, and the last HTTP status answered.
        let (mut attempts, status) = (0u32, AtomicU16::new(0));
        let result = self
            .retried(url, &body, key, deadline, &mut attempts, &status)
            .await;
        let span = tracing::Span::current();
        span.record("attempts", attempts);
        match status.load(Ordering::Relaxed) {
            0 => {}
            status => {
                span.record("status", status);
            }
        }
        result
    }

    /// [`check`](Self::check)'s attempts, retried within `deadline`.
    async fn retried(
        &self,
        url: &str,
        body: &Bytes,
        key: &ApiKey,
        deadline: Option<Instant>,
        attempts: &mut u32,
        status: &AtomicU16,
    ) -> Result<Verdict, VerifyError> {
        let mut retries = 0;
        loop {
            let remaining = deadline.map_or(Duration::MAX, |at| {
                at.saturating_duration_since(Instant::now())
            });
            let per_attempt = self.attempt_timeout.min(remaining);
            let outcome = if per_attempt.is_zero() {
                Attempt::Done(Err(timeout(self.deadline)))
            } else {
                *attempts += 1;
                // `timeout` and `sleep` saturate durations too long for the clock.
                let attempt = self.attempt(url, body.clone(), key, status);
                match tokio::time::timeout(per_attempt, attempt).await {
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
                || match Instant::now().checked_add(wait) {
                    None => true,
                    Some(at) => deadline.is_some_and(|deadline| at >= deadline),
                };
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

    /// `base × 2ⁿ`, capped, with equal jitter (half fixed, half random). Saturates.
    fn backoff(&self, retries: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(1u32.checked_shl(retries).unwrap_or(u32::MAX))
            .min(self.backoff_max);
        let random = rand::rngs::OsRng.try_next_u32().unwrap_or(0);
        let half = exp / 2;
        let fraction = f64::from(random) / f64::from(u32::MAX);
        let jitter = Duration::try_from_secs_f64(half.as_secs_f64() * fraction)
            .unwrap_or(half)
            .min(half);
        half.saturating_add(jitter)
    }

    async fn attempt(&self, url: &str, body: Bytes, key: &ApiKey, last: &AtomicU16) -> Attempt {
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
        last.store(status.as_u16(), Ordering::Relaxed);
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
        self.act_on(classify(status, &headers, &body, key, SystemTime::now()))
    }

    fn act_on(&self, classified: Classified) -> Attempt {
        let upstream = |message: String| VerifyError::new(VerifyErrorKind::Upstream, message);
        match classified {
            Classified::Verdict(verdict) => Attempt::Done(Ok(verdict)),
            Classified::Misconfigured { cause, advice } => {
                Attempt::Done(Err(self.misconfigured(&cause, &advice)))
            }
            Classified::Upstream(message) => Attempt::Done(Err(upstream(message))),
            Classified::Transient {
                message,
                retry_after,
            } => Attempt::Retry(upstream(message), retry_after),
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
    // reqwest's messages name the URL, which carries no key; the causes say what failed.
    VerifyError::new(
        kind,
        format!("Stack Auth request failed: {}", error_chain(error)),
    )
}

/// `s`, cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use std::io;

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    use super::*;

    fn verifier() -> StackAuthVerifier {
        StackAuthVerifier::builder(
            StackAuthConfig::new("6a1f0c52-2b0e-4d8f-9c1a-3e5b7d9f1a2c", "ssk_unit")
                .base_url("http://127.0.0.1:9"),
        )
        .build()
        .expect("verifier")
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
            .with(crate::test_audit::layer())
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

    #[test]
    fn backoff_saturates() {
        let verifier = StackAuthVerifier::builder(
            StackAuthConfig::new("p", "ssk_unit").base_url("http://127.0.0.1:9"),
        )
        .backoff(Duration::MAX, Duration::MAX)
        .build()
        .expect("verifier");
        for retries in [0, 1, 31, 32, 33, u32::MAX] {
            let wait = verifier.shared.backoff(retries);
            assert!(wait >= Duration::MAX / 2, "{retries}: {wait:?}");
        }
        let verifier = StackAuthVerifier::builder(
            StackAuthConfig::new("p", "ssk_unit").base_url("http://127.0.0.1:9"),
        )
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .build()
        .expect("verifier");
        for retries in 0..70 {
            let wait = verifier.shared.backoff(retries);
            assert!(wait <= Duration::from_millis(50), "{retries}: {wait:?}");
        }
    }
}
