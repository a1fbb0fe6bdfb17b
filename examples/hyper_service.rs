//! The same guard on a plain hyper + tower service: no axum anywhere in the request path.
//!
//! ```text
//! cargo run --example hyper_service       # PORT=3001 by default
//! ```
//!
//! The inner service reads the [`Principal`] that `RequireApiKey` put in the request extensions.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use keygate::{CachedVerifier, KeyStore, MemoryKeyStore, NewKey, Owner, Principal, RequireApiKey};
use tokio::net::TcpListener;
use tower::{Layer, ServiceBuilder};

/// The application: it never sees a request without a valid key.
async fn hello(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match request.extensions().get::<Principal>() {
        Some(principal) => format!(
            "hello {} {} (key {})\n",
            principal.kind(),
            principal.owner_id(),
            principal.key_id()
        ),
        // Unreachable behind the guard in required mode; answer safely anyway.
        None => "hello, stranger\n".to_owned(),
    };
    Ok(Response::new(Full::new(Bytes::from(body))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT is not a port: {port:?}"))?,
        Err(_) => 3001,
    };

    let store = MemoryKeyStore::new();
    let created = store
        .create(Owner::user("user-1"), NewKey::new("hyper example"))
        .await?;
    let guard = RequireApiKey::new(CachedVerifier::new(store));
    let service = ServiceBuilder::new().service(guard.layer(tower::service_fn(hello)));

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(addr).await?;
    let key = created.key.expose_secret();
    println!("hyper example listening on http://{addr}");
    println!("user key: {key}");
    println!("curl -s -H 'Authorization: Bearer {key}' http://{addr}/");

    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            if let Err(error) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {error}");
            }
        });
    }
}
