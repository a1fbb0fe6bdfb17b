//! Conformance of `keygate::server::key_server` with Stack Auth's (now Hexclave's) key check
//! endpoints (`…/check`), the disabled-kind switch, and request ids,
//! driven in process with `tower::ServiceExt::oneshot`. Every case runs over every store
//! (`key_server_suite!`: memory, SQLite file and in memory, PostgreSQL), for user keys and team
//! keys from the one kinds table; every response is checked for `cache-control` and one request
//! id under both names (ref §3), every known error for its status, `content-type`, both
//! known-error headers and `{code, error}` body (ref §5). "ref §n" cites
//! `docs/stack-auth-protocol.md`.

#[macro_use]
mod common;

use axum::http::{Method, StatusCode};
use common::key_api::{
    assert_known, assert_no_error_headers, assert_ok, assert_schema_error, config, new_owner,
    read_view, routes, str_field, Api,
};
use common::key_stores::Store;
use common::keys::now_ms;
use common::kinds::{KINDS, USER};
use keygate::key::KeyKind;
use keygate::NewKey;
use serde_json::{json, Value};

key_server_suite!(
    check_of_a_valid_key_answers_the_read_body,
    check_of_a_revoked_key_is_api_key_revoked,
    check_of_an_expired_key_is_api_key_expired,
    a_revoked_and_expired_key_is_api_key_revoked,
    a_key_of_the_other_kind_is_wrong_api_key_type,
    unknown_and_garbage_keys_are_api_key_not_found,
    a_disabled_kind_answers_plain_text_400,
    request_ids_differ_between_requests,
);

// ---------------------------------------------------------------------------------------------
// Check
// ---------------------------------------------------------------------------------------------

/// ref §2 and §4: a valid key's check answers 200 with the key object (no `is_valid`).
async fn check_of_a_valid_key_answers_the_read_body(store: Store) {
    let api = store.api();
    for kind in KINDS {
        let owner = new_owner();
        let expiry = now_ms() + 3_600_000;
        for (created, public) in [
            (api.create(kind, &owner, "valid", Value::Null).await, false),
            (
                api.create(kind, &owner, "expiring", json!(expiry)).await,
                false,
            ),
            (
                api.ok(
                    Method::POST,
                    kind.base,
                    Some(kind.create_body(
                        &owner,
                        "public",
                        Value::Null,
                        json!({ "is_public": true }),
                    )),
                )
                .await,
                true,
            ),
        ] {
            let body = assert_ok(&api.check(kind, str_field(&created, "value")).await);
            assert_eq!(body, read_view(&created), "{kind:?}");
            assert_eq!(body["is_public"], public);
            assert!(body.get("is_valid").is_none(), "{body}");
        }
    }
}

/// ref §5: a revoked key's check is 401 `API_KEY_REVOKED`.
async fn check_of_a_revoked_key_is_api_key_revoked(store: Store) {
    let api = store.api();
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "revoked", Value::Null).await;
        let key = str_field(&created, "value");
        assert_ok(&api.check(kind, key).await);
        let id = str_field(&created, "id");
        assert_ok(
            &api.patch(kind, id, &owner, json!({ "revoked": true }))
                .await,
        );
        let body = assert_known(
            &api.check(kind, key).await,
            StatusCode::UNAUTHORIZED,
            "API_KEY_REVOKED",
        );
        assert_eq!(body["error"], "API key has been revoked.", "{body}");
    }
}

/// ref §5: a key created with an expiry in the past is 401 `API_KEY_EXPIRED`.
async fn check_of_an_expired_key_is_api_key_expired(store: Store) {
    let api = store.api();
    for kind in KINDS {
        let owner = new_owner();
        let past = now_ms() - 60_000;
        let created = api.create(kind, &owner, "expired", json!(past)).await;
        assert_eq!(created["expires_at_millis"], past, "{created}");
        let body = assert_known(
            &api.check(kind, str_field(&created, "value")).await,
            StatusCode::UNAUTHORIZED,
            "API_KEY_EXPIRED",
        );
        assert_eq!(body["error"], "API key has expired.", "{body}");
    }
}

/// ref §2 (check order): revoked is tested before expired.
async fn a_revoked_and_expired_key_is_api_key_revoked(store: Store) {
    let api = store.api();
    for kind in KINDS {
        let owner = new_owner();
        let created = api
            .create(kind, &owner, "both", json!(now_ms() - 60_000))
            .await;
        let id = str_field(&created, "id");
        assert_ok(
            &api.patch(kind, id, &owner, json!({ "revoked": true }))
                .await,
        );
        assert_known(
            &api.check(kind, str_field(&created, "value")).await,
            StatusCode::UNAUTHORIZED,
            "API_KEY_REVOKED",
        );
    }
}

/// ref §5: a key of the other kind is 400 `WRONG_API_KEY_TYPE` with `{expected_type,
/// actual_type}`, and wrong type is tested before revoked.
async fn a_key_of_the_other_kind_is_wrong_api_key_type(store: Store) {
    let api = store.api();
    for kind in KINDS {
        let endpoint = kind.other();
        let owner = new_owner();
        let created = api.create(kind, &owner, "wrong route", Value::Null).await;
        let key = str_field(&created, "value");
        let expected_details = json!({ "expected_type": endpoint.name, "actual_type": kind.name });
        let expected_error = format!(
            "This endpoint is for {} API keys, but a {} API key was provided.",
            endpoint.name, kind.name
        );

        let body = assert_known(
            &api.check(endpoint, key).await,
            StatusCode::BAD_REQUEST,
            "WRONG_API_KEY_TYPE",
        );
        assert_eq!(body["details"], expected_details, "{body}");
        assert_eq!(body["error"], expected_error.as_str(), "{body}");

        let id = str_field(&created, "id");
        assert_ok(
            &api.patch(kind, id, &owner, json!({ "revoked": true }))
                .await,
        );
        let body = assert_known(
            &api.check(endpoint, key).await,
            StatusCode::BAD_REQUEST,
            "WRONG_API_KEY_TYPE",
        );
        assert_eq!(body["details"], expected_details, "{body}");
    }
}

/// ref §1 and §5: whatever is not a stored key (unknown but well-formed, from another server, with a
/// broken checksum, garbage) is 404 `API_KEY_NOT_FOUND`; a body without a string `api_key` is
/// `SCHEMA_ERROR`.
async fn unknown_and_garbage_keys_are_api_key_not_found(store: Store) {
    let api = store.api();
    // Another key server, over a store of its own: its keys are unknown here.
    let elsewhere = Api::new();
    for kind in KINDS {
        let owner = new_owner();
        let foreign = elsewhere.create(kind, &owner, "foreign", Value::Null).await;
        let mine = api.create(kind, &owner, "mine", Value::Null).await;
        let mine = str_field(&mine, "value");
        let mut broken_crc = mine.to_owned();
        let last = if mine.ends_with('0') { "1" } else { "0" };
        broken_crc.replace_range(101..102, last);

        let unknown = kind.unknown_key();
        let candidates = [
            unknown.expose_secret().to_owned(),
            str_field(&foreign, "value").to_owned(),
            broken_crc,
            mine.to_uppercase(),
            format!("{mine} "),
            "sk_abcdefghjkmnpqrstvwxyz0123456789abcdefghjkmn03241a28583294d698f3d316e08cf140cuser1574ck4u7hf5356e6f".into(),
            "not-a-key".into(),
            String::new(),
        ];
        for candidate in candidates {
            let body = assert_known(
                &api.check(kind, &candidate).await,
                StatusCode::NOT_FOUND,
                "API_KEY_NOT_FOUND",
            );
            assert_eq!(body["error"], "API key not found.", "{candidate:?}");
            assert!(
                !body.to_string().contains(&candidate) || candidate.is_empty(),
                "the key is never echoed"
            );
        }
        for body in [
            json!({}),
            json!({ "api_key": 42 }),
            json!({ "api_key": null }),
        ] {
            let reply = api.call(Method::POST, &kind.check(), Some(body)).await;
            assert_schema_error(&reply);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Feature switch (ref §5)
// ---------------------------------------------------------------------------------------------

/// A disabled kind answers Stack Auth's plain-text 400 on every route, even for a stored, valid
/// key; it is not a known error. The other kind keeps working.
async fn a_disabled_kind_answers_plain_text_400(store: Store) {
    for kind in KINDS {
        let owner = new_owner();
        let stored = store
            .create(kind.owner(&owner), NewKey::new("stored before"))
            .await;
        let config = config();
        let config = match kind.kind {
            KeyKind::User => config.user_keys(false),
            _ => config.team_keys(false),
        };
        let api = store.api_with(config);

        let id = stored.record.id.to_string();
        for (method, uri, body) in routes(kind, &id, &owner, stored.key.expose_secret()) {
            let reply = api.call(method, &uri, body).await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.what);
            assert!(
                reply
                    .header("content-type")
                    .is_some_and(|ct| ct.starts_with("text/plain")),
                "{}: content-type {:?}",
                reply.what,
                reply.header("content-type")
            );
            assert_no_error_headers(&reply);
            assert_eq!(reply.text(), kind.disabled, "{}", reply.what);
        }

        let other = kind.other();
        let created = api
            .create(other, &owner, "still enabled", Value::Null)
            .await;
        assert_ok(&api.check(other, str_field(&created, "value")).await);
    }
}

// ---------------------------------------------------------------------------------------------
// Request ids (ref §3)
// ---------------------------------------------------------------------------------------------

/// ref §3: every response has its own request id (the same under both names, which every
/// reply is checked for).
async fn request_ids_differ_between_requests(store: Store) {
    let api = store.api();
    let first = api.call(Method::GET, &USER.list(&new_owner()), None).await;
    let second = api.call(Method::GET, &USER.list(&new_owner()), None).await;
    for name in ["x-stack-request-id", "x-hexclave-request-id"] {
        assert!(first.header(name).is_some(), "{name}");
        assert_ne!(first.header(name), second.header(name), "{name}");
    }
}
