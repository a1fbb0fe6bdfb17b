//! Metrics, through the [`metrics`](https://docs.rs/metrics) facade (feature `metrics`), and the
//! `tracing` spans keygate opens.
//!
//! keygate only records: install any `metrics` recorder (for example
//! `metrics-exporter-prometheus`) to collect them. Without a recorder each record is a no-op
//! lookup; without the feature none of this is compiled in. Every label value is one of a fixed
//! few: no key, key id, owner id or path is ever a label.
//!
//! | Metric | Type | Labels | What |
//! |---|---|---|---|
//! | `keygate_requests_total` | counter | `outcome`, `kind` | requests through [`RequireApiKey`](crate::RequireApiKey) |
//! | `keygate_cache_hits_total` | counter | | answered by a cached valid verdict |
//! | `keygate_cache_negative_hits_total` | counter | | answered by a cached invalid verdict |
//! | `keygate_cache_misses_total` | counter | | found nothing cached |
//! | `keygate_cache_evictions_total` | counter | `tier`, `cause` | cached verdicts dropped for capacity or at the end of their TTL |
//! | `keygate_verifier_calls_total` | counter | | calls of the verifier a [`CachedVerifier`](crate::CachedVerifier) wraps |
//! | `keygate_verifier_errors_total` | counter | `kind` | those calls that failed |
//! | `keygate_verifier_duration_seconds` | histogram | | how long those calls took |
//! | `keygate_stack_auth_breaker_state` | gauge | `route` | 0 closed, 1 open, 2 half-open (probing) |
//! | `keygate_fleet_revocations_total` | counter | `feed` | revocations a fleet feed received |
//! | `keygate_fleet_ignored_payloads_total` | counter | `feed` | feed payloads that were not a key id |
//! | `keygate_fleet_revocation_lag_seconds` | histogram | `feed` | from a revocation's change (the database's, or the publisher's, clock) to the feed's invalidation |
//!
//! Label values:
//! - `outcome`: `pass` (a valid key), `anonymous` (no key, let through in optional mode),
//!   `missing` (401), `malformed` (401, the key breaks the format), `bad_request` (400, broken
//!   credential syntax or two keys), `invalid` (401, the verifier says no),
//!   `insufficient_scope` (403, a kind or a `pk_` key the route refuses), `unavailable` (503).
//! - `kind` on requests: `user`, `team` (what the key says of itself), `unknown` (no key, or one
//!   too broken to tell).
//! - `kind` on verifier errors: `timeout`, `transport`, `upstream`, `misconfigured`,
//!   `circuit_open`, `store`.
//! - `route`: `user`, `team`. `feed`: `postgres`, `redis`, `sqlite`.
//! - `tier`: `valid` (valid verdicts), `invalid` (invalid verdicts, bounded apart). `cause`:
//!   `size` (evicted for capacity), `expired` (TTL, or the key's own expiry, reached).
//!
//! The lag is recorded for payloads that carry the revocation's time (the current trigger and
//! publisher send it; a bare key id from an older one counts as a revocation, without a lag),
//! clamped at zero when the sender's clock runs ahead, and dropped past a day (a clock gone
//! wrong). It spans two clocks: on one host it is exact, across hosts it is as good as their
//! clock sync.
//!
//! Evictions are counted by an eviction listener on the caches, registered only with this
//! feature (without it the caches have none, and their inserts pay nothing for it). Explicit
//! invalidations (revocations, `invalidate*`, feeds) and verdicts replaced by newer ones are not
//! evictions. Moka reports an eviction when it does its housekeeping (on later reads and writes,
//! or `CachedVerifier::run_pending_tasks`), not the instant a TTL ends; a valid verdict's expiry
//! (its own per entry) is seen within about a second of it.
//!
//! Spans (on by default; no feature needed), created as children of the current span, so a
//! `TraceLayer`'s request span contains them:
//! - `keygate.verify` (DEBUG), one per request through the layer: `outcome` (as above),
//!   `key_id` (never the key) and `kind` once the key's structure is read.
//! - `keygate.stack_auth.check` (DEBUG), around `StackAuthVerifier`'s remote check, inside
//!   `keygate.verify`: `route`, `status` (the last upstream HTTP status, if any answered) and
//!   `attempts`.
#![cfg_attr(not(feature = "metrics"), allow(dead_code, unused_variables))]

use std::cell::Cell;

use tracing::field::{display, Empty};
use tracing::level_filters::LevelFilter;
use tracing::Span;

use crate::key::{KeyKind, KeyParts};
use crate::reject::Rejection;
use crate::verify::VerifyErrorKind;

/// A counter with a literal name and literal labels: a static key, no allocation.
#[cfg(feature = "metrics")]
macro_rules! count {
    ($($args:tt)*) => {
        ::metrics::counter!($($args)*).increment(1)
    };
}

/// How a request through the layer ended (the `outcome` label and span field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Pass,
    Anonymous,
    Missing,
    Malformed,
    BadRequest,
    Invalid,
    InsufficientScope,
    Unavailable,
}

impl Outcome {
    pub(crate) fn of(rejection: &Rejection) -> Self {
        match rejection {
            Rejection::Missing => Outcome::Missing,
            Rejection::Malformed(_) => Outcome::Malformed,
            Rejection::BadRequest(_) => Outcome::BadRequest,
            Rejection::Invalid(_) => Outcome::Invalid,
            Rejection::WrongKind { .. } | Rejection::PublicKeyRefused => Outcome::InsufficientScope,
            Rejection::Unavailable(_) => Outcome::Unavailable,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Anonymous => "anonymous",
            Outcome::Missing => "missing",
            Outcome::Malformed => "malformed",
            Outcome::BadRequest => "bad_request",
            Outcome::Invalid => "invalid",
            Outcome::InsufficientScope => "insufficient_scope",
            Outcome::Unavailable => "unavailable",
        }
    }
}

/// One request's `keygate.verify` span and what it learnt of the key.
pub(crate) struct Trace {
    span: Span,
    kind: Cell<Option<KeyKind>>,
}

impl Trace {
    /// Opens the span, as a child of the current one.
    #[inline]
    pub(crate) fn start() -> Self {
        // Below DEBUG everywhere (or no subscriber at all): `Span::none()`, which, unlike the
        // macro's disabled span, costs nothing to enter and drop when `tracing` forwards to `log`.
        let span = if tracing::Level::DEBUG <= LevelFilter::current() {
            tracing::debug_span!(
                "keygate.verify",
                outcome = Empty,
                key_id = Empty,
                kind = Empty
            )
        } else {
            Span::none()
        };
        Self {
            span,
            kind: Cell::new(None),
        }
    }

    pub(crate) fn span(&self) -> &Span {
        &self.span
    }

    /// What the key says of itself: its id and kind (never the key).
    #[inline]
    pub(crate) fn key(&self, parts: &KeyParts) {
        self.kind.set(Some(parts.kind));
        if !self.span.is_disabled() {
            self.span.record("key_id", display(parts.key_id));
            self.span.record("kind", parts.kind.as_str());
        }
    }

    /// A request that passed: with a key, or without one in optional mode.
    #[inline]
    pub(crate) fn pass(&self) {
        self.finish(match self.kind.get() {
            Some(_) => Outcome::Pass,
            None => Outcome::Anonymous,
        });
    }

    #[inline]
    pub(crate) fn finish(&self, outcome: Outcome) {
        if !self.span.is_disabled() {
            self.span.record("outcome", outcome.as_str());
        }
        #[cfg(feature = "metrics")]
        request(outcome, self.kind.get());
    }
}

#[cfg(feature = "metrics")]
fn request(outcome: Outcome, kind: Option<KeyKind>) {
    macro_rules! by_kind {
        ($outcome:literal) => {
            match kind {
                Some(KeyKind::User) => {
                    count!("keygate_requests_total", "outcome" => $outcome, "kind" => "user")
                }
                Some(KeyKind::Team) => {
                    count!("keygate_requests_total", "outcome" => $outcome, "kind" => "team")
                }
                None => count!("keygate_requests_total", "outcome" => $outcome, "kind" => "unknown"),
            }
        };
    }
    match outcome {
        Outcome::Pass => by_kind!("pass"),
        Outcome::Anonymous => by_kind!("anonymous"),
        Outcome::Missing => by_kind!("missing"),
        Outcome::Malformed => by_kind!("malformed"),
        Outcome::BadRequest => by_kind!("bad_request"),
        Outcome::Invalid => by_kind!("invalid"),
        Outcome::InsufficientScope => by_kind!("insufficient_scope"),
        Outcome::Unavailable => by_kind!("unavailable"),
    }
}

/// A cache hit (valid verdict).
#[inline]
pub(crate) fn cache_hit() {
    #[cfg(feature = "metrics")]
    count!("keygate_cache_hits_total");
}

/// A cache hit on an invalid verdict.
#[inline]
pub(crate) fn cache_negative_hit() {
    #[cfg(feature = "metrics")]
    count!("keygate_cache_negative_hits_total");
}

/// A cache miss.
#[inline]
pub(crate) fn cache_miss() {
    #[cfg(feature = "metrics")]
    count!("keygate_cache_misses_total");
}

/// Times one call of a wrapped verifier (nothing without the feature).
pub(crate) struct VerifierCall {
    #[cfg(feature = "metrics")]
    started: std::time::Instant,
}

impl VerifierCall {
    /// Counts the call and starts its clock.
    #[inline]
    pub(crate) fn start() -> Self {
        #[cfg(feature = "metrics")]
        count!("keygate_verifier_calls_total");
        Self {
            #[cfg(feature = "metrics")]
            started: std::time::Instant::now(),
        }
    }

    /// Records its duration, and its error's kind if it failed.
    #[inline]
    pub(crate) fn end(self, error: Option<VerifyErrorKind>) {
        #[cfg(feature = "metrics")]
        {
            ::metrics::histogram!("keygate_verifier_duration_seconds")
                .record(self.started.elapsed().as_secs_f64());
            match error {
                None => {}
                Some(VerifyErrorKind::Timeout) => {
                    count!("keygate_verifier_errors_total", "kind" => "timeout")
                }
                Some(VerifyErrorKind::Transport) => {
                    count!("keygate_verifier_errors_total", "kind" => "transport")
                }
                Some(VerifyErrorKind::Upstream) => {
                    count!("keygate_verifier_errors_total", "kind" => "upstream")
                }
                Some(VerifyErrorKind::Misconfigured) => {
                    count!("keygate_verifier_errors_total", "kind" => "misconfigured")
                }
                Some(VerifyErrorKind::CircuitOpen) => {
                    count!("keygate_verifier_errors_total", "kind" => "circuit_open")
                }
                Some(VerifyErrorKind::Store) => {
                    count!("keygate_verifier_errors_total", "kind" => "store")
                }
            }
        }
    }
}

/// A Stack Auth route's breaker state: 0 closed, 1 open, 2 half-open.
#[cfg(feature = "stack-auth")]
pub(crate) fn breaker_state(route: KeyKind, state: f64) {
    #[cfg(feature = "metrics")]
    match route {
        KeyKind::User => {
            ::metrics::gauge!("keygate_stack_auth_breaker_state", "route" => "user").set(state)
        }
        KeyKind::Team => {
            ::metrics::gauge!("keygate_stack_auth_breaker_state", "route" => "team").set(state)
        }
    }
}

/// A cache tier (`valid`, else `invalid`) dropped an entry. Counted: evictions for capacity
/// (`size`) and at the end of a TTL or of the key's validity (`expired`); not explicit
/// invalidations, nor entries replaced by a newer verdict.
#[cfg(feature = "metrics")]
pub(crate) fn cache_eviction(valid: bool, cause: moka::notification::RemovalCause) {
    use moka::notification::RemovalCause;
    match (valid, cause) {
        (true, RemovalCause::Size) => {
            count!("keygate_cache_evictions_total", "tier" => "valid", "cause" => "size")
        }
        (true, RemovalCause::Expired) => {
            count!("keygate_cache_evictions_total", "tier" => "valid", "cause" => "expired")
        }
        (false, RemovalCause::Size) => {
            count!("keygate_cache_evictions_total", "tier" => "invalid", "cause" => "size")
        }
        (false, RemovalCause::Expired) => {
            count!("keygate_cache_evictions_total", "tier" => "invalid", "cause" => "expired")
        }
        (_, RemovalCause::Explicit | RemovalCause::Replaced) => {}
    }
}

/// A fleet feed received a revocation (`revoked`) or a payload that is not a key id.
#[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
pub(crate) fn fleet_payload(feed: &'static str, revoked: bool) {
    #[cfg(feature = "metrics")]
    match (feed, revoked) {
        ("postgres", true) => count!("keygate_fleet_revocations_total", "feed" => "postgres"),
        ("postgres", false) => {
            count!("keygate_fleet_ignored_payloads_total", "feed" => "postgres")
        }
        ("redis", true) => count!("keygate_fleet_revocations_total", "feed" => "redis"),
        ("redis", false) => count!("keygate_fleet_ignored_payloads_total", "feed" => "redis"),
        ("sqlite", true) => count!("keygate_fleet_revocations_total", "feed" => "sqlite"),
        ("sqlite", false) => count!("keygate_fleet_ignored_payloads_total", "feed" => "sqlite"),
        (_, true) => count!("keygate_fleet_revocations_total", "feed" => "other"),
        (_, false) => count!("keygate_fleet_ignored_payloads_total", "feed" => "other"),
    }
}

/// How long a revocation took from its commit (by the sender's clock) to the feed's
/// invalidation.
#[cfg(any(feature = "postgres", feature = "redis", feature = "sqlite"))]
pub(crate) fn fleet_lag(feed: &'static str, lag: std::time::Duration) {
    #[cfg(feature = "metrics")]
    {
        let feed = match feed {
            "postgres" => "postgres",
            "redis" => "redis",
            "sqlite" => "sqlite",
            _ => "other",
        };
        ::metrics::histogram!("keygate_fleet_revocation_lag_seconds", "feed" => feed)
            .record(lag.as_secs_f64());
    }
}
