//! `keygate::forward_auth` in process: the answers each proxy relies on (nginx `auth_request`,
//! Traefik/Caddy forward auth with `X-Forwarded-*`, Envoy `ext_authz` with `path_prefix`),
//! trust of forwarded headers, narrowing, preflight, the cache and the limits.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use common::http::{send_request, Reply};
use common::keys::Keys;
use common::verifier::CountingVerifier;
use keygate::forward_auth::{
    ForwardAuth, Require, TrustedProxies, KEY_ID, KEY_TYPE, REASON, REQUIRE, TEAM_ID, USER_ID,
};
use keygate::store::CreatedKey;
use keygate::CachedVerifier;

/// The proxy on this host (trusted by default).
const PROXY: &str = "127.0.0.1:40000";
/// A client that reached keygate directly (never trusted).
const STRANGER: &str = "198.51.100.7:40000";

/// A request to `app` from `peer`, with `headers` and an optional body.
async fn ask(
    app: &Router,
    method: Method,
    uri: &str,
    peer: &str,
    headers: &[(&str, &str)],
    body: Option<Body>,
) -> Reply {
    let mut request = Request::builder().method(method.clone()).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(body.unwrap_or_default()).unwrap();
    let addr: SocketAddr = peer.parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(addr));
    send_request(
        app,
        request,
        format!("{method} {uri} from {peer} {headers:?}"),
    )
    .await
}

/// `GET /v1/authz` from the proxy with `headers`.
async fn get(app: &Router, headers: &[(&str, &str)]) -> Reply {
    ask(app, Method::GET, "/v1/authz", PROXY, headers, None).await
}

fn bearer(key: &CreatedKey) -> String {
    format!("Bearer {}", key.key.expose_secret())
}

fn app_over(keys: &Keys) -> (Router, CountingVerifier) {
    let verifier = CountingVerifier::over(keys.store.clone());
    let app = ForwardAuth::new(CachedVerifier::new(verifier.clone())).router();
    (app, verifier)
}

/// 200, empty body, no-store, and exactly these identity headers (all four present).
#[track_caller]
fn assert_allowed(reply: &Reply, key_id: &str, kind: &str, user: &str, team: &str) {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}: {:?}",
        reply.what,
        reply.text()
    );
    assert!(
        reply.body.is_empty(),
        "{}: body {:?}",
        reply.what,
        reply.text()
    );
    assert_eq!(
        reply.header(CACHE_CONTROL),
        Some("no-store"),
        "{}",
        reply.what
    );
    assert_eq!(reply.header(KEY_ID), Some(key_id), "{}", reply.what);
    assert_eq!(reply.header(KEY_TYPE), Some(kind), "{}", reply.what);
    assert_eq!(reply.header(USER_ID), Some(user), "{}", reply.what);
    assert_eq!(reply.header(TEAM_ID), Some(team), "{}", reply.what);
    assert_eq!(reply.header(REASON), None, "{}", reply.what);
}

/// A refusal: `status`, the reason header, no identity headers.
#[track_caller]
fn assert_refused(reply: &Reply, status: StatusCode, reason: &str) {
    assert_eq!(reply.status, status, "{}: {:?}", reply.what, reply.text());
    assert_eq!(reply.header(REASON), Some(reason), "{}", reply.what);
    assert_eq!(
        reply.header(CACHE_CONTROL),
        Some("no-store"),
        "{}",
        reply.what
    );
    for name in [KEY_ID, KEY_TYPE, USER_ID, TEAM_ID] {
        assert_eq!(reply.header(&name), None, "{}: {name}", reply.what);
    }
    // Headers only by default: nginx would drop its keep-alive connection after a body.
    assert!(
        reply.body.is_empty(),
        "{}: body {:?}",
        reply.what,
        reply.text()
    );
    assert_eq!(reply.header(CONTENT_TYPE), None, "{}", reply.what);
}

#[tokio::test]
async fn valid_keys_get_200_with_every_identity_header_and_never_the_key() {
    let keys = Keys::new().await;
    let (app, _) = app_over(&keys);
    let user = get(&app, &[("authorization", &bearer(&keys.user))]).await;
    assert_allowed(
        &user,
        &keys.user.record.id.to_string(),
        "user",
        "user-1",
        "",
    );
    let team = get(&app, &[("authorization", &bearer(&keys.team))]).await;
    assert_allowed(
        &team,
        &keys.team.record.id.to_string(),
        "team",
        "",
        "team-1",
    );
    for reply in [&user, &team] {
        for value in reply.headers.values() {
            assert!(!value.to_str().unwrap().contains("574ck4u7h"), "{value:?}");
        }
    }
}

#[tokio::test]
async fn missing_invalid_and_revoked_keys_get_401_with_a_challenge_and_reason() {
    let keys = Keys::new().await;
    let (app, verifier) = app_over(&keys);
    let missing = get(&app, &[]).await;
    assert_refused(&missing, StatusCode::UNAUTHORIZED, "API_KEY_MISSING");
    assert_eq!(
        missing.header(WWW_AUTHENTICATE),
        Some("Bearer realm=\"keygate\"")
    );
    let unknown = format!("Bearer {}", common::keys::unknown_secret());
    let invalid = get(&app, &[("authorization", &unknown)]).await;
    assert_refused(&invalid, StatusCode::UNAUTHORIZED, "API_KEY_INVALID");
    assert_eq!(
        invalid.header(WWW_AUTHENTICATE),
        Some("Bearer realm=\"keygate\", error=\"invalid_token\"")
    );
    let garbage = get(&app, &[("authorization", "Bearer not-a-key")]).await;
    assert_refused(&garbage, StatusCode::UNAUTHORIZED, "API_KEY_INVALID");
    let bad_syntax = get(&app, &[("authorization", "Bearer")]).await;
    assert_refused(&bad_syntax, StatusCode::BAD_REQUEST, "INVALID_REQUEST");

    let allowed = get(&app, &[("authorization", &bearer(&keys.user))]).await;
    assert_eq!(allowed.status, StatusCode::OK);
    verifier.revoke(keys.user.record.id).await;
    let revoked = get(&app, &[("authorization", &bearer(&keys.user))]).await;
    assert_refused(&revoked, StatusCode::UNAUTHORIZED, "API_KEY_INVALID");
}

#[tokio::test]
async fn refusal_bodies_are_json_only_when_asked_for() {
    let keys = Keys::new().await;
    let app = ForwardAuth::new(CachedVerifier::new(keys.store.clone()))
        .require(Require::Team)
        .refusal_bodies(true)
        .router();
    let missing = get(&app, &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.header(REASON), Some("API_KEY_MISSING"));
    assert_eq!(missing.header(CONTENT_TYPE), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&missing.body).unwrap();
    assert_eq!(body["code"], "API_KEY_MISSING");
    let wrong_kind = get(&app, &[("authorization", &bearer(&keys.user))]).await;
    assert_eq!(wrong_kind.status, StatusCode::FORBIDDEN);
    let body: serde_json::Value = serde_json::from_slice(&wrong_kind.body).unwrap();
    assert_eq!(body["code"], "INSUFFICIENT_SCOPE");
    // An allowed answer stays empty either way.
    let allowed = get(&app, &[("authorization", &bearer(&keys.team))]).await;
    assert_eq!(allowed.status, StatusCode::OK);
    assert!(allowed.body.is_empty());
}

#[tokio::test]
async fn require_and_the_narrowing_header_refuse_the_wrong_kind_and_never_widen() {
    let keys = Keys::new().await;
    let user = bearer(&keys.user);
    let team = bearer(&keys.team);
    let users_only = ForwardAuth::new(CachedVerifier::new(keys.store.clone()))
        .require(Require::User)
        .router();
    let refused = get(&users_only, &[("authorization", &team)]).await;
    assert_refused(&refused, StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE");
    assert_eq!(
        refused.header(WWW_AUTHENTICATE),
        Some("Bearer error=\"insufficient_scope\"")
    );
    assert_eq!(
        get(&users_only, &[("authorization", &user)]).await.status,
        StatusCode::OK
    );
    // The header cannot widen: `any` or `team` from the client never lets a team key in.
    for asked in ["any", "team", "TEAM"] {
        let reply = get(
            &users_only,
            &[("authorization", &team), (REQUIRE.as_str(), asked)],
        )
        .await;
        assert_refused(&reply, StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE");
    }
    // Contradicting the configured kind refuses every key, the configured kind's too.
    let reply = get(
        &users_only,
        &[("authorization", &user), (REQUIRE.as_str(), "team")],
    )
    .await;
    assert_refused(&reply, StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE");

    // From `any`, the header narrows.
    let any = ForwardAuth::new(CachedVerifier::new(keys.store.clone())).router();
    let narrowed = get(
        &any,
        &[("authorization", &user), (REQUIRE.as_str(), "team")],
    )
    .await;
    assert_refused(&narrowed, StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE");
    let fits = get(
        &any,
        &[("authorization", &team), (REQUIRE.as_str(), "team")],
    )
    .await;
    assert_allowed(
        &fits,
        &keys.team.record.id.to_string(),
        "team",
        "",
        "team-1",
    );
    let unknown = get(
        &any,
        &[("authorization", &team), (REQUIRE.as_str(), "admin")],
    )
    .await;
    assert_refused(&unknown, StatusCode::BAD_REQUEST, "INVALID_REQUEST");
}

#[tokio::test]
async fn public_keys_get_403_unless_allowed() {
    let keys = Keys::new().await;
    let (app, verifier) = app_over(&keys);
    let reply = get(&app, &[("authorization", &bearer(&keys.public_user))]).await;
    assert_refused(&reply, StatusCode::FORBIDDEN, "INSUFFICIENT_SCOPE");
    assert_eq!(
        verifier.calls(),
        0,
        "refused from the prefix, before any lookup"
    );
    let allowing = ForwardAuth::new(CachedVerifier::new(keys.store.clone()))
        .allow_public_keys(true)
        .router();
    let reply = get(&allowing, &[("authorization", &bearer(&keys.public_team))]).await;
    assert_allowed(
        &reply,
        &keys.public_team.record.id.to_string(),
        "team",
        "",
        "team-2",
    );
}

#[tokio::test]
async fn a_verifier_that_is_down_gets_503_with_retry_after() {
    let keys = Keys::new().await;
    let verifier = CountingVerifier::failing(Some(Duration::from_secs(7)));
    let app = ForwardAuth::new(CachedVerifier::new(verifier)).router();
    let reply = get(&app, &[("authorization", &bearer(&keys.user))]).await;
    assert_refused(
        &reply,
        StatusCode::SERVICE_UNAVAILABLE,
        "VERIFIER_UNAVAILABLE",
    );
    assert_eq!(reply.header(RETRY_AFTER), Some("7"));
    assert_eq!(reply.header(WWW_AUTHENTICATE), None);
}

#[tokio::test]
async fn forwarded_headers_count_from_trusted_peers_only() {
    let keys = Keys::new().await;
    let app = ForwardAuth::new(CachedVerifier::new(keys.store.clone()))
        .allow_preflight(true)
        .router();
    // Traefik / Caddy: a GET describing an OPTIONS request without a key.
    let traefik = [
        ("x-forwarded-method", "OPTIONS"),
        ("x-forwarded-uri", "/api/orders?x=1"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "example.com"),
    ];
    let preflight = ask(&app, Method::GET, "/v1/authz", PROXY, &traefik, None).await;
    assert_allowed(&preflight, "", "", "", "");
    // The same headers from a client that reached keygate directly are ignored.
    let forged = ask(&app, Method::GET, "/v1/authz", STRANGER, &traefik, None).await;
    assert_refused(&forged, StatusCode::UNAUTHORIZED, "API_KEY_MISSING");
    // nginx / ingress-nginx.
    let nginx = [
        ("x-original-method", "OPTIONS"),
        ("x-original-url", "https://example.com/api"),
    ];
    let preflight = ask(&app, Method::GET, "/v1/authz", PROXY, &nginx, None).await;
    assert_allowed(&preflight, "", "", "", "");
    let forged = ask(&app, Method::GET, "/v1/authz", STRANGER, &nginx, None).await;
    assert_refused(&forged, StatusCode::UNAUTHORIZED, "API_KEY_MISSING");
    // nginx passes every client header on: a client's X-Forwarded-Method next to nginx's own
    // X-Original-Method makes no preflight.
    let passed_on = [
        ("x-original-method", "GET"),
        ("x-forwarded-method", "OPTIONS"),
    ];
    let forged = ask(&app, Method::GET, "/v1/authz", PROXY, &passed_on, None).await;
    assert_refused(&forged, StatusCode::UNAUTHORIZED, "API_KEY_MISSING");
    // A peer outside a narrower trust list is a stranger too.
    let nobody = ForwardAuth::new(CachedVerifier::new(keys.store.clone()))
        .allow_preflight(true)
        .trusted_proxies(TrustedProxies::parse("10.0.0.0/8").unwrap())
        .router();
    let forged = ask(&nobody, Method::GET, "/v1/authz", PROXY, &traefik, None).await;
    assert_refused(&forged, StatusCode::UNAUTHORIZED, "API_KEY_MISSING");
    // A preflight that carries a key must carry a valid one.
    let unknown = format!("Bearer {}", common::keys::unknown_secret());
    let mut with_key = traefik.to_vec();
    with_key.push(("authorization", &unknown));
    let refused = ask(&app, Method::GET, "/v1/authz", PROXY, &with_key, None).await;
    assert_refused(&refused, StatusCode::UNAUTHORIZED, "API_KEY_INVALID");
    // Without --allow-preflight an OPTIONS needs a key like anything else.
    let strict = ForwardAuth::new(CachedVerifier::new(keys.store.clone())).router();
    let refused = ask(&strict, Method::GET, "/v1/authz", PROXY, &traefik, None).await;
    assert_refused(&refused, StatusCode::UNAUTHORIZED, "API_KEY_MISSING");
}

#[tokio::test]
async fn envoy_style_requests_keep_their_method_and_path_below_the_prefix() {
    let keys = Keys::new().await;
    let app = ForwardAuth::new(CachedVerifier::new(keys.store.clone()))
        .allow_preflight(true)
        .router();
    let user = bearer(&keys.user);
    let unknown = format!("Bearer {}", common::keys::unknown_secret());
    let uri = "/v1/authz/api/x?y=1";
    let headers = |auth: &'static str| [("authorization", auth), ("content-length", "0")];
    let user: &'static str = Box::leak(user.into_boxed_str());
    let unknown: &'static str = Box::leak(unknown.into_boxed_str());
    let ok = ask(&app, Method::POST, uri, STRANGER, &headers(user), None).await;
    assert_allowed(&ok, &keys.user.record.id.to_string(), "user", "user-1", "");
    let refused = ask(&app, Method::POST, uri, STRANGER, &headers(unknown), None).await;
    assert_refused(&refused, StatusCode::UNAUTHORIZED, "API_KEY_INVALID");
    let refused = ask(&app, Method::DELETE, "/v1/authz/", STRANGER, &[], None).await;
    assert_refused(&refused, StatusCode::UNAUTHORIZED, "API_KEY_MISSING");
    // Envoy sends the original method itself: an OPTIONS without a key is a preflight.
    let preflight = ask(
        &app,
        Method::OPTIONS,
        "/v1/authz/api/x",
        STRANGER,
        &[],
        None,
    )
    .await;
    assert_allowed(&preflight, "", "", "", "");
    // Other paths are not the endpoint.
    let elsewhere = ask(&app, Method::GET, "/v2/authz", PROXY, &[], None).await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_request_body_is_never_read() {
    let keys = Keys::new().await;
    let (app, _) = app_over(&keys);
    // A body announced but never sent (nginx forwarding the client's Content-Length): the
    // answer must not wait for it.
    let headers = [
        ("authorization", bearer(&keys.user)),
        ("content-length", "11".into()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        ask(
            &app,
            Method::POST,
            "/v1/authz",
            PROXY,
            &headers,
            Some(Body::new(NeverEnds)),
        ),
    )
    .await
    .expect("answered without reading the body");
    assert_allowed(
        &reply,
        &keys.user.record.id.to_string(),
        "user",
        "user-1",
        "",
    );
}

/// A request body that never delivers a byte.
struct NeverEnds;

impl hyper::body::Body for NeverEnds {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Pending
    }
}

#[tokio::test]
async fn the_cache_answers_repeated_requests_with_one_verifier_call() {
    let keys = Keys::new().await;
    let (app, verifier) = app_over(&keys);
    for _ in 0..20 {
        let reply = get(&app, &[("authorization", &bearer(&keys.team))]).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(verifier.calls(), 1);
}

#[cfg(feature = "governor")]
mod limits {
    use std::num::NonZeroU32;

    use keygate::rate_limit::{PrincipalKey, Quota};

    use super::*;

    fn n(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[tokio::test]
    async fn a_key_over_its_rate_gets_429_or_the_configured_403() {
        let keys = Keys::new().await;
        for (status, label) in [
            (StatusCode::TOO_MANY_REQUESTS, "429"),
            (StatusCode::FORBIDDEN, "403"),
        ] {
            let app = ForwardAuth::new(CachedVerifier::new(keys.store.clone()))
                .rate_limit(n(1), n(2), PrincipalKey::per_key())
                .limit_status(status)
                .router();
            let user = bearer(&keys.user);
            for i in 0..2 {
                let reply = get(&app, &[("authorization", &user)]).await;
                assert_eq!(reply.status, StatusCode::OK, "{label}: request {i}");
            }
            let limited = get(&app, &[("authorization", &user)]).await;
            assert_refused(&limited, status, "RATE_LIMITED");
            let wait: u64 = limited.header(RETRY_AFTER).unwrap().parse().unwrap();
            assert!(wait >= 1, "{label}: Retry-After {wait}");
            // Another key has its own bucket.
            let team = get(&app, &[("authorization", &bearer(&keys.team))]).await;
            assert_eq!(team.status, StatusCode::OK, "{label}");
        }
    }

    #[tokio::test]
    async fn per_owner_limits_share_one_bucket_between_an_owners_keys() {
        use keygate::{KeyStore, NewKey, Owner};

        let keys = Keys::new().await;
        let second = keys
            .store
            .create(Owner::user("user-1"), NewKey::new("second"))
            .await
            .unwrap();
        let app = ForwardAuth::new(CachedVerifier::new(keys.store.clone()))
            .rate_limit(n(1), n(2), PrincipalKey::per_owner())
            .router();
        let first = bearer(&keys.user);
        let second = bearer(&second);
        assert_eq!(
            get(&app, &[("authorization", &first)]).await.status,
            StatusCode::OK
        );
        assert_eq!(
            get(&app, &[("authorization", &second)]).await.status,
            StatusCode::OK
        );
        let limited = get(&app, &[("authorization", &first)]).await;
        assert_refused(&limited, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
        let limited = get(&app, &[("authorization", &second)]).await;
        assert_refused(&limited, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
        // Another owner is not limited.
        let team = get(&app, &[("authorization", &bearer(&keys.team))]).await;
        assert_eq!(team.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn refused_keys_are_counted_per_forwarded_client_only_from_trusted_peers() {
        let keys = Keys::new().await;
        let app = ForwardAuth::new(CachedVerifier::new(keys.store.clone()))
            .refusal_limit(Quota::per_minute(n(2)))
            .router();
        let unknown = format!("Bearer {}", common::keys::unknown_secret());
        let from = |peer: &'static str, client: &'static str| {
            let app = app.clone();
            let unknown = unknown.clone();
            async move {
                let headers = [
                    ("authorization", unknown.as_str()),
                    ("x-forwarded-for", client),
                ];
                ask(&app, Method::GET, "/v1/authz", peer, &headers, None).await
            }
        };
        // Through the trusted proxy: each forwarded client has its own bucket.
        for _ in 0..2 {
            assert_eq!(
                from(PROXY, "203.0.113.1").await.status,
                StatusCode::UNAUTHORIZED
            );
        }
        let throttled = from(PROXY, "203.0.113.1").await;
        assert_refused(&throttled, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
        assert!(throttled.header(RETRY_AFTER).is_some());
        assert_eq!(
            from(PROXY, "203.0.113.2").await.status,
            StatusCode::UNAUTHORIZED
        );
        // A stranger cannot dodge its bucket by rotating X-Forwarded-For…
        for client in ["192.0.2.1", "192.0.2.2"] {
            assert_eq!(
                from(STRANGER, client).await.status,
                StatusCode::UNAUTHORIZED
            );
        }
        let throttled = from(STRANGER, "192.0.2.3").await;
        assert_refused(&throttled, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
        // …nor push a forwarded client into throttling.
        assert_eq!(
            from(PROXY, "192.0.2.3").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
}
