//! `RequireApiKey`'s refusals, row by row of the design's error table: exact status, exact
//! `WWW-Authenticate` (or its absence), `Retry-After` (or its absence), `content-type`,
//! `cache-control` and the JSON body's `code`; the realm; a custom responder.

mod common;

use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderName, Response, StatusCode};
use axum::Router;
use common::app::{every_place, routes, verifier_variants};
use common::http::{
    auth, bearer, send, x_key, Expect, Hdr, BAD_REQUEST, INVALID, MISSING, SCOPE, UNAVAILABLE,
};
use common::keys::{mint, secret, unknown_secret, with_bad_checksum, Keys};
use common::verifier::CountingVerifier;
use keygate::{DefaultResponder, KeyStore, NewKey, Owner, Rejection, RequireApiKey};

// ---------------------------------------------------------------------------------------------
// No key, a bad key, a bad request
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn requests_without_a_key_get_401_api_key_missing() {
    let k = Keys::new().await;
    let user = secret(&k.user);
    let verifier = CountingVerifier::over(k.store.clone());
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
    let k = Keys::new().await;
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
        ("unknown", unknown_secret()),
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
    let k = Keys::new().await;
    let (user, team) = (secret(&k.user), secret(&k.team));
    let verifier = CountingVerifier::over(k.store.clone());
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
            vec![bearer(&user), x_key(unknown_secret())],
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

// ---------------------------------------------------------------------------------------------
// The verifier is down: 503 with Retry-After
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn verifier_errors_get_503_with_retry_after_and_never_reach_the_handler() {
    let key = unknown_secret();
    let with_default =
        |retry: u64| DefaultResponder::default().retry_after(Duration::from_secs(retry));
    let rows: Vec<(&str, CountingVerifier, Option<DefaultResponder>, &str)> = vec![
        ("no hint", CountingVerifier::failing(None), None, "1"),
        (
            "verifier hint",
            CountingVerifier::failing(Some(Duration::from_secs(7))),
            None,
            "7",
        ),
        (
            "sub-second hint",
            CountingVerifier::failing(Some(Duration::from_millis(200))),
            None,
            "1",
        ),
        (
            "responder default",
            CountingVerifier::failing(None),
            Some(with_default(30)),
            "30",
        ),
        (
            "verifier hint beats responder default",
            CountingVerifier::failing(Some(Duration::from_secs(7))),
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
async fn an_endless_retry_after_is_capped_at_a_day_never_a_panic() {
    let key = unknown_secret();
    let day = "86400";
    let rows: Vec<(&str, CountingVerifier, Option<DefaultResponder>)> = vec![
        (
            "verifier hint of Duration::MAX",
            CountingVerifier::failing(Some(Duration::MAX)),
            None,
        ),
        (
            "responder default of Duration::MAX",
            CountingVerifier::failing(None),
            Some(DefaultResponder::default().retry_after(Duration::MAX)),
        ),
        (
            "u64::MAX seconds from the verifier",
            CountingVerifier::failing(Some(Duration::from_secs(u64::MAX))),
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

// ---------------------------------------------------------------------------------------------
// Realm and custom responders
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_realm_is_named_in_401_challenges_only() {
    let k = Keys::new().await;
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
            vec![bearer(&unknown_secret())],
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
    let k = Keys::new().await;
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

#[tokio::test]
async fn a_custom_responder_replaces_every_refusal() {
    let k = Keys::new().await;
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
    let down =
        routes().layer(RequireApiKey::new(CountingVerifier::failing(None)).responder(teapot));
    let rows: Vec<(&str, &Router, Vec<Hdr>, &str, &str)> = vec![
        ("no key", &app, vec![], "401", "denied: API_KEY_MISSING"),
        (
            "unknown key",
            &app,
            vec![bearer(&unknown_secret())],
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
