//! The cost of the guard on the request path, in process: an axum `Router` driven with
//! `oneshot`, the same trivial handler in every variant.
//!
//! ```text
//! cargo bench --bench hot_path
//! ```

use std::hint::black_box;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, StatusCode};
use keygate::{CachedVerifier, KeyStore, MemoryKeyStore, NewKey, Owner, RequireApiKey};
use tower::ServiceExt;

async fn handler() -> &'static str {
    "ok"
}

fn request(bearer: &HeaderValue) -> Request<Body> {
    let mut request = Request::new(Body::empty());
    *request.uri_mut() = http::Uri::from_static("/");
    request.headers_mut().insert(AUTHORIZATION, bearer.clone());
    request
}

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = MemoryKeyStore::new();
    let created = rt
        .block_on(store.create(Owner::user("user-1"), NewKey::new("bench")))
        .expect("create");
    let bearer =
        HeaderValue::from_str(&format!("Bearer {}", created.key.expose_secret())).expect("header");
    let mut malformed_key = created.key.expose_secret().to_owned();
    malformed_key.replace_range(100.., "zz");
    let malformed = HeaderValue::from_str(&format!("Bearer {malformed_key}")).expect("header");

    let bare = Router::new().route("/", get(handler));
    let cached = Router::new()
        .route("/", get(handler))
        .layer(RequireApiKey::new(CachedVerifier::new(store.clone())));
    let uncached = Router::new()
        .route("/", get(handler))
        .layer(RequireApiKey::new(store.clone()));

    // Every variant must do what it claims before it is timed.
    let status = |router: &Router, header: &HeaderValue| {
        rt.block_on(router.clone().oneshot(request(header)))
            .map(|r| r.status())
            .expect("infallible")
    };
    assert_eq!(status(&bare, &bearer), StatusCode::OK);
    assert_eq!(status(&cached, &bearer), StatusCode::OK);
    assert_eq!(status(&uncached, &bearer), StatusCode::OK);
    assert_eq!(status(&cached, &malformed), StatusCode::UNAUTHORIZED);

    let mut group = c.benchmark_group("hot_path");
    for (name, router, header) in [
        ("bare_router", &bare, &bearer),
        ("keygate_cache_hit", &cached, &bearer),
        ("keygate_memory_store_no_cache", &uncached, &bearer),
        ("keygate_malformed_rejected", &cached, &malformed),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let response = router.clone().oneshot(request(header)).await;
                black_box(response.map(|r| r.status()))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
