//! Handlers and router builders: the routes every guard is tested on.

use axum::http::{HeaderMap, HeaderName, Uri};
use axum::routing::get;
use axum::{Json, Router};
use keygate::store::CreatedKey;
use keygate::{
    AuthenticatedTeam, AuthenticatedUser, CachedVerifier, KeyExtractor, MemoryKeyStore, Principal,
    RequireApiKey,
};
use serde_json::{json, Value};

use super::http::X_KEY;
use super::keys::millis;
use super::verifier::CountingVerifier;

/// `/me`: the authenticated user.
pub async fn me(user: AuthenticatedUser) -> Json<Value> {
    Json(json!({
        "user_id": &*user.user_id,
        "key_id": user.key_id.to_string(),
        "is_public": user.is_public,
        "expires_at_ms": millis(user.expires_at),
    }))
}

/// `/team`: the authenticated team.
pub async fn team(team: AuthenticatedTeam) -> Json<Value> {
    Json(json!({
        "team_id": &*team.team_id,
        "key_id": team.key_id.to_string(),
        "is_public": team.is_public,
    }))
}

/// `/principal`: either.
pub async fn principal(principal: Principal) -> Json<Value> {
    Json(json!({
        "kind": principal.kind().as_str(),
        "owner_id": principal.owner_id(),
        "key_id": principal.key_id().to_string(),
    }))
}

/// `/maybe`: an optional user.
pub async fn maybe(user: Option<AuthenticatedUser>) -> Json<Value> {
    Json(json!({ "user_id": user.map(|u| u.user_id.to_string()) }))
}

/// `/echo`: what the handler sees of the credentials.
pub async fn echo(headers: HeaderMap, uri: Uri) -> Json<Value> {
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    Json(json!({
        "authorization": text("authorization"),
        "x-stack-api-key": text(X_KEY),
        "uri": uri.to_string(),
    }))
}

/// A plain-text handler: the key id of the principal, or `anonymous`.
pub async fn whoami(principal: Option<Principal>) -> String {
    principal.map_or_else(|| "anonymous".to_owned(), |p| p.key_id().to_string())
}

/// What `/principal` answers for `created`.
pub fn principal_json(created: &CreatedKey) -> Value {
    json!({
        "kind": created.record.owner.kind().as_str(),
        "owner_id": created.record.owner.id(),
        "key_id": created.record.id.to_string(),
    })
}

/// Every test route, unguarded: `/me`, `/team`, `/principal`, `/maybe`, `/echo`.
pub fn routes() -> Router {
    Router::new()
        .route("/me", get(me))
        .route("/team", get(team))
        .route("/principal", get(principal))
        .route("/maybe", get(maybe))
        .route("/echo", get(echo))
}

/// `Authorization: Bearer`, [`X_KEY`] and `?api_key=`.
pub fn every_place() -> KeyExtractor {
    KeyExtractor::new()
        .header(HeaderName::from_static(X_KEY))
        .query_param("api_key")
}

/// The layer with default settings over the three ways a verifier can answer: at once (the
/// memory store), asynchronously and then from the cache (`CachedVerifier`), and always
/// asynchronously (the counting verifier, which has no `verify_now`).
pub fn verifier_variants(store: &MemoryKeyStore) -> Vec<(&'static str, Router)> {
    vec![
        (
            "memory store",
            routes().layer(RequireApiKey::new(store.clone())),
        ),
        (
            "cached store",
            routes().layer(RequireApiKey::new(CachedVerifier::new(store.clone()))),
        ),
        (
            "async verifier",
            routes().layer(RequireApiKey::new(CountingVerifier::over(store.clone()))),
        ),
    ]
}
