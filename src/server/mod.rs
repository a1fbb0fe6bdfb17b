//! A Stack Auth-compatible key server (feature `server`): an axum [`Router`] serving the
//! `user-api-keys` and `team-api-keys` endpoints over any [`KeyStore`].
//!
//! Same paths, headers, statuses, bodies and known errors as Stack Auth (see the crate's
//! `stack-auth-api` reference), so [`StackAuthVerifier`](crate::stack_auth::StackAuthVerifier),
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
//! Differences from Stack Auth: only **server** access is served (`x-stack-access-type: server`
//! with the project id and secret server key); client and admin access get 401
//! `INSUFFICIENT_ACCESS_TYPE`, since there are no user sessions here.
//!
//! ```
//! use keygate::server::{key_server, KeyServerConfig};
//! use keygate::MemoryKeyStore;
//!
//! let app: axum::Router = key_server(
//!     MemoryKeyStore::new(),
//!     KeyServerConfig::new("my-project", "ssk_my_secret_server_key"),
//! );
//! # let _ = app;
//! ```

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::key::{ApiKey, KeyKind};
use crate::stack_protocol::{from_millis, ApiKeyList, ApiKeyObject, KeyValue, KnownError};
use crate::store::{KeyRecord, KeyStore, NewKey, StoreError};
use crate::verify::{InvalidReason, Owner};

/// Who may call the server and which key kinds it serves.
#[derive(Clone)]
pub struct KeyServerConfig {
    project_id: String,
    secret_server_key: SecretString,
    user_keys: bool,
    team_keys: bool,
}

impl KeyServerConfig {
    /// A server for `project_id`, accepting `secret_server_key`, with both key kinds enabled.
    pub fn new(project_id: impl Into<String>, secret_server_key: impl Into<String>) -> Self {
        Self {
            project_id: project_id.into(),
            secret_server_key: SecretString::from(secret_server_key.into()),
            user_keys: true,
            team_keys: true,
        }
    }

    /// Enables or disables user keys. Disabled, every user-key route answers Stack Auth's
    /// plain-text 400 "User API keys are not enabled for this project.".
    pub fn user_keys(mut self, enabled: bool) -> Self {
        self.user_keys = enabled;
        self
    }

    /// Enables or disables team keys.
    pub fn team_keys(mut self, enabled: bool) -> Self {
        self.team_keys = enabled;
        self
    }
}

impl std::fmt::Debug for KeyServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyServerConfig")
            .field("project_id", &self.project_id)
            .field("secret_server_key", &"[redacted]")
            .field("user_keys", &self.user_keys)
            .field("team_keys", &self.team_keys)
            .finish()
    }
}

/// Headers that carry a project key or a user token.
const PROJECT_KEY_HEADERS: [&str; 4] = [
    "x-stack-secret-server-key",
    "x-stack-publishable-client-key",
    "x-stack-super-secret-admin-key",
    "x-stack-access-token",
];

struct Server<S> {
    store: S,
    config: KeyServerConfig,
}

type Shared<S> = State<Arc<Server<S>>>;

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
        .layer(axum::middleware::map_response(every_response))
}

/// Every Stack Auth response carries these.
async fn every_response(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-store, max-age=0"),
    );
    if let Ok(id) = HeaderValue::from_str(&Uuid::new_v4().to_string()) {
        headers.insert(HeaderName::from_static("x-stack-request-id"), id);
    }
    response
}

/// A refusal in Stack Auth's style.
#[derive(Debug)]
enum ApiError {
    Known(StatusCode, KnownError),
    Plain(StatusCode, String),
}

impl ApiError {
    fn known(status: StatusCode, code: &str, error: impl Into<String>) -> Self {
        ApiError::Known(status, KnownError::new(code, error))
    }

    fn schema(message: impl Into<String>) -> Self {
        let message = message.into();
        ApiError::Known(
            StatusCode::BAD_REQUEST,
            KnownError::new(
                "SCHEMA_ERROR",
                format!("Request validation failed: {message}"),
            )
            .with_details(json!({ "message": message })),
        )
    }

    fn not_found() -> Self {
        Self::known(
            StatusCode::NOT_FOUND,
            "API_KEY_NOT_FOUND",
            "API key not found.",
        )
    }

    fn invalid(reason: InvalidReason, expected: KeyKind) -> Self {
        match reason {
            InvalidReason::NotFound => Self::not_found(),
            InvalidReason::WrongType => {
                let actual = match expected {
                    KeyKind::User => KeyKind::Team,
                    KeyKind::Team => KeyKind::User,
                };
                ApiError::Known(
                    StatusCode::BAD_REQUEST,
                    KnownError::new(
                        "WRONG_API_KEY_TYPE",
                        format!(
                            "This endpoint is for {expected} API keys, but a {actual} API key was provided."
                        ),
                    )
                    .with_details(json!({ "expected_type": expected, "actual_type": actual })),
                )
            }
            InvalidReason::Revoked => Self::known(
                StatusCode::UNAUTHORIZED,
                "API_KEY_REVOKED",
                "API key has been revoked.",
            ),
            InvalidReason::Expired => Self::known(
                StatusCode::UNAUTHORIZED,
                "API_KEY_EXPIRED",
                "API key has expired.",
            ),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ApiError::not_found(),
            other => {
                tracing::error!(error = %other, "key store failed");
                ApiError::Plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The key store failed.".into(),
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Known(status, known) => {
                let code = HeaderValue::from_str(&known.code).ok();
                let body = serde_json::to_vec(&known).unwrap_or_default();
                let mut response = (status, body).into_response();
                let headers = response.headers_mut();
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/json; charset=utf-8"),
                );
                if let Some(code) = code {
                    headers.insert(HeaderName::from_static("x-stack-known-error"), code);
                }
                response
            }
            ApiError::Plain(status, text) => {
                let mut response = (status, text).into_response();
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                response
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

impl<S: KeyStore> Server<S> {
    /// Server access for `project_id`, then the feature switch, in Stack Auth's order.
    fn admit(&self, headers: &HeaderMap, kind: KeyKind) -> ApiResult<()> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let access = match header("x-stack-access-type") {
            // A project key without an access type is its own error in Stack Auth.
            None if PROJECT_KEY_HEADERS.iter().any(|h| headers.contains_key(*h)) => {
                return Err(ApiError::known(
                    StatusCode::BAD_REQUEST,
                    "PROJECT_KEY_WITHOUT_ACCESS_TYPE",
                    "Either an access token or a project key was given, but the x-stack-access-type header is missing. Set it to 'client', 'server', or 'admin' as appropriate.",
                ))
            }
            None => {
                return Err(ApiError::known(
                    StatusCode::BAD_REQUEST,
                    "ACCESS_TYPE_REQUIRED",
                    "You must specify an access level for this Stack project. Set the x-stack-access-type header to 'client', 'server', or 'admin'.",
                ))
            }
            Some(access @ ("client" | "server" | "admin")) => access,
            Some(_) => {
                return Err(ApiError::known(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ACCESS_TYPE",
                    "Invalid access type. Must be one of 'client', 'server', or 'admin'.",
                ))
            }
        };
        let Some(project_id) = header("x-stack-project-id") else {
            return Err(ApiError::known(
                StatusCode::BAD_REQUEST,
                "ACCESS_TYPE_WITHOUT_PROJECT_ID",
                "The x-stack-access-type header was given, but the x-stack-project-id header was not.",
            ));
        };
        if project_id != self.config.project_id {
            return Err(ApiError::Known(
                StatusCode::BAD_REQUEST,
                KnownError::new(
                    "CURRENT_PROJECT_NOT_FOUND",
                    "The current project does not exist.",
                )
                .with_details(json!({ "project_id": project_id })),
            ));
        }
        if access != "server" {
            return Err(ApiError::Known(
                StatusCode::UNAUTHORIZED,
                KnownError::new(
                    "INSUFFICIENT_ACCESS_TYPE",
                    format!("The x-stack-access-type header must be 'server', but was '{access}'."),
                )
                .with_details(json!({
                    "actual_access_type": access,
                    "allowed_access_types": ["server"],
                })),
            ));
        }
        let Some(secret) = header("x-stack-secret-server-key") else {
            return Err(ApiError::known(
                StatusCode::UNAUTHORIZED,
                "SERVER_AUTHENTICATION_REQUIRED",
                "The secret server key must be provided.",
            ));
        };
        let expected = self.config.secret_server_key.expose_secret().as_bytes();
        if !bool::from(secret.as_bytes().ct_eq(expected)) {
            return Err(ApiError::Known(
                StatusCode::UNAUTHORIZED,
                KnownError::new(
                    "INVALID_SECRET_SERVER_KEY",
                    "The secret server key is not valid for this project.",
                )
                .with_details(json!({ "project_id": project_id })),
            ));
        }
        let enabled = match kind {
            KeyKind::User => self.config.user_keys,
            KeyKind::Team => self.config.team_keys,
        };
        if !enabled {
            let name = match kind {
                KeyKind::User => "User",
                KeyKind::Team => "Team",
            };
            return Err(ApiError::Plain(
                StatusCode::BAD_REQUEST,
                format!("{name} API keys are not enabled for this project."),
            ));
        }
        Ok(())
    }

    /// The key `id` if it exists, is of `kind` and (when named) belongs to the owner in `query`.
    async fn owned(
        &self,
        kind: KeyKind,
        id: &str,
        query: &Map<String, Value>,
    ) -> ApiResult<KeyRecord> {
        let id: Uuid = id
            .parse()
            .map_err(|_| ApiError::schema("api_key_id must be a valid UUID"))?;
        let owner = owner_from_query(kind, query, kind == KeyKind::Team)?;
        let record = self.store.get(id).await?.ok_or_else(ApiError::not_found)?;
        if record.kind() != kind || owner.is_some_and(|o| o != record.owner) {
            return Err(ApiError::not_found());
        }
        Ok(record)
    }
}

/// The field naming a key's owner: `user_id` or `team_id`.
fn owner_field(kind: KeyKind) -> &'static str {
    match kind {
        KeyKind::User => "user_id",
        KeyKind::Team => "team_id",
    }
}

/// `user_id` / `team_id` from the query; required for lists and for every team route.
fn owner_from_query(
    kind: KeyKind,
    query: &Map<String, Value>,
    required: bool,
) -> ApiResult<Option<Owner>> {
    let field = owner_field(kind);
    match query.get(field).and_then(Value::as_str) {
        Some(id) => Ok(Some(owner_id(kind, field, id)?)),
        None if required => Err(ApiError::schema(format!(
            "{field} is required for {kind} API keys"
        ))),
        None => Ok(None),
    }
}

fn owner_id(kind: KeyKind, field: &str, id: &str) -> ApiResult<Owner> {
    if id == "me" {
        return Err(ApiError::schema(format!(
            "{field} \"me\" needs a user session; this server serves server access only"
        )));
    }
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::schema(format!("{field} must be a valid UUID")))?;
    let id = id.to_string();
    Ok(match kind {
        KeyKind::User => Owner::user(id),
        KeyKind::Team => Owner::team(id),
    })
}

/// A JSON object body, with Stack Auth's errors for a missing or unreadable one.
fn json_body(headers: &HeaderMap, body: &[u8]) -> ApiResult<Map<String, Value>> {
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    match content_type {
        None => {
            return Err(ApiError::schema(
                "body is required (send content-type: application/json)",
            ))
        }
        Some(ct)
            if !ct
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json") =>
        {
            return Err(ApiError::known(
                StatusCode::BAD_REQUEST,
                "BODY_PARSING_ERROR",
                format!("Unsupported content type {ct:?}; use application/json."),
            ))
        }
        Some(_) => {}
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::schema("body must be a JSON object")),
        Err(e) => Err(ApiError::known(
            StatusCode::BAD_REQUEST,
            "BODY_PARSING_ERROR",
            format!("The body is not valid JSON: {e}"),
        )),
    }
}

fn only_fields(body: &Map<String, Value>, allowed: &[&str]) -> ApiResult<()> {
    match body.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::schema(format!(
            "body contains unknown properties: {unknown}"
        ))),
        None => Ok(()),
    }
}

async fn create<S: KeyStore>(
    State(server): Shared<S>,
    kind: KeyKind,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<ApiKeyObject>> {
    server.admit(&headers, kind)?;
    let body = json_body(&headers, &body)?;
    let owner_field = owner_field(kind);
    only_fields(
        &body,
        &["description", "expires_at_millis", "is_public", owner_field],
    )?;
    let description = match body.get("description") {
        Some(Value::String(d)) => d.clone(),
        _ => return Err(ApiError::schema("description must be a string")),
    };
    let expires_at = match body.get("expires_at_millis") {
        None => {
            return Err(ApiError::schema(
                "expires_at_millis must be defined (null for never)",
            ))
        }
        Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(0) => None,
            Some(ms) if ms > 0 => Some(from_millis(ms)),
            _ => {
                return Err(ApiError::schema(
                    "expires_at_millis must be a positive number or null",
                ))
            }
        },
    };
    let is_public = match body.get("is_public") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::schema("is_public must be a boolean")),
    };
    let owner = match body.get(owner_field).and_then(Value::as_str) {
        Some(id) => owner_id(kind, owner_field, id)?,
        None => return Err(ApiError::schema(format!("{owner_field} is required"))),
    };
    let mut new = NewKey::new(description).public(is_public);
    new.expires_at = expires_at;
    let created = server.store.create(owner, new).await?;
    let mut object = ApiKeyObject::from_record(&created.record);
    object.value = KeyValue::Full(created.key.expose_secret().to_owned());
    Ok(Json(object))
}

async fn list<S: KeyStore>(
    State(server): Shared<S>,
    kind: KeyKind,
    headers: HeaderMap,
    Query(query): Query<Map<String, Value>>,
) -> ApiResult<Json<ApiKeyList>> {
    server.admit(&headers, kind)?;
    let owner = owner_from_query(kind, &query, true)?.ok_or_else(ApiError::not_found)?;
    let records = server.store.list(&owner).await?;
    Ok(Json(ApiKeyList::new(
        records.iter().map(ApiKeyObject::from_record).collect(),
    )))
}

async fn read<S: KeyStore>(
    State(server): Shared<S>,
    kind: KeyKind,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<Map<String, Value>>,
) -> ApiResult<Json<ApiKeyObject>> {
    server.admit(&headers, kind)?;
    let record = server.owned(kind, &id, &query).await?;
    Ok(Json(ApiKeyObject::from_record(&record)))
}

async fn update<S: KeyStore>(
    State(server): Shared<S>,
    kind: KeyKind,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<Map<String, Value>>,
    body: Bytes,
) -> ApiResult<Json<ApiKeyObject>> {
    server.admit(&headers, kind)?;
    let body = json_body(&headers, &body)?;
    only_fields(&body, &["description", "revoked"])?;
    let description = match body.get("description") {
        None => None,
        Some(Value::String(d)) => Some(d.clone()),
        Some(_) => return Err(ApiError::schema("description must be a string")),
    };
    let revoke = match body.get("revoked") {
        None => false,
        Some(Value::Bool(true)) => true,
        Some(_) => {
            return Err(ApiError::schema(
                "revoked must be one of the following values: true",
            ))
        }
    };
    let mut record = server.owned(kind, &id, &query).await?;
    if let Some(description) = description {
        record = server
            .store
            .update_description(record.id, description)
            .await?;
    }
    if revoke {
        record = server.store.revoke(record.id).await?;
    }
    Ok(Json(ApiKeyObject::from_record(&record)))
}

async fn check<S: KeyStore>(
    State(server): Shared<S>,
    kind: KeyKind,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<ApiKeyObject>> {
    server.admit(&headers, kind)?;
    let body = json_body(&headers, &body)?;
    only_fields(&body, &["api_key"])?;
    let Some(Value::String(presented)) = body.get("api_key") else {
        return Err(ApiError::schema("api_key must be a string"));
    };
    // Stack Auth looks the string up as it is: anything that is not a stored key is not found.
    let key = ApiKey::parse(presented).map_err(|_| ApiError::not_found())?;
    let record = server
        .store
        .find(&key)
        .await?
        .ok_or_else(ApiError::not_found)?;
    record
        .check(kind, SystemTime::now())
        .map_err(|reason| ApiError::invalid(reason, kind))?;
    Ok(Json(ApiKeyObject::from_record(&record)))
}
