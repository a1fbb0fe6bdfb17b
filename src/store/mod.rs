//! Key management with Stack Auth's semantics: the [`KeyStore`] trait and [`KeyRecord`].
//!
//! - **create** returns the full key exactly once ([`CreatedKey::key`]); afterwards only the
//!   last four characters are known ([`KeyRecord::last_four`]).
//! - **list** returns an owner's keys newest first.
//! - **revoke** is irreversible; revoking twice keeps the first timestamp.
//! - A key is checked in Stack Auth's order: not found, wrong type, **revoked, then expired**.
//!
//! Stores keep only the SHA-256 digest of each key. Three implement [`KeyStore`] and
//! [`KeyVerifier`](crate::KeyVerifier) with the same semantics, checked by one conformance suite:
//!
//! | store | feature | keys live |
//! | --- | --- | --- |
//! | [`MemoryKeyStore`] | always | in the process |
//! | `SqliteKeyStore` | `sqlite` | in a SQLite file (WAL), or `sqlite::memory:` |
//! | `PostgresKeyStore` | `postgres` | in PostgreSQL, with a revocation trigger for other instances |
//!
//! The SQL stores use runtime-checked queries (building the crate needs no database) and run
//! their embedded migrations (`migrations/` in the repository) when they open or connect. sqlx
//! records them in `_sqlx_migrations` by version:
//!
//! | version | store | adds |
//! | --- | --- | --- |
//! | `20261201000001` | both | the `keygate_api_keys` table (PostgreSQL: and its revocation trigger) |
//! | `20261201000002` | SQLite | the `keygate_revocation_log` table and its triggers, which `SqliteRevocationFeed` reads |
//! | `20261201000002` | PostgreSQL | the revocation notification carries the time of the change after the key id |
//!
//! A database made by an older keygate is brought up to date when it opens. keygate ignores
//! migrations it does not know, so an older keygate still opens a newer database (its writes go
//! through the newer triggers all the same); an application that runs its own sqlx migrations on
//! the same database must do the same (`set_ignore_missing`), or give keygate a schema of its
//! own (`PostgresKeyStore::builder(url).schema("keygate")`).
//!
//! ```
//! use keygate::store::{KeyStore, MemoryKeyStore, NewKey, WhyInvalid};
//! use keygate::verify::Owner;
//!
//! # tokio_test();
//! # fn tokio_test() { tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = MemoryKeyStore::new();
//! let created = store.create(Owner::user("user-1"), NewKey::new("CI token")).await?;
//! println!("shown once: {}", created.key.expose_secret());
//!
//! let revoked = store.revoke(created.record.id).await?;
//! assert_eq!(revoked.why_invalid(), Some(WhyInvalid::ManuallyRevoked));
//! # Ok::<_, keygate::store::StoreError>(())
//! # }).unwrap() }
//! ```

mod memory;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use crate::key::{ApiKey, KeyKind};
use crate::verify::{InvalidReason, KeyInfo, Owner, Verdict};

pub use memory::MemoryKeyStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresKeyStore, PostgresKeyStoreBuilder, REVOCATION_CHANNEL};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteKeyStore, SqliteKeyStoreBuilder};

/// What to create.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NewKey {
    /// A description for the owner's benefit.
    pub description: String,
    /// When the key expires; `None` for never.
    pub expires_at: Option<SystemTime>,
    /// A public (`pk_`) key: one the secret scanners leave alone.
    pub is_public: bool,
}

impl NewKey {
    /// A secret key that never expires.
    pub fn new(description: impl Into<String>) -> Self {
        Self {
            description: description.into(),
            expires_at: None,
            is_public: false,
        }
    }

    /// Sets when the key expires.
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Makes the key expire `ttl` from now.
    pub fn expires_in(self, ttl: Duration) -> Self {
        self.expires_at(SystemTime::now() + ttl)
    }

    /// Makes the key public (`pk_`).
    pub fn public(mut self, is_public: bool) -> Self {
        self.is_public = is_public;
        self
    }
}

/// Why a stored key is no longer valid (Stack Auth's `whyInvalid()`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum WhyInvalid {
    /// The key was revoked (`"manually-revoked"`).
    ManuallyRevoked,
    /// The key has expired (`"expired"`).
    Expired,
}

/// A stored key, without its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyRecord {
    /// The key's id.
    pub id: Uuid,
    /// The user or team that owns it.
    pub owner: Owner,
    /// The owner's description.
    pub description: String,
    /// When it was created (millisecond precision, as on the wire).
    pub created_at: SystemTime,
    /// When it expires, if ever.
    pub expires_at: Option<SystemTime>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<SystemTime>,
    /// A public (`pk_`) key.
    pub is_public: bool,
    /// The last four characters of the key.
    pub last_four: String,
}

impl KeyRecord {
    /// User or team key.
    pub fn kind(&self) -> KeyKind {
        self.owner.kind()
    }

    /// Why the key is not valid now, or `None` if it is: revoked is reported before expired.
    pub fn why_invalid(&self) -> Option<WhyInvalid> {
        self.why_invalid_at(SystemTime::now())
    }

    /// [`why_invalid`](Self::why_invalid) at a given instant.
    pub fn why_invalid_at(&self, now: SystemTime) -> Option<WhyInvalid> {
        if self.revoked_at.is_some() {
            Some(WhyInvalid::ManuallyRevoked)
        } else if self.expires_at.is_some_and(|at| at < now) {
            Some(WhyInvalid::Expired)
        } else {
            None
        }
    }

    /// Whether the key is valid now.
    pub fn is_valid(&self) -> bool {
        self.why_invalid().is_none()
    }

    /// Checks the record as Stack Auth's check endpoint does for a key presented on the
    /// `expected` route: wrong type, then revoked, then expired.
    pub fn check(&self, expected: KeyKind, now: SystemTime) -> Result<KeyInfo, InvalidReason> {
        if self.kind() != expected {
            return Err(InvalidReason::WrongType);
        }
        match self.why_invalid_at(now) {
            Some(WhyInvalid::ManuallyRevoked) => Err(InvalidReason::Revoked),
            Some(WhyInvalid::Expired) => Err(InvalidReason::Expired),
            None => Ok(KeyInfo::new(self.id, self.owner.clone(), self.is_public)
                .with_expires_at(self.expires_at)
                .with_description(&self.description)),
        }
    }

    /// The verdict for a key presented on the `expected` route.
    pub fn verdict(&self, expected: KeyKind, now: SystemTime) -> Verdict {
        match self.check(expected, now) {
            Ok(info) => Verdict::valid(info),
            Err(reason) => Verdict::Invalid(reason),
        }
    }
}

/// A key just created: the only time the full key is available.
#[derive(Debug)]
#[non_exhaustive]
pub struct CreatedKey {
    /// The full key. Hand it to its owner now; it cannot be shown again.
    pub key: ApiKey,
    /// The stored record.
    pub record: KeyRecord,
}

/// A store operation failed. Backend failures keep their cause as [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No key with this id.
    #[error("API key not found")]
    NotFound,
    /// The OS random number generator failed.
    #[error("random number generator failed")]
    Random(#[source] rand::rand_core::OsError),
    /// The backing database failed.
    #[error("key store backend failed: {message}")]
    Backend {
        /// What the store was doing, for operators (never a key).
        message: String,
        /// The backend's own error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl StoreError {
    /// A backend failure while doing `message`, caused by `source`.
    pub fn backend(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError::Backend {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

/// Key management with Stack Auth's semantics. Implementations store digests, never keys.
pub trait KeyStore: Send + Sync + 'static {
    /// Creates a key for `owner`. The result holds the full key; nothing else ever will.
    fn create(
        &self,
        owner: Owner,
        new: NewKey,
    ) -> impl Future<Output = Result<CreatedKey, StoreError>> + Send;

    /// The owner's keys, newest first, valid or not.
    fn list(
        &self,
        owner: &Owner,
    ) -> impl Future<Output = Result<Vec<KeyRecord>, StoreError>> + Send;

    /// One key by id.
    fn get(
        &self,
        key_id: Uuid,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// The record of the key presented, found by its digest.
    fn find(
        &self,
        key: &ApiKey,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// Replaces a key's description.
    fn update_description(
        &self,
        key_id: Uuid,
        description: String,
    ) -> impl Future<Output = Result<KeyRecord, StoreError>> + Send;

    /// Revokes a key, for good. Revoking a revoked key changes nothing and returns it.
    /// Caches that subscribed through [`KeyVerifier`](crate::KeyVerifier) forget it at once.
    fn revoke(&self, key_id: Uuid) -> impl Future<Output = Result<KeyRecord, StoreError>> + Send;
}

/// `t` truncated to whole milliseconds since the epoch, as Stack Auth keeps timestamps.
pub(crate) fn to_millis_precision(t: SystemTime) -> SystemTime {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> KeyRecord {
        KeyRecord {
            id: Uuid::new_v4(),
            owner: Owner::user("u"),
            description: "d".into(),
            created_at: SystemTime::now(),
            expires_at: None,
            revoked_at: None,
            is_public: false,
            last_four: "abcd".into(),
        }
    }

    #[test]
    fn revoked_is_reported_before_expired() {
        let now = SystemTime::now();
        let mut r = record();
        assert_eq!(r.why_invalid_at(now), None);
        r.expires_at = Some(now - Duration::from_secs(1));
        assert_eq!(r.why_invalid_at(now), Some(WhyInvalid::Expired));
        assert_eq!(r.check(KeyKind::User, now), Err(InvalidReason::Expired));
        r.revoked_at = Some(now);
        assert_eq!(r.why_invalid_at(now), Some(WhyInvalid::ManuallyRevoked));
        assert_eq!(r.check(KeyKind::User, now), Err(InvalidReason::Revoked));
        assert!(!r.is_valid());
    }

    #[test]
    fn wrong_type_is_reported_before_revoked() {
        let mut r = record();
        r.revoked_at = Some(SystemTime::now());
        assert_eq!(
            r.check(KeyKind::Team, SystemTime::now()),
            Err(InvalidReason::WrongType)
        );
    }

    #[test]
    fn why_invalid_serialises_like_the_sdk() {
        assert_eq!(
            serde_json::to_string(&WhyInvalid::ManuallyRevoked)
                .ok()
                .as_deref(),
            Some("\"manually-revoked\"")
        );
        assert_eq!(
            serde_json::to_string(&WhyInvalid::Expired).ok().as_deref(),
            Some("\"expired\"")
        );
    }

    #[test]
    fn millis_precision_drops_sub_millisecond_parts() {
        let t = UNIX_EPOCH + Duration::from_nanos(1_745_000_000_123_456_789);
        assert_eq!(
            to_millis_precision(t),
            UNIX_EPOCH + Duration::from_millis(1_745_000_000_123)
        );
    }

    #[test]
    fn a_backend_failure_keeps_its_cause() {
        use std::error::Error as _;
        let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "db down");
        let error = StoreError::backend("checking a key", cause);
        assert_eq!(
            error.to_string(),
            "key store backend failed: checking a key"
        );
        let source = error.source().map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("db down"));
    }
}
