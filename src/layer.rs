//! [`RequireApiKey`]: the tower layer that guards a service with API keys.
//!
//! For each request the service: finds the key ([`KeyExtractor`]); rejects a malformed key with
//! no I/O; asks the verifier's cache by the key's digest ([`KeyVerifier::cached_verdict`]), and
//! on a miss checks the rest of the format and asks the verifier, which answers at once (no boxed
//! future) or asynchronously; applies the route's policy; and inserts [`Principal`] plus
//! [`AuthenticatedUser`](crate::AuthenticatedUser) or
//! [`AuthenticatedTeam`](crate::AuthenticatedTeam) into the request extensions before calling
//! the inner service. Refusals are answered by the [`RejectionResponder`] without calling the
//! inner service.
//!
//! It works on any `Service<http::Request<B>, Response = http::Response<ResB>>`: axum, hyper,
//! tonic-style services.
//!
//! ```
//! use axum::{routing::get, Router};
//! use keygate::{AuthenticatedUser, CachedVerifier, MemoryKeyStore, RequireApiKey};
//!
//! async fn me(user: AuthenticatedUser) -> String {
//!     user.user_id.to_string()
//! }
//!
//! let store = MemoryKeyStore::new();
//! let app: Router = Router::new()
//!     .route("/me", get(me))
//!     .layer(RequireApiKey::new(CachedVerifier::new(store)).users_only());
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::extract::{Found, KeyExtractor};
use crate::key::{parse_structure, ApiKey, FormatError, KeyDigest, KeyKind, KeyParts};
use crate::principal::Principal;
use crate::reject::{DefaultResponder, Rejection, RejectionResponder};
use crate::verify::{InvalidReason, KeyVerifier, Verdict, VerifyError};

/// What a route does when a request carries no key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// No key, no entry: 401 (the default).
    #[default]
    Required,
    /// A request without a key passes through untouched; a key that is present must still be
    /// valid (and of an allowed kind), or the request is refused.
    Optional,
}

/// A tower layer that requires an API key. See the [module docs](self).
pub struct RequireApiKey<V, R = DefaultResponder> {
    guard: Arc<Guard<V, R>>,
}

impl<V, R> Clone for RequireApiKey<V, R> {
    fn clone(&self) -> Self {
        Self {
            guard: Arc::clone(&self.guard),
        }
    }
}

impl<V, R: std::fmt::Debug> std::fmt::Debug for RequireApiKey<V, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireApiKey")
            .field("extractor", &self.guard.extractor)
            .field("kind", &self.guard.kind)
            .field("allow_public", &self.guard.allow_public)
            .field("mode", &self.guard.mode)
            .field("strip_credentials", &self.guard.strip)
            .field("responder", &self.guard.responder)
            .finish_non_exhaustive()
    }
}

/// Everything a request needs, built once and shared by every clone of the service: a
/// request clones one `Arc`, nothing else.
struct Guard<V, R> {
    verifier: Arc<V>,
    extractor: KeyExtractor,
    kind: Option<KeyKind>,
    allow_public: bool,
    mode: Mode,
    strip: bool,
    /// The realm's challenges, for the axum extractors' refusals on keyless requests.
    challenge: DefaultResponder,
    responder: R,
}

impl<V, R: Clone> Clone for Guard<V, R> {
    fn clone(&self) -> Self {
        self.with_responder(self.responder.clone())
    }
}

impl<V, R> Guard<V, R> {
    fn with_responder<R2>(&self, responder: R2) -> Guard<V, R2> {
        Guard {
            verifier: Arc::clone(&self.verifier),
            extractor: self.extractor.clone(),
            kind: self.kind,
            allow_public: self.allow_public,
            mode: self.mode,
            strip: self.strip,
            challenge: self.challenge.clone(),
            responder,
        }
    }
}

impl<V: KeyVerifier> RequireApiKey<V> {
    /// Requires a valid key of any kind, checked by `verifier`, with the default responses.
    pub fn new(verifier: V) -> Self {
        Self::from_arc(Arc::new(verifier))
    }

    /// Like [`new`](Self::new), sharing a verifier the application also holds.
    pub fn from_arc(verifier: Arc<V>) -> Self {
        Self {
            guard: Arc::new(Guard {
                verifier,
                extractor: KeyExtractor::new(),
                kind: None,
                allow_public: true,
                mode: Mode::Required,
                strip: false,
                challenge: DefaultResponder::default(),
                responder: DefaultResponder::default(),
            }),
        }
    }

    /// Names `realm` in `WWW-Authenticate` challenges (default `"api"`), in the layer's
    /// refusals and in the axum extractors' refusals on requests it let through without a key.
    pub fn realm(mut self, realm: &str) -> Self {
        let responder = DefaultResponder::new(realm);
        self.guard_mut().challenge = responder.clone();
        self.responder(responder)
    }
}

impl<V: KeyVerifier, R: Clone> RequireApiKey<V, R> {
    fn guard_mut(&mut self) -> &mut Guard<V, R> {
        Arc::make_mut(&mut self.guard)
    }

    /// Accepts user keys only; a valid team key gets 403 `insufficient_scope`.
    pub fn users_only(mut self) -> Self {
        self.guard_mut().kind = Some(KeyKind::User);
        self
    }

    /// Accepts team keys only; a valid user key gets 403 `insufficient_scope`.
    pub fn teams_only(mut self) -> Self {
        self.guard_mut().kind = Some(KeyKind::Team);
        self
    }

    /// Accepts keys of either kind (the default).
    pub fn any_principal(mut self) -> Self {
        self.guard_mut().kind = None;
        self
    }

    /// Whether public (`pk_`) keys are accepted (default `true`, as Stack Auth does). When
    /// refused, a valid public key gets 403 `insufficient_scope`.
    pub fn allow_public_keys(mut self, allow: bool) -> Self {
        self.guard_mut().allow_public = allow;
        self
    }

    /// Requests without a key pass through untouched; see [`Mode::Optional`].
    pub fn optional(self) -> Self {
        self.mode(Mode::Optional)
    }

    /// Sets the [`Mode`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.guard_mut().mode = mode;
        self
    }

    /// Removes the credential (header or query parameter) before the inner service sees the
    /// request (default `false`).
    pub fn strip_credentials(mut self, strip: bool) -> Self {
        self.guard_mut().strip = strip;
        self
    }

    /// Where keys are looked for (default: `Authorization: Bearer` only).
    pub fn extractor(mut self, extractor: KeyExtractor) -> Self {
        self.guard_mut().extractor = extractor;
        self
    }

    /// Replaces the responses to refused requests.
    ///
    /// The axum extractors cannot call a responder of an arbitrary type: their own refusals
    /// (a handler asking for `AuthenticatedUser` on a keyless request in optional mode) use the
    /// default JSON responses with the layer's realm. Take `Result<AuthenticatedUser,
    /// ExtractRejection>` in the handler to answer those your own way.
    pub fn responder<R2>(self, responder: R2) -> RequireApiKey<V, R2> {
        RequireApiKey {
            guard: Arc::new(self.guard.with_responder(responder)),
        }
    }

    /// The verifier (for example a [`CachedVerifier`](crate::CachedVerifier), to read its stats).
    pub fn verifier(&self) -> &V {
        &self.guard.verifier
    }
}

impl<S, V, R> Layer<S> for RequireApiKey<V, R> {
    type Service = RequireApiKeyService<S, V, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireApiKeyService {
            inner,
            guard: Arc::clone(&self.guard),
        }
    }
}

/// The service [`RequireApiKey`] wraps around an inner service.
pub struct RequireApiKeyService<S, V, R = DefaultResponder> {
    inner: S,
    guard: Arc<Guard<V, R>>,
}

impl<S: Clone, V, R> Clone for RequireApiKeyService<S, V, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            guard: Arc::clone(&self.guard),
        }
    }
}

impl<S: std::fmt::Debug, V, R> std::fmt::Debug for RequireApiKeyService<S, V, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireApiKeyService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, V, R> RequireApiKeyService<S, V, R> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the wrapper.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// What the guard decided without waiting.
enum Step {
    /// Call the inner service with the request as it now is.
    Pass,
    /// Answer with this refusal.
    Reject(Rejection),
    /// Ask the verifier asynchronously.
    Verify(ApiKey),
}

impl<V: KeyVerifier, R> Guard<V, R> {
    /// Everything up to (and, when it can answer at once, including) the verifier.
    fn check_now<B>(&self, request: &mut Request<B>) -> Step {
        let found = match self.extractor.extract(request) {
            Ok(found) => found,
            Err(rejection) => return Step::Reject(rejection),
        };
        let Some(found) = found else {
            return match self.mode {
                Mode::Optional => {
                    request
                        .extensions_mut()
                        .insert(Challenge(self.challenge.clone()));
                    Step::Pass
                }
                Mode::Required => Step::Reject(Rejection::Missing),
            };
        };
        // The structural rules first: a key that breaks one costs no hashing.
        let parts = match parse_structure(found.key) {
            Ok(parts) => parts,
            Err(error) => return malformed(&found, error),
        };
        let digest = KeyDigest::of_bytes(found.key);
        // A cache hit needs neither the rest of the format check nor a copy of the key.
        let outcome = match self.verifier.cached_verdict(&digest) {
            Some(verdict) => Ok(Ok(verdict)),
            None => {
                if let Err(rejection) = found.check_syntax() {
                    return Step::Reject(rejection);
                }
                // ASCII: the extractor and the syntax check let nothing else through.
                let text = std::str::from_utf8(found.key).map_err(|e| FormatError::Secret {
                    at: e.valid_up_to(),
                });
                let key = match text.and_then(|text| ApiKey::parse_with_digest(text, digest)) {
                    Ok(key) => key,
                    Err(error) => return malformed(&found, error),
                };
                self.verifier.verify_now(&key).ok_or(key)
            }
        };
        if self.strip {
            self.extractor.strip(request);
        }
        match outcome {
            Ok(result) => match self.decide(&parts, result) {
                Ok(principal) => {
                    principal.insert_into(request.extensions_mut());
                    Step::Pass
                }
                Err(rejection) => Step::Reject(rejection),
            },
            Err(key) => Step::Verify(key),
        }
    }

    /// Turns the verifier's answer into a principal or a refusal, applying the policy.
    fn decide(
        &self,
        key: &KeyParts,
        result: Result<Verdict, VerifyError>,
    ) -> Result<Principal, Rejection> {
        let info = match result {
            Ok(Verdict::Valid(info)) => info,
            Ok(Verdict::Invalid(reason)) => {
                tracing::debug!(key = %key, key_id = %key.key_id, %reason, "API key refused");
                return Err(Rejection::Invalid(reason));
            }
            Err(error) => {
                tracing::warn!(key = %key, key_id = %key.key_id, %error, "API key could not be verified");
                return Err(Rejection::Unavailable(error));
            }
        };
        // A verifier must agree with what the key says about itself.
        let mismatch = if info.owner.kind() != key.kind {
            Some(InvalidReason::WrongType)
        } else if info.key_id != key.key_id {
            Some(InvalidReason::NotFound)
        } else if info.is_expired() {
            Some(InvalidReason::Expired)
        } else {
            None
        };
        if let Some(reason) = mismatch {
            tracing::debug!(key = %key, key_id = %key.key_id, %reason, "API key refused");
            return Err(Rejection::Invalid(reason));
        }
        if let Some(required) = self.kind {
            if required != key.kind {
                tracing::debug!(key = %key, key_id = %key.key_id, %required, "API key of the wrong kind");
                return Err(Rejection::WrongKind { required });
            }
        }
        // The key's own `pk_` prefix is authoritative; a verifier can only add to it.
        let is_public = info.is_public || key.is_public;
        if is_public && !self.allow_public {
            tracing::debug!(key = %key, key_id = %key.key_id, "public API key refused");
            return Err(Rejection::PublicKeyRefused);
        }
        let mut principal = Principal::from_key_info(&info);
        principal.set_public(is_public);
        Ok(principal)
    }
}

/// The refusal of a malformed key: 400 if the credential's syntax is broken, else 401.
fn malformed(found: &Found<'_>, error: FormatError) -> Step {
    if let Err(rejection) = found.check_syntax() {
        return Step::Reject(rejection);
    }
    tracing::debug!(%error, "malformed API key refused");
    Step::Reject(Rejection::Malformed(error))
}

/// Put in the extensions of a keyless request let through in optional mode, so the axum
/// extractors refuse it with the layer's realm.
#[derive(Clone, Debug)]
pub(crate) struct Challenge(pub(crate) DefaultResponder);

type VerifyFuture<Res> = Pin<Box<dyn Future<Output = Result<Principal, Res>> + Send>>;

impl<S, V, R, ReqB, ResB> Service<Request<ReqB>> for RequireApiKeyService<S, V, R>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    V: KeyVerifier,
    R: RejectionResponder<ResB>,
    ResB: Send + 'static,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqB>) -> Self::Future {
        match self.guard.check_now(&mut request) {
            Step::Pass => ResponseFuture {
                state: State::Inner {
                    future: self.inner.call(request),
                },
            },
            Step::Reject(rejection) => ResponseFuture {
                state: State::Done {
                    response: Some(self.guard.responder.respond(&rejection)),
                },
            },
            Step::Verify(key) => {
                // The ready service goes with the request; a fresh clone stays here.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let guard = Arc::clone(&self.guard);
                let verify: VerifyFuture<Response<ResB>> = Box::pin(async move {
                    let result = guard.verifier.verify(&key).await;
                    guard
                        .decide(key.parts(), result)
                        .map_err(|rejection| guard.responder.respond(&rejection))
                });
                ResponseFuture {
                    state: State::Verify {
                        verify,
                        pending: Some(Box::new((request, inner))),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`RequireApiKeyService`].
    ///
    /// No allocation on a cache hit or a refusal; only a verifier call that cannot be answered
    /// at once is boxed.
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        state: State<S, ReqB>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        Verify {
            verify: VerifyFuture<S::Response>,
            // Boxed: the slow path allocates anyway, and the future every request carries stays
            // the size of the inner service's future.
            pending: Option<Box<(Request<ReqB>, S)>>,
        },
        Inner {
            #[pin]
            future: S::Future,
        },
        Done {
            response: Option<S::Response>,
        },
    }
}

impl<S, ReqB> Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    type Output = Result<S::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Verify { verify, pending } => {
                    let decision = ready!(verify.as_mut().poll(cx));
                    let Some(pending) = pending.take() else {
                        // Only reachable if polled again after a panic in this branch.
                        return Poll::Pending;
                    };
                    let (mut request, mut inner) = *pending;
                    match decision {
                        Ok(principal) => {
                            principal.insert_into(request.extensions_mut());
                            let future = inner.call(request);
                            state.set(State::Inner { future });
                        }
                        Err(response) => state.set(State::Done {
                            response: Some(response),
                        }),
                    }
                }
                StateProj::Inner { future } => return future.poll(cx),
                StateProj::Done { response } => {
                    return match response.take() {
                        Some(response) => Poll::Ready(Ok(response)),
                        None => Poll::Pending,
                    };
                }
            }
        }
    }
}
