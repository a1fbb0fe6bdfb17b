//! Unit tests of `CachedVerifier` as a whole (the parts have their own, in their modules).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::*;
use crate::key::{Deployment, KeyKind};
use crate::verify::{InvalidReason, KeyInfo, Owner};

/// Says every key is valid (or every key unknown), and counts calls. With a gate, each call
/// waits for a permit after it has "read its source" (raised `inside`).
struct Fixed {
    valid: bool,
    calls: AtomicUsize,
    inside: AtomicBool,
    gate: Option<Arc<Semaphore>>,
}

impl KeyVerifier for Fixed {
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let verdict = if self.valid {
            Verdict::valid(
                KeyInfo::new(key.key_id(), Owner::user("u"), false).with_description("desc"),
            )
        } else {
            Verdict::Invalid(InvalidReason::NotFound)
        };
        self.inside.store(true, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("open").forget();
        }
        Ok(verdict)
    }
}

fn fixed(valid: bool) -> Fixed {
    Fixed {
        valid,
        calls: AtomicUsize::new(0),
        inside: AtomicBool::new(false),
        gate: None,
    }
}

fn key() -> ApiKey {
    ApiKey::generate(Uuid::new_v4(), KeyKind::User, false, Deployment::SelfHosted).expect("rng")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn the_memo_never_outlives_the_ttl() {
    block_on(async {
        let cache = CachedVerifier::builder(fixed(true))
            .ttl(Duration::from_millis(150))
            .build();
        let key = key();
        assert!(cache.verify(&key).await.expect("verify").is_valid());
        assert!(cache.verify_now(&key).is_some(), "moka hit, memo filled");
        assert!(cache.verify_now(&key).is_some(), "memo hit");
        assert_eq!(cache.get_ref().calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(cache.verify_now(&key).is_none(), "lapsed with the TTL");
        assert!(cache.verify(&key).await.expect("verify").is_valid());
        assert_eq!(cache.get_ref().calls.load(Ordering::SeqCst), 2);
    });
}

#[test]
fn the_digest_fast_path_reads_only_this_threads_memo() {
    let cache = CachedVerifier::new(fixed(true));
    let key = key();
    let (warm, cache2) = (key.clone(), cache.clone());
    // Verified and memoised on another thread: moka holds the verdict, this thread's memo
    // does not.
    std::thread::spawn(move || {
        block_on(async {
            assert!(cache2.verify(&warm).await.expect("verify").is_valid());
            assert!(
                cache2.__cached_verdict(warm.digest()).is_none(),
                "moka only"
            );
            assert!(cache2.verify_now(&warm).is_some());
            assert!(cache2.__cached_verdict(warm.digest()).is_some(), "memoised");
        })
    })
    .join()
    .expect("thread");
    assert!(
        cache.__cached_verdict(key.digest()).is_none(),
        "not in this thread's memo"
    );
    assert!(
        cache.verify_now(&key).is_some(),
        "moka, for a fully parsed key"
    );
    assert!(
        cache.__cached_verdict(key.digest()).is_some(),
        "now memoised here"
    );
    // An unknown digest is never answered, and counts nothing.
    let before = cache.stats();
    assert!(cache
        .__cached_verdict(&KeyDigest::of("not a key"))
        .is_none());
    assert_eq!(cache.stats().hits, before.hits);
    assert_eq!(cache.get_ref().calls.load(Ordering::SeqCst), 1);
}

#[test]
fn a_ttl_too_long_for_the_clock_does_not_overflow() {
    block_on(async {
        let cache = CachedVerifier::builder(fixed(true))
            .ttl(Duration::from_secs(200 * 365 * 86_400))
            .build();
        let key = key();
        assert!(cache.verify(&key).await.expect("verify").is_valid());
        assert!(cache.verify_now(&key).is_some(), "moka hit, memo filled");
        assert!(cache.__cached_verdict(key.digest()).is_some(), "memo hit");
        cache.invalidate_key_id(key.key_id());
        assert!(cache.verify_now(&key).is_none(), "barred");
        assert_eq!(cache.get_ref().calls.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn the_memo_is_per_cache_and_forgets_on_invalidation() {
    block_on(async {
        let yes = CachedVerifier::new(fixed(true));
        let no = CachedVerifier::new(fixed(false));
        let key = key();
        assert!(yes.verify(&key).await.expect("verify").is_valid());
        assert!(yes.verify_now(&key).is_some());
        // Another cache on this thread must not see the first one's memo.
        assert_eq!(
            no.verify(&key).await.expect("verify"),
            Verdict::Invalid(InvalidReason::NotFound)
        );
        yes.invalidate_key_id(key.key_id());
        assert!(yes.verify_now(&key).is_none(), "memo and moka both forgot");
        let stats = yes.stats();
        assert_eq!((stats.hits, stats.verifier_calls), (1, 1), "{stats:?}");
    });
}

#[test]
fn a_cache_hit_carries_no_description_and_the_first_answer_does() {
    block_on(async {
        let cache = CachedVerifier::new(fixed(true));
        let key = key();
        let Ok(Verdict::Valid(first)) = cache.verify(&key).await else {
            panic!("valid")
        };
        assert_eq!(&*first.description, "desc", "straight from the verifier");
        let Some(Ok(Verdict::Valid(hit))) = cache.verify_now(&key) else {
            panic!("a hit")
        };
        assert_eq!(&*hit.description, "");
        assert_eq!(
            (hit.key_id, &hit.owner, hit.is_public, hit.expires_at),
            (
                first.key_id,
                &first.owner,
                first.is_public,
                first.expires_at
            )
        );
    });
}

/// A lookup that read its source before an invalidation and answers after it: its answer goes
/// to its caller, and never into the cache.
fn a_lookup_in_flight_is_not_cached_after(invalidate: impl Fn(&CachedVerifier<Fixed>, &ApiKey)) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let gate = Arc::new(Semaphore::new(0));
    let cache = CachedVerifier::new(Fixed {
        gate: Some(Arc::clone(&gate)),
        ..fixed(true)
    });
    let key = key();
    runtime.block_on(async {
        let lookup = tokio::spawn({
            let (cache, key) = (cache.clone(), key.clone());
            async move { cache.verify(&key).await }
        });
        while !cache.get_ref().inside.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        invalidate(&cache, &key);
        gate.add_permits(1);
        let answer = lookup.await.expect("task").expect("verify");
        assert!(answer.is_valid(), "the caller gets the lookup's answer");
        assert!(cache.verify_now(&key).is_none(), "but it was not cached");
        gate.add_permits(1);
        assert!(cache.verify(&key).await.expect("verify").is_valid());
        assert!(cache.verify_now(&key).is_some(), "a later lookup is cached");
        assert_eq!(cache.get_ref().calls.load(Ordering::SeqCst), 2);
    });
}

#[test]
fn a_lookup_in_flight_during_invalidate_key_id_is_not_cached() {
    a_lookup_in_flight_is_not_cached_after(|cache, key| cache.invalidate_key_id(key.key_id()));
}

#[test]
fn a_lookup_in_flight_during_invalidate_is_not_cached() {
    a_lookup_in_flight_is_not_cached_after(|cache, key| cache.invalidate(key));
}

#[test]
fn a_lookup_in_flight_during_invalidate_all_is_not_cached() {
    a_lookup_in_flight_is_not_cached_after(|cache, _| cache.invalidate_all());
}

#[test]
fn a_revoked_id_is_not_cached_valid_even_by_a_later_lookup() {
    block_on(async {
        let cache = CachedVerifier::new(fixed(true));
        let key = key();
        assert!(cache.verify(&key).await.expect("verify").is_valid());
        cache.revocation_listener().notify(key.key_id());
        // A source that still says "valid" (a remote one, lagging): answered, not cached.
        assert!(cache.verify(&key).await.expect("verify").is_valid());
        assert!(cache.verify_now(&key).is_none());
        assert_eq!(cache.get_ref().calls.load(Ordering::SeqCst), 2);
    });
}

/// Evictions, as a Prometheus recorder on this thread renders them: capacity and TTL count,
/// per tier; explicit invalidations do not.
#[cfg(feature = "metrics")]
#[test]
fn evictions_for_capacity_and_ttl_are_counted_and_invalidations_are_not() {
    use metrics_exporter_prometheus::PrometheusBuilder;

    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let series = |tier: &str, cause: &str| {
        let name = format!("keygate_cache_evictions_total{{tier=\"{tier}\",cause=\"{cause}\"}}");
        let rendered = handle.render();
        rendered
            .lines()
            .find_map(|line| line.strip_prefix(name.as_str())?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    metrics::with_local_recorder(&recorder, || {
        block_on(async {
            // Capacity: 200 valid keys into room for 5, 200 unknown ones into room for 5.
            let valid = CachedVerifier::builder(fixed(true)).max_entries(5).build();
            let invalid = CachedVerifier::builder(fixed(false))
                .max_negative_entries(5)
                .build();
            for _ in 0..200 {
                assert!(valid.verify(&key()).await.expect("verify").is_valid());
                assert!(!invalid.verify(&key()).await.expect("verify").is_valid());
            }
            valid.run_pending_tasks();
            invalid.run_pending_tasks();
        });
    });
    assert!(series("valid", "size") >= 150.0, "{}", handle.render());
    assert!(series("invalid", "size") >= 150.0, "{}", handle.render());
    assert_eq!(series("valid", "expired"), 0.0);

    metrics::with_local_recorder(&recorder, || {
        block_on(async {
            // TTL: entries that outlive it are counted once moka does its housekeeping.
            let cache = CachedVerifier::builder(fixed(true))
                .ttl(Duration::from_millis(20))
                .build();
            let negative = CachedVerifier::builder(fixed(false))
                .negative_ttl(Duration::from_millis(20))
                .build();
            for _ in 0..3 {
                cache.verify(&key()).await.expect("verify");
                negative.verify(&key()).await.expect("verify");
            }
            // Explicit invalidation: not an eviction.
            let revoked = key();
            cache.verify(&revoked).await.expect("verify");
            cache.invalidate(&revoked);
            cache.run_pending_tasks();
            // Per-entry expiries sit in moka's timer wheel, whose finest slots span about a
            // second: wait for housekeeping to reach them, for at most 10 s.
            let start = std::time::Instant::now();
            while series("valid", "expired") < 3.0 && start.elapsed() < Duration::from_secs(10) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                cache.run_pending_tasks();
            }
            negative.run_pending_tasks();
        });
    });
    assert_eq!(series("valid", "expired"), 3.0, "{}", handle.render());
    assert_eq!(series("invalid", "expired"), 3.0, "{}", handle.render());
    assert!(!handle.render().contains("explicit"), "{}", handle.render());
}
