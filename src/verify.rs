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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Debug, PartialEq, Eq)]
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
        }
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
/// Implementations only ever see keys that passed the format check (but see
/// [`cached_verdict`](Self::cached_verdict)). See the [module docs](self) for why the trait is
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

    /// A verdict remembered from an earlier [`verify`](Self::verify) of the key with this
    /// digest, if the verifier holds one: the cache-hit fast path.
    ///
    /// The layer asks this first, before it copies the key and before it checks the key's secret
    /// alphabet and checksum (a remembered digest can only belong to a key that passed them when
    /// it was verified). It still checks the verdict against the key's type, id and prefix, and
    /// applies the route's policy. Answer only with what `verify` answered for that very key; for
    /// anything else, `None`, which is the default and sends the key down the full path
    /// ([`verify_now`](Self::verify_now), then `verify`).
    fn cached_verdict(&self, digest: &KeyDigest) -> Option<Verdict> {
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

    fn cached_verdict(&self, digest: &KeyDigest) -> Option<Verdict> {
        (**self).cached_verdict(digest)
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
    /// Adds a listener.
    pub fn add(&self, listener: RevocationListener) {
        let mut list = self
            .listeners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        list.push(listener);
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
