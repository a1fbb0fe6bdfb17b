//! A bench fixture, not an example: the two servers behind `benches/edge/run.sh`. Cargo.toml
//! declares it as an example (with this path) so that `cargo run --example edge_fixture` builds
//! it.
//!
//! ```text
//! APP_PORT=3301 cargo run --release --example edge_fixture     # the app
//! FLOOR_PORT=3302 cargo run --release --example edge_fixture   # the floor
//! ```
//!
//! - the app on `APP_PORT`: every request gets 200 and `ok`, the upstream of every nginx route;
//! - the floor on `FLOOR_PORT`: every request gets what `keygate serve` answers a valid key (200,
//!   empty body, `Cache-Control: no-store` and the four `X-Keygate-*` identity headers) without
//!   checking anything: the cheapest possible auth service, the benchmark's floor.
//!
//! Serves whichever of the two ports is set (run.sh starts one process each, so that the floor,
//! like keygate, is a process of its own), and prints `fixture: listening` once it listens.

use std::net::{Ipv4Addr, SocketAddr};

use axum::http::header::CACHE_CONTROL;
use axum::response::IntoResponse;
use axum::Router;

fn port(var: &str) -> Option<u16> {
    std::env::var(var).ok().and_then(|p| p.parse().ok())
}

async fn app() -> &'static str {
    "ok"
}

async fn floor() -> impl IntoResponse {
    [
        (CACHE_CONTROL.as_str(), "no-store"),
        ("x-keygate-key-id", "2d3c1b0a-9f8e-4d7c-8b6a-5f4e3d2c1b0a"),
        ("x-keygate-key-type", "user"),
        ("x-keygate-user-id", "0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c"),
        ("x-keygate-team-id", ""),
    ]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let (router, port) = match (port("APP_PORT"), port("FLOOR_PORT")) {
        (Some(port), None) => (Router::new().fallback(app), port),
        (None, Some(port)) => (Router::new().fallback(floor), port),
        _ => return Err("set exactly one of APP_PORT and FLOOR_PORT".into()),
    };
    let listener = tokio::net::TcpListener::bind(listen(port)).await?;
    println!("fixture: listening");
    axum::serve(listener, router).await?;
    Ok(())
}
