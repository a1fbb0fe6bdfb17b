//! An axum server whose keys are checked by Stack Auth (now Hexclave), feature `stack-auth`.
//!
//! ```text
//! STACK_PROJECT_ID=… STACK_SECRET_SERVER_KEY=… cargo run --example stack_auth --features stack-auth
//! ```
//!
//! Reads `STACK_API_URL` (default `https://api.stack-auth.com`), `STACK_PROJECT_ID`,
//! `STACK_SECRET_SERVER_KEY` (or their `HEXCLAVE_*` twins, which win when both are set) and
//! `PORT` (default 3000); listens on 127.0.0.1 and serves
//! `GET /health` (open), `GET /me` (user keys → `{"user_id", "key_id"}`) and `GET /team`
//! (team keys → `{"team_id", "key_id"}`), both behind a cached `StackAuthVerifier`. When Stack
//! Auth cannot answer, the guarded routes answer 503 with `Retry-After`.

use std::net::{Ipv4Addr, SocketAddr};

use axum::routing::get;
use axum::{Json, Router};
use keygate::stack_auth::StackAuthVerifier;
use keygate::{AuthenticatedTeam, AuthenticatedUser, CachedVerifier, RequireApiKey};
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

    let verifier = CachedVerifier::new(StackAuthVerifier::from_env()?);
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
    println!(
        "listening on http://{addr} (keys checked by {})",
        verifier.get_ref().config().base()
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
