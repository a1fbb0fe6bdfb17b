//! Stack Auth's API-key protocol (Stack Auth, now Hexclave): the vocabulary shared by the remote
//! verifier and admin client (feature `stack-auth`) and the key server (feature `server`).
//!
//! - [`bodies`]: the JSON bodies of the `user-api-keys` / `team-api-keys` endpoints.
//! - [`errors`]: the known-error codes with their statuses, and the known-error body.
//! - [`headers`]: the request and response header names, each in its `x-stack-*` and
//!   `x-hexclave-*` form.
//!
//! The facts this module relies on are written down in `docs/stack-auth-protocol.md` in the
//! repository.
//!
//! ```
//! use keygate::stack_protocol::{headers, ApiKeyObject, KnownErrorCode};
//!
//! let body = r#"{"id":"3241a285-8329-4d69-8f3d-316e08cf140c","description":"CI token",
//!   "created_at_millis":1745000000000,"is_public":false,"value":{"last_four":"6e6f"},
//!   "type":"user","user_id":"0b1d5a52-7c5e-4f8e-9a43-1d2e3f4a5b6c"}"#;
//! let key: ApiKeyObject = serde_json::from_str(body)?;
//! assert!(key.owner().is_some());
//!
//! let code = KnownErrorCode::parse("API_KEY_REVOKED");
//! assert_eq!(code, Some(KnownErrorCode::ApiKeyRevoked));
//! assert_eq!(KnownErrorCode::ApiKeyRevoked.status(), http::StatusCode::UNAUTHORIZED);
//!
//! // Hexclave's header wins over Stack Auth's when a request carries both.
//! let mut map = http::HeaderMap::new();
//! map.insert("x-stack-project-id", "old".parse()?);
//! map.insert("x-hexclave-project-id", "new".parse()?);
//! assert_eq!(headers::PROJECT_ID.get(&map).map(|v| v.as_bytes()), Some(&b"new"[..]));
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

pub mod bodies;
pub mod errors;
pub mod headers;

pub use bodies::{
    from_millis, to_millis, ApiKeyList, ApiKeyObject, CheckRequest, CreateRequest, KeyValue,
    UpdateRequest,
};
pub use errors::{KnownError, KnownErrorCode};
