//! End to end over loopback HTTP: keygate's key server (`keygate::server::key_server`) plays
//! Stack Auth on `127.0.0.1:<random port>` (the harness's upstream, serving the Router);
//! `StackAuthVerifier` behind a `CachedVerifier` behind `RequireApiKey` guards an axum app, and
//! `StackAuthClient` (the verifier's admin client) manages keys.
//!
//! The upstream counts requests to `…/check`, so every test asserts the exact number of
//! upstream checks: one per uncached key, none on a cache hit (valid or invalid), one after a
//! revocation through the admin client, one per request while the verifier is misconfigured
//! (errors are never cached).

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use common::app::{me, principal, team};
use common::http::{bearer, send, Reply, INVALID, SCOPE};
use common::key_api::{PROJECT, SECRET};
use common::kinds::{Kind, KINDS, TEAM, USER};
use common::upstream::Upstream;
use keygate::key::KeyKind;
use keygate::server::{key_server, KeyServerConfig};
use keygate::stack_auth::{StackAuthClient, StackAuthConfig, StackAuthError, StackAuthVerifier};
use keygate::store::CreatedKey;
use keygate::{CachedVerifier, MemoryKeyStore, NewKey, Owner, RequireApiKey};
use serde_json::json;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The upstream and the guarded app
// ---------------------------------------------------------------------------------------------

/// `/me` (users only), `/team` (teams only) and `/principal`, each behind its own
/// `RequireApiKey` over one shared cache.
fn guarded_app(cache: &CachedVerifier<StackAuthVerifier>) -> Router {
    Router::new()
        .route(
            "/me",
            get(me).layer(RequireApiKey::new(cache.clone()).users_only()),
        )
        .route(
            "/team",
            get(team).layer(RequireApiKey::new(cache.clone()).teams_only()),
        )
        .route(
            "/principal",
            get(principal).layer(RequireApiKey::new(cache.clone())),
        )
}

/// Stack Auth's settings for `upstream`, presenting `secret`.
fn stack_config(upstream: &Upstream, secret: &str) -> StackAuthConfig {
    StackAuthConfig::new(PROJECT, secret).base_url(upstream.base_url())
}

/// Everything one test needs.
struct Env {
    upstream: Upstream,
    admin: StackAuthClient,
    cache: CachedVerifier<StackAuthVerifier>,
    app: Router,
}

impl Env {
    async fn start() -> Self {
        Self::with(
            KeyServerConfig::new(PROJECT, SECRET).expect("config"),
            SECRET,
        )
        .await
    }

    /// A key server with `server` config, and a verifier that presents `secret`.
    async fn with(server: KeyServerConfig, secret: &str) -> Self {
        let upstream = Upstream::serve(key_server(MemoryKeyStore::new(), server)).await;
        let verifier = StackAuthVerifier::builder(stack_config(&upstream, secret))
            .build()
            .expect("verifier");
        let admin = verifier.admin_client();
        let cache = CachedVerifier::new(verifier.clone());
        let app = guarded_app(&cache);
        Self {
            upstream,
            admin,
            cache,
            app,
        }
    }

    /// Upstream `…/check` requests so far.
    fn checks(&self) -> usize {
        self.upstream.calls_to("/check")
    }

    async fn get(&self, path: &str, key: &str) -> Reply {
        send(&self.app, path, &[bearer(key)]).await
    }
}

async fn create(admin: &StackAuthClient, owner: &Owner, new: NewKey) -> CreatedKey {
    let created = admin.create(owner, &new).await.expect("create");
    assert_eq!(&created.record.owner, owner);
    assert_eq!(created.record.id, created.key.key_id());
    assert_eq!(created.key.kind(), owner.kind());
    assert_eq!(created.record.description, new.description);
    created
}

// ---------------------------------------------------------------------------------------------
// The lifecycle through the layer
// ---------------------------------------------------------------------------------------------

/// create → valid (1 check) → cached (0) → revoked through the admin client → 401 at once (1)
/// → expired (1) → valid key on the other kind's route: 403 read from the key (0), then its own
/// route (1), then from the cache (0) → unknown key: 401 (1), again (0) → malformed: 401 (0).
async fn lifecycle(kind: Kind) {
    let env = Env::start().await;
    let owner = kind.new_owner();

    let created = create(&env.admin, &owner, NewKey::new("e2e")).await;
    let key = created.key.expose_secret();
    assert_eq!(env.checks(), 0, "creating a key checks nothing");

    let reply = env.get(kind.route, key).await;
    assert_eq!(reply.status, StatusCode::OK, "{kind:?}: {reply:?}");
    assert_eq!(reply.json()[kind.owner_field], owner.id(), "{reply:?}");
    assert_eq!(
        reply.json()["key_id"],
        created.record.id.to_string(),
        "{reply:?}"
    );
    assert_eq!(
        env.checks(),
        1,
        "{kind:?}: the first request checks upstream once"
    );

    let reply = env.get(kind.route, key).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let reply = env.get("/principal", key).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json()["owner_id"], owner.id(), "{reply:?}");
    assert_eq!(reply.json()["kind"], kind.kind.as_str(), "{reply:?}");
    assert_eq!(env.checks(), 1, "{kind:?}: cache hits cost no check");

    let revoked = env
        .admin
        .revoke(&owner, created.record.id)
        .await
        .expect("revoke");
    assert!(revoked.revoked_at.is_some(), "{revoked:?}");
    assert_eq!(env.checks(), 1, "revoking checks nothing");
    let reply = env.get(kind.route, key).await;
    reply.assert_rejected(&INVALID, &format!("{kind:?}"));
    assert_eq!(
        env.checks(),
        2,
        "{kind:?}: the revocation emptied the cache, so exactly one more check"
    );
    let reply = env.get("/principal", key).await;
    reply.assert_rejected(&INVALID, &format!("{kind:?}"));
    assert_eq!(env.checks(), 2, "{kind:?}: the refusal is cached");

    let past = SystemTime::now() - Duration::from_secs(60);
    let expired = create(&env.admin, &owner, NewKey::new("expired").expires_at(past)).await;
    let reply = env.get(kind.route, expired.key.expose_secret()).await;
    reply.assert_rejected(&INVALID, &format!("{kind:?}"));
    assert_eq!(env.checks(), 3, "{kind:?}: an expired key costs one check");

    let fresh = create(&env.admin, &owner, NewKey::new("fresh")).await;
    let reply = env.get(kind.other().route, fresh.key.expose_secret()).await;
    reply.assert_rejected(&SCOPE, &format!("{kind:?}"));
    assert_eq!(
        env.checks(),
        3,
        "{kind:?}: refused from the key itself, no check"
    );
    let reply = env.get(kind.route, fresh.key.expose_secret()).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json()["key_id"], fresh.record.id.to_string());
    assert_eq!(env.checks(), 4, "{kind:?}: its own route checks it once");
    let reply = env.get(kind.route, fresh.key.expose_secret()).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(env.checks(), 4, "{kind:?}: the valid verdict was cached");

    let unknown = kind.unknown_key();
    let reply = env.get(kind.route, unknown.expose_secret()).await;
    reply.assert_rejected(&INVALID, &format!("{kind:?}"));
    assert_eq!(env.checks(), 5, "{kind:?}: an unknown key costs one check");
    let reply = env.get(kind.route, unknown.expose_secret()).await;
    reply.assert_rejected(&INVALID, &format!("{kind:?}"));
    assert_eq!(env.checks(), 5, "{kind:?}: negative cache");

    let reply = env.get(kind.route, "sk_not_a_stack_auth_key").await;
    reply.assert_rejected(&INVALID, &format!("{kind:?}"));
    assert_eq!(env.checks(), 5, "{kind:?}: a malformed key costs no check");

    let stats = env.cache.stats();
    assert_eq!(stats.verifier_calls, 5, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
}

#[tokio::test]
async fn user_key_lifecycle_through_the_layer() {
    lifecycle(USER).await;
}

#[tokio::test]
async fn team_key_lifecycle_through_the_layer() {
    lifecycle(TEAM).await;
}

// ---------------------------------------------------------------------------------------------
// The admin client
// ---------------------------------------------------------------------------------------------

/// create, list (newest first), get, update_description and revoke round-trip through the key
/// server with Stack Auth's wire format.
#[tokio::test]
async fn admin_client_round_trips() {
    let env = Env::start().await;
    for kind in KINDS {
        let owner = kind.new_owner();
        let first = create(&env.admin, &owner, NewKey::new("first")).await;
        let expiry = SystemTime::now() + Duration::from_secs(3_600);
        let second = create(
            &env.admin,
            &owner,
            NewKey::new("second").public(true).expires_at(expiry),
        )
        .await;
        assert!(second.key.is_public());
        assert!(second.record.is_public);
        let expires_at = second.record.expires_at.expect("expires_at");
        let skew = expiry
            .duration_since(expires_at)
            .unwrap_or_else(|e| e.duration());
        assert!(
            skew < Duration::from_millis(1),
            "expiry round-trips to the ms"
        );
        // Noise: another owner of the same kind.
        create(&env.admin, &kind.new_owner(), NewKey::new("other")).await;

        let listed = env.admin.list(&owner).await.expect("list");
        let ids: Vec<Uuid> = listed.iter().map(|r| r.id).collect();
        assert_eq!(ids, [second.record.id, first.record.id], "newest first");
        assert_eq!(listed[0], second.record, "{kind:?}");
        assert_eq!(listed[1], first.record, "{kind:?}");
        assert_eq!(listed[1].last_four, first.key.last_four());
        assert_eq!(listed[1].revoked_at, None);

        let got = env.admin.get(&owner, first.record.id).await.expect("get");
        assert_eq!(got, first.record, "{kind:?}");

        let renamed = env
            .admin
            .update_description(&owner, first.record.id, "renamed")
            .await
            .expect("update");
        assert_eq!(renamed.description, "renamed");
        assert_eq!(renamed.id, first.record.id);
        let got = env.admin.get(&owner, first.record.id).await.expect("get");
        assert_eq!(got.description, "renamed");
        let listed = env.admin.list(&owner).await.expect("list");
        assert_eq!(listed[1].description, "renamed");

        let revoked = env
            .admin
            .revoke(&owner, first.record.id)
            .await
            .expect("revoke");
        let at = revoked.revoked_at.expect("revoked_at");
        tokio::time::sleep(Duration::from_millis(5)).await;
        let again = env
            .admin
            .revoke(&owner, first.record.id)
            .await
            .expect("revoke again");
        assert_eq!(again.revoked_at, Some(at), "a second revoke keeps the time");
        let got = env.admin.get(&owner, first.record.id).await.expect("get");
        assert_eq!(got.revoked_at, Some(at));
    }
    assert_eq!(env.checks(), 0, "key management never checks");
}

/// A known error from the key API becomes `StackAuthError::Api` with its status and code.
#[tokio::test]
async fn admin_errors_carry_the_known_error_code() {
    let env = Env::start().await;
    for kind in KINDS {
        let owner = kind.new_owner();
        let error = env
            .admin
            .get(&owner, Uuid::new_v4())
            .await
            .expect_err("unknown id");
        match &error {
            StackAuthError::Api {
                status,
                code,
                message,
                ..
            } => {
                assert_eq!(*status, 404, "{error}");
                assert_eq!(code.as_deref(), Some("API_KEY_NOT_FOUND"), "{error}");
                assert_eq!(message, "API key not found.", "{error}");
            }
            other => panic!("expected StackAuthError::Api, got {other:?}"),
        }
        assert_eq!(error.code(), Some("API_KEY_NOT_FOUND"));
        assert_eq!(error.status(), Some(404));

        let error = env
            .admin
            .revoke(&owner, Uuid::new_v4())
            .await
            .expect_err("unknown id");
        assert_eq!(error.code(), Some("API_KEY_NOT_FOUND"), "{error}");

        // As in Stack Auth, a key is read by id alone: another owner in the query still finds
        // it, and the answer names its real owner.
        let created = create(&env.admin, &owner, NewKey::new("mine")).await;
        let found = env
            .admin
            .get(&kind.new_owner(), created.record.id)
            .await
            .expect("found by id");
        assert_eq!(found.owner, owner, "{kind:?}");
    }

    // Another secret: INVALID_SECRET_SERVER_KEY, with the project in the details.
    let wrong = StackAuthClient::new(stack_config(&env.upstream, "ssk_wrong")).expect("client");
    let error = wrong
        .list(&USER.new_owner())
        .await
        .expect_err("wrong secret");
    assert_eq!(error.code(), Some("INVALID_SECRET_SERVER_KEY"), "{error}");
    assert_eq!(error.status(), Some(401), "{error}");
    match &error {
        StackAuthError::Api { details, .. } => {
            assert_eq!(
                details.as_ref().map(|d| d["project_id"].clone()),
                Some(json!(PROJECT))
            );
        }
        other => panic!("expected StackAuthError::Api, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Misconfiguration: 503, never cached
// ---------------------------------------------------------------------------------------------

/// A verifier with the wrong secret server key: the upstream answers 401
/// `INVALID_SECRET_SERVER_KEY`, which is the operator's fault, not the caller's: 503, not 401,
/// and not cached, so the next request asks upstream again.
#[tokio::test]
async fn a_wrong_secret_is_503_and_never_cached() {
    let env = Env::with(
        KeyServerConfig::new(PROJECT, SECRET).expect("config"),
        "ssk_wrong",
    )
    .await;
    let good = StackAuthClient::new(stack_config(&env.upstream, SECRET)).expect("client");
    for (i, kind) in KINDS.into_iter().enumerate() {
        let owner = kind.new_owner();
        let created = create(&good, &owner, NewKey::new("valid")).await;
        let before = env.checks();
        assert_eq!(before, 2 * i);

        let reply = env.get(kind.route, created.key.expose_secret()).await;
        reply.assert_unavailable("misconfigured");
        assert_eq!(env.checks(), before + 1, "{kind:?}: one check, no retry");
        let reply = env.get(kind.route, created.key.expose_secret()).await;
        reply.assert_unavailable("misconfigured");
        assert_eq!(env.checks(), before + 2, "{kind:?}: errors are not cached");
    }
    assert_eq!(env.cache.stats().errors, 4);
}

/// A key server with user keys disabled answers the check with Stack Auth's plain-text 400:
/// 503 for user keys, every time; team keys still work.
#[tokio::test]
async fn disabled_user_keys_upstream_is_503() {
    let env = Env::with(
        KeyServerConfig::new(PROJECT, SECRET)
            .expect("config")
            .user_keys(false),
        SECRET,
    )
    .await;
    let user_key = USER.unknown_key();
    let reply = env.get("/me", user_key.expose_secret()).await;
    reply.assert_unavailable("misconfigured");
    assert_eq!(env.checks(), 1);
    let reply = env.get("/me", user_key.expose_secret()).await;
    reply.assert_unavailable("misconfigured");
    assert_eq!(env.checks(), 2, "errors are not cached");

    let error = env
        .admin
        .create(&USER.new_owner(), &NewKey::new("nope"))
        .await
        .expect_err("user keys are disabled");
    assert_eq!(error.status(), Some(400), "{error}");
    assert_eq!(
        error.code(),
        None,
        "a plain-text error has no code: {error}"
    );

    let owner = TEAM.new_owner();
    let team = create(&env.admin, &owner, NewKey::new("team")).await;
    let reply = env.get("/team", team.key.expose_secret()).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json()["team_id"], owner.id());
    assert_eq!(env.checks(), 3);
}

/// Regression (issue 9, defect 2): a key server without keys of one kind answers every fresh
/// key of that kind (anyone can mint them) with the plain-text 400. Past the breaker's default
/// threshold of five, a valid, uncached key of the other kind is still valid: each check route
/// has its own breaker, and a misconfiguration is not an outage.
#[tokio::test]
async fn keys_of_a_disabled_kind_never_refuse_keys_of_the_other_kind() {
    for disabled in KINDS {
        let enabled = disabled.other();
        let server = KeyServerConfig::new(PROJECT, SECRET).expect("config");
        let server = match disabled.kind {
            KeyKind::User => server.user_keys(false),
            _ => server.team_keys(false),
        };
        let env = Env::with(server, SECRET).await;
        let owner = enabled.new_owner();
        let valid = create(&env.admin, &owner, NewKey::new("other kind")).await;

        for n in 1..=8 {
            let reply = env
                .get("/principal", disabled.unknown_key().expose_secret())
                .await;
            reply.assert_unavailable("misconfigured");
            assert_eq!(env.checks(), n, "{disabled:?} key {n} was checked upstream");
        }
        let reply = env.get("/principal", valid.key.expose_secret()).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{disabled:?} disabled: {reply:?}"
        );
        assert_eq!(reply.json()["owner_id"], owner.id(), "{reply:?}");
        assert_eq!(reply.json()["kind"], enabled.kind.as_str(), "{reply:?}");
        assert_eq!(env.checks(), 9);
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency: single flight over real HTTP
// ---------------------------------------------------------------------------------------------

/// 500 concurrent requests with one valid, uncached key: all 200, one upstream check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_new_key_cost_one_check() {
    let env = Env::start().await;
    let owner = USER.new_owner();
    let created = create(&env.admin, &owner, NewKey::new("hot")).await;
    let key: Arc<str> = Arc::from(created.key.expose_secret());

    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let app = env.app.clone();
            let key = Arc::clone(&key);
            tokio::spawn(async move { send(&app, "/me", &[bearer(&key)]).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        let reply = task.await.expect("task");
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.json()["user_id"], owner.id());
        ok += 1;
    }
    assert_eq!(ok, 500);
    assert_eq!(env.checks(), 1, "500 concurrent misses share one check");
    assert_eq!(env.cache.stats().verifier_calls, 1);
}
