//! The loop every feed runs: connect, pass key ids on, and on a lost connection back off,
//! reconnect, and (by default) empty the cache.

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use rand::TryRngCore;
use tokio::sync::{oneshot, watch};

use super::{
    parse_payload, payload_prefix, FeedError, FeedState, FeedStatus, OnReconnect, RevocationFeed,
    RevocationTarget, Revoked,
};

/// How long a feed waits between connection attempts: `min`, doubled after each failure up to
/// `max`, each wait drawn at random between half of it and all of it (so that a fleet cut off
/// at once does not reconnect in one wave).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
}

impl Default for Backoff {
    /// 100 ms, doubling up to 5 s.
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

impl Backoff {
    /// Waits starting at `min` and capped at `max` (`max` is raised to `min` if lower).
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
        }
    }

    /// The first wait.
    pub fn min(&self) -> Duration {
        self.min
    }

    /// The cap.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The wait before attempt `attempt` (0 for the first retry), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The wait before attempt `attempt`, with jitter: between half the ceiling and the ceiling.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_micros()).unwrap_or(u64::MAX);
        let random = rand::rngs::OsRng.try_next_u64().unwrap_or(0);
        half + Duration::from_micros(random.checked_rem(spread + 1).unwrap_or(0))
    }
}

/// What a listening connection yields.
pub(crate) enum Event {
    /// A notification's payload.
    Payload(String),
    /// The connection is gone, and why.
    Lost(String),
    /// Events were lost while the source kept going (a log pruned past the feed's position):
    /// the driver treats it as a reconnection and applies [`OnReconnect`].
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Missed,
}

/// A source of notifications: opens a listening connection (subscribed when this returns).
pub(crate) trait Source: Send + 'static {
    /// A listening connection.
    type Conn: Connection;

    /// Connects and starts listening.
    fn connect(&mut self) -> impl Future<Output = Result<Self::Conn, String>> + Send;

    /// A name for logs and metrics: "postgres", "redis" or "sqlite".
    fn name(&self) -> &'static str;
}

/// A listening connection.
pub(crate) trait Connection: Send {
    /// The next payload, or the end of the connection. Checks the connection's health while
    /// idle.
    fn next(&mut self) -> impl Future<Output = Event> + Send;

    /// Whether events sent before this connection listened may have been missed. True for
    /// pub/sub sources; a source that replays from where it stopped (a log) says false unless
    /// it found a gap.
    fn may_have_missed(&self) -> bool {
        true
    }
}

/// The settings every feed shares.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    pub(crate) on_reconnect: OnReconnect,
    pub(crate) backoff: Backoff,
}

/// Starts `source`'s loop on the current runtime, telling `target`.
pub(crate) fn spawn(
    source: impl Source,
    target: impl RevocationTarget,
    settings: Settings,
) -> Result<RevocationFeed, FeedError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| FeedError::NoRuntime)?;
    let (status_tx, status_rx) = watch::channel(FeedStatus::new());
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = runtime.spawn(run(source, target, settings, status_tx, stop_rx));
    Ok(RevocationFeed::new(status_rx, stop_tx, task))
}

/// `fut`, unless `stop` fires (or its sender is dropped) first.
async fn unless_stopped<F: Future>(stop: &mut oneshot::Receiver<()>, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if Pin::new(&mut *stop).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        fut.as_mut().poll(cx).map(Some)
    })
    .await
}

/// An error message for the status: bounded, whatever the library put in it.
fn short(message: String) -> Arc<str> {
    const MAX: usize = 200;
    if message.len() <= MAX {
        return Arc::from(message);
    }
    let mut end = MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    Arc::from(format!("{}…", &message[..end]))
}

async fn run(
    mut source: impl Source,
    target: impl RevocationTarget,
    settings: Settings,
    status: watch::Sender<FeedStatus>,
    mut stop: oneshot::Receiver<()>,
) {
    let name = source.name();
    let mut ever_connected = false;
    // Failed attempts since the last connection that lasted.
    let mut attempt: u32 = 0;
    loop {
        let Some(connected) = unless_stopped(&mut stop, source.connect()).await else {
            break;
        };
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(feed = name, %error, attempt, "revocation feed: connection attempt failed");
                status.send_modify(|s| {
                    s.failed_attempts += 1;
                    s.last_error = Some(short(error));
                });
                let delay = settings.backoff.delay(attempt);
                attempt = attempt.saturating_add(1);
                if unless_stopped(&mut stop, tokio::time::sleep(delay))
                    .await
                    .is_none()
                {
                    break;
                }
                continue;
            }
        };
        // Listening now: whatever is revoked from here on reaches us. What was revoked before
        // (while we were away, or before the first connection) may not have.
        if settings.on_reconnect == OnReconnect::EmptyCache && conn.may_have_missed() {
            target.events_missed();
        }
        let since = SystemTime::now();
        status.send_modify(|s| {
            if ever_connected {
                s.reconnects += 1;
            }
            s.state = FeedState::Connected;
            s.connected_since = Some(since);
        });
        if ever_connected {
            tracing::info!(feed = name, on_reconnect = ?settings.on_reconnect, "revocation feed: listening again");
        } else {
            tracing::debug!(feed = name, "revocation feed: listening");
        }
        ever_connected = true;
        let reason = loop {
            let Some(event) = unless_stopped(&mut stop, conn.next()).await else {
                status.send_modify(|s| s.state = FeedState::Stopped);
                return;
            };
            match event {
                Event::Payload(payload) => deliver(&target, &status, name, &payload),
                Event::Lost(reason) => break reason,
                Event::Missed => {
                    tracing::warn!(feed = name, on_reconnect = ?settings.on_reconnect, "revocation feed: events were missed");
                    if settings.on_reconnect == OnReconnect::EmptyCache {
                        target.events_missed();
                    }
                }
            }
        };
        drop(conn);
        tracing::warn!(feed = name, error = %reason, "revocation feed: connection lost; serving from cache within its TTL while reconnecting");
        status.send_modify(|s| {
            s.state = FeedState::Reconnecting;
            s.connected_since = None;
            s.last_error = Some(short(reason));
        });
        // A connection that lasted resets the backoff; one that drops at once does not.
        if since.elapsed().unwrap_or_default() >= settings.backoff.max() {
            attempt = 0;
        }
        let delay = settings.backoff.delay(attempt);
        attempt = attempt.saturating_add(1);
        if unless_stopped(&mut stop, tokio::time::sleep(delay))
            .await
            .is_none()
        {
            break;
        }
    }
    status.send_modify(|s| {
        s.state = FeedState::Stopped;
        s.connected_since = None;
    });
}

fn deliver(
    target: &impl RevocationTarget,
    status: &watch::Sender<FeedStatus>,
    name: &'static str,
    payload: &str,
) {
    let now = SystemTime::now();
    match parse_payload(payload) {
        Some(Revoked { key_id, at_millis }) => {
            target.key_revoked(key_id);
            if let Some(lag) = at_millis.and_then(|at| lag(at, now)) {
                crate::metrics::fleet_lag(name, lag);
            }
            crate::metrics::fleet_payload(name, true);
            tracing::debug!(feed = name, %key_id, "revocation feed: key dropped");
            status.send_modify(|s| {
                s.events += 1;
                s.last_event = Some(now);
            });
        }
        None => {
            crate::metrics::fleet_payload(name, false);
            tracing::warn!(
                feed = name,
                prefix = payload_prefix(payload),
                len = payload.len(),
                "revocation feed: ignoring a payload that is not a key id"
            );
            status.send_modify(|s| {
                s.ignored += 1;
                s.last_event = Some(now);
            });
        }
    }
}

/// The longest lag recorded: a revocation time further back is a clock gone wrong (or a
/// replayed message), not a lag.
const MAX_LAG: Duration = Duration::from_secs(24 * 60 * 60);

/// The time from a revocation at `at_millis` (the sender's clock) to `now` (ours): `None` if
/// implausible (over a day), zero if the sender's clock runs ahead of ours.
pub(crate) fn lag(at_millis: i64, now: SystemTime) -> Option<Duration> {
    let now_millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|since| i64::try_from(since.as_millis()).ok())?;
    let lag = u64::try_from(now_millis.saturating_sub(at_millis)).unwrap_or(0);
    let lag = Duration::from_millis(lag);
    (lag <= MAX_LAG).then_some(lag)
}
