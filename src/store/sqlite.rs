//! [`SqliteKeyStore`]: keys in an embedded SQLite database (feature `sqlite`).
//!
//! The database is a file in WAL mode, created and migrated when it is opened
//! (`sqlite::memory:` opens a private in-memory one, for tests). It holds the SHA-256 digest of
//! each key, never the key; a check is one lookup in the unique digest index. Triggers append
//! the id of every key revoked, re-dated or deleted, by whichever process, to a revocation log
//! (an hour of it is kept), which [`SqliteRevocationFeed`](crate::fleet::SqliteRevocationFeed)
//! polls to bring those revocations to a running server's cache.
//!
//! ```
//! use keygate::store::{KeyStore, NewKey, SqliteKeyStore};
//! use keygate::verify::{KeyVerifier, Owner};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("keygate.db");
//! let store = SqliteKeyStore::open(&path).await?;
//! let created = store.create(Owner::user("user-1"), NewKey::new("CI token")).await?;
//! assert!(store.verify(&created.key).await?.is_valid());
//! drop(store);
//!
//! // The keys are still there after a restart.
//! let store = SqliteKeyStore::open(&path).await?;
//! assert!(store.verify(&created.key).await?.is_valid());
//! # Ok(())
//! # }
//! ```

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use uuid::Uuid;

use super::sql::{self, key_columns, KeyRow};
use super::{CreatedKey, KeyRecord, KeyStore, NewKey, StoreError};
use crate::key::{ApiKey, Deployment};
use crate::verify::{
    InvalidReason, KeyVerifier, Owner, RevocationListener, RevocationListeners, Verdict,
    VerifyError,
};

type Row = KeyRow<String>;

const SELECT_BY_DIGEST: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM keygate_api_keys WHERE digest = ?1"
);
const SELECT_BY_ID: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM keygate_api_keys WHERE id = ?1"
);
const SELECT_BY_OWNER: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM keygate_api_keys WHERE owner_kind = ?1 AND owner_id = ?2",
    " ORDER BY created_at DESC, rowid DESC"
);
const INSERT: &str = "INSERT INTO keygate_api_keys \
    (id, digest, owner_kind, owner_id, description, is_public, last_four, created_at, expires_at) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const UPDATE_DESCRIPTION: &str = concat!(
    "UPDATE keygate_api_keys SET description = ?2 WHERE id = ?1 RETURNING ",
    key_columns!()
);
// One statement: the first revocation's timestamp is kept, and the row comes back as it is now.
const REVOKE: &str = concat!(
    "UPDATE keygate_api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1 RETURNING ",
    key_columns!()
);

/// A key store and verifier in a SQLite database. Cheap to clone: clones share one pool.
///
/// Same semantics as [`MemoryKeyStore`](super::MemoryKeyStore): digests only, the key shown once
/// at creation, lists newest first, revocation irreversible and idempotent (the first timestamp
/// is kept), Stack Auth's check order. Revocations through the store reach the caches that
/// subscribed to it at once. A database failure during a check is a [`VerifyError`] with a
/// `Retry-After`, which the layer answers with 503 and caches never keep.
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
#[derive(Clone, Debug)]
pub struct SqliteKeyStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: SqlitePool,
    listeners: RevocationListeners,
    deployment: Deployment,
    check_timeout: Duration,
}

/// Options for [`SqliteKeyStore`]; made by [`SqliteKeyStore::builder`].
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
#[derive(Clone, Debug)]
#[must_use]
pub struct SqliteKeyStoreBuilder {
    location: std::path::PathBuf,
    deployment: Deployment,
    max_connections: u32,
    acquire_timeout: Duration,
    check_timeout: Duration,
}

impl SqliteKeyStoreBuilder {
    /// Mints keys marked with `deployment` in their scanner flag (default: self-hosted).
    pub fn deployment(mut self, deployment: Deployment) -> Self {
        self.deployment = deployment;
        self
    }

    /// The most connections the pool opens (default 8; an in-memory database always uses one).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long an operation waits for a free connection (default 3 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long a check waits for the database before it answers "unavailable" (default 3 s).
    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// Opens the database, creating it if missing, and brings its schema up to date.
    ///
    /// A file that is not a SQLite database, or cannot be read or written, is an error here.
    pub async fn open(self) -> Result<SqliteKeyStore, StoreError> {
        let location = self.location.to_string_lossy();
        let (options, in_memory) = if location.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(&location)
                .map_err(|e| StoreError::backend("parsing the SQLite URL", e))?;
            let in_memory = location.contains(":memory:") || location.contains("mode=memory");
            (options, in_memory)
        } else {
            (SqliteConnectOptions::new().filename(&self.location), false)
        };
        let options = options.create_if_missing(true);
        let pool = if in_memory {
            // One connection that lives as long as the pool: the database lives as long.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .acquire_timeout(self.acquire_timeout)
                .connect_with(options)
                .await
        } else {
            SqlitePoolOptions::new()
                .max_connections(self.max_connections)
                .acquire_timeout(self.acquire_timeout)
                .connect_with(options.journal_mode(SqliteJournalMode::Wal))
                .await
        }
        .map_err(|e| StoreError::backend("opening the SQLite database", e))?;
        SqliteKeyStore::from_pool_with(pool, self.deployment, self.check_timeout).await
    }
}

impl SqliteKeyStore {
    /// Options for a store at `location`: a file path, or a `sqlite:` URL
    /// (`sqlite://keygate.db`, `sqlite::memory:`).
    pub fn builder(location: impl AsRef<Path>) -> SqliteKeyStoreBuilder {
        SqliteKeyStoreBuilder {
            location: location.as_ref().to_path_buf(),
            deployment: Deployment::SelfHosted,
            max_connections: 8,
            acquire_timeout: sql::DEFAULT_ACQUIRE_TIMEOUT,
            check_timeout: sql::DEFAULT_CHECK_TIMEOUT,
        }
    }

    /// Opens (creating and migrating if needed) the database at `location`, a file path or a
    /// `sqlite:` URL, with the default options.
    pub async fn open(location: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::builder(location).open().await
    }

    /// A private in-memory database, gone when the store and its clones are dropped.
    pub async fn in_memory() -> Result<Self, StoreError> {
        Self::open("sqlite::memory:").await
    }

    /// A store over an existing pool; brings its schema up to date.
    pub async fn from_pool(pool: SqlitePool) -> Result<Self, StoreError> {
        Self::from_pool_with(pool, Deployment::SelfHosted, sql::DEFAULT_CHECK_TIMEOUT).await
    }

    async fn from_pool_with(
        pool: SqlitePool,
        deployment: Deployment,
        check_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut migrator = sqlx::migrate!("./migrations/sqlite");
        // Other migrations (the application's own) may share the database.
        migrator.set_ignore_missing(true);
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::backend("migrating the SQLite key store", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                listeners: RevocationListeners::default(),
                deployment,
                check_timeout,
            }),
        })
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    async fn find_row(&self, key: &ApiKey) -> Result<Option<Row>, sqlx::Error> {
        sqlx::query_as::<_, Row>(SELECT_BY_DIGEST)
            .bind(&key.digest().as_bytes()[..])
            .fetch_optional(&self.inner.pool)
            .await
    }
}

impl KeyStore for SqliteKeyStore {
    async fn create(&self, owner: Owner, new: NewKey) -> Result<CreatedKey, StoreError> {
        let created = sql::mint(owner, new, self.inner.deployment)?;
        let r = &created.record;
        sqlx::query(INSERT)
            .bind(r.id.hyphenated().to_string())
            .bind(&created.key.digest().as_bytes()[..])
            .bind(r.owner.kind().as_str())
            .bind(r.owner.id())
            .bind(&r.description)
            .bind(r.is_public)
            .bind(&r.last_four)
            .bind(sql::to_millis(r.created_at))
            .bind(r.expires_at.map(sql::to_millis))
            .execute(&self.inner.pool)
            .await
            .map_err(|e| sql::backend("creating a key", e))?;
        Ok(created)
    }

    async fn list(&self, owner: &Owner) -> Result<Vec<KeyRecord>, StoreError> {
        let rows = sqlx::query_as::<_, Row>(SELECT_BY_OWNER)
            .bind(owner.kind().as_str())
            .bind(owner.id())
            .fetch_all(&self.inner.pool)
            .await;
        sql::records("listing keys", rows)
    }

    async fn get(&self, key_id: Uuid) -> Result<Option<KeyRecord>, StoreError> {
        let row = sqlx::query_as::<_, Row>(SELECT_BY_ID)
            .bind(key_id.hyphenated().to_string())
            .fetch_optional(&self.inner.pool)
            .await;
        sql::optional_record("reading a key", row)
    }

    async fn find(&self, key: &ApiKey) -> Result<Option<KeyRecord>, StoreError> {
        sql::optional_record("finding a key", self.find_row(key).await)
    }

    async fn update_description(
        &self,
        key_id: Uuid,
        description: String,
    ) -> Result<KeyRecord, StoreError> {
        let row = sqlx::query_as::<_, Row>(UPDATE_DESCRIPTION)
            .bind(key_id.hyphenated().to_string())
            .bind(description)
            .fetch_one(&self.inner.pool)
            .await;
        sql::record("updating a key", row)
    }

    async fn revoke(&self, key_id: Uuid) -> Result<KeyRecord, StoreError> {
        let now = sql::to_millis(SystemTime::now());
        let row = sqlx::query_as::<_, Row>(REVOKE)
            .bind(key_id.hyphenated().to_string())
            .bind(now)
            .fetch_one(&self.inner.pool)
            .await;
        let record = sql::record("revoking a key", row)?;
        self.inner.listeners.notify(key_id);
        Ok(record)
    }
}

impl KeyVerifier for SqliteKeyStore {
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        let row = tokio::time::timeout(self.inner.check_timeout, self.find_row(key))
            .await
            .map_err(|_| sql::timed_out("SQLite", self.inner.check_timeout))?;
        match sql::optional_record("checking a key", row) {
            Ok(None) => Ok(Verdict::Invalid(InvalidReason::NotFound)),
            Ok(Some(record)) => Ok(record.verdict(key.kind(), SystemTime::now())),
            Err(error) => Err(sql::unavailable("SQLite", &error)),
        }
    }

    fn subscribe_revocations(&self, listener: RevocationListener) {
        self.inner.listeners.add(listener);
    }
}
