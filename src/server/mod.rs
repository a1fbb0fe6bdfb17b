//! A key server speaking the API-key protocol of Stack Auth (now Hexclave), behind feature
//! `server`: an axum [`Router`] serving the `user-api-keys` and `team-api-keys` endpoints over
//! any [`KeyStore`].
//!
//! Same paths, headers, statuses, bodies and known errors as Stack Auth (see
//! `docs/stack-auth-protocol.md` in the repository), so
//! [`StackAuthVerifier`](crate::stack_auth::StackAuthVerifier),
//! [`StackAuthClient`](crate::stack_auth::StackAuthClient) and Stack's own SDKs talk to it
//! unchanged. It is meant for development, tests and self-hosting a key service.
//!
//! | route | does |
//! | --- | --- |
//! | `POST /api/v1/{user,team}-api-keys` | create; 200 with the full key in `value`, the only time it is shown |
//! | `GET /api/v1/{user,team}-api-keys?user_id=…` / `?team_id=…` | list, newest first |
//! | `GET`, `PATCH /api/v1/{user,team}-api-keys/{id}` | read; update `description` or `{"revoked": true}` |
//! | `POST /api/v1/{user,team}-api-keys/check` | `{"api_key": …}` → 200 key object, or 404 / 400 / 401 known error |
//!
//! Headers, as the backend handles them ([`stack_protocol::headers`](crate::stack_protocol::headers)):
//! every request header is read under its `x-stack-*` and its `x-hexclave-*` name, the
//! `x-hexclave-*` value winning when both are sent; an empty value counts as absent. Every
//! response carries `cache-control: no-store, max-age=0` and one request id under both names;
//! every known error carries its code under both known-error names. A request with the
//! override-error-status header (either name, as Stack's SDK sends it) gets every 4xx answered
//! as 200, with the real status in the actual-status header under both names.
//!
//! Read and update find a key by its id alone, as Stack Auth does: the owner in the query is
//! validated (`team_id` is required on the team route) but not compared, and the answer names
//! the key's real owner.
//!
//! Differences from Stack Auth: only **server** access is served (access type `server` with the
//! project id and secret server key); client and admin access get 401
//! `INSUFFICIENT_ACCESS_TYPE`, since there are no user sessions here. Reading or updating a key
//! through the route of the other kind answers 404 `API_KEY_NOT_FOUND` (Stack Auth fails with a
//! 500). The secret server key is checked when the config is built: an empty or short one is
//! refused ([`KeyServerConfigError`]).
//!
//! ```
//! use axum::body::Body;
//! use http::{Request, StatusCode};
//! use keygate::server::{key_server, KeyServerConfig};
//! use keygate::stack_protocol::headers::{ACCESS_TYPE, PROJECT_ID, REQUEST_ID, SECRET_SERVER_KEY};
//! use keygate::MemoryKeyStore;
//! use tower::ServiceExt as _;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = KeyServerConfig::new("my-project", "ssk_my_secret_server_key")?;
//! let app: axum::Router = key_server(MemoryKeyStore::new(), config);
//!
//! // Hexclave's header names (or Stack Auth's: both are accepted).
//! let create = Request::post("/api/v1/user-api-keys")
//!     .header(ACCESS_TYPE.hexclave(), "server")
//!     .header(PROJECT_ID.hexclave(), "my-project")
//!     .header(SECRET_SERVER_KEY.hexclave(), "ssk_my_secret_server_key")
//!     .header(http::header::CONTENT_TYPE, "application/json")
//!     .body(Body::from(
//!         r#"{"user_id":"0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c","description":"CLI","expires_at_millis":null}"#,
//!     ))?;
//! let response = app.oneshot(create).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(
//!     response.headers().get(REQUEST_ID.stack()),
//!     response.headers().get(REQUEST_ID.hexclave()),
//! );
//!
//! // A secret that would let anyone in is refused before anything is served.
//! assert!(KeyServerConfig::new("my-project", "").is_err());
//! # Ok(())
//! # }
//! ```

mod access;
mod config;
mod errors;
mod handlers;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use http::header::CACHE_CONTROL;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{Map, Value};
use uuid::Uuid;

pub use config::{KeyServerConfig, KeyServerConfigError};

use crate::key::KeyKind;
use crate::stack_protocol::headers::{ACTUAL_STATUS, OVERRIDE_ERROR_STATUS, REQUEST_ID};
use crate::store::KeyStore;
use handlers::{check, create, list, read, update, Server, Shared};

/// The key API over `store`, at `/api/v1/…`.
pub fn key_server<S: KeyStore>(store: S, config: KeyServerConfig) -> Router {
    let state = Arc::new(Server { store, config });
    let mut router = Router::new();
    for kind in [KeyKind::User, KeyKind::Team] {
        let base = format!("/api/v1/{}-api-keys", kind.as_str());
        router = router
            .route(
                &base,
                post(move |s: Shared<S>, h: HeaderMap, b: Bytes| create(s, kind, h, b)).get(
                    move |s: Shared<S>, h: HeaderMap, q: Query<Map<String, Value>>| {
                        list(s, kind, h, q)
                    },
                ),
            )
            .route(
                &format!("{base}/check"),
                post(move |s: Shared<S>, h: HeaderMap, b: Bytes| check(s, kind, h, b)),
            )
            .route(
                &format!("{base}/{{api_key_id}}"),
                get(
                    move |s: Shared<S>,
                          h: HeaderMap,
                          p: Path<String>,
                          q: Query<Map<String, Value>>| {
                        read(s, kind, h, p, q)
                    },
                )
                .patch(
                    move |s: Shared<S>,
                          h: HeaderMap,
                          p: Path<String>,
                          q: Query<Map<String, Value>>,
                          b: Bytes| update(s, kind, h, p, q, b),
                ),
            );
    }
    router
        .with_state(state)
        .layer(axum::middleware::from_fn(every_response))
}

/// What the backend adds to every response: `cache-control`, a request id under both names,
/// and, when the request asked for it, a 4xx turned into 200 with the actual status under both
/// names.
async fn every_response(request: Request, next: Next) -> Response {
    let override_error_status = OVERRIDE_ERROR_STATUS.is_present(request.headers());
    let mut response = next.run(request).await;
    let status = response.status();
    let headers = response.headers_mut();
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-store, max-age=0"),
    );
    if let Ok(id) = HeaderValue::from_str(&Uuid::new_v4().to_string()) {
        REQUEST_ID.insert_both(headers, id);
    }
    if override_error_status && status.is_client_error() {
        ACTUAL_STATUS.insert_both(headers, HeaderValue::from(status.as_u16()));
        *response.status_mut() = StatusCode::OK;
    }
    response
}
