//! The key server's main flows (tests/key_server.rs runs them in depth over the memory store)
//! over every store: memory, SQLite (file and `sqlite::memory:`) and PostgreSQL (a fresh schema
//! per test; skipped without `DATABASE_URL`). Table-driven: every flow runs for every backend
//! ([`backends`]) and both key kinds ([`KINDS`]); the check answers come from one table
//! ([`CHECKS`]).

#[macro_use]
#[path = "common/store_suite.rs"]
mod store_suite;

use std::any::Any;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use keygate::key::{ApiKey, Deployment, KeyKind};
use keygate::server::{key_server, KeyServerConfig};
use keygate::{MemoryKeyStore, SqliteKeyStore};
use serde_json::{json, Value};
use tower::ServiceExt;
use uuid::Uuid;

const PROJECT: &str = "6d0ac1b4-3c64-4b6e-9d63-0f1c1a2b3c4d";
const SECRET: &str = "ssk_keygate_conformance_secret_server_key";

fn config() -> KeyServerConfig {
    KeyServerConfig::new(PROJECT, SECRET).expect("a valid config")
}

struct Backend {
    name: &'static str,
    app: Router,
    _guard: Box<dyn Any + Send>,
}

/// A key server over every store available here.
async fn backends() -> Vec<Backend> {
    let mut all = vec![Backend {
        name: "memory",
        app: key_server(MemoryKeyStore::new(), config()),
        _guard: Box::new(()),
    }];
    let (store, dir) = store_suite::sqlite_file().await.expect("sqlite");
    all.push(Backend {
        name: "sqlite file",
        app: key_server(store, config()),
        _guard: Box::new(dir),
    });
    let (store, ()) = store_suite::sqlite_memory().await.expect("sqlite");
    all.push(Backend {
        name: "sqlite memory",
        app: key_server(store, config()),
        _guard: Box::new(()),
    });
    #[cfg(feature = "postgres")]
    if let Some((store, schema)) = store_suite::postgres().await {
        all.push(Backend {
            name: "postgres",
            app: key_server(store, config()),
            _guard: Box::new(schema),
        });
    }
    all
}

#[derive(Clone, Copy, Debug)]
struct Kind {
    kind: KeyKind,
    name: &'static str,
    owner_field: &'static str,
    base: &'static str,
}

const USER: Kind = Kind {
    kind: KeyKind::User,
    name: "user",
    owner_field: "user_id",
    base: "/api/v1/user-api-keys",
};
const TEAM: Kind = Kind {
    kind: KeyKind::Team,
    name: "team",
    owner_field: "team_id",
    base: "/api/v1/team-api-keys",
};
const KINDS: [Kind; 2] = [USER, TEAM];

impl Kind {
    fn other(self) -> Kind {
        match self.kind {
            KeyKind::User => TEAM,
            KeyKind::Team => USER,
        }
    }
    fn list(self, owner: &str) -> String {
        format!("{}?{}={owner}", self.base, self.owner_field)
    }
    fn item(self, id: &str, owner: &str) -> String {
        format!("{}/{id}?{}={owner}", self.base, self.owner_field)
    }
}

struct Reply {
    status: StatusCode,
    code: Option<String>,
    body: Value,
}

async fn call(app: &Router, method: Method, uri: &str, body: Option<Value>) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-stack-access-type", "server")
        .header("x-stack-project-id", PROJECT)
        .header("x-stack-secret-server-key", SECRET);
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let code = response
        .headers()
        .get("x-stack-known-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply { status, code, body }
}

#[track_caller]
fn ok(what: &str, reply: Reply) -> Value {
    assert_eq!(reply.status, StatusCode::OK, "{what}: {}", reply.body);
    reply.body
}

#[track_caller]
fn known(what: &str, reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.body);
    assert_eq!(reply.code.as_deref(), Some(code), "{what}: {}", reply.body);
    assert_eq!(reply.body["code"], code, "{what}");
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

async fn create(app: &Router, kind: Kind, owner: &str, description: &str, extra: Value) -> Value {
    let mut body =
        json!({ kind.owner_field: owner, "description": description, "expires_at_millis": null });
    if let (Some(map), Value::Object(extra)) = (body.as_object_mut(), extra) {
        map.extend(extra);
    }
    ok(
        "create",
        call(app, Method::POST, kind.base, Some(body)).await,
    )
}

async fn revoke(app: &Router, kind: Kind, created: &Value, owner: &str) -> Value {
    let uri = kind.item(field(created, "id"), owner);
    ok(
        "revoke",
        call(app, Method::PATCH, &uri, Some(json!({ "revoked": true }))).await,
    )
}

fn field<'a>(body: &'a Value, name: &str) -> &'a str {
    body[name]
        .as_str()
        .unwrap_or_else(|| panic!("`{name}` in {body}"))
}

/// The Read body of a created key: `value` reduced to its last four characters.
fn read_view(created: &Value) -> Value {
    let key = field(created, "value");
    let mut read = created.clone();
    read["value"] = json!({ "last_four": &key[key.len() - 4..] });
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_read_update_and_revoke() {
    for backend in backends().await {
        let app = &backend.app;
        for kind in KINDS {
            let what = format!("{} {}", backend.name, kind.name);
            let owner = Uuid::new_v4().to_string();
            let first = create(app, kind, &owner, "first", json!({})).await;
            let second = create(app, kind, &owner, "second", json!({ "is_public": true })).await;
            let expiry = now_ms() + 3_600_000;
            let third = create(
                app,
                kind,
                &owner,
                "third",
                json!({ "expires_at_millis": expiry }),
            )
            .await;
            assert_eq!(field(&first, "value").len(), 102, "{what}");
            assert!(field(&second, "value").starts_with("pk_"), "{what}");
            assert_eq!(third["expires_at_millis"], expiry, "{what}");
            assert_eq!(first["type"], kind.name, "{what}");

            // list: newest first, no secret.
            let list = ok(
                &what,
                call(app, Method::GET, &kind.list(&owner), None).await,
            );
            let expected: Vec<Value> = [&third, &second, &first]
                .into_iter()
                .map(read_view)
                .collect();
            assert_eq!(list["items"], Value::Array(expected), "{what}");

            // read
            let id = field(&first, "id");
            let read = ok(
                &what,
                call(app, Method::GET, &kind.item(id, &owner), None).await,
            );
            assert_eq!(read, read_view(&first), "{what}");

            // update the description
            let uri = kind.item(id, &owner);
            let updated = ok(
                &what,
                call(
                    app,
                    Method::PATCH,
                    &uri,
                    Some(json!({ "description": "renamed" })),
                )
                .await,
            );
            assert_eq!(updated["description"], "renamed", "{what}");
            let read = ok(&what, call(app, Method::GET, &uri, None).await);
            assert_eq!(read["description"], "renamed", "{what}");

            // revoke, twice: the first timestamp is kept
            let revoked = revoke(app, kind, &first, &owner).await;
            let at = revoked["manually_revoked_at_millis"]
                .as_i64()
                .expect("revoked_at");
            let again = revoke(app, kind, &first, &owner).await;
            assert_eq!(again["manually_revoked_at_millis"], at, "{what}");
            assert_eq!(again["description"], "renamed", "{what}");
            let list = ok(
                &what,
                call(app, Method::GET, &kind.list(&owner), None).await,
            );
            assert_eq!(
                list["items"].as_array().map(Vec::len),
                Some(3),
                "{what}: revoked keys are listed"
            );

            // unknown ids
            let unknown = kind.item(&Uuid::new_v4().to_string(), &owner);
            known(
                &what,
                &call(app, Method::GET, &unknown, None).await,
                StatusCode::NOT_FOUND,
                "API_KEY_NOT_FOUND",
            );
            known(
                &what,
                &call(
                    app,
                    Method::PATCH,
                    &unknown,
                    Some(json!({ "revoked": true })),
                )
                .await,
                StatusCode::NOT_FOUND,
                "API_KEY_NOT_FOUND",
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_owner_sees_none_of_the_keys() {
    for backend in backends().await {
        let app = &backend.app;
        for kind in KINDS {
            let what = format!("{} {}", backend.name, kind.name);
            let owner = Uuid::new_v4().to_string();
            let stranger = Uuid::new_v4().to_string();
            let created = create(app, kind, &owner, "mine", json!({})).await;
            // The same id string as an owner of the other kind is another owner.
            create(app, kind.other(), &owner, "other kind", json!({})).await;

            let list = ok(
                &what,
                call(app, Method::GET, &kind.list(&stranger), None).await,
            );
            assert_eq!(list["items"], json!([]), "{what}");
            let list = ok(
                &what,
                call(app, Method::GET, &kind.list(&owner), None).await,
            );
            assert_eq!(list["items"], json!([read_view(&created)]), "{what}");

            // By id, as Stack Auth does: the query's owner is not compared, the real one answered.
            let id = field(&created, "id");
            let read = ok(
                &what,
                call(app, Method::GET, &kind.item(id, &stranger), None).await,
            );
            assert_eq!(read[kind.owner_field], owner.as_str(), "{what}");
            // Through the other kind's route the key does not exist.
            let reply = call(app, Method::GET, &kind.other().item(id, &owner), None).await;
            known(&what, &reply, StatusCode::NOT_FOUND, "API_KEY_NOT_FOUND");
        }
    }
}

/// What a checked key went through before the check.
#[derive(Clone, Copy, Debug)]
enum Made {
    Valid,
    Public,
    ExpiresLater,
    Revoked,
    Expired,
    RevokedAndExpired,
    Unknown,
}

/// (key, checked on the other kind's route, status, known error).
const CHECKS: [(Made, bool, StatusCode, Option<&str>); 9] = [
    (Made::Valid, false, StatusCode::OK, None),
    (Made::Public, false, StatusCode::OK, None),
    (Made::ExpiresLater, false, StatusCode::OK, None),
    (
        Made::Revoked,
        false,
        StatusCode::UNAUTHORIZED,
        Some("API_KEY_REVOKED"),
    ),
    (
        Made::Expired,
        false,
        StatusCode::UNAUTHORIZED,
        Some("API_KEY_EXPIRED"),
    ),
    (
        Made::RevokedAndExpired,
        false,
        StatusCode::UNAUTHORIZED,
        Some("API_KEY_REVOKED"),
    ),
    (
        Made::Valid,
        true,
        StatusCode::BAD_REQUEST,
        Some("WRONG_API_KEY_TYPE"),
    ),
    (
        Made::Revoked,
        true,
        StatusCode::BAD_REQUEST,
        Some("WRONG_API_KEY_TYPE"),
    ),
    (
        Made::Unknown,
        false,
        StatusCode::NOT_FOUND,
        Some("API_KEY_NOT_FOUND"),
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_answers_like_stack_auth() {
    for backend in backends().await {
        let app = &backend.app;
        for kind in KINDS {
            for (made, other_route, status, code) in CHECKS {
                let what = format!(
                    "{} {} {made:?} other_route={other_route}",
                    backend.name, kind.name
                );
                let owner = Uuid::new_v4().to_string();
                let past = json!({ "expires_at_millis": now_ms() - 60_000 });
                let (key, created) = match made {
                    Made::Unknown => {
                        let key = ApiKey::generate(
                            Uuid::new_v4(),
                            kind.kind,
                            false,
                            Deployment::SelfHosted,
                        )
                        .expect("rng");
                        (key.expose_secret().to_owned(), None)
                    }
                    _ => {
                        let extra = match made {
                            Made::Public => json!({ "is_public": true }),
                            Made::ExpiresLater => json!({ "expires_at_millis": now_ms() + 60_000 }),
                            Made::Expired | Made::RevokedAndExpired => past,
                            _ => json!({}),
                        };
                        let created = create(app, kind, &owner, "checked", extra).await;
                        if matches!(made, Made::Revoked | Made::RevokedAndExpired) {
                            revoke(app, kind, &created, &owner).await;
                        }
                        (field(&created, "value").to_owned(), Some(created))
                    }
                };
                let route = if other_route { kind.other() } else { kind };
                let reply = call(
                    app,
                    Method::POST,
                    &format!("{}/check", route.base),
                    Some(json!({ "api_key": key })),
                )
                .await;
                match code {
                    None => {
                        let body = ok(&what, reply);
                        let read = created.as_ref().map(read_view).expect("created");
                        assert_eq!(body, read, "{what}: the check answers the Read body");
                    }
                    Some(code) => {
                        known(&what, &reply, status, code);
                        assert!(
                            !reply.body.to_string().contains(&key),
                            "{what}: the key is never echoed"
                        );
                    }
                }
            }
        }
    }
}

/// The key server over a SQLite file, restarted: keys made before still check the same.
#[tokio::test]
async fn a_sqlite_key_server_keeps_its_keys_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("server.db");
    let owner = Uuid::new_v4().to_string();
    let (kept, revoked) = {
        let app = key_server(SqliteKeyStore::open(&path).await.expect("open"), config());
        let kept = create(&app, USER, &owner, "kept", json!({})).await;
        let revoked = create(&app, USER, &owner, "revoked", json!({})).await;
        revoke(&app, USER, &revoked, &owner).await;
        (kept, revoked)
    };
    let app = key_server(SqliteKeyStore::open(&path).await.expect("reopen"), config());
    let check = |key: &Value| json!({ "api_key": field(key, "value") });
    let reply = call(
        &app,
        Method::POST,
        "/api/v1/user-api-keys/check",
        Some(check(&kept)),
    )
    .await;
    assert_eq!(ok("kept", reply), read_view(&kept));
    let reply = call(
        &app,
        Method::POST,
        "/api/v1/user-api-keys/check",
        Some(check(&revoked)),
    )
    .await;
    known(
        "revoked",
        &reply,
        StatusCode::UNAUTHORIZED,
        "API_KEY_REVOKED",
    );
    let list = ok(
        "list",
        call(&app, Method::GET, &USER.list(&owner), None).await,
    );
    assert_eq!(list["items"].as_array().map(Vec::len), Some(2));
}
