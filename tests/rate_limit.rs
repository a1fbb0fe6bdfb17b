//! Rate limits (feature `governor`): per key and per owner with tower_governor inside
//! `RequireApiKey`, keyless requests, and the per-client limit on refused keys outside it.

mod common;

use std::time::Duration;

use axum::http::HeaderName;
use common::app::routes;
use common::http::{auth, bearer, call, send, BAD_REQUEST, INVALID, MISSING};
use common::keys::{secret, unknown_secret};
use common::rate_limit::{governor, limited, quota, refusal_limited, send_from, PERIOD};
use common::verifier::CountingVerifier;
use keygate::rate_limit::{ClientIp, PrincipalKey, RefusalLimitLayer};
use keygate::{NewKey, Owner, RequireApiKey};

const MAX_WAIT: u64 = PERIOD.as_secs();

// ---------------------------------------------------------------------------------------------
// Per key and per owner (tower_governor inside RequireApiKey)
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn per_key_throttles_one_key_and_not_another_key_of_the_same_owner() {
    let verifier = CountingVerifier::new();
    let first = verifier
        .create(Owner::user("alice"), NewKey::new("one"))
        .await;
    let second = verifier
        .create(Owner::user("alice"), NewKey::new("two"))
        .await;
    let app = limited(
        RequireApiKey::new(verifier.clone()),
        PrincipalKey::per_key(),
        2,
    );

    for left in [1, 0] {
        let reply = call(&app, &secret(&first)).await;
        reply.assert_admitted(first.record.id, "first key within its burst");
        assert_eq!(reply.remaining("first key"), left);
        assert_eq!(reply.header("x-ratelimit-limit"), Some("2"));
    }
    call(&app, &secret(&first))
        .await
        .assert_rate_limited(2, MAX_WAIT, "first key, third request");

    let reply = call(&app, &secret(&second)).await;
    reply.assert_admitted(second.record.id, "second key of the same owner");
    assert_eq!(reply.remaining("second key"), 1, "its own full bucket");
    // The per-key limit runs after verification: every request was verified, the 429 too.
    assert_eq!(verifier.calls(), 4);
}

#[tokio::test]
async fn per_owner_throttles_every_key_of_the_owner_together() {
    let verifier = CountingVerifier::new();
    let first = verifier
        .create(Owner::user("alice"), NewKey::new("one"))
        .await;
    let second = verifier
        .create(Owner::user("alice"), NewKey::new("two"))
        .await;
    let other = verifier
        .create(Owner::user("bob"), NewKey::new("bob"))
        .await;
    let app = limited(
        RequireApiKey::new(verifier.clone()),
        PrincipalKey::per_owner(),
        2,
    );

    call(&app, &secret(&first))
        .await
        .assert_admitted(first.record.id, "alice, key one");
    let reply = call(&app, &secret(&second)).await;
    reply.assert_admitted(second.record.id, "alice, key two");
    assert_eq!(reply.remaining("alice's shared bucket"), 0);
    for key in [&first, &second] {
        call(&app, &secret(key)).await.assert_rate_limited(
            2,
            MAX_WAIT,
            "alice's third request, either key",
        );
    }
    let reply = call(&app, &secret(&other)).await;
    reply.assert_admitted(other.record.id, "bob, another owner");
    assert_eq!(reply.remaining("bob"), 1);
    assert_eq!(verifier.calls(), 5);
}

#[tokio::test]
async fn a_user_and_a_team_with_the_same_id_are_different_owners() {
    let verifier = CountingVerifier::new();
    let user = verifier
        .create(Owner::user("acme"), NewKey::new("user"))
        .await;
    let team = verifier
        .create(Owner::team("acme"), NewKey::new("team"))
        .await;
    let app = limited(
        RequireApiKey::new(verifier.clone()).any_principal(),
        PrincipalKey::per_owner(),
        1,
    );

    call(&app, &secret(&user))
        .await
        .assert_admitted(user.record.id, "user acme");
    call(&app, &secret(&team))
        .await
        .assert_admitted(team.record.id, "team acme: its own bucket");
    call(&app, &secret(&user))
        .await
        .assert_rate_limited(1, MAX_WAIT, "user acme, again");
    call(&app, &secret(&team))
        .await
        .assert_rate_limited(1, MAX_WAIT, "team acme, again");
}

#[tokio::test]
async fn refused_requests_cost_no_quota() {
    let verifier = CountingVerifier::new();
    let key = verifier
        .create(Owner::user("alice"), NewKey::new("one"))
        .await;
    let app = limited(
        RequireApiKey::new(verifier.clone()),
        PrincipalKey::per_owner(),
        2,
    );

    for _ in 0..5 {
        call(&app, &unknown_secret())
            .await
            .assert_rejected(&INVALID, "unknown key");
        send(&app, "/principal", &[])
            .await
            .assert_rejected(&MISSING, "no key");
    }
    // A refusal never reaches the limit: not even the shared anonymous bucket is touched.
    for left in [1, 0] {
        let reply = call(&app, &secret(&key)).await;
        reply.assert_admitted(key.record.id, "valid key after refusals");
        assert_eq!(reply.remaining("the full burst is left"), left);
    }
    call(&app, &secret(&key))
        .await
        .assert_rate_limited(2, MAX_WAIT, "third valid request");
    // Five unknown keys and three valid requests were verified; the keyless ones were not.
    assert_eq!(verifier.calls(), 8);
}

#[tokio::test]
async fn keyless_requests_share_one_bucket_or_are_refused() {
    let verifier = CountingVerifier::new();
    let key = verifier
        .create(Owner::user("alice"), NewKey::new("one"))
        .await;
    // Optional mode: keyless requests pass `RequireApiKey` and are limited together.
    let app = limited(
        RequireApiKey::new(verifier.clone()).optional(),
        PrincipalKey::per_key(),
        1,
    );
    send(&app, "/maybe", &[])
        .await
        .assert_ok("first keyless request");
    send(&app, "/maybe", &[]).await.assert_rate_limited(
        1,
        MAX_WAIT,
        "second keyless request: the shared bucket",
    );
    call(&app, &secret(&key))
        .await
        .assert_admitted(key.record.id, "a key has its own bucket");

    // Misordered (the limit outside the guard): refused, not limited together, with
    // `refuse_anonymous`.
    let misordered = routes()
        .layer(RequireApiKey::new(verifier.clone()))
        .layer(governor(PrincipalKey::per_key().refuse_anonymous(), 5));
    let reply = call(&misordered, &secret(&key)).await;
    assert_eq!(reply.status, 401, "{}", reply.text());
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    assert_eq!(reply.code(), "API_KEY_MISSING");
}

// ---------------------------------------------------------------------------------------------
// Refused keys per client (RefusalLimitLayer outside RequireApiKey)
// ---------------------------------------------------------------------------------------------

const CLIENT: &str = "192.0.2.1:40000";
const OTHER_CLIENT: &str = "192.0.2.2:40000";

#[tokio::test]
async fn a_client_that_keeps_sending_refused_keys_is_throttled_before_verification() {
    let verifier = CountingVerifier::new();
    let key = verifier
        .create(Owner::user("alice"), NewKey::new("one"))
        .await;
    let refusals = RefusalLimitLayer::new(quota(3, PERIOD));
    let app = refusal_limited(RequireApiKey::new(verifier.clone()), refusals.clone());
    let valid = [bearer(&secret(&key))];

    // Valid keys cost nothing.
    for _ in 0..5 {
        send_from(&app, CLIENT, "/principal", &valid)
            .await
            .assert_admitted(key.record.id, "valid key");
    }
    // Three refusals: two unknown keys (401) and one malformed header (400).
    for _ in 0..2 {
        send_from(&app, CLIENT, "/principal", &[bearer(&unknown_secret())])
            .await
            .assert_rejected(&INVALID, "unknown key, within the budget");
    }
    send_from(&app, CLIENT, "/principal", &[auth("Bearer two words")])
        .await
        .assert_rejected(&BAD_REQUEST, "malformed header, within the budget");
    assert_eq!(verifier.calls(), 7);

    // The bucket is empty: 429 before any verification, for a valid key too.
    send_from(&app, CLIENT, "/principal", &[bearer(&unknown_secret())])
        .await
        .assert_rate_limited(3, MAX_WAIT, "fourth guess");
    send_from(&app, CLIENT, "/principal", &valid)
        .await
        .assert_rate_limited(3, MAX_WAIT, "a valid key from the throttled client");
    send_from(&app, CLIENT, "/principal", &[])
        .await
        .assert_rate_limited(3, MAX_WAIT, "no key from the throttled client");
    assert_eq!(verifier.calls(), 7, "no verification once throttled");

    // Another client is unaffected.
    send_from(&app, OTHER_CLIENT, "/principal", &valid)
        .await
        .assert_admitted(key.record.id, "another client, valid key");
    send_from(
        &app,
        OTHER_CLIENT,
        "/principal",
        &[bearer(&unknown_secret())],
    )
    .await
    .assert_rejected(&INVALID, "another client, unknown key");
    assert_eq!(verifier.calls(), 9);
    assert_eq!(refusals.clients(), 2);
}

#[tokio::test]
async fn the_throttle_lifts_once_a_refusal_is_allowed_again() {
    let verifier = CountingVerifier::new();
    let key = verifier
        .create(Owner::user("alice"), NewKey::new("one"))
        .await;
    let period = Duration::from_millis(300);
    let app = refusal_limited(
        RequireApiKey::new(verifier.clone()),
        RefusalLimitLayer::new(quota(1, period)),
    );
    send_from(&app, CLIENT, "/principal", &[bearer(&unknown_secret())])
        .await
        .assert_rejected(&INVALID, "the one allowed refusal");
    let wait = send_from(&app, CLIENT, "/principal", &[bearer(&secret(&key))])
        .await
        .assert_rate_limited(1, 1, "throttled");
    assert_eq!(wait, 1, "300 ms rounds up to one second");
    assert_eq!(verifier.calls(), 1);

    tokio::time::sleep(period + Duration::from_millis(50)).await;
    send_from(&app, CLIENT, "/principal", &[bearer(&secret(&key))])
        .await
        .assert_admitted(key.record.id, "after the period");
    // That request paid up front for the refusal it might have been: the next guess is
    // throttled at once, unverified.
    send_from(&app, CLIENT, "/principal", &[bearer(&unknown_secret())])
        .await
        .assert_rate_limited(1, 1, "a guess right after");
    assert_eq!(verifier.calls(), 2);
}

#[tokio::test]
async fn behind_a_proxy_the_client_is_the_last_forwarded_address() {
    let verifier = CountingVerifier::new();
    let header = HeaderName::from_static("x-forwarded-for");
    let refusals =
        RefusalLimitLayer::with_key_extractor(quota(1, PERIOD), ClientIp::header(header));
    let app = refusal_limited(RequireApiKey::new(verifier.clone()), refusals);
    let via = |forged: &str, client: &str| {
        (
            "x-forwarded-for",
            format!("{forged}, {client}").into_bytes(),
        )
    };
    let guess = || bearer(&unknown_secret());

    // Every request comes from the proxy; the client is what the proxy appended.
    send_from(
        &app,
        CLIENT,
        "/principal",
        &[guess(), via("10.0.0.1", "198.51.100.7")],
    )
    .await
    .assert_rejected(&INVALID, "first guess");
    send_from(
        &app,
        CLIENT,
        "/principal",
        &[guess(), via("10.0.0.2", "198.51.100.7")],
    )
    .await
    .assert_rate_limited(1, MAX_WAIT, "a forged first entry does not help");
    send_from(
        &app,
        CLIENT,
        "/principal",
        &[guess(), via("10.0.0.1", "198.51.100.8")],
    )
    .await
    .assert_rejected(&INVALID, "another client behind the same proxy");
    assert_eq!(verifier.calls(), 2);
}

#[tokio::test]
async fn a_handlers_own_400_is_not_a_refusal() {
    let verifier = CountingVerifier::new();
    let key = verifier
        .create(Owner::user("alice"), NewKey::new("one"))
        .await;
    let app = axum::Router::new()
        .route(
            "/bad",
            axum::routing::get(|| async { axum::http::StatusCode::BAD_REQUEST }),
        )
        .layer(RequireApiKey::new(verifier.clone()))
        .layer(RefusalLimitLayer::new(quota(1, PERIOD)));
    for _ in 0..3 {
        let reply = send_from(&app, CLIENT, "/bad", &[bearer(&secret(&key))]).await;
        assert_eq!(
            reply.status, 400,
            "the handler answered: {:?}",
            reply.headers
        );
    }
    assert_eq!(verifier.calls(), 3, "each one verified, none throttled");
}
