//! `SqliteRevocationFeed`: two `SqliteKeyStore`s on one file (two pools, as two processes would
//! have: a server and the `keygate keys revoke` command). The server's cache (TTL of 10 minutes)
//! must drop a key revoked, expired or deleted through the other within 2 s, because the feed
//! read the revocation log; a failed read resumes without emptying the cache; a gap in the log
//! (rows pruned before the feed read them) empties it, unless told to keep it; a database made
//! by a keygate without the log migrates, and one with it still opens in that older keygate.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keygate::fleet::{FnTarget, OnReconnect, RevocationFeed, SqliteRevocationFeed};
use keygate::key::ApiKey;
use keygate::store::{KeyStore, NewKey, SqliteKeyStore};
use keygate::verify::{KeyVerifier, Owner};
use keygate::CachedVerifier;
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(20);
/// The bound a revocation by another process must meet here (the poll interval is 20 ms).
const WITHIN: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(10);

/// A "server" and a "CLI" store on one fresh file.
async fn two_processes() -> (SqliteKeyStore, SqliteKeyStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.db");
    let server = SqliteKeyStore::open(&path).await.unwrap();
    let cli = SqliteKeyStore::open(&path).await.unwrap();
    (server, cli, dir)
}

async fn accepts(cache: &CachedVerifier<SqliteKeyStore>, key: &ApiKey) -> bool {
    cache.verify(key).await.unwrap().is_valid()
}

/// Verifies `key` twice on `cache`: valid, and the second answer a hit.
async fn warm(cache: &CachedVerifier<SqliteKeyStore>, key: &ApiKey) {
    assert!(accepts(cache, key).await, "a live key is refused");
    let calls = cache.stats().verifier_calls;
    assert!(accepts(cache, key).await);
    assert_eq!(cache.stats().verifier_calls, calls, "no cache hit");
}

/// Polls until `cache` refuses `key`, for at most [`WITHIN`]; how long that took.
async fn until_refused(cache: &CachedVerifier<SqliteKeyStore>, key: &ApiKey) -> Duration {
    let start = Instant::now();
    while accepts(cache, key).await {
        assert!(
            start.elapsed() <= WITHIN,
            "the cache still accepts the key after {WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

async fn started(feed: &RevocationFeed) {
    assert!(feed.wait_connected(WAIT).await, "{:?}", feed.status());
}

/// A cache over `server` with a started feed polling its database.
async fn watched(server: &SqliteKeyStore) -> (CachedVerifier<SqliteKeyStore>, RevocationFeed) {
    let cache = CachedVerifier::builder(server.clone()).ttl(TTL).build();
    let feed = SqliteRevocationFeed::for_pool(server.pool())
        .poll_interval(POLL)
        .spawn(&cache)
        .unwrap();
    started(&feed).await;
    (cache, feed)
}

/// A target that records what the feed tells it.
#[derive(Clone, Default)]
struct Told {
    revoked: Arc<Mutex<Vec<Uuid>>>,
    missed: Arc<AtomicUsize>,
}

impl Told {
    fn target(&self) -> FnTarget<impl Fn(Uuid) + Send + Sync, impl Fn() + Send + Sync> {
        let revoked = Arc::clone(&self.revoked);
        let missed = Arc::clone(&self.missed);
        FnTarget::new(
            move |id| revoked.lock().unwrap().push(id),
            move || {
                missed.fetch_add(1, Ordering::SeqCst);
            },
        )
    }

    fn revoked(&self) -> Vec<Uuid> {
        self.revoked.lock().unwrap().clone()
    }

    fn missed(&self) -> usize {
        self.missed.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn revoke_expire_and_delete_by_another_process_reach_the_cache() {
    let (server, cli, _dir) = two_processes().await;
    let (cache, feed) = watched(&server).await;
    let owner = Owner::user("user-1");
    let mut keys = Vec::new();
    for what in ["revoked", "expired", "deleted", "renamed"] {
        keys.push(cli.create(owner.clone(), NewKey::new(what)).await.unwrap());
    }
    for created in &keys {
        warm(&cache, &created.key).await;
    }

    cli.revoke(keys[0].record.id).await.unwrap();
    let took = until_refused(&cache, &keys[0].key).await;
    eprintln!("revoked by the other process: refused after {took:?}");

    sqlx::query("UPDATE keygate_api_keys SET expires_at = 1 WHERE id = ?1")
        .bind(keys[1].record.id.to_string())
        .execute(cli.pool())
        .await
        .unwrap();
    until_refused(&cache, &keys[1].key).await;

    sqlx::query("DELETE FROM keygate_api_keys WHERE id = ?1")
        .bind(keys[2].record.id.to_string())
        .execute(cli.pool())
        .await
        .unwrap();
    until_refused(&cache, &keys[2].key).await;

    // A change that is not a revocation writes nothing to the log.
    cli.update_description(keys[3].record.id, "still live".to_owned())
        .await
        .unwrap();
    tokio::time::sleep(POLL * 5).await;
    let status = feed.status();
    assert_eq!(status.events, 3, "{status:?}");
    assert_eq!(status.ignored, 0);
    let calls = cache.stats().verifier_calls;
    assert!(accepts(&cache, &keys[3].key).await);
    assert_eq!(
        cache.stats().verifier_calls,
        calls,
        "the live key was dropped"
    );
    // The log holds ids and times only.
    let logged: Vec<String> = sqlx::query_scalar("SELECT key_id FROM keygate_revocation_log")
        .fetch_all(cli.pool())
        .await
        .unwrap();
    let expected: Vec<String> = keys[..3].iter().map(|k| k.record.id.to_string()).collect();
    assert_eq!(logged, expected);
    feed.shutdown().await;
}

#[tokio::test]
async fn a_failed_read_resumes_where_it_stopped_without_emptying_the_cache() {
    let (server, cli, _dir) = two_processes().await;
    let told = Told::default();
    let feed = SqliteRevocationFeed::for_pool(server.pool())
        .poll_interval(POLL)
        .backoff(keygate::fleet::Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(50),
        ))
        .spawn(told.target())
        .unwrap();
    started(&feed).await;
    assert_eq!(told.missed(), 1, "emptied once at start");
    let created = cli
        .create(Owner::team("team-1"), NewKey::new("k"))
        .await
        .unwrap();

    // The log is out of reach (renamed; SQLite renames it in the triggers too): reads fail.
    sqlx::query("ALTER TABLE keygate_revocation_log RENAME TO keygate_revocation_log_away")
        .execute(cli.pool())
        .await
        .unwrap();
    assert!(
        feed.wait_for(WAIT, |s| s.failed_attempts > 0 || !s.is_connected())
            .await,
        "{:?}",
        feed.status()
    );
    cli.revoke(created.record.id).await.unwrap();
    sqlx::query("ALTER TABLE keygate_revocation_log_away RENAME TO keygate_revocation_log")
        .execute(cli.pool())
        .await
        .unwrap();

    assert!(
        feed.wait_for(WAIT, |s| s.events == 1).await,
        "{:?}",
        feed.status()
    );
    assert_eq!(told.revoked(), vec![created.record.id]);
    assert_eq!(told.missed(), 1, "nothing was missed: the cache stays");
    assert!(feed.status().last_error.is_some());
    feed.shutdown().await;
}

/// Appends two rows to the log and deletes the first in one transaction: the feed can only
/// see the second, after a hole, as after pruning. Returns the second row's key id.
async fn pruned_before_read(cli: &SqliteKeyStore) -> Uuid {
    let id = Uuid::new_v4();
    let mut tx = cli.pool().begin().await.unwrap();
    for key_id in [Uuid::new_v4(), id] {
        sqlx::query("INSERT INTO keygate_revocation_log (key_id, at_millis) VALUES (?1, 0)")
            .bind(key_id.to_string())
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    sqlx::query(
        "DELETE FROM keygate_revocation_log \
         WHERE seq = (SELECT max(seq) - 1 FROM keygate_revocation_log)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    id
}

#[tokio::test]
async fn a_gap_in_the_log_empties_the_cache_unless_told_to_keep_it() {
    for on_reconnect in [OnReconnect::EmptyCache, OnReconnect::KeepCache] {
        let (server, cli, _dir) = two_processes().await;
        let told = Told::default();
        let feed = SqliteRevocationFeed::for_pool(server.pool())
            .poll_interval(POLL)
            .on_reconnect(on_reconnect)
            .spawn(told.target())
            .unwrap();
        started(&feed).await;
        let id = pruned_before_read(&cli).await;
        assert!(
            feed.wait_for(WAIT, |s| s.events == 1).await,
            "{on_reconnect:?}: {:?}",
            feed.status()
        );
        assert_eq!(told.revoked(), vec![id], "{on_reconnect:?}");
        let expected = match on_reconnect {
            OnReconnect::EmptyCache => 2,
            _ => 0,
        };
        assert_eq!(told.missed(), expected, "{on_reconnect:?}");
        feed.shutdown().await;
    }
}

#[tokio::test]
async fn a_database_without_the_log_migrates_and_an_older_keygate_still_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.db");
    // The migrations of a keygate from before the log.
    let old = dir.path().join("old-migrations");
    std::fs::create_dir(&old).unwrap();
    let first = "20261201000001_keygate_api_keys.sql";
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations/sqlite")
            .join(first),
        old.join(first),
    )
    .unwrap();
    let mut older = sqlx::migrate::Migrator::new(old.as_path()).await.unwrap();
    older.set_ignore_missing(true);
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    older.run(&pool).await.unwrap();
    let has_log = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM sqlite_master WHERE name = 'keygate_revocation_log'",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(has_log().await, 0);

    let (server, cli) = (
        SqliteKeyStore::open(&path).await.unwrap(),
        SqliteKeyStore::open(&path).await.unwrap(),
    );
    assert_eq!(has_log().await, 1);
    let (cache, feed) = watched(&server).await;
    let created = cli
        .create(Owner::user("user-1"), NewKey::new("k"))
        .await
        .unwrap();
    warm(&cache, &created.key).await;
    cli.revoke(created.record.id).await.unwrap();
    until_refused(&cache, &created.key).await;
    feed.shutdown().await;

    // The older keygate ignores the migration it does not know.
    older.run(&pool).await.unwrap();
}

#[cfg(feature = "metrics")]
#[test]
fn the_feed_counts_revocations_and_records_their_lag() {
    use common::recorded::{recorded, sample};

    let rendered = recorded(|| async {
        let (server, cli, _dir) = two_processes().await;
        let (cache, feed) = watched(&server).await;
        for i in 0..3 {
            let created = cli
                .create(Owner::user("user-1"), NewKey::new(format!("k{i}")))
                .await
                .unwrap();
            warm(&cache, &created.key).await;
            cli.revoke(created.record.id).await.unwrap();
            until_refused(&cache, &created.key).await;
        }
        assert!(feed.wait_for(WAIT, |s| s.events == 3).await);
        feed.shutdown().await;
    });
    let sample = |series: &str| {
        sample(&rendered, series).unwrap_or_else(|| panic!("no `{series}` in:\n{rendered}"))
    };
    assert_eq!(
        sample("keygate_fleet_revocations_total{feed=\"sqlite\"}"),
        3.0
    );
    // One lag sample per revocation, each under the 2 s the cache took at most.
    assert_eq!(
        sample("keygate_fleet_revocation_lag_seconds_count{feed=\"sqlite\"}"),
        3.0
    );
    let sum = sample("keygate_fleet_revocation_lag_seconds_sum{feed=\"sqlite\"}");
    assert!((0.0..6.0).contains(&sum), "lag sum {sum}");
}
