//! [`StackAuthVerifierBuilder`]: the verifier's knobs and their defaults.

use std::time::Duration;

use super::{ConfigError, StackAuthConfig, StackAuthVerifier};

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
/// Default backoff before the first retry (doubling from there).
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Default cap on one backoff.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Builds a [`StackAuthVerifier`].
#[must_use]
pub struct StackAuthVerifierBuilder {
    pub(super) config: StackAuthConfig,
    pub(super) client: Option<reqwest::Client>,
    pub(super) attempt_timeout: Duration,
    pub(super) deadline: Duration,
    pub(super) max_retries: u32,
    pub(super) backoff_base: Duration,
    pub(super) backoff_max: Duration,
    pub(super) max_body: usize,
    pub(super) breaker_threshold: u32,
    pub(super) breaker_cooldown: Duration,
}

impl StackAuthVerifierBuilder {
    /// Uses this client (connection pool, TLS, proxy settings) instead of building one.
    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Time one attempt may take (default 1 s). `Duration::MAX` means no limit of its own.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Time all attempts and backoffs together may take (default 3 s). A deadline too far to
    /// add to the clock (`Duration::MAX`) means none.
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
    /// and 500 ms). A 5xx's or 429's `Retry-After` is used instead. A wait that does not fit in
    /// the deadline (or cannot be added to the clock) ends the retries.
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
    /// probes once (defaults 5 and 10 s). A threshold of 0 disables the breaker. A cooldown too
    /// long for the clock (`Duration::MAX`) saturates at a century; the `Retry-After` it causes
    /// is capped at one day.
    ///
    /// There is one breaker per check route, user keys and team keys, each with these settings:
    /// anyone can mint well-formed keys of either kind, so failures of one route must never
    /// refuse keys of the other.
    ///
    /// Only outages count as failures: connection errors, timeouts, 5xx, 429 and answers that
    /// make no sense. A misconfiguration answer (a refused server key, an unknown project, API
    /// keys of this kind not enabled) does not: it proves the route is up and answering at
    /// once, so opening the circuit would save no time, would hide the precise error and its
    /// logged advice behind "circuit open", and would keep refusing keys for a cooldown after
    /// the operator fixes it. Such an answer closes the circuit like a verdict does.
    pub fn circuit_breaker(mut self, threshold: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cooldown = cooldown;
        self
    }

    /// Builds the verifier: the headers and URLs are prepared here, once.
    pub fn build(self) -> Result<StackAuthVerifier, ConfigError> {
        StackAuthVerifier::from_builder(self)
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
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            max_body: DEFAULT_MAX_BODY_BYTES,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
        }
    }
}
