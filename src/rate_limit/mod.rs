//! Rate limits over [`tower_governor`] and [`governor`] (feature `governor`).
//!
//! - [`PrincipalKey`]: a [`tower_governor`] key extractor that buckets requests by the verified
//!   key id ([`PrincipalKey::per_key`]) or by its owner ([`PrincipalKey::per_owner`]; a user and
//!   a team with the same id string are different owners). It reads the [`Principal`] that
//!   [`RequireApiKey`](crate::RequireApiKey) puts in the request extensions, so the
//!   [`GovernorLayer`](tower_governor::GovernorLayer) must run *inside* `RequireApiKey` (in axum,
//!   `.layer(governor)` first, then `.layer(require_api_key)`). Refused requests never reach it
//!   and cost no quota.
//! - [`RefusalLimitLayer`]: throttles a client (by [`ClientIp`]) that keeps sending refused keys
//!   (OWASP brute force). It runs *outside* `RequireApiKey`, charges only the refusals (401, and
//!   400 with a `WWW-Authenticate` challenge), and once a client's bucket is empty answers 429 before any verification, whatever
//!   key the request carries.
//! - [`error_response`]: 429s (and the other [`GovernorError`]s) as keygate's JSON bodies, for
//!   [`GovernorLayer::error_handler`](tower_governor::GovernorLayer::error_handler).
//!
//! **A request without a principal** (the limiter placed outside `RequireApiKey`, or an
//! optional route called without a key) is not let through unlimited: by default every such
//! request shares one bucket, [`RateKey::Anonymous`]; [`PrincipalKey::refuse_anonymous`]
//! answers them 401 instead.
//!
//! With [`use_headers`](tower_governor::governor::GovernorConfigBuilder::use_headers), every
//! response carries `x-ratelimit-limit` and `x-ratelimit-remaining`, and a 429 also
//! `x-ratelimit-after` and `retry-after` (tower_governor's whole seconds, rounded down;
//! [`error_response`] rounds `retry-after` up, so a client that waits that long is let in).

mod refusals;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use tower_governor::key_extractor::KeyExtractor as GovernorKeyExtractor;
use tower_governor::GovernorError;
use uuid::Uuid;

use crate::principal::Principal;

pub use governor::Quota;
pub use refusals::{RefusalLimit, RefusalLimitLayer, RefusalLimitResponseFuture};

/// The bucket a request is counted in by [`PrincipalKey`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// One API key (per-key limits).
    Key(Uuid),
    /// Every key of one user (per-owner limits).
    User(Arc<str>),
    /// Every key of one team (per-owner limits).
    Team(Arc<str>),
    /// Every request that carries no principal, together.
    Anonymous,
}

/// What [`PrincipalKey`] buckets by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum By {
    Key,
    Owner,
}

/// A [`tower_governor`] key extractor over the [`Principal`] in the request extensions: per
/// key id or per owner. See the [module docs](self) for placement and keyless requests.
///
/// ```
/// use keygate::rate_limit::PrincipalKey;
/// use tower_governor::governor::GovernorConfigBuilder;
///
/// let config = GovernorConfigBuilder::default()
///     .per_second(1) // one request back every second…
///     .burst_size(20) // …after a burst of 20
///     .key_extractor(PrincipalKey::per_key())
///     .use_headers()
///     .finish()
///     .expect("non-zero period and burst");
/// # let _ = config;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrincipalKey {
    by: By,
    refuse_anonymous: bool,
}

impl PrincipalKey {
    /// One bucket per API key id.
    pub fn per_key() -> Self {
        Self {
            by: By::Key,
            refuse_anonymous: false,
        }
    }

    /// One bucket per owner: all the keys of a user share one, all the keys of a team another.
    pub fn per_owner() -> Self {
        Self {
            by: By::Owner,
            refuse_anonymous: false,
        }
    }

    /// Answers a request without a principal 401 (`WWW-Authenticate: Bearer`, code
    /// `API_KEY_MISSING`) instead of counting it in the shared [`RateKey::Anonymous`] bucket.
    /// For routes that always sit behind a required `RequireApiKey`: a misordered stack then
    /// refuses everything instead of limiting everyone together.
    pub fn refuse_anonymous(mut self) -> Self {
        self.refuse_anonymous = true;
        self
    }

    /// The bucket of `principal`.
    pub fn key_of(&self, principal: &Principal) -> RateKey {
        match (self.by, principal) {
            (By::Key, p) => RateKey::Key(p.key_id()),
            (By::Owner, Principal::User(u)) => RateKey::User(u.user_id.clone()),
            (By::Owner, Principal::Team(t)) => RateKey::Team(t.team_id.clone()),
        }
    }
}

impl GovernorKeyExtractor for PrincipalKey {
    type Key = RateKey;

    fn name(&self) -> &'static str {
        match self.by {
            By::Key => "API key",
            By::Owner => "API key owner",
        }
    }

    fn extract<T>(&self, req: &Request<T>) -> Result<RateKey, GovernorError> {
        match req.extensions().get::<Principal>() {
            Some(principal) => Ok(self.key_of(principal)),
            None if self.refuse_anonymous => {
                let mut headers = HeaderMap::new();
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                Err(GovernorError::Other {
                    code: StatusCode::UNAUTHORIZED,
                    msg: Some(body("API_KEY_MISSING", "An API key is required.")),
                    headers: Some(headers),
                })
            }
            None => Ok(RateKey::Anonymous),
        }
    }

    fn key_name(&self, key: &RateKey) -> Option<String> {
        // Ids only: never a key.
        Some(match key {
            RateKey::Key(id) => id.to_string(),
            RateKey::User(id) => format!("user {id}"),
            RateKey::Team(id) => format!("team {id}"),
            RateKey::Anonymous => "anonymous".to_owned(),
        })
    }
}

/// A client's IP address, for [`RefusalLimitLayer`] (or a [`GovernorLayer`](
/// tower_governor::GovernorLayer)): the peer address, or an address a trusted proxy writes in a
/// header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIp {
    header: Option<HeaderName>,
}

impl ClientIp {
    /// The peer address: axum's `ConnectInfo<SocketAddr>` (serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`), or a bare `SocketAddr` extension.
    pub fn peer() -> Self {
        Self { header: None }
    }

    /// The last address in `header` (e.g. `x-forwarded-for`, `x-real-ip`): the one your own
    /// proxy appended, which the client cannot forge. Only behind a proxy that always sets it;
    /// a request without a parseable address falls back to the peer address.
    pub fn header(header: HeaderName) -> Self {
        Self {
            header: Some(header),
        }
    }

    fn forwarded<T>(&self, req: &Request<T>) -> Option<IpAddr> {
        let header = self.header.as_ref()?;
        let value = req.headers().get_all(header).iter().next_back()?;
        let last = value.to_str().ok()?.rsplit(',').next()?.trim();
        last.parse::<IpAddr>()
            .ok()
            .or_else(|| last.parse::<SocketAddr>().ok().map(|a| a.ip()))
    }
}

impl GovernorKeyExtractor for ClientIp {
    type Key = IpAddr;

    fn name(&self) -> &'static str {
        "client IP"
    }

    fn extract<T>(&self, req: &Request<T>) -> Result<IpAddr, GovernorError> {
        let extensions = req.extensions();
        self.forwarded(req)
            .or_else(|| {
                extensions
                    .get::<axum::extract::ConnectInfo<SocketAddr>>()
                    .map(|info| info.0.ip())
            })
            .or_else(|| extensions.get::<SocketAddr>().map(SocketAddr::ip))
            .ok_or(GovernorError::UnableToExtractKey)
    }

    fn key_name(&self, key: &IpAddr) -> Option<String> {
        Some(key.to_string())
    }
}

/// keygate's JSON body: `{"code": …, "error": …}`.
fn body(code: &str, message: &str) -> String {
    serde_json::json!({ "code": code, "error": message }).to_string()
}

/// The 429 body.
pub(crate) const RATE_LIMITED: &str = "RATE_LIMITED";

/// A [`GovernorError`] as a keygate response, for
/// [`GovernorLayer::error_handler`](tower_governor::GovernorLayer::error_handler): a 429 gets
/// the JSON body `{"code": "RATE_LIMITED", …}`, `cache-control: no-store`, tower_governor's
/// headers, and a `retry-after` rounded up to a whole second (at least 1).
pub fn error_response(error: GovernorError) -> Response<Body> {
    let (status, text, headers) = match error {
        GovernorError::TooManyRequests { wait_time, headers } => {
            let mut headers = headers.unwrap_or_default();
            // tower_governor rounds down; the true wait is under one more second.
            headers.insert(RETRY_AFTER, HeaderValue::from(wait_time.saturating_add(1)));
            let text = body(RATE_LIMITED, "Too many requests; retry later.");
            (StatusCode::TOO_MANY_REQUESTS, text, headers)
        }
        GovernorError::UnableToExtractKey => {
            let text = body("RATE_LIMIT_UNAVAILABLE", "The rate limit has no key.");
            (StatusCode::INTERNAL_SERVER_ERROR, text, HeaderMap::new())
        }
        GovernorError::Other { code, msg, headers } => {
            let text = msg.unwrap_or_else(|| body("RATE_LIMITED", "Request refused."));
            (code, text, headers.unwrap_or_default())
        }
    };
    json_response(status, Bytes::from(text), headers)
}

/// A JSON response with `cache-control: no-store` and `headers`.
pub(crate) fn json_response<B: From<Bytes>>(
    status: StatusCode,
    text: Bytes,
    headers: HeaderMap,
) -> Response<B> {
    let mut response = Response::new(B::from(text));
    *response.status_mut() = status;
    let all = response.headers_mut();
    all.extend(headers);
    all.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    all.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
