//! Conformance of `keygate::server::key_server` with the API-key endpoints of Stack Auth (now
//! Hexclave), as written down in `docs/stack-auth-protocol.md` (cited below as "ref §n"). The
//! Router is driven in process with `tower::ServiceExt::oneshot`.
//!
//! Every test runs for user keys and team keys from one table ([`KINDS`]); the access tests also
//! run every request-header case under each header family ([`FAMILIES`]: `x-stack-*`,
//! `x-hexclave-*`, both with conflicting values, mixed). Every response is checked for
//! `cache-control: no-store, max-age=0` and one request id under both names (ref §3), every
//! known error for its status, `content-type`, both known-error headers and `{code, error}` body
//! (ref §5).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use keygate::key::{ApiKey, Deployment, KeyKind};
use keygate::server::{key_server, KeyServerConfig, KeyServerConfigError};
use keygate::{KeyStore, MemoryKeyStore, NewKey, Owner};
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

const PROJECT: &str = "6d0ac1b4-3c64-4b6e-9d63-0f1c1a2b3c4d";
const SECRET: &str = "ssk_keygate_conformance_secret_server_key";
const OTHER_PROJECT: &str = "00000000-0000-4000-8000-000000000000";
const WRONG_SECRET: &str = "ssk_wrong_secret_server_key_for_this_project";

fn config() -> KeyServerConfig {
    KeyServerConfig::new(PROJECT, SECRET).expect("a valid config")
}

// ---------------------------------------------------------------------------------------------
// The table: what differs between user keys and team keys
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
struct Kind {
    kind: KeyKind,
    /// `type` on the wire, and the key's type segment.
    name: &'static str,
    /// `user_id` or `team_id`.
    owner_field: &'static str,
    /// The collection route.
    base: &'static str,
    /// Stack Auth's plain-text 400 when this kind is disabled (ref §5).
    disabled: &'static str,
}

const USER: Kind = Kind {
    kind: KeyKind::User,
    name: "user",
    owner_field: "user_id",
    base: "/api/v1/user-api-keys",
    disabled: "User API keys are not enabled for this project.",
};

const TEAM: Kind = Kind {
    kind: KeyKind::Team,
    name: "team",
    owner_field: "team_id",
    base: "/api/v1/team-api-keys",
    disabled: "Team API keys are not enabled for this project.",
};

const KINDS: [Kind; 2] = [USER, TEAM];

impl Kind {
    fn other(self) -> Kind {
        match self.kind {
            KeyKind::User => TEAM,
            _ => USER,
        }
    }

    fn other_field(self) -> &'static str {
        self.other().owner_field
    }

    fn owner(self, id: &str) -> Owner {
        match self.kind {
            KeyKind::User => Owner::user(id),
            _ => Owner::team(id),
        }
    }

    /// `GET` list URI.
    fn list(self, owner: &str) -> String {
        format!("{}?{}={owner}", self.base, self.owner_field)
    }

    /// `GET` / `PATCH` item URI, with the owner query Stack's SDK always sends.
    fn item(self, id: &str, owner: &str) -> String {
        format!("{}/{id}?{}={owner}", self.base, self.owner_field)
    }

    fn check(self) -> String {
        format!("{}/check", self.base)
    }

    /// A create body: the owner, a description and `expires_at_millis`, plus `extra` fields.
    fn create_body(self, owner: &str, description: &str, expires: Value, extra: Value) -> Value {
        let mut body = json!({
            self.owner_field: owner,
            "description": description,
            "expires_at_millis": expires,
        });
        if let (Some(map), Value::Object(extra)) = (body.as_object_mut(), extra) {
            map.extend(extra);
        }
        body
    }
}

// ---------------------------------------------------------------------------------------------
// Driving the Router
// ---------------------------------------------------------------------------------------------

const SERVER_AUTH: [(&str, &str); 3] = [
    ("x-stack-access-type", "server"),
    ("x-stack-project-id", PROJECT),
    ("x-stack-secret-server-key", SECRET),
];
const JSON_CT: (&str, &str) = ("content-type", "application/json");

#[derive(Debug)]
struct Reply {
    what: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {}", self.what, self.text()))
    }
}

struct Api {
    app: Router,
}

impl Api {
    fn new() -> Self {
        Self::with(MemoryKeyStore::new(), config())
    }

    fn with(store: MemoryKeyStore, config: KeyServerConfig) -> Self {
        Self {
            app: key_server(store, config),
        }
    }

    /// One request with exactly these headers and this raw body.
    async fn raw<N: AsRef<str>, V: AsRef<str>>(
        &self,
        method: Method,
        uri: &str,
        headers: &[(N, V)],
        body: Option<&str>,
    ) -> Reply {
        let mut request = Request::builder().method(method.clone()).uri(uri);
        for (name, value) in headers {
            request = request.header(name.as_ref(), value.as_ref());
        }
        let request = request
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
            .expect("request");
        let response = self.app.clone().oneshot(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes().to_vec();
        let reply = Reply {
            what: format!("{method} {uri}"),
            status: parts.status,
            headers: parts.headers,
            body,
        };
        assert_stack_headers(&reply);
        reply
    }

    /// A request with server access, and `content-type: application/json` when there is a body.
    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        self.call_as(Family::Stack, method, uri, body).await
    }

    /// [`Api::call`] with the access headers spelled as `family` spells them.
    async fn call_as(
        &self,
        family: Family,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut headers = SERVER_AUTH.to_vec();
        let body = body.map(|b| b.to_string());
        if body.is_some() {
            headers.push(JSON_CT);
        }
        self.raw(method, uri, &family.spell(&headers), body.as_deref())
            .await
    }

    async fn ok(&self, method: Method, uri: &str, body: Option<Value>) -> Value {
        let reply = self.call(method, uri, body).await;
        assert_ok(&reply)
    }

    /// Creates a key and returns the FirstView body.
    async fn create(&self, kind: Kind, owner: &str, description: &str, expires: Value) -> Value {
        let body = kind.create_body(owner, description, expires, json!({}));
        self.ok(Method::POST, kind.base, Some(body)).await
    }

    async fn read(&self, kind: Kind, id: &str, owner: &str) -> Value {
        self.ok(Method::GET, &kind.item(id, owner), None).await
    }

    async fn patch(&self, kind: Kind, id: &str, owner: &str, body: Value) -> Reply {
        self.call(Method::PATCH, &kind.item(id, owner), Some(body))
            .await
    }

    async fn check(&self, kind: Kind, key: &str) -> Reply {
        self.call(Method::POST, &kind.check(), Some(json!({ "api_key": key })))
            .await
    }

    async fn list_len(&self, kind: Kind, owner: &str) -> usize {
        let list = self.ok(Method::GET, &kind.list(owner), None).await;
        list["items"].as_array().expect("items").len()
    }
}

/// ref §3: every response carries `cache-control: no-store, max-age=0` and a request id, under
/// both names and equal.
#[track_caller]
fn assert_stack_headers(reply: &Reply) {
    assert_eq!(
        reply.header("cache-control"),
        Some("no-store, max-age=0"),
        "{}: cache-control",
        reply.what
    );
    assert!(
        reply
            .header("x-stack-request-id")
            .is_some_and(|id| !id.trim().is_empty()),
        "{}: x-stack-request-id missing",
        reply.what
    );
    assert_eq!(
        reply.header("x-hexclave-request-id"),
        reply.header("x-stack-request-id"),
        "{}: x-hexclave-request-id",
        reply.what
    );
}

/// A reply that is not an error has neither known-error header, and no actual status.
#[track_caller]
fn assert_no_error_headers(reply: &Reply) {
    for name in [
        "x-stack-known-error",
        "x-hexclave-known-error",
        "x-stack-actual-status",
        "x-hexclave-actual-status",
    ] {
        assert_eq!(reply.header(name), None, "{}: {name}", reply.what);
    }
}

#[track_caller]
fn assert_ok(reply: &Reply) -> Value {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}: {}",
        reply.what,
        reply.text()
    );
    assert!(
        reply
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{}: content-type {:?}",
        reply.what,
        reply.header("content-type")
    );
    assert_no_error_headers(reply);
    reply.json()
}

/// ref §5: status, `content-type: application/json; charset=utf-8`, the known-error header under
/// both names equal to the body's `code`, and a body with `code` and `error` (never `message`).
#[track_caller]
fn assert_known(reply: &Reply, status: StatusCode, code: &str) -> Value {
    assert_eq!(reply.status, status, "{}: {}", reply.what, reply.text());
    for name in ["x-stack-actual-status", "x-hexclave-actual-status"] {
        assert_eq!(reply.header(name), None, "{}: {name}", reply.what);
    }
    assert_known_error_body(reply, code)
}

/// Everything [`assert_known`] checks but the status.
#[track_caller]
fn assert_known_error_body(reply: &Reply, code: &str) -> Value {
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8"),
        "{}: content-type",
        reply.what
    );
    assert_eq!(
        reply.header("x-stack-known-error"),
        Some(code),
        "{}: x-stack-known-error",
        reply.what
    );
    assert_eq!(
        reply.header("x-hexclave-known-error"),
        Some(code),
        "{}: x-hexclave-known-error",
        reply.what
    );
    let body = reply.json();
    assert_eq!(body["code"], code, "{}: {body}", reply.what);
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{}: `error` must be a non-empty string: {body}",
        reply.what
    );
    assert!(
        body.get("message").is_none(),
        "{}: Stack Auth says `error`, not `message`: {body}",
        reply.what
    );
    body
}

/// ref §5: `SCHEMA_ERROR` carries `details.message`.
#[track_caller]
fn assert_schema_error(reply: &Reply) -> Value {
    let body = assert_known(reply, StatusCode::BAD_REQUEST, "SCHEMA_ERROR");
    assert!(
        body["details"]["message"].is_string(),
        "{}: SCHEMA_ERROR details.message: {body}",
        reply.what
    );
    body
}

fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

fn new_owner() -> String {
    Uuid::new_v4().to_string()
}

fn str_field<'a>(body: &'a Value, field: &str) -> &'a str {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is not a string: {body}"))
}

/// What a Read body for a created key must be: the FirstView with `value` reduced to
/// `{"last_four": …}` (ref §4, "Key object").
fn read_view(first_view: &Value) -> Value {
    let key = str_field(first_view, "value");
    let mut read = first_view.clone();
    read["value"] = json!({ "last_four": &key[key.len() - 4..] });
    read
}

// ---------------------------------------------------------------------------------------------
// Create, list, read, update
// ---------------------------------------------------------------------------------------------

/// ref §2 and §1: create answers 200 (not 201) with the FirstView, whose `value` is the whole
/// 102-character key; unset timestamps are left out, not `null`.
#[tokio::test]
async fn create_answers_200_with_the_full_key() {
    let api = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let before = now_ms();
        let body = api.create(kind, &owner, "CI token", Value::Null).await;
        let after = now_ms();

        let id: Uuid = str_field(&body, "id").parse().expect("id is a UUID");
        let key = str_field(&body, "value");
        assert_eq!(key.len(), 102, "{kind:?}: {key}");
        assert!(key.starts_with("sk_"), "{kind:?}: {key}");
        assert_eq!(
            &key[48..80],
            id.simple().to_string(),
            "{kind:?}: id segment"
        );
        assert_eq!(&key[80..84], kind.name, "{kind:?}: type segment");
        assert_eq!(&key[85..94], "574ck4u7h", "{kind:?}: marker");
        let parsed = ApiKey::parse(key).expect("the key is well-formed");
        assert_eq!(parsed.kind(), kind.kind);
        assert_eq!(parsed.key_id(), id);
        assert!(!parsed.is_public());

        assert_eq!(body["type"], kind.name, "{body}");
        assert_eq!(body[kind.owner_field], owner.as_str(), "{body}");
        assert_eq!(body["description"], "CI token", "{body}");
        assert_eq!(body["is_public"], false, "{body}");
        let created = body["created_at_millis"]
            .as_i64()
            .expect("created_at_millis");
        assert!(
            (before..=after).contains(&created),
            "{before} <= {created} <= {after}"
        );
        for absent in [
            "expires_at_millis",
            "manually_revoked_at_millis",
            kind.other_field(),
        ] {
            assert!(
                body.get(absent).is_none(),
                "{kind:?}: `{absent}` must be left out: {body}"
            );
        }

        // is_public → pk_, and an expiry of 0 means never (ref §4, "Create").
        let public = api
            .ok(
                Method::POST,
                kind.base,
                Some(kind.create_body(&owner, "public", json!(0), json!({ "is_public": true }))),
            )
            .await;
        assert!(str_field(&public, "value").starts_with("pk_"), "{public}");
        assert_eq!(public["is_public"], true, "{public}");
        assert!(public.get("expires_at_millis").is_none(), "{public}");

        let expiry = now_ms() + 3_600_000;
        let expiring = api.create(kind, &owner, "expiring", json!(expiry)).await;
        assert_eq!(expiring["expires_at_millis"], expiry, "{expiring}");

        assert_ne!(body["value"], public["value"]);
        assert_ne!(body["id"], expiring["id"]);
    }
}

/// ref §2 and §4: `{items, is_paginated: false}`, newest first, `value` is `{last_four}` only,
/// and only the named owner's keys.
#[tokio::test]
async fn list_is_newest_first_with_last_four_only() {
    let api = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let mut created = Vec::new();
        for description in ["first", "second", "third"] {
            created.push(api.create(kind, &owner, description, Value::Null).await);
        }
        // Keys that must not show up: another owner's, and the other kind's for the same id.
        api.create(kind, &new_owner(), "someone else", Value::Null)
            .await;
        api.create(kind.other(), &owner, "other kind", Value::Null)
            .await;

        let list = api.ok(Method::GET, &kind.list(&owner), None).await;
        let keys: Vec<&String> = list.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["is_paginated", "items"], "{list}");
        assert_eq!(list["is_paginated"], false, "{list}");
        let expected: Vec<Value> = created.iter().rev().map(read_view).collect();
        assert_eq!(list["items"], Value::Array(expected), "{kind:?}");
        for item in list["items"].as_array().expect("items") {
            let value = item["value"].as_object().expect("value is an object");
            assert_eq!(value.len(), 1, "value holds last_four only: {item}");
        }

        let nobody = api.ok(Method::GET, &kind.list(&new_owner()), None).await;
        assert_eq!(nobody, json!({ "items": [], "is_paginated": false }));
    }
}

/// ref §2, §4: `GET …/{id}` answers the key object (no secret); an unknown id, or a key of the
/// other kind, is `API_KEY_NOT_FOUND` (for the other kind, Stack Auth itself fails with a 500;
/// keygate answers 404). Another owner in the query is the next test's.
#[tokio::test]
async fn read_answers_the_key_without_its_secret() {
    let api = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "readable", Value::Null).await;
        let id = str_field(&created, "id");

        let read = api.read(kind, id, &owner).await;
        assert_eq!(read, read_view(&created), "{kind:?}");
        assert!(
            !read.to_string().contains(str_field(&created, "value")),
            "the full key is shown once only"
        );

        for uri in [
            kind.item(&Uuid::new_v4().to_string(), &owner),
            kind.other().item(id, &owner),
        ] {
            let reply = api.call(Method::GET, &uri, None).await;
            assert_known(&reply, StatusCode::NOT_FOUND, "API_KEY_NOT_FOUND");
        }
        let reply = api
            .call(Method::GET, &kind.item("not-a-uuid", &owner), None)
            .await;
        assert_schema_error(&reply);
    }
}

/// ref §2: read and update look the key up by id alone. Another owner's id in the query is
/// validated but not compared: the key is found, updated, and answered with its real owner. A
/// query owner that is not a UUID is still `SCHEMA_ERROR`, and the user route does not need one.
#[tokio::test]
async fn read_and_update_by_id_ignore_the_owner_in_the_query() {
    let api = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let stranger = new_owner();
        let created = api.create(kind, &owner, "found by id", Value::Null).await;
        let id = str_field(&created, "id");

        let read = api.read(kind, id, &stranger).await;
        assert_eq!(read, read_view(&created), "{kind:?}: read");
        assert_eq!(read[kind.owner_field], owner.as_str(), "{kind:?}: {read}");

        let renamed = assert_ok(
            &api.patch(
                kind,
                id,
                &stranger,
                json!({ "description": "renamed by id" }),
            )
            .await,
        );
        let mut expected = read_view(&created);
        expected["description"] = json!("renamed by id");
        assert_eq!(renamed, expected, "{kind:?}: update");
        assert_eq!(renamed[kind.owner_field], owner.as_str(), "{kind:?}");

        let revoked = assert_ok(
            &api.patch(kind, id, &stranger, json!({ "revoked": true }))
                .await,
        );
        assert!(
            revoked["manually_revoked_at_millis"].is_i64(),
            "{kind:?}: {revoked}"
        );
        // The owner's own view shows both changes, and the key is revoked for real.
        assert_eq!(api.read(kind, id, &owner).await, revoked, "{kind:?}");
        assert_known(
            &api.check(kind, str_field(&created, "value")).await,
            StatusCode::UNAUTHORIZED,
            "API_KEY_REVOKED",
        );
        // Nothing moved to the stranger.
        assert_eq!(api.list_len(kind, &stranger).await, 0, "{kind:?}");
        assert_eq!(api.list_len(kind, &owner).await, 1, "{kind:?}");

        // The query is still validated.
        for (method, body) in [
            (Method::GET, None),
            (Method::PATCH, Some(json!({ "description": "nope" }))),
        ] {
            let reply = api.call(method, &kind.item(id, "not-a-uuid"), body).await;
            assert_schema_error(&reply);
        }
    }
    // `user_id` is optional on the user route (`team_id` is not; see below).
    let owner = new_owner();
    let created = api.create(USER, &owner, "no query", Value::Null).await;
    let id = str_field(&created, "id");
    let uri = format!("{}/{id}", USER.base);
    assert_eq!(
        assert_ok(&api.call(Method::GET, &uri, None).await),
        read_view(&created)
    );
}

/// ref §4 "Update": `PATCH {"description": …}` answers the updated Read body.
#[tokio::test]
async fn patch_updates_the_description() {
    let api = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "before", Value::Null).await;
        let id = str_field(&created, "id");

        let reply = api
            .patch(kind, id, &owner, json!({ "description": "renamed" }))
            .await;
        let updated = assert_ok(&reply);
        let mut expected = read_view(&created);
        expected["description"] = json!("renamed");
        assert_eq!(updated, expected, "{kind:?}");
        assert_eq!(api.read(kind, id, &owner).await, expected, "{kind:?}");
        assert_ok(&api.check(kind, str_field(&created, "value")).await);
    }
}

/// ref §4 "Update": `{"revoked": true}` sets `manually_revoked_at_millis`; a second revoke (or
/// any later update) keeps the first timestamp.
#[tokio::test]
async fn revoking_sets_the_timestamp_once() {
    let api = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "to revoke", Value::Null).await;
        let id = str_field(&created, "id");
        let before = now_ms();

        let revoked = assert_ok(
            &api.patch(kind, id, &owner, json!({ "revoked": true }))
                .await,
        );
        let at = revoked["manually_revoked_at_millis"]
            .as_i64()
            .unwrap_or_else(|| panic!("{kind:?}: manually_revoked_at_millis missing: {revoked}"));
        assert!(at >= before && at <= now_ms(), "{kind:?}: {at}");
        let mut expected = read_view(&created);
        expected["manually_revoked_at_millis"] = json!(at);
        assert_eq!(revoked, expected, "{kind:?}");

        // Let the clock move, so that a moved timestamp would show.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let again = assert_ok(
            &api.patch(kind, id, &owner, json!({ "revoked": true }))
                .await,
        );
        assert_eq!(again["manually_revoked_at_millis"], at, "{kind:?}: {again}");
        let renamed = assert_ok(
            &api.patch(
                kind,
                id,
                &owner,
                json!({ "description": "renamed", "revoked": true }),
            )
            .await,
        );
        assert_eq!(renamed["manually_revoked_at_millis"], at, "{renamed}");
        assert_eq!(renamed["description"], "renamed", "{renamed}");
        let read = api.read(kind, id, &owner).await;
        assert_eq!(read["manually_revoked_at_millis"], at, "{read}");
    }
}

/// ref §4 "Update": `revoked` may only be `true`, so `false` is `SCHEMA_ERROR`; any field other
/// than `description` and `revoked` is `SCHEMA_ERROR`. Nothing is applied.
#[tokio::test]
async fn patch_refuses_revoked_false_and_unknown_fields() {
    let api = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "unchanged", Value::Null).await;
        let id = str_field(&created, "id");
        let bodies = [
            json!({ "revoked": false }),
            json!({ "revoked": "true" }),
            json!({ "description": "changed", "revoked": false }),
            json!({ "user_id": owner }),
            json!({ "team_id": owner }),
            json!({ "expires_at_millis": now_ms() - 1_000 }),
            json!({ "is_public": true }),
            json!({ "description": "changed", "prefix": "sk" }),
        ];
        for body in bodies {
            let reply = api.patch(kind, id, &owner, body.clone()).await;
            assert_schema_error(&reply);
        }
        assert_eq!(
            api.read(kind, id, &owner).await,
            read_view(&created),
            "{kind:?}: a refused update changes nothing"
        );
        assert_ok(&api.check(kind, str_field(&created, "value")).await);
    }
}

/// ref §2 (no DELETE route): revocation is a PATCH; a DELETE is not routed and deletes nothing.
#[tokio::test]
async fn there_is_no_delete_route() {
    let api = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "kept", Value::Null).await;
        let id = str_field(&created, "id");
        let reply = api.call(Method::DELETE, &kind.item(id, &owner), None).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{kind:?}");
        assert_ok(&api.check(kind, str_field(&created, "value")).await);
    }
}

// ---------------------------------------------------------------------------------------------
// Check
// ---------------------------------------------------------------------------------------------

/// ref §2 and §4: a valid key's check answers 200 with the key object (no `is_valid`).
#[tokio::test]
async fn check_of_a_valid_key_answers_the_read_body() {
    let api = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let expiry = now_ms() + 3_600_000;
        for (created, public) in [
            (api.create(kind, &owner, "valid", Value::Null).await, false),
            (
                api.create(kind, &owner, "expiring", json!(expiry)).await,
                false,
            ),
            (
                api.ok(
                    Method::POST,
                    kind.base,
                    Some(kind.create_body(
                        &owner,
                        "public",
                        Value::Null,
                        json!({ "is_public": true }),
                    )),
                )
                .await,
                true,
            ),
        ] {
            let body = assert_ok(&api.check(kind, str_field(&created, "value")).await);
            assert_eq!(body, read_view(&created), "{kind:?}");
            assert_eq!(body["is_public"], public);
            assert!(body.get("is_valid").is_none(), "{body}");
        }
    }
}

/// ref §5: a revoked key's check is 401 `API_KEY_REVOKED`.
#[tokio::test]
async fn check_of_a_revoked_key_is_api_key_revoked() {
    let api = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "revoked", Value::Null).await;
        let key = str_field(&created, "value");
        assert_ok(&api.check(kind, key).await);
        let id = str_field(&created, "id");
        assert_ok(
            &api.patch(kind, id, &owner, json!({ "revoked": true }))
                .await,
        );
        let body = assert_known(
            &api.check(kind, key).await,
            StatusCode::UNAUTHORIZED,
            "API_KEY_REVOKED",
        );
        assert_eq!(body["error"], "API key has been revoked.", "{body}");
    }
}

/// ref §5: a key created with an expiry in the past is 401 `API_KEY_EXPIRED`.
#[tokio::test]
async fn check_of_an_expired_key_is_api_key_expired() {
    let api = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let past = now_ms() - 60_000;
        let created = api.create(kind, &owner, "expired", json!(past)).await;
        assert_eq!(created["expires_at_millis"], past, "{created}");
        let body = assert_known(
            &api.check(kind, str_field(&created, "value")).await,
            StatusCode::UNAUTHORIZED,
            "API_KEY_EXPIRED",
        );
        assert_eq!(body["error"], "API key has expired.", "{body}");
    }
}

/// ref §2 (check order): revoked is tested before expired.
#[tokio::test]
async fn a_revoked_and_expired_key_is_api_key_revoked() {
    let api = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let created = api
            .create(kind, &owner, "both", json!(now_ms() - 60_000))
            .await;
        let id = str_field(&created, "id");
        assert_ok(
            &api.patch(kind, id, &owner, json!({ "revoked": true }))
                .await,
        );
        assert_known(
            &api.check(kind, str_field(&created, "value")).await,
            StatusCode::UNAUTHORIZED,
            "API_KEY_REVOKED",
        );
    }
}

/// ref §5: a key of the other kind is 400 `WRONG_API_KEY_TYPE` with `{expected_type,
/// actual_type}`, and wrong type is tested before revoked.
#[tokio::test]
async fn a_key_of_the_other_kind_is_wrong_api_key_type() {
    let api = Api::new();
    for kind in KINDS {
        let endpoint = kind.other();
        let owner = new_owner();
        let created = api.create(kind, &owner, "wrong route", Value::Null).await;
        let key = str_field(&created, "value");
        let expected_details = json!({ "expected_type": endpoint.name, "actual_type": kind.name });
        let expected_error = format!(
            "This endpoint is for {} API keys, but a {} API key was provided.",
            endpoint.name, kind.name
        );

        let body = assert_known(
            &api.check(endpoint, key).await,
            StatusCode::BAD_REQUEST,
            "WRONG_API_KEY_TYPE",
        );
        assert_eq!(body["details"], expected_details, "{body}");
        assert_eq!(body["error"], expected_error.as_str(), "{body}");

        let id = str_field(&created, "id");
        assert_ok(
            &api.patch(kind, id, &owner, json!({ "revoked": true }))
                .await,
        );
        let body = assert_known(
            &api.check(endpoint, key).await,
            StatusCode::BAD_REQUEST,
            "WRONG_API_KEY_TYPE",
        );
        assert_eq!(body["details"], expected_details, "{body}");
    }
}

/// ref §1 and §5: whatever is not a stored key (unknown but well-formed, from another server, with a
/// broken checksum, garbage) is 404 `API_KEY_NOT_FOUND`; a body without a string `api_key` is
/// `SCHEMA_ERROR`.
#[tokio::test]
async fn unknown_and_garbage_keys_are_api_key_not_found() {
    let api = Api::new();
    let elsewhere = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let foreign = elsewhere.create(kind, &owner, "foreign", Value::Null).await;
        let mine = api.create(kind, &owner, "mine", Value::Null).await;
        let mine = str_field(&mine, "value");
        let mut broken_crc = mine.to_owned();
        let last = if mine.ends_with('0') { "1" } else { "0" };
        broken_crc.replace_range(101..102, last);

        let unknown = ApiKey::generate(Uuid::new_v4(), kind.kind, false, Deployment::SelfHosted)
            .expect("rng");
        let candidates = [
            unknown.expose_secret().to_owned(),
            str_field(&foreign, "value").to_owned(),
            broken_crc,
            mine.to_uppercase(),
            format!("{mine} "),
            "sk_abcdefghjkmnpqrstvwxyz0123456789abcdefghjkmn03241a28583294d698f3d316e08cf140cuser1574ck4u7hf5356e6f".into(),
            "not-a-key".into(),
            String::new(),
        ];
        for candidate in candidates {
            let body = assert_known(
                &api.check(kind, &candidate).await,
                StatusCode::NOT_FOUND,
                "API_KEY_NOT_FOUND",
            );
            assert_eq!(body["error"], "API key not found.", "{candidate:?}");
            assert!(
                !body.to_string().contains(&candidate) || candidate.is_empty(),
                "the key is never echoed"
            );
        }
        for body in [
            json!({}),
            json!({ "api_key": 42 }),
            json!({ "api_key": null }),
        ] {
            let reply = api.call(Method::POST, &kind.check(), Some(body)).await;
            assert_schema_error(&reply);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Authentication and access type (ref §3, §5)
// ---------------------------------------------------------------------------------------------

/// A request to every route of `kind`, valid except perhaps for its headers.
fn routes(kind: Kind, id: &str, owner: &str, key: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (
            Method::POST,
            kind.base.to_owned(),
            Some(kind.create_body(owner, "auth", Value::Null, json!({}))),
        ),
        (Method::GET, kind.list(owner), None),
        (Method::GET, kind.item(id, owner), None),
        (
            Method::PATCH,
            kind.item(id, owner),
            Some(json!({ "revoked": true })),
        ),
        (Method::POST, kind.check(), Some(json!({ "api_key": key }))),
    ]
}

/// How a request spells Stack Auth's request headers (ref §3).
#[derive(Clone, Copy, Debug)]
enum Family {
    /// `x-stack-*` only (Stack's SDK up to 2.8.102, keygate's clients).
    Stack,
    /// `x-hexclave-*` only (Stack's SDK from 2.8.108).
    Hexclave,
    /// Both names, the `x-stack-*` value conflicting: the `x-hexclave-*` value must win.
    HexclaveWins,
    /// Some headers under one name, the others under the other.
    Mixed,
}

const FAMILIES: [Family; 4] = [
    Family::Stack,
    Family::Hexclave,
    Family::HexclaveWins,
    Family::Mixed,
];

impl Family {
    /// `headers`, written with `x-stack-*` names, as this family sends them.
    fn spell(self, headers: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut spelled = Vec::new();
        for (i, &(name, value)) in headers.iter().enumerate() {
            let Some(suffix) = name.strip_prefix("x-stack-") else {
                spelled.push((name.to_owned(), value.to_owned()));
                continue;
            };
            let hexclave = format!("x-hexclave-{suffix}");
            match self {
                Family::Stack => spelled.push((name.to_owned(), value.to_owned())),
                Family::Hexclave => spelled.push((hexclave, value.to_owned())),
                Family::HexclaveWins => {
                    spelled.push((name.to_owned(), decoy(name, value).to_owned()));
                    spelled.push((hexclave, value.to_owned()));
                }
                Family::Mixed if i % 2 == 0 => spelled.push((hexclave, value.to_owned())),
                Family::Mixed => spelled.push((name.to_owned(), value.to_owned())),
            }
        }
        spelled
    }
}

/// A value for the `x-stack-*` header `name` that would change the answer if it won over
/// `value`.
fn decoy(name: &str, value: &str) -> &'static str {
    match (name, value) {
        ("x-stack-access-type", "server") => "client",
        ("x-stack-access-type", _) => "server",
        ("x-stack-project-id", PROJECT) => OTHER_PROJECT,
        ("x-stack-project-id", _) => PROJECT,
        ("x-stack-secret-server-key", SECRET) => WRONG_SECRET,
        ("x-stack-secret-server-key", _) => SECRET,
        // Any other credential: present where it was empty, empty where it was present.
        (_, "") => "pck_decoy_credential",
        _ => "",
    }
}

/// One way of getting server access wrong, and Stack Auth's answer to it.
struct AuthCase {
    case: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: StatusCode,
    code: &'static str,
}

/// ref §3 and §5: every route of both kinds refuses anything but server access for this project
/// with this secret, and does nothing, under every header family.
#[tokio::test]
async fn every_route_requires_server_access() {
    let api = Api::new();
    let cases = [
        AuthCase {
            case: "no secret server key",
            headers: &[
                ("x-stack-access-type", "server"),
                ("x-stack-project-id", PROJECT),
            ],
            status: StatusCode::UNAUTHORIZED,
            code: "SERVER_AUTHENTICATION_REQUIRED",
        },
        AuthCase {
            // As in Stack Auth, an empty header is no header.
            case: "empty secret server key",
            headers: &[
                ("x-stack-access-type", "server"),
                ("x-stack-project-id", PROJECT),
                ("x-stack-secret-server-key", ""),
            ],
            status: StatusCode::UNAUTHORIZED,
            code: "SERVER_AUTHENTICATION_REQUIRED",
        },
        AuthCase {
            case: "wrong secret server key",
            headers: &[
                ("x-stack-access-type", "server"),
                ("x-stack-project-id", PROJECT),
                ("x-stack-secret-server-key", WRONG_SECRET),
            ],
            status: StatusCode::UNAUTHORIZED,
            code: "INVALID_SECRET_SERVER_KEY",
        },
        AuthCase {
            case: "the secret server key cut short",
            headers: &[
                ("x-stack-access-type", "server"),
                ("x-stack-project-id", PROJECT),
                ("x-stack-secret-server-key", "ssk_keygate_conformance"),
            ],
            status: StatusCode::UNAUTHORIZED,
            code: "INVALID_SECRET_SERVER_KEY",
        },
        AuthCase {
            case: "another project",
            headers: &[
                ("x-stack-access-type", "server"),
                ("x-stack-project-id", OTHER_PROJECT),
                ("x-stack-secret-server-key", SECRET),
            ],
            status: StatusCode::BAD_REQUEST,
            code: "CURRENT_PROJECT_NOT_FOUND",
        },
        AuthCase {
            case: "client access",
            headers: &[
                ("x-stack-access-type", "client"),
                ("x-stack-project-id", PROJECT),
                ("x-stack-secret-server-key", SECRET),
            ],
            status: StatusCode::UNAUTHORIZED,
            code: "INSUFFICIENT_ACCESS_TYPE",
        },
        AuthCase {
            case: "bogus access type",
            headers: &[
                ("x-stack-access-type", "root"),
                ("x-stack-project-id", PROJECT),
                ("x-stack-secret-server-key", SECRET),
            ],
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_ACCESS_TYPE",
        },
        AuthCase {
            case: "access type without project id",
            headers: &[
                ("x-stack-access-type", "server"),
                ("x-stack-secret-server-key", SECRET),
            ],
            status: StatusCode::BAD_REQUEST,
            code: "ACCESS_TYPE_WITHOUT_PROJECT_ID",
        },
    ];
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "guarded", Value::Null).await;
        let id = str_field(&created, "id");
        let key = str_field(&created, "value");
        for family in FAMILIES {
            for AuthCase {
                case,
                headers,
                status,
                code,
            } in &cases
            {
                for (method, uri, body) in routes(kind, id, &owner, key) {
                    let mut headers = headers.to_vec();
                    let body = body.map(|b| b.to_string());
                    if body.is_some() {
                        headers.push(JSON_CT);
                    }
                    let reply = api
                        .raw(
                            method.clone(),
                            &uri,
                            &family.spell(&headers),
                            body.as_deref(),
                        )
                        .await;
                    let error = assert_known(&reply, *status, code);
                    match *code {
                        "INVALID_SECRET_SERVER_KEY" => {
                            assert_eq!(
                                error["details"]["project_id"], PROJECT,
                                "{family:?} {case}: {error}"
                            );
                        }
                        "INSUFFICIENT_ACCESS_TYPE" => {
                            assert_eq!(
                                error["details"]["actual_access_type"], "client",
                                "{family:?} {case}: {error}"
                            );
                        }
                        "CURRENT_PROJECT_NOT_FOUND" => {
                            assert_eq!(
                                error["details"]["project_id"], OTHER_PROJECT,
                                "{family:?} {case}: {error}"
                            );
                        }
                        _ => {}
                    }
                    for secret in [SECRET, WRONG_SECRET] {
                        assert!(
                            !reply.text().contains(secret),
                            "{family:?} {case}: secret echoed"
                        );
                    }
                }
            }
        }
        // None of the refused requests did anything.
        assert_eq!(api.list_len(kind, &owner).await, 1, "{kind:?}");
        assert_eq!(
            api.read(kind, id, &owner).await,
            read_view(&created),
            "{kind:?}"
        );
    }
}

/// ref §3: server access is admitted under either header family, with both (the `x-hexclave-*`
/// value winning over a wrong `x-stack-*` one), and mixed; every route works.
#[tokio::test]
async fn server_access_is_admitted_under_every_header_family() {
    let api = Api::new();
    for family in FAMILIES {
        for kind in KINDS {
            let owner = new_owner();
            let body = kind.create_body(&owner, "family", Value::Null, json!({}));
            let created = assert_ok(
                &api.call_as(family, Method::POST, kind.base, Some(body))
                    .await,
            );
            let id = str_field(&created, "id");
            let key = str_field(&created, "value");
            assert_eq!(created[kind.owner_field], owner.as_str(), "{family:?}");

            let list = assert_ok(
                &api.call_as(family, Method::GET, &kind.list(&owner), None)
                    .await,
            );
            assert_eq!(list["items"], json!([read_view(&created)]), "{family:?}");
            let read = assert_ok(
                &api.call_as(family, Method::GET, &kind.item(id, &owner), None)
                    .await,
            );
            assert_eq!(read, read_view(&created), "{family:?}");
            let check = json!({ "api_key": key });
            let checked = assert_ok(
                &api.call_as(family, Method::POST, &kind.check(), Some(check.clone()))
                    .await,
            );
            assert_eq!(checked, read_view(&created), "{family:?}");
            let revoke = json!({ "revoked": true });
            let revoked = assert_ok(
                &api.call_as(family, Method::PATCH, &kind.item(id, &owner), Some(revoke))
                    .await,
            );
            assert!(revoked["manually_revoked_at_millis"].is_i64(), "{revoked}");
            assert_known(
                &api.call_as(family, Method::POST, &kind.check(), Some(check))
                    .await,
                StatusCode::UNAUTHORIZED,
                "API_KEY_REVOKED",
            );
        }
    }
}

/// Without any access header at all, Stack Auth answers `ACCESS_TYPE_REQUIRED` (the auth object
/// is null and the route requires one). An empty credential header counts as absent, and a
/// user's access token is not a project credential.
#[tokio::test]
async fn no_access_headers_is_access_type_required() {
    let api = Api::new();
    let cases: [&[(&str, &str)]; 3] = [
        &[],
        &[("x-stack-secret-server-key", "")],
        &[("x-stack-access-token", "eyJhbGciOiJIUzI1NiJ9.e30.c2ln")],
    ];
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "guarded", Value::Null).await;
        let id = str_field(&created, "id");
        for family in FAMILIES {
            for case in cases {
                for (method, uri, body) in routes(kind, id, &owner, str_field(&created, "value")) {
                    let body = body.map(|b| b.to_string());
                    let mut headers = case.to_vec();
                    if body.is_some() {
                        headers.push(JSON_CT);
                    }
                    let reply = api
                        .raw(method, &uri, &family.spell(&headers), body.as_deref())
                        .await;
                    assert_known(&reply, StatusCode::BAD_REQUEST, "ACCESS_TYPE_REQUIRED");
                }
            }
        }
    }
}

/// ref §3: a credential header (a project key or an admin token, under either name) without an
/// access type is `PROJECT_KEY_WITHOUT_ACCESS_TYPE`, before anything else; an empty access type
/// counts as none.
#[tokio::test]
async fn a_credential_without_access_type_is_project_key_without_access_type() {
    let api = Api::new();
    let credentials = [
        ("x-stack-secret-server-key", SECRET),
        ("x-stack-publishable-client-key", "pck_keygate_conformance"),
        ("x-stack-super-secret-admin-key", "sak_keygate_conformance"),
        (
            "x-stack-admin-access-token",
            "eyJhbGciOiJIUzI1NiJ9.e30.c2ln",
        ),
    ];
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "guarded", Value::Null).await;
        let id = str_field(&created, "id");
        for family in FAMILIES {
            for credential in credentials {
                for access_type in [None, Some("")] {
                    for (method, uri, body) in
                        routes(kind, id, &owner, str_field(&created, "value"))
                    {
                        let body = body.map(|b| b.to_string());
                        let mut headers = vec![("x-stack-project-id", PROJECT), credential];
                        if let Some(access_type) = access_type {
                            headers.push(("x-stack-access-type", access_type));
                        }
                        if body.is_some() {
                            headers.push(JSON_CT);
                        }
                        let reply = api
                            .raw(method, &uri, &family.spell(&headers), body.as_deref())
                            .await;
                        assert_known(
                            &reply,
                            StatusCode::BAD_REQUEST,
                            "PROJECT_KEY_WITHOUT_ACCESS_TYPE",
                        );
                    }
                }
            }
        }
        assert_eq!(
            api.list_len(kind, &owner).await,
            1,
            "{kind:?}: nothing created"
        );
    }
}

/// Issue 9, defect 3: a key server whose secret server key is empty admitted everyone (an empty
/// `STACK_SECRET_SERVER_KEY=` did it to the example). A config that would admit everyone, or
/// anyone who guesses a short secret, or that names no project, is refused when it is built.
#[test]
fn a_config_with_an_empty_or_short_secret_is_refused() {
    assert_eq!(KeyServerConfig::MIN_SECRET_SERVER_KEY_LEN, 16);
    let refused = [
        (PROJECT, "", KeyServerConfigError::EmptySecretServerKey),
        (PROJECT, "   ", KeyServerConfigError::EmptySecretServerKey),
        (
            PROJECT,
            "ssk_",
            KeyServerConfigError::SecretServerKeyTooShort { min: 16 },
        ),
        (
            PROJECT,
            "0123456789abcde",
            KeyServerConfigError::SecretServerKeyTooShort { min: 16 },
        ),
        (
            PROJECT,
            "ssk_keygate_conformance\n",
            KeyServerConfigError::UnsendableSecretServerKey,
        ),
        ("", SECRET, KeyServerConfigError::EmptyProjectId),
    ];
    for (project, secret, expected) in refused {
        let error = KeyServerConfig::new(project, secret)
            .err()
            .unwrap_or_else(|| panic!("{project:?} / {secret:?} must be refused"));
        assert_eq!(error, expected, "{project:?} / {secret:?}");
        assert!(!error.to_string().is_empty());
    }
    assert!(KeyServerConfig::new(PROJECT, "0123456789abcdef").is_ok());
    assert!(KeyServerConfig::new(PROJECT, SECRET).is_ok());
}

/// ref §3: with the override-error-status header (under either name, as Stack's SDK sends it),
/// every 4xx is answered 200 with the real status in the actual-status header under both names;
/// body and known-error headers are unchanged. A success is left alone.
#[tokio::test]
async fn override_error_status_answers_every_4xx_as_200() {
    for name in [
        "x-stack-override-error-status",
        "x-hexclave-override-error-status",
    ] {
        for kind in KINDS {
            let config = match kind.kind {
                KeyKind::User => config().team_keys(false),
                _ => config().user_keys(false),
            };
            let api = Api::with(MemoryKeyStore::new(), config);
            let with = |headers: &[(&'static str, &'static str)]| {
                let mut headers = headers.to_vec();
                headers.extend([JSON_CT, (name, "true")]);
                headers
            };
            let auth = with(&SERVER_AUTH);
            let owner = new_owner();

            let body = kind.create_body(&owner, "overridden", Value::Null, json!({}));
            let reply = api
                .raw(Method::POST, kind.base, &auth, Some(&body.to_string()))
                .await;
            let created = assert_ok(&reply);

            let unknown = json!({ "api_key": "not-a-key" }).to_string();
            let reply = api
                .raw(Method::POST, &kind.check(), &auth, Some(&unknown))
                .await;
            assert_overridden(&reply, StatusCode::NOT_FOUND);
            assert_known_error_body(&reply, "API_KEY_NOT_FOUND");

            let reply = api
                .raw(Method::POST, &kind.check(), &auth, Some("{}"))
                .await;
            assert_overridden(&reply, StatusCode::BAD_REQUEST);
            assert_known_error_body(&reply, "SCHEMA_ERROR");

            let wrong = with(&[
                ("x-stack-access-type", "server"),
                ("x-stack-project-id", PROJECT),
                ("x-stack-secret-server-key", WRONG_SECRET),
            ]);
            let reply = api.raw(Method::GET, &kind.list(&owner), &wrong, None).await;
            assert_overridden(&reply, StatusCode::UNAUTHORIZED);
            assert_known_error_body(&reply, "INVALID_SECRET_SERVER_KEY");

            // The other kind is disabled: a plain-text 400, overridden too.
            let other = kind.other();
            let reply = api.raw(Method::GET, &other.list(&owner), &auth, None).await;
            assert_overridden(&reply, StatusCode::BAD_REQUEST);
            assert_eq!(reply.text(), other.disabled, "{}", reply.what);
            assert_eq!(reply.header("x-stack-known-error"), None);
            assert_eq!(reply.header("x-hexclave-known-error"), None);

            // Nothing changed but the status: the key is still there and valid.
            let check = json!({ "api_key": str_field(&created, "value") }).to_string();
            let reply = api
                .raw(Method::POST, &kind.check(), &auth, Some(&check))
                .await;
            assert_eq!(assert_ok(&reply), read_view(&created));
        }
    }
}

/// A 4xx answered as 200 because the request asked for it: the real status under both names.
#[track_caller]
fn assert_overridden(reply: &Reply, actual: StatusCode) {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}: {}",
        reply.what,
        reply.text()
    );
    for name in ["x-stack-actual-status", "x-hexclave-actual-status"] {
        assert_eq!(
            reply.header(name),
            Some(actual.as_str()),
            "{}: {name}",
            reply.what
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Feature switch (ref §5)
// ---------------------------------------------------------------------------------------------

/// A disabled kind answers Stack Auth's plain-text 400 on every route, even for a stored, valid
/// key; it is not a known error. The other kind keeps working.
#[tokio::test]
async fn a_disabled_kind_answers_plain_text_400() {
    for kind in KINDS {
        let store = MemoryKeyStore::new();
        let owner = new_owner();
        let stored = store
            .create(kind.owner(&owner), NewKey::new("stored before"))
            .await
            .expect("create");
        let config = config();
        let config = match kind.kind {
            KeyKind::User => config.user_keys(false),
            _ => config.team_keys(false),
        };
        let api = Api::with(store, config);

        let id = stored.record.id.to_string();
        for (method, uri, body) in routes(kind, &id, &owner, stored.key.expose_secret()) {
            let reply = api.call(method, &uri, body).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.what);
            assert!(
                reply
                    .header("content-type")
                    .is_some_and(|ct| ct.starts_with("text/plain")),
                "{}: content-type {:?}",
                reply.what,
                reply.header("content-type")
            );
            assert_no_error_headers(&reply);
            assert_eq!(reply.text(), kind.disabled, "{}", reply.what);
        }

        let other = kind.other();
        let created = api
            .create(other, &owner, "still enabled", Value::Null)
            .await;
        assert_ok(&api.check(other, str_field(&created, "value")).await);
    }
}

// ---------------------------------------------------------------------------------------------
// Schema errors (ref §2, §3, §4)
// ---------------------------------------------------------------------------------------------

/// ref §2: a list without `user_id` is 400 `SCHEMA_ERROR`, even with server access; the same
/// for `team_id`.
#[tokio::test]
async fn list_without_the_owner_is_schema_error() {
    let api = Api::new();
    for kind in KINDS {
        api.create(kind, &new_owner(), "exists", Value::Null).await;
        let reply = api.call(Method::GET, kind.base, None).await;
        let body = assert_schema_error(&reply);
        assert!(
            str_field(&body["details"], "message").contains(kind.owner_field),
            "{body}"
        );
    }
}

/// ref §2: `team_id` is required on every team route, so read and update without it are
/// `SCHEMA_ERROR`.
#[tokio::test]
async fn team_read_and_update_without_team_id_are_schema_error() {
    let api = Api::new();
    let owner = new_owner();
    let created = api.create(TEAM, &owner, "team", Value::Null).await;
    let id = str_field(&created, "id");
    let uri = format!("{}/{id}", TEAM.base);

    assert_schema_error(&api.call(Method::GET, &uri, None).await);
    let reply = api
        .call(Method::PATCH, &uri, Some(json!({ "revoked": true })))
        .await;
    assert_schema_error(&reply);
    assert_eq!(
        api.read(TEAM, id, &owner).await,
        read_view(&created),
        "not revoked"
    );
}

/// ref §3: `content-type: application/json` is required with a body; without it the body counts
/// as absent, which is `SCHEMA_ERROR`.
#[tokio::test]
async fn a_body_without_content_type_is_schema_error() {
    let api = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "untouched", Value::Null).await;
        let id = str_field(&created, "id");
        for (method, uri, body) in routes(kind, id, &owner, str_field(&created, "value")) {
            let Some(body) = body else { continue };
            let reply = api
                .raw(method, &uri, &SERVER_AUTH, Some(&body.to_string()))
                .await;
            assert_schema_error(&reply);
        }
        assert_eq!(api.list_len(kind, &owner).await, 1, "nothing created");
        assert_eq!(
            api.read(kind, id, &owner).await,
            read_view(&created),
            "not revoked"
        );
    }
}

/// ref §4 "Create": `description` is required, `expires_at_millis` must be present (`null` for
/// never), the owner is required, and there is no `prefix` (or any other) field.
#[tokio::test]
async fn create_refuses_incomplete_or_unknown_fields() {
    let api = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let complete = kind.create_body(&owner, "complete", Value::Null, json!({}));
        let without = |field: &str| {
            let mut body = complete.clone();
            body.as_object_mut().expect("object").remove(field);
            body
        };
        let with = |field: &str, value: Value| {
            let mut body = complete.clone();
            body[field] = value;
            body
        };
        let bodies = [
            without("expires_at_millis"),
            without("description"),
            without(kind.owner_field),
            with("prefix", json!("sk")),
            with(kind.other_field(), json!(new_owner())),
            with("is_public", json!("yes")),
            with("description", json!(7)),
        ];
        for body in bodies {
            let reply = api.call(Method::POST, kind.base, Some(body.clone())).await;
            assert_schema_error(&reply);
        }
        assert_eq!(
            api.list_len(kind, &owner).await,
            0,
            "{kind:?}: nothing created"
        );
    }
}

/// ref §3: every response has its own request id (the same under both names, which every
/// reply is checked for).
#[tokio::test]
async fn request_ids_differ_between_requests() {
    let api = Api::new();
    let first = api.call(Method::GET, &USER.list(&new_owner()), None).await;
    let second = api.call(Method::GET, &USER.list(&new_owner()), None).await;
    for name in ["x-stack-request-id", "x-hexclave-request-id"] {
        assert!(first.header(name).is_some(), "{name}");
        assert_ne!(first.header(name), second.header(name), "{name}");
    }
}
