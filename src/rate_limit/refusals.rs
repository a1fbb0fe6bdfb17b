//! [`RefusalLimitLayer`]: a client that keeps sending refused keys is throttled.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{NotUntil, Quota, RateLimiter};
use http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_governor::key_extractor::KeyExtractor as GovernorKeyExtractor;
use tower_layer::Layer;
use tower_service::Service;

use super::{body, json_response, ClientIp, RATE_LIMITED};
use crate::reject::retry_after_header;

/// How many throttled clients are remembered at once (least recently used are forgotten first;
/// a forgotten one gets one more verified attempt before it is throttled again).
const MAX_THROTTLED: u64 = 100_000;

/// The limiter's bucket key: `None` is every request whose client could not be told (no peer
/// address, no header), counted together rather than let through.
type BucketKey<K> = Option<<K as GovernorKeyExtractor>::Key>;

type Limiter<K> = RateLimiter<
    BucketKey<K>,
    DefaultKeyedStateStore<BucketKey<K>>,
    DefaultClock,
    StateInformationMiddleware,
>;

struct Shared<K: GovernorKeyExtractor> {
    extractor: K,
    limiter: Limiter<K>,
    /// Clients whose bucket a refusal emptied: their requests are charged up front (and refused
    /// with 429 while the bucket stays empty). Entries expire once a bucket is full again.
    throttled: moka::sync::Cache<BucketKey<K>, ()>,
    burst: u32,
}

impl<K> Shared<K>
where
    K: GovernorKeyExtractor,
    K::Key: Send + Sync + 'static,
{
    /// Counts one refusal against `key`.
    fn charge(&self, key: BucketKey<K>) {
        match self.limiter.check_key(&key) {
            Ok(state) if state.remaining_burst_capacity() > 0 => {}
            // Empty now (or already, if refusals raced): the next request pays up front.
            _ => {
                if !self.throttled.contains_key(&key) {
                    let client = key.as_ref().and_then(|k| self.extractor.key_name(k));
                    tracing::info!(
                        client = client.as_deref().unwrap_or("unidentified"),
                        "too many refused API keys: client throttled"
                    );
                }
                self.throttled.insert(key, ());
            }
        }
    }

    /// The 429 for a client whose bucket is empty.
    fn too_many<B: From<Bytes>>(
        &self,
        negative: &NotUntil<governor::clock::QuantaInstant>,
    ) -> Response<B> {
        let wait = negative.wait_time_from(self.limiter.clock().now());
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, retry_after_header(wait));
        headers.insert(
            HeaderName::from_static("x-ratelimit-after"),
            HeaderValue::from(wait.as_secs()),
        );
        headers.insert(
            HeaderName::from_static("x-ratelimit-limit"),
            HeaderValue::from(self.burst),
        );
        headers.insert(
            HeaderName::from_static("x-ratelimit-remaining"),
            HeaderValue::from(0u32),
        );
        let text = body(
            RATE_LIMITED,
            "Too many refused API keys from this client; retry later.",
        );
        json_response(StatusCode::TOO_MANY_REQUESTS, Bytes::from(text), headers)
    }
}

/// Throttles clients that keep sending keys `RequireApiKey` refuses (OWASP: brute force).
///
/// Put it *outside* [`RequireApiKey`](crate::RequireApiKey) (in axum, `.layer(require)` first,
/// then `.layer(refusals)`). Each client ([`ClientIp::peer`] by default, or any
/// [`tower_governor`] key extractor) has a bucket of `quota.burst_size()` refusals, refilled at
/// the quota's rate. Only refusals are charged: any 401 (missing or invalid key) and a 400 that
/// carries a `WWW-Authenticate` challenge (malformed credentials: keygate's `invalid_request`;
/// keep one if you replace the responder), not a handler's own 400. Once a client's bucket is empty, every request from it, **with a
/// valid key or not**, is answered 429 before any verification, until a refusal is allowed
/// again (so a stolen valid key found by guessing cannot be used from the guessing address
/// either). The first request after that is charged up front, whatever its outcome.
/// A request whose client cannot be told counts in one shared bucket.
///
/// The 429 carries `retry-after` (whole seconds, rounded up), `x-ratelimit-after`,
/// `x-ratelimit-limit` (the burst) and `x-ratelimit-remaining: 0`, and the JSON body
/// `{"code": "RATE_LIMITED", …}`.
pub struct RefusalLimitLayer<K: GovernorKeyExtractor = ClientIp> {
    shared: Arc<Shared<K>>,
}

impl RefusalLimitLayer<ClientIp> {
    /// A limit of `quota` refusals per peer address ([`ClientIp::peer`]).
    pub fn new(quota: Quota) -> Self {
        Self::with_key_extractor(quota, ClientIp::peer())
    }
}

impl<K> RefusalLimitLayer<K>
where
    K: GovernorKeyExtractor,
    K::Key: Send + Sync + 'static,
{
    /// A limit of `quota` refusals per client, as `extractor` tells clients apart (e.g.
    /// [`ClientIp::header`] behind a proxy).
    pub fn with_key_extractor(quota: Quota, extractor: K) -> Self {
        // Past this, the bucket is full again and the entry says nothing.
        let refill = quota.burst_size_replenished_in() + Duration::from_secs(1);
        Self {
            shared: Arc::new(Shared {
                extractor,
                limiter: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
                throttled: moka::sync::Cache::builder()
                    .max_capacity(MAX_THROTTLED)
                    .time_to_live(refill)
                    .build(),
                burst: quota.burst_size().get(),
            }),
        }
    }

    /// Forgets clients whose buckets are full again. Call it now and then (e.g. every minute)
    /// on a long-running server so the per-client state does not grow without bound.
    pub fn retain_recent(&self) {
        self.shared.limiter.retain_recent();
    }

    /// How many clients have per-client state.
    pub fn clients(&self) -> usize {
        self.shared.limiter.len()
    }
}

impl<K: GovernorKeyExtractor> Clone for RefusalLimitLayer<K> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K: GovernorKeyExtractor> std::fmt::Debug for RefusalLimitLayer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusalLimitLayer")
            .field("burst", &self.shared.burst)
            .finish_non_exhaustive()
    }
}

impl<S, K: GovernorKeyExtractor> Layer<S> for RefusalLimitLayer<K> {
    type Service = RefusalLimit<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        RefusalLimit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`RefusalLimitLayer`] wraps around `RequireApiKey`.
pub struct RefusalLimit<S, K: GovernorKeyExtractor = ClientIp> {
    inner: S,
    shared: Arc<Shared<K>>,
}

impl<S: Clone, K: GovernorKeyExtractor> Clone for RefusalLimit<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: std::fmt::Debug, K: GovernorKeyExtractor> std::fmt::Debug for RefusalLimit<S, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusalLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K, ReqB, B> Service<Request<ReqB>> for RefusalLimit<S, K>
where
    S: Service<Request<ReqB>, Response = Response<B>>,
    K: GovernorKeyExtractor,
    K::Key: Send + Sync + 'static,
    B: From<Bytes>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = RefusalLimitResponseFuture<S::Future, B, K>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let shared = &self.shared;
        let key = shared.extractor.extract(&request).ok();
        let mut paid = false;
        if shared.throttled.contains_key(&key) {
            match shared.limiter.check_key(&key) {
                Err(negative) => {
                    return RefusalLimitResponseFuture {
                        future: None,
                        throttled: Some(shared.too_many(&negative)),
                        charge: None,
                    }
                }
                Ok(state) => {
                    paid = true;
                    if state.remaining_burst_capacity() > 0 {
                        shared.throttled.invalidate(&key);
                    }
                }
            }
        }
        RefusalLimitResponseFuture {
            future: Some(self.inner.call(request)),
            throttled: None,
            charge: (!paid).then(|| (Arc::clone(shared), key)),
        }
    }
}

/// A refusal to charge: any 401, and a 400 with a `WWW-Authenticate` challenge (keygate's
/// `invalid_request`), not a handler's own 400 about the request's content.
fn is_refusal<B>(response: &Response<B>) -> bool {
    match response.status() {
        StatusCode::UNAUTHORIZED => true,
        StatusCode::BAD_REQUEST => response.headers().contains_key(WWW_AUTHENTICATE),
        _ => false,
    }
}

pin_project! {
    /// The response future of [`RefusalLimit`].
    pub struct RefusalLimitResponseFuture<F, B, K>
    where
        K: GovernorKeyExtractor,
    {
        #[pin]
        future: Option<F>,
        throttled: Option<Response<B>>,
        charge: Option<(Arc<Shared<K>>, BucketKey<K>)>,
    }
}

impl<F, B, E, K> Future for RefusalLimitResponseFuture<F, B, K>
where
    F: Future<Output = Result<Response<B>, E>>,
    K: GovernorKeyExtractor,
    K::Key: Send + Sync + 'static,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(future) = this.future.as_pin_mut() else {
            return match this.throttled.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => panic!("RefusalLimitResponseFuture polled after completion"),
            };
        };
        let response = match future.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(result) => result?,
        };
        let refused = is_refusal(&response);
        if let Some((shared, key)) = this.charge.take() {
            if refused {
                shared.charge(key);
            }
        }
        Poll::Ready(Ok(response))
    }
}
