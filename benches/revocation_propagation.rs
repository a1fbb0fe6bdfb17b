//! Revocation propagation: how long from "revoke" to "every instance dropped the key", over
//! 1,000 revocations each for PostgreSQL `LISTEN`/`NOTIFY` and Redis pub/sub, to three instances
//! (three caches, three feed connections) on loopback. Prints median, p99 and max.
//!
//! - PostgreSQL: three `PostgresKeyStore`s (a pool each) over one fresh schema the store
//!   migrates, each behind its own cache and `PgRevocationFeed`; the clock starts before
//!   `KeyStore::revoke` through one of them (in turn), whose trigger sends `pg_notify` in the
//!   revoking statement's transaction. The revoking instance's cache also hears of it in
//!   process; the figure is the time until all three feeds delivered it.
//! - Redis: the clock starts before `RedisRevocationPublisher::publish` (what a revocation
//!   through an attached `StackAuthClient` does after Stack Auth answered).
//!
//! It stops when each instance's cache has dropped the key (the feed's call into the cache
//! returned). Needs `DATABASE_URL` and `REDIS_URL`; a service whose variable is unset is
//! skipped.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379 \
//!   cargo bench --bench revocation_propagation --features postgres,redis
//! ```
//!
//! With `--features postgres,redis,metrics` it also prints what the feeds' lag histogram
//! (`keygate_fleet_revocation_lag_seconds`, from the revocation's time in the payload to the
//! feed's invalidation, in whole milliseconds of the sender's clock) recorded over the run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::fleet::{
    FnTarget, PgRevocationFeed, RedisRevocationFeed, RedisRevocationPublisher, RevocationFeed,
    RevocationTarget,
};
use keygate::key::{ApiKey, Deployment, KeyKind};
use keygate::store::{KeyStore, NewKey, REVOCATION_CHANNEL};
use keygate::verify::{KeyInfo, KeyVerifier, Owner, Verdict, VerifyError};
use keygate::{CachedVerifier, PostgresKeyStore};
use tokio::sync::mpsc;
use uuid::Uuid;

const REVOCATIONS: usize = 1_000;
const INSTANCES: usize = 3;
/// A revocation not seen by every instance within this is counted as lost.
const GIVE_UP: Duration = Duration::from_secs(2);

/// Says every key is valid: Redis's half is about the feed, not the lookup.
struct AllValid;

impl KeyVerifier for AllValid {
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        Ok(Verdict::valid(KeyInfo::new(
            key.key_id(),
            Owner::user("bench"),
            false,
        )))
    }
}

/// Three caches, each over the verifier `verifiers` gave it, each telling `seen` when its feed
/// dropped a key.
struct Fleet<V> {
    caches: Vec<CachedVerifier<V>>,
    seen: mpsc::UnboundedReceiver<(usize, Uuid, Instant)>,
    feeds: Vec<RevocationFeed>,
}

impl<V: KeyVerifier> Fleet<V> {
    async fn start(
        verifiers: Vec<V>,
        spawn: impl Fn(&V, Arc<dyn RevocationTarget>) -> RevocationFeed,
    ) -> Self {
        let (tx, seen) = mpsc::unbounded_channel();
        let mut caches = Vec::new();
        let mut feeds = Vec::new();
        for (i, verifier) in verifiers.into_iter().enumerate() {
            let cache = CachedVerifier::builder(verifier)
                .ttl(Duration::from_secs(600))
                .build();
            let (for_revoked, for_missed, tx) = (cache.clone(), cache.clone(), tx.clone());
            let target: Arc<dyn RevocationTarget> = Arc::new(FnTarget::new(
                move |key_id| {
                    for_revoked.key_revoked(key_id);
                    let _ = tx.send((i, key_id, Instant::now()));
                },
                move || for_missed.events_missed(),
            ));
            let feed = spawn(cache.get_ref(), target);
            assert!(
                feed.wait_connected(Duration::from_secs(10)).await,
                "feed {i}: {:?}",
                feed.status()
            );
            caches.push(cache);
            feeds.push(feed);
        }
        Self {
            caches,
            seen,
            feeds,
        }
    }

    async fn warm(&self, key: &ApiKey) {
        for cache in &self.caches {
            assert!(cache.verify(key).await.expect("verify").is_valid());
        }
    }

    /// Waits until every instance dropped `key`; the time from `start` to the last drop.
    async fn propagated(&mut self, key: &ApiKey, start: Instant) -> Option<Duration> {
        let mut done = [false; INSTANCES];
        let mut last = start;
        while done.iter().any(|d| !d) {
            let left = GIVE_UP.checked_sub(start.elapsed())?;
            let (i, key_id, at) = tokio::time::timeout(left, self.seen.recv()).await.ok()??;
            if key_id == key.key_id() {
                done[i] = true;
                last = last.max(at);
            }
        }
        for cache in &self.caches {
            assert!(cache.verify_now(key).is_none(), "dropped");
        }
        Some(last - start)
    }

    async fn shutdown(self) {
        for feed in self.feeds {
            feed.shutdown().await;
        }
    }
}

fn summary(label: &str, delays: &mut [Duration], lost: usize) {
    delays.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at =
        |q: f64| delays[((delays.len() as f64 * q).ceil() as usize).clamp(1, delays.len()) - 1];
    println!(
        "{label}: {} revocations to {INSTANCES} instances: median {:.2} ms, p99 {:.2} ms, max {:.2} ms, lost {lost}",
        delays.len(),
        ms(at(0.5)),
        ms(at(0.99)),
        ms(delays[delays.len() - 1]),
    );
}

async fn postgres(url: &str) {
    let schema = format!("keygate_bench_{}", Uuid::new_v4().simple());
    let mut stores = Vec::new();
    for _ in 0..INSTANCES {
        let store = PostgresKeyStore::builder(url)
            .schema(&schema)
            .max_connections(2)
            .connect()
            .await
            .expect("connect to DATABASE_URL");
        stores.push(store);
    }
    let mut fleet = Fleet::start(stores, |store, target| {
        PgRevocationFeed::for_pool(store.pool())
            .channel(REVOCATION_CHANNEL)
            .spawn(target)
            .expect("spawn")
    })
    .await;
    let (mut delays, mut lost) = (Vec::with_capacity(REVOCATIONS), 0);
    for round in 0..REVOCATIONS {
        let store = |i: usize| fleet.caches[i % INSTANCES].get_ref();
        let key = store(round)
            .create(Owner::user("bench"), NewKey::new("bench"))
            .await
            .expect("create")
            .key;
        fleet.warm(&key).await;
        let start = Instant::now();
        store(round + 1).revoke(key.key_id()).await.expect("revoke");
        match fleet.propagated(&key, start).await {
            Some(delay) => delays.push(delay),
            None => lost += 1,
        }
    }
    summary("postgres", &mut delays, lost);
    let admin = fleet.caches[0].get_ref().pool().clone();
    fleet.shutdown().await;
    let _ = sqlx::raw_sql(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&admin)
        .await;
}

async fn redis(url: &str) {
    let channel = format!(
        "keygate_revocations_bench_{}",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let publisher = RedisRevocationPublisher::connect_on(url, &channel)
        .await
        .expect("connect to REDIS_URL");
    let mut fleet = Fleet::start((0..INSTANCES).map(|_| AllValid).collect(), |_, target| {
        RedisRevocationFeed::connect(url)
            .channel(&channel)
            .spawn(target)
            .expect("spawn")
    })
    .await;
    let (mut delays, mut lost) = (Vec::with_capacity(REVOCATIONS), 0);
    for _ in 0..REVOCATIONS {
        let key = ApiKey::generate(Uuid::new_v4(), KeyKind::User, false, Deployment::SelfHosted)
            .expect("rng");
        fleet.warm(&key).await;
        let start = Instant::now();
        let receivers = publisher.publish(key.key_id()).await.expect("publish");
        assert_eq!(receivers, INSTANCES as u64);
        match fleet.propagated(&key, start).await {
            Some(delay) => delays.push(delay),
            None => lost += 1,
        }
    }
    summary("redis", &mut delays, lost);
    fleet.shutdown().await;
}

/// A global Prometheus recorder, for the lag histogram.
#[cfg(feature = "metrics")]
fn install_recorder() -> metrics_exporter_prometheus::PrometheusHandle {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the only recorder");
    handle
}

fn main() {
    #[cfg(feature = "metrics")]
    let recorder = install_recorder();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    runtime.block_on(async {
        match var("DATABASE_URL") {
            Some(url) => postgres(&url).await,
            None => println!("postgres: skipped: DATABASE_URL not set"),
        }
        match var("REDIS_URL") {
            Some(url) => redis(&url).await,
            None => println!("redis: skipped: REDIS_URL not set"),
        }
    });
    #[cfg(feature = "metrics")]
    for line in recorder.render().lines() {
        let wanted = [
            "quantile=\"0.5\"",
            "quantile=\"0.99\"",
            "quantile=\"1\"",
            "_count",
        ];
        if line.starts_with("keygate_fleet_revocation_lag_seconds")
            && wanted.iter().any(|w| line.contains(w))
        {
            println!("{line}");
        }
    }
}
