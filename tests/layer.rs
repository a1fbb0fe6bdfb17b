//! Integration tests for `RequireApiKey` and the axum extractors, driven through axum `Router`s
//! (and one plain tower service) with `tower::ServiceExt::oneshot`.
//!
//! Every refusal is checked against the error table of the design: exact status, exact
//! `WWW-Authenticate` (or its absence), `Retry-After` (or its absence), `content-type`,
//! `cache-control` and the JSON body's `code`.

use std::convert::Infallible;
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, HttpBody};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use keygate::key::{ApiKey, Deployment, KeyKind};
use keygate::store::CreatedKey;
use keygate::verify::{KeyInfo, VerifyError, VerifyErrorKind};
use keygate::{
    AuthenticatedTeam, AuthenticatedUser, CachedVerifier, DefaultResponder, KeyExtractor, KeyStore,
    KeyVerifier, MemoryKeyStore, NewKey, Owner, Principal, Rejection, RequireApiKey, Verdict,
};
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tower::{Layer, ServiceExt};
use uuid::Uuid;

const X_KEY: &str = "x-stack-api-key";

// ---------------------------------------------------------------------------------------------
// Expected refusals (the design's error table)
// ---------------------------------------------------------------------------------------------

/// One row of the error table.
#[derive(Clone, Copy, Debug)]
struct Expect {
    status: StatusCode,
    challenge: Option<&'static str>,
    retry_after: Option<&'static str>,
    code: &'static str,
}

const MISSING: Expect = Expect {
    status: StatusCode::UNAUTHORIZED,
    challenge: Some(r#"Bearer realm="api""#),
    retry_after: None,
    code: "API_KEY_MISSING",
};

const INVALID: Expect = Expect {
    status: StatusCode::UNAUTHORIZED,
    challenge: Some(r#"Bearer realm="api", error="invalid_token""#),
    retry_after: None,
    code: "API_KEY_INVALID",
};

const BAD_REQUEST: Expect = Expect {
    status: StatusCode::BAD_REQUEST,
    challenge: Some(r#"Bearer error="invalid_request""#),
    retry_after: None,
    code: "INVALID_REQUEST",
};

const SCOPE: Expect = Expect {
    status: StatusCode::FORBIDDEN,
    challenge: Some(r#"Bearer error="insufficient_scope""#),
    retry_after: None,
    code: "INSUFFICIENT_SCOPE",
};

const UNAVAILABLE: Expect = Expect {
    status: StatusCode::SERVICE_UNAVAILABLE,
    challenge: None,
    retry_after: Some("1"),
    code: "VERIFIER_UNAVAILABLE",
};

/// What a request should come to.
#[derive(Clone, Debug)]
enum Outcome {
    /// The handler ran and answered this JSON.
    Ok(Value),
    /// The request was refused as this row of the error table says.
    Rejected(Expect),
}

// ---------------------------------------------------------------------------------------------
// Responses
// ---------------------------------------------------------------------------------------------

/// A response, fully read.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    async fn read<B>(response: Response<B>) -> Self
    where
        B: HttpBody,
        B::Error: Debug,
    {
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        Self {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    fn header(&self, name: HeaderName) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("visible ASCII header"))
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }

    fn json(&self, ctx: &str) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{ctx}: body is not JSON ({e}): {:?}", self.text()))
    }

    /// The handler ran: 200 with a JSON body, which is returned.
    fn assert_ok(&self, ctx: &str) -> Value {
        assert_eq!(self.status, StatusCode::OK, "{ctx}: body {:?}", self.text());
        self.json(ctx)
    }

    /// A refusal exactly as the error table says.
    fn assert_rejected(&self, expect: &Expect, ctx: &str) {
        assert_eq!(self.status, expect.status, "{ctx}: body {:?}", self.text());
        assert_eq!(
            self.header(WWW_AUTHENTICATE),
            expect.challenge,
            "{ctx}: WWW-Authenticate"
        );
        assert_eq!(
            self.header(RETRY_AFTER),
            expect.retry_after,
            "{ctx}: Retry-After"
        );
        assert_eq!(
            self.header(CONTENT_TYPE),
            Some("application/json"),
            "{ctx}: content-type"
        );
        assert_eq!(
            self.header(CACHE_CONTROL),
            Some("no-store"),
            "{ctx}: cache-control"
        );
        let body = self.json(ctx);
        assert_eq!(body["code"], expect.code, "{ctx}: body {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{ctx}: no human message in {body}");
        assert_eq!(
            body.as_object().map(|o| o.len()),
            Some(2),
            "{ctx}: body has exactly `code` and `error`: {body}"
        );
    }

    fn assert_outcome(&self, outcome: &Outcome, ctx: &str) {
        match outcome {
            Outcome::Ok(expected) => assert_eq!(&self.assert_ok(ctx), expected, "{ctx}"),
            Outcome::Rejected(expect) => self.assert_rejected(expect, ctx),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// A header as raw bytes, so that rows can carry values that are not visible ASCII.
type Hdr = (&'static str, Vec<u8>);

fn auth(value: impl Into<Vec<u8>>) -> Hdr {
    ("authorization", value.into())
}

fn bearer(key: &str) -> Hdr {
    auth(format!("Bearer {key}"))
}

fn x_key(value: impl Into<Vec<u8>>) -> Hdr {
    (X_KEY, value.into())
}

fn request<B: Default>(uri: &str, headers: &[Hdr]) -> Request<B> {
    let mut request = Request::get(uri).body(B::default()).expect("request");
    for (name, value) in headers {
        let value = HeaderValue::from_bytes(value).expect("valid header value");
        request
            .headers_mut()
            .append(HeaderName::from_static(name), value);
    }
    request
}

async fn send(app: &Router, uri: &str, headers: &[Hdr]) -> Reply {
    let response = app
        .clone()
        .oneshot(request::<Body>(uri, headers))
        .await
        .expect("axum routers are infallible");
    Reply::read(response).await
}

// ---------------------------------------------------------------------------------------------
// Handlers and routers
// ---------------------------------------------------------------------------------------------

async fn me(user: AuthenticatedUser) -> Json<Value> {
    Json(json!({
        "user_id": &*user.user_id,
        "key_id": user.key_id.to_string(),
        "is_public": user.is_public,
        "expires_at_ms": millis(user.expires_at),
    }))
}

async fn team(team: AuthenticatedTeam) -> Json<Value> {
    Json(json!({
        "team_id": &*team.team_id,
        "key_id": team.key_id.to_string(),
        "is_public": team.is_public,
    }))
}

async fn principal(principal: Principal) -> Json<Value> {
    Json(json!({
        "kind": principal.kind().as_str(),
        "owner_id": principal.owner_id(),
        "key_id": principal.key_id().to_string(),
    }))
}

async fn maybe(user: Option<AuthenticatedUser>) -> Json<Value> {
    Json(json!({ "user_id": user.map(|u| u.user_id.to_string()) }))
}

/// What the handler sees of the credentials.
async fn echo(headers: HeaderMap, uri: Uri) -> Json<Value> {
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

/// What `/principal` answers for `created`.
fn principal_json(created: &CreatedKey) -> Value {
    json!({
        "kind": created.record.owner.kind().as_str(),
        "owner_id": created.record.owner.id(),
        "key_id": created.record.id.to_string(),
    })
}

/// Milliseconds since the epoch, as Stack Auth keeps timestamps.
fn millis(t: Option<SystemTime>) -> Option<u128> {
    t.map(|t| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis()
    })
}

/// Every test route, unguarded.
fn routes() -> Router {
    Router::new()
        .route("/me", get(me))
        .route("/team", get(team))
        .route("/principal", get(principal))
        .route("/maybe", get(maybe))
        .route("/echo", get(echo))
}

/// `Authorization: Bearer`, `x-stack-api-key` and `?api_key=`.
fn every_place() -> KeyExtractor {
    KeyExtractor::new()
        .header(HeaderName::from_static(X_KEY))
        .query_param("api_key")
}

/// The layer with default settings over the three ways a verifier can answer: at once (the
/// memory store), asynchronously and then from the cache (`CachedVerifier`), and always
/// asynchronously (a verifier without `verify_now`).
fn verifier_variants(store: &MemoryKeyStore) -> Vec<(&'static str, Router)> {
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
            routes().layer(RequireApiKey::new(TestVerifier::store(store.clone()))),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Keys and verifiers
// ---------------------------------------------------------------------------------------------

async fn mint(store: &MemoryKeyStore, owner: Owner, new: NewKey) -> CreatedKey {
    store.create(owner, new).await.expect("create key")
}

fn secret(created: &CreatedKey) -> String {
    created.key.expose_secret().to_owned()
}

/// A store with one key of each sort.
struct Keys {
    store: MemoryKeyStore,
    user: CreatedKey,
    team: CreatedKey,
    public_user: CreatedKey,
    public_team: CreatedKey,
}

async fn keys() -> Keys {
    let store = MemoryKeyStore::new();
    let user = mint(&store, Owner::user("user-1"), NewKey::new("user")).await;
    let team = mint(&store, Owner::team("team-1"), NewKey::new("team")).await;
    let public_user = mint(
        &store,
        Owner::user("user-2"),
        NewKey::new("public user").public(true),
    )
    .await;
    let public_team = mint(
        &store,
        Owner::team("team-2"),
        NewKey::new("public team").public(true),
    )
    .await;
    Keys {
        store,
        user,
        team,
        public_user,
        public_team,
    }
}

/// A well-formed key that no store knows.
fn generated(kind: KeyKind, is_public: bool) -> ApiKey {
    ApiKey::generate(Uuid::new_v4(), kind, is_public, Deployment::SelfHosted).expect("OS RNG")
}

/// A well-formed secret user key that no store knows.
fn unknown_key() -> String {
    generated(KeyKind::User, false).expose_secret().to_owned()
}

/// `key` with its last checksum digit changed: well-formed in every other way.
fn with_bad_checksum(key: &str) -> String {
    let (head, last) = key.split_at(key.len() - 1);
    format!("{head}{}", if last == "0" { "1" } else { "0" })
}

#[derive(Clone)]
enum Behaviour {
    /// Answers as the store does.
    Store(MemoryKeyStore),
    /// Always fails with a transport error, suggesting this `Retry-After` if any.
    Fail(Option<Duration>),
    /// Answers as the store does, once the gate has a permit.
    Gated(MemoryKeyStore, Arc<Semaphore>),
    /// Says every key is valid, with what this function makes of it.
    Valid(fn(&ApiKey) -> KeyInfo),
}

/// A verifier that only answers asynchronously (no `verify_now`) and counts its calls.
#[derive(Clone)]
struct TestVerifier {
    behaviour: Behaviour,
    calls: Arc<AtomicUsize>,
}

impl TestVerifier {
    fn store(store: MemoryKeyStore) -> Self {
        Self::new(Behaviour::Store(store))
    }

    fn failing(retry_after: Option<Duration>) -> Self {
        Self::new(Behaviour::Fail(retry_after))
    }

    fn new(behaviour: Behaviour) -> Self {
        Self {
            behaviour,
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl KeyVerifier for TestVerifier {
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match &self.behaviour {
            Behaviour::Store(store) => store.verify(key).await,
            Behaviour::Valid(describe) => Ok(Verdict::valid(describe(key))),
            Behaviour::Gated(store, gate) => {
                let _permit = gate.acquire().await.expect("gate is never closed");
                store.verify(key).await
            }
            Behaviour::Fail(retry_after) => {
                let error = VerifyError::new(VerifyErrorKind::Transport, "test verifier is down");
                Err(match retry_after {
                    Some(after) => error.with_retry_after(*after),
                    None => error,
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The error table
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn requests_without_a_key_get_401_api_key_missing() {
    let k = keys().await;
    let user = secret(&k.user);
    let verifier = TestVerifier::store(k.store.clone());
    let app = routes().layer(RequireApiKey::new(verifier.clone()));
    let rows: Vec<(&str, String, Vec<Hdr>)> = vec![
        ("no credentials at all", "/me".into(), vec![]),
        (
            "another scheme",
            "/me".into(),
            vec![auth("Basic dXNlcjpwdw==")],
        ),
        (
            "scheme not followed by a space",
            "/me".into(),
            vec![auth("Bearerabc")],
        ),
        (
            "unconfigured header",
            "/me".into(),
            vec![x_key(user.clone())],
        ),
        (
            "query parameter, not enabled",
            format!("/me?api_key={user}"),
            vec![],
        ),
    ];
    for (name, uri, headers) in &rows {
        send(&app, uri, headers)
            .await
            .assert_rejected(&MISSING, name);
    }
    assert_eq!(verifier.calls(), 0, "no key, no lookup");
}

#[tokio::test]
async fn malformed_unknown_revoked_and_expired_keys_get_one_uniform_401() {
    let k = keys().await;
    let revoked = mint(
        &k.store,
        Owner::user("user-revoked"),
        NewKey::new("revoked"),
    )
    .await;
    k.store.revoke(revoked.record.id).await.expect("revoke");
    let expired = mint(
        &k.store,
        Owner::user("user-expired"),
        NewKey::new("expired").expires_at(SystemTime::now() - Duration::from_secs(60)),
    )
    .await;
    let valid = secret(&k.user);
    let rows: Vec<(&str, String)> = vec![
        ("bad checksum", with_bad_checksum(&valid)),
        ("one character short", valid[..valid.len() - 1].to_owned()),
        ("one character long", format!("{valid}0")),
        ("wrong prefix", format!("xk{}", &valid[2..])),
        ("garbage", "not-a-key".to_owned()),
        ("unknown", unknown_key()),
        ("revoked", secret(&revoked)),
        ("expired", secret(&expired)),
    ];
    let mut bodies = Vec::new();
    for (variant, app) in verifier_variants(&k.store) {
        for (name, key) in &rows {
            // Twice: the second answer may come from a cache.
            for round in 1..=2 {
                let ctx = format!("{variant}, {name} key, request {round}");
                let reply = send(&app, "/me", &[bearer(key)]).await;
                reply.assert_rejected(&INVALID, &ctx);
                bodies.push((ctx, reply.body));
            }
        }
    }
    let (first_ctx, first) = &bodies[0];
    for (ctx, body) in &bodies {
        assert_eq!(
            body, first,
            "`{ctx}` and `{first_ctx}` differ: the reason leaks"
        );
    }
}

#[tokio::test]
async fn two_different_keys_or_bad_header_syntax_get_400_invalid_request() {
    let k = keys().await;
    let (user, team) = (secret(&k.user), secret(&k.team));
    let verifier = TestVerifier::store(k.store.clone());
    let app = routes().layer(RequireApiKey::new(verifier.clone()).extractor(every_place()));
    let rows: Vec<(&str, String, Vec<Hdr>)> = vec![
        (
            "bearer and configured header",
            "/principal".into(),
            vec![bearer(&user), x_key(team.clone())],
        ),
        (
            "two Authorization headers",
            "/principal".into(),
            vec![bearer(&user), bearer(&team)],
        ),
        (
            "configured header twice",
            "/principal".into(),
            vec![x_key(user.clone()), x_key(team.clone())],
        ),
        (
            "bearer and query parameter",
            format!("/principal?api_key={team}"),
            vec![bearer(&user)],
        ),
        (
            "valid key and unknown key",
            "/principal".into(),
            vec![bearer(&user), x_key(unknown_key())],
        ),
        ("scheme alone", "/principal".into(), vec![auth("Bearer")]),
        (
            "scheme and spaces",
            "/principal".into(),
            vec![auth("Bearer   ")],
        ),
        ("two tokens", "/principal".into(), vec![auth("Bearer a b")]),
        (
            "valid key followed by junk",
            "/principal".into(),
            vec![auth(format!("Bearer {user} {user}"))],
        ),
        (
            "comma in token",
            "/principal".into(),
            vec![auth("Bearer a,b")],
        ),
        (
            "tab in token",
            "/principal".into(),
            vec![auth("Bearer a\tb")],
        ),
        (
            "non-ASCII in bearer",
            "/principal".into(),
            vec![auth(b"Bearer \xffabc".to_vec())],
        ),
        (
            "non-ASCII in configured header",
            "/principal".into(),
            vec![x_key(b"sk_\xe2\x82\xac".to_vec())],
        ),
        // A malformed bearer token is a 400 whatever comes after it, even a refusal of its own.
        (
            "bad bearer, then an over-long configured header",
            "/principal".into(),
            vec![auth("Bearer a!b"), x_key("a".repeat(600))],
        ),
        (
            "bad bearer, then an over-long bearer",
            "/principal".into(),
            vec![auth("Bearer a!b"), bearer(&"a".repeat(600))],
        ),
        (
            "bad bearer, then an over-long query parameter",
            format!("/principal?api_key={}", "a".repeat(600)),
            vec![auth("Bearer a!b")],
        ),
        (
            "non-ASCII bearer, then an over-long configured header",
            "/principal".into(),
            vec![auth(b"Bearer \xc3\xa9".to_vec()), x_key("a".repeat(600))],
        ),
        (
            "a key-shaped bearer token with a character outside b64token",
            "/principal".into(),
            vec![auth(format!("Bearer {}!{}", &user[..10], &user[11..]))],
        ),
    ];
    for (name, uri, headers) in &rows {
        send(&app, uri, headers)
            .await
            .assert_rejected(&BAD_REQUEST, name);
    }
    assert_eq!(verifier.calls(), 0, "a malformed request costs no lookup");
}

type Policy = fn(RequireApiKey<MemoryKeyStore>) -> RequireApiKey<MemoryKeyStore>;

#[tokio::test]
async fn route_policies_refuse_keys_of_the_wrong_kind_with_403() {
    let k = keys().await;
    let users_only: Policy = |l| l.users_only();
    let teams_only: Policy = |l| l.teams_only();
    let no_public: Policy = |l| l.allow_public_keys(false);
    let default: Policy = |l| l;
    let reset: Policy = |l| l.users_only().any_principal();
    let rows: Vec<(&str, Policy, &CreatedKey, Option<Expect>)> = vec![
        ("team key, users only", users_only, &k.team, Some(SCOPE)),
        ("user key, teams only", teams_only, &k.user, Some(SCOPE)),
        (
            "public team key, users only",
            users_only,
            &k.public_team,
            Some(SCOPE),
        ),
        (
            "public user key, public refused",
            no_public,
            &k.public_user,
            Some(SCOPE),
        ),
        (
            "public team key, public refused",
            no_public,
            &k.public_team,
            Some(SCOPE),
        ),
        ("user key, users only", users_only, &k.user, None),
        ("team key, teams only", teams_only, &k.team, None),
        (
            "public team key, teams only",
            teams_only,
            &k.public_team,
            None,
        ),
        ("secret key, public refused", no_public, &k.user, None),
        ("public user key, default", default, &k.public_user, None),
        ("team key, back to any principal", reset, &k.team, None),
    ];
    for (name, policy, key, refusal) in rows {
        let app = routes().layer(policy(RequireApiKey::new(k.store.clone())));
        let outcome = match refusal {
            Some(expect) => Outcome::Rejected(expect),
            None => Outcome::Ok(principal_json(key)),
        };
        send(&app, "/principal", &[bearer(&secret(key))])
            .await
            .assert_outcome(&outcome, name);
    }
}

#[tokio::test]
async fn a_verifier_that_contradicts_the_key_is_not_believed() {
    type Describe = fn(&ApiKey) -> KeyInfo;
    let honest: Describe = |key| KeyInfo::new(key.key_id(), Owner::user("u"), key.is_public());
    let other_kind: Describe = |key| KeyInfo::new(key.key_id(), Owner::team("t"), key.is_public());
    let other_id: Describe = |key| KeyInfo::new(Uuid::new_v4(), Owner::user("u"), key.is_public());
    let expired: Describe = |key| {
        KeyInfo::new(key.key_id(), Owner::user("u"), key.is_public())
            .with_expires_at(Some(SystemTime::now() - Duration::from_secs(1)))
    };
    let says_secret: Describe = |key| KeyInfo::new(key.key_id(), Owner::user("u"), false);
    let says_public: Describe = |key| KeyInfo::new(key.key_id(), Owner::user("u"), true);
    let secret_key = generated(KeyKind::User, false);
    let public_key = generated(KeyKind::User, true);
    let admitted = |key: &ApiKey| {
        Outcome::Ok(json!({"kind": "user", "owner_id": "u", "key_id": key.key_id().to_string()}))
    };
    let rows: Vec<(&str, Describe, &ApiKey, Outcome)> = vec![
        (
            "honest, secret key",
            honest,
            &secret_key,
            admitted(&secret_key),
        ),
        (
            "honest, public key refused",
            honest,
            &public_key,
            Outcome::Rejected(SCOPE),
        ),
        (
            "claims a team owns a user key",
            other_kind,
            &secret_key,
            Outcome::Rejected(INVALID),
        ),
        (
            "claims another key id",
            other_id,
            &secret_key,
            Outcome::Rejected(INVALID),
        ),
        (
            "claims an expired key is valid",
            expired,
            &secret_key,
            Outcome::Rejected(INVALID),
        ),
        // The key's own `pk_` prefix wins over a verifier that calls it secret.
        (
            "claims a public key is secret",
            says_secret,
            &public_key,
            Outcome::Rejected(SCOPE),
        ),
        // A verifier may add what the key does not say.
        (
            "claims a secret key is public",
            says_public,
            &secret_key,
            Outcome::Rejected(SCOPE),
        ),
    ];
    for (name, describe, key, outcome) in &rows {
        let verifier = TestVerifier::new(Behaviour::Valid(*describe));
        let app = routes().layer(RequireApiKey::new(verifier).allow_public_keys(false));
        send(&app, "/principal", &[bearer(key.expose_secret())])
            .await
            .assert_outcome(outcome, name);
        // Behind a cache, the second request is answered from the cached verdict (the digest
        // fast path), which the layer must check against the key just the same.
        let verifier = TestVerifier::new(Behaviour::Valid(*describe));
        let cached = CachedVerifier::new(verifier.clone());
        let app = routes().layer(RequireApiKey::new(cached).allow_public_keys(false));
        for attempt in ["first", "cached"] {
            send(&app, "/principal", &[bearer(key.expose_secret())])
                .await
                .assert_outcome(outcome, &format!("{name}, behind a cache, {attempt}"));
        }
        // A `pk_` key is refused from its prefix, before any lookup. An expired verdict is
        // never cached, so both requests reach the verifier.
        let calls = if key.is_public() {
            0
        } else if describe(key).is_expired() {
            2
        } else {
            1
        };
        assert_eq!(verifier.calls(), calls, "{name}: calls behind the cache");
    }
}

/// A verifier that answers every digest from its "cache" with one fixed verdict, and counts
/// how often each path is asked.
struct FastPathOnly {
    verdict: Verdict,
    cached_asks: AtomicUsize,
    calls: AtomicUsize,
}

impl KeyVerifier for FastPathOnly {
    async fn verify(&self, _key: &ApiKey) -> Result<Verdict, VerifyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Verdict::Invalid(keygate::verify::InvalidReason::NotFound))
    }

    fn __cached_verdict(&self, _digest: &keygate::key::KeyDigest) -> Option<Verdict> {
        self.cached_asks.fetch_add(1, Ordering::SeqCst);
        Some(self.verdict.clone())
    }
}

#[tokio::test]
async fn the_cached_verdict_fast_path_is_checked_like_any_other_answer() {
    let key = generated(KeyKind::User, false);
    let structurally_broken = {
        // The marker is part of the structure the layer checks before it hashes anything.
        let mut bytes = key.expose_secret().as_bytes().to_vec();
        bytes[90] = b'x';
        String::from_utf8(bytes).expect("ascii")
    };
    let admitted =
        Outcome::Ok(json!({"kind": "user", "owner_id": "u", "key_id": key.key_id().to_string()}));
    // (name, verdict the fast path gives, key sent, outcome, fast path asked, verify calls)
    let rows: Vec<(&str, Verdict, &str, Outcome, usize)> = vec![
        (
            "a matching verdict is taken without a verifier call",
            Verdict::valid(KeyInfo::new(key.key_id(), Owner::user("u"), false)),
            key.expose_secret(),
            admitted,
            1,
        ),
        (
            "a verdict for another key id is refused",
            Verdict::valid(KeyInfo::new(Uuid::new_v4(), Owner::user("u"), false)),
            key.expose_secret(),
            Outcome::Rejected(INVALID),
            1,
        ),
        (
            "a verdict naming a team for a user key is refused",
            Verdict::valid(KeyInfo::new(key.key_id(), Owner::team("t"), false)),
            key.expose_secret(),
            Outcome::Rejected(INVALID),
            1,
        ),
        (
            "an expired verdict is refused",
            Verdict::valid(
                KeyInfo::new(key.key_id(), Owner::user("u"), false)
                    .with_expires_at(Some(SystemTime::now() - Duration::from_secs(1))),
            ),
            key.expose_secret(),
            Outcome::Rejected(INVALID),
            1,
        ),
        (
            "a structurally malformed key is refused before the fast path is asked",
            Verdict::valid(KeyInfo::new(key.key_id(), Owner::user("u"), false)),
            &structurally_broken,
            Outcome::Rejected(INVALID),
            0,
        ),
    ];
    for (name, verdict, sent, outcome, asked) in rows {
        let verifier = Arc::new(FastPathOnly {
            verdict,
            cached_asks: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        });
        let app = routes().layer(RequireApiKey::from_arc(Arc::clone(&verifier)));
        send(&app, "/principal", &[bearer(sent)])
            .await
            .assert_outcome(&outcome, name);
        assert_eq!(verifier.cached_asks.load(Ordering::SeqCst), asked, "{name}");
        assert_eq!(verifier.calls.load(Ordering::SeqCst), 0, "{name}");
    }
}

#[tokio::test]
async fn verifier_errors_get_503_with_retry_after_and_never_reach_the_handler() {
    let key = unknown_key();
    let with_default =
        |retry: u64| DefaultResponder::default().retry_after(Duration::from_secs(retry));
    let rows: Vec<(&str, TestVerifier, Option<DefaultResponder>, &str)> = vec![
        ("no hint", TestVerifier::failing(None), None, "1"),
        (
            "verifier hint",
            TestVerifier::failing(Some(Duration::from_secs(7))),
            None,
            "7",
        ),
        (
            "sub-second hint",
            TestVerifier::failing(Some(Duration::from_millis(200))),
            None,
            "1",
        ),
        (
            "responder default",
            TestVerifier::failing(None),
            Some(with_default(30)),
            "30",
        ),
        (
            "verifier hint beats responder default",
            TestVerifier::failing(Some(Duration::from_secs(7))),
            Some(with_default(30)),
            "7",
        ),
    ];
    for (name, verifier, responder, retry_after) in rows {
        let layer = RequireApiKey::new(verifier.clone());
        let app = match responder {
            Some(responder) => routes().layer(layer.responder(responder)),
            None => routes().layer(layer),
        };
        let expect = Expect {
            retry_after: Some(retry_after),
            ..UNAVAILABLE
        };
        send(&app, "/principal", &[bearer(&key)])
            .await
            .assert_rejected(&expect, name);
        assert_eq!(verifier.calls(), 1, "{name}: the verifier was asked");
    }
}

#[tokio::test]
async fn the_realm_is_named_in_401_challenges_only() {
    let k = keys().await;
    let app = routes().layer(
        RequireApiKey::new(k.store.clone())
            .realm("my realm")
            .users_only(),
    );
    let rows: Vec<(&str, Vec<Hdr>, Expect)> = vec![
        (
            "no key",
            vec![],
            Expect {
                challenge: Some(r#"Bearer realm="my realm""#),
                ..MISSING
            },
        ),
        (
            "unknown key",
            vec![bearer(&unknown_key())],
            Expect {
                challenge: Some(r#"Bearer realm="my realm", error="invalid_token""#),
                ..INVALID
            },
        ),
        ("bad syntax", vec![auth("Bearer a b")], BAD_REQUEST),
        ("team key", vec![bearer(&secret(&k.team))], SCOPE),
    ];
    for (name, headers, expect) in &rows {
        send(&app, "/me", headers)
            .await
            .assert_rejected(expect, name);
    }
}

#[tokio::test]
async fn the_axum_extractors_use_the_layers_realm_but_not_a_custom_responder() {
    let k = keys().await;
    let realm = routes().layer(
        RequireApiKey::new(k.store.clone())
            .realm("my realm")
            .optional(),
    );
    let plain_text = routes().layer(RequireApiKey::new(k.store.clone()).optional().responder(
        |rejection: &Rejection| {
            Response::builder()
                .status(rejection.status())
                .body(Body::from(rejection.code()))
                .expect("response")
        },
    ));
    // A keyless request let through by an optional layer carries the layer's realm to the
    // extractors. A custom responder of arbitrary type cannot be called by them: their refusals
    // keep the default JSON (documented on `RequireApiKey::responder`).
    let rows: Vec<(&str, &Router, &str, Vec<Hdr>, Expect)> = vec![
        (
            "realm, no key",
            &realm,
            "/me",
            vec![],
            Expect {
                challenge: Some(r#"Bearer realm="my realm""#),
                ..MISSING
            },
        ),
        ("responder, no key", &plain_text, "/me", vec![], MISSING),
        (
            "responder, team key",
            &plain_text,
            "/me",
            vec![bearer(&secret(&k.team))],
            SCOPE,
        ),
    ];
    for (name, app, uri, headers, expect) in &rows {
        send(app, uri, headers).await.assert_rejected(expect, name);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Extraction
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let k = keys().await;
    let app = routes().layer(RequireApiKey::new(k.store.clone()));
    let user = secret(&k.user);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR", "Bearer  "] {
        send(&app, "/principal", &[auth(format!("{scheme} {user}"))])
            .await
            .assert_outcome(&Outcome::Ok(principal_json(&k.user)), scheme);
    }
}

#[tokio::test]
async fn keys_are_read_only_where_the_extractor_looks() {
    let k = keys().await;
    let user = secret(&k.user);
    let x = || HeaderName::from_static(X_KEY);
    let pass = Outcome::Ok(principal_json(&k.user));
    let missing = Outcome::Rejected(MISSING);
    let invalid = Outcome::Rejected(INVALID);
    let long = "a".repeat(513);
    let rows: Vec<(&str, KeyExtractor, String, Vec<Hdr>, &Outcome)> = vec![
        (
            "default: bearer",
            KeyExtractor::new(),
            "/principal".into(),
            vec![bearer(&user)],
            &pass,
        ),
        (
            "header added: header",
            KeyExtractor::new().header(x()),
            "/principal".into(),
            vec![x_key(user.clone())],
            &pass,
        ),
        (
            "header added: padded header",
            KeyExtractor::new().header(x()),
            "/principal".into(),
            vec![x_key(format!("  {user} "))],
            &pass,
        ),
        (
            "header added: bearer still read",
            KeyExtractor::new().header(x()),
            "/principal".into(),
            vec![bearer(&user)],
            &pass,
        ),
        (
            "header instead of bearer: header",
            KeyExtractor::new().bearer(false).header(x()),
            "/principal".into(),
            vec![x_key(user.clone())],
            &pass,
        ),
        (
            "header instead of bearer: bearer is no key",
            KeyExtractor::new().bearer(false).header(x()),
            "/principal".into(),
            vec![bearer(&user)],
            &missing,
        ),
        (
            "header instead of bearer: bearer syntax not checked",
            KeyExtractor::new().bearer(false).header(x()),
            "/principal".into(),
            vec![auth("Bearer a b")],
            &missing,
        ),
        (
            "query disabled",
            KeyExtractor::new(),
            format!("/principal?api_key={user}"),
            vec![],
            &missing,
        ),
        (
            "query enabled",
            KeyExtractor::new().query_param("api_key"),
            format!("/principal?api_key={user}"),
            vec![],
            &pass,
        ),
        (
            "query enabled, among other parameters",
            KeyExtractor::new().query_param("api_key"),
            format!("/principal?a=1&api_key={user}&b=2"),
            vec![],
            &pass,
        ),
        (
            "query enabled, other parameter name",
            KeyExtractor::new().query_param("api_key"),
            format!("/principal?key={user}"),
            vec![],
            &missing,
        ),
        (
            "same key: bearer and header",
            every_place(),
            "/principal".into(),
            vec![bearer(&user), x_key(user.clone())],
            &pass,
        ),
        (
            "same key: bearer and query",
            every_place(),
            format!("/principal?api_key={user}"),
            vec![bearer(&user)],
            &pass,
        ),
        (
            "same key: everywhere, twice",
            every_place(),
            format!("/principal?api_key={user}&api_key={user}"),
            vec![bearer(&user), bearer(&user), x_key(user.clone())],
            &pass,
        ),
        (
            "over-long bearer",
            KeyExtractor::new(),
            "/principal".into(),
            vec![bearer(&long)],
            &invalid,
        ),
        (
            "over-long bearer is refused before its syntax is read",
            KeyExtractor::new(),
            "/principal".into(),
            vec![auth(format!("Bearer {}", "a b".repeat(200)))],
            &invalid,
        ),
        (
            "over-long header",
            KeyExtractor::new().header(x()),
            "/principal".into(),
            vec![x_key(long.clone())],
            &invalid,
        ),
        (
            "over-long query parameter",
            KeyExtractor::new().query_param("api_key"),
            format!("/principal?api_key={long}"),
            vec![],
            &invalid,
        ),
        (
            "key longer than a lowered cap",
            KeyExtractor::new().max_key_len(101),
            "/principal".into(),
            vec![bearer(&user)],
            &invalid,
        ),
        (
            "key exactly at a lowered cap",
            KeyExtractor::new().max_key_len(102),
            "/principal".into(),
            vec![bearer(&user)],
            &pass,
        ),
    ];
    for (name, extractor, uri, headers, outcome) in &rows {
        let verifier = TestVerifier::store(k.store.clone());
        let app = routes().layer(RequireApiKey::new(verifier.clone()).extractor(extractor.clone()));
        send(&app, uri, headers).await.assert_outcome(outcome, name);
        // Only a key that was found and well-formed is looked up.
        let lookups = usize::from(matches!(outcome, Outcome::Ok(_)));
        assert_eq!(verifier.calls(), lookups, "{name}: lookups");
    }
}

#[tokio::test]
async fn an_over_long_value_is_refused_before_it_is_scanned() {
    let app = routes().layer(
        RequireApiKey::new(MemoryKeyStore::new())
            .extractor(KeyExtractor::new().header(HeaderName::from_static(X_KEY))),
    );
    let mut value = b"\xff".to_vec();
    value.extend_from_slice("a".repeat(600).as_bytes());
    let mut bearer_value = b"Bearer ".to_vec();
    bearer_value.extend_from_slice(&value);
    send(&app, "/principal", &[auth(bearer_value)])
        .await
        .assert_rejected(&INVALID, "over-long, non-ASCII bearer");
    // The cap comes first in a configured header too: 401, not a 400 for its bad bytes.
    send(&app, "/principal", &[x_key(value)])
        .await
        .assert_rejected(&INVALID, "over-long, non-ASCII configured header");
}

// ---------------------------------------------------------------------------------------------
// 3. Valid keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn handlers_receive_the_principal_of_a_valid_key() {
    let k = keys().await;
    let expiring = mint(
        &k.store,
        Owner::user("user-3"),
        NewKey::new("expiring").expires_in(Duration::from_secs(3600)),
    )
    .await;
    let id = |c: &CreatedKey| c.record.id.to_string();
    let rows: Vec<(&str, &CreatedKey, Value)> = vec![
        (
            "/me",
            &k.user,
            json!({"user_id": "user-1", "key_id": id(&k.user), "is_public": false, "expires_at_ms": null}),
        ),
        (
            "/me",
            &k.public_user,
            json!({"user_id": "user-2", "key_id": id(&k.public_user), "is_public": true, "expires_at_ms": null}),
        ),
        (
            "/me",
            &expiring,
            json!({
                "user_id": "user-3",
                "key_id": id(&expiring),
                "is_public": false,
                "expires_at_ms": millis(expiring.record.expires_at),
            }),
        ),
        (
            "/team",
            &k.team,
            json!({"team_id": "team-1", "key_id": id(&k.team), "is_public": false}),
        ),
        (
            "/team",
            &k.public_team,
            json!({"team_id": "team-2", "key_id": id(&k.public_team), "is_public": true}),
        ),
        ("/principal", &k.user, principal_json(&k.user)),
        ("/principal", &k.team, principal_json(&k.team)),
        ("/maybe", &k.user, json!({"user_id": "user-1"})),
    ];
    for (variant, app) in verifier_variants(&k.store) {
        for (route, key, expected) in &rows {
            for round in 1..=2 {
                let ctx = format!(
                    "{variant}, {route}, {}, request {round}",
                    key.record.description
                );
                send(&app, route, &[bearer(&secret(key))])
                    .await
                    .assert_outcome(&Outcome::Ok(expected.clone()), &ctx);
            }
        }
    }
}

#[tokio::test]
async fn the_handler_sees_the_credentials_unless_they_are_stripped() {
    let k = keys().await;
    let user = secret(&k.user);
    let echo = |authorization: Option<String>, header: Option<&str>, uri: &str| json!({"authorization": authorization, "x-stack-api-key": header, "uri": uri});
    let with_query = format!("/echo?a=1&api_key={user}&b=2");
    // (name, uri, headers, what the handler sees when kept, ... when stripped)
    let rows: Vec<(&str, &str, Vec<Hdr>, Value, Value)> = vec![
        (
            "bearer",
            "/echo",
            vec![bearer(&user)],
            echo(Some(format!("Bearer {user}")), None, "/echo"),
            echo(None, None, "/echo"),
        ),
        (
            "configured header",
            "/echo",
            vec![x_key(user.clone())],
            echo(None, Some(&user), "/echo"),
            echo(None, None, "/echo"),
        ),
        (
            "query parameter",
            &with_query,
            vec![],
            echo(None, None, &with_query),
            echo(None, None, "/echo?a=1&b=2"),
        ),
        (
            "everywhere",
            &with_query,
            vec![bearer(&user), x_key(user.clone())],
            echo(Some(format!("Bearer {user}")), Some(&user), &with_query),
            echo(None, None, "/echo?a=1&b=2"),
        ),
        (
            "another scheme is not a credential",
            "/echo",
            vec![auth("Basic dXNlcjpwdw=="), x_key(user.clone())],
            echo(Some("Basic dXNlcjpwdw==".into()), Some(&user), "/echo"),
            echo(Some("Basic dXNlcjpwdw==".into()), None, "/echo"),
        ),
    ];
    for strip in [false, true] {
        let guard = RequireApiKey::new(k.store.clone())
            .extractor(every_place())
            .strip_credentials(strip);
        let cached = RequireApiKey::new(CachedVerifier::new(k.store.clone()))
            .extractor(every_place())
            .strip_credentials(strip);
        // The store answers at once; the cache answers the second request of each row from
        // its digest fast path.
        let apps = [
            ("store", routes().layer(guard)),
            ("cache", routes().layer(cached)),
        ];
        for (verifier, app) in &apps {
            for (name, uri, headers, kept, stripped) in &rows {
                let expected = if strip { stripped } else { kept };
                for attempt in ["first", "second"] {
                    send(app, uri, headers).await.assert_outcome(
                        &Outcome::Ok(expected.clone()),
                        &format!("{name}, strip_credentials({strip}), {verifier}, {attempt}"),
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Optional mode
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn optional_mode_lets_keyless_requests_through_and_still_checks_present_keys() {
    let k = keys().await;
    let user = secret(&k.user);
    let optional = routes().layer(RequireApiKey::new(k.store.clone()).optional());
    let optional_users =
        routes().layer(RequireApiKey::new(k.store.clone()).optional().users_only());
    let down = TestVerifier::failing(None);
    let optional_down = routes().layer(RequireApiKey::new(down.clone()).optional());
    let nobody = Outcome::Ok(json!({"user_id": null}));
    let rows: Vec<(&str, &Router, &str, Vec<Hdr>, Outcome)> = vec![
        ("no key", &optional, "/maybe", vec![], nobody.clone()),
        (
            "another scheme",
            &optional,
            "/maybe",
            vec![auth("Basic dXNlcjpwdw==")],
            nobody.clone(),
        ),
        (
            "valid user key",
            &optional,
            "/maybe",
            vec![bearer(&user)],
            Outcome::Ok(json!({"user_id": "user-1"})),
        ),
        (
            "valid team key, handler takes an optional user",
            &optional,
            "/maybe",
            vec![bearer(&secret(&k.team))],
            nobody.clone(),
        ),
        (
            "unknown key",
            &optional,
            "/maybe",
            vec![bearer(&unknown_key())],
            Outcome::Rejected(INVALID),
        ),
        (
            "malformed key",
            &optional,
            "/maybe",
            vec![bearer(&with_bad_checksum(&user))],
            Outcome::Rejected(INVALID),
        ),
        (
            "bad header syntax",
            &optional,
            "/maybe",
            vec![auth("Bearer a b")],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "team key, users only",
            &optional_users,
            "/maybe",
            vec![bearer(&secret(&k.team))],
            Outcome::Rejected(SCOPE),
        ),
        (
            "no key, handler requires a user",
            &optional,
            "/me",
            vec![],
            Outcome::Rejected(MISSING),
        ),
        (
            "no key, verifier down",
            &optional_down,
            "/maybe",
            vec![],
            nobody.clone(),
        ),
        (
            "key present, verifier down",
            &optional_down,
            "/maybe",
            vec![bearer(&user)],
            Outcome::Rejected(UNAVAILABLE),
        ),
    ];
    for (name, app, uri, headers, outcome) in &rows {
        send(app, uri, headers).await.assert_outcome(outcome, name);
    }
    assert_eq!(down.calls(), 1, "only the request with a key was verified");
}

// ---------------------------------------------------------------------------------------------
// 5. axum extractors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn extractors_without_the_layer_answer_401_never_500() {
    let k = keys().await;
    let unguarded = routes();
    let user = secret(&k.user);
    for route in ["/me", "/team", "/principal"] {
        for headers in [vec![], vec![bearer(&user)]] {
            let ctx = format!("{route} without the layer, {} header(s)", headers.len());
            send(&unguarded, route, &headers)
                .await
                .assert_rejected(&MISSING, &ctx);
        }
    }
    send(&unguarded, "/maybe", &[bearer(&user)])
        .await
        .assert_outcome(
            &Outcome::Ok(json!({"user_id": null})),
            "/maybe without the layer",
        );
}

#[tokio::test]
async fn extractors_of_the_other_kind_answer_403() {
    let k = keys().await;
    let app = routes().layer(RequireApiKey::new(k.store.clone()).any_principal());
    let rows: Vec<(&str, &CreatedKey, Outcome)> = vec![
        ("/me", &k.team, Outcome::Rejected(SCOPE)),
        ("/team", &k.user, Outcome::Rejected(SCOPE)),
        ("/maybe", &k.team, Outcome::Ok(json!({"user_id": null}))),
        ("/principal", &k.team, Outcome::Ok(principal_json(&k.team))),
    ];
    for (route, key, outcome) in &rows {
        let ctx = format!("{route} with the {} key", key.record.description);
        send(&app, route, &[bearer(&secret(key))])
            .await
            .assert_outcome(outcome, &ctx);
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Custom responder
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_custom_responder_replaces_every_refusal() {
    let k = keys().await;
    let teapot = |rejection: &Rejection| {
        Response::builder()
            .status(StatusCode::IM_A_TEAPOT)
            .header("x-status", rejection.status().as_str())
            .body(Body::from(format!("denied: {}", rejection.code())))
            .expect("response")
    };
    let app = routes().layer(
        RequireApiKey::new(k.store.clone())
            .users_only()
            .responder(teapot),
    );
    let down = routes().layer(RequireApiKey::new(TestVerifier::failing(None)).responder(teapot));
    let rows: Vec<(&str, &Router, Vec<Hdr>, &str, &str)> = vec![
        ("no key", &app, vec![], "401", "denied: API_KEY_MISSING"),
        (
            "unknown key",
            &app,
            vec![bearer(&unknown_key())],
            "401",
            "denied: API_KEY_INVALID",
        ),
        (
            "bad syntax",
            &app,
            vec![auth("Bearer a b")],
            "400",
            "denied: INVALID_REQUEST",
        ),
        (
            "team key",
            &app,
            vec![bearer(&secret(&k.team))],
            "403",
            "denied: INSUFFICIENT_SCOPE",
        ),
        (
            "verifier down",
            &down,
            vec![bearer(&secret(&k.user))],
            "503",
            "denied: VERIFIER_UNAVAILABLE",
        ),
    ];
    for (name, app, headers, status, body) in &rows {
        let reply = send(app, "/me", headers).await;
        assert_eq!(reply.status, StatusCode::IM_A_TEAPOT, "{name}");
        assert_eq!(
            reply.header(HeaderName::from_static("x-status")),
            Some(*status),
            "{name}"
        );
        assert_eq!(reply.text(), *body, "{name}");
        for header in [WWW_AUTHENTICATE, RETRY_AFTER, CONTENT_TYPE] {
            assert_eq!(reply.header(header.clone()), None, "{name}: {header}");
        }
    }
    send(&app, "/me", &[bearer(&secret(&k.user))])
        .await
        .assert_ok("valid key through a custom responder");
}

// ---------------------------------------------------------------------------------------------
// 7. Without axum
// ---------------------------------------------------------------------------------------------

/// Guards a plain `tower::service_fn` (no axum) that reports what it found in the extensions.
async fn check_plain_tower_service<V: KeyVerifier>(
    variant: &str,
    layer: RequireApiKey<V>,
    k: &Keys,
) {
    let inner = tower::service_fn(|request: Request<Full<Bytes>>| async move {
        let extensions = request.extensions();
        let seen = json!({
            "user_id": extensions.get::<AuthenticatedUser>().map(|u| u.user_id.to_string()),
            "team_id": extensions.get::<AuthenticatedTeam>().map(|t| t.team_id.to_string()),
            "key_id": extensions.get::<Principal>().map(|p| p.key_id().to_string()),
        });
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen.to_string()))))
    });
    let service = layer.layer(inner);
    let rows: Vec<(&str, Vec<Hdr>, Outcome)> = vec![
        ("no key", vec![], Outcome::Rejected(MISSING)),
        (
            "unknown key",
            vec![bearer(&unknown_key())],
            Outcome::Rejected(INVALID),
        ),
        (
            "user key",
            vec![bearer(&secret(&k.user))],
            Outcome::Ok(json!({
                "user_id": "user-1",
                "team_id": null,
                "key_id": k.user.record.id.to_string(),
            })),
        ),
        (
            "team key",
            vec![bearer(&secret(&k.team))],
            Outcome::Ok(json!({
                "user_id": null,
                "team_id": "team-1",
                "key_id": k.team.record.id.to_string(),
            })),
        ),
    ];
    for (name, headers, outcome) in &rows {
        let response = service
            .clone()
            .oneshot(request("/", headers))
            .await
            .expect("infallible");
        Reply::read(response)
            .await
            .assert_outcome(outcome, &format!("{variant}, {name}"));
    }
}

#[tokio::test]
async fn guards_a_plain_tower_service() {
    let k = keys().await;
    check_plain_tower_service("memory store", RequireApiKey::new(k.store.clone()), &k).await;
    check_plain_tower_service(
        "async verifier",
        RequireApiKey::new(TestVerifier::store(k.store.clone())),
        &k,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 8. Verifier calls through the cache
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_cache_spares_the_verifier_and_malformed_keys_never_reach_it() {
    let k = keys().await;
    let counting = TestVerifier::store(k.store.clone());
    let cache = CachedVerifier::new(counting.clone());
    let app = routes().layer(RequireApiKey::new(cache.clone()));
    let user = secret(&k.user);
    let unknown = unknown_key();
    let pass_user = Outcome::Ok(principal_json(&k.user));
    let invalid = Outcome::Rejected(INVALID);
    // (step, key, outcome, verifier calls so far)
    let steps: Vec<(&str, String, &Outcome, usize)> = vec![
        ("malformed key", with_bad_checksum(&user), &invalid, 0),
        ("garbage", "not-a-key".into(), &invalid, 0),
        ("first request", user.clone(), &pass_user, 1),
        ("second identical request", user.clone(), &pass_user, 1),
        ("third identical request", user.clone(), &pass_user, 1),
        ("malformed key again", with_bad_checksum(&user), &invalid, 1),
        ("unknown key", unknown.clone(), &invalid, 2),
        ("unknown key again", unknown, &invalid, 2),
    ];
    for (step, key, outcome, calls) in &steps {
        send(&app, "/principal", &[bearer(key)])
            .await
            .assert_outcome(outcome, step);
        assert_eq!(counting.calls(), *calls, "{step}: verifier calls");
    }
    // Malformed keys left no trace in the cache either: one valid and one invalid verdict.
    cache.run_pending_tasks();
    let stats = cache.stats();
    let seen = (
        stats.hits,
        stats.negative_hits,
        stats.misses,
        stats.valid_entries,
        stats.invalid_entries,
    );
    assert_eq!(
        seen,
        (2, 1, 2, 1, 1),
        "(hits, negative hits, misses, valid, invalid): {stats:?}"
    );
}

#[tokio::test]
async fn verifier_errors_are_never_cached() {
    let down = TestVerifier::failing(None);
    let app = routes().layer(RequireApiKey::new(CachedVerifier::new(down.clone())));
    let key = unknown_key();
    for round in 1..=3 {
        send(&app, "/principal", &[bearer(&key)])
            .await
            .assert_rejected(&UNAVAILABLE, &format!("request {round}"));
        assert_eq!(down.calls(), round, "request {round}: verifier calls");
    }
}

#[tokio::test]
async fn a_revocation_through_the_store_takes_effect_at_once_behind_the_cache() {
    let k = keys().await;
    let app = routes().layer(RequireApiKey::new(CachedVerifier::new(k.store.clone())));
    let key = [bearer(&secret(&k.user))];
    for round in 1..=2 {
        send(&app, "/principal", &key).await.assert_outcome(
            &Outcome::Ok(principal_json(&k.user)),
            &format!("before revocation, request {round}"),
        );
    }
    k.store.revoke(k.user.record.id).await.expect("revoke");
    send(&app, "/principal", &key)
        .await
        .assert_rejected(&INVALID, "after revocation");
}

#[tokio::test]
async fn concurrent_requests_with_one_new_key_share_one_lookup() {
    let k = keys().await;
    let gate = Arc::new(Semaphore::new(0));
    let verifier = TestVerifier::new(Behaviour::Gated(k.store.clone(), Arc::clone(&gate)));
    let app = routes().layer(RequireApiKey::new(CachedVerifier::new(verifier.clone())));
    let key = secret(&k.user);
    let requests: Vec<_> = (0..8)
        .map(|_| {
            let (app, key) = (app.clone(), key.clone());
            tokio::spawn(async move { send(&app, "/principal", &[bearer(&key)]).await })
        })
        .collect();
    // On this single-threaded runtime, every spawned request runs up to the gated verifier (the
    // first) or the flight it shares (the others) before the gate opens. Should one be late, it
    // finds the verdict cached: the count below cannot be inflated by scheduling.
    while verifier.calls() == 0 {
        tokio::task::yield_now().await;
    }
    for _ in 0..requests.len() {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1);
    for (i, request) in requests.into_iter().enumerate() {
        request.await.expect("request task").assert_outcome(
            &Outcome::Ok(principal_json(&k.user)),
            &format!("request {i}"),
        );
    }
    assert_eq!(
        verifier.calls(),
        1,
        "one lookup for eight concurrent requests"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. A key of a kind the route refuses: refused from the key itself (issue 9, defect 2)
// ---------------------------------------------------------------------------------------------

/// A route's policy, for any verifier.
#[derive(Clone, Copy, Debug)]
enum Route {
    UsersOnly,
    TeamsOnly,
    NoPublicKeys,
}

impl Route {
    /// The policy on `layer`, in optional mode if asked.
    fn apply<V: KeyVerifier>(self, layer: RequireApiKey<V>, optional: bool) -> RequireApiKey<V> {
        let layer = match self {
            Route::UsersOnly => layer.users_only(),
            Route::TeamsOnly => layer.teams_only(),
            Route::NoPublicKeys => layer.allow_public_keys(false),
        };
        if optional {
            layer.optional()
        } else {
            layer
        }
    }
}

/// `key` with the character at `at` replaced by `c`.
fn with_char(key: &str, at: usize, c: char) -> String {
    let mut key = key.to_owned();
    key.replace_range(at..=at, c.encode_utf8(&mut [0; 4]));
    key
}

#[tokio::test]
async fn a_key_of_a_refused_kind_costs_no_cache_read_and_no_verifier_call() {
    let k = keys().await;
    let minted = |kind, public| generated(kind, public).expose_secret().to_owned();
    let team_key = minted(KeyKind::Team, false);
    let public_key = minted(KeyKind::User, true);
    // (name, route, key sent, refusal)
    let rows: Vec<(&str, Route, String, Expect)> = vec![
        (
            "known team key, users only",
            Route::UsersOnly,
            secret(&k.team),
            SCOPE,
        ),
        (
            "freshly minted team key, users only",
            Route::UsersOnly,
            team_key.clone(),
            SCOPE,
        ),
        (
            "freshly minted public team key, users only",
            Route::UsersOnly,
            minted(KeyKind::Team, true),
            SCOPE,
        ),
        (
            "known user key, teams only",
            Route::TeamsOnly,
            secret(&k.user),
            SCOPE,
        ),
        (
            "freshly minted user key, teams only",
            Route::TeamsOnly,
            minted(KeyKind::User, false),
            SCOPE,
        ),
        (
            "known public user key, public keys refused",
            Route::NoPublicKeys,
            secret(&k.public_user),
            SCOPE,
        ),
        (
            "freshly minted public key, public keys refused",
            Route::NoPublicKeys,
            public_key.clone(),
            SCOPE,
        ),
        // A key that breaks the format is malformed on every route, whatever kind it claims:
        // the whole format is checked before the policy, which still costs no I/O.
        (
            "team key with a bad checksum, users only",
            Route::UsersOnly,
            with_bad_checksum(&team_key),
            INVALID,
        ),
        (
            "public key with a bad checksum, public keys refused",
            Route::NoPublicKeys,
            with_bad_checksum(&public_key),
            INVALID,
        ),
        (
            "team key with a secret outside Crockford base32, users only",
            Route::UsersOnly,
            with_char(&team_key, 10, 'U'),
            INVALID,
        ),
        (
            "team key with a character outside b64token, users only",
            Route::UsersOnly,
            with_char(&team_key, 10, '!'),
            BAD_REQUEST,
        ),
    ];
    for (name, route, key, expect) in &rows {
        for optional in [false, true] {
            let ctx = |verifier: &str| format!("{name}, optional: {optional}, {verifier}");

            // Behind a cache, over a store: no cache read (no hit, no miss), no verifier call.
            let counting = TestVerifier::store(k.store.clone());
            let cache = CachedVerifier::new(counting.clone());
            let app = routes().layer(route.apply(RequireApiKey::new(cache.clone()), optional));
            send(&app, "/principal", &[bearer(key)])
                .await
                .assert_rejected(expect, &ctx("cached store"));
            let stats = cache.stats();
            assert_eq!(
                (
                    stats.hits,
                    stats.negative_hits,
                    stats.misses,
                    stats.verifier_calls
                ),
                (0, 0, 0, 0),
                "{}: {stats:?}",
                ctx("cached store")
            );
            assert_eq!(counting.calls(), 0, "{}", ctx("cached store"));

            // A verifier whose digest fast path would answer: it is never asked.
            let fast = Arc::new(FastPathOnly {
                verdict: Verdict::Invalid(keygate::verify::InvalidReason::NotFound),
                cached_asks: AtomicUsize::new(0),
                calls: AtomicUsize::new(0),
            });
            let app =
                routes().layer(route.apply(RequireApiKey::from_arc(Arc::clone(&fast)), optional));
            send(&app, "/principal", &[bearer(key)])
                .await
                .assert_rejected(expect, &ctx("fast path"));
            let asked = (
                fast.cached_asks.load(Ordering::SeqCst),
                fast.calls.load(Ordering::SeqCst),
            );
            assert_eq!(asked, (0, 0), "{}: (cache asks, calls)", ctx("fast path"));

            // A verifier that is down: the refusal is still the route's 403, not a 503.
            let down = TestVerifier::failing(None);
            let app = routes().layer(route.apply(RequireApiKey::new(down.clone()), optional));
            send(&app, "/principal", &[bearer(key)])
                .await
                .assert_rejected(expect, &ctx("verifier down"));
            assert_eq!(down.calls(), 0, "{}", ctx("verifier down"));
        }
    }
}

/// The issue's scenario: a verifier that fails for team keys (Stack Auth answers 400 "team API
/// keys are not enabled" in a project without them, a failure for its circuit breaker) and, after
/// five failures, refuses everything (the breaker is open).
#[derive(Clone)]
struct TripsOnTeamKeys {
    store: MemoryKeyStore,
    failures: Arc<AtomicUsize>,
}

impl KeyVerifier for TripsOnTeamKeys {
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        if self.failures.load(Ordering::SeqCst) >= 5 {
            return Err(VerifyError::new(
                VerifyErrorKind::CircuitOpen,
                "breaker open",
            ));
        }
        if key.kind() == KeyKind::Team {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Err(VerifyError::new(
                VerifyErrorKind::Misconfigured,
                "team API keys are not enabled for this project",
            ));
        }
        self.store.verify(key).await
    }
}

#[tokio::test]
async fn minted_team_keys_on_a_user_route_cannot_trip_the_verifier_for_user_keys() {
    let k = keys().await;
    let verifier = TripsOnTeamKeys {
        store: k.store.clone(),
        failures: Arc::new(AtomicUsize::new(0)),
    };
    let app =
        routes().layer(RequireApiKey::new(CachedVerifier::new(verifier.clone())).users_only());
    for i in 1..=5 {
        let minted = generated(KeyKind::Team, false);
        send(&app, "/me", &[bearer(minted.expose_secret())])
            .await
            .assert_rejected(&SCOPE, &format!("minted team key {i}"));
    }
    assert_eq!(
        verifier.failures.load(Ordering::SeqCst),
        0,
        "no team key went upstream"
    );
    // A valid user key nobody has used yet (so not cached) still gets in.
    send(&app, "/me", &[bearer(&secret(&k.user))])
        .await
        .assert_ok("an uncached user key after five team keys");
}

// ---------------------------------------------------------------------------------------------
// 10. Bearer credentials in loose forms: checked or refused, never let through (issue 9, defect 4)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_bearer_credential_in_any_form_is_checked_or_refused_and_stripped() {
    let k = keys().await;
    let user = secret(&k.user);
    let unknown = unknown_key();
    let ok = |authorization: Option<&str>, header: Option<&str>| {
        Outcome::Ok(
            json!({"authorization": authorization, "x-stack-api-key": header, "uri": "/echo"}),
        )
    };
    let raw = |value: String| (value.clone(), auth(value));
    // (name, headers, outcome with the credentials kept; with stripping, an admitted request
    // reaches the handler with neither header)
    let lower = raw(format!("bearer {user}"));
    let spaces = raw(format!("Bearer    {user}"));
    let leading = raw(format!(" \tBearer {user}"));
    let trailing = raw(format!("Bearer {user} \t"));
    let padded_header = format!("\t{user} ");
    let rows: Vec<(&str, Vec<Hdr>, Outcome)> = vec![
        // Well-formed, or only padded as RFC 9110 §5.5 allows: checked, admitted.
        ("lowercase scheme", vec![lower.1], ok(Some(&lower.0), None)),
        ("several spaces", vec![spaces.1], ok(Some(&spaces.0), None)),
        (
            "leading whitespace",
            vec![leading.1],
            ok(Some(&leading.0), None),
        ),
        (
            "trailing whitespace",
            vec![trailing.1],
            ok(Some(&trailing.0), None),
        ),
        (
            "padded configured header",
            vec![x_key(padded_header.clone())],
            ok(None, Some(&padded_header)),
        ),
        // Recognisably bearer, but not `Bearer 1*SP token`: refused, never another scheme.
        (
            "tab after the scheme",
            vec![auth(format!("Bearer\t{user}"))],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "uppercase scheme and a tab",
            vec![auth(format!("BEARER\t{user}"))],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "space then tab",
            vec![auth(format!("Bearer \t{user}"))],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "tab then space",
            vec![auth(format!("Bearer\t {user}"))],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "leading whitespace and a tab",
            vec![auth(format!("  Bearer\t{user}"))],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "comma after the scheme",
            vec![auth(format!("Bearer,{user}"))],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "scheme alone",
            vec![auth("Bearer")],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "scheme alone, tab",
            vec![auth("bearer\t")],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "unknown key after a tab",
            vec![auth(format!("Bearer\t{unknown}"))],
            Outcome::Rejected(BAD_REQUEST),
        ),
        (
            "tab form next to a valid configured header",
            vec![auth(format!("Bearer\t{user}")), x_key(user.clone())],
            Outcome::Rejected(BAD_REQUEST),
        ),
        // A configured header carries a bare key: anything else in it is checked as a key.
        (
            "configured header holding a bearer credential",
            vec![x_key(format!("Bearer {user}"))],
            Outcome::Rejected(INVALID),
        ),
    ];
    for (name, headers, outcome) in &rows {
        for optional in [false, true] {
            for strip in [false, true] {
                let ctx = format!("{name}, optional: {optional}, strip_credentials({strip})");
                let verifier = TestVerifier::store(k.store.clone());
                let layer = RequireApiKey::new(verifier.clone())
                    .extractor(every_place())
                    .strip_credentials(strip);
                let layer = if optional { layer.optional() } else { layer };
                let app = routes().layer(layer);
                let reply = send(&app, "/echo", headers).await;
                match outcome {
                    Outcome::Ok(kept) => {
                        let expected = if strip {
                            ok(None, None)
                        } else {
                            Outcome::Ok(kept.clone())
                        };
                        reply.assert_outcome(&expected, &ctx);
                        assert_eq!(verifier.calls(), 1, "{ctx}: the key was checked");
                    }
                    // Refused: the handler (and whatever it would pass the headers on to) never
                    // sees the request, so it never sees the credential.
                    Outcome::Rejected(expect) => {
                        reply.assert_rejected(expect, &ctx);
                        assert_eq!(verifier.calls(), 0, "{ctx}: a refusal without a lookup");
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 11. Smaller fixes (issue 9)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_endless_retry_after_is_capped_at_a_day_never_a_panic() {
    let key = unknown_key();
    let day = "86400";
    let rows: Vec<(&str, TestVerifier, Option<DefaultResponder>)> = vec![
        (
            "verifier hint of Duration::MAX",
            TestVerifier::failing(Some(Duration::MAX)),
            None,
        ),
        (
            "responder default of Duration::MAX",
            TestVerifier::failing(None),
            Some(DefaultResponder::default().retry_after(Duration::MAX)),
        ),
        (
            "u64::MAX seconds from the verifier",
            TestVerifier::failing(Some(Duration::from_secs(u64::MAX))),
            Some(DefaultResponder::default().retry_after(Duration::MAX)),
        ),
    ];
    for (name, verifier, responder) in rows {
        let layer = RequireApiKey::new(verifier);
        let app = match responder {
            Some(responder) => routes().layer(layer.responder(responder)),
            None => routes().layer(layer),
        };
        let expect = Expect {
            retry_after: Some(day),
            ..UNAVAILABLE
        };
        send(&app, "/principal", &[bearer(&key)])
            .await
            .assert_rejected(&expect, name);
    }
    assert_eq!(
        keygate::reject::MAX_RETRY_AFTER,
        Duration::from_secs(86_400)
    );
}
