//! The main job: an axum server guarded by keygate, on the in-memory store.
//!
//! ```text
//! cargo run --example quickstart          # PORT=3000 by default
//! ```
//!
//! It mints one user key and one team key at start-up, prints them (this is the only time a key
//! is ever shown) with ready-to-paste curl lines, and serves:
//!
//! - `GET /health`: open.
//! - `GET /me`: user keys only, answers `{"user_id": …, "key_id": …}`.
//! - `GET /team`: team keys only, answers `{"team_id": …, "key_id": …}`.

use std::net::{Ipv4Addr, SocketAddr};

use axum::routing::get;
use axum::{Json, Router};
use keygate::{
    AuthenticatedTeam, AuthenticatedUser, CachedVerifier, KeyStore, MemoryKeyStore, NewKey, Owner,
    RequireApiKey,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;

async fn health() -> &'static str {
    "ok"
}

async fn me(user: AuthenticatedUser) -> Json<Value> {
    Json(json!({ "user_id": user.user_id, "key_id": user.key_id }))
}

async fn team(team: AuthenticatedTeam) -> Json<Value> {
    Json(json!({ "team_id": team.team_id, "key_id": team.key_id }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,keygate=debug".into()),
        )
        .init();

    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT is not a port: {port:?}"))?,
        Err(_) => 3000,
    };

    // The store keeps SHA-256 digests only; the cache shares one set of verdicts between routes
    // and forgets a key the moment the store revokes it.
    let store = MemoryKeyStore::new();
    let verifier = CachedVerifier::new(store.clone());

    let user_key = store
        .create(
            Owner::user("8d9f6c1e-2b1a-4c3d-9e8f-0a1b2c3d4e5f"),
            NewKey::new("quickstart user key"),
        )
        .await?;
    let team_key = store
        .create(
            Owner::team("5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b"),
            NewKey::new("quickstart team key"),
        )
        .await?;

    let app = Router::new()
        .route(
            "/me",
            get(me).route_layer(RequireApiKey::new(verifier.clone()).users_only()),
        )
        .route(
            "/team",
            get(team).route_layer(RequireApiKey::new(verifier.clone()).teams_only()),
        )
        .route("/health", get(health));

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(addr).await?;
    let user_key = user_key.key.expose_secret().to_owned();
    let team_key = team_key.key.expose_secret().to_owned();
    println!("keygate quickstart listening on http://{addr}");
    println!("These keys are shown once; the server keeps only their SHA-256 digests.");
    println!("user key: {user_key}");
    println!("team key: {team_key}");
    println!();
    println!("curl -s http://{addr}/health");
    println!("curl -s -H 'Authorization: Bearer {user_key}' http://{addr}/me");
    println!("curl -s -H 'Authorization: Bearer {team_key}' http://{addr}/team");
    println!("curl -si -H 'Authorization: Bearer {team_key}' http://{addr}/me   # 403: team key on a user route");
    println!("curl -si http://{addr}/me                                          # 401: no key");

    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
