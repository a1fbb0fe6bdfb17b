//! [`RequireApiKey`]: the tower layer that guards a service with API keys.
//!
//! Each request goes through these steps, cheapest first; the first that refuses answers, through
//! the [`RejectionResponder`], and the inner service is not called:
//!
//! 1. **extract**: find the key ([`KeyExtractor`]). Bad credential syntax: 400. No key: 401, or
//!    on to the inner service untouched in [`Mode::Optional`].
//! 2. **structure**: length, prefix, key id, type, scanner flag, marker. Broken: 401, no hashing.
//! 3. **policy, from the key itself**: a team key on a [`users_only`](RequireApiKey::users_only)
//!    route, a user key on a [`teams_only`](RequireApiKey::teams_only) one, a `pk_` key where
//!    [public keys are refused](RequireApiKey::allow_public_keys): 403 `insufficient_scope`,
//!    with no hashing, no cache lookup and no verifier call (once the rest of the format is
//!    checked: a key with a bad checksum is refused as malformed, 401, on every route).
//! 4. **digest**: SHA-256 of the key, the only form a cache sees.
//! 5. **cache**: the verdict cached under the digest, if any; a hit needs nothing more from the
//!    key.
//! 6. **verifier**: on a miss, the rest of the format (secret alphabet, checksum; else 401),
//!    then [`KeyVerifier::verify_now`] or, if it cannot answer at once, `verify` (the only
//!    boxed future).
//!
//! The answer must agree with the key (kind, id, expiry; a verifier may add `pk_`, not remove
//! it). Then [`Principal`] and [`AuthenticatedUser`](crate::AuthenticatedUser) or
//! [`AuthenticatedTeam`](crate::AuthenticatedTeam) go into the request extensions, the
//! credential is removed if [`strip_credentials`](RequireApiKey::strip_credentials) asks, and
//! the inner service is called.
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

mod future;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

pub use future::ResponseFuture;

use crate::extract::{Found, KeyExtractor};
use crate::key::{parse, parse_structure, ApiKey, FormatError, KeyDigest, KeyKind, KeyParts};
use crate::metrics::{Outcome, Trace};
use crate::principal::Principal;
use crate::reject::{DefaultResponder, Rejection, RejectionResponder};
use crate::verify::{InvalidReason, KeyVerifier, Verdict, VerifyError};

/// What a route does when a request carries no key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// No key, no entry: 401 (the default).
    #[default]
    Required,
    /// A request without a key passes through untouched; a key that is present must still be
    /// valid (and of an allowed kind), or the request is refused. A `Bearer` credential in any
    /// malformed form (`Bearer` alone, a tab after it) is present, and refused with 400.
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

    /// Accepts user keys only; a team key gets 403 `insufficient_scope`, read from the key
    /// before any lookup (see the [module docs](self)).
    pub fn users_only(mut self) -> Self {
        self.guard_mut().kind = Some(KeyKind::User);
        self
    }

    /// Accepts team keys only; a user key gets 403 `insufficient_scope`, read from the key
    /// before any lookup.
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
    /// refused, a `pk_` key gets 403 `insufficient_scope`, read from its prefix before any
    /// lookup.
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
    /// request (default `false`): every place the [extractor](Self::extractor) reads, and every
    /// `Authorization` header if any holds a `Bearer` credential.
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

/// What the verifier says about a key that passed every check the key allows by itself.
enum Lookup {
    /// Answered without waiting: a verdict cached under the key's digest, or the verifier's
    /// [`verify_now`](KeyVerifier::verify_now).
    Answered(Result<Verdict, VerifyError>),
    /// The verifier must be asked asynchronously, with this key.
    Pending(ApiKey),
}

impl<V: KeyVerifier, R> Guard<V, R> {
    /// Everything up to (and, when it can answer at once, including) the verifier.
    fn check_now<B>(&self, request: &mut Request<B>, trace: &Trace) -> Step {
        let (parts, lookup) = match self.extractor.extract(request) {
            Ok(Some(found)) => match self.look_up(&found, trace) {
                Ok(looked_up) => looked_up,
                Err(rejection) => return Step::Reject(rejection),
            },
            Ok(None) => return self.keyless(request),
            Err(rejection) => return Step::Reject(rejection),
        };
        if self.strip {
            self.extractor.strip(request);
        }
        match lookup {
            Lookup::Answered(result) => match self.decide(&parts, result) {
                Ok(principal) => {
                    principal.insert_into(request.extensions_mut());
                    Step::Pass
                }
                Err(rejection) => Step::Reject(rejection),
            },
            Lookup::Pending(key) => Step::Verify(key),
        }
    }

    /// A request without a key: 401, or on to the inner service in optional mode.
    fn keyless<B>(&self, request: &mut Request<B>) -> Step {
        match self.mode {
            Mode::Required => Step::Reject(Rejection::Missing),
            // Untouched even when stripping: no place the extractor reads holds anything (a
            // bearer credential in any form, or a non-empty header or parameter, is a key).
            Mode::Optional => {
                // Only the axum extractors read it.
                #[cfg(feature = "axum")]
                request
                    .extensions_mut()
                    .insert(Challenge(self.challenge.clone()));
                #[cfg(not(feature = "axum"))]
                let _ = request;
                Step::Pass
            }
        }
    }

    /// The checks the key allows by itself, cheapest first, then the cache and the verifier.
    fn look_up(&self, found: &Found<'_>, trace: &Trace) -> Result<(KeyParts, Lookup), Rejection> {
        // The structural rules: a key that breaks one costs no hashing.
        let parts = parse_structure(found.key).map_err(|error| malformed(found, error))?;
        trace.key(&parts);
        // The route's policy, from what the key says of itself: a key of a refused kind costs no
        // hashing, no cache lookup and no verifier call, so that keys anyone can mint (the
        // checksum is public) cannot reach the verifier through a route that refuses them.
        if let Some(refusal) = self.refusal(&parts) {
            // A key that breaks the rest of the format is not a key of any kind: refused as
            // malformed, as on any route. Still no I/O, and only refusals pay for the check.
            let text = well_formed_text(found)?;
            parse(text).map_err(|error| malformed(found, error))?;
            tracing::debug!(key = %parts, key_id = %parts.key_id, %refusal, "API key refused by the route's policy");
            return Err(refusal);
        }
        let digest = KeyDigest::of_bytes(found.key);
        // A cache hit needs neither the rest of the format check nor a copy of the key.
        if let Some(verdict) = self.verifier.__cached_verdict(&digest) {
            return Ok((parts, Lookup::Answered(Ok(verdict))));
        }
        let text = well_formed_text(found)?;
        let key =
            ApiKey::parse_with_digest(text, digest).map_err(|error| malformed(found, error))?;
        let lookup = match self.verifier.verify_now(&key) {
            Some(result) => Lookup::Answered(result),
            None => Lookup::Pending(key),
        };
        Ok((parts, lookup))
    }

    /// The refusal the route's policy makes of a key, from the key alone.
    fn refusal(&self, key: &KeyParts) -> Option<Rejection> {
        match self.kind {
            Some(required) if required != key.kind => Some(Rejection::WrongKind { required }),
            _ if key.is_public && !self.allow_public => Some(Rejection::PublicKeyRefused),
            _ => None,
        }
    }

    /// Turns the verifier's answer into a principal or a refusal. The route's policy on kinds
    /// was applied before the lookup; the answer must agree with the key.
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
        // The key's own `pk_` prefix is authoritative (and was checked before the lookup); a
        // verifier can only add to it.
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

/// The key as text, once its credential syntax is known to be sound (else 400).
fn well_formed_text<'a>(found: &Found<'a>) -> Result<&'a str, Rejection> {
    found.check_syntax()?;
    // ASCII: the extractor and the syntax check let nothing else through.
    std::str::from_utf8(found.key).map_err(|e| {
        malformed(
            found,
            FormatError::Secret {
                at: e.valid_up_to(),
            },
        )
    })
}

/// The refusal of a malformed key: 400 if the credential's syntax is broken, else 401.
fn malformed(found: &Found<'_>, error: FormatError) -> Rejection {
    if let Err(rejection) = found.check_syntax() {
        return rejection;
    }
    tracing::debug!(%error, "malformed API key refused");
    Rejection::Malformed(error)
}

/// Put in the extensions of a keyless request let through in optional mode, so the axum
/// extractors refuse it with the layer's realm.
#[cfg(feature = "axum")]
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
        let trace = Trace::start();
        let step = {
            let _entered = trace.span().enter();
            self.guard.check_now(&mut request, &trace)
        };
        match step {
            Step::Pass => {
                trace.pass();
                ResponseFuture::inner(self.inner.call(request))
            }
            Step::Reject(rejection) => {
                trace.finish(Outcome::of(&rejection));
                ResponseFuture::done(self.guard.responder.respond(&rejection))
            }
            Step::Verify(key) => {
                // The ready service goes with the request; a fresh clone stays here.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let guard = Arc::clone(&self.guard);
                let span = trace.span().clone();
                let verify: VerifyFuture<Response<ResB>> = Box::pin(
                    async move {
                        let result = guard.verifier.verify(&key).await;
                        let decision = guard.decide(key.parts(), result);
                        trace.finish(
                            decision
                                .as_ref()
                                .map_or_else(Outcome::of, |_| Outcome::Pass),
                        );
                        decision.map_err(|rejection| guard.responder.respond(&rejection))
                    }
                    .instrument(span),
                );
                ResponseFuture::verify(verify, request, inner)
            }
        }
    }
}
