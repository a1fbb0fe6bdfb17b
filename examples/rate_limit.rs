//! Rate limits: per-key quotas with tower_governor, and a per-address limit on refused keys.
//!
//! ```text
//! cargo run --example rate_limit --features governor     # PORT=3000 by default
//! ```
//!
//! `GET /me` with the printed key: 5 requests, then one more every 2 seconds, per key (the
//! `x-ratelimit-*` headers say how many are left). Three wrong keys from one address within a
//! minute and that address gets 429 for everything, valid key or not, until a refusal is allowed
//! again (one every 20 seconds).

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use keygate::rate_limit::{error_response, PrincipalKey, Quota, RefusalLimitLayer};
use keygate::{
    AuthenticatedUser, CachedVerifier, KeyStore, MemoryKeyStore, NewKey, Owner, RequireApiKey,
};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::GovernorLayer;

async fn me(user: AuthenticatedUser) -> Json<Value> {
    Json(json!({ "user_id": user.user_id, "key_id": user.key_id }))
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

    let store = MemoryKeyStore::new();
    let key = store
        .create(Owner::user("user-1"), NewKey::new("rate limit example"))
        .await?;

    // Per key: 5 requests, then one every 2 s. Inside `RequireApiKey`, so it sees the key id.
    let per_key = GovernorConfigBuilder::default()
        .period(Duration::from_secs(2))
        .burst_size(5)
        .key_extractor(PrincipalKey::per_key())
        .use_headers()
        .finish()
        .ok_or("zero period or burst")?;
    // Per address: 3 refused keys, then one every 20 s. Outside `RequireApiKey`, so it sees
    // the refusals and can answer before any verification.
    let refusals = Quota::with_period(Duration::from_secs(20))
        .ok_or("zero period")?
        .allow_burst(NonZeroU32::MIN.saturating_add(2));
    let refusals = RefusalLimitLayer::new(refusals);

    // Forget addresses whose buckets are full again, now and then.
    let janitor = refusals.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            janitor.retain_recent();
        }
    });

    let app = Router::new()
        .route("/me", get(me))
        .layer(GovernorLayer::new(per_key).error_handler(error_response))
        .layer(RequireApiKey::new(CachedVerifier::new(store)).users_only())
        .layer(refusals);

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(addr).await?;
    println!("user key: {}", key.key.expose_secret());
    println!(
        "curl -i -H 'Authorization: Bearer {}' http://{addr}/me",
        key.key.expose_secret()
    );
    // The refusal limit reads the peer address from `ConnectInfo`.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
