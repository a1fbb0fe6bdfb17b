//! Revocation feeds, features `postgres`, `redis` and `sqlite`: a revocation made on one
//! instance drops the key from the cache of every instance subscribed to the feed, within a
//! second whatever the cache's TTL.
//!
//! - [`PgRevocationFeed`] (feature `postgres`) listens on a PostgreSQL channel (`LISTEN`). The
//!   store's trigger sends `pg_notify(channel, "<key_id> <millis>")` in the transaction that
//!   revokes a key (or changes its expiry, or deletes it), so the notification goes out when
//!   the change commits, and not before.
//! - [`RedisRevocationFeed`] (feature `redis`) subscribes to a Redis channel, for fleets that
//!   verify through Stack Auth and have no PostgreSQL of their own; a
//!   [`RedisRevocationPublisher`] publishes the ids of the keys revoked through a
//!   `StackAuthClient`.
//! - [`SqliteRevocationFeed`] (feature `sqlite`) polls the SQLite store's revocation log, which
//!   its triggers fill in the revoking transaction, for processes sharing one database file (a
//!   server and the `keygate keys revoke` command): a revocation reaches the cache within about
//!   one poll interval (default 200 ms) of its commit. A failed read resumes where it stopped,
//!   so only a gap in the log (an hour of revocations, pruned) counts as missed events.
//!
//! A feed runs as a task on the current tokio runtime and reports to the [`RevocationFeed`]
//! handle it returns: [`status`](RevocationFeed::status) tells whether it is connected, when
//! the last event came and how often it reconnected; dropping the handle stops the task. The
//! payload is a key id, never a key, optionally followed by the revocation's time (which the
//! `metrics` feature turns into a lag histogram); anything else is logged (a short prefix at
//! most) and ignored.
//!
//! When the listening connection drops, the feed reconnects with capped, jittered
//! [`Backoff`]. Revocations sent while it was away are lost, so by default
//! ([`OnReconnect::EmptyCache`]) it empties the cache once it listens again; with
//! [`OnReconnect::KeepCache`] it keeps the cache, and a revocation missed during the outage is
//! then bounded by the TTL only. While disconnected, the cache keeps answering as usual (within
//! its TTL): an outage of the feed never turns into an outage of the service.
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn run(verifier: keygate::MemoryKeyStore) -> Result<(), keygate::fleet::FeedError> {
//! use keygate::fleet::{OnReconnect, PgRevocationFeed};
//! use keygate::CachedVerifier;
//!
//! let cache = CachedVerifier::new(verifier);
//! let feed = PgRevocationFeed::connect("postgres://keygate@db/keygate")
//!     .on_reconnect(OnReconnect::EmptyCache)
//!     .spawn(&cache)?;
//! // … serve with `cache`; keep `feed` alive as long as the service runs.
//! # let _ = feed.status();
//! # Ok(())
//! # }
//! ```

mod driver;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::cache::CachedVerifier;
use crate::verify::{KeyVerifier, RevocationListener};

#[cfg(feature = "postgres")]
pub use self::postgres::{PgRevocationFeed, DEFAULT_APPLICATION_NAME};
#[cfg(all(feature = "redis", feature = "stack-auth"))]
pub use self::redis::RevokeAndPublishError;
#[cfg(feature = "redis")]
pub use self::redis::{
    PublishError, RedisRevocationFeed, RedisRevocationPublisher, DEFAULT_PUBLISH_TIMEOUT,
};
#[cfg(feature = "sqlite")]
pub use self::sqlite::{SqliteRevocationFeed, DEFAULT_POLL_INTERVAL};
pub use driver::Backoff;

/// The channel feeds listen on unless told otherwise: the one `PostgresKeyStore`'s trigger
/// notifies (`keygate::store::REVOCATION_CHANNEL` is this constant).
pub const DEFAULT_CHANNEL: &str = "keygate_revocations";

/// Default time between health checks of an idle listening connection.
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Default time a connection attempt (or a health check) may take.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a feed does with the cache once it listens again after losing its connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OnReconnect {
    /// Empty the cache: a revocation sent while the feed was away may have been missed. The
    /// next request for each key costs one lookup. The default.
    #[default]
    EmptyCache,
    /// Keep the cache: a revocation missed during the outage takes effect when the entry's TTL
    /// runs out. For sources that cannot take the burst of lookups an empty cache causes.
    KeepCache,
}

/// What a feed tells: a key id to drop, or that events may have been missed.
///
/// Implemented for [`CachedVerifier`] (and `&CachedVerifier`, which clones the handle), for
/// [`RevocationListener`] (which cannot empty anything: missed events are left to the TTL),
/// for `Arc<T>`, and for a pair of closures through [`FnTarget`].
pub trait RevocationTarget: Send + Sync + 'static {
    /// The key with this id was revoked, or its validity changed: forget it.
    fn key_revoked(&self, key_id: Uuid);

    /// Revocations may have been missed (the feed reconnected): forget what might be stale.
    fn events_missed(&self);
}

impl<V: KeyVerifier> RevocationTarget for CachedVerifier<V> {
    /// As a revocation reported by the cache's own source: the entry is dropped and, for the
    /// next positive TTL, no valid verdict for that id is cached (an instance reading from a
    /// lagging replica cannot cache the key again).
    fn key_revoked(&self, key_id: Uuid) {
        self.revocation_listener().notify(key_id);
    }

    fn events_missed(&self) {
        self.invalidate_all();
    }
}

impl RevocationTarget for RevocationListener {
    fn key_revoked(&self, key_id: Uuid) {
        self.notify(key_id);
    }

    /// A listener can only drop one key at a time: nothing to do.
    fn events_missed(&self) {}
}

impl<T: RevocationTarget + ?Sized> RevocationTarget for Arc<T> {
    fn key_revoked(&self, key_id: Uuid) {
        (**self).key_revoked(key_id);
    }

    fn events_missed(&self) {
        (**self).events_missed();
    }
}

/// A [`RevocationTarget`] made of two closures: one per revoked key id, one when events may
/// have been missed.
///
/// ```
/// use keygate::fleet::FnTarget;
///
/// let target = FnTarget::new(|key_id| println!("revoked {key_id}"), || println!("missed"));
/// # let _ = target;
/// ```
pub struct FnTarget<R, M> {
    on_revoked: R,
    on_missed: M,
}

impl<R, M> FnTarget<R, M>
where
    R: Fn(Uuid) + Send + Sync + 'static,
    M: Fn() + Send + Sync + 'static,
{
    /// A target that calls `on_revoked` with each key id and `on_missed` after a reconnection.
    pub fn new(on_revoked: R, on_missed: M) -> Self {
        Self {
            on_revoked,
            on_missed,
        }
    }
}

impl<R, M> RevocationTarget for FnTarget<R, M>
where
    R: Fn(Uuid) + Send + Sync + 'static,
    M: Fn() + Send + Sync + 'static,
{
    fn key_revoked(&self, key_id: Uuid) {
        (self.on_revoked)(key_id);
    }

    fn events_missed(&self) {
        (self.on_missed)();
    }
}

impl<R, M> fmt::Debug for FnTarget<R, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnTarget").finish_non_exhaustive()
    }
}

/// Turns what `spawn` is given into a target: a cache by reference (cloned: clones share one
/// cache), or any [`RevocationTarget`] by value.
pub trait IntoRevocationTarget {
    /// The target.
    type Target: RevocationTarget;

    /// Converts.
    fn into_target(self) -> Self::Target;
}

impl<T: RevocationTarget> IntoRevocationTarget for T {
    type Target = T;

    fn into_target(self) -> T {
        self
    }
}

impl<V: KeyVerifier> IntoRevocationTarget for &CachedVerifier<V> {
    type Target = CachedVerifier<V>;

    fn into_target(self) -> CachedVerifier<V> {
        self.clone()
    }
}

/// Where a feed stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FeedState {
    /// Connecting for the first time.
    Connecting,
    /// Listening.
    Connected,
    /// Lost its connection; trying again after a backoff. The cache answers from its entries
    /// meanwhile.
    Reconnecting,
    /// Shut down (or its handle was dropped).
    Stopped,
}

impl FeedState {
    /// A short stable name for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            FeedState::Connecting => "connecting",
            FeedState::Connected => "connected",
            FeedState::Reconnecting => "reconnecting",
            FeedState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for FeedState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of a feed's state and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeedStatus {
    /// Connected, reconnecting, …
    pub state: FeedState,
    /// When the current connection started listening, while connected.
    pub connected_since: Option<SystemTime>,
    /// When the last event (a key id, or an ignored payload) arrived.
    pub last_event: Option<SystemTime>,
    /// Key ids received and passed on.
    pub events: u64,
    /// Payloads ignored because they were not a key id.
    pub ignored: u64,
    /// Times the feed listened again after losing its connection.
    pub reconnects: u64,
    /// Failed connection attempts so far.
    pub failed_attempts: u64,
    /// Why the last connection ended or the last attempt failed, if one did.
    pub last_error: Option<Arc<str>>,
}

impl FeedStatus {
    fn new() -> Self {
        Self {
            state: FeedState::Connecting,
            connected_since: None,
            last_event: None,
            events: 0,
            ignored: 0,
            reconnects: 0,
            failed_attempts: 0,
            last_error: None,
        }
    }

    /// Whether the feed is listening.
    pub fn is_connected(&self) -> bool {
        self.state == FeedState::Connected
    }
}

/// A feed could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The connection URL or options are not usable.
    #[error("invalid connection settings: {0}")]
    InvalidSettings(String),
    /// The channel name is empty, too long, or holds a NUL.
    #[error("invalid channel name: {0}")]
    InvalidChannel(&'static str),
    /// The publisher could not connect (feeds never report this: they keep trying).
    #[error("could not connect: {0}")]
    Connect(String),
    /// `spawn` was called outside a tokio runtime.
    #[error("a revocation feed needs a tokio runtime")]
    NoRuntime,
}

/// The handle of a running feed. Keep it as long as the service runs: dropping it stops the
/// feed.
#[must_use = "dropping the handle stops the feed"]
pub struct RevocationFeed {
    status: watch::Receiver<FeedStatus>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RevocationFeed {
    pub(crate) fn new(
        status: watch::Receiver<FeedStatus>,
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    ) -> Self {
        Self {
            status,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// The feed's state and counters now.
    pub fn status(&self) -> FeedStatus {
        self.status.borrow().clone()
    }

    /// Waits until the feed listens, for at most `timeout`. `true` if it does.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, FeedStatus::is_connected).await
    }

    /// Waits until `predicate` holds for the feed's status, for at most `timeout`. `true` if
    /// it does.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut predicate: impl FnMut(&FeedStatus) -> bool,
    ) -> bool {
        let mut status = self.status.clone();
        let waited = tokio::time::timeout(timeout, status.wait_for(|s| predicate(s))).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Stops the feed and waits for its task to end (and its connection to close).
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RevocationFeed {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl fmt::Debug for RevocationFeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationFeed")
            .field("status", &*self.status.borrow())
            .finish()
    }
}

/// What a payload says: the key id, and when it was revoked if the sender said so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Revoked {
    pub(crate) key_id: Uuid,
    /// Milliseconds since the Unix epoch, by the sender's clock.
    pub(crate) at_millis: Option<i64>,
}

/// The key id in a payload, if it starts with one: `<key id>` (what older triggers and
/// publishers send) or `<key id> <millis>` (the revocation's time, in milliseconds since the
/// Unix epoch). Surrounding whitespace is allowed; a time that cannot be read is left out (the
/// key is dropped all the same).
pub(crate) fn parse_payload(payload: &str) -> Option<Revoked> {
    let mut parts = payload.split_ascii_whitespace();
    let key_id = Uuid::try_parse(parts.next()?).ok()?;
    let at_millis = parts.next().and_then(|time| time.parse::<i64>().ok());
    Some(Revoked { key_id, at_millis })
}

/// At most the first four characters of a payload that is not a key id, for a log line: were
/// it a key sent by mistake, that much gives nothing away.
pub(crate) fn payload_prefix(payload: &str) -> &str {
    match payload.char_indices().nth(4) {
        Some((at, _)) => &payload[..at],
        None => payload,
    }
}
