//! Rate limits on the forward-auth router (feature `governor`): per key or owner inside the
//! guard, and the refused-keys limit per client address outside it.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::Body;
use governor::middleware::StateInformationMiddleware;
use http::Request;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor as GovernorKeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};

use super::{ForwardAuth, TrustedProxies};
use crate::rate_limit::{error_response, PrincipalKey, Quota, RefusalLimitLayer};
use crate::verify::KeyVerifier;

/// The configured limits.
#[derive(Clone, Debug, Default)]
pub(super) struct Limits {
    pub(super) per_key: Option<PerKey>,
    pub(super) refusals: Option<Quota>,
}

/// A per-key (or per-owner) limit.
#[derive(Clone)]
pub(super) struct PerKey {
    layer: GovernorLayer<PrincipalKey, StateInformationMiddleware, Body>,
}

impl std::fmt::Debug for PerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerKey").finish_non_exhaustive()
    }
}

impl PerKey {
    pub(super) fn layer(&self) -> GovernorLayer<PrincipalKey, StateInformationMiddleware, Body> {
        self.layer.clone()
    }
}

/// The client address for the refused-keys limit: forwarded headers from trusted peers only.
#[derive(Clone, Debug)]
pub(super) struct TrustedClientIp {
    trusted: TrustedProxies,
}

impl GovernorKeyExtractor for TrustedClientIp {
    type Key = IpAddr;

    fn name(&self) -> &'static str {
        "client IP"
    }

    fn extract<T>(&self, req: &Request<T>) -> Result<IpAddr, GovernorError> {
        self.trusted
            .client_ip(req)
            .ok_or(GovernorError::UnableToExtractKey)
    }

    fn key_name(&self, key: &IpAddr) -> Option<String> {
        Some(key.to_string())
    }
}

pub(super) fn refusal_layer(
    quota: Quota,
    trusted: TrustedProxies,
) -> RefusalLimitLayer<TrustedClientIp> {
    RefusalLimitLayer::with_key_extractor(quota, TrustedClientIp { trusted })
}

impl<V: KeyVerifier> ForwardAuth<V> {
    /// Limits each key (or each owner, with [`PrincipalKey::per_owner`]) to `per_second`
    /// requests a second after a burst of `burst`. Over the limit: 429 (or
    /// [`limit_status`](Self::limit_status)) with `Retry-After`, the `x-ratelimit-*` headers
    /// and reason `RATE_LIMITED`. Refused requests cost no quota; allowed preflights (no key)
    /// are not limited.
    pub fn rate_limit(
        mut self,
        per_second: NonZeroU32,
        burst: NonZeroU32,
        by: PrincipalKey,
    ) -> Self {
        let period = Duration::from_secs(1) / per_second.get();
        let config = GovernorConfigBuilder::default()
            .period(period.max(Duration::from_nanos(1)))
            .burst_size(burst.get())
            .key_extractor(by)
            .use_headers()
            .finish();
        self.limits.per_key = config.map(|config| PerKey {
            layer: GovernorLayer::new(config).error_handler(error_response),
        });
        self
    }

    /// Throttles a client address that keeps presenting refused keys (brute force): see
    /// [`RefusalLimitLayer`], here keyed by the client address, read from `X-Forwarded-For` /
    /// `X-Real-IP` only when the peer is a [trusted proxy](Self::trusted_proxies) and from the
    /// peer address otherwise. For example `Quota::per_minute(n)`: `n` refusals a minute.
    pub fn refusal_limit(mut self, quota: Quota) -> Self {
        self.limits.refusals = Some(quota);
        self
    }
}
