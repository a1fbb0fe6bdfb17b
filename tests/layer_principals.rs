//! What handlers get: the principal of a valid key through the axum extractors (or the request
//! extensions of a plain tower service), optional mode, and the extractors' own refusals.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use axum::http::{Request, Response};
use axum::Router;
use bytes::Bytes;
use common::app::{principal_json, routes, verifier_variants};
use common::http::{
    auth, bearer, request, send, Hdr, Outcome, Reply, BAD_REQUEST, INVALID, MISSING, SCOPE,
    UNAVAILABLE,
};
use common::keys::{millis, mint, secret, unknown_secret, with_bad_checksum, Keys};
use common::verifier::CountingVerifier;
use http_body_util::Full;
use keygate::store::CreatedKey;
use keygate::{
    AuthenticatedTeam, AuthenticatedUser, KeyVerifier, NewKey, Owner, Principal, RequireApiKey,
};
use serde_json::{json, Value};
use tower::{Layer, ServiceExt};

// ---------------------------------------------------------------------------------------------
// Valid keys
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn handlers_receive_the_principal_of_a_valid_key() {
    let k = Keys::new().await;
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

// ---------------------------------------------------------------------------------------------
// Optional mode
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn optional_mode_lets_keyless_requests_through_and_still_checks_present_keys() {
    let k = Keys::new().await;
    let user = secret(&k.user);
    let optional = routes().layer(RequireApiKey::new(k.store.clone()).optional());
    let optional_users =
        routes().layer(RequireApiKey::new(k.store.clone()).optional().users_only());
    let down = CountingVerifier::failing(None);
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
            vec![bearer(&unknown_secret())],
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
// axum extractors
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn extractors_without_the_layer_answer_401_never_500() {
    let k = Keys::new().await;
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
    let k = Keys::new().await;
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
// Without axum
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
            vec![bearer(&unknown_secret())],
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
        Reply::read(format!("{variant}, {name}"), response)
            .await
            .assert_outcome(outcome, &format!("{variant}, {name}"));
    }
}

#[tokio::test]
async fn guards_a_plain_tower_service() {
    let k = Keys::new().await;
    check_plain_tower_service("memory store", RequireApiKey::new(k.store.clone()), &k).await;
    check_plain_tower_service(
        "async verifier",
        RequireApiKey::new(CountingVerifier::over(k.store.clone())),
        &k,
    )
    .await;
}
