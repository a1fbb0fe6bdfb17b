//! Verification: the [`KeyVerifier`] trait and what it answers.
//!
//! A verifier turns a well-formed [`ApiKey`] into a [`Verdict`] (valid, with the key's owner, or
//! invalid, with a reason) or a [`VerifyError`] when it cannot answer at all. The layer answers a
//! verdict with 200/401/403 and an error with 503: a verifier that is down never lets a request
//! through and never blames the caller's key.
//!
//! # Why a generic trait, not `dyn`
//!
//! `verify` returns `impl Future + Send`, so implementations are plain `async fn`s and no call
//! pays for a boxed future; the layer is generic over its verifier and monomorphised. The cost is
//! that `dyn KeyVerifier` is not possible. Wrap several verifiers in an enum of your own, or put a
//! boxed-future adapter of your own behind the trait, if you need to choose one at run time.
//!
//! ```
//! use keygate::key::ApiKey;
//! use keygate::verify::{InvalidReason, KeyVerifier, Verdict, VerifyError};
//!
//! /// Refuses every key: the smallest verifier there is.
//! struct DenyAll;
//!
//! impl KeyVerifier for DenyAll {
//!     async fn verify(&self, _key: &ApiKey) -> Result<Verdict, VerifyError> {
//!         Ok(Verdict::Invalid(InvalidReason::NotFound))
//!     }
//! }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::key::{ApiKey, KeyDigest, KeyKind};

/// Who owns a key.
///
/// `#[non_exhaustive]`: build one with [`Owner::user`] or [`Owner::team`], and read it with
/// [`kind`](Owner::kind) and [`id`](Owner::id) (or match with a wildcard arm).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Owner {
    /// A user, by user id.
    User(Arc<str>),
    /// A team, by team id.
    Team(Arc<str>),
}

impl Owner {
    /// A user owner.
    pub fn user(id: impl AsRef<str>) -> Self {
        Owner::User(Arc::from(id.as_ref()))
    }

    /// A team owner.
    pub fn team(id: impl AsRef<str>) -> Self {
        Owner::Team(Arc::from(id.as_ref()))
    }

    /// The kind of key this owner holds.
    pub fn kind(&self) -> KeyKind {
        match self {
            Owner::User(_) => KeyKind::User,
            Owner::Team(_) => KeyKind::Team,
        }
    }

    /// The user id or team id.
    pub fn id(&self) -> &str {
        match self {
            Owner::User(id) | Owner::Team(id) => id,
        }
    }
}

/// What a verifier knows about a valid key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The key's id.
    pub key_id: Uuid,
    /// The user or team that owns it.
    pub owner: Owner,
    /// `pk_` (public) rather than `sk_`.
    pub is_public: bool,
    /// When the key stops being valid, if ever.
    pub expires_at: Option<SystemTime>,
    /// The owner's description of the key.
    pub description: Arc<str>,
}

impl KeyInfo {
    /// Describes a valid key.
    pub fn new(key_id: Uuid, owner: Owner, is_public: bool) -> Self {
        Self {
            key_id,
            owner,
            is_public,
            expires_at: None,
            description: Arc::from(""),
        }
    }

    /// Sets the expiry.
    pub fn with_expires_at(mut self, expires_at: Option<SystemTime>) -> Self {
        self.expires_at = expires_at;
        self
    }

    /// Sets the description.
    pub fn with_description(mut self, description: impl AsRef<str>) -> Self {
        self.description = Arc::from(description.as_ref());
        self
    }

    /// Whether the key has expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Whether the key has expired by now. Reads the clock only for a key that expires.
    pub fn is_expired(&self) -> bool {
        self.expires_at.is_some_and(|at| at <= SystemTime::now())
    }
}

/// Why a key is not valid. Logged and counted; the caller always sees one uniform 401.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidReason {
    /// No such key.
    NotFound,
    /// The key exists but is of the other kind (a team key checked as a user key, or the reverse).
    WrongType,
    /// The key was revoked.
    Revoked,
    /// The key has expired.
    Expired,
}

impl InvalidReason {
    /// A short stable name for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            InvalidReason::NotFound => "not_found",
            InvalidReason::WrongType => "wrong_type",
            InvalidReason::Revoked => "revoked",
            InvalidReason::Expired => "expired",
        }
    }
}

impl fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verifier's answer about one key.
///
/// `#[non_exhaustive]`: build one with [`Verdict::valid`] (or the variants), and match with a
/// wildcard arm.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The key is valid.
    Valid(Arc<KeyInfo>),
    /// The key is not valid.
    Invalid(InvalidReason),
}

impl Verdict {
    /// A valid verdict.
    pub fn valid(info: KeyInfo) -> Self {
        Verdict::Valid(Arc::new(info))
    }

    /// Whether the verdict is valid.
    pub fn is_valid(&self) -> bool {
        matches!(self, Verdict::Valid(_))
    }
}

/// The verifier could not answer. Never cached; the caller gets 503 with `Retry-After`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct VerifyError {
    kind: VerifyErrorKind,
    message: Arc<str>,
    retry_after: Option<Duration>,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The class of a [`VerifyError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VerifyErrorKind {
    /// The verifier did not answer in time.
    Timeout,
    /// The verifier could not be reached, or the connection failed.
    Transport,
    /// The verifier answered with an error of its own (5xx, 429, a body that makes no sense).
    Upstream,
    /// The verifier refused our own credentials or configuration: an operator must fix it.
    Misconfigured,
    /// The verifier is being given a rest after repeated failures (circuit open).
    CircuitOpen,
    /// A local store failed.
    Store,
}

impl fmt::Display for VerifyErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VerifyErrorKind::Timeout => "verifier timed out",
            VerifyErrorKind::Transport => "verifier unreachable",
            VerifyErrorKind::Upstream => "verifier failed",
            VerifyErrorKind::Misconfigured => "verifier misconfigured",
            VerifyErrorKind::CircuitOpen => "verifier circuit open",
            VerifyErrorKind::Store => "key store failed",
        })
    }
}

impl VerifyError {
    /// A new error. `message` is for operators; it must not contain a key.
    pub fn new(kind: VerifyErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: Arc::from(message.into()),
            retry_after: None,
            source: None,
        }
    }

    /// Attaches the error that caused this one, returned by
    /// [`source`](std::error::Error::source). It must not contain a key.
    ///
    /// ```
    /// use std::error::Error;
    /// use keygate::verify::{VerifyError, VerifyErrorKind};
    ///
    /// let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
    /// let error = VerifyError::new(VerifyErrorKind::Transport, "key check failed").with_source(io);
    /// assert_eq!(error.source().map(|e| e.to_string()).as_deref(), Some("reset by peer"));
    /// ```
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Suggests when to retry (sent to the client as `Retry-After`).
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// The class of the error.
    pub fn kind(&self) -> VerifyErrorKind {
        self.kind
    }

    /// What went wrong, for operators.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// When the caller may retry, if the verifier said.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// Verifies well-formed keys.
///
/// Implement [`verify`](Self::verify); [`verify_now`](Self::verify_now) and
/// [`subscribe_revocations`](Self::subscribe_revocations) are optional. Implementations only
/// ever see keys that passed the format check. See the [module docs](self) for why the trait is
/// generic rather than object-safe.
pub trait KeyVerifier: Send + Sync + 'static {
    /// Verifies `key`.
    fn verify(&self, key: &ApiKey) -> impl Future<Output = Result<Verdict, VerifyError>> + Send;

    /// Answers at once, without waiting, when the verifier can (a cache hit, an in-memory
    /// store). `None` means "call [`verify`](Self::verify)". The layer calls this first, so a
    /// request answered here costs no boxed future.
    fn verify_now(&self, key: &ApiKey) -> Option<Result<Verdict, VerifyError>> {
        let _ = key;
        None
    }

    // The layer's internal fast path (CachedVerifier's per-thread memo, asked by digest before
    // the rest of the format check), not for implementors: keep the default.
    #[doc(hidden)]
    fn __cached_verdict(&self, digest: &KeyDigest) -> Option<Verdict> {
        let _ = digest;
        None
    }

    /// Asks to be told of every key this verifier's source revokes from now on. Caches call it
    /// so that a revocation through keygate reaches them at once. The default ignores it.
    fn subscribe_revocations(&self, listener: RevocationListener) {
        let _ = listener;
    }
}

impl<V: KeyVerifier> KeyVerifier for Arc<V> {
    fn verify(&self, key: &ApiKey) -> impl Future<Output = Result<Verdict, VerifyError>> + Send {
        (**self).verify(key)
    }

    fn verify_now(&self, key: &ApiKey) -> Option<Result<Verdict, VerifyError>> {
        (**self).verify_now(key)
    }

    fn __cached_verdict(&self, digest: &KeyDigest) -> Option<Verdict> {
        (**self).__cached_verdict(digest)
    }

    fn subscribe_revocations(&self, listener: RevocationListener) {
        (**self).subscribe_revocations(listener)
    }
}

/// Receives the ids of revoked keys. Holds its target weakly: once the target is dropped,
/// [`notify`](Self::notify) returns `false` and the source may forget the listener.
#[derive(Clone)]
pub struct RevocationListener {
    target: Weak<dyn Fn(Uuid) + Send + Sync>,
}

impl RevocationListener {
    /// A listener that calls `f` while `f` is alive elsewhere.
    pub fn new(f: &Arc<dyn Fn(Uuid) + Send + Sync>) -> Self {
        Self {
            target: Arc::downgrade(f),
        }
    }

    /// Whether the target is still alive.
    pub fn is_alive(&self) -> bool {
        self.target.strong_count() > 0
    }

    /// Tells the target that `key_id` was revoked. `false` once the target is gone.
    pub fn notify(&self, key_id: Uuid) -> bool {
        match self.target.upgrade() {
            Some(f) => {
                f(key_id);
                true
            }
            None => false,
        }
    }
}

impl fmt::Debug for RevocationListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationListener")
            .field("alive", &(self.target.strong_count() > 0))
            .finish()
    }
}

/// A set of revocation listeners, for verifier and store implementations.
#[derive(Debug, Default)]
pub struct RevocationListeners {
    listeners: std::sync::Mutex<Vec<RevocationListener>>,
}

impl RevocationListeners {
    /// Adds a listener, and forgets the dead ones (so that caches built and dropped over and
    /// over, with no revocation in between, do not pile up).
    pub fn add(&self, listener: RevocationListener) {
        let mut list = self
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        list.retain(RevocationListener::is_alive);
        list.push(listener);
    }

    /// Listeners held, live or not yet forgotten.
    pub fn len(&self) -> usize {
        self.listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no listener is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tells every live listener that `key_id` was revoked, and forgets the dead ones.
    pub fn notify(&self, key_id: Uuid) {
        let mut list = self
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        list.retain(|l| l.notify(key_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_listeners_are_forgotten_when_another_subscribes() {
        let listeners = RevocationListeners::default();
        let live: Arc<dyn Fn(Uuid) + Send + Sync> = Arc::new(|_| {});
        listeners.add(RevocationListener::new(&live));
        for _ in 0..100 {
            let dropped: Arc<dyn Fn(Uuid) + Send + Sync> = Arc::new(|_| {});
            listeners.add(RevocationListener::new(&dropped));
        }
        // No revocation happened: the dead ones went when the next one subscribed.
        assert_eq!(listeners.len(), 2, "the live one and the last one added");
        let heard = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&heard);
        let counting: Arc<dyn Fn(Uuid) + Send + Sync> = Arc::new(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        listeners.add(RevocationListener::new(&counting));
        assert_eq!(listeners.len(), 2, "the live one and the counting one");
        listeners.notify(Uuid::new_v4());
        assert_eq!(heard.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_verify_error_carries_its_source() {
        use std::error::Error as _;
        let plain = VerifyError::new(VerifyErrorKind::Store, "down");
        assert!(plain.source().is_none());
        let io = std::io::Error::other("disk on fire");
        let error = plain.with_source(io);
        assert_eq!(
            error.source().map(ToString::to_string).as_deref(),
            Some("disk on fire")
        );
        assert_eq!(error.to_string(), "key store failed: down");
        assert_eq!(
            error.clone().source().map(ToString::to_string),
            error.source().map(ToString::to_string)
        );
    }
}
