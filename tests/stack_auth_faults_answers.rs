//! Fault matrix for `StackAuthVerifier` behind `CachedVerifier` and `RequireApiKey`: what the
//! check route answers (verdicts, unusable answers, key objects and the short form,
//! `x-hexclave-*` response headers), and misconfiguration, which is 503, never cached, and
//! logged once.
//!
//! The upstream is the harness's scripted raw-TCP server on loopback: every connection gets the
//! behaviour the case chose, and every complete HTTP request it reads is counted. Each case
//! asserts the client-facing answer (status, `WWW-Authenticate`, body `code`, and `Retry-After`
//! on every 503), the upstream call count (exact, or bounded by `max_retries + 1`), and what the
//! cache kept: verdicts are cached (a second identical request makes no upstream call), errors
//! are not (a second request calls the upstream again, and `stats()` counts the errors and holds
//! no entry).

mod common;

use common::keys::millis_from_now;
use common::logs::LogCapture;
use common::stack_auth::{
    run_all, run_case, Calls, Case, Fixture, Outcome, MAX_ATTEMPTS, SERVER_KEY,
};
use common::upstream::{json_reply, known_error, known_error_with, reply, with, JSON_UTF8};
use serde_json::json;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Unusable answers: 503, not retried
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unusable_answers_are_503_and_not_retried() {
    let f = Fixture::new();
    let object = f.key_object().to_string();
    let oversized = vec![b' '; 1024 * 1024];
    run_all(
        &f,
        &[
            Case::new(
                "200 malformed JSON",
                reply(200, &[("content-type", "application/json")], r#"{"id": "#),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 JSON of the wrong shape",
                json_reply(200, &json!({ "hello": 1 })),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 oversized body (1 MiB)",
                reply(200, &[("content-type", "application/json")], oversized),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 text/html with a key object",
                reply(200, &[("content-type", "text/html")], &object),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "401 known-error header disagrees with body",
                reply(
                    401,
                    &[JSON_UTF8, ("x-stack-known-error", "API_KEY_NOT_FOUND")],
                    json!({ "code": "API_KEY_REVOKED", "error": "API key has been revoked." })
                        .to_string(),
                ),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Verdicts: answered and cached
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn verdicts_are_answered_and_cached() {
    let f = Fixture::new();
    let short_valid = f.short_form();
    run_all(
        &f,
        &[
            Case::new(
                "404 API_KEY_NOT_FOUND",
                known_error(404, "API_KEY_NOT_FOUND", "API key not found."),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "400 WRONG_API_KEY_TYPE",
                known_error(
                    400,
                    "WRONG_API_KEY_TYPE",
                    "This endpoint is for team API keys, but a user API key was provided.",
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "401 API_KEY_REVOKED",
                known_error(401, "API_KEY_REVOKED", "API key has been revoked."),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "401 API_KEY_EXPIRED",
                known_error(401, "API_KEY_EXPIRED", "API key has expired."),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 + x-stack-actual-status: 401 API_KEY_REVOKED",
                reply(
                    200,
                    &[
                        JSON_UTF8,
                        ("x-stack-actual-status", "401"),
                        ("x-stack-known-error", "API_KEY_REVOKED"),
                    ],
                    json!({ "code": "API_KEY_REVOKED", "error": "API key has been revoked." })
                        .to_string(),
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: true, id, user_id}",
                json_reply(200, &short_valid),
                Outcome::Valid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: false}",
                json_reply(200, &json!({ "is_valid": false })),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_key_object_with_is_valid_is_still_read_as_a_key_object() {
    let f = Fixture::new();
    let object = f.key_object();
    let revoked_at = json!({ "manually_revoked_at_millis": 1_745_100_000_000_i64 });
    run_all(
        &f,
        &[
            Case::new(
                "200 key object + is_valid: true",
                json_reply(200, &with(&object, &json!({ "is_valid": true }))),
                Outcome::Valid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 revoked key object",
                json_reply(200, &with(&object, &revoked_at)),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 revoked key object + is_valid: true",
                json_reply(
                    200,
                    &with(&with(&object, &revoked_at), &json!({ "is_valid": true })),
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 expired key object + is_valid: true",
                json_reply(
                    200,
                    &with(
                        &object,
                        &json!({ "is_valid": true, "expires_at_millis": millis_from_now(-60) }),
                    ),
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 key object + is_valid: false",
                json_reply(200, &with(&object, &json!({ "is_valid": false }))),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 key object + is_valid: \"yes\"",
                json_reply(200, &with(&object, &json!({ "is_valid": "yes" }))),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 partial key object (type, no created_at_millis) + is_valid: true",
                json_reply(200, &with(&f.short_form(), &json!({ "type": "user" }))),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn the_short_form_honours_revocation_and_expiry() {
    let f = Fixture::new();
    let short = f.short_form();
    run_all(
        &f,
        &[
            Case::new(
                "200 {is_valid: true} + manually_revoked_at_millis",
                json_reply(
                    200,
                    &with(
                        &short,
                        &json!({ "manually_revoked_at_millis": 1_745_100_000_000_i64 }),
                    ),
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: true} + manually_revoked_at_millis: null",
                json_reply(
                    200,
                    &with(&short, &json!({ "manually_revoked_at_millis": null })),
                ),
                Outcome::Valid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: true} + past expires_at_millis",
                json_reply(
                    200,
                    &with(
                        &short,
                        &json!({ "expires_at_millis": millis_from_now(-60) }),
                    ),
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: true} + future expires_at_millis",
                json_reply(
                    200,
                    &with(
                        &short,
                        &json!({ "expires_at_millis": millis_from_now(3600) }),
                    ),
                ),
                Outcome::Valid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: true} + expires_at_millis: \"soon\"",
                json_reply(200, &with(&short, &json!({ "expires_at_millis": "soon" }))),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: true} + user_id and team_id",
                json_reply(
                    200,
                    &with(&short, &json!({ "team_id": Uuid::new_v4().to_string() })),
                ),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 {is_valid: false} + manually_revoked_at_millis",
                json_reply(
                    200,
                    &json!({ "is_valid": false, "manually_revoked_at_millis": 1 }),
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Hexclave: x-hexclave-* response headers first, x-stack-* requests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn hexclave_response_headers_are_read_first() {
    let f = Fixture::new();
    const REVOKED: &str = "API_KEY_REVOKED";
    const NOT_FOUND: &str = "API_KEY_NOT_FOUND";
    let hex_ke = "x-hexclave-known-error";
    let stack_ke = "x-stack-known-error";
    let hex_as = "x-hexclave-actual-status";
    let stack_as = "x-stack-actual-status";
    let (gate, upstream) = run_case(
        &f,
        &Case::new(
            "401, only x-hexclave-known-error",
            known_error_with(401, REVOKED, "message", &[(hex_ke, REVOKED)]),
            Outcome::Invalid,
            Calls::Exactly(1),
        ),
    )
    .await;
    drop(gate);
    // Requests carry the x-stack-* names only: the ones every backend version understands.
    let request = &upstream.requests()[0];
    assert_eq!(request.header("x-stack-access-type"), Some("server"));
    assert!(
        request
            .headers
            .iter()
            .all(|(n, _)| !n.starts_with("x-hexclave-")),
        "{:?}",
        request.headers
    );
    run_all(
        &f,
        &[
            Case::new(
                "401, only x-stack-known-error",
                known_error_with(401, REVOKED, "message", &[(stack_ke, REVOKED)]),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "401, both known-error headers agreeing",
                known_error_with(
                    401,
                    REVOKED,
                    "message",
                    &[(hex_ke, REVOKED), (stack_ke, REVOKED)],
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "401, x-hexclave-known-error wins over a disagreeing x-stack one",
                known_error_with(
                    401,
                    REVOKED,
                    "message",
                    &[(hex_ke, REVOKED), (stack_ke, NOT_FOUND)],
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "401, x-hexclave-known-error disagrees with the body",
                known_error_with(
                    401,
                    REVOKED,
                    "message",
                    &[(hex_ke, NOT_FOUND), (stack_ke, REVOKED)],
                ),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "401, only x-hexclave-known-error, disagreeing with the body",
                known_error_with(401, REVOKED, "message", &[(hex_ke, NOT_FOUND)]),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 + only x-hexclave-actual-status: 401",
                known_error_with(
                    200,
                    REVOKED,
                    "message",
                    &[(hex_as, "401"), (hex_ke, REVOKED)],
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 + both actual-status headers: 401",
                known_error_with(
                    200,
                    REVOKED,
                    "message",
                    &[(hex_as, "401"), (stack_as, "401")],
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 + x-hexclave-actual-status 401 wins over x-stack-actual-status 500",
                known_error_with(
                    200,
                    REVOKED,
                    "message",
                    &[(hex_as, "401"), (stack_as, "500")],
                ),
                Outcome::Invalid,
                Calls::Exactly(1),
            ),
            Case::new(
                "200 + x-hexclave-actual-status 500 wins over x-stack-actual-status 401",
                known_error_with(
                    200,
                    REVOKED,
                    "message",
                    &[(hex_as, "500"), (stack_as, "401")],
                ),
                Outcome::Unavailable,
                Calls::Exactly(MAX_ATTEMPTS),
            ),
        ],
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Misconfiguration: 503, never cached, logged once
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn misconfiguration_is_503_never_cached_and_logged_once() {
    // `tokio::test` runs on this thread only, so the capture sees every event.
    let capture = LogCapture::start();

    let f = Fixture::new();
    let known = |status, code: &'static str, message, advice| {
        let case = Case::new(
            code,
            known_error(status, code, message),
            Outcome::Unavailable,
            Calls::Exactly(1),
        );
        (case, code, advice)
    };
    let cases = [
        known(
            401,
            "INVALID_SECRET_SERVER_KEY",
            "The secret server key is not valid for this project.",
            "STACK_SECRET_SERVER_KEY",
        ),
        known(
            401,
            "SERVER_AUTHENTICATION_REQUIRED",
            "The secret server key must be provided.",
            "STACK_SECRET_SERVER_KEY",
        ),
        known(
            401,
            "INSUFFICIENT_ACCESS_TYPE",
            "The x-stack-access-type header must be 'server' or 'admin'.",
            "secret server key",
        ),
        known(
            400,
            "CURRENT_PROJECT_NOT_FOUND",
            "The current project could not be found.",
            "STACK_PROJECT_ID",
        ),
        (
            Case::new(
                "400 text/plain: user API keys not enabled",
                reply(
                    400,
                    &[("content-type", "text/plain; charset=utf-8")],
                    "User API keys are not enabled for this project.",
                ),
                Outcome::Unavailable,
                Calls::Exactly(1),
            ),
            "api-keys-disabled",
            "not enabled",
        ),
    ];

    for (case, cause, advice) in &cases {
        let (gate, upstream) = run_case(&f, case).await;
        // A third request with the same misconfiguration: still 503, still asks upstream.
        let third = gate.send().await;
        third.assert_unavailable(case.name);
        assert_eq!(upstream.calls(), 3, "{}", case.name);

        let log = capture.text();
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| l.trim_start().starts_with("ERROR") && l.contains(cause))
            .collect();
        assert_eq!(
            errors.len(),
            1,
            "{cause}: one ERROR advice line over three requests, got {errors:#?}"
        );
        assert!(errors[0].contains(advice), "{cause}: {}", errors[0]);
    }

    let log = capture.text();
    let error_lines = log
        .lines()
        .filter(|l| l.trim_start().starts_with("ERROR"))
        .count();
    assert_eq!(error_lines, cases.len(), "one ERROR line per cause:\n{log}");
    // Neither the caller's key nor the server key reaches the logs.
    assert!(!log.contains(f.key.expose_secret()), "key leaked:\n{log}");
    assert!(!log.contains(SERVER_KEY), "server key leaked:\n{log}");
}
