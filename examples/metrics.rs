//! Metrics: a guarded route, and `GET /metrics` in Prometheus's text format
//! (`metrics-exporter-prometheus`; keygate itself only records, through the `metrics` facade).
//!
//! ```text
//! cargo run --example metrics --features metrics     # PORT=3000 by default
//! curl -H "Authorization: Bearer <key>" localhost:3000/me
//! curl localhost:3000/metrics
//! ```
//!
//! It mints one user key at start-up and prints it (the only time it is shown). Spans:
//! `RUST_LOG=keygate=debug` shows each request's `keygate.verify` span around keygate's events.

use std::net::{Ipv4Addr, SocketAddr};

use axum::routing::get;
use axum::{Json, Router};
use keygate::{
    AuthenticatedUser, CachedVerifier, KeyStore, MemoryKeyStore, NewKey, Owner, RequireApiKey,
};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::{json, Value};
use tokio::net::TcpListener;

async fn me(user: AuthenticatedUser) -> Json<Value> {
    Json(json!({ "user_id": user.user_id, "key_id": user.key_id }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT is not a port: {port:?}"))?,
        Err(_) => 3000,
    };

    // The process-wide recorder; `handle.render()` is the exposition text.
    let handle = PrometheusBuilder::new().install_recorder()?;

    let store = MemoryKeyStore::new();
    let verifier = CachedVerifier::new(store.clone());
    let user_key = store
        .create(
            Owner::user("8d9f6c1e-2b1a-4c3d-9e8f-0a1b2c3d4e5f"),
            NewKey::new("metrics example"),
        )
        .await?;

    let app = Router::new()
        .route(
            "/me",
            get(me).route_layer(RequireApiKey::new(verifier).users_only()),
        )
        // Unguarded here; behind your own network policy in production.
        .route("/metrics", get(move || std::future::ready(handle.render())));

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(addr).await?;
    println!("user key: {}", user_key.key.expose_secret());
    println!(
        "curl -H 'Authorization: Bearer {}' http://{addr}/me",
        user_key.key.expose_secret()
    );
    println!("curl http://{addr}/metrics");
    axum::serve(listener, app).await?;
    Ok(())
}
