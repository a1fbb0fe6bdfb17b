//! Revocation propagation: how long from "revoke" to "every instance dropped the key", over
//! 1,000 revocations each for PostgreSQL `LISTEN`/`NOTIFY` and Redis pub/sub, to three instances
//! (three caches, three feed connections) on loopback. Prints median, p99 and max.
//!
//! - PostgreSQL: the clock starts before `BEGIN; UPDATE … SET revoked_at = now(); COMMIT` on a
//!   table carrying the store's revocation trigger (`pg_notify` in the writing transaction).
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

use std::sync::Arc;
use std::time::{Duration, Instant};

use keygate::fleet::{
    FnTarget, PgRevocationFeed, RedisRevocationFeed, RedisRevocationPublisher, RevocationFeed,
    RevocationTarget,
};
use keygate::key::{ApiKey, Deployment, KeyKind};
use keygate::verify::{KeyInfo, KeyVerifier, Owner, Verdict, VerifyError};
use keygate::CachedVerifier;
use tokio::sync::mpsc;
use uuid::Uuid;

const REVOCATIONS: usize = 1_000;
const INSTANCES: usize = 3;
/// A revocation not seen by every instance within this is counted as lost.
const GIVE_UP: Duration = Duration::from_secs(2);

/// Says every key is valid: the bench is about the feed, not the lookup.
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

type Cache = CachedVerifier<AllValid>;

/// Three caches, each telling `seen` when its feed dropped a key.
struct Fleet {
    caches: Vec<Cache>,
    seen: mpsc::UnboundedReceiver<(usize, Uuid, Instant)>,
    feeds: Vec<RevocationFeed>,
}

impl Fleet {
    async fn start(spawn: impl Fn(Arc<dyn RevocationTarget>) -> RevocationFeed) -> Self {
        let (tx, seen) = mpsc::unbounded_channel();
        let mut caches = Vec::new();
        let mut feeds = Vec::new();
        for i in 0..INSTANCES {
            let cache = CachedVerifier::builder(AllValid)
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
            let feed = spawn(target);
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

    fn new_key(&self) -> ApiKey {
        ApiKey::generate(Uuid::new_v4(), KeyKind::User, false, Deployment::SelfHosted).expect("rng")
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
    use sqlx::postgres::PgPoolOptions;

    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .expect("connect to DATABASE_URL");
    let suffix = &Uuid::new_v4().simple().to_string()[..12];
    let schema = format!("fleet_bench_{suffix}");
    let channel = format!("keygate_revocations_{suffix}");
    sqlx::raw_sql(&format!(
        r#"
        CREATE SCHEMA {schema};
        CREATE TABLE {schema}.keygate_api_keys (id uuid PRIMARY KEY, revoked_at timestamptz,
            expires_at timestamptz);
        CREATE FUNCTION {schema}.keygate_notify_revocation() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' OR NEW.revoked_at IS DISTINCT FROM OLD.revoked_at
                OR NEW.expires_at IS DISTINCT FROM OLD.expires_at THEN
                PERFORM pg_notify('{channel}', OLD.id::text);
            END IF;
            RETURN NULL;
        END $$;
        CREATE TRIGGER keygate_revocation AFTER UPDATE OR DELETE ON {schema}.keygate_api_keys
            FOR EACH ROW EXECUTE FUNCTION {schema}.keygate_notify_revocation();
        "#
    ))
    .execute(&pool)
    .await
    .expect("schema");
    let mut fleet = Fleet::start(|target| {
        PgRevocationFeed::connect(url)
            .channel(&channel)
            .spawn(target)
            .expect("spawn")
    })
    .await;
    let (insert, revoke) = (
        format!("INSERT INTO {schema}.keygate_api_keys (id) VALUES ($1)"),
        format!("UPDATE {schema}.keygate_api_keys SET revoked_at = now() WHERE id = $1"),
    );
    let (mut delays, mut lost) = (Vec::with_capacity(REVOCATIONS), 0);
    for _ in 0..REVOCATIONS {
        let key = fleet.new_key();
        sqlx::query(&insert)
            .bind(key.key_id())
            .execute(&pool)
            .await
            .expect("insert");
        fleet.warm(&key).await;
        let start = Instant::now();
        let mut tx = pool.begin().await.expect("begin");
        sqlx::query(&revoke)
            .bind(key.key_id())
            .execute(&mut *tx)
            .await
            .expect("revoke");
        tx.commit().await.expect("commit");
        match fleet.propagated(&key, start).await {
            Some(delay) => delays.push(delay),
            None => lost += 1,
        }
    }
    summary("postgres", &mut delays, lost);
    fleet.shutdown().await;
    let _ = sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&pool)
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
    let mut fleet = Fleet::start(|target| {
        RedisRevocationFeed::connect(url)
            .channel(&channel)
            .spawn(target)
            .expect("spawn")
    })
    .await;
    let (mut delays, mut lost) = (Vec::with_capacity(REVOCATIONS), 0);
    for _ in 0..REVOCATIONS {
        let key = fleet.new_key();
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

fn main() {
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
}
