//! The cost of an auth layer on the request path, in process: an axum `Router` driven with
//! `oneshot`, the same trivial handler in every variant, all in one criterion group so the
//! ratios come from one run.
//!
//! ```text
//! cargo bench --bench hot_path                    # criterion, one group
//! cargo bench --bench hot_path -- --interleaved   # the same variants in alternation (see below)
//! ```
//!
//! `--interleaved` runs every variant for a batch of requests in turn, round after round (the
//! order rotates each round), and reports each variant's overhead over the bare router *in the
//! same round*, as a median over rounds. On a shared machine whose speed drifts between
//! criterion's consecutive measurements, paired rounds keep the drift out of the ratios.
//! `ROUNDS` (default 60) and `BATCH` (requests per variant per round, default 5000) set its size;
//! `ONLY=<variant>` runs the bare router and that variant alone (to profile one of them).
//!
//! Variants:
//! - `bare_router`: no auth (the baseline);
//! - `floor_validate_header_hashmap`: tower-http `ValidateRequestHeaderLayer::custom` doing a
//!   synchronous `HashMap` lookup of the bearer token and inserting an extension (the cheapest
//!   layer that checks anything);
//! - `handrolled_async_moka`: tower-http `AsyncRequireAuthorizationLayer` with a moka lookup and an
//!   extension insert (what a user would write by hand);
//! - `jwt_hs256`: an HS256 JWT verified per request with `jsonwebtoken`;
//! - `keygate_cache_hit`: `RequireApiKey` over a warm `CachedVerifier<MemoryKeyStore>`;
//! - `keygate_memory_store_no_cache`: `RequireApiKey` straight over `MemoryKeyStore`;
//! - `keygate_malformed_rejected`: a key with a bad checksum, refused before any lookup.

// tower-http's `ValidateRequest` returns `Result<(), Response>`: the shape is theirs.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, Criterion};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use keygate::{CachedVerifier, RequireApiKey};
use tower::ServiceExt;
use tower_http::auth::{AsyncAuthorizeRequest, AsyncRequireAuthorizationLayer};
use tower_http::validate_request::ValidateRequestHeaderLayer;

mod common;
use common::{handler, request, Fixture};

fn unauthorized() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response
}

fn bearer_token(request: &Request<Body>) -> Option<&str> {
    request
        .headers()
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Who a hand-rolled layer says the caller is (inserted like keygate's principal, read by no one here).
#[derive(Clone)]
#[allow(dead_code)]
struct Caller(Arc<str>);

/// The hand-rolled layer: a moka lookup in a boxed future.
#[derive(Clone)]
struct MokaAuth(moka::future::Cache<String, Arc<str>>);

impl AsyncAuthorizeRequest<Body> for MokaAuth {
    type RequestBody = Body;
    type ResponseBody = Body;
    type Future = Pin<Box<dyn Future<Output = Result<Request<Body>, Response<Body>>> + Send>>;

    fn authorize(&mut self, mut request: Request<Body>) -> Self::Future {
        let cache = self.0.clone();
        Box::pin(async move {
            let token = bearer_token(&request).map(str::to_owned);
            match token {
                Some(token) => match cache.get(&token).await {
                    Some(user) => {
                        request.extensions_mut().insert(Caller(user));
                        Ok(request)
                    }
                    None => Err(unauthorized()),
                },
                None => Err(unauthorized()),
            }
        })
    }
}

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// The variants, each with the header it is sent and the status it must answer, and the runtime.
struct Variants {
    rt: tokio::runtime::Runtime,
    list: Vec<(&'static str, Router, HeaderValue, StatusCode)>,
}

fn variants() -> Variants {
    let fixture = Fixture::new();
    let key = fixture.key().to_owned();
    let Fixture {
        rt,
        store,
        bearer,
        malformed,
        ..
    } = fixture;

    let bare = Router::new().route("/", get(handler));

    let table: Arc<HashMap<String, Arc<str>>> =
        Arc::new(HashMap::from([(key.clone(), Arc::from("user-1"))]));
    let floor = Router::new()
        .route("/", get(handler))
        .layer(ValidateRequestHeaderLayer::custom(
            move |request: &mut Request<Body>| {
                let user = bearer_token(request).and_then(|t| table.get(t)).cloned();
                match user {
                    Some(user) => {
                        request.extensions_mut().insert(Caller(user));
                        Ok(())
                    }
                    None => Err(unauthorized()),
                }
            },
        ));

    let moka = moka::future::Cache::new(10_000);
    rt.block_on(moka.insert(key.clone(), Arc::from("user-1")));
    let handrolled = Router::new()
        .route("/", get(handler))
        .layer(AsyncRequireAuthorizationLayer::new(MokaAuth(moka)));

    let secret = b"bench-secret-bench-secret-bench-secret";
    let jwt = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &Claims {
            sub: "user-1".into(),
            exp: 4_000_000_000,
        },
        &EncodingKey::from_secret(secret),
    )
    .expect("jwt");
    let jwt_bearer = HeaderValue::from_str(&format!("Bearer {jwt}")).expect("header");
    let decoding = DecodingKey::from_secret(secret);
    let validation = Validation::new(Algorithm::HS256);
    let jwt_router =
        Router::new()
            .route("/", get(handler))
            .layer(ValidateRequestHeaderLayer::custom(
                move |request: &mut Request<Body>| {
                    let claims = bearer_token(request).and_then(|t| {
                        jsonwebtoken::decode::<Claims>(t, &decoding, &validation).ok()
                    });
                    match claims {
                        Some(data) => {
                            request
                                .extensions_mut()
                                .insert(Caller(Arc::from(data.claims.sub)));
                            Ok(())
                        }
                        None => Err(unauthorized()),
                    }
                },
            ));

    let cached = Router::new()
        .route("/", get(handler))
        .layer(RequireApiKey::new(CachedVerifier::new(store.clone())));
    let uncached = Router::new()
        .route("/", get(handler))
        .layer(RequireApiKey::new(store.clone()));

    // Finalised once, as `axum::serve` does, so no variant pays for per-request route setup.
    let list = vec![
        (
            "bare_router",
            bare.with_state(()),
            bearer.clone(),
            StatusCode::OK,
        ),
        (
            "floor_validate_header_hashmap",
            floor.with_state(()),
            bearer.clone(),
            StatusCode::OK,
        ),
        (
            "handrolled_async_moka",
            handrolled.with_state(()),
            bearer.clone(),
            StatusCode::OK,
        ),
        (
            "jwt_hs256",
            jwt_router.with_state(()),
            jwt_bearer,
            StatusCode::OK,
        ),
        (
            "keygate_cache_hit",
            cached.clone().with_state(()),
            bearer.clone(),
            StatusCode::OK,
        ),
        (
            "keygate_memory_store_no_cache",
            uncached.with_state(()),
            bearer,
            StatusCode::OK,
        ),
        (
            "keygate_malformed_rejected",
            cached.with_state(()),
            malformed,
            StatusCode::UNAUTHORIZED,
        ),
    ];

    // Every variant must do what it claims before it is timed (and warms the cache).
    for (name, router, header, expected) in &list {
        let status = rt
            .block_on(router.clone().oneshot(request(header)))
            .map(|r| r.status())
            .expect("infallible");
        assert_eq!(status, *expected, "{name}");
    }
    Variants { rt, list }
}

fn hot_path(c: &mut Criterion) {
    let Variants { rt, list } = variants();
    let mut group = c.benchmark_group("hot_path");
    for (name, router, header, _) in &list {
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| async {
                let response = router.clone().oneshot(request(header)).await;
                black_box(response.map(|r| r.status()))
            })
        });
    }
    group.finish();
}

/// The variants in alternation; prints a markdown table of per-round medians.
fn interleaved() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (rounds, batch) = (env("ROUNDS", 60), env("BATCH", 5000));
    let Variants { rt, mut list } = variants();
    // `ONLY=name` keeps the bare router and that variant (for a profiler).
    if let Ok(only) = std::env::var("ONLY") {
        list.retain(|(name, ..)| *name == "bare_router" || *name == only);
    }
    let n = list.len();
    // ns per request, by variant, by round.
    let mut times = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        // Round r runs variant r mod n first: the order rotates.
        for i in 0..n {
            let v = (round + i) % n;
            let (_, router, header, _) = &list[v];
            let started = std::time::Instant::now();
            rt.block_on(async {
                for _ in 0..batch {
                    let response = router.clone().oneshot(request(header)).await;
                    black_box(response.map(|r| r.status()).ok());
                }
            });
            times[v].push(started.elapsed().as_nanos() as f64 / batch as f64);
        }
    }
    let median = |mut xs: Vec<f64>| {
        xs.sort_by(f64::total_cmp);
        let mid = xs.len() / 2;
        if xs.len() % 2 == 0 {
            (xs[mid - 1] + xs[mid]) / 2.0
        } else {
            xs[mid]
        }
    };
    let overhead = |v: usize| median((0..rounds).map(|r| times[v][r] - times[0][r]).collect());
    let floor_at = list
        .iter()
        .position(|(name, ..)| *name == "floor_validate_header_hashmap");
    let floor = floor_at.map_or(f64::NAN, overhead);
    println!("{rounds} rounds x {batch} requests per variant, order rotating; medians\n");
    println!("| variant | time / request | overhead over bare (paired) | vs floor's overhead |");
    println!("| --- | ---: | ---: | ---: |");
    for (v, (name, ..)) in list.iter().enumerate() {
        let time = median(times[v].clone());
        if v == 0 {
            println!("| {name} | {time:.0} ns | — | — |");
        } else {
            let over = overhead(v);
            println!(
                "| {name} | {time:.0} ns | {over:.0} ns | {:.2}× |",
                over / floor
            );
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--interleaved") {
        interleaved();
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

criterion_group!(benches, hot_path);
