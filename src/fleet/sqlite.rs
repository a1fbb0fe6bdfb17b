//! [`SqliteRevocationFeed`]: key ids from the SQLite store's revocation log, polled.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::SqlitePool;
use tokio::time::{Interval, MissedTickBehavior};

use super::driver::{self, Backoff, Connection, Event, Settings, Source};
use super::{
    FeedError, IntoRevocationTarget, OnReconnect, RevocationFeed, DEFAULT_CONNECT_TIMEOUT,
};

/// Default time between two reads of the revocation log.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The shortest poll interval accepted.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(5);

/// The most log rows one poll reads; more wait for the next read, which follows at once.
const BATCH: i64 = 1000;

/// Where the feed starts: the highest `seq` the log ever handed out (SQLite keeps it in
/// `sqlite_sequence`, pruned rows included), and the lowest still in the log.
const POSITION: &str = "SELECT \
    (SELECT min(seq) FROM keygate_revocation_log), \
    (SELECT seq FROM sqlite_sequence WHERE name = 'keygate_revocation_log')";

const SINCE: &str = "SELECT seq, key_id, at_millis FROM keygate_revocation_log \
    WHERE seq > ?1 ORDER BY seq LIMIT ?2";

/// "No position yet" in the shared cursor.
const UNSET: i64 = -1;

/// Polls a SQLite store's revocation log and drops the keys it names from a cache: for
/// processes sharing one database file (a server, and the `keygate keys revoke` command, or
/// several servers on one host).
///
/// The store's triggers append a key's id to `keygate_revocation_log` in the transaction that
/// revokes it, changes its expiry or deletes it, whichever process wrote it; the feed reads the
/// rows after the last one it saw every [`poll_interval`](Self::poll_interval) (default
/// 200 ms), so a revocation reaches the cache within about one interval of its commit. The
/// log keeps an hour of revocations: a feed that could not read it for longer (its pool
/// failing, the process suspended) sees a gap and, by default, empties the cache. A failed
/// read is retried with [`Backoff`], resuming where the feed stopped: nothing is missed then.
///
/// The feed reads through the pool it is given (one short query per interval), which must
/// reach a database a [`SqliteKeyStore`](crate::store::SqliteKeyStore) has migrated. A
/// revocation through the store in this process reaches the caches that subscribed to it at
/// once, without the feed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
///
/// use keygate::fleet::SqliteRevocationFeed;
/// use keygate::store::SqliteKeyStore;
/// use keygate::CachedVerifier;
///
/// # let dir = tempfile::tempdir()?;
/// # let path = dir.path().join("keygate.db");
/// let store = SqliteKeyStore::open(&path).await?;
/// let cache = CachedVerifier::new(store.clone());
/// let feed = SqliteRevocationFeed::for_pool(store.pool())
///     .poll_interval(Duration::from_millis(100))
///     .spawn(&cache)?;
/// assert!(feed.wait_connected(Duration::from_secs(5)).await);
/// // … serve with `cache`; keep `feed` alive as long as the service runs.
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct SqliteRevocationFeed {
    pool: SqlitePool,
    settings: Settings,
    poll_interval: Duration,
    query_timeout: Duration,
}

impl SqliteRevocationFeed {
    /// A feed reading the log through `pool` (a clone of it: the pool is shared).
    pub fn for_pool(pool: &SqlitePool) -> Self {
        Self {
            pool: pool.clone(),
            settings: Settings {
                on_reconnect: OnReconnect::default(),
                backoff: Backoff::default(),
            },
            poll_interval: DEFAULT_POLL_INTERVAL,
            query_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The time between two reads of the log (default [`DEFAULT_POLL_INTERVAL`], at least
    /// 5 ms): about the longest a revocation made by another process waits to reach the cache.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(MIN_POLL_INTERVAL);
        self
    }

    /// What to do with the cache when revocations may have been missed: at start, and after a
    /// gap in the log (default: empty it). A failed read that recovers before the log is pruned
    /// past the feed's position misses nothing, and leaves the cache alone.
    pub fn on_reconnect(mut self, on_reconnect: OnReconnect) -> Self {
        self.settings.on_reconnect = on_reconnect;
        self
    }

    /// The waits between attempts after a failed read (default 100 ms doubling to 5 s,
    /// jittered).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// How long one read of the log may take, waiting for a connection included (default
    /// 10 s); a read that takes longer counts as failed.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// Starts polling on the current tokio runtime, telling `target` (a `&CachedVerifier`, or
    /// any [`RevocationTarget`](super::RevocationTarget)). Returns at once; the feed reads its
    /// starting position in the background, retrying until it can (see
    /// [`RevocationFeed::status`]).
    pub fn spawn(self, target: impl IntoRevocationTarget) -> Result<RevocationFeed, FeedError> {
        let source = SqliteSource {
            pool: self.pool,
            poll_interval: self.poll_interval,
            query_timeout: self.query_timeout,
            cursor: Arc::new(AtomicI64::new(UNSET)),
        };
        driver::spawn(source, target.into_target(), self.settings)
    }
}

struct SqliteSource {
    pool: SqlitePool,
    poll_interval: Duration,
    query_timeout: Duration,
    /// The last `seq` passed on, kept across failed reads ([`UNSET`] before the first).
    cursor: Arc<AtomicI64>,
}

impl Source for SqliteSource {
    type Conn = SqliteConn;

    async fn connect(&mut self) -> Result<SqliteConn, String> {
        let position =
            sqlx::query_as::<_, (Option<i64>, Option<i64>)>(POSITION).fetch_one(&self.pool);
        let (oldest, newest) = match tokio::time::timeout(self.query_timeout, position).await {
            Ok(Ok(position)) => position,
            Ok(Err(error)) => return Err(describe(&error)),
            Err(_) => return Err("reading the revocation log timed out".to_owned()),
        };
        let newest = newest.unwrap_or(0);
        let cursor = self.cursor.load(Ordering::Acquire);
        let may_have_missed = if cursor == UNSET {
            // Starting: what was revoked before is not ours to replay.
            self.cursor.store(newest, Ordering::Release);
            true
        } else {
            gap(cursor, oldest, newest)
        };
        let mut ticks = tokio::time::interval(self.poll_interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(SqliteConn {
            pool: self.pool.clone(),
            query_timeout: self.query_timeout,
            cursor: Arc::clone(&self.cursor),
            ticks,
            pending: VecDeque::new(),
            may_have_missed,
        })
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }
}

/// Whether rows after `cursor` were pruned before the feed read them: the log's oldest row
/// comes after the next one expected, or (the log empty) rows were written since.
fn gap(cursor: i64, oldest: Option<i64>, newest: i64) -> bool {
    match oldest {
        Some(oldest) => oldest > cursor.saturating_add(1),
        None => newest > cursor,
    }
}

/// A sqlx error, as the status shows it.
fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Configuration(_) => "invalid connection settings".to_owned(),
        other => other.to_string(),
    }
}

struct SqliteConn {
    pool: SqlitePool,
    query_timeout: Duration,
    cursor: Arc<AtomicI64>,
    ticks: Interval,
    /// Rows read and not yet passed on: `(seq, key_id, at_millis)`.
    pending: VecDeque<(i64, String, i64)>,
    may_have_missed: bool,
}

impl SqliteConn {
    async fn read(&self, after: i64) -> Result<Vec<(i64, String, i64)>, String> {
        let rows = sqlx::query_as::<_, (i64, String, i64)>(SINCE)
            .bind(after)
            .bind(BATCH)
            .fetch_all(&self.pool);
        match tokio::time::timeout(self.query_timeout, rows).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(error)) => Err(describe(&error)),
            Err(_) => Err("reading the revocation log timed out".to_owned()),
        }
    }
}

impl Connection for SqliteConn {
    async fn next(&mut self) -> Event {
        loop {
            if let Some((seq, key_id, at_millis)) = self.pending.pop_front() {
                self.cursor.store(seq, Ordering::Release);
                return Event::Payload(format!("{key_id} {at_millis}"));
            }
            // A full batch means more are waiting: read on without a tick.
            let after = self.cursor.load(Ordering::Acquire);
            self.ticks.tick().await;
            let rows = match self.read(after).await {
                Ok(rows) => rows,
                Err(error) => return Event::Lost(error),
            };
            if rows.len() as i64 == BATCH {
                self.ticks.reset_immediately();
            }
            let pruned = rows
                .first()
                .is_some_and(|(seq, _, _)| *seq > after.saturating_add(1));
            self.pending.extend(rows);
            if pruned {
                return Event::Missed;
            }
        }
    }

    fn may_have_missed(&self) -> bool {
        self.may_have_missed
    }
}
