//! [`PgRevocationFeed`]: key ids from PostgreSQL `LISTEN`/`NOTIFY`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use super::driver::{self, Backoff, Connection, Event, Settings, Source};
use super::{
    FeedError, IntoRevocationTarget, OnReconnect, RevocationFeed, DEFAULT_CHANNEL,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_HEALTH_CHECK_INTERVAL,
};

/// The `application_name` a feed's connection shows in `pg_stat_activity`, unless told
/// otherwise.
pub const DEFAULT_APPLICATION_NAME: &str = "keygate-revocation-feed";

/// PostgreSQL's longest identifier, in bytes (`NAMEDATALEN - 1`): a longer channel name would
/// be cut short by `LISTEN` and never match the trigger's.
const MAX_CHANNEL_LEN: usize = 63;

/// Listens for revoked key ids on a PostgreSQL channel and drops them from a cache.
///
/// The store's trigger calls `pg_notify(channel, "<key_id> <millis>")` in the transaction that
/// revokes a key, changes its expiry or deletes it: PostgreSQL delivers the notification when
/// (and only if) that transaction commits. One dedicated connection per feed (not taken from your
/// pool); it shows as [`DEFAULT_APPLICATION_NAME`] in `pg_stat_activity`.
///
/// ```no_run
/// # async fn run(verifier: keygate::MemoryKeyStore) -> Result<(), keygate::fleet::FeedError> {
/// use keygate::fleet::PgRevocationFeed;
/// use keygate::CachedVerifier;
///
/// let cache = CachedVerifier::new(verifier);
/// let feed = PgRevocationFeed::connect("postgres://keygate@db/keygate").spawn(&cache)?;
/// # let _ = feed;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct PgRevocationFeed {
    options: Result<PgConnectOptions, String>,
    application_name: Option<String>,
    channel: String,
    settings: Settings,
    health_check_interval: Duration,
    connect_timeout: Duration,
}

impl PgRevocationFeed {
    /// A feed on the database at `url` (`postgres://user:password@host:port/database?…`). A
    /// URL that cannot be read is reported by [`spawn`](Self::spawn).
    pub fn connect(url: &str) -> Self {
        // sqlx's parse error can quote the URL, password included: say less.
        let options = PgConnectOptions::from_str(url)
            .map_err(|_| "the PostgreSQL URL cannot be read".to_owned());
        Self::from_result(options)
    }

    /// A feed on the database these options reach.
    pub fn with_options(options: PgConnectOptions) -> Self {
        Self::from_result(Ok(options))
    }

    /// A feed on the database `pool` reaches, with its settings (credentials, TLS), on a
    /// connection of its own: the pool's connections are left alone.
    pub fn for_pool(pool: &sqlx::PgPool) -> Self {
        Self::with_options((*pool.connect_options()).clone())
    }

    fn from_result(options: Result<PgConnectOptions, String>) -> Self {
        Self {
            options,
            application_name: None,
            channel: DEFAULT_CHANNEL.to_owned(),
            settings: Settings {
                on_reconnect: OnReconnect::default(),
                backoff: Backoff::default(),
            },
            health_check_interval: DEFAULT_HEALTH_CHECK_INTERVAL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The channel to listen on (default [`DEFAULT_CHANNEL`]): the one the store's trigger
    /// notifies.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// The connection's `application_name` (default [`DEFAULT_APPLICATION_NAME`]).
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// What to do with the cache after a reconnection (default: empty it).
    pub fn on_reconnect(mut self, on_reconnect: OnReconnect) -> Self {
        self.settings.on_reconnect = on_reconnect;
        self
    }

    /// The waits between connection attempts (default 100 ms doubling to 5 s, jittered).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.settings.backoff = backoff;
        self
    }

    /// How long an idle connection goes before the feed checks it with `SELECT 1` (default
    /// 30 s): a connection that died silently is noticed within this time plus the connect
    /// timeout.
    pub fn health_check_interval(mut self, interval: Duration) -> Self {
        self.health_check_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How long a connection attempt, or a health check, may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Starts listening on the current tokio runtime, telling `target` (a `&CachedVerifier`,
    /// or any [`RevocationTarget`](super::RevocationTarget)). Returns at once; the feed connects
    /// in the background and retries until it can (see [`RevocationFeed::status`]).
    pub fn spawn(self, target: impl IntoRevocationTarget) -> Result<RevocationFeed, FeedError> {
        let options = self.options.map_err(FeedError::InvalidSettings)?;
        validate_channel(&self.channel)?;
        let options = options.application_name(
            self.application_name
                .as_deref()
                .unwrap_or(DEFAULT_APPLICATION_NAME),
        );
        let source = PgSource {
            options,
            channel: self.channel,
            health_check_interval: self.health_check_interval,
            connect_timeout: self.connect_timeout,
        };
        driver::spawn(source, target.into_target(), self.settings)
    }
}

pub(super) fn validate_channel(channel: &str) -> Result<(), FeedError> {
    if channel.is_empty() {
        return Err(FeedError::InvalidChannel("empty"));
    }
    if channel.len() > MAX_CHANNEL_LEN {
        return Err(FeedError::InvalidChannel(
            "longer than PostgreSQL's 63-byte identifiers",
        ));
    }
    if channel.contains('\0') {
        return Err(FeedError::InvalidChannel("holds a NUL"));
    }
    Ok(())
}

struct PgSource {
    options: PgConnectOptions,
    channel: String,
    health_check_interval: Duration,
    connect_timeout: Duration,
}

impl PgSource {
    async fn try_connect(&self) -> Result<PgConn, sqlx::Error> {
        // A pool of one, new for each connection: a connection that failed is never handed out
        // again.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(self.connect_timeout)
            .connect_with(self.options.clone())
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        // A lost connection is ours to re-establish: with backoff, and with the cache emptied.
        listener.eager_reconnect(false);
        listener.ignore_pool_close_event(true);
        listener.listen(&self.channel).await?;
        Ok(PgConn {
            listener,
            health_check_interval: self.health_check_interval,
            timeout: self.connect_timeout,
        })
    }
}

impl Source for PgSource {
    type Conn = PgConn;

    async fn connect(&mut self) -> Result<PgConn, String> {
        match tokio::time::timeout(self.connect_timeout, self.try_connect()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(error)) => Err(describe(&error)),
            Err(_) => Err("connection attempt timed out".to_owned()),
        }
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}

/// A sqlx error, without anything a URL could have put in it.
fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Configuration(_) => "invalid connection settings".to_owned(),
        other => other.to_string(),
    }
}

struct PgConn {
    listener: PgListener,
    health_check_interval: Duration,
    timeout: Duration,
}

impl Connection for PgConn {
    async fn next(&mut self) -> Event {
        loop {
            // `try_recv` is cancel-safe: a notification half read when the timer fires is
            // finished by the next call.
            match tokio::time::timeout(self.health_check_interval, self.listener.try_recv()).await {
                Ok(Ok(Some(notification))) => {
                    return Event::Payload(notification.payload().to_owned())
                }
                Ok(Ok(None)) => return Event::Lost("the connection closed".to_owned()),
                Ok(Err(error)) => return Event::Lost(describe(&error)),
                Err(_idle) => {
                    let check = sqlx::query("SELECT 1").execute(&mut self.listener);
                    match tokio::time::timeout(self.timeout, check).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => {
                            return Event::Lost(format!("health check: {}", describe(&error)))
                        }
                        Err(_) => return Event::Lost("health check timed out".to_owned()),
                    }
                }
            }
        }
    }
}
