//! `StackAuthClient` (the admin client) against the harness's scripted upstream: Hexclave's
//! response headers, error sources, and a saturating timeout.

mod common;

use std::time::Duration;

use common::stack_auth::{admin, Fixture};
use common::upstream::{json_reply, known_error_with, Script, Upstream};
use keygate::stack_auth::StackAuthError;
use keygate::Owner;
use serde_json::json;

#[tokio::test]
async fn the_admin_client_reads_hexclave_headers_and_keeps_error_sources() {
    use std::error::Error as _;

    let f = Fixture::new();
    let owner = Owner::user(&f.user_id);

    // An error answered as 200 with Hexclave's actual-status header is an error.
    let upstream = Upstream::start(known_error_with(
        200,
        "API_KEY_NOT_FOUND",
        "message",
        &[
            ("x-hexclave-actual-status", "404"),
            ("x-hexclave-known-error", "API_KEY_NOT_FOUND"),
            ("x-stack-actual-status", "200"),
        ],
    ))
    .await;
    let error = admin(upstream.base_url())
        .get(&owner, f.key.key_id())
        .await
        .expect_err("not found");
    assert_eq!(error.status(), Some(404), "{error:?}");
    assert_eq!(error.code(), Some("API_KEY_NOT_FOUND"), "{error:?}");

    // A known-error header that disagrees with the body: the answer makes no sense.
    let upstream = Upstream::start(known_error_with(
        404,
        "API_KEY_NOT_FOUND",
        "message",
        &[
            ("x-hexclave-known-error", "API_KEY_REVOKED"),
            ("x-stack-known-error", "API_KEY_NOT_FOUND"),
        ],
    ))
    .await;
    let error = admin(upstream.base_url())
        .revoke(&owner, f.key.key_id())
        .await
        .expect_err("disagreeing headers");
    assert!(
        matches!(error, StackAuthError::InvalidResponse { .. }),
        "{error:?}"
    );

    // Both header names agreeing, as a current backend sends them.
    let upstream = Upstream::start(known_error_with(
        404,
        "API_KEY_NOT_FOUND",
        "message",
        &[
            ("x-hexclave-known-error", "API_KEY_NOT_FOUND"),
            ("x-stack-known-error", "API_KEY_NOT_FOUND"),
        ],
    ))
    .await;
    let error = admin(upstream.base_url())
        .get(&owner, f.key.key_id())
        .await
        .expect_err("not found");
    assert_eq!(error.code(), Some("API_KEY_NOT_FOUND"), "{error:?}");

    // A 200 that is not a key object keeps its parse error as the source.
    let upstream = Upstream::start(json_reply(200, &json!({ "hello": 1 }))).await;
    let error = admin(upstream.base_url())
        .get(&owner, f.key.key_id())
        .await
        .expect_err("not a key object");
    assert!(
        matches!(error, StackAuthError::InvalidResponse { .. }),
        "{error:?}"
    );
    let source = error.source().expect("source");
    assert!(source.is::<serde_json::Error>(), "{source:?}");

    // A refused connection keeps reqwest's error as the source.
    let upstream = Upstream::start(Script::Refused).await;
    let error = admin(upstream.base_url())
        .list(&owner)
        .await
        .expect_err("refused");
    assert!(matches!(error, StackAuthError::Transport(_)), "{error:?}");
    let source = error.source().expect("source");
    assert!(source.is::<reqwest::Error>(), "{source:?}");
}

/// Regression (issue 9): `Duration::MAX` as the admin client's timeout neither panics nor
/// overflows.
#[tokio::test]
async fn the_admin_clients_timeout_saturates() {
    let f = Fixture::new();
    let upstream = Upstream::start(json_reply(200, &f.key_object())).await;
    let client = admin(upstream.base_url()).timeout(Duration::MAX);
    let record = client
        .get(&Owner::user(&f.user_id), f.key.key_id())
        .await
        .expect("get");
    assert_eq!(record.id, f.key.key_id());
    assert_eq!(upstream.calls(), 1);
    let request = &upstream.requests()[0];
    assert_eq!(request.method, "GET");
    assert_eq!(
        request.path,
        format!(
            "/api/v1/user-api-keys/{}?user_id={}",
            f.key.key_id(),
            f.user_id
        )
    );
}
