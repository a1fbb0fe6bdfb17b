//! One test per row of the mapping, without sockets.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::key::Deployment;

const JSON: &str = "application/json; charset=utf-8";

fn key(kind: KeyKind) -> ApiKey {
    ApiKey::generate(Uuid::new_v4(), kind, false, Deployment::SelfHosted).expect("rng")
}

/// A fixed "now", so that dates and expiries are exact.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    map
}

fn run(status: u16, pairs: &[(&'static str, &str)], body: &str, key: &ApiKey) -> Classified {
    classify(
        StatusCode::from_u16(status).expect("status"),
        &headers(pairs),
        body.as_bytes(),
        key,
        now(),
    )
}

fn key_object(key: &ApiKey, extra: serde_json::Value) -> String {
    let (kind, owner_field) = match key.kind() {
        KeyKind::User => ("user", "user_id"),
        KeyKind::Team => ("team", "team_id"),
    };
    let mut object = json!({
        "id": key.key_id().to_string(),
        "description": "unit",
        "created_at_millis": 1_745_000_000_000_i64,
        "is_public": false,
        "value": { "last_four": key.last_four() },
        "type": kind,
        owner_field: "owner-1",
    });
    if let (Some(object), Some(extra)) = (object.as_object_mut(), extra.as_object()) {
        object.extend(extra.clone());
    }
    object.to_string()
}

fn known(code: &str) -> String {
    json!({ "code": code, "error": "message" }).to_string()
}

fn invalid(reason: InvalidReason) -> Classified {
    Classified::Verdict(Verdict::Invalid(reason))
}

#[track_caller]
fn assert_valid(classified: &Classified, key: &ApiKey) {
    match classified {
        Classified::Verdict(Verdict::Valid(info)) => {
            assert_eq!(info.key_id, key.key_id());
            assert_eq!(info.owner.kind(), key.kind());
            assert_eq!(info.owner.id(), "owner-1");
        }
        other => panic!("expected valid, got {other:?}"),
    }
}

#[track_caller]
fn assert_upstream(classified: &Classified) {
    assert!(
        matches!(classified, Classified::Upstream(_)),
        "expected an upstream error, got {classified:?}"
    );
}

#[track_caller]
fn assert_misconfigured(classified: &Classified, expected_cause: &str, advice_part: &str) {
    match classified {
        Classified::Misconfigured { cause, advice } => {
            assert_eq!(cause, expected_cause);
            assert!(advice.contains(advice_part), "{advice}");
        }
        other => panic!("expected misconfigured, got {other:?}"),
    }
}

#[track_caller]
fn assert_transient(classified: &Classified, expected: Option<Duration>) {
    match classified {
        Classified::Transient { retry_after, .. } => assert_eq!(*retry_after, expected),
        other => panic!("expected transient, got {other:?}"),
    }
}

#[test]
fn ok_with_a_key_object_is_valid_for_either_kind() {
    for kind in [KeyKind::User, KeyKind::Team] {
        let key = key(kind);
        assert_valid(
            &run(
                200,
                &[("content-type", JSON)],
                &key_object(&key, json!({})),
                &key,
            ),
            &key,
        );
    }
}

#[test]
fn ok_with_a_key_object_of_the_other_kind_revoked_or_expired_is_invalid() {
    let user = key(KeyKind::User);
    let team = key(KeyKind::Team);
    let ct = [("content-type", JSON)];
    assert_eq!(
        run(200, &ct, &key_object(&team, json!({})), &user),
        invalid(InvalidReason::WrongType)
    );
    let revoked = key_object(&user, json!({ "manually_revoked_at_millis": 1 }));
    assert_eq!(
        run(200, &ct, &revoked, &user),
        invalid(InvalidReason::Revoked)
    );
    let past = 1_800_000_000_000_i64 - 1;
    let expired = key_object(&user, json!({ "expires_at_millis": past }));
    assert_eq!(
        run(200, &ct, &expired, &user),
        invalid(InvalidReason::Expired)
    );
    let future = key_object(&user, json!({ "expires_at_millis": past + 2 }));
    assert_valid(&run(200, &ct, &future, &user), &user);
}

#[test]
fn ok_that_is_not_json_or_of_no_known_shape_is_an_upstream_error() {
    let key = key(KeyKind::User);
    let object = key_object(&key, json!({}));
    assert_upstream(&run(200, &[("content-type", "text/html")], &object, &key));
    assert_upstream(&run(200, &[], &object, &key));
    for body in [r#"{"id": "#, r#"{"hello":1}"#, "[]", r#""sk_""#] {
        assert_upstream(&run(200, &[("content-type", JSON)], body, &key));
    }
}

#[test]
fn the_invalid_key_family_is_a_verdict() {
    let key = key(KeyKind::User);
    for (status, code, reason) in [
        (404, "API_KEY_NOT_FOUND", InvalidReason::NotFound),
        (400, "WRONG_API_KEY_TYPE", InvalidReason::WrongType),
        (401, "API_KEY_REVOKED", InvalidReason::Revoked),
        (401, "API_KEY_EXPIRED", InvalidReason::Expired),
    ] {
        let pairs = [("content-type", JSON), ("x-stack-known-error", code)];
        assert_eq!(run(status, &pairs, &known(code), &key), invalid(reason));
        // The header is optional.
        assert_eq!(
            run(status, &[("content-type", JSON)], &known(code), &key),
            invalid(reason)
        );
    }
}

#[test]
fn other_known_errors_are_misconfiguration_named_by_their_code() {
    let key = key(KeyKind::Team);
    for (status, code, advice) in [
        (401, "INVALID_SECRET_SERVER_KEY", "STACK_SECRET_SERVER_KEY"),
        (
            401,
            "INVALID_SECRET_SERVER_KEY",
            "HEXCLAVE_SECRET_SERVER_KEY",
        ),
        (
            401,
            "SERVER_AUTHENTICATION_REQUIRED",
            "STACK_SECRET_SERVER_KEY",
        ),
        (401, "INSUFFICIENT_ACCESS_TYPE", "secret server key"),
        (400, "CURRENT_PROJECT_NOT_FOUND", "STACK_PROJECT_ID"),
        (400, "ACCESS_TYPE_WITHOUT_PROJECT_ID", "HEXCLAVE_PROJECT_ID"),
        (400, "SCHEMA_ERROR", "SCHEMA_ERROR"),
        (400, "SOMETHING_NEW", "SOMETHING_NEW"),
    ] {
        let pairs = [("content-type", JSON), ("x-stack-known-error", code)];
        assert_misconfigured(&run(status, &pairs, &known(code), &key), code, advice);
    }
}

#[test]
fn a_client_error_with_json_that_is_not_a_known_error_is_an_upstream_error() {
    let key = key(KeyKind::User);
    assert_upstream(&run(
        401,
        &[("content-type", JSON)],
        r#"{"message":"no"}"#,
        &key,
    ));
}

#[test]
fn plain_text_not_enabled_is_misconfiguration_of_that_kind() {
    let text = [("content-type", "text/plain; charset=utf-8")];
    for (kind, name) in [(KeyKind::User, "user"), (KeyKind::Team, "team")] {
        let key = key(kind);
        let body = format!(
            "{}{} API keys are not enabled for this project.",
            name[..1].to_uppercase(),
            &name[1..]
        );
        assert_misconfigured(
            &run(400, &text, &body, &key),
            &format!("{name}-api-keys-disabled"),
            &format!("{name} API keys are not enabled"),
        );
    }
    let key = key(KeyKind::User);
    assert_upstream(&run(400, &text, "Bad request", &key));
    assert_upstream(&run(403, &text, "API keys are not enabled", &key));
    assert_upstream(&run(302, &[], "", &key));
}

#[test]
fn server_errors_and_429_are_transient_with_retry_after_in_seconds() {
    let key = key(KeyKind::User);
    for status in [500, 502, 503, 504, 429] {
        assert_transient(&run(status, &[], "", &key), None);
        assert_transient(
            &run(status, &[("retry-after", "30")], "", &key),
            Some(Duration::from_secs(30)),
        );
    }
    assert_transient(
        &run(429, &[("retry-after", " 0 ")], "", &key),
        Some(Duration::ZERO),
    );
    assert_transient(
        &run(429, &[("retry-after", "99999999999999999")], "", &key),
        Some(MAX_RETRY_AFTER),
    );
    for garbage in ["soon", "-5", "1.5", ""] {
        assert_transient(&run(503, &[("retry-after", garbage)], "", &key), None);
    }
}

#[test]
fn retry_after_as_an_http_date() {
    let key = key(KeyKind::User);
    let date = |t: SystemTime| httpdate::fmt_http_date(t);
    let in_a_minute = date(now() + Duration::from_secs(60));
    assert_transient(
        &run(429, &[("retry-after", &in_a_minute)], "", &key),
        Some(Duration::from_secs(60)),
    );
    assert_transient(
        &run(503, &[("retry-after", &date(now()))], "", &key),
        Some(Duration::ZERO),
    );
    // A date that has passed: no hint, so the verifier's own backoff applies.
    let a_minute_ago = date(now() - Duration::from_secs(60));
    assert_transient(&run(503, &[("retry-after", &a_minute_ago)], "", &key), None);
    // Far ahead: capped like the seconds form.
    let next_year = date(now() + Duration::from_secs(365 * 86_400));
    assert_transient(
        &run(503, &[("retry-after", &next_year)], "", &key),
        Some(MAX_RETRY_AFTER),
    );
    // The obsolete forms RFC 9110 says to accept.
    for obsolete in ["Friday, 15-Jan-27 08:00:00 GMT", "Fri Jan 15 08:00:00 2027"] {
        let expected = httpdate::parse_http_date("Fri, 15 Jan 2027 08:00:00 GMT")
            .expect("date")
            .duration_since(now())
            .ok()
            .map(|d| d.min(MAX_RETRY_AFTER));
        assert_transient(&run(503, &[("retry-after", obsolete)], "", &key), expected);
    }
}

#[test]
fn actual_status_overrides_the_status_in_either_header_form() {
    let key = key(KeyKind::User);
    let revoked = known("API_KEY_REVOKED");
    for name in ["x-stack-actual-status", "x-hexclave-actual-status"] {
        let pairs = [("content-type", JSON), (name, "401")];
        assert_eq!(
            run(200, &pairs, &revoked, &key),
            invalid(InvalidReason::Revoked),
            "{name}"
        );
        assert_transient(&run(200, &[(name, "503")], "", &key), None);
        // Not a status: ignored.
        let pairs = [("content-type", JSON), (name, "teapot")];
        assert_upstream(&run(200, &pairs, &revoked, &key));
    }
    // Both: Hexclave's wins.
    let both = |hexclave, stack| {
        [
            ("content-type", JSON),
            ("x-hexclave-actual-status", hexclave),
            ("x-stack-actual-status", stack),
        ]
    };
    assert_eq!(
        run(200, &both("401", "401"), &revoked, &key),
        invalid(InvalidReason::Revoked)
    );
    assert_eq!(
        run(200, &both("401", "500"), &revoked, &key),
        invalid(InvalidReason::Revoked)
    );
    assert_transient(&run(200, &both("500", "401"), &revoked, &key), None);
}

#[test]
fn the_known_error_header_is_read_hexclave_first_and_must_match_the_body() {
    let key = key(KeyKind::User);
    let body = known("API_KEY_REVOKED");
    let case = |pairs: &[(&'static str, &str)]| {
        let mut all = vec![("content-type", JSON)];
        all.extend_from_slice(pairs);
        run(401, &all, &body, &key)
    };
    let revoked = invalid(InvalidReason::Revoked);
    assert_eq!(
        case(&[("x-hexclave-known-error", "API_KEY_REVOKED")]),
        revoked
    );
    assert_eq!(case(&[("x-stack-known-error", "API_KEY_REVOKED")]), revoked);
    assert_eq!(
        case(&[
            ("x-hexclave-known-error", "API_KEY_REVOKED"),
            ("x-stack-known-error", "API_KEY_REVOKED"),
        ]),
        revoked
    );
    // Hexclave's agrees with the body: the stale Stack Auth one is not read.
    assert_eq!(
        case(&[
            ("x-hexclave-known-error", "API_KEY_REVOKED"),
            ("x-stack-known-error", "API_KEY_NOT_FOUND"),
        ]),
        revoked
    );
    // The header that is read disagrees with the body.
    assert_upstream(&case(&[
        ("x-hexclave-known-error", "API_KEY_NOT_FOUND"),
        ("x-stack-known-error", "API_KEY_REVOKED"),
    ]));
    assert_upstream(&case(&[("x-hexclave-known-error", "API_KEY_NOT_FOUND")]));
    assert_upstream(&case(&[("x-stack-known-error", "API_KEY_NOT_FOUND")]));
}

#[test]
fn is_valid_never_overrides_a_key_objects_revocation_or_expiry() {
    let key = key(KeyKind::User);
    let verdict = |extra| interpret_ok(key_object(&key, extra).as_bytes(), &key, now());
    assert!(verdict(json!({ "is_valid": true }))
        .expect("verdict")
        .is_valid());
    assert_eq!(
        verdict(json!({ "is_valid": true, "manually_revoked_at_millis": 1 })),
        Ok(Verdict::Invalid(InvalidReason::Revoked))
    );
    assert_eq!(
        verdict(json!({ "is_valid": true, "expires_at_millis": 1 })),
        Ok(Verdict::Invalid(InvalidReason::Expired))
    );
    assert_eq!(
        verdict(json!({ "is_valid": false })),
        Ok(Verdict::Invalid(InvalidReason::NotFound))
    );
    assert!(verdict(json!({ "is_valid": null })).is_err());
}

#[test]
fn the_short_form_honours_revocation_and_expiry_and_refuses_nonsense() {
    let key = key(KeyKind::User);
    let verdict = |body: serde_json::Value| interpret_ok(body.to_string().as_bytes(), &key, now());
    assert!(verdict(json!({ "is_valid": true, "user_id": "u1" }))
        .expect("verdict")
        .is_valid());
    assert_eq!(
        verdict(json!({ "is_valid": true, "user_id": "u1", "manually_revoked_at_millis": 5 })),
        Ok(Verdict::Invalid(InvalidReason::Revoked))
    );
    assert_eq!(
        verdict(json!({ "is_valid": true, "user_id": "u1", "expires_at_millis": 5 })),
        Ok(Verdict::Invalid(InvalidReason::Expired))
    );
    assert_eq!(
        verdict(json!({ "is_valid": true, "team_id": "t1" })),
        Ok(Verdict::Invalid(InvalidReason::WrongType))
    );
    for nonsense in [
        json!({ "is_valid": true, "user_id": "u1", "team_id": "t1" }),
        json!({ "is_valid": true, "user_id": 7 }),
        json!({ "is_valid": true, "user_id": "u1", "expires_at_millis": "soon" }),
        json!({ "is_valid": true, "user_id": "u1", "manually_revoked_at_millis": true }),
        json!({ "is_valid": true, "user_id": "u1", "is_public": "no" }),
        json!({ "is_valid": true, "user_id": "u1", "type": "user" }),
        json!([{ "is_valid": true, "user_id": "u1" }]),
    ] {
        assert!(verdict(nonsense.clone()).is_err(), "{nonsense}");
    }
}
