//! Driving `keygate::server::key_server` in process, as Stack's SDK would: server access under
//! every header family, and the assertions every answer is checked with (cited as "ref §n" from
//! `docs/stack-auth-protocol.md`).

use axum::http::{Method, StatusCode};
use axum::Router;
use keygate::server::{key_server, KeyServerConfig};
use keygate::{KeyStore, MemoryKeyStore};
use serde_json::{json, Value};
use uuid::Uuid;

use super::http::{send_raw, Reply};
use super::kinds::Kind;

pub const PROJECT: &str = "6d0ac1b4-3c64-4b6e-9d63-0f1c1a2b3c4d";
pub const SECRET: &str = "ssk_keygate_conformance_secret_server_key";
pub const OTHER_PROJECT: &str = "00000000-0000-4000-8000-000000000000";
pub const WRONG_SECRET: &str = "ssk_wrong_secret_server_key_for_this_project";

pub const SERVER_AUTH: [(&str, &str); 3] = [
    ("x-stack-access-type", "server"),
    ("x-stack-project-id", PROJECT),
    ("x-stack-secret-server-key", SECRET),
];
pub const JSON_CT: (&str, &str) = ("content-type", "application/json");

pub fn config() -> KeyServerConfig {
    KeyServerConfig::new(PROJECT, SECRET).expect("a valid config")
}

/// A fresh owner id (the key server insists on UUIDs).
pub fn new_owner() -> String {
    Uuid::new_v4().to_string()
}

pub fn str_field<'a>(body: &'a Value, field: &str) -> &'a str {
    body[field]
        .as_str()
        .unwrap_or_else(|| panic!("`{field}` is not a string: {body}"))
}

/// What a Read body for a created key must be: the FirstView with `value` reduced to
/// `{"last_four": …}` (ref §4, "Key object").
pub fn read_view(first_view: &Value) -> Value {
    let key = str_field(first_view, "value");
    let mut read = first_view.clone();
    read["value"] = json!({ "last_four": &key[key.len() - 4..] });
    read
}

/// A request to every route of `kind`, valid except perhaps for its headers.
pub fn routes(
    kind: Kind,
    id: &str,
    owner: &str,
    key: &str,
) -> Vec<(Method, String, Option<Value>)> {
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

// ---------------------------------------------------------------------------------------------
// Header families (ref §3)
// ---------------------------------------------------------------------------------------------

/// How a request spells Stack Auth's request headers.
#[derive(Clone, Copy, Debug)]
pub enum Family {
    /// `x-stack-*` only (Stack's SDK up to 2.8.102, keygate's clients).
    Stack,
    /// `x-hexclave-*` only (Stack's SDK from 2.8.108).
    Hexclave,
    /// Both names, the `x-stack-*` value conflicting: the `x-hexclave-*` value must win.
    HexclaveWins,
    /// Some headers under one name, the others under the other.
    Mixed,
}

pub const FAMILIES: [Family; 4] = [
    Family::Stack,
    Family::Hexclave,
    Family::HexclaveWins,
    Family::Mixed,
];

impl Family {
    /// `headers`, written with `x-stack-*` names, as this family sends them.
    pub fn spell(self, headers: &[(&str, &str)]) -> Vec<(String, String)> {
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

// ---------------------------------------------------------------------------------------------
// The API
// ---------------------------------------------------------------------------------------------

/// The key server's Router over a store.
pub struct Api {
    app: Router,
}

impl Api {
    /// A key server over a new memory store.
    pub fn new() -> Self {
        Self::with(MemoryKeyStore::new(), config())
    }

    pub fn with<S: KeyStore>(store: S, config: KeyServerConfig) -> Self {
        Self {
            app: key_server(store, config),
        }
    }

    /// One request with exactly these headers and this raw body. Every answer is checked for
    /// the headers every response carries.
    pub async fn raw<N: AsRef<str>, V: AsRef<str>>(
        &self,
        method: Method,
        uri: &str,
        headers: &[(N, V)],
        body: Option<&str>,
    ) -> Reply {
        let reply = send_raw(&self.app, method, uri, headers, body).await;
        assert_stack_headers(&reply);
        reply
    }

    /// `headers` as `family` spells them, with `content-type: application/json` when there is
    /// a body.
    pub async fn send(
        &self,
        family: Family,
        headers: &[(&str, &str)],
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut headers = headers.to_vec();
        let body = body.map(|b| b.to_string());
        if body.is_some() {
            headers.push(JSON_CT);
        }
        self.raw(method, uri, &family.spell(&headers), body.as_deref())
            .await
    }

    /// A request with server access.
    pub async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        self.call_as(Family::Stack, method, uri, body).await
    }

    /// [`Api::call`] with the access headers spelled as `family` spells them.
    pub async fn call_as(
        &self,
        family: Family,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> Reply {
        self.send(family, &SERVER_AUTH, method, uri, body).await
    }

    pub async fn ok(&self, method: Method, uri: &str, body: Option<Value>) -> Value {
        let reply = self.call(method, uri, body).await;
        assert_ok(&reply)
    }

    /// Creates a key and returns the FirstView body.
    pub async fn create(
        &self,
        kind: Kind,
        owner: &str,
        description: &str,
        expires: Value,
    ) -> Value {
        let body = kind.create_body(owner, description, expires, json!({}));
        self.ok(Method::POST, kind.base, Some(body)).await
    }

    pub async fn read(&self, kind: Kind, id: &str, owner: &str) -> Value {
        self.ok(Method::GET, &kind.item(id, owner), None).await
    }

    pub async fn patch(&self, kind: Kind, id: &str, owner: &str, body: Value) -> Reply {
        self.call(Method::PATCH, &kind.item(id, owner), Some(body))
            .await
    }

    /// A check of `key`, whose answer never echoes it (nor a 200's Read body, ref §4).
    pub async fn check(&self, kind: Kind, key: &str) -> Reply {
        let reply = self
            .call(Method::POST, &kind.check(), Some(json!({ "api_key": key })))
            .await;
        assert!(
            key.is_empty() || !reply.text().contains(key),
            "{}: the key is echoed",
            reply.what
        );
        reply
    }

    pub async fn list_len(&self, kind: Kind, owner: &str) -> usize {
        let list = self.ok(Method::GET, &kind.list(owner), None).await;
        list["items"].as_array().expect("items").len()
    }
}

// ---------------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------------

/// ref §3: every response carries `cache-control: no-store, max-age=0` and a request id, under
/// both names and equal.
#[track_caller]
pub fn assert_stack_headers(reply: &Reply) {
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
pub fn assert_no_error_headers(reply: &Reply) {
    for name in [
        "x-stack-known-error",
        "x-hexclave-known-error",
        "x-stack-actual-status",
        "x-hexclave-actual-status",
    ] {
        assert_eq!(reply.header(name), None, "{}: {name}", reply.what);
    }
}

/// 200 with a JSON body and no error headers; the body.
#[track_caller]
pub fn assert_ok(reply: &Reply) -> Value {
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
pub fn assert_known(reply: &Reply, status: StatusCode, code: &str) -> Value {
    assert_eq!(reply.status, status, "{}: {}", reply.what, reply.text());
    for name in ["x-stack-actual-status", "x-hexclave-actual-status"] {
        assert_eq!(reply.header(name), None, "{}: {name}", reply.what);
    }
    assert_known_error_body(reply, code)
}

/// Everything [`assert_known`] checks but the status.
#[track_caller]
pub fn assert_known_error_body(reply: &Reply, code: &str) -> Value {
    assert_eq!(
        reply.header("content-type"),
        Some("application/json; charset=utf-8"),
        "{}: content-type",
        reply.what
    );
    for name in ["x-stack-known-error", "x-hexclave-known-error"] {
        assert_eq!(reply.header(name), Some(code), "{}: {name}", reply.what);
    }
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
pub fn assert_schema_error(reply: &Reply) -> Value {
    let body = assert_known(reply, StatusCode::BAD_REQUEST, "SCHEMA_ERROR");
    assert!(
        body["details"]["message"].is_string(),
        "{}: SCHEMA_ERROR details.message: {body}",
        reply.what
    );
    body
}
