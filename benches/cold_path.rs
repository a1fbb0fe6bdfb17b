//! The cold path: every request checked remotely, against keygate's key server on loopback.
//!
//! ```text
//! cargo bench --bench cold_path --features stack-auth,server
//! ```
//!
//! - `direct_reqwest_check`: a bare `reqwest` POST to `/api/v1/user-api-keys/check` with the
//!   server headers, reading the body: the floor for a remote check;
//! - `keygate_stack_auth_uncached`: the same check made by `RequireApiKey` over
//!   `StackAuthVerifier` with no cache, through an axum `Router` with `oneshot`.
//!
//! The difference is what keygate adds around the network call (parse, digest, classification,
//! breaker, the layer).

use std::hint::black_box;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, StatusCode};
use keygate::server::{key_server, KeyServerConfig};
use keygate::stack_auth::{StackAuthConfig, StackAuthVerifier};
use keygate::{KeyStore, MemoryKeyStore, NewKey, Owner, RequireApiKey};
use tower::ServiceExt;

const PROJECT: &str = "bench-project";
const SECRET: &str = "ssk_bench_secret_server_key";

fn cold_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = MemoryKeyStore::new();
    let created = rt
        .block_on(store.create(
            Owner::user("0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c"),
            NewKey::new("bench"),
        ))
        .expect("create");
    let key = created.key.expose_secret().to_owned();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = key_server(
        store,
        KeyServerConfig::new(PROJECT, SECRET).expect("config"),
    );
    rt.spawn(async move { axum::serve(listener, server).await });

    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("http://{addr}/api/v1/user-api-keys/check");
    let body = serde_json::to_vec(&serde_json::json!({ "api_key": key })).expect("json");

    let verifier = StackAuthVerifier::builder(
        StackAuthConfig::new(PROJECT, SECRET).base_url(format!("http://{addr}")),
    )
    .client(client.clone())
    .build()
    .expect("verifier");
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RequireApiKey::new(verifier));
    let bearer = HeaderValue::from_str(&format!("Bearer {key}")).expect("header");

    let direct = || {
        let request = client
            .post(&url)
            .header("x-stack-access-type", "server")
            .header("x-stack-project-id", PROJECT)
            .header("x-stack-secret-server-key", SECRET)
            .header("content-type", "application/json")
            .body(body.clone());
        async move {
            let response = request.send().await.expect("check");
            let status = response.status();
            let bytes = response.bytes().await.expect("body");
            (status, bytes.len())
        }
    };
    let guarded = || {
        let mut request = Request::new(Body::empty());
        request.headers_mut().insert(AUTHORIZATION, bearer.clone());
        let app = app.clone();
        async move { app.oneshot(request).await.map(|r| r.status()) }
    };
    assert_eq!(rt.block_on(direct()).0, StatusCode::OK);
    assert_eq!(rt.block_on(guarded()).ok(), Some(StatusCode::OK));

    let mut group = c.benchmark_group("cold_path");
    group.bench_function("direct_reqwest_check", |b| {
        b.to_async(&rt).iter(|| async { black_box(direct().await) })
    });
    group.bench_function("keygate_stack_auth_uncached", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(guarded().await.ok()) })
    });
    group.finish();
}

criterion_group!(benches, cold_path);
criterion_main!(benches);
