//! Revocation feeds across instances: several `CachedVerifier`s (separate caches, separate
//! connections, a positive TTL of 10 minutes) share one source of truth; a key verified on all
//! of them and revoked through one must be refused by all of them within 1 s, because the feed
//! told them, not because a TTL ran out.
//!
//! - `pg`: PostgreSQL `LISTEN`/`NOTIFY` over `PostgresKeyStore`: each instance is a store with
//!   a pool of its own, over one fresh schema per test that the store migrates (its trigger
//!   sends `pg_notify` in the revoking transaction); keys are created and revoked through the
//!   store's API.
//! - `redis_pubsub`: Redis pub/sub, with keys managed through `StackAuthClient` against
//!   keygate's key server on a loopback port, and a `RedisRevocationPublisher` attached to the
//!   client that revokes.
//!
//! Faults: the listening connection is cut (`pg_terminate_backend`, `CLIENT KILL`) while its
//! dedicated role / ACL user is refused, a key is revoked during the outage, and the feed must
//! enforce it once it is back (or, with `OnReconnect::KeepCache`, must not).
//!
//! The tests read `DATABASE_URL` / `REDIS_URL`; unset, they print a skip line and pass, unless
//! `KEYGATE_REQUIRE_SERVICES=1`.

mod fleet {
    pub mod pg;
    pub mod redis_pubsub;
}

mod common;

use std::time::{Duration, Instant};

use keygate::key::ApiKey;
use keygate::verify::KeyVerifier;
use keygate::CachedVerifier;
use uuid::Uuid;

/// The positive TTL of every cache here: far longer than any test.
pub const TTL: Duration = Duration::from_secs(600);
/// The bound the issue names.
pub const WITHIN: Duration = Duration::from_secs(1);
/// Rounds of the three-instance tests.
pub const ROUNDS: usize = 50;
/// Any wait for a feed (connect, reconnect) gives up after this.
pub const WAIT: Duration = Duration::from_secs(10);

/// A short unique suffix for schema, channel, role and user names.
pub fn suffix() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// Whether `cache` accepts `key` now. A verifier error fails the test.
pub async fn accepts<V: KeyVerifier>(cache: &CachedVerifier<V>, key: &ApiKey) -> bool {
    match cache.verify(key).await {
        Ok(verdict) => verdict.is_valid(),
        Err(error) => panic!("verifier failed: {error}"),
    }
}

/// Verifies `key` on every cache (it must be valid), then once more to check the second answer
/// is a cache hit: from here on only a feed can make these caches refuse it.
pub async fn warm<V: KeyVerifier>(caches: &[&CachedVerifier<V>], key: &ApiKey) {
    for (i, cache) in caches.iter().enumerate() {
        assert!(accepts(cache, key).await, "instance {i} refuses a live key");
        let calls = cache.stats().verifier_calls;
        assert!(accepts(cache, key).await);
        assert_eq!(cache.stats().verifier_calls, calls, "instance {i}: no hit");
    }
}

/// Polls every cache until all refuse `key`, for at most `limit` from `start`. Returns when
/// the last one refused, or the instances still accepting at the limit.
pub async fn until_all_refuse<V: KeyVerifier>(
    caches: &[&CachedVerifier<V>],
    key: &ApiKey,
    start: Instant,
    limit: Duration,
) -> Result<Duration, Vec<usize>> {
    let mut pending: Vec<usize> = (0..caches.len()).collect();
    loop {
        let mut still = Vec::new();
        for &i in &pending {
            if accepts(caches[i], key).await {
                still.push(i);
            }
        }
        pending = still;
        let elapsed = start.elapsed();
        if pending.is_empty() {
            return Ok(elapsed);
        }
        if elapsed > limit {
            return Err(pending);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Median and max of `delays`, printed with `label`.
pub fn report(label: &str, delays: &mut [Duration]) -> (Duration, Duration) {
    delays.sort();
    let median = delays[delays.len() / 2];
    let max = delays[delays.len() - 1];
    eprintln!(
        "{label}: {} revocations, median {:.2} ms, max {:.2} ms",
        delays.len(),
        median.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
    (median, max)
}
