//! What the in-process benches share: a runtime, a store with one user key, and requests.

#![allow(dead_code)] // each bench uses part of it

use axum::body::Body;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use keygate::store::CreatedKey;
use keygate::{KeyStore, MemoryKeyStore, NewKey, Owner};
use tokio::runtime::Runtime;

/// A current-thread runtime, a store, one user key in it, and `Bearer` headers for that key and
/// for a malformed copy of it (bad checksum).
pub struct Fixture {
    pub rt: Runtime,
    pub store: MemoryKeyStore,
    pub created: CreatedKey,
    pub bearer: HeaderValue,
    pub malformed: HeaderValue,
}

impl Fixture {
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let store = MemoryKeyStore::new();
        let created = rt
            .block_on(store.create(Owner::user("user-1"), NewKey::new("bench")))
            .expect("create");
        let key = created.key.expose_secret();
        let bearer = HeaderValue::from_str(&format!("Bearer {key}")).expect("header");
        let mut malformed_key = key.to_owned();
        malformed_key.replace_range(100.., "zz");
        let malformed = HeaderValue::from_str(&format!("Bearer {malformed_key}")).expect("header");
        Self {
            rt,
            store,
            created,
            bearer,
            malformed,
        }
    }

    /// The full key.
    pub fn key(&self) -> &str {
        self.created.key.expose_secret()
    }
}

/// `GET /` with this `Authorization` header.
pub fn request(authorization: &HeaderValue) -> Request<Body> {
    let mut request = Request::new(Body::empty());
    *request.uri_mut() = http::Uri::from_static("/");
    request
        .headers_mut()
        .insert(AUTHORIZATION, authorization.clone());
    request
}

pub async fn handler() -> &'static str {
    "ok"
}
pub mod variants;
