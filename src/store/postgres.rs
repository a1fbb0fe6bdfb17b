//! [`PostgresKeyStore`]: keys in PostgreSQL (feature `postgres`).
//!
//! A connection pool (sqlx, rustls) over the same schema and semantics as
//! [`SqliteKeyStore`](super::SqliteKeyStore)'s, migrated on connect. It holds the SHA-256 digest
//! of each key, never the key; a check is one lookup in the unique digest index, a list one scan
//! of the `(owner_kind, owner_id, created_at DESC)` index.
//!
//! Every change of a key's `revoked_at` or `expires_at`, and every deletion, sends the key's id
//! (and the time of the change) on channel [`REVOCATION_CHANNEL`] from a trigger, in the writing
//! transaction: instances that `LISTEN` hear of a revocation exactly when it commits, whoever
//! made it.
//!
//! ```no_run
//! use keygate::store::{KeyStore, NewKey, PostgresKeyStore};
//! use keygate::verify::{KeyVerifier, Owner};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PostgresKeyStore::builder("postgres://postgres@127.0.0.1:5432/app")
//!     .schema("keygate")
//!     .max_connections(16)
//!     .connect()
//!     .await?;
//! let created = store.create(Owner::team("team-1"), NewKey::new("deploy bot")).await?;
//! assert!(store.verify(&created.key).await?.is_valid());
//! # Ok(())
//! # }
//! ```

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Connection as _;
use uuid::Uuid;

use super::sql::{self, key_columns, KeyRow};
use super::{CreatedKey, KeyRecord, KeyStore, NewKey, StoreError};
use crate::key::{ApiKey, Deployment};
use crate::verify::{
    InvalidReason, KeyVerifier, Owner, RevocationListener, RevocationListeners, Verdict,
    VerifyError,
};

/// The channel on which the schema's trigger announces revocations: the payload is the key's
/// id and the time of the change (`<key id> <milliseconds since the Unix epoch>`, by the
/// database's clock; the first migration sent the id alone), sent when the revoking (or
/// expiry-changing, or deleting) transaction commits.
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub const REVOCATION_CHANNEL: &str = crate::fleet::DEFAULT_CHANNEL;

type Row = KeyRow<Uuid>;

const SELECT_BY_DIGEST: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM keygate_api_keys WHERE digest = $1"
);
const SELECT_BY_ID: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM keygate_api_keys WHERE id = $1"
);
const SELECT_BY_OWNER: &str = concat!(
    "SELECT ",
    key_columns!(),
    " FROM keygate_api_keys WHERE owner_kind = $1 AND owner_id = $2",
    " ORDER BY created_at DESC, seq DESC"
);
const INSERT: &str = "INSERT INTO keygate_api_keys \
    (id, digest, owner_kind, owner_id, description, is_public, last_four, created_at, expires_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const UPDATE_DESCRIPTION: &str = concat!(
    "UPDATE keygate_api_keys SET description = $2 WHERE id = $1 RETURNING ",
    key_columns!()
);
// One statement: concurrent revocations queue on the row lock, the first timestamp is kept, and
// the trigger notifies only when revoked_at actually changed.
const REVOKE: &str = concat!(
    "UPDATE keygate_api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING ",
    key_columns!()
);

/// A key store and verifier in PostgreSQL. Cheap to clone: clones share one pool.
///
/// Same semantics as [`MemoryKeyStore`](super::MemoryKeyStore): digests only, the key shown once
/// at creation, lists newest first, revocation irreversible and idempotent (the first timestamp
/// is kept), Stack Auth's check order. Revocations through this store reach the caches that
/// subscribed to it at once; other instances learn of them on [`REVOCATION_CHANNEL`]. A
/// database failure during a check is a [`VerifyError`] with a `Retry-After`, which the layer
/// answers with 503 and caches never keep; the pool reconnects by itself.
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
#[derive(Clone, Debug)]
pub struct PostgresKeyStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    listeners: RevocationListeners,
    deployment: Deployment,
    check_timeout: Duration,
}

/// Options for [`PostgresKeyStore`]; made by [`PostgresKeyStore::builder`].
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
#[derive(Clone, Debug)]
#[must_use]
pub struct PostgresKeyStoreBuilder {
    url: String,
    schema: Option<String>,
    deployment: Deployment,
    max_connections: u32,
    acquire_timeout: Duration,
    check_timeout: Duration,
}

impl PostgresKeyStoreBuilder {
    /// Keeps the keys (and the migration history) in `schema`, created if missing; every pooled
    /// connection gets it as its `search_path`. A schema name is letters, digits and `_`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Mints keys marked with `deployment` in their scanner flag (default: self-hosted).
    pub fn deployment(mut self, deployment: Deployment) -> Self {
        self.deployment = deployment;
        self
    }

    /// The most connections the pool opens (default 10).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max.max(1);
        self
    }

    /// How long an operation waits for a connection, new or pooled (default 3 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long a check waits for the database before it answers "unavailable" (default 3 s).
    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.check_timeout = timeout;
        self
    }

    /// Connects, creates the schema if one was named and missing, and migrates.
    pub async fn connect(self) -> Result<PostgresKeyStore, StoreError> {
        let mut options = PgConnectOptions::from_str(&self.url)
            .map_err(|e| StoreError::backend("parsing the PostgreSQL URL", e))?;
        if let Some(schema) = &self.schema {
            if schema.is_empty()
                || schema.len() > 63
                || !schema
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(StoreError::Backend {
                    message: format!(
                        "schema name {schema:?} is not letters, digits and _ (at most 63)"
                    ),
                    source: None,
                });
            }
            let mut conn = sqlx::PgConnection::connect_with(&options)
                .await
                .map_err(|e| StoreError::backend("connecting to PostgreSQL", e))?;
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .execute(&mut conn)
                .await
                .map_err(|e| StoreError::backend("creating the key store's schema", e))?;
            let _ = conn.close().await;
            // Sent in the startup packet: no extra round trip per connection.
            options = options.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::backend("connecting to PostgreSQL", e))?;
        PostgresKeyStore::from_pool_with(pool, self.deployment, self.check_timeout).await
    }
}

impl PostgresKeyStore {
    /// Options for a store at `url` (`postgres://user@host:port/database`).
    pub fn builder(url: impl Into<String>) -> PostgresKeyStoreBuilder {
        PostgresKeyStoreBuilder {
            url: url.into(),
            schema: None,
            deployment: Deployment::SelfHosted,
            max_connections: 10,
            acquire_timeout: sql::DEFAULT_ACQUIRE_TIMEOUT,
            check_timeout: sql::DEFAULT_CHECK_TIMEOUT,
        }
    }

    /// Connects to `url` with the default options and migrates.
    pub async fn connect(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// A store over an existing pool; brings its schema up to date.
    pub async fn from_pool(pool: PgPool) -> Result<Self, StoreError> {
        Self::from_pool_with(pool, Deployment::SelfHosted, sql::DEFAULT_CHECK_TIMEOUT).await
    }

    async fn from_pool_with(
        pool: PgPool,
        deployment: Deployment,
        check_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        // Other migrations (the application's own) may share the database.
        migrator.set_ignore_missing(true);
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::backend("migrating the PostgreSQL key store", e))?;
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
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    async fn find_row(&self, key: &ApiKey) -> Result<Option<Row>, sqlx::Error> {
        sqlx::query_as::<_, Row>(SELECT_BY_DIGEST)
            .bind(&key.digest().as_bytes()[..])
            .fetch_optional(&self.inner.pool)
            .await
    }
}

impl KeyStore for PostgresKeyStore {
    async fn create(&self, owner: Owner, new: NewKey) -> Result<CreatedKey, StoreError> {
        let created = sql::mint(owner, new, self.inner.deployment)?;
        let r = &created.record;
        sqlx::query(INSERT)
            .bind(r.id)
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
            .bind(key_id)
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
            .bind(key_id)
            .bind(description)
            .fetch_one(&self.inner.pool)
            .await;
        sql::record("updating a key", row)
    }

    async fn revoke(&self, key_id: Uuid) -> Result<KeyRecord, StoreError> {
        let now = sql::to_millis(SystemTime::now());
        let row = sqlx::query_as::<_, Row>(REVOKE)
            .bind(key_id)
            .bind(now)
            .fetch_one(&self.inner.pool)
            .await;
        let record = sql::record("revoking a key", row)?;
        self.inner.listeners.notify(key_id);
        Ok(record)
    }
}

impl KeyVerifier for PostgresKeyStore {
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        let row = tokio::time::timeout(self.inner.check_timeout, self.find_row(key))
            .await
            .map_err(|_| sql::timed_out("PostgreSQL", self.inner.check_timeout))?;
        match sql::optional_record("checking a key", row) {
            Ok(None) => Ok(Verdict::Invalid(InvalidReason::NotFound)),
            Ok(Some(record)) => Ok(record.verdict(key.kind(), SystemTime::now())),
            Err(error) => Err(sql::unavailable("PostgreSQL", &error)),
        }
    }

    fn subscribe_revocations(&self, listener: RevocationListener) {
        self.inner.listeners.add(listener);
    }
}
