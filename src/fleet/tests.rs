//! The feed loop over a scripted source: no database, no Redis.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::driver::{self, Backoff, Connection, Event, Settings, Source};
use super::*;

/// What a scripted connection attempt does.
enum Attempt {
    Fail,
    /// Connects; the connection yields what the test sends on the channel, and is lost when
    /// the sender is dropped.
    Connect(mpsc::UnboundedReceiver<String>),
}

struct Scripted {
    attempts: mpsc::UnboundedReceiver<Attempt>,
}

struct ScriptedConn(mpsc::UnboundedReceiver<String>);

impl Source for Scripted {
    type Conn = ScriptedConn;

    async fn connect(&mut self) -> Result<ScriptedConn, String> {
        match self.attempts.recv().await {
            Some(Attempt::Connect(rx)) => Ok(ScriptedConn(rx)),
            Some(Attempt::Fail) => Err("refused".to_owned()),
            None => std::future::pending().await,
        }
    }

    fn name(&self) -> &'static str {
        "scripted"
    }
}

impl Connection for ScriptedConn {
    async fn next(&mut self) -> Event {
        match self.0.recv().await {
            Some(payload) => Event::Payload(payload),
            None => Event::Lost("closed".to_owned()),
        }
    }
}

#[derive(Default)]
struct Recorder {
    revoked: Mutex<Vec<Uuid>>,
    missed: AtomicUsize,
}

impl RevocationTarget for Recorder {
    fn key_revoked(&self, key_id: Uuid) {
        self.revoked.lock().expect("lock").push(key_id);
    }

    fn events_missed(&self) {
        self.missed.fetch_add(1, Ordering::SeqCst);
    }
}

fn settings(on_reconnect: OnReconnect) -> Settings {
    Settings {
        on_reconnect,
        backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
    }
}

const WAIT: Duration = Duration::from_secs(5);

struct Harness {
    attempts: mpsc::UnboundedSender<Attempt>,
    target: Arc<Recorder>,
    feed: RevocationFeed,
}

impl Harness {
    fn start(on_reconnect: OnReconnect) -> Self {
        let (attempts, rx) = mpsc::unbounded_channel();
        let target = Arc::new(Recorder::default());
        let feed = driver::spawn(
            Scripted { attempts: rx },
            Arc::clone(&target),
            settings(on_reconnect),
        )
        .expect("runtime");
        Self {
            attempts,
            target,
            feed,
        }
    }

    /// Makes the next attempt connect; returns the sender of its payloads.
    fn connect(&self) -> mpsc::UnboundedSender<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.attempts
            .send(Attempt::Connect(rx))
            .expect("feed alive");
        tx
    }

    fn revoked(&self) -> Vec<Uuid> {
        self.target.revoked.lock().expect("lock").clone()
    }

    fn missed(&self) -> usize {
        self.target.missed.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn key_ids_are_passed_on_and_garbage_is_counted_and_ignored() {
    let h = Harness::start(OnReconnect::EmptyCache);
    assert_eq!(h.feed.status().state, FeedState::Connecting);
    let conn = h.connect();
    assert!(h.feed.wait_connected(WAIT).await);
    let id = Uuid::new_v4();
    for payload in [
        "not a key id".to_owned(),
        "sk_abcdefghijklmnopqrstuvwxyz".to_owned(),
        String::new(),
        "\u{1F600}\u{1F600}\u{1F600}\u{1F600}\u{1F600}".to_owned(),
        format!(" {id}\n"),
    ] {
        conn.send(payload).expect("connected");
    }
    assert!(h.feed.wait_for(WAIT, |s| s.events == 1).await);
    let status = h.feed.status();
    assert_eq!((status.events, status.ignored), (1, 4), "{status:?}");
    assert!(status.last_event.is_some());
    assert_eq!(h.revoked(), vec![id]);
    assert!(status.is_connected());
    assert_eq!(status.reconnects, 0);
}

#[tokio::test]
async fn a_lost_connection_is_retried_with_backoff_and_empties_the_cache_once_back() {
    let h = Harness::start(OnReconnect::EmptyCache);
    let conn = h.connect();
    assert!(h.feed.wait_connected(WAIT).await);
    // The first connection empties whatever was cached before the feed listened.
    assert_eq!(h.missed(), 1);
    drop(conn);
    assert!(
        h.feed
            .wait_for(WAIT, |s| s.state == FeedState::Reconnecting)
            .await
    );
    assert_eq!(h.feed.status().last_error.as_deref(), Some("closed"));
    // Two refusals, then back.
    h.attempts.send(Attempt::Fail).expect("alive");
    h.attempts.send(Attempt::Fail).expect("alive");
    let conn = h.connect();
    assert!(h.feed.wait_for(WAIT, |s| s.reconnects == 1).await);
    let status = h.feed.status();
    assert_eq!(status.state, FeedState::Connected);
    assert_eq!(status.failed_attempts, 2);
    assert_eq!(h.missed(), 2, "emptied again once listening");
    let id = Uuid::new_v4();
    conn.send(id.to_string()).expect("connected");
    assert!(h.feed.wait_for(WAIT, |s| s.events == 1).await);
    assert_eq!(h.revoked(), vec![id]);
}

#[tokio::test]
async fn keep_cache_never_empties_it() {
    let h = Harness::start(OnReconnect::KeepCache);
    drop(h.connect());
    let _conn = h.connect();
    assert!(h.feed.wait_for(WAIT, |s| s.reconnects == 1).await);
    assert_eq!(h.missed(), 0);
}

#[tokio::test]
async fn shutdown_stops_the_feed_and_dropping_the_handle_stops_the_task() {
    let h = Harness::start(OnReconnect::EmptyCache);
    let conn = h.connect();
    assert!(h.feed.wait_connected(WAIT).await);
    let status = h.feed.status.clone();
    h.feed.shutdown().await;
    assert_eq!(status.borrow().state, FeedState::Stopped);
    assert!(
        conn.send(Uuid::new_v4().to_string()).is_err(),
        "the connection was closed"
    );
    assert!(h.target.revoked.lock().expect("lock").is_empty());

    let h = Harness::start(OnReconnect::EmptyCache);
    let conn = h.connect();
    assert!(h.feed.wait_connected(WAIT).await);
    drop(h.feed);
    // The aborted task drops its connection.
    tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("connection closed after the handle was dropped");
}

#[tokio::test]
async fn caches_are_targets() {
    use crate::key::{ApiKey, Deployment, KeyKind};
    use crate::verify::{KeyInfo, KeyVerifier, Owner, Verdict, VerifyError};

    struct AllValid;
    impl KeyVerifier for AllValid {
        async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
            Ok(Verdict::valid(KeyInfo::new(
                key.key_id(),
                Owner::user("u"),
                false,
            )))
        }
    }

    let cache = crate::CachedVerifier::new(AllValid);
    let key = ApiKey::generate(Uuid::new_v4(), KeyKind::User, false, Deployment::SelfHosted)
        .expect("rng");
    let other = ApiKey::generate(Uuid::new_v4(), KeyKind::User, false, Deployment::SelfHosted)
        .expect("rng");
    cache.verify(&key).await.expect("verify");
    cache.verify(&other).await.expect("verify");
    let target = (&cache).into_target();
    target.key_revoked(key.key_id());
    assert!(cache.verify_now(&key).is_none(), "dropped");
    assert!(cache.verify_now(&other).is_some(), "kept");
    target.events_missed();
    assert!(cache.verify_now(&other).is_none(), "emptied");
}

#[test]
fn backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
    let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let ceilings: Vec<_> = (0..8).map(|n| b.ceiling(n).as_millis()).collect();
    assert_eq!(ceilings, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(5));
    for attempt in [0, 3, 40] {
        let ceiling = b.ceiling(attempt);
        let delays: Vec<_> = (0..50).map(|_| b.delay(attempt)).collect();
        assert!(delays.iter().all(|d| *d >= ceiling / 2 && *d <= ceiling));
        assert!(delays.iter().any(|d| *d != delays[0]), "jittered");
    }
    assert_eq!(
        Backoff::new(Duration::from_secs(2), Duration::from_secs(1)).max(),
        Duration::from_secs(2)
    );
    assert_eq!(
        Backoff::new(Duration::ZERO, Duration::ZERO).delay(3),
        Duration::ZERO
    );
}

#[test]
fn payloads_are_key_ids_and_only_a_short_prefix_of_anything_else_is_logged() {
    let id = Uuid::new_v4();
    let bare = Some(Revoked {
        key_id: id,
        at_millis: None,
    });
    assert_eq!(parse_payload(&id.to_string()), bare);
    assert_eq!(parse_payload(&format!(" {id}\n")), bare);
    assert_eq!(parse_payload(&id.simple().to_string()), bare);
    // With the revocation's time; a time that cannot be read still drops the key.
    assert_eq!(
        parse_payload(&format!("{id} 1764547200123")),
        Some(Revoked {
            key_id: id,
            at_millis: Some(1_764_547_200_123)
        })
    );
    assert_eq!(parse_payload(&format!("{id} soon")), bare);
    assert_eq!(parse_payload("not-a-uuid"), None);
    assert_eq!(parse_payload("not-a-uuid 1764547200123"), None);
    assert_eq!(parse_payload(""), None);
    assert_eq!(payload_prefix("sk_secretsecret"), "sk_s");
    assert_eq!(payload_prefix("ab"), "ab");
    assert_eq!(payload_prefix("ééééé"), "éééé");
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn bad_settings_are_reported_by_spawn() {
    let cache = crate::CachedVerifier::new(crate::MemoryKeyStore::new());
    let err = PgRevocationFeed::connect("not a URL")
        .spawn(&cache)
        .expect_err("not a URL");
    assert!(matches!(err, FeedError::InvalidSettings(_)), "{err}");
    for channel in ["", &"x".repeat(64), "a\0b"] {
        let err = PgRevocationFeed::connect("postgres://u:secret@127.0.0.1:1/db")
            .channel(channel)
            .spawn(&cache)
            .expect_err("bad channel");
        assert!(matches!(err, FeedError::InvalidChannel(_)), "{err}");
    }
    let err = PgRevocationFeed::connect("postgres://u:hunter2@[bad/db")
        .spawn(&cache)
        .expect_err("bad URL");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[cfg(feature = "postgres")]
#[test]
fn spawn_outside_a_runtime_is_an_error_not_a_panic() {
    let cache = crate::CachedVerifier::new(crate::MemoryKeyStore::new());
    let err = PgRevocationFeed::connect("postgres://127.0.0.1/db")
        .spawn(&cache)
        .expect_err("no runtime");
    assert!(matches!(err, FeedError::NoRuntime));
}

#[test]
fn lag_is_clamped_at_zero_and_dropped_past_a_day() {
    let at = 1_764_547_200_000_i64;
    let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(at as u64);
    assert_eq!(driver::lag(at - 250, now), Some(Duration::from_millis(250)));
    // The sender's clock runs ahead of ours.
    assert_eq!(driver::lag(at + 5_000, now), Some(Duration::ZERO));
    assert_eq!(
        driver::lag(at - 86_400_000, now),
        Some(Duration::from_secs(86_400))
    );
    assert_eq!(driver::lag(at - 86_400_001, now), None);
    assert_eq!(driver::lag(i64::MIN, now), None);
    assert_eq!(driver::lag(i64::MAX, now), Some(Duration::ZERO));
}

#[cfg(feature = "redis")]
#[test]
fn the_redis_publisher_sends_the_key_id_and_the_time() {
    let id = Uuid::new_v4();
    let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_547_200_123);
    let payload = super::redis::payload(id, now);
    assert_eq!(payload, format!("{id} 1764547200123"));
    assert_eq!(
        parse_payload(&payload),
        Some(Revoked {
            key_id: id,
            at_millis: Some(1_764_547_200_123)
        })
    );
}
