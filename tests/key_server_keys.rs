//! Conformance of `keygate::server::key_server` with Stack Auth's (now Hexclave's) key
//! management endpoints: create, list, read, update, revoke, and the schema errors they answer,
//! driven in process with `tower::ServiceExt::oneshot`. Every case runs over every store
//! (`key_server_suite!`: memory, SQLite file and in memory, PostgreSQL), for user keys and team
//! keys from the one kinds table; every response is checked for `cache-control` and one request
//! id under both names (ref §3), every known error for its status, `content-type`, both
//! known-error headers and `{code, error}` body (ref §5). "ref §n" cites
//! `docs/stack-auth-protocol.md`.

#[macro_use]
mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::key_api::{
    assert_known, assert_ok, assert_schema_error, new_owner, read_view, routes, str_field,
    SERVER_AUTH,
};
use common::key_stores::Store;
use common::keys::now_ms;
use common::kinds::{KINDS, TEAM, USER};
use keygate::key::ApiKey;
use serde_json::{json, Value};
use uuid::Uuid;

key_server_suite!(
    create_answers_200_with_the_full_key,
    list_is_newest_first_with_last_four_only,
    read_answers_the_key_without_its_secret,
    read_and_update_by_id_ignore_the_owner_in_the_query,
    patch_updates_the_description,
    revoking_sets_the_timestamp_once,
    patch_refuses_revoked_false_and_unknown_fields,
    there_is_no_delete_route,
    list_without_the_owner_is_schema_error,
    team_read_and_update_without_team_id_are_schema_error,
    a_body_without_content_type_is_schema_error,
    create_refuses_incomplete_or_unknown_fields,
);

// ---------------------------------------------------------------------------------------------
// Create, list, read, update
// ---------------------------------------------------------------------------------------------

/// ref §2 and §1: create answers 200 (not 201) with the FirstView, whose `value` is the whole
/// 102-character key; unset timestamps are left out, not `null`.
async fn create_answers_200_with_the_full_key(store: Store) {
    let api = store.api();
    for kind in KINDS {
        let owner = new_owner();
        let before = now_ms();
        let body = api.create(kind, &owner, "CI token", Value::Null).await;
        let after = now_ms();

        let id: Uuid = str_field(&body, "id").parse().expect("id is a UUID");
        let key = str_field(&body, "value");
        assert_eq!(key.len(), 102, "{kind:?}: {key}");
        assert!(key.starts_with("sk_"), "{kind:?}: {key}");
        assert_eq!(
            &key[48..80],
            id.simple().to_string(),
            "{kind:?}: id segment"
        );
        assert_eq!(&key[80..84], kind.name, "{kind:?}: type segment");
        assert_eq!(&key[85..94], "574ck4u7h", "{kind:?}: marker");
        let parsed = ApiKey::parse(key).expect("the key is well-formed");
        assert_eq!(parsed.kind(), kind.kind);
        assert_eq!(parsed.key_id(), id);
        assert!(!parsed.is_public());

        assert_eq!(body["type"], kind.name, "{body}");
        assert_eq!(body[kind.owner_field], owner.as_str(), "{body}");
        assert_eq!(body["description"], "CI token", "{body}");
        assert_eq!(body["is_public"], false, "{body}");
        let created = body["created_at_millis"]
            .as_i64()
            .expect("created_at_millis");
        assert!(
            (before..=after).contains(&created),
            "{before} <= {created} <= {after}"
        );
        for absent in [
            "expires_at_millis",
            "manually_revoked_at_millis",
            kind.other_field(),
        ] {
            assert!(
                body.get(absent).is_none(),
                "{kind:?}: `{absent}` must be left out: {body}"
            );
        }

        // is_public → pk_, and an expiry of 0 means never (ref §4, "Create").
        let public = api
            .ok(
                Method::POST,
                kind.base,
                Some(kind.create_body(&owner, "public", json!(0), json!({ "is_public": true }))),
            )
            .await;
        assert!(str_field(&public, "value").starts_with("pk_"), "{public}");
        assert_eq!(public["is_public"], true, "{public}");
        assert!(public.get("expires_at_millis").is_none(), "{public}");

        let expiry = now_ms() + 3_600_000;
        let expiring = api.create(kind, &owner, "expiring", json!(expiry)).await;
        assert_eq!(expiring["expires_at_millis"], expiry, "{expiring}");

        assert_ne!(body["value"], public["value"]);
        assert_ne!(body["id"], expiring["id"]);
    }
}

/// ref §2 and §4: `{items, is_paginated: false}`, newest first, `value` is `{last_four}` only,
/// and only the named owner's keys.
async fn list_is_newest_first_with_last_four_only(store: Store) {
    let api = store.api();
    for kind in KINDS {
        let owner = new_owner();
        let mut created = Vec::new();
        for description in ["first", "second", "third"] {
            created.push(api.create(kind, &owner, description, Value::Null).await);
        }
        // Keys that must not show up: another owner's, and the other kind's for the same id.
        api.create(kind, &new_owner(), "someone else", Value::Null)
            .await;
        api.create(kind.other(), &owner, "other kind", Value::Null)
            .await;

        let list = api.ok(Method::GET, &kind.list(&owner), None).await;
        let keys: Vec<&String> = list.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["is_paginated", "items"], "{list}");
        assert_eq!(list["is_paginated"], false, "{list}");
        let expected: Vec<Value> = created.iter().rev().map(read_view).collect();
        assert_eq!(list["items"], Value::Array(expected), "{kind:?}");
        for item in list["items"].as_array().expect("items") {
            let value = item["value"].as_object().expect("value is an object");
            assert_eq!(value.len(), 1, "value holds last_four only: {item}");
        }

        let nobody = api.ok(Method::GET, &kind.list(&new_owner()), None).await;
        assert_eq!(nobody, json!({ "items": [], "is_paginated": false }));
    }
}

/// ref §2, §4: `GET …/{id}` answers the key object (no secret); an unknown id, or a key of the
/// other kind, is `API_KEY_NOT_FOUND` (for the other kind, Stack Auth itself fails with a 500;
/// keygate answers 404). Another owner in the query is the next test's.
async fn read_answers_the_key_without_its_secret(store: Store) {
    let api = store.api();
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "readable", Value::Null).await;
        let id = str_field(&created, "id");

        let read = api.read(kind, id, &owner).await;
        assert_eq!(read, read_view(&created), "{kind:?}");
        assert!(
            !read.to_string().contains(str_field(&created, "value")),
            "the full key is shown once only"
        );

        for uri in [
            kind.item(&Uuid::new_v4().to_string(), &owner),
            kind.other().item(id, &owner),
        ] {
            let reply = api.call(Method::GET, &uri, None).await;
            assert_known(&reply, StatusCode::NOT_FOUND, "API_KEY_NOT_FOUND");
        }
        let reply = api
            .call(Method::GET, &kind.item("not-a-uuid", &owner), None)
            .await;
        assert_schema_error(&reply);
    }
}

/// ref §2: read and update look the key up by id alone. Another owner's id in the query is
/// validated but not compared: the key is found, updated, and answered with its real owner. A
/// query owner that is not a UUID is still `SCHEMA_ERROR`, and the user route does not need one.
async fn read_and_update_by_id_ignore_the_owner_in_the_query(store: Store) {
    let api = store.api();
    for kind in KINDS {
        let owner = new_owner();
        let stranger = new_owner();
        let created = api.create(kind, &owner, "found by id", Value::Null).await;
        let id = str_field(&created, "id");

        let read = api.read(kind, id, &stranger).await;
        assert_eq!(read, read_view(&created), "{kind:?}: read");
        assert_eq!(read[kind.owner_field], owner.as_str(), "{kind:?}: {read}");

        let renamed = assert_ok(
            &api.patch(
                kind,
                id,
                &stranger,
                json!({ "description": "renamed by id" }),
            )
            .await,
        );
        let mut expected = read_view(&created);
        expected["description"] = json!("renamed by id");
        assert_eq!(renamed, expected, "{kind:?}: update");
        assert_eq!(renamed[kind.owner_field], owner.as_str(), "{kind:?}");

        let revoked = assert_ok(
            &api.patch(kind, id, &stranger, json!({ "revoked": true }))
                .await,
        );
        assert!(
            revoked["manually_revoked_at_millis"].is_i64(),
            "{kind:?}: {revoked}"
        );
        // The owner's own view shows both changes, and the key is revoked for real.
        assert_eq!(api.read(kind, id, &owner).await, revoked, "{kind:?}");
        assert_known(
            &api.check(kind, str_field(&created, "value")).await,
            StatusCode::UNAUTHORIZED,
            "API_KEY_REVOKED",
        );
        // Nothing moved to the stranger.
        assert_eq!(api.list_len(kind, &stranger).await, 0, "{kind:?}");
        assert_eq!(api.list_len(kind, &owner).await, 1, "{kind:?}");

        // The query is still validated.
        for (method, body) in [
            (Method::GET, None),
            (Method::PATCH, Some(json!({ "description": "nope" }))),
        ] {
            let reply = api.call(method, &kind.item(id, "not-a-uuid"), body).await;
            assert_schema_error(&reply);
        }
    }
    // `user_id` is optional on the user route (`team_id` is not; see below).
    let owner = new_owner();
    let created = api.create(USER, &owner, "no query", Value::Null).await;
    let id = str_field(&created, "id");
    let uri = format!("{}/{id}", USER.base);
    assert_eq!(
        assert_ok(&api.call(Method::GET, &uri, None).await),
        read_view(&created)
    );
}

/// ref §4 "Update": `PATCH {"description": …}` answers the updated Read body; an unknown id,
/// or a key of the other kind, is `API_KEY_NOT_FOUND` and changes nothing.
async fn patch_updates_the_description(store: Store) {
    let api = store.api();
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "before", Value::Null).await;
        let id = str_field(&created, "id");

        let reply = api
            .patch(kind, id, &owner, json!({ "description": "renamed" }))
            .await;
        let updated = assert_ok(&reply);
        let mut expected = read_view(&created);
        expected["description"] = json!("renamed");
        assert_eq!(updated, expected, "{kind:?}");
        assert_eq!(api.read(kind, id, &owner).await, expected, "{kind:?}");
        for uri in [
            kind.item(&Uuid::new_v4().to_string(), &owner),
            kind.other().item(id, &owner),
        ] {
            for body in [json!({ "description": "nope" }), json!({ "revoked": true })] {
                let reply = api.call(Method::PATCH, &uri, Some(body)).await;
                assert_known(&reply, StatusCode::NOT_FOUND, "API_KEY_NOT_FOUND");
            }
        }
        assert_eq!(api.read(kind, id, &owner).await, expected, "{kind:?}");
        assert_ok(&api.check(kind, str_field(&created, "value")).await);
    }
}

/// ref §4 "Update": `{"revoked": true}` sets `manually_revoked_at_millis`; a second revoke (or
/// any later update) keeps the first timestamp.
async fn revoking_sets_the_timestamp_once(store: Store) {
    let api = store.api();
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "to revoke", Value::Null).await;
        let id = str_field(&created, "id");
        let before = now_ms();

        let revoked = assert_ok(
            &api.patch(kind, id, &owner, json!({ "revoked": true }))
                .await,
        );
        let at = revoked["manually_revoked_at_millis"]
            .as_i64()
            .unwrap_or_else(|| panic!("{kind:?}: manually_revoked_at_millis missing: {revoked}"));
        assert!(at >= before && at <= now_ms(), "{kind:?}: {at}");
        let mut expected = read_view(&created);
        expected["manually_revoked_at_millis"] = json!(at);
        assert_eq!(revoked, expected, "{kind:?}");

        // Let the clock move, so that a moved timestamp would show.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let again = assert_ok(
            &api.patch(kind, id, &owner, json!({ "revoked": true }))
                .await,
        );
        assert_eq!(again["manually_revoked_at_millis"], at, "{kind:?}: {again}");
        let renamed = assert_ok(
            &api.patch(
                kind,
                id,
                &owner,
                json!({ "description": "renamed", "revoked": true }),
            )
            .await,
        );
        assert_eq!(renamed["manually_revoked_at_millis"], at, "{renamed}");
        assert_eq!(renamed["description"], "renamed", "{renamed}");
        let read = api.read(kind, id, &owner).await;
        assert_eq!(read["manually_revoked_at_millis"], at, "{read}");
    }
}

/// ref §4 "Update": `revoked` may only be `true`, so `false` is `SCHEMA_ERROR`; any field other
/// than `description` and `revoked` is `SCHEMA_ERROR`. Nothing is applied.
async fn patch_refuses_revoked_false_and_unknown_fields(store: Store) {
    let api = store.api();
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "unchanged", Value::Null).await;
        let id = str_field(&created, "id");
        let bodies = [
            json!({ "revoked": false }),
            json!({ "revoked": "true" }),
            json!({ "description": "changed", "revoked": false }),
            json!({ "user_id": owner }),
            json!({ "team_id": owner }),
            json!({ "expires_at_millis": now_ms() - 1_000 }),
            json!({ "is_public": true }),
            json!({ "description": "changed", "prefix": "sk" }),
        ];
        for body in bodies {
            let reply = api.patch(kind, id, &owner, body.clone()).await;
            assert_schema_error(&reply);
        }
        assert_eq!(
            api.read(kind, id, &owner).await,
            read_view(&created),
            "{kind:?}: a refused update changes nothing"
        );
        assert_ok(&api.check(kind, str_field(&created, "value")).await);
    }
}

/// ref §2 (no DELETE route): revocation is a PATCH; a DELETE is not routed and deletes nothing.
async fn there_is_no_delete_route(store: Store) {
    let api = store.api();
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "kept", Value::Null).await;
        let id = str_field(&created, "id");
        let reply = api.call(Method::DELETE, &kind.item(id, &owner), None).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{kind:?}");
        assert_ok(&api.check(kind, str_field(&created, "value")).await);
    }
}

// ---------------------------------------------------------------------------------------------
// Schema errors (ref §2, §3, §4)
// ---------------------------------------------------------------------------------------------

/// ref §2: a list without `user_id` is 400 `SCHEMA_ERROR`, even with server access; the same
/// for `team_id`.
async fn list_without_the_owner_is_schema_error(store: Store) {
    let api = store.api();
    for kind in KINDS {
        api.create(kind, &new_owner(), "exists", Value::Null).await;
        let reply = api.call(Method::GET, kind.base, None).await;
        let body = assert_schema_error(&reply);
        assert!(
            str_field(&body["details"], "message").contains(kind.owner_field),
            "{body}"
        );
    }
}

/// ref §2: `team_id` is required on every team route, so read and update without it are
/// `SCHEMA_ERROR`.
async fn team_read_and_update_without_team_id_are_schema_error(store: Store) {
    let api = store.api();
    let owner = new_owner();
    let created = api.create(TEAM, &owner, "team", Value::Null).await;
    let id = str_field(&created, "id");
    let uri = format!("{}/{id}", TEAM.base);

    assert_schema_error(&api.call(Method::GET, &uri, None).await);
    let reply = api
        .call(Method::PATCH, &uri, Some(json!({ "revoked": true })))
        .await;
    assert_schema_error(&reply);
    assert_eq!(
        api.read(TEAM, id, &owner).await,
        read_view(&created),
        "not revoked"
    );
}

/// ref §3: `content-type: application/json` is required with a body; without it the body counts
/// as absent, which is `SCHEMA_ERROR`.
async fn a_body_without_content_type_is_schema_error(store: Store) {
    let api = store.api();
    for kind in KINDS {
        let owner = new_owner();
        let created = api.create(kind, &owner, "untouched", Value::Null).await;
        let id = str_field(&created, "id");
        for (method, uri, body) in routes(kind, id, &owner, str_field(&created, "value")) {
            let Some(body) = body else { continue };
            let reply = api
                .raw(method, &uri, &SERVER_AUTH, Some(&body.to_string()))
                .await;
            assert_schema_error(&reply);
        }
        assert_eq!(api.list_len(kind, &owner).await, 1, "nothing created");
        assert_eq!(
            api.read(kind, id, &owner).await,
            read_view(&created),
            "not revoked"
        );
    }
}

/// ref §4 "Create": `description` is required, `expires_at_millis` must be present (`null` for
/// never), the owner is required, and there is no `prefix` (or any other) field.
async fn create_refuses_incomplete_or_unknown_fields(store: Store) {
    let api = store.api();
    for kind in KINDS {
        let owner = new_owner();
        let complete = kind.create_body(&owner, "complete", Value::Null, json!({}));
        let without = |field: &str| {
            let mut body = complete.clone();
            body.as_object_mut().expect("object").remove(field);
            body
        };
        let with = |field: &str, value: Value| {
            let mut body = complete.clone();
            body[field] = value;
            body
        };
        let bodies = [
            without("expires_at_millis"),
            without("description"),
            without(kind.owner_field),
            with("prefix", json!("sk")),
            with(kind.other_field(), json!(new_owner())),
            with("is_public", json!("yes")),
            with("description", json!(7)),
        ];
        for body in bodies {
            let reply = api.call(Method::POST, kind.base, Some(body.clone())).await;
            assert_schema_error(&reply);
        }
        assert_eq!(
            api.list_len(kind, &owner).await,
            0,
            "{kind:?}: nothing created"
        );
    }
}
