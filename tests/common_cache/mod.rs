//! Helpers shared by `tests/cache.rs` and `tests/redaction.rs`: a counting, switchable test
//! verifier over a `MemoryKeyStore`, a router builder, and request helpers.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::routing::get;
use axum::Router;
use keygate::key::{ApiKey, Deployment, KeyKind};
use keygate::store::CreatedKey;
use keygate::verify::{RevocationListener, VerifyError, VerifyErrorKind};
use keygate::{KeyStore, KeyVerifier, MemoryKeyStore, NewKey, Owner, Principal, Verdict};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};
use uuid::Uuid;

/// The custom header some routes read keys from.
pub const X_KEY: &str = "x-stack-api-key";

/// When the counting verifier sleeps, relative to its read of the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Delay {
    /// Answers at once.
    #[default]
    None,
    /// Sleeps, then reads the store (a slow request to an up-to-date verifier).
    BeforeRead(Duration),
    /// Reads the store, then sleeps (a slow response carrying what was true when it was read).
    AfterRead(Duration),
}

/// A `KeyVerifier` over a `MemoryKeyStore` that counts its calls, can be slowed down, held at a
/// gate, or switched to fail. Clones share everything.
#[derive(Clone, Default)]
pub struct CountingVerifier {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    store: MemoryKeyStore,
    calls: AtomicUsize,
    reads: AtomicUsize,
    failing: AtomicBool,
    delay: Mutex<Delay>,
    gate: Mutex<Option<Arc<Semaphore>>>,
}

impl CountingVerifier {
    /// A healthy, instant verifier over an empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same, with a delay.
    pub fn with_delay(delay: Delay) -> Self {
        let v = Self::new();
        v.set_delay(delay);
        v
    }

    /// The wrapped store (revoke through it to exercise revocation invalidation).
    pub fn store(&self) -> &MemoryKeyStore {
        &self.inner.store
    }

    /// Calls to `verify` so far.
    pub fn calls(&self) -> usize {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// Store reads completed so far (a failing verifier does not read).
    pub fn reads(&self) -> usize {
        self.inner.reads.load(Ordering::SeqCst)
    }

    /// Makes every later call fail with a transport error (or succeed again).
    pub fn set_failing(&self, failing: bool) {
        self.inner.failing.store(failing, Ordering::SeqCst);
    }

    /// Changes the delay of later calls.
    pub fn set_delay(&self, delay: Delay) {
        *self
            .inner
            .delay
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = delay;
    }

    /// Holds every later call, after its store read, until the returned semaphore gets a permit
    /// (one permit releases one call).
    pub fn install_gate(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        *self
            .inner
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&gate));
        gate
    }

    /// Creates a secret user key in the wrapped store.
    pub async fn create_user_key(&self, description: &str) -> CreatedKey {
        self.create(
            Owner::user(format!("user-{description}")),
            NewKey::new(description),
        )
        .await
    }

    /// Creates a key in the wrapped store.
    pub async fn create(&self, owner: Owner, new: NewKey) -> CreatedKey {
        self.inner
            .store
            .create(owner, new)
            .await
            .expect("memory store create")
    }

    /// Revokes a key through the store (`KeyStore::revoke`), which notifies subscribed caches.
    pub async fn revoke(&self, key_id: Uuid) {
        self.inner
            .store
            .revoke(key_id)
            .await
            .expect("memory store revoke");
    }
}

impl KeyVerifier for CountingVerifier {
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        let inner = &self.inner;
        inner.calls.fetch_add(1, Ordering::SeqCst);
        let delay = *inner.delay.lock().unwrap_or_else(PoisonError::into_inner);
        if let Delay::BeforeRead(d) = delay {
            tokio::time::sleep(d).await;
        }
        if inner.failing.load(Ordering::SeqCst) {
            return Err(VerifyError::new(VerifyErrorKind::Transport, "down"));
        }
        let verdict = inner.store.verify(key).await;
        inner.reads.fetch_add(1, Ordering::SeqCst);
        if let Delay::AfterRead(d) = delay {
            tokio::time::sleep(d).await;
        }
        let gate = inner
            .gate
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(gate) = gate {
            gate.acquire().await.expect("gate is never closed").forget();
        }
        verdict
    }

    fn subscribe_revocations(&self, listener: RevocationListener) {
        self.inner.store.subscribe_revocations(listener);
    }
}

/// A well-formed user key that no store knows.
pub fn unknown_key() -> ApiKey {
    ApiKey::generate(Uuid::new_v4(), KeyKind::User, false, Deployment::SelfHosted).expect("os rng")
}

/// The handler behind every guard: the key id of the principal, or `anonymous`.
pub async fn whoami(principal: Option<Principal>) -> String {
    principal.map_or_else(|| "anonymous".to_owned(), |p| p.key_id().to_string())
}

/// `GET /` answered by [`whoami`] behind `layer`.
pub fn app<L>(layer: L) -> Router
where
    L: Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
    L::Service: tower::Service<Request<Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<Request<Body>>>::Response: axum::response::IntoResponse + 'static,
    <L::Service as tower::Service<Request<Body>>>::Future: Send + 'static,
{
    Router::new().route("/", get(whoami)).route_layer(layer)
}

/// What a request got back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The JSON body's `code`, or `""` for a non-JSON body.
    pub fn code(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned))
            .unwrap_or_default()
    }
}

/// Sends `request` to `app`.
pub async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e: std::convert::Infallible| match e {});
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// `GET /` with `Authorization: Bearer <key>`.
pub async fn bearer(app: &Router, key: &str) -> Reply {
    let request = Request::get("/")
        .header(AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::empty())
        .expect("request");
    send(app, request).await
}

/// `GET /` with the key in the [`X_KEY`] header.
pub async fn via_header(app: &Router, key: &str) -> Reply {
    let request = Request::get("/")
        .header(X_KEY, key)
        .body(Body::empty())
        .expect("request");
    send(app, request).await
}

/// `GET /` with no key.
pub async fn anonymous(app: &Router) -> Reply {
    send(app, Request::get("/").body(Body::empty()).expect("request")).await
}

/// A small deterministic PRNG (SplitMix64) for the fuzz-style tests, so the seed can be printed
/// and a failure replayed.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0); the modulo bias is irrelevant here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// One byte of `alphabet`.
    pub fn pick(&mut self, alphabet: &[u8]) -> u8 {
        alphabet[self.below(alphabet.len())]
    }

    /// `len` bytes of `alphabet`, as a string (the alphabets used are ASCII).
    pub fn string(&mut self, alphabet: &[u8], len: usize) -> String {
        (0..len).map(|_| char::from(self.pick(alphabet))).collect()
    }
}

/// A seed from `KEYGATE_TEST_SEED`, or from the clock.
pub fn seed() -> u64 {
    std::env::var("KEYGATE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        })
}
