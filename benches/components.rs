//! The pieces of the cache-hit path, one at a time (criterion).
//!
//! ```text
//! cargo bench --bench components
//! ```

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use keygate::key::{self, ApiKey, KeyDigest};
use keygate::verify::KeyVerifier;
use keygate::CachedVerifier;

mod common;
use common::Fixture;

fn components(c: &mut Criterion) {
    let Fixture {
        rt, store, created, ..
    } = Fixture::new();
    let text = created.key.expose_secret().to_owned();
    // A TTL longer than the whole run: every sample is a hit.
    let cache = CachedVerifier::builder(store.clone())
        .ttl(std::time::Duration::from_secs(3600))
        .build();
    assert!(rt.block_on(cache.verify(&created.key)).is_ok());
    let parsed = ApiKey::parse(&text).expect("key");

    let mut group = c.benchmark_group("components");
    group.bench_function("format_parse", |b| b.iter(|| key::parse(black_box(&text))));
    group.bench_function("sha256_digest", |b| {
        b.iter(|| KeyDigest::of(black_box(&text)))
    });
    group.bench_function("api_key_parse", |b| {
        b.iter(|| ApiKey::parse(black_box(&text)))
    });
    group.bench_function("cache_hit_verify_now", |b| {
        b.iter(|| cache.verify_now(black_box(&parsed)))
    });
    group.bench_function("cache_hit_cached_verdict", |b| {
        b.iter(|| cache.__cached_verdict(black_box(parsed.digest())))
    });
    group.bench_function("memory_store_verify_now", |b| {
        b.iter(|| store.verify_now(black_box(&parsed)))
    });
    group.bench_function("extensions_insert_principal", |b| {
        let principal = match cache.verify_now(&parsed) {
            Some(Ok(keygate::Verdict::Valid(info))) => keygate::Principal::from_key_info(&info),
            _ => panic!("warm cache"),
        };
        // What the layer inserts: the user value and the principal.
        b.iter(|| {
            let mut request = http::Request::new(());
            let p = principal.clone();
            if let keygate::Principal::User(u) = &p {
                request.extensions_mut().insert(u.clone());
            }
            request.extensions_mut().insert(p);
            black_box(request)
        })
    });
    group.finish();
}

criterion_group!(benches, components);
criterion_main!(benches);
