//! PostgreSQL `LISTEN`/`NOTIFY` feeds over the real store: every instance is a
//! `PostgresKeyStore` with a pool of its own, over one fresh schema per test (migrated by the
//! store, dropped afterwards even after a panic), whose trigger announces revocations on
//! `REVOCATION_CHANNEL`. That channel is one per database, so concurrent tests hear each
//! other's (random) key ids: nothing here counts notifications exactly.

use std::time::{Duration, Instant};

use keygate::fleet::{
    Backoff, FeedState, OnReconnect, PgRevocationFeed, RevocationFeed, DEFAULT_CHANNEL,
};
use keygate::key::ApiKey;
use keygate::store::{KeyStore, NewKey, REVOCATION_CHANNEL};
use keygate::verify::{InvalidReason, KeyVerifier, Owner, Verdict};
use keygate::{CachedVerifier, PostgresKeyStore};
use uuid::Uuid;

use crate::common::store_suite::{database_url, execute_detached, fresh_schema, PgSchema};
use crate::{report, suffix, until_all_refuse, warm, ROUNDS, TTL, WAIT, WITHIN};

/// One test's schema, and a store over it that no cache wraps: a revocation made through it
/// reaches the instances only through their feeds.
struct Db {
    schema: PgSchema,
    admin: PostgresKeyStore,
}

impl Db {
    async fn start() -> Option<Self> {
        let url = database_url()?;
        let schema = PgSchema {
            url,
            name: fresh_schema(),
        };
        let admin = store(&schema).await;
        Some(Self { schema, admin })
    }

    fn url(&self) -> &str {
        &self.schema.url
    }

    /// An instance: its own store (and pool), its own cache, its own feed connection. `feed`
    /// makes the feed from the instance's store.
    async fn instance(&self, feed: impl FnOnce(&PostgresKeyStore) -> PgRevocationFeed) -> Instance {
        let store = store(&self.schema).await;
        let cache = CachedVerifier::builder(store.clone()).ttl(TTL).build();
        let feed = feed(&store)
            .channel(REVOCATION_CHANNEL)
            .backoff(Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(200),
            ))
            .spawn(&cache)
            .expect("spawn");
        assert!(feed.wait_connected(WAIT).await, "{:?}", feed.status());
        Instance { store, cache, feed }
    }

    /// Three instances: the first's feed from its URL, the others' from their store's pool.
    async fn fleet(&self) -> Vec<Instance> {
        let mut fleet = vec![
            self.instance(|_| PgRevocationFeed::connect(self.url()))
                .await,
        ];
        for _ in 1..3 {
            fleet.push(
                self.instance(|s| PgRevocationFeed::for_pool(s.pool()))
                    .await,
            );
        }
        fleet
    }
}

/// A store over the test's schema, with a small pool of its own.
async fn store(schema: &PgSchema) -> PostgresKeyStore {
    PostgresKeyStore::builder(&schema.url)
        .schema(&schema.name)
        .max_connections(2)
        .acquire_timeout(WAIT)
        .connect()
        .await
        .expect("connect to DATABASE_URL")
}

/// A new user key, created through `store`.
async fn new_key(store: &PostgresKeyStore) -> ApiKey {
    store
        .create(Owner::user("user-1"), NewKey::new("fleet"))
        .await
        .expect("create")
        .key
}

/// Runs `sql` (on the schema's table, `$1` the key id) through `store`'s pool: one statement,
/// its own transaction.
async fn execute(store: &PostgresKeyStore, sql: &str, key_id: Uuid) {
    let done = sqlx::query(sql)
        .bind(key_id)
        .execute(store.pool())
        .await
        .expect(sql);
    assert_eq!(done.rows_affected(), 1, "{sql}");
}

/// Drops its PostgreSQL role when dropped, even after a panic.
struct PgRole {
    url: String,
    name: String,
}

impl Drop for PgRole {
    fn drop(&mut self) {
        execute_detached(&self.url, format!("DROP ROLE IF EXISTS \"{}\"", self.name));
    }
}

struct Instance {
    store: PostgresKeyStore,
    cache: CachedVerifier<PostgresKeyStore>,
    feed: RevocationFeed,
}

/// Each instance refuses `key` for `reason`, from its cache or its store.
async fn all_refuse_for(fleet: &[Instance], key: &ApiKey, reason: InvalidReason) {
    for (i, instance) in fleet.iter().enumerate() {
        let verdict = instance.cache.verify(key).await.expect("verify");
        assert_eq!(verdict, Verdict::Invalid(reason), "instance {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_refuse_a_key_revoked_through_one_within_a_second() {
    let Some(db) = Db::start().await else { return };
    // The feed's default channel is the one the store's trigger sends on.
    assert_eq!(DEFAULT_CHANNEL, REVOCATION_CHANNEL);
    let fleet = db.fleet().await;
    let caches: Vec<_> = fleet.iter().map(|i| &i.cache).collect();
    let mut delays = Vec::new();
    for round in 0..ROUNDS {
        // Created through one instance, revoked through the next.
        let key = new_key(&fleet[round % 3].store).await;
        warm(&caches, &key).await;
        let start = Instant::now();
        let revoked = fleet[(round + 1) % 3]
            .store
            .revoke(key.key_id())
            .await
            .expect("revoke");
        assert!(revoked.revoked_at.is_some());
        match until_all_refuse(&caches, &key, start, WITHIN).await {
            Ok(delay) => delays.push(delay),
            Err(still) => panic!("round {round}: instances {still:?} still accept the key"),
        }
        // The refusal is the store's "revoked", now cached as such.
        all_refuse_for(&fleet, &key, InvalidReason::Revoked).await;
    }
    let (_, max) = report("postgres, 3 instances", &mut delays);
    assert!(max <= WITHIN);
    for instance in &fleet {
        let status = instance.feed.status();
        // At least ours: other tests' revocations share the channel.
        assert!(status.events >= ROUNDS as u64, "{status:?}");
        assert_eq!(status.reconnects, 0, "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_moved_to_the_past_or_a_deletion_reaches_every_instance() {
    let Some(db) = Db::start().await else { return };
    let fleet = db.fleet().await;
    let caches: Vec<_> = fleet.iter().map(|i| &i.cache).collect();
    // The store has no call for either: they are what an operator's SQL (or a retention job)
    // does, and the trigger announces them like a revocation.
    let changes = [
        (
            "UPDATE keygate_api_keys SET expires_at = \
             (extract(epoch FROM now()) * 1000)::bigint - 1000 WHERE id = $1",
            InvalidReason::Expired,
        ),
        (
            "DELETE FROM keygate_api_keys WHERE id = $1",
            InvalidReason::NotFound,
        ),
    ];
    for (sql, reason) in changes {
        let mut delays = Vec::new();
        for round in 0..5 {
            let key = new_key(&db.admin).await;
            warm(&caches, &key).await;
            let start = Instant::now();
            execute(&fleet[round % 3].store, sql, key.key_id()).await;
            match until_all_refuse(&caches, &key, start, WITHIN).await {
                Ok(delay) => delays.push(delay),
                Err(still) => panic!("{sql}: instances {still:?} still accept the key"),
            }
            all_refuse_for(&fleet, &key, reason).await;
        }
        report(&format!("postgres, {}", reason.as_str()), &mut delays);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_is_not_a_key_id_is_ignored_and_the_feed_goes_on() {
    let Some(db) = Db::start().await else { return };
    let instance = db.instance(|s| PgRevocationFeed::for_pool(s.pool())).await;
    let key = new_key(&db.admin).await;
    warm(&[&instance.cache], &key).await;
    let garbage = ["", "not a key id", "sk_0123456789abcdef", &"x".repeat(7000)];
    for payload in garbage {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(REVOCATION_CHANNEL)
            .bind(payload)
            .execute(db.admin.pool())
            .await
            .expect("notify");
    }
    let feed = &instance.feed;
    // At least: another run of this test on the same database would add its own.
    assert!(
        feed.wait_for(WAIT, |s| s.ignored >= garbage.len() as u64)
            .await,
        "{:?}",
        feed.status()
    );
    assert!(feed.status().is_connected());
    assert!(
        crate::accepts(&instance.cache, &key).await,
        "nothing dropped"
    );
    let start = Instant::now();
    db.admin.revoke(key.key_id()).await.expect("revoke");
    until_all_refuse(&[&instance.cache], &key, start, WITHIN)
        .await
        .expect("refused after the garbage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_during_a_listener_outage_is_enforced_once_the_listener_is_back() {
    let Some(db) = Db::start().await else { return };
    // A role of the test's own for the feeds, which the test can lock out; dropped at the end
    // (after the feeds, declared later), even after a panic.
    let guard = PgRole {
        url: db.url().to_owned(),
        name: format!("fleet_feed_{}", suffix()),
    };
    let role = guard.name.as_str();
    let admin = db.admin.pool();
    sqlx::raw_sql(&format!("CREATE ROLE {role} LOGIN"))
        .execute(admin)
        .await
        .expect("role");
    let (app_empty, app_keep) = (format!("{role}_empty"), format!("{role}_keep"));
    // The store's pool settings, as the role.
    let feed = |store: &PostgresKeyStore, app: &str| {
        let options = (*store.pool().connect_options()).clone().username(role);
        PgRevocationFeed::with_options(options).application_name(app)
    };
    let empties = db.instance(|s| feed(s, &app_empty)).await;
    let keeps = db
        .instance(|s| feed(s, &app_keep).on_reconnect(OnReconnect::KeepCache))
        .await;
    let both = [&empties.cache, &keeps.cache];
    let (missed, later) = (new_key(&db.admin).await, new_key(&db.admin).await);
    warm(&both, &missed).await;
    warm(&both, &later).await;

    // The outage: the role may not log in, and the listening backends are terminated.
    sqlx::raw_sql(&format!("ALTER ROLE {role} NOLOGIN"))
        .execute(admin)
        .await
        .expect("nologin");
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = ANY($1)) t",
    )
    .bind(vec![app_empty.clone(), app_keep.clone()])
    .fetch_one(admin)
    .await
    .expect("terminate");
    assert_eq!(terminated, 2, "both listening backends found");
    for instance in [&empties, &keeps] {
        let feed = &instance.feed;
        assert!(
            feed.wait_for(WAIT, |s| s.state == FeedState::Reconnecting
                && s.failed_attempts >= 1)
                .await,
            "{:?}",
            feed.status()
        );
    }
    // Revoked through the store while nobody listens: the notification is lost.
    db.admin.revoke(missed.key_id()).await.expect("revoke");
    // While disconnected, both keep serving from their caches (within the TTL).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for cache in both {
        let calls = cache.stats().verifier_calls;
        assert!(crate::accepts(cache, &missed).await, "served from cache");
        assert_eq!(cache.stats().verifier_calls, calls);
    }

    // Back: the default empties its cache once listening again; KeepCache does not.
    sqlx::raw_sql(&format!("ALTER ROLE {role} LOGIN"))
        .execute(admin)
        .await
        .expect("login");
    for instance in [&empties, &keeps] {
        let feed = &instance.feed;
        assert!(
            feed.wait_for(WAIT, |s| s.is_connected() && s.reconnects == 1)
                .await,
            "{:?}",
            feed.status()
        );
    }
    assert_eq!(
        empties.cache.verify(&missed).await.expect("verify"),
        Verdict::Invalid(InvalidReason::Revoked),
        "enforced"
    );
    assert!(
        crate::accepts(&keeps.cache, &missed).await,
        "KeepCache: a missed revocation waits for the TTL"
    );
    // Revocations after the reconnection reach both.
    let start = Instant::now();
    db.admin.revoke(later.key_id()).await.expect("revoke");
    until_all_refuse(&both, &later, start, WITHIN)
        .await
        .expect("the feeds work again");

    let (a, b) = (empties.feed, keeps.feed);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_listening_connection_and_stops_dropping_keys() {
    let Some(db) = Db::start().await else { return };
    let app = format!("fleet_shutdown_{}", suffix());
    let instance = db
        .instance(|_| PgRevocationFeed::connect(db.url()).application_name(&app))
        .await;
    let listening = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(&app)
        .fetch_one(db.admin.pool())
        .await
        .expect("pg_stat_activity")
    };
    assert_eq!(listening().await, 1);
    let key = new_key(&db.admin).await;
    warm(&[&instance.cache], &key).await;
    let Instance { cache, feed, .. } = instance;
    feed.shutdown().await;
    let deadline = Instant::now() + WAIT;
    while listening().await > 0 {
        assert!(Instant::now() < deadline, "the connection is still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.admin.revoke(key.key_id()).await.expect("revoke");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        crate::accepts(&cache, &key).await,
        "no feed: the TTL is the bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_keep_an_idle_connection_and_lose_nothing() {
    let Some(db) = Db::start().await else { return };
    // Checked every 20 ms while idle.
    let instance = db
        .instance(|s| {
            PgRevocationFeed::for_pool(s.pool()).health_check_interval(Duration::from_millis(20))
        })
        .await;
    let key = new_key(&db.admin).await;
    warm(&[&instance.cache], &key).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    db.admin.revoke(key.key_id()).await.expect("revoke");
    until_all_refuse(&[&instance.cache], &key, start, WITHIN)
        .await
        .expect("refused");
    let status = instance.feed.status();
    assert!(status.is_connected(), "{status:?}");
    assert!(status.events >= 1, "{status:?}");
    assert_eq!(status.reconnects, 0, "{status:?}");
}

fn now_millis() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since.as_millis()).expect("millis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notification_carries_the_key_id_and_the_time_of_the_change() {
    let Some(db) = Db::start().await else { return };
    let mut listener = sqlx::postgres::PgListener::connect(db.url())
        .await
        .expect("connect");
    listener.listen(REVOCATION_CHANNEL).await.expect("listen");
    let key = new_key(&db.admin).await;
    let id = key.key_id().to_string();
    let before = now_millis();
    db.admin.revoke(key.key_id()).await.expect("revoke");
    let after = now_millis();
    // Other tests' revocations share the channel: wait for ours.
    let payload = tokio::time::timeout(WAIT, async {
        loop {
            let notification = listener.recv().await.expect("notification");
            if notification.payload().starts_with(&id) {
                return notification.payload().to_owned();
            }
        }
    })
    .await
    .expect("notified");
    let (got, millis) = payload.split_once(' ').expect("`<key id> <millis>`");
    assert_eq!(got, id);
    let millis: i64 = millis.parse().expect("milliseconds");
    // The database runs on this host: its clock and ours agree within a second.
    assert!(
        (before - 1000..=after + 1000).contains(&millis),
        "{millis} not within [{before}, {after}]"
    );
}

#[cfg(feature = "metrics")]
#[test]
fn the_feed_records_one_lag_sample_per_timed_revocation() {
    use crate::common::recorded::{recorded, sample};

    let ran = std::cell::Cell::new(false);
    let rendered = recorded(|| async {
        let Some(db) = Db::start().await else { return };
        let instance = db.instance(|s| PgRevocationFeed::for_pool(s.pool())).await;
        // First the bare id older triggers send: a revocation, without a time. PostgreSQL
        // delivers notifications in commit order, so it arrives before the ones below.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(REVOCATION_CHANNEL)
            .bind(Uuid::new_v4().to_string())
            .execute(db.admin.pool())
            .await
            .expect("notify");
        for _ in 0..3 {
            let key = new_key(&db.admin).await;
            warm(&[&instance.cache], &key).await;
            let start = Instant::now();
            db.admin.revoke(key.key_id()).await.expect("revoke");
            until_all_refuse(&[&instance.cache], &key, start, WITHIN)
                .await
                .expect("refused");
        }
        ran.set(true);
    });
    if !ran.get() {
        return;
    }
    let revocations = sample(
        &rendered,
        "keygate_fleet_revocations_total{feed=\"postgres\"}",
    )
    .expect("revocations counted");
    let lags = sample(
        &rendered,
        "keygate_fleet_revocation_lag_seconds_count{feed=\"postgres\"}",
    )
    .expect("lag recorded");
    // Concurrent tests' revocations reach this feed too, each with its time; only the bare id
    // has none.
    assert!(revocations >= 4.0, "{rendered}");
    assert_eq!(lags, revocations - 1.0, "{rendered}");
}
