//! What the SQL stores share: the row they read, the conversions between rows and
//! [`KeyRecord`]s, and how database failures become [`StoreError`]s and [`VerifyError`]s.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

use super::{to_millis_precision, CreatedKey, KeyRecord, NewKey, StoreError};
use crate::key::{ApiKey, Deployment};
use crate::verify::{Owner, VerifyError, VerifyErrorKind};

/// The `Retry-After` a check suggests when the database failed or was too slow.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long a check waits for the database, unless configured: a slow database becomes a 503
/// rather than a request that hangs.
pub(crate) const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an operation waits for a pooled connection, unless configured.
pub(crate) const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The columns every query returns, in [`KeyRow`]'s order.
macro_rules! key_columns {
    () => {
        "id, owner_kind, owner_id, description, is_public, last_four, created_at, expires_at, revoked_at"
    };
}
pub(crate) use key_columns;

/// One row of `keygate_api_keys`, as read (the digest is never read back). `I` is the id's
/// column type: `TEXT` in SQLite, `UUID` in PostgreSQL.
#[derive(sqlx::FromRow)]
pub(crate) struct KeyRow<I> {
    id: I,
    owner_kind: String,
    owner_id: String,
    description: String,
    is_public: bool,
    last_four: String,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
}

/// An id column's value, as a [`Uuid`].
pub(crate) trait RowId {
    fn uuid(&self) -> Option<Uuid>;
}

impl RowId for Uuid {
    fn uuid(&self) -> Option<Uuid> {
        Some(*self)
    }
}

impl RowId for String {
    fn uuid(&self) -> Option<Uuid> {
        Uuid::try_parse(self).ok()
    }
}

/// A row that does not make a key: someone wrote to the table behind keygate's back.
#[derive(Debug, thiserror::Error)]
#[error("stored key row is corrupt: {0}")]
pub(crate) struct CorruptRow(&'static str);

impl<I: RowId> KeyRow<I> {
    /// The record this row holds.
    pub(crate) fn into_record(self) -> Result<KeyRecord, CorruptRow> {
        let id = self.id.uuid().ok_or(CorruptRow("id is not a UUID"))?;
        let owner_id: Arc<str> = Arc::from(self.owner_id);
        let owner = match self.owner_kind.as_str() {
            "user" => Owner::User(owner_id),
            "team" => Owner::Team(owner_id),
            _ => return Err(CorruptRow("owner_kind is neither user nor team")),
        };
        let time = |ms: i64| from_millis(ms).ok_or(CorruptRow("timestamp out of range"));
        Ok(KeyRecord {
            id,
            owner,
            description: self.description,
            created_at: time(self.created_at)?,
            expires_at: self.expires_at.map(time).transpose()?,
            revoked_at: self.revoked_at.map(time).transpose()?,
            is_public: self.is_public,
            last_four: self.last_four,
        })
    }
}

/// A row, or the error of reading it, as a store result.
pub(crate) fn record<I: RowId>(
    doing: &'static str,
    row: Result<KeyRow<I>, sqlx::Error>,
) -> Result<KeyRecord, StoreError> {
    row.map_err(|e| backend(doing, e))?
        .into_record()
        .map_err(|e| StoreError::backend(doing, e))
}

/// An optional row, or the error of reading it, as a store result.
pub(crate) fn optional_record<I: RowId>(
    doing: &'static str,
    row: Result<Option<KeyRow<I>>, sqlx::Error>,
) -> Result<Option<KeyRecord>, StoreError> {
    match row.map_err(|e| backend(doing, e))? {
        None => Ok(None),
        Some(row) => row
            .into_record()
            .map(Some)
            .map_err(|e| StoreError::backend(doing, e)),
    }
}

/// Rows, or the error of reading them, as a store result.
pub(crate) fn records<I: RowId>(
    doing: &'static str,
    rows: Result<Vec<KeyRow<I>>, sqlx::Error>,
) -> Result<Vec<KeyRecord>, StoreError> {
    rows.map_err(|e| backend(doing, e))?
        .into_iter()
        .map(|row| row.into_record().map_err(|e| StoreError::backend(doing, e)))
        .collect()
}

/// A database failure while doing `doing`. `RowNotFound` is not a failure: it is
/// [`StoreError::NotFound`].
pub(crate) fn backend(doing: &'static str, error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        other => StoreError::backend(doing, other),
    }
}

/// The answer of a check that could not be made: the layer turns it into 503 with
/// `Retry-After`, and caches never keep it.
pub(crate) fn unavailable(backend: &str, error: &StoreError) -> VerifyError {
    // The message names the database's failure, never the key (the query holds only its digest).
    let cause = std::error::Error::source(error)
        .map(ToString::to_string)
        .unwrap_or_else(|| error.to_string());
    VerifyError::new(
        VerifyErrorKind::Store,
        format!("{backend} key store failed: {cause}"),
    )
    .with_retry_after(RETRY_AFTER)
}

/// The answer of a check the database did not answer within `timeout`.
pub(crate) fn timed_out(backend: &str, timeout: Duration) -> VerifyError {
    VerifyError::new(
        VerifyErrorKind::Timeout,
        format!("{backend} key store did not answer within {timeout:?}"),
    )
    .with_retry_after(RETRY_AFTER)
}

/// `t` as milliseconds since the epoch (0 before it, `i64::MAX` past it).
pub(crate) fn to_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Milliseconds since the epoch as a time; `None` if it cannot be one.
pub(crate) fn from_millis(ms: i64) -> Option<SystemTime> {
    let ms = u64::try_from(ms).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// A new key for `owner` and the record to insert for it (timestamps at millisecond precision).
pub(crate) fn mint(
    owner: Owner,
    new: NewKey,
    deployment: Deployment,
) -> Result<CreatedKey, StoreError> {
    let id = Uuid::new_v4();
    let key = ApiKey::generate(id, owner.kind(), new.is_public, deployment)
        .map_err(StoreError::Random)?;
    let record = KeyRecord {
        id,
        owner,
        description: new.description,
        created_at: to_millis_precision(SystemTime::now()),
        expires_at: new.expires_at.map(to_millis_precision),
        revoked_at: None,
        is_public: new.is_public,
        last_four: key.last_four().to_owned(),
    };
    Ok(CreatedKey { key, record })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, kind: &str, created_at: i64) -> KeyRow<String> {
        KeyRow {
            id: id.into(),
            owner_kind: kind.into(),
            owner_id: "o".into(),
            description: "d".into(),
            is_public: false,
            last_four: "abcd".into(),
            created_at,
            expires_at: None,
            revoked_at: None,
        }
    }

    #[test]
    fn a_good_row_is_a_record() {
        let id = Uuid::new_v4();
        let record = row(&id.to_string(), "team", 1_700_000_000_123)
            .into_record()
            .expect("record");
        assert_eq!(record.id, id);
        assert_eq!(record.owner, Owner::team("o"));
        assert_eq!(to_millis(record.created_at), 1_700_000_000_123);
    }

    #[test]
    fn a_corrupt_row_is_an_error_not_a_panic() {
        let id = Uuid::new_v4().to_string();
        assert!(row("not-a-uuid", "user", 0).into_record().is_err());
        assert!(row(&id, "admin", 0).into_record().is_err());
        assert!(row(&id, "user", -1).into_record().is_err());
        assert!(row(&id, "user", i64::MAX).into_record().is_ok());
    }

    #[test]
    fn millis_round_trip_and_saturate() {
        let t = UNIX_EPOCH + Duration::from_millis(1_745_000_000_123);
        assert_eq!(from_millis(to_millis(t)), Some(t));
        assert_eq!(to_millis(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
