//! Forward authentication for reverse proxies (feature `forward-auth`): one axum [`Router`]
//! answering nginx `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth` and Envoy
//! `ext_authz` (HTTP mode) at `/v1/authz` and every path below it, any method.
//!
//! The proxy asks about each client request; keygate checks the API key it carries with
//! [`RequireApiKey`] over your verifier (put a [`CachedVerifier`](crate::CachedVerifier) in
//! front of anything remote) and answers with headers only. The request body is never read.
//!
//! - **Allow**: `200`, empty body, `Cache-Control: no-store`, and always all four identity
//!   headers [`KEY_ID`], [`KEY_TYPE`] (`user`/`team`), [`USER_ID`], [`TEAM_ID`], empty where a
//!   field does not apply, so a proxy that copies them overwrites any copy the client forged.
//! - **Refuse**: keygate's rejection mapping (401 + `WWW-Authenticate` for a missing or invalid
//!   key, 403 for a key of the wrong kind or a refused `pk_` key, 400 for bad credential syntax,
//!   503 + `Retry-After` when the verifier is down) plus [`REASON`], the rejection's code. Rate
//!   limited: 429 + `Retry-After` (or 403, [`ForwardAuth::limit_status`]) with reason
//!   `RATE_LIMITED`. Refusals have no body unless [`ForwardAuth::refusal_bodies`] is on: nginx
//!   closes its keep-alive connection to keygate after any auth answer with a body.
//! - **Original request** (for [`allow_preflight`](ForwardAuth::allow_preflight) and the
//!   `original_method`/`original_uri` fields of the `keygate.authz` span): from a [trusted](TrustedProxies) peer,
//!   `X-Forwarded-Method`/`X-Forwarded-Uri`, else `X-Original-Method` +
//!   `X-Original-URI`/`X-Original-URL`; otherwise the request's own method and its path after
//!   `/v1/authz` (Envoy's `path_prefix`). The query is never logged (it may hold a key).
//! - **Narrowing**: a request header [`REQUIRE`] (`user` or `team`) narrows
//!   [`ForwardAuth::require`] for that request; it can never widen it (a value that contradicts
//!   the configured kind refuses every key with 403, an unknown value is a 400).
//!
//! The peer address comes from axum's `ConnectInfo<SocketAddr>`: serve the router with
//! `into_make_service_with_connect_info::<SocketAddr>()`. A request with no known peer is
//! treated as untrusted.
//!
//! ```
//! use axum::body::Body;
//! use http::{Request, StatusCode};
//! use keygate::forward_auth::{ForwardAuth, Require, KEY_TYPE, REASON, TEAM_ID, USER_ID};
//! use keygate::{CachedVerifier, KeyStore, MemoryKeyStore, NewKey, Owner};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryKeyStore::new();
//! let key = store.create(Owner::user("u-1"), NewKey::new("ci")).await?;
//! let app = ForwardAuth::new(CachedVerifier::new(store))
//!     .require(Require::Any)
//!     .router();
//!
//! let ask = |authorization: Option<String>| {
//!     let mut request = Request::get("/v1/authz/api/orders");
//!     if let Some(value) = authorization {
//!         request = request.header("authorization", value);
//!     }
//!     request.body(Body::empty()).unwrap()
//! };
//! let allowed = app.clone().oneshot(ask(Some(format!("Bearer {}", key.key.expose_secret())))).await?;
//! assert_eq!(allowed.status(), StatusCode::OK);
//! assert_eq!(allowed.headers()[USER_ID], "u-1");
//! assert_eq!(allowed.headers()[KEY_TYPE], "user");
//! assert_eq!(allowed.headers()[TEAM_ID], "");
//!
//! let refused = app.oneshot(ask(None)).await?;
//! assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(refused.headers()[REASON], "API_KEY_MISSING");
//! # Ok(())
//! # }
//! ```

mod trust;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use http::header::CACHE_CONTROL;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use tower_service::Service;
use tracing::Instrument;

pub use trust::{BadTrustedProxy, TrustedProxies};

use crate::extract::KeyExtractor;
use crate::key::KeyKind;
use crate::principal::Principal;
use crate::reject::{BadRequest, DefaultResponder, Rejection, RejectionResponder};
use crate::verify::KeyVerifier;
use crate::RequireApiKey;

/// The forward-auth endpoint; every path below it is answered too.
pub const PATH: &str = "/v1/authz";

/// Response header on a 200: the key's id (a UUID; never the key).
pub const KEY_ID: HeaderName = HeaderName::from_static("x-keygate-key-id");
/// Response header on a 200: `user` or `team` (empty for an allowed preflight).
pub const KEY_TYPE: HeaderName = HeaderName::from_static("x-keygate-key-type");
/// Response header on a 200: the owning user's id, empty for a team key.
pub const USER_ID: HeaderName = HeaderName::from_static("x-keygate-user-id");
/// Response header on a 200: the owning team's id, empty for a user key.
pub const TEAM_ID: HeaderName = HeaderName::from_static("x-keygate-team-id");
/// Response header on a refusal: the rejection's code (`API_KEY_MISSING`, `API_KEY_INVALID`,
/// `INSUFFICIENT_SCOPE`, `INVALID_REQUEST`, `VERIFIER_UNAVAILABLE`, `RATE_LIMITED`).
pub const REASON: HeaderName = HeaderName::from_static("x-keygate-reason");
/// Request header: `user` or `team`, narrowing the accepted key kind for one request.
pub const REQUIRE: HeaderName = HeaderName::from_static("x-keygate-require");

/// The reason sent with a rate-limit refusal.
const RATE_LIMITED: HeaderValue = HeaderValue::from_static("RATE_LIMITED");

/// Which keys are accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Require {
    /// User and team keys (the default).
    #[default]
    Any,
    /// User keys only; a team key gets 403.
    User,
    /// Team keys only; a user key gets 403.
    Team,
}

/// A [`Require`] that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a key kind: expected any, user or team")]
pub struct BadRequire(String);

impl FromStr for Require {
    type Err = BadRequire;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "any" => Ok(Require::Any),
            "user" => Ok(Require::User),
            "team" => Ok(Require::Team),
            _ => Err(BadRequire(s.to_owned())),
        }
    }
}

impl fmt::Display for Require {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Require::Any => "any",
            Require::User => "user",
            Require::Team => "team",
        })
    }
}

impl Require {
    fn index(self) -> usize {
        match self {
            Require::Any => 0,
            Require::User => 1,
            Require::Team => 2,
        }
    }

    /// This requirement narrowed by a request's [`REQUIRE`] header: `Ok` with the narrower
    /// kind, or the rejection for a value that is unknown (400) or contradicts this one (403).
    fn narrow(self, header: Option<&HeaderValue>) -> Result<Require, Rejection> {
        let Some(value) = header else {
            return Ok(self);
        };
        let asked = match value.to_str().ok().map(str::parse::<Require>) {
            Some(Ok(asked)) => asked,
            _ => return Err(Rejection::BadRequest(BadRequest::MalformedHeader)),
        };
        match (self, asked) {
            (current, Require::Any) => Ok(current),
            (Require::Any, narrower) => Ok(narrower),
            (current, asked) if current == asked => Ok(current),
            (_, Require::User) => Err(Rejection::WrongKind {
                required: KeyKind::User,
            }),
            (_, _) => Err(Rejection::WrongKind {
                required: KeyKind::Team,
            }),
        }
    }
}

/// keygate's default refusals plus the [`REASON`] header.
#[derive(Clone, Debug)]
struct ReasonResponder {
    inner: DefaultResponder,
}

impl<B: From<Bytes>> RejectionResponder<B> for ReasonResponder {
    fn respond(&self, rejection: &Rejection) -> http::Response<B> {
        let mut response: http::Response<B> = self.inner.respond(rejection);
        response
            .headers_mut()
            .insert(REASON, HeaderValue::from_static(rejection.code()));
        response
    }
}

/// Builds the forward-auth [`Router`]. See the [module docs](self).
pub struct ForwardAuth<V> {
    verifier: Arc<V>,
    require: Require,
    allow_public_keys: bool,
    allow_preflight: bool,
    extractor: KeyExtractor,
    trusted: TrustedProxies,
    realm: String,
    limit_status: StatusCode,
    refusal_bodies: bool,
    #[cfg(feature = "governor")]
    limits: limits::Limits,
}

impl<V> fmt::Debug for ForwardAuth<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardAuth")
            .field("require", &self.require)
            .field("allow_public_keys", &self.allow_public_keys)
            .field("allow_preflight", &self.allow_preflight)
            .field("extractor", &self.extractor)
            .field("trusted", &self.trusted.to_string())
            .field("realm", &self.realm)
            .field("limit_status", &self.limit_status)
            .finish_non_exhaustive()
    }
}

impl<V: KeyVerifier> ForwardAuth<V> {
    /// Checks keys with `verifier` (wrap it in a [`CachedVerifier`](crate::CachedVerifier)).
    /// Defaults: any key kind, `pk_` keys refused, no preflight exception, `Authorization:
    /// Bearer`, loopback proxies trusted, realm `"keygate"`, no rate limits.
    pub fn new(verifier: V) -> Self {
        Self::from_arc(Arc::new(verifier))
    }

    /// Like [`new`](Self::new), sharing a verifier the application also holds.
    pub fn from_arc(verifier: Arc<V>) -> Self {
        Self {
            verifier,
            require: Require::Any,
            allow_public_keys: false,
            allow_preflight: false,
            extractor: KeyExtractor::new(),
            trusted: TrustedProxies::loopback(),
            realm: "keygate".to_owned(),
            limit_status: StatusCode::TOO_MANY_REQUESTS,
            refusal_bodies: false,
            #[cfg(feature = "governor")]
            limits: limits::Limits::default(),
        }
    }

    /// Which key kinds are accepted (default [`Require::Any`]).
    pub fn require(mut self, require: Require) -> Self {
        self.require = require;
        self
    }

    /// Whether public (`pk_`) keys are accepted (default `false`: 403).
    pub fn allow_public_keys(mut self, allow: bool) -> Self {
        self.allow_public_keys = allow;
        self
    }

    /// When `true`, a request whose original method is `OPTIONS` and that carries no key (a
    /// CORS preflight) is allowed, 200 with empty identity headers. A key it does carry must
    /// still be valid. Default `false`.
    ///
    /// A trusted proxy that sends both `X-Forwarded-Method` and `X-Original-Method` with
    /// different values is passing a client's forgery along with its own header: such a
    /// request is never a preflight. So a proxy that forwards client headers (nginx does) must
    /// always set its own method header (`X-Original-Method $request_method`).
    pub fn allow_preflight(mut self, allow: bool) -> Self {
        self.allow_preflight = allow;
        self
    }

    /// Where keys are looked for (default: `Authorization: Bearer`).
    pub fn extractor(mut self, extractor: KeyExtractor) -> Self {
        self.extractor = extractor;
        self
    }

    /// The peers whose forwarded headers are believed (default [`TrustedProxies::loopback`]).
    pub fn trusted_proxies(mut self, trusted: TrustedProxies) -> Self {
        self.trusted = trusted;
        self
    }

    /// The realm named in `WWW-Authenticate` challenges (default `"keygate"`).
    pub fn realm(mut self, realm: &str) -> Self {
        self.realm = realm.to_owned();
        self
    }

    /// The status of a rate-limit refusal: 429 (the default) or anything else, typically 403
    /// for nginx, which turns an auth answer of 429 into a 500.
    pub fn limit_status(mut self, status: StatusCode) -> Self {
        self.limit_status = status;
        self
    }

    /// Whether refusals carry keygate's JSON body (`{"code": …, "error": …}`). Off by default:
    /// every answer is headers only (the reason is in [`REASON`]), because nginx never reads
    /// an auth answer's body and so closes the keep-alive connection after any answer that has
    /// one. Turn it on for Traefik, Caddy or Envoy, which pass a refusal's body to the client.
    pub fn refusal_bodies(mut self, on: bool) -> Self {
        self.refusal_bodies = on;
        self
    }

    /// The guard for one (kind, preflight) combination, around the allow handler.
    fn guarded(&self, require: Require, preflight: bool) -> Router {
        let mut guard = RequireApiKey::from_arc(Arc::clone(&self.verifier))
            .extractor(self.extractor.clone())
            .allow_public_keys(self.allow_public_keys);
        guard = match require {
            Require::Any => guard.any_principal(),
            Require::User => guard.users_only(),
            Require::Team => guard.teams_only(),
        };
        if preflight {
            guard = guard.optional();
        }
        let guard = guard.responder(ReasonResponder {
            inner: DefaultResponder::new(&self.realm),
        });
        let router = Router::new().fallback(allow);
        #[cfg(feature = "governor")]
        let router = match (&self.limits.per_key, preflight) {
            (Some(limit), false) => router.layer(limit.layer()),
            _ => router,
        };
        router.layer(guard)
    }

    /// The router: `/v1/authz` and `/v1/authz/{*rest}`, any method.
    pub fn router(self) -> Router {
        let guards: Vec<Router> = [Require::Any, Require::User, Require::Team]
            .into_iter()
            .flat_map(|kind| [self.guarded(kind, false), self.guarded(kind, true)])
            .collect();
        let responder = ReasonResponder {
            inner: DefaultResponder::new(&self.realm),
        };
        let shared = Arc::new(Shared {
            guards,
            require: self.require,
            allow_preflight: self.allow_preflight,
            trusted: self.trusted.clone(),
            responder,
        });
        let router = Router::new()
            .route(PATH, any(authz))
            .route(&format!("{PATH}/"), any(authz))
            .route(&format!("{PATH}/{{*rest}}"), any(authz))
            .with_state(shared);
        #[cfg(feature = "governor")]
        let router = match &self.limits.refusals {
            Some(quota) => router.layer(limits::refusal_layer(*quota, self.trusted.clone())),
            None => router,
        };
        let limit_status = self.limit_status;
        let refusal_bodies = self.refusal_bodies;
        router.layer(axum::middleware::map_response(move |response| {
            finish(response, limit_status, refusal_bodies)
        }))
    }
}

/// What every request needs, shared.
struct Shared {
    /// Indexed by `Require::index() * 2 + preflight`.
    guards: Vec<Router>,
    require: Require,
    allow_preflight: bool,
    trusted: TrustedProxies,
    responder: ReasonResponder,
}

/// Reads the original request, picks the guard, and lets it answer.
async fn authz(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let trusted = shared.trusted.trusts(&request);
    let original = trust::Original::read(&request, trusted, PATH);
    let span = tracing::info_span!(
        "keygate.authz",
        original_method = %original.method,
        original_uri = %original.path,
        trusted_peer = trusted,
        conflicting_methods = original.conflicting,
    );
    let require = match shared.require.narrow(request.headers().get(REQUIRE)) {
        Ok(require) => require,
        Err(rejection) => {
            span.in_scope(|| tracing::debug!(%rejection, "X-Keygate-Require refused"));
            return RejectionResponder::<Body>::respond(&shared.responder, &rejection);
        }
    };
    let preflight =
        shared.allow_preflight && original.method == Method::OPTIONS && !original.conflicting;
    let index = require.index() * 2 + usize::from(preflight);
    let Some(guard) = shared.guards.get(index) else {
        return RejectionResponder::<Body>::respond(
            &shared.responder,
            &Rejection::BadRequest(BadRequest::MalformedHeader),
        );
    };
    let mut guard = guard.clone();
    let answer = async move {
        std::future::poll_fn(|cx| Service::<Request>::poll_ready(&mut guard, cx)).await?;
        guard.call(request).await
    };
    let response = match answer.instrument(span.clone()).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "authz answered"));
    response
}

/// The 200: empty body, no-store, all four identity headers.
async fn allow(request: Request) -> Response {
    let principal = request.extensions().get::<Principal>();
    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    let value = |text: &str| HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static(""));
    let (key_id, kind, user, team) = match principal {
        Some(Principal::User(u)) => (u.key_id.to_string(), "user", value(&u.user_id), value("")),
        Some(Principal::Team(t)) => (t.key_id.to_string(), "team", value(""), value(&t.team_id)),
        None => (String::new(), "", value(""), value("")),
    };
    headers.insert(KEY_ID, value(&key_id));
    headers.insert(KEY_TYPE, HeaderValue::from_static(kind));
    headers.insert(USER_ID, user);
    headers.insert(TEAM_ID, team);
    response
}

/// Every answer: `Cache-Control: no-store`; a rate-limit refusal gets its reason and the
/// configured status; a refusal loses its body unless [`ForwardAuth::refusal_bodies`] is on.
async fn finish(
    mut response: Response,
    limit_status: StatusCode,
    refusal_bodies: bool,
) -> Response {
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        response.headers_mut().insert(REASON, RATE_LIMITED);
        *response.status_mut() = limit_status;
    }
    if !refusal_bodies && response.status() != StatusCode::OK {
        let (mut parts, _body) = response.into_parts();
        parts.headers.remove(http::header::CONTENT_TYPE);
        parts.headers.remove(http::header::CONTENT_LENGTH);
        response = Response::from_parts(parts, Body::empty());
    }
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(feature = "governor")]
mod limits;
