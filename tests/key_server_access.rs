//! Conformance of `keygate::server::key_server` with Stack Auth's (now Hexclave's) server access
//! rules: access type, project, secret server key, under every request-header family
//! (`x-stack-*`, `x-hexclave-*`, both with conflicting values, mixed), the config's own checks,
//! and the override-error-status header,
//! driven in process with `tower::ServiceExt::oneshot`. Every case runs over every store
//! (`key_server_suite!`: memory, SQLite file and in memory, PostgreSQL), for user keys and team
//! keys from the one kinds table; every response is checked for `cache-control` and one request
//! id under both names (ref §3), every known error for its status, `content-type`, both
//! known-error headers and `{code, error}` body (ref §5). "ref §n" cites
//! `docs/stack-auth-protocol.md`.

#[macro_use]
mod common;

use axum::http::{Method, StatusCode};
use common::http::Reply;
use common::key_api::{
    assert_known, assert_known_error_body, assert_ok, config, new_owner, read_view, routes,
    str_field, FAMILIES, JSON_CT, OTHER_PROJECT, PROJECT, SECRET, SERVER_AUTH, WRONG_SECRET,
};
use common::key_stores::Store;
use common::kinds::KINDS;
use keygate::key::KeyKind;
use keygate::server::{KeyServerConfig, KeyServerConfigError};
use serde_json::{json, Value};

key_server_suite!(
    every_route_requires_server_access,
    server_access_is_admitted_under_every_header_family,
    no_access_headers_is_access_type_required,
    a_credential_without_access_type_is_project_key_without_access_type,
    override_error_status_answers_every_4xx_as_200,
);

// ---------------------------------------------------------------------------------------------
// Server access (ref §3, §5)
// ---------------------------------------------------------------------------------------------

/// One way of getting server access wrong, and Stack Auth's answer to it.
struct AuthCase {
    case: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: StatusCode,
    code: &'static str,
}

/// ref §3 and §5: every route of both kinds refuses anything but server access for this project
/// with this secret, and does nothing, under every header family.
async fn every_route_requires_server_access(store: Store) {
    let api = store.api();
    let cases = [
        AuthCase {
            case: "no secret server key",
            headers: &[
                ("x-stack-access-type", "server"),
                ("x-stack-project-id", PROJECT),
            ],
            status: StatusCode::UNAUTHORIZED,
            code: "SERVER_AUTHENTICATION_REQUIRED",
        },
        AuthCase {
            // As in Stack Auth, an empty header is no header.
            case: "empty secret server key",
            headers: &[
                ("x-stack-access-type", "server"),
                ("x-stack-project-id", PROJECT),
                ("x-stack-secret-server-key", ""),
            ],
            status: StatusCode::UNAUTHORIZED,
            code: "SERVER_AUTHENTICATION_REQUIRED",
        },
        AuthCase {
            case: "wrong secret server key",
            headers: &[
                ("x-stack-access-type", "server"),
                ("x-stack-project-id", PROJECT),
                ("x-stack-secret-server-key", WRONG_SECRET),
            ],
            status: StatusCode::UNAUTHORIZED,
            code: "INVALID_SECRET_SERVER_KEY",
        },
        AuthCase {
            case: "the secret server key cut short",
            headers: &[
                ("x-stack-access-type", "server"),
                ("x-stack-project-id", PROJECT),
                ("x-stack-secret-server-key", "ssk_keygate_conformance"),
            ],
            status: StatusCode::UNAUTHORIZED,
            code: "INVALID_SECRET_SERVER_KEY",
        },
        AuthCase {
            case: "another project",
            headers: &[
                ("x-stack-access-type", "server"),
                ("x-stack-project-id", OTHER_PROJECT),
                ("x-stack-secret-server-key", SECRET),
            ],
            status: StatusCode::BAD_REQUEST,
            code: "CURRENT_PROJECT_NOT_FOUND",
        },
        AuthCase {
            case: "client access",
            headers: &[
                ("x-stack-access-type", "client"),
                ("x-stack-project-id", PROJECT),
                ("x-stack-secret-server-key", SECRET),
            ],
            status: StatusCode::UNAUTHORIZED,
            code: "INSUFFICIENT_ACCESS_TYPE",
        },
        AuthCase {
            case: "bogus access type",
            headers: &[
                ("x-stack-access-type", "root"),
                ("x-stack-project-id", PROJECT),
                ("x-stack-secret-server-key", SECRET),
            ],
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_ACCESS_TYPE",
        },
        AuthCase {
            case: "access type without project id",
            headers: &[
                ("x-stack-access-type", "server"),
                ("x-stack-secret-server-key", SECRET),
            ],
            status: StatusCode::BAD_REQUEST,
            code: "ACCESS_TYPE_WITHOUT_PROJECT_ID",
        },
    ];
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "guarded", Value::Null).await;
        let id = str_field(&created, "id");
        let key = str_field(&created, "value");
        for family in FAMILIES {
            for AuthCase {
                case,
                headers,
                status,
                code,
            } in &cases
            {
                for (method, uri, body) in routes(kind, id, &owner, key) {
                    let reply = api.send(family, headers, method, &uri, body).await;
                    let error = assert_known(&reply, *status, code);
                    match *code {
                        "INVALID_SECRET_SERVER_KEY" => {
                            assert_eq!(
                                error["details"]["project_id"], PROJECT,
                                "{family:?} {case}: {error}"
                            );
                        }
                        "INSUFFICIENT_ACCESS_TYPE" => {
                            assert_eq!(
                                error["details"]["actual_access_type"], "client",
                                "{family:?} {case}: {error}"
                            );
                        }
                        "CURRENT_PROJECT_NOT_FOUND" => {
                            assert_eq!(
                                error["details"]["project_id"], OTHER_PROJECT,
                                "{family:?} {case}: {error}"
                            );
                        }
                        _ => {}
                    }
                    for secret in [SECRET, WRONG_SECRET] {
                        assert!(
                            !reply.text().contains(secret),
                            "{family:?} {case}: secret echoed"
                        );
                    }
                }
            }
        }
        // None of the refused requests did anything.
        assert_eq!(api.list_len(kind, &owner).await, 1, "{kind:?}");
        assert_eq!(
            api.read(kind, id, &owner).await,
            read_view(&created),
            "{kind:?}"
        );
    }
}

/// ref §3: server access is admitted under either header family, with both (the `x-hexclave-*`
/// value winning over a wrong `x-stack-*` one), and mixed; every route works.
async fn server_access_is_admitted_under_every_header_family(store: Store) {
    let api = store.api();
    for family in FAMILIES {
        for kind in KINDS {
            let owner = new_owner();
            let body = kind.create_body(&owner, "family", Value::Null, json!({}));
            let created = assert_ok(
                &api.call_as(family, Method::POST, kind.base, Some(body))
                    .await,
            );
            let id = str_field(&created, "id");
            let key = str_field(&created, "value");
            assert_eq!(created[kind.owner_field], owner.as_str(), "{family:?}");

            let list = assert_ok(
                &api.call_as(family, Method::GET, &kind.list(&owner), None)
                    .await,
            );
            assert_eq!(list["items"], json!([read_view(&created)]), "{family:?}");
            let read = assert_ok(
                &api.call_as(family, Method::GET, &kind.item(id, &owner), None)
                    .await,
            );
            assert_eq!(read, read_view(&created), "{family:?}");
            let check = json!({ "api_key": key });
            let checked = assert_ok(
                &api.call_as(family, Method::POST, &kind.check(), Some(check.clone()))
                    .await,
            );
            assert_eq!(checked, read_view(&created), "{family:?}");
            let revoke = json!({ "revoked": true });
            let revoked = assert_ok(
                &api.call_as(family, Method::PATCH, &kind.item(id, &owner), Some(revoke))
                    .await,
            );
            assert!(revoked["manually_revoked_at_millis"].is_i64(), "{revoked}");
            assert_known(
                &api.call_as(family, Method::POST, &kind.check(), Some(check))
                    .await,
                StatusCode::UNAUTHORIZED,
                "API_KEY_REVOKED",
            );
        }
    }
}

/// Without any access header at all, Stack Auth answers `ACCESS_TYPE_REQUIRED` (the auth object
/// is null and the route requires one). An empty credential header counts as absent, and a
/// user's access token is not a project credential.
async fn no_access_headers_is_access_type_required(store: Store) {
    let api = store.api();
    let cases: [&[(&str, &str)]; 3] = [
        &[],
        &[("x-stack-secret-server-key", "")],
        &[("x-stack-access-token", "eyJhbGciOiJIUzI1NiJ9.e30.c2ln")],
    ];
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "guarded", Value::Null).await;
        let id = str_field(&created, "id");
        for family in FAMILIES {
            for case in cases {
                for (method, uri, body) in routes(kind, id, &owner, str_field(&created, "value")) {
                    let reply = api.send(family, case, method, &uri, body).await;
                    assert_known(&reply, StatusCode::BAD_REQUEST, "ACCESS_TYPE_REQUIRED");
                }
            }
        }
    }
}

/// ref §3: a credential header (a project key or an admin token, under either name) without an
/// access type is `PROJECT_KEY_WITHOUT_ACCESS_TYPE`, before anything else; an empty access type
/// counts as none.
async fn a_credential_without_access_type_is_project_key_without_access_type(store: Store) {
    let api = store.api();
    let credentials = [
        ("x-stack-secret-server-key", SECRET),
        ("x-stack-publishable-client-key", "pck_keygate_conformance"),
        ("x-stack-super-secret-admin-key", "sak_keygate_conformance"),
        (
            "x-stack-admin-access-token",
            "eyJhbGciOiJIUzI1NiJ9.e30.c2ln",
        ),
    ];
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "guarded", Value::Null).await;
        let id = str_field(&created, "id");
        for family in FAMILIES {
            for credential in credentials {
                for access_type in [None, Some("")] {
                    for (method, uri, body) in
                        routes(kind, id, &owner, str_field(&created, "value"))
                    {
                        let mut headers = vec![("x-stack-project-id", PROJECT), credential];
                        if let Some(access_type) = access_type {
                            headers.push(("x-stack-access-type", access_type));
                        }
                        let reply = api.send(family, &headers, method, &uri, body).await;
                        assert_known(
                            &reply,
                            StatusCode::BAD_REQUEST,
                            "PROJECT_KEY_WITHOUT_ACCESS_TYPE",
                        );
                    }
                }
            }
        }
        assert_eq!(
            api.list_len(kind, &owner).await,
            1,
            "{kind:?}: nothing created"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The config refuses what would admit everyone
// ---------------------------------------------------------------------------------------------

/// Issue 9, defect 3: a key server whose secret server key is empty admitted everyone (an empty
/// `STACK_SECRET_SERVER_KEY=` did it to the example). A config that would admit everyone, or
/// anyone who guesses a short secret, or that names no project, is refused when it is built.
#[test]
fn a_config_with_an_empty_or_short_secret_is_refused() {
    assert_eq!(KeyServerConfig::MIN_SECRET_SERVER_KEY_LEN, 16);
    let refused = [
        (PROJECT, "", KeyServerConfigError::EmptySecretServerKey),
        (PROJECT, "   ", KeyServerConfigError::EmptySecretServerKey),
        (
            PROJECT,
            "ssk_",
            KeyServerConfigError::SecretServerKeyTooShort { min: 16 },
        ),
        (
            PROJECT,
            "0123456789abcde",
            KeyServerConfigError::SecretServerKeyTooShort { min: 16 },
        ),
        (
            PROJECT,
            "ssk_keygate_conformance\n",
            KeyServerConfigError::UnsendableSecretServerKey,
        ),
        ("", SECRET, KeyServerConfigError::EmptyProjectId),
    ];
    for (project, secret, expected) in refused {
        let error = KeyServerConfig::new(project, secret)
            .err()
            .unwrap_or_else(|| panic!("{project:?} / {secret:?} must be refused"));
        assert_eq!(error, expected, "{project:?} / {secret:?}");
        assert!(!error.to_string().is_empty());
    }
    assert!(KeyServerConfig::new(PROJECT, "0123456789abcdef").is_ok());
    assert!(KeyServerConfig::new(PROJECT, SECRET).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Override error status (ref §3)
// ---------------------------------------------------------------------------------------------

/// ref §3: with the override-error-status header (under either name, as Stack's SDK sends it),
/// every 4xx is answered 200 with the real status in the actual-status header under both names;
/// body and known-error headers are unchanged. A success is left alone.
async fn override_error_status_answers_every_4xx_as_200(store: Store) {
    for name in [
        "x-stack-override-error-status",
        "x-hexclave-override-error-status",
    ] {
        for kind in KINDS {
            let config = match kind.kind {
                KeyKind::User => config().team_keys(false),
                _ => config().user_keys(false),
            };
            let api = store.api_with(config);
            let with = |headers: &[(&'static str, &'static str)]| {
                let mut headers = headers.to_vec();
                headers.extend([JSON_CT, (name, "true")]);
                headers
            };
            let auth = with(&SERVER_AUTH);
            let owner = new_owner();

            let body = kind.create_body(&owner, "overridden", Value::Null, json!({}));
            let reply = api
                .raw(Method::POST, kind.base, &auth, Some(&body.to_string()))
                .await;
            let created = assert_ok(&reply);

            let unknown = json!({ "api_key": "not-a-key" }).to_string();
            let reply = api
                .raw(Method::POST, &kind.check(), &auth, Some(&unknown))
                .await;
            assert_overridden(&reply, StatusCode::NOT_FOUND);
            assert_known_error_body(&reply, "API_KEY_NOT_FOUND");

            let reply = api
                .raw(Method::POST, &kind.check(), &auth, Some("{}"))
                .await;
            assert_overridden(&reply, StatusCode::BAD_REQUEST);
            assert_known_error_body(&reply, "SCHEMA_ERROR");

            let wrong = with(&[
                ("x-stack-access-type", "server"),
                ("x-stack-project-id", PROJECT),
                ("x-stack-secret-server-key", WRONG_SECRET),
            ]);
            let reply = api.raw(Method::GET, &kind.list(&owner), &wrong, None).await;
            assert_overridden(&reply, StatusCode::UNAUTHORIZED);
            assert_known_error_body(&reply, "INVALID_SECRET_SERVER_KEY");

            // The other kind is disabled: a plain-text 400, overridden too.
            let other = kind.other();
            let reply = api.raw(Method::GET, &other.list(&owner), &auth, None).await;
            assert_overridden(&reply, StatusCode::BAD_REQUEST);
            assert_eq!(reply.text(), other.disabled, "{}", reply.what);
            assert_eq!(reply.header("x-stack-known-error"), None);
            assert_eq!(reply.header("x-hexclave-known-error"), None);

            // Nothing changed but the status: the key is still there and valid.
            let check = json!({ "api_key": str_field(&created, "value") }).to_string();
            let reply = api
                .raw(Method::POST, &kind.check(), &auth, Some(&check))
                .await;
            assert_eq!(assert_ok(&reply), read_view(&created));
        }
    }
}

/// A 4xx answered as 200 because the request asked for it: the real status under both names.
#[track_caller]
fn assert_overridden(reply: &Reply, actual: StatusCode) {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}: {}",
        reply.what,
        reply.text()
    );
    for name in ["x-stack-actual-status", "x-hexclave-actual-status"] {
        assert_eq!(
            reply.header(name),
            Some(actual.as_str()),
            "{}: {name}",
            reply.what
        );
    }
}
