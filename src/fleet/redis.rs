//! Revocations over Redis pub/sub: [`RedisRevocationFeed`] subscribes, and
//! [`RedisRevocationPublisher`] publishes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink, PubSubStream};
use uuid::Uuid;

use super::driver::{self, Backoff, Connection, Event, Settings, Source};
use super::{
    FeedError, IntoRevocationTarget, OnReconnect, RevocationFeed, DEFAULT_CHANNEL,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_HEALTH_CHECK_INTERVAL,
};

/// Default time a publication may take.
pub const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Subscribes to revoked key ids on a Redis channel and drops them from a cache.
///
/// For fleets that verify through Stack Auth and have no PostgreSQL of their own: each instance
/// subscribes, and keys revoked through a `StackAuthClient` hooked to a
/// [`RedisRevocationPublisher`] reach every instance. A key revoked elsewhere (in Stack Auth's
/// dashboard, say) is not published: it stays accepted until the cache entry's TTL runs out.
///
/// ```no_run
/// # async fn run(verifier: keygate::MemoryKeyStore) -> Result<(), keygate::fleet::FeedError> {
/// use keygate::fleet::RedisRevocationFeed;
/// use keygate::CachedVerifier;
///
/// let cache = CachedVerifier::new(verifier);
/// let feed = RedisRevocationFeed::connect("redis://cache.internal:6379").spawn(&cache)?;
/// # let _ = feed;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct RedisRevocationFeed {
    client: Result<redis::Client, String>,
    channel: String,
    settings: Settings,
    health_check_interval: Duration,
    connect_timeout: Duration,
}

impl RedisRevocationFeed {
    /// A feed on the Redis server at `url` (`redis://[user:password@]host:port[/db]`). A URL
    /// that cannot be read is reported by [`spawn`](Self::spawn).
    pub fn connect(url: &str) -> Self {
        let client =
            redis::Client::open(url).map_err(|_| "the Redis URL cannot be read".to_owned());
        Self::from_result(client)
    }

    /// A feed through this client.
    pub fn with_client(client: redis::Client) -> Self {
        Self::from_result(Ok(client))
    }

    fn from_result(client: Result<redis::Client, String>) -> Self {
        Self {
            client,
            channel: DEFAULT_CHANNEL.to_owned(),
            settings: Settings {
                on_reconnect: OnReconnect::default(),
                backoff: Backoff::default(),
            },
            health_check_interval: DEFAULT_HEALTH_CHECK_INTERVAL,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }

    /// The channel to subscribe to (default [`DEFAULT_CHANNEL`](super::DEFAULT_CHANNEL)).
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
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

    /// How long an idle subscription goes before the feed checks it with `PING` (default 30 s).
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
        let client = self.client.map_err(FeedError::InvalidSettings)?;
        validate_channel(&self.channel)?;
        let source = RedisSource {
            client,
            channel: self.channel,
            health_check_interval: self.health_check_interval,
            connect_timeout: self.connect_timeout,
        };
        driver::spawn(source, target.into_target(), self.settings)
    }
}

fn validate_channel(channel: &str) -> Result<(), FeedError> {
    if channel.is_empty() {
        return Err(FeedError::InvalidChannel("empty"));
    }
    Ok(())
}

struct RedisSource {
    client: redis::Client,
    channel: String,
    health_check_interval: Duration,
    connect_timeout: Duration,
}

impl RedisSource {
    async fn try_connect(&self) -> redis::RedisResult<RedisConn> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        // Returns once the server confirmed the subscription.
        pubsub.subscribe(&self.channel).await?;
        let (sink, stream) = pubsub.split();
        Ok(RedisConn {
            sink,
            stream,
            health_check_interval: self.health_check_interval,
            timeout: self.connect_timeout,
        })
    }
}

impl Source for RedisSource {
    type Conn = RedisConn;

    async fn connect(&mut self) -> Result<RedisConn, String> {
        match tokio::time::timeout(self.connect_timeout, self.try_connect()).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("connection attempt timed out".to_owned()),
        }
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

struct RedisConn {
    sink: PubSubSink,
    stream: PubSubStream,
    health_check_interval: Duration,
    timeout: Duration,
}

impl Connection for RedisConn {
    async fn next(&mut self) -> Event {
        loop {
            // The stream is a channel fed by the connection's driver: cancel-safe.
            match tokio::time::timeout(self.health_check_interval, self.stream.next()).await {
                Ok(Some(message)) => {
                    let payload = String::from_utf8_lossy(message.get_payload_bytes());
                    return Event::Payload(payload.into_owned());
                }
                Ok(None) => return Event::Lost("the connection closed".to_owned()),
                Err(_idle) => {
                    let ping = self.sink.ping::<redis::Value>();
                    match tokio::time::timeout(self.timeout, ping).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Event::Lost(format!("health check: {error}")),
                        Err(_) => return Event::Lost("health check timed out".to_owned()),
                    }
                }
            }
        }
    }
}

/// Publishing a key id failed: subscribed instances were not told (their cache entries end with
/// the TTL).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// Redis refused the command or could not be reached.
    #[error("Redis publish failed")]
    Redis(#[source] redis::RedisError),
    /// Redis did not answer in time.
    #[error("Redis publish timed out")]
    Timeout,
}

/// Publishes revoked key ids on a Redis channel, for every [`RedisRevocationFeed`] subscribed
/// to it. Cheap to clone: clones share one connection, which reconnects by itself.
///
/// With feature `stack-auth`, [`attach`](Self::attach) publishes every revocation made through
/// a `StackAuthClient`, and [`revoke`](Self::revoke) revokes and publishes in one call, with
/// the publication's outcome.
#[derive(Clone)]
pub struct RedisRevocationPublisher {
    inner: Arc<PublisherInner>,
    /// Keeps the hooks registered by [`attach`](Self::attach) alive.
    #[cfg(feature = "stack-auth")]
    hook: Arc<dyn Fn(Uuid) + Send + Sync>,
}

struct PublisherInner {
    conn: ConnectionManager,
    channel: String,
    timeout: Duration,
}

impl RedisRevocationPublisher {
    /// Connects to the Redis server at `url`, publishing on
    /// [`DEFAULT_CHANNEL`](super::DEFAULT_CHANNEL).
    pub async fn connect(url: &str) -> Result<Self, FeedError> {
        Self::connect_on(url, DEFAULT_CHANNEL).await
    }

    /// Connects to the Redis server at `url`, publishing on `channel`.
    pub async fn connect_on(url: &str, channel: &str) -> Result<Self, FeedError> {
        let client = redis::Client::open(url)
            .map_err(|_| FeedError::InvalidSettings("the Redis URL cannot be read".to_owned()))?;
        Self::with_client(client, channel).await
    }

    /// Connects through `client`, publishing on `channel`.
    pub async fn with_client(client: redis::Client, channel: &str) -> Result<Self, FeedError> {
        validate_channel(channel)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(DEFAULT_CONNECT_TIMEOUT))
            .set_response_timeout(Some(DEFAULT_PUBLISH_TIMEOUT));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| FeedError::Connect(format!("Redis: {e}")))?;
        let inner = Arc::new(PublisherInner {
            conn,
            channel: channel.to_owned(),
            timeout: DEFAULT_PUBLISH_TIMEOUT,
        });
        Ok(Self {
            #[cfg(feature = "stack-auth")]
            hook: hook(&inner),
            inner,
        })
    }

    /// The channel it publishes on.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    /// Publishes `key_id`, followed by the time now in milliseconds since the Unix epoch (which
    /// feeds turn into their lag histogram). Answers how many subscribers Redis handed it to.
    pub async fn publish(&self, key_id: Uuid) -> Result<u64, PublishError> {
        self.inner.publish(key_id).await
    }
}

impl PublisherInner {
    async fn publish(&self, key_id: Uuid) -> Result<u64, PublishError> {
        let mut conn = self.conn.clone();
        let command = redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(payload(key_id, std::time::SystemTime::now()))
            .to_owned();
        match tokio::time::timeout(self.timeout, command.query_async::<u64>(&mut conn)).await {
            Ok(Ok(receivers)) => Ok(receivers),
            Ok(Err(error)) => Err(PublishError::Redis(error)),
            Err(_) => Err(PublishError::Timeout),
        }
    }
}

/// `<key id> <millis>`: what the publisher sends.
pub(super) fn payload(key_id: Uuid, now: std::time::SystemTime) -> String {
    let millis = now
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|since| since.as_millis())
        .unwrap_or(0);
    format!("{} {millis}", key_id.hyphenated())
}

impl std::fmt::Debug for RedisRevocationPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRevocationPublisher")
            .field("channel", &self.inner.channel)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "stack-auth")]
mod stack_auth {
    use std::sync::Arc;

    use uuid::Uuid;

    use super::{PublishError, PublisherInner, RedisRevocationPublisher};
    use crate::stack_auth::{StackAuthClient, StackAuthError};
    use crate::store::KeyRecord;
    use crate::verify::{Owner, RevocationListener};

    /// The hook [`RedisRevocationPublisher::attach`] registers: publishes in a task of its own,
    /// so that the revocation is not held up by Redis; a failure is logged.
    pub(super) fn hook(inner: &Arc<PublisherInner>) -> Arc<dyn Fn(Uuid) + Send + Sync> {
        let inner = Arc::clone(inner);
        Arc::new(move |key_id| {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                tracing::error!(%key_id, "revocation not published: no tokio runtime");
                return;
            };
            let inner = Arc::clone(&inner);
            runtime.spawn(async move {
                if let Err(error) = inner.publish(key_id).await {
                    tracing::error!(%key_id, %error, "revocation not published; other instances drop the key when its TTL ends");
                }
            });
        })
    }

    /// Revoking worked, but other instances may not have been told.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum RevokeAndPublishError {
        /// Stack Auth refused or failed the revocation: nothing was revoked or published.
        #[error(transparent)]
        Revoke(#[from] StackAuthError),
        /// The key is revoked (and dropped from this client's own subscribers), but the
        /// publication failed: other instances drop it when their TTL ends.
        #[error("key revoked, but the revocation was not published")]
        Publish {
            /// The revoked key.
            record: Box<KeyRecord>,
            /// Why publishing failed.
            #[source]
            error: PublishError,
        },
    }

    impl RedisRevocationPublisher {
        /// Publishes every key revoked through `client` (and its clones) from now on, for as
        /// long as this publisher (or a clone of it) lives. Each publication runs in a task of
        /// its own: `revoke` does not wait for Redis, and a failure is logged.
        pub fn attach(&self, client: &StackAuthClient) {
            client.subscribe_revocations(RevocationListener::new(&self.hook));
        }

        /// Revokes the key through `client`, then publishes its id and waits for Redis.
        pub async fn revoke(
            &self,
            client: &StackAuthClient,
            owner: &Owner,
            key_id: Uuid,
        ) -> Result<KeyRecord, RevokeAndPublishError> {
            let record = client.revoke(owner, key_id).await?;
            match self.publish(key_id).await {
                Ok(_) => Ok(record),
                Err(error) => Err(RevokeAndPublishError::Publish {
                    record: Box::new(record),
                    error,
                }),
            }
        }
    }
}

#[cfg(feature = "stack-auth")]
use stack_auth::hook;
#[cfg(feature = "stack-auth")]
pub use stack_auth::RevokeAndPublishError;
