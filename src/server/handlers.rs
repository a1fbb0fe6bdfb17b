//! The handlers of the `user-api-keys` and `team-api-keys` routes: create, list, read, update,
//! check. Each one admits the caller first ([`access::admit`](super::access::admit)).

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::Json;
use http::header::CONTENT_TYPE;
use http::HeaderMap;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::access::admit;
use super::config::KeyServerConfig;
use super::errors::{ApiError, ApiResult};
use crate::key::{ApiKey, KeyKind};
use crate::stack_protocol::{from_millis, ApiKeyList, ApiKeyObject, KeyValue};
use crate::store::{KeyRecord, KeyStore, NewKey};
use crate::verify::Owner;

/// The router's state: the store and who may call.
pub(super) struct Server<S> {
    pub(super) store: S,
    pub(super) config: KeyServerConfig,
}

pub(super) type Shared<S> = State<Arc<Server<S>>>;

impl<S: KeyStore> Server<S> {
    /// The key `id`, if it exists and is of `kind`.
    ///
    /// As in Stack Auth, the key is looked up by id alone: the owner in the query is validated
    /// (`team_id` is required on the team route) but not compared with the key's owner, and the
    /// answer names the key's real owner. A key of the other kind is not found here (Stack Auth
    /// fails on it with a 500).
    async fn by_id(
        &self,
        kind: KeyKind,
        id: &str,
        query: &Map<String, Value>,
    ) -> ApiResult<KeyRecord> {
        let id: Uuid = id
            .parse()
            .map_err(|_| ApiError::schema("api_key_id must be a valid UUID"))?;
        owner_from_query(kind, query, kind == KeyKind::Team)?;
        let record = self.store.get(id).await?.ok_or_else(ApiError::not_found)?;
        if record.kind() != kind {
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
            return Err(ApiError::body_parsing(format!(
                "Unsupported content type {ct:?}; use application/json."
            )))
        }
        Some(_) => {}
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::schema("body must be a JSON object")),
        Err(e) => Err(ApiError::body_parsing(format!(
            "The body is not valid JSON: {e}"
        ))),
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

/// `POST /api/v1/{user,team}-api-keys`: 200 with the full key in `value`, shown this once.
pub(super) async fn create<S: KeyStore>(
    State(server): Shared<S>,
    kind: KeyKind,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<ApiKeyObject>> {
    admit(&server.config, &headers, kind)?;
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

/// `GET /api/v1/{user,team}-api-keys?user_id=…` / `?team_id=…`: the owner's keys, newest first.
pub(super) async fn list<S: KeyStore>(
    State(server): Shared<S>,
    kind: KeyKind,
    headers: HeaderMap,
    Query(query): Query<Map<String, Value>>,
) -> ApiResult<Json<ApiKeyList>> {
    admit(&server.config, &headers, kind)?;
    let owner = owner_from_query(kind, &query, true)?.ok_or_else(ApiError::not_found)?;
    let records = server.store.list(&owner).await?;
    Ok(Json(ApiKeyList::new(
        records.iter().map(ApiKeyObject::from_record).collect(),
    )))
}

/// `GET /api/v1/{user,team}-api-keys/{id}`: the Read body.
pub(super) async fn read<S: KeyStore>(
    State(server): Shared<S>,
    kind: KeyKind,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<Map<String, Value>>,
) -> ApiResult<Json<ApiKeyObject>> {
    admit(&server.config, &headers, kind)?;
    let record = server.by_id(kind, &id, &query).await?;
    Ok(Json(ApiKeyObject::from_record(&record)))
}

/// `PATCH /api/v1/{user,team}-api-keys/{id}`: a new `description` and/or `{"revoked": true}`.
pub(super) async fn update<S: KeyStore>(
    State(server): Shared<S>,
    kind: KeyKind,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<Map<String, Value>>,
    body: Bytes,
) -> ApiResult<Json<ApiKeyObject>> {
    admit(&server.config, &headers, kind)?;
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
    let mut record = server.by_id(kind, &id, &query).await?;
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

/// `POST /api/v1/{user,team}-api-keys/check`: 200 with the key, or 404 / 400 / 401.
pub(super) async fn check<S: KeyStore>(
    State(server): Shared<S>,
    kind: KeyKind,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<ApiKeyObject>> {
    admit(&server.config, &headers, kind)?;
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
