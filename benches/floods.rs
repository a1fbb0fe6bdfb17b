//! Crowds and floods, counted rather than timed: what a crowd of first requests or a flood of
//! garbage keys costs the verifier, and what the cache costs in memory.
//!
//! ```text
//! cargo bench --bench floods                 # every scenario (about a minute on 2 cores)
//! cargo bench --bench floods -- crowd        # some scenarios: crowd | malformed | unknown | memory | floor
//! cargo bench --bench floods -- memory       # bytes per cached valid verdict, fresh process
//! cargo bench --bench floods -- floor        # moka's own cost per entry, fresh process
//! cargo bench --bench floods -- crowd malformed unknown floor   # the same, where `memory` runs
//! ```
//!
//! Each scenario asserts its own invariant and exits non-zero if it breaks. `memory` and `floor`
//! read the process's RSS, so their figures depend on what ran before them in the process: in
//! the full run `memory` comes last and reuses the heap the other scenarios freed; alone, it
//! starts from a fresh heap. `floor` runs only when named.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::header::AUTHORIZATION;
use http::{Request, StatusCode};
use keygate::key::{ApiKey, Deployment, KeyDigest, KeyKind};
use keygate::verify::{KeyVerifier, Verdict, VerifyError};
use keygate::{CachedVerifier, KeyStore, MemoryKeyStore, NewKey, Owner, RequireApiKey};
use tower::ServiceExt;
use uuid::Uuid;

/// A store that counts calls and takes a little time, like a remote check would.
#[derive(Clone)]
struct Counted {
    store: MemoryKeyStore,
    calls: Arc<AtomicU64>,
    delay: Duration,
}

impl KeyVerifier for Counted {
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.store.verify(key).await
    }
}

fn counted(delay: Duration) -> Counted {
    Counted {
        store: MemoryKeyStore::new(),
        calls: Arc::new(AtomicU64::new(0)),
        delay,
    }
}

fn app<V: KeyVerifier>(verifier: CachedVerifier<V>) -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RequireApiKey::new(verifier))
}

async fn status(app: &Router, key: &str) -> StatusCode {
    let request = Request::get("/")
        .header(AUTHORIZATION, format!("Bearer {key}"))
        .body(Body::empty())
        .expect("request");
    app.clone()
        .oneshot(request)
        .await
        .map(|r| r.status())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A `/proc/self/status` field in KiB (Linux): `VmRSS` now, `VmHWM` the peak.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

fn well_formed_unknown() -> String {
    ApiKey::generate(Uuid::new_v4(), KeyKind::User, false, Deployment::SelfHosted)
        .map(|k| k.expose_secret().to_owned())
        .unwrap_or_default()
}

/// 1,000 concurrent first requests with one new key → 1 verifier call.
async fn crowd() {
    let verifier = counted(Duration::from_millis(50));
    let created = verifier
        .store
        .create(Owner::user("u"), NewKey::new("crowd"))
        .await
        .expect("create");
    let app = app(CachedVerifier::new(verifier.clone()));
    let key = created.key.expose_secret().to_owned();
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (app, key, barrier) = (app.clone(), key.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                status(&app, &key).await
            })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        if task.await.ok() == Some(StatusCode::OK) {
            ok += 1;
        }
    }
    let calls = verifier.calls.load(Ordering::Relaxed);
    println!(
        "crowd: 1,000 concurrent first requests, one new key: {ok} x 200, verifier calls = {calls}"
    );
    assert_eq!((ok, calls), (1000, 1));
}

/// 1,000,000 random malformed keys → 0 verifier calls; rejections per second.
async fn malformed() {
    let verifier = counted(Duration::ZERO);
    let app = app(CachedVerifier::new(verifier.clone()));
    let good = well_formed_unknown();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    const N: usize = 1_000_000;
    // Generated up front so the timing is the guard's alone: single-character mutations of a
    // well-formed key (they pass every check but the checksum) and random strings.
    let keys: Vec<String> = (0..N)
        .map(|i| {
            let r = next();
            if i % 2 == 0 {
                let mut bytes = good.clone().into_bytes();
                let at = (r % 102) as usize;
                let alphabet = b"0123456789abcdefghjkmnpqrstvwxyz";
                let mut c = alphabet[((r >> 8) % 32) as usize];
                if c == bytes[at] {
                    c = if c == b'0' { b'1' } else { b'0' };
                }
                bytes[at] = c;
                String::from_utf8(bytes).unwrap_or_default()
            } else {
                let len = 1 + (r % 150) as usize;
                (0..len)
                    .map(|j| {
                        char::from(
                            b"abcdefghjkmnpqrstvwxyz0123456789_"
                                [((r >> (j % 50)) as usize + j) % 33],
                        )
                    })
                    .collect()
            }
        })
        .collect();
    let started = Instant::now();
    let mut refused = 0usize;
    for key in &keys {
        if status(&app, key).await == StatusCode::UNAUTHORIZED {
            refused += 1;
        }
    }
    let elapsed = started.elapsed();
    let calls = verifier.calls.load(Ordering::Relaxed);
    println!(
        "malformed: {N} random malformed keys: {refused} x 401, verifier calls = {calls}, {:.0} rejections/s through the router (1 core)",
        N as f64 / elapsed.as_secs_f64()
    );
    assert_eq!((refused, calls), (N, 0));
}

/// 100,000 well-formed unknown keys interleaved with one hot valid key: the hot key always
/// hits, unknown keys cost one call each (then a negative entry), memory stays bounded.
async fn unknown() {
    let verifier = counted(Duration::ZERO);
    let created = verifier
        .store
        .create(Owner::user("u"), NewKey::new("hot"))
        .await
        .expect("create");
    let cache = CachedVerifier::new(verifier.clone());
    let app = app(cache.clone());
    let hot = created.key.expose_secret().to_owned();
    assert_eq!(status(&app, &hot).await, StatusCode::OK);
    let unknown: Vec<String> = (0..100_000).map(|_| well_formed_unknown()).collect();
    let rss_before = rss_kib();
    let hits_before = cache.stats().hits;
    let mut hot_ok = 0;
    for key in &unknown {
        assert_eq!(status(&app, key).await, StatusCode::UNAUTHORIZED);
        if status(&app, &hot).await == StatusCode::OK {
            hot_ok += 1;
        }
    }
    // The same unknown keys again: answered by the negative cache while they fit in it.
    let calls_first_pass = verifier.calls.load(Ordering::Relaxed);
    for key in unknown.iter().rev().take(5_000) {
        assert_eq!(status(&app, key).await, StatusCode::UNAUTHORIZED);
    }
    cache.run_pending_tasks();
    let stats = cache.stats();
    let calls = verifier.calls.load(Ordering::Relaxed);
    println!(
        "unknown: 100,000 unknown well-formed keys + 100,000 hot-key requests: hot key 200 x {hot_ok} ({} hits, hit rate {:.1}%), verifier calls = {} (1 hot + {} unknown; replaying the last 5,000 unknown cost {} more), negative entries = {}, RSS {} -> {} KiB, peak {} KiB",
        stats.hits - hits_before,
        100.0 * hot_ok as f64 / unknown.len() as f64,
        calls,
        calls_first_pass - 1,
        calls - calls_first_pass,
        stats.invalid_entries,
        rss_before,
        rss_kib(),
        peak_rss_kib(),
    );
    assert_eq!(hot_ok, unknown.len());
    assert_eq!(calls_first_pass, 1 + unknown.len() as u64);
    assert!(stats.invalid_entries <= keygate::cache::DEFAULT_MAX_NEGATIVE_ENTRIES + 1_000);
}

/// Memory per cached valid verdict at 1,000,000 entries.
async fn memory() {
    const N: u64 = 1_000_000;
    let store = MemoryKeyStore::new();
    let cache = CachedVerifier::builder(PreValidated)
        .max_entries(N)
        .ttl(Duration::from_secs(3600))
        .build();
    let _ = store;
    // Keys are generated in batches and dropped, so only the cache grows.
    let before = rss_kib();
    for _ in 0..N / 10_000 {
        let batch: Vec<ApiKey> = (0..10_000)
            .filter_map(|_| {
                ApiKey::generate(Uuid::new_v4(), KeyKind::User, false, Deployment::SelfHosted).ok()
            })
            .collect();
        for key in &batch {
            let _ = cache.verify(key).await;
        }
    }
    cache.run_pending_tasks();
    let after = rss_kib();
    let entries = cache.stats().valid_entries;
    println!(
        "memory: {entries} cached valid verdicts: RSS {before} -> {after} KiB, {:.0} bytes per entry",
        (after.saturating_sub(before) as f64 * 1024.0) / entries.max(1) as f64
    );
    assert!(entries >= N * 99 / 100);
}

/// moka's own cost per entry: a `moka::sync::Cache` configured like the cache of valid verdicts
/// (same key type, same bound, per-entry expiry), with a zero-size value, at 1,000,000 entries.
/// Whatever `memory` measures above this is keygate's.
async fn floor() {
    const N: u64 = 1_000_000;
    struct Hour;
    impl moka::Expiry<KeyDigest, ()> for Hour {
        fn expire_after_create(&self, _: &KeyDigest, _: &(), _: Instant) -> Option<Duration> {
            Some(Duration::from_secs(3600))
        }
    }
    let cache: moka::sync::Cache<KeyDigest, ()> = moka::sync::Cache::builder()
        .max_capacity(N)
        .expire_after(Hour)
        .build();
    let before = rss_kib();
    for i in 0..N {
        cache.insert(KeyDigest::of(&i.to_string()), ());
    }
    cache.run_pending_tasks();
    let after = rss_kib();
    let entries = cache.entry_count();
    println!(
        "floor: {entries} moka entries with a zero-size value: RSS {before} -> {after} KiB, {:.0} bytes per entry",
        (after.saturating_sub(before) as f64 * 1024.0) / entries.max(1) as f64
    );
    assert!(entries >= N * 99 / 100);
}

/// Says every key is valid, owned by one user: fills the cache without a store.
#[derive(Clone)]
struct PreValidated;

impl KeyVerifier for PreValidated {
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        Ok(Verdict::valid(keygate::verify::KeyInfo::new(
            key.key_id(),
            Owner::user("0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c"),
            false,
        )))
    }
}

fn main() {
    // Scenarios named on the command line, in the usual order (all but `floor` if none).
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let want = |name: &str| named.is_empty() || named.iter().any(|n| n == name);
    runtime.block_on(async {
        if want("crowd") {
            crowd().await;
        }
        if want("malformed") {
            malformed().await;
        }
        if want("unknown") {
            unknown().await;
        }
        if want("memory") {
            memory().await;
        }
        // Only when named: it is measured alone (`-- floor`) or in place of `memory`, after the
        // same scenarios (`-- crowd malformed unknown floor`).
        if named.iter().any(|n| n == "floor") {
            floor().await;
        }
    });
}
