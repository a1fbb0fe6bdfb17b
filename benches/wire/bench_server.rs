//! A bench fixture, not an example: the server behind `benches/wire/run.sh`, one axum app
//! guarded three ways, for load tests over loopback. Cargo.toml declares it as an example (with
//! this path) so that `cargo run --example bench_server` builds it.
//!
//! ```text
//! VARIANT=bare|floor|keygate PORT=3100 cargo run --release --example bench_server
//! ```
//!
//! Prints `key: <key>` once it is listening, then serves `GET /` (a trivial handler).

// tower-http's `ValidateRequest` returns `Result<(), Response>`: the shape is theirs.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use keygate::{CachedVerifier, KeyStore, MemoryKeyStore, NewKey, Owner, RequireApiKey};
use tower_http::validate_request::ValidateRequestHeaderLayer;

#[derive(Clone)]
#[allow(dead_code)] // inserted like keygate's principal; read by no one here
struct Caller(Arc<str>);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let variant = std::env::var("VARIANT").unwrap_or_else(|_| "keygate".into());
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3100);
    let store = MemoryKeyStore::new();
    let created = store
        .create(Owner::user("user-1"), NewKey::new("load test"))
        .await?;
    let key = created.key.expose_secret().to_owned();
    let app = Router::new().route("/", get(|| async { "ok" }));
    let app = match variant.as_str() {
        "bare" => app,
        "floor" => {
            let table: Arc<HashMap<String, Arc<str>>> =
                Arc::new(HashMap::from([(key.clone(), Arc::from("user-1"))]));
            app.layer(ValidateRequestHeaderLayer::custom(
                move |request: &mut Request<Body>| {
                    let user = request
                        .headers()
                        .get(AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.strip_prefix("Bearer "))
                        .and_then(|t| table.get(t))
                        .cloned();
                    match user {
                        Some(user) => {
                            request.extensions_mut().insert(Caller(user));
                            Ok(())
                        }
                        None => {
                            let mut response = Response::new(Body::empty());
                            *response.status_mut() = StatusCode::UNAUTHORIZED;
                            Err(response)
                        }
                    }
                },
            ))
        }
        "keygate" => app.layer(RequireApiKey::new(CachedVerifier::new(store.clone()))),
        other => return Err(format!("unknown VARIANT {other:?}: bare, floor or keygate").into()),
    };
    let listener =
        tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    println!("key: {key}");
    axum::serve(listener, app).await?;
    Ok(())
}
