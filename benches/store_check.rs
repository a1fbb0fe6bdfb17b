//! Cache-miss check latency of the SQL stores, against the floor: a bare sqlx query by digest
//! on the same pool (no decoding into a record, no verdict). Target: `verify` ≤ 1.2× the floor.
//!
//! ```text
//! cargo bench --bench store_check --features sqlite                 # SQLite only
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo bench --bench store_check --features sqlite,postgres    # SQLite and PostgreSQL
//! ```
//!
//! A timed loop: rounds of the floor and of `verify` alternate (so drift hits both alike), over
//! 1 000 stored keys checked in turn; the median round is reported. One task on a
//! current-thread runtime: latency, not throughput.

use std::future::Future;
use std::hint::black_box;
use std::time::{Duration, Instant};

use keygate::key::ApiKey;
use keygate::store::{KeyStore, NewKey};
use keygate::verify::{KeyVerifier, Owner};
use keygate::SqliteKeyStore;

const KEYS: usize = 1_000;
const ROUNDS: usize = 9;
const PER_ROUND: usize = 4_000;
const TARGET: f64 = 1.2;

/// Median time per call of `floor` and of `store`, alternating rounds.
async fn compare<F, FF, S, SF>(floor: F, store: S) -> (Duration, Duration)
where
    F: Fn(usize) -> FF,
    FF: Future<Output = ()>,
    S: Fn(usize) -> SF,
    SF: Future<Output = ()>,
{
    // Warm-up: prepared statements, page cache, connections.
    for i in 0..PER_ROUND / 4 {
        floor(i).await;
        store(i).await;
    }
    let (mut floors, mut stores) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for i in 0..PER_ROUND {
            floor(i).await;
        }
        floors.push(t.elapsed() / PER_ROUND as u32);
        let t = Instant::now();
        for i in 0..PER_ROUND {
            store(i).await;
        }
        stores.push(t.elapsed() / PER_ROUND as u32);
    }
    floors.sort();
    stores.sort();
    (floors[ROUNDS / 2], stores[ROUNDS / 2])
}

fn report(name: &str, (floor, store): (Duration, Duration)) -> bool {
    let ratio = store.as_secs_f64() / floor.as_secs_f64();
    let ok = ratio <= TARGET;
    println!(
        "{name:<10} floor {:>8.2} µs   verify {:>8.2} µs   ratio {ratio:.3}   (target ≤ {TARGET}) {}",
        floor.as_secs_f64() * 1e6,
        store.as_secs_f64() * 1e6,
        if ok { "ok" } else { "MISSED" }
    );
    ok
}

async fn keys<S: KeyStore>(store: &S) -> Vec<ApiKey> {
    let mut keys = Vec::with_capacity(KEYS);
    for i in 0..KEYS {
        let owner = Owner::user(format!("user-{}", i % 50));
        let created = store
            .create(owner, NewKey::new(format!("key {i}")))
            .await
            .expect("create");
        keys.push(created.key);
    }
    keys
}

async fn sqlite() -> bool {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteKeyStore::open(dir.path().join("bench.db"))
        .await
        .expect("open");
    let keys = keys(&store).await;
    let pool = store.pool().clone();
    let timings = compare(
        |i| {
            let (pool, key) = (&pool, &keys[i % KEYS]);
            async move {
                let row = sqlx::query(
                    "SELECT id, owner_kind, owner_id, description, is_public, last_four, \
                     created_at, expires_at, revoked_at FROM keygate_api_keys WHERE digest = ?1",
                )
                .bind(&key.digest().as_bytes()[..])
                .fetch_optional(pool)
                .await
                .expect("floor");
                black_box(row.expect("found"));
            }
        },
        |i| {
            let (store, key) = (&store, &keys[i % KEYS]);
            async move {
                let verdict = store.verify(key).await.expect("verify");
                assert!(black_box(verdict).is_valid());
            }
        },
    )
    .await;
    report("sqlite", timings)
}

#[cfg(feature = "postgres")]
async fn postgres() -> Option<bool> {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        println!("postgres   skipped: DATABASE_URL not set");
        return None;
    };
    let schema = format!("keygate_bench_{}", uuid::Uuid::new_v4().simple());
    let store = keygate::PostgresKeyStore::builder(&url)
        .schema(&schema)
        .connect()
        .await
        .expect("connect");
    let keys = keys(&store).await;
    let pool = store.pool().clone();
    let timings = compare(
        |i| {
            let (pool, key) = (&pool, &keys[i % KEYS]);
            async move {
                let row = sqlx::query(
                    "SELECT id, owner_kind, owner_id, description, is_public, last_four, \
                     created_at, expires_at, revoked_at FROM keygate_api_keys WHERE digest = $1",
                )
                .bind(&key.digest().as_bytes()[..])
                .fetch_optional(pool)
                .await
                .expect("floor");
                black_box(row.expect("found"));
            }
        },
        |i| {
            let (store, key) = (&store, &keys[i % KEYS]);
            async move {
                let verdict = store.verify(key).await.expect("verify");
                assert!(black_box(verdict).is_valid());
            }
        },
    )
    .await;
    let ok = report("postgres", timings);
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&pool)
        .await
        .expect("drop schema");
    Some(ok)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ok = sqlite().await;
        #[cfg(feature = "postgres")]
        let ok = match postgres().await {
            Some(pg) => ok & pg,
            None => ok,
        };
        if !ok {
            println!("a store missed the {TARGET}× target");
        }
    });
}
