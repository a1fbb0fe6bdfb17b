//! The one test verifier: counts its calls, delegates to a `MemoryKeyStore`, and can be made
//! to fail, to answer "valid" for any key, to slow down, or to wait at a gate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keygate::key::ApiKey;
use keygate::store::CreatedKey;
use keygate::verify::{KeyInfo, RevocationListener, VerifyError, VerifyErrorKind};
use keygate::{KeyStore, KeyVerifier, MemoryKeyStore, NewKey, Owner, Verdict};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// When the verifier sleeps, relative to its read of the store.
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

/// What the verifier says of every key, whatever its store holds.
pub type Describe = fn(&ApiKey) -> KeyInfo;

/// A `KeyVerifier` over a `MemoryKeyStore` that counts its calls. It only answers
/// asynchronously (no `verify_now`, no cached verdicts), so every key the layer lets through
/// to it is one counted call. Clones share everything.
#[derive(Clone, Default)]
pub struct CountingVerifier {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    store: MemoryKeyStore,
    calls: AtomicUsize,
    reads: AtomicUsize,
    failure: Mutex<Option<VerifyError>>,
    describe: Option<Describe>,
    delay: Mutex<Delay>,
    gate: Mutex<Option<Arc<Semaphore>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CountingVerifier {
    /// A healthy, instant verifier over an empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A healthy, instant verifier over `store` (shared, not copied).
    pub fn over(store: MemoryKeyStore) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                ..Inner::default()
            }),
        }
    }

    /// A verifier that is down: every call fails with a transport error suggesting
    /// `retry_after`, if any.
    pub fn failing(retry_after: Option<Duration>) -> Self {
        let v = Self::new();
        let error = VerifyError::new(VerifyErrorKind::Transport, "test verifier is down");
        *lock(&v.inner.failure) = Some(match retry_after {
            Some(after) => error.with_retry_after(after),
            None => error,
        });
        v
    }

    /// A verifier that says every key is valid, with what `describe` makes of it.
    pub fn saying_valid(describe: Describe) -> Self {
        Self {
            inner: Arc::new(Inner {
                describe: Some(describe),
                ..Inner::default()
            }),
        }
    }

    /// A healthy verifier over an empty store, with a delay.
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
        *lock(&self.inner.failure) =
            failing.then(|| VerifyError::new(VerifyErrorKind::Transport, "down"));
    }

    /// Changes the delay of later calls.
    pub fn set_delay(&self, delay: Delay) {
        *lock(&self.inner.delay) = delay;
    }

    /// Holds every later call, after its store read, until the returned semaphore gets a permit
    /// (one permit releases one call).
    pub fn install_gate(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        *lock(&self.inner.gate) = Some(Arc::clone(&gate));
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
        let delay = *lock(&inner.delay);
        if let Delay::BeforeRead(d) = delay {
            tokio::time::sleep(d).await;
        }
        let failure = lock(&inner.failure).clone();
        if let Some(error) = failure {
            return Err(error);
        }
        let verdict = match inner.describe {
            Some(describe) => Ok(Verdict::valid(describe(key))),
            None => inner.store.verify(key).await,
        };
        inner.reads.fetch_add(1, Ordering::SeqCst);
        if let Delay::AfterRead(d) = delay {
            tokio::time::sleep(d).await;
        }
        let gate = lock(&inner.gate).clone();
        if let Some(gate) = gate {
            gate.acquire().await.expect("gate is never closed").forget();
        }
        verdict
    }

    fn subscribe_revocations(&self, listener: RevocationListener) {
        self.inner.store.subscribe_revocations(listener);
    }
}

/// Polls `done` every millisecond; panics (instead of hanging) if it stays false for 10 s.
pub async fn wait_until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("gave up waiting for {what}");
}
