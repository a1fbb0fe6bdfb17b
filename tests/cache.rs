//! `CachedVerifier` behind `RequireApiKey`: single flight, hits, expiry, errors, negative
//! verdicts and their budget, malformed keys. Driven through axum `Router`s with
//! `tower::ServiceExt::oneshot`.
//!
//! Every test counts the wrapped verifier's calls exactly (the harness's `CountingVerifier`
//! over a `MemoryKeyStore`), so "the cache answered" and "the verifier answered" are told apart
//! by numbers, not by timing. Revocation and invalidation are in `cache_revocation.rs`.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::HeaderName;
use axum::Router;
use common::app::routes;
use common::http::{call, send, x_key, Reply, INVALID, UNAVAILABLE, X_KEY};
use common::keys::unknown_key;
use common::rng::{seed, SplitMix64};
use common::verifier::{CountingVerifier, Delay};
use keygate::key::{ApiKey, Deployment, KeyKind};
use keygate::{
    CacheStats, CachedVerifier, KeyExtractor, KeyVerifier, NewKey, Owner, RequireApiKey,
};
use tokio::sync::Barrier;
use uuid::Uuid;

/// `n` requests with `key`, all released at once by a barrier, each on its own task.
async fn burst(app: &Router, key: &str, n: usize) -> Vec<Reply> {
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let app = app.clone();
            let key = key.to_owned();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                call(&app, &key).await
            })
        })
        .collect();
    let mut replies = Vec::with_capacity(n);
    for task in tasks {
        replies.push(task.await.expect("request task"));
    }
    replies
}

// ---------------------------------------------------------------------------------------------
// Single flight
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_with_a_new_valid_key_cost_one_call() {
    let counting = CountingVerifier::with_delay(Delay::BeforeRead(Duration::from_millis(50)));
    let created = counting.create_user_key("burst").await;
    let cached = CachedVerifier::new(counting.clone());
    let app = routes().layer(RequireApiKey::new(cached.clone()));

    let replies = burst(&app, created.key.expose_secret(), 200).await;

    assert_eq!(replies.len(), 200);
    for (i, reply) in replies.iter().enumerate() {
        reply.assert_admitted(created.record.id, &format!("request {i}"));
    }
    assert_eq!(counting.calls(), 1, "200 concurrent misses share one call");
    let stats = cached.stats();
    assert_eq!(stats.verifier_calls, 1, "{stats:?}");
    assert_eq!(stats.hits + stats.misses, 200, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_with_an_unknown_key_cost_one_call() {
    let counting = CountingVerifier::with_delay(Delay::BeforeRead(Duration::from_millis(50)));
    let cached = CachedVerifier::new(counting.clone());
    let app = routes().layer(RequireApiKey::new(cached.clone()));
    let stranger = unknown_key();

    let replies = burst(&app, stranger.expose_secret(), 200).await;

    assert_eq!(replies.len(), 200);
    for (i, reply) in replies.iter().enumerate() {
        reply.assert_rejected(&INVALID, &format!("request {i}"));
    }
    assert_eq!(
        counting.calls(),
        1,
        "invalid verdicts are single-flight too"
    );
    let stats = cached.stats();
    assert_eq!(stats.verifier_calls, 1, "{stats:?}");
    assert_eq!(stats.negative_hits + stats.misses, 200, "{stats:?}");
    assert_eq!(stats.hits, 0, "{stats:?}");
}

// ---------------------------------------------------------------------------------------------
// Hits cost nothing; the counters say so
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_cache_hit_costs_no_call_and_the_stats_agree() {
    let counting = CountingVerifier::new();
    let created = counting.create_user_key("hit").await;
    let cached = CachedVerifier::new(counting.clone());
    let app = routes().layer(RequireApiKey::new(cached.clone()));
    assert_eq!(cached.stats(), CacheStats::default());

    call(&app, created.key.expose_secret())
        .await
        .assert_admitted(created.record.id, "first");
    assert_eq!(counting.calls(), 1);
    let first = cached.stats();
    assert_eq!(
        (
            first.hits,
            first.misses,
            first.verifier_calls,
            first.negative_hits,
            first.errors
        ),
        (0, 1, 1, 0, 0),
        "{first:?}"
    );

    call(&app, created.key.expose_secret())
        .await
        .assert_admitted(created.record.id, "second");
    assert_eq!(counting.calls(), 1, "the second request is a hit");
    let second = cached.stats();
    assert_eq!(
        (
            second.hits,
            second.misses,
            second.verifier_calls,
            second.negative_hits,
            second.errors
        ),
        (1, 1, 1, 0, 0),
        "{second:?}"
    );

    for _ in 0..10 {
        call(&app, created.key.expose_secret())
            .await
            .assert_admitted(created.record.id, "more");
    }
    cached.run_pending_tasks();
    let after = cached.stats();
    assert_eq!(counting.calls(), 1);
    assert_eq!(
        (after.hits, after.misses, after.verifier_calls),
        (11, 1, 1),
        "{after:?}"
    );
    assert_eq!(
        (after.valid_entries, after.invalid_entries),
        (1, 0),
        "{after:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A cached valid verdict never outlives the key
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_key_that_expires_while_cached_is_refused_after_its_expiry() {
    let counting = CountingVerifier::new();
    let created = counting
        .create(
            Owner::user("expiring"),
            NewKey::new("x").expires_at(SystemTime::now() + Duration::from_millis(700)),
        )
        .await;
    let cached = CachedVerifier::builder(counting.clone())
        .ttl(Duration::from_secs(60))
        .build();
    let app = routes().layer(RequireApiKey::new(cached.clone()));
    let key = created.key.expose_secret();

    call(&app, key)
        .await
        .assert_admitted(created.record.id, "before expiry");
    assert_eq!(counting.calls(), 1);

    tokio::time::sleep(Duration::from_millis(1_000)).await;

    // The cache itself no longer answers for the key (not just the layer re-checking expiry).
    // (`stats().valid_entries` may still count it: moka's timer wheel drops entries lazily.)
    let answer = cached.verify_now(&created.key);
    assert!(
        answer.is_none(),
        "an expired key is still cached: {answer:?}"
    );

    call(&app, key)
        .await
        .assert_rejected(&INVALID, "after expiry");
    assert_eq!(
        counting.calls(),
        2,
        "the expired verdict was not served from the cache"
    );
}

// ---------------------------------------------------------------------------------------------
// Malformed keys never cost a lookup
// ---------------------------------------------------------------------------------------------

/// RFC 6750 `b64token` characters (without `=` padding), so every value is a syntactically valid
/// Bearer credential and reaches the key parser instead of being refused with 400.
const B64TOKEN: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/";
const KEYISH: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_";
const HEX: &[u8] = b"0123456789abcdef";

fn malformed_key(rng: &mut SplitMix64, valid: &str, i: usize) -> String {
    match i % 4 {
        // Random strings of random lengths, some past the 512-byte cap.
        0 => {
            let len = 1 + rng.below(600);
            rng.string(B64TOKEN, len)
        }
        // Random strings of the right length over the key alphabet.
        1 => rng.string(KEYISH, 102),
        // One character of a valid key changed.
        2 => {
            let mut bytes = valid.as_bytes().to_vec();
            let at = rng.below(bytes.len());
            let mut c = rng.pick(B64TOKEN);
            while c == bytes[at] {
                c = rng.pick(B64TOKEN);
            }
            bytes[at] = c;
            String::from_utf8(bytes).expect("ascii")
        }
        // A well-formed key of any kind with a wrong checksum.
        _ => {
            let kind = if rng.below(2) == 0 {
                KeyKind::User
            } else {
                KeyKind::Team
            };
            let deployment = if rng.below(2) == 0 {
                Deployment::Cloud
            } else {
                Deployment::SelfHosted
            };
            let fresh = ApiKey::generate(Uuid::new_v4(), kind, rng.below(2) == 0, deployment)
                .expect("os rng");
            let fresh = fresh.expose_secret();
            let mut checksum = rng.string(HEX, 8);
            while checksum == fresh[94..] {
                checksum = rng.string(HEX, 8);
            }
            format!("{}{checksum}", &fresh[..94])
        }
    }
}

#[tokio::test]
async fn ten_thousand_malformed_keys_cost_no_call_and_a_hot_key_still_passes() {
    let counting = CountingVerifier::new();
    let hot = counting.create_user_key("hot").await;
    let cached = CachedVerifier::new(counting.clone());
    let extractor = KeyExtractor::new().header(HeaderName::from_static(X_KEY));
    let app = routes().layer(RequireApiKey::new(cached.clone()).extractor(extractor));
    let seed = seed();
    let mut rng = SplitMix64::new(seed);
    let hot_key = hot.key.expose_secret();

    let mut hot_requests = 0;
    for i in 0..10_000 {
        if i % 100 == 0 {
            call(&app, hot_key)
                .await
                .assert_admitted(hot.record.id, "hot key");
            hot_requests += 1;
        }
        let bad = malformed_key(&mut rng, hot_key, i);
        assert!(
            ApiKey::parse(&bad).is_err(),
            "seed {seed}, case {i}: generator produced a well-formed key"
        );
        let reply = if i % 2 == 0 {
            call(&app, &bad).await
        } else {
            send(&app, "/principal", &[x_key(bad.as_str())]).await
        };
        reply.assert_rejected(&INVALID, &format!("seed {seed}, case {i}, key {bad:?}"));
        assert_eq!(
            counting.calls(),
            1,
            "seed {seed}, case {i}: a malformed key cost a call"
        );
    }

    assert_eq!(
        counting.calls(),
        1,
        "only the hot key's first request was looked up"
    );
    cached.run_pending_tasks();
    let stats = cached.stats();
    assert_eq!(
        stats.misses, 1,
        "malformed keys never reach the cache: {stats:?}"
    );
    assert_eq!(stats.hits, hot_requests - 1, "{stats:?}");
    assert_eq!(stats.negative_hits, 0, "{stats:?}");
    assert_eq!(
        stats.invalid_entries, 0,
        "malformed keys are not cached: {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Errors are never cached
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn verifier_errors_are_not_cached() {
    let counting = CountingVerifier::new();
    let created = counting.create_user_key("flaky").await;
    let cached = CachedVerifier::new(counting.clone());
    let app = routes().layer(RequireApiKey::new(cached.clone()));
    let key = created.key.expose_secret();

    counting.set_failing(true);
    for attempt in 1..=2 {
        call(&app, key)
            .await
            .assert_rejected(&UNAVAILABLE, &format!("failing request {attempt}"));
        assert_eq!(
            counting.calls(),
            attempt,
            "every failing request asks again"
        );
    }
    let stats = cached.stats();
    assert_eq!((stats.errors, stats.verifier_calls), (2, 2), "{stats:?}");

    counting.set_failing(false);
    call(&app, key)
        .await
        .assert_admitted(created.record.id, "healthy again");
    assert_eq!(counting.calls(), 3);
    call(&app, key)
        .await
        .assert_admitted(created.record.id, "and now cached");
    assert_eq!(counting.calls(), 3);
}

#[tokio::test]
async fn a_verifier_error_does_not_hide_a_key_that_was_unknown_before() {
    // The reverse direction: an error must not overwrite or extend a cached invalid verdict
    // either, and must not turn into a 401.
    let counting = CountingVerifier::new();
    let cached = CachedVerifier::new(counting.clone());
    let app = routes().layer(RequireApiKey::new(cached.clone()));
    let stranger = unknown_key();

    counting.set_failing(true);
    call(&app, stranger.expose_secret())
        .await
        .assert_rejected(&UNAVAILABLE, "down");
    counting.set_failing(false);
    call(&app, stranger.expose_secret())
        .await
        .assert_rejected(&INVALID, "healthy");
    assert_eq!(counting.calls(), 2, "the error was not remembered");
}

// ---------------------------------------------------------------------------------------------
// Negative verdicts: cached, with their own TTL
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_unknown_key_is_looked_up_once_within_the_negative_ttl() {
    let counting = CountingVerifier::new();
    let cached = CachedVerifier::new(counting.clone());
    let app = routes().layer(RequireApiKey::new(cached.clone()));
    let stranger = unknown_key();

    call(&app, stranger.expose_secret())
        .await
        .assert_rejected(&INVALID, "first");
    call(&app, stranger.expose_secret())
        .await
        .assert_rejected(&INVALID, "second");
    assert_eq!(counting.calls(), 1);
    let stats = cached.stats();
    assert_eq!((stats.misses, stats.negative_hits), (1, 1), "{stats:?}");
}

#[tokio::test]
async fn an_invalid_verdict_lapses_after_the_negative_ttl() {
    let counting = CountingVerifier::new();
    let cached = CachedVerifier::builder(counting.clone())
        .negative_ttl(Duration::from_millis(300))
        .build();
    let app = routes().layer(RequireApiKey::new(cached.clone()));
    let stranger = unknown_key();

    call(&app, stranger.expose_secret())
        .await
        .assert_rejected(&INVALID, "first");
    assert_eq!(counting.calls(), 1);

    tokio::time::sleep(Duration::from_millis(600)).await;

    call(&app, stranger.expose_secret())
        .await
        .assert_rejected(&INVALID, "after the negative ttl");
    assert_eq!(counting.calls(), 2, "the invalid verdict lapsed");
}

// ---------------------------------------------------------------------------------------------
// A flood of unknown keys cannot evict valid verdicts
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_keys_have_their_own_budget() {
    let counting = CountingVerifier::new();
    let hot = counting.create_user_key("hot").await;
    let cached = CachedVerifier::builder(counting.clone())
        .max_negative_entries(100)
        .build();
    let app = routes().layer(RequireApiKey::new(cached.clone()));
    let hot_key = hot.key.expose_secret();

    call(&app, hot_key)
        .await
        .assert_admitted(hot.record.id, "warm");
    call(&app, hot_key)
        .await
        .assert_admitted(hot.record.id, "hit");
    assert_eq!(counting.calls(), 1);

    for i in 0..2_000 {
        let stranger = unknown_key();
        call(&app, stranger.expose_secret())
            .await
            .assert_rejected(&INVALID, &format!("stranger {i}"));
    }
    assert_eq!(
        counting.calls(),
        2_001,
        "every distinct unknown key costs one call"
    );
    cached.run_pending_tasks();

    let before = cached.stats();
    call(&app, hot_key)
        .await
        .assert_admitted(hot.record.id, "hot after the flood");
    let after = cached.stats();
    assert_eq!(counting.calls(), 2_001, "the hot key is still cached");
    assert_eq!(after.hits, before.hits + 1, "{before:?} -> {after:?}");
    assert_eq!(after.valid_entries, 1, "{after:?}");
    assert!(
        after.invalid_entries <= 200,
        "the negative cache is bounded near 100: {after:?}"
    );
    assert!(after.invalid_entries > 0, "{after:?}");
}

#[tokio::test]
async fn the_wrapped_store_and_the_cache_agree_on_every_verdict() {
    // Sanity check of the harness itself: the counting wrapper answers like its store.
    let counting = CountingVerifier::new();
    let created = counting.create_user_key("same").await;
    let team = counting.create(Owner::team("t"), NewKey::new("team")).await;
    let cached = CachedVerifier::new(counting.clone());
    for key in [&created.key, &team.key, &unknown_key()] {
        let direct = counting.store().verify(key).await.expect("store");
        let wrapped = counting.verify(key).await.expect("counting");
        let through_cache = cached.verify(key).await.expect("cache");
        assert_eq!(direct, wrapped);
        assert_eq!(direct, through_cache);
    }
    assert_eq!(counting.calls(), 6);
}
