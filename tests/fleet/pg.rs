//! PostgreSQL `LISTEN`/`NOTIFY` feeds.

use std::str::FromStr;
use std::time::{Duration, Instant};

use keygate::fleet::{Backoff, FeedState, OnReconnect, PgRevocationFeed, RevocationFeed};
use keygate::key::{ApiKey, Deployment, KeyKind};
use keygate::verify::{
    InvalidReason, KeyInfo, KeyVerifier, Owner, Verdict, VerifyError, VerifyErrorKind,
};
use keygate::CachedVerifier;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::{report, service_url, suffix, until_all_refuse, warm, ROUNDS, TTL, WAIT, WITHIN};

/// One test's schema: a key table with the store's revocation trigger, notifying a channel of
/// the test's own.
struct Db {
    url: String,
    admin: PgPool,
    schema: String,
    channel: String,
}

impl Db {
    async fn start() -> Option<Self> {
        let url = service_url("DATABASE_URL")?;
        let admin = pool(&url).await;
        let suffix = suffix();
        let schema = format!("fleet_{suffix}");
        let channel = format!("keygate_revocations_{suffix}");
        sqlx::raw_sql(&format!(
            r#"
            CREATE SCHEMA {schema};
            CREATE TABLE {schema}.keygate_api_keys (
                id uuid PRIMARY KEY,
                secret_digest bytea NOT NULL,
                owner_id text NOT NULL,
                revoked_at timestamptz,
                expires_at timestamptz
            );
            CREATE FUNCTION {schema}.keygate_notify_revocation() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE'
                    OR NEW.revoked_at IS DISTINCT FROM OLD.revoked_at
                    OR NEW.expires_at IS DISTINCT FROM OLD.expires_at THEN
                    PERFORM pg_notify('{channel}', OLD.id::text);
                END IF;
                RETURN NULL;
            END $$;
            CREATE TRIGGER keygate_revocation AFTER UPDATE OR DELETE ON {schema}.keygate_api_keys
                FOR EACH ROW EXECUTE FUNCTION {schema}.keygate_notify_revocation();
            "#
        ))
        .execute(&admin)
        .await
        .expect("schema");
        Some(Self {
            url,
            admin,
            schema,
            channel,
        })
    }

    /// An instance: its own pool, its own cache, its own feed connection.
    async fn instance(&self, feed: PgRevocationFeed) -> Instance {
        let cache = CachedVerifier::builder(TableVerifier {
            pool: pool(&self.url).await,
            schema: self.schema.clone(),
        })
        .ttl(TTL)
        .build();
        let feed = feed
            .channel(&self.channel)
            .backoff(Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(200),
            ))
            .spawn(&cache)
            .expect("spawn");
        assert!(feed.wait_connected(WAIT).await, "{:?}", feed.status());
        Instance { cache, feed }
    }

    fn feed(&self) -> PgRevocationFeed {
        PgRevocationFeed::connect(&self.url)
    }

    /// A new user key, stored.
    async fn new_key(&self) -> ApiKey {
        let key = ApiKey::generate(Uuid::new_v4(), KeyKind::User, false, Deployment::SelfHosted)
            .expect("rng");
        sqlx::query(&format!(
            "INSERT INTO {}.keygate_api_keys (id, secret_digest, owner_id) VALUES ($1, $2, $3)",
            self.schema
        ))
        .bind(key.key_id())
        .bind(&key.digest().as_bytes()[..])
        .bind("user-1")
        .execute(&self.admin)
        .await
        .expect("insert");
        key
    }

    /// Revokes through `pool` (one instance's), in a transaction of its own.
    async fn revoke(&self, pool: &PgPool, key_id: Uuid) {
        let mut tx = pool.begin().await.expect("begin");
        let done = sqlx::query(&format!(
            "UPDATE {}.keygate_api_keys SET revoked_at = now() WHERE id = $1",
            self.schema
        ))
        .bind(key_id)
        .execute(&mut *tx)
        .await
        .expect("revoke");
        assert_eq!(done.rows_affected(), 1);
        tx.commit().await.expect("commit");
    }

    async fn notify(&self, payload: &str) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(payload)
            .execute(&self.admin)
            .await
            .expect("notify");
    }

    async fn cleanup(self) {
        let _ = sqlx::raw_sql(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&self.admin)
            .await;
    }
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(WAIT)
        .connect(url)
        .await
        .expect("connect to DATABASE_URL")
}

struct Instance {
    cache: CachedVerifier<TableVerifier>,
    feed: RevocationFeed,
}

impl Instance {
    fn pool(&self) -> &PgPool {
        &self.cache.get_ref().pool
    }
}

/// Reads the test's key table, as the PostgreSQL store would.
struct TableVerifier {
    pool: PgPool,
    schema: String,
}

impl KeyVerifier for TableVerifier {
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        let row = sqlx::query(&format!(
            "SELECT secret_digest, owner_id, revoked_at IS NOT NULL AS revoked \
             FROM {}.keygate_api_keys WHERE id = $1",
            self.schema
        ))
        .bind(key.key_id())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| VerifyError::new(VerifyErrorKind::Store, e.to_string()))?;
        let Some(row) = row else {
            return Ok(Verdict::Invalid(InvalidReason::NotFound));
        };
        let digest: Vec<u8> = row.get("secret_digest");
        if !bool::from(digest.as_slice().ct_eq(&key.digest().as_bytes()[..])) {
            return Ok(Verdict::Invalid(InvalidReason::NotFound));
        }
        if row.get::<bool, _>("revoked") {
            return Ok(Verdict::Invalid(InvalidReason::Revoked));
        }
        let owner: String = row.get("owner_id");
        Ok(Verdict::valid(KeyInfo::new(
            key.key_id(),
            Owner::user(owner),
            false,
        )))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_refuse_a_key_revoked_through_one_within_a_second() {
    let Some(db) = Db::start().await else { return };
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(db.instance(db.feed()).await);
    }
    let caches: Vec<_> = fleet.iter().map(|i| &i.cache).collect();
    let mut delays = Vec::new();
    for round in 0..ROUNDS {
        let key = db.new_key().await;
        warm(&caches, &key).await;
        let revoker = &fleet[round % 3];
        let start = Instant::now();
        db.revoke(revoker.pool(), key.key_id()).await;
        match until_all_refuse(&caches, &key, start, WITHIN).await {
            Ok(delay) => delays.push(delay),
            Err(still) => panic!("round {round}: instances {still:?} still accept the key"),
        }
        // The refusal is the store's "revoked", now cached as such.
        for cache in &caches {
            assert_eq!(
                cache.verify(&key).await.expect("verify"),
                Verdict::Invalid(InvalidReason::Revoked)
            );
        }
    }
    let (_, max) = report("postgres, 3 instances", &mut delays);
    assert!(max <= WITHIN);
    for instance in &fleet {
        let status = instance.feed.status();
        assert_eq!(status.events, ROUNDS as u64, "{status:?}");
        assert_eq!((status.ignored, status.reconnects), (0, 0), "{status:?}");
    }
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_is_not_a_key_id_is_ignored_and_the_feed_goes_on() {
    let Some(db) = Db::start().await else { return };
    let instance = db.instance(db.feed()).await;
    let key = db.new_key().await;
    warm(&[&instance.cache], &key).await;
    for payload in ["", "not a key id", "sk_0123456789abcdef", &"x".repeat(7000)] {
        db.notify(payload).await;
    }
    let feed = &instance.feed;
    assert!(
        feed.wait_for(WAIT, |s| s.ignored == 4).await,
        "{:?}",
        feed.status()
    );
    assert!(feed.status().is_connected());
    assert!(
        crate::accepts(&instance.cache, &key).await,
        "nothing dropped"
    );
    let start = Instant::now();
    db.revoke(&db.admin, key.key_id()).await;
    until_all_refuse(&[&instance.cache], &key, start, WITHIN)
        .await
        .expect("refused after the garbage");
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_during_a_listener_outage_is_enforced_once_the_listener_is_back() {
    let Some(db) = Db::start().await else { return };
    // A role of the test's own for the feeds, which the test can lock out.
    let role = format!("fleet_feed_{}", suffix());
    sqlx::raw_sql(&format!("CREATE ROLE {role} LOGIN"))
        .execute(&db.admin)
        .await
        .expect("role");
    let options = PgConnectOptions::from_str(&db.url)
        .expect("DATABASE_URL")
        .username(&role);
    let (app_empty, app_keep) = (format!("{role}_empty"), format!("{role}_keep"));
    let feed = |app: &str| PgRevocationFeed::with_options(options.clone()).application_name(app);
    let empties = db.instance(feed(&app_empty)).await;
    let keeps = db
        .instance(feed(&app_keep).on_reconnect(OnReconnect::KeepCache))
        .await;
    let both = [&empties.cache, &keeps.cache];
    let (missed, later) = (db.new_key().await, db.new_key().await);
    warm(&both, &missed).await;
    warm(&both, &later).await;

    // The outage: the role may not log in, and the listening backends are terminated.
    sqlx::raw_sql(&format!("ALTER ROLE {role} NOLOGIN"))
        .execute(&db.admin)
        .await
        .expect("nologin");
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = ANY($1)) t",
    )
    .bind(vec![app_empty.clone(), app_keep.clone()])
    .fetch_one(&db.admin)
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
    db.revoke(&db.admin, missed.key_id()).await;
    // While disconnected, both keep serving from their caches (within the TTL).
    tokio::time::sleep(Duration::from_millis(300)).await;
    for cache in both {
        let calls = cache.stats().verifier_calls;
        assert!(crate::accepts(cache, &missed).await, "served from cache");
        assert_eq!(cache.stats().verifier_calls, calls);
    }

    // Back: the default empties its cache once listening again; KeepCache does not.
    sqlx::raw_sql(&format!("ALTER ROLE {role} LOGIN"))
        .execute(&db.admin)
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
    assert!(!crate::accepts(&empties.cache, &missed).await, "enforced");
    assert!(
        crate::accepts(&keeps.cache, &missed).await,
        "KeepCache: a missed revocation waits for the TTL"
    );
    // Revocations after the reconnection reach both.
    let start = Instant::now();
    db.revoke(&db.admin, later.key_id()).await;
    until_all_refuse(&both, &later, start, WITHIN)
        .await
        .expect("the feeds work again");

    let (a, b) = (empties.feed, keeps.feed);
    a.shutdown().await;
    b.shutdown().await;
    let _ = sqlx::raw_sql(&format!("DROP ROLE {role}"))
        .execute(&db.admin)
        .await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_listening_connection_and_stops_dropping_keys() {
    let Some(db) = Db::start().await else { return };
    let app = format!("fleet_shutdown_{}", suffix());
    let instance = db.instance(db.feed().application_name(&app)).await;
    let listening = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(&app)
        .fetch_one(&db.admin)
        .await
        .expect("pg_stat_activity")
    };
    assert_eq!(listening().await, 1);
    let key = db.new_key().await;
    warm(&[&instance.cache], &key).await;
    let Instance { cache, feed } = instance;
    feed.shutdown().await;
    let deadline = Instant::now() + WAIT;
    while listening().await > 0 {
        assert!(Instant::now() < deadline, "the connection is still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.revoke(&db.admin, key.key_id()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        crate::accepts(&cache, &key).await,
        "no feed: the TTL is the bound"
    );
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_keep_an_idle_connection_and_lose_nothing() {
    let Some(db) = Db::start().await else { return };
    // Built from a pool's settings; checked every 20 ms while idle.
    let feed =
        PgRevocationFeed::for_pool(&db.admin).health_check_interval(Duration::from_millis(20));
    let instance = db.instance(feed).await;
    let key = db.new_key().await;
    warm(&[&instance.cache], &key).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    db.revoke(&db.admin, key.key_id()).await;
    until_all_refuse(&[&instance.cache], &key, start, WITHIN)
        .await
        .expect("refused");
    let status = instance.feed.status();
    assert!(status.is_connected(), "{status:?}");
    assert_eq!((status.events, status.reconnects), (1, 0), "{status:?}");
    db.cleanup().await;
}
