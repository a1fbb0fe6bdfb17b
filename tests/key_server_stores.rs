//! What only a persistent store shows through the key server (every key-server test also runs
//! over every store, see `key_server_suite!`): a key server over a SQLite file keeps its keys
//! across a restart, and key servers over one PostgreSQL database see each other's keys and
//! revocations.

mod common;

use axum::http::StatusCode;
use common::key_api::{assert_known, assert_ok, config, new_owner, read_view, str_field, Api};
use common::kinds::USER;
use keygate::SqliteKeyStore;
use serde_json::{json, Value};

/// The key server over a SQLite file, restarted: keys made before still check and list the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_key_server_keeps_its_keys_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("server.db");
    let owner = new_owner();
    let (kept, made, revoked) = {
        let api = Api::with(SqliteKeyStore::open(&path).await.expect("open"), config());
        let kept = api.create(USER, &owner, "kept", Value::Null).await;
        let made = api.create(USER, &owner, "revoked", Value::Null).await;
        let id = str_field(&made, "id");
        let revoked = assert_ok(
            &api.patch(USER, id, &owner, json!({ "revoked": true }))
                .await,
        );
        assert!(revoked["manually_revoked_at_millis"].is_i64(), "{revoked}");
        (kept, made, revoked)
    };
    let api = Api::with(SqliteKeyStore::open(&path).await.expect("reopen"), config());
    let checked = assert_ok(&api.check(USER, str_field(&kept, "value")).await);
    assert_eq!(checked, read_view(&kept));
    assert_eq!(
        api.read(USER, str_field(&revoked, "id"), &owner).await,
        revoked
    );
    assert_known(
        &api.check(USER, str_field(&made, "value")).await,
        StatusCode::UNAUTHORIZED,
        "API_KEY_REVOKED",
    );
    let created = api
        .create(USER, &owner, "after the restart", Value::Null)
        .await;
    assert_eq!(api.list_len(USER, &owner).await, 3);
    assert_ok(&api.check(USER, str_field(&created, "value")).await);
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use common::kinds::KINDS;

    /// Two key servers over one PostgreSQL schema (two pools, as two instances would have): a key
    /// made through one checks through the other, and a revocation through either is seen by both.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_key_servers_share_keys_and_revocations() {
        let Some((first, schema)) = common::store_suite::postgres().await else {
            return;
        };
        let second = keygate::PostgresKeyStore::builder(&schema.url)
            .schema(&schema.name)
            .max_connections(4)
            .connect()
            .await
            .expect("a second pool on the same schema");
        let (one, two) = (Api::with(first, config()), Api::with(second, config()));
        for kind in KINDS {
            let owner = new_owner();
            let made_by_one = one.create(kind, &owner, "made by one", Value::Null).await;
            let made_by_two = two.create(kind, &owner, "made by two", Value::Null).await;
            for api in [&one, &two] {
                for created in [&made_by_one, &made_by_two] {
                    let checked = assert_ok(&api.check(kind, str_field(created, "value")).await);
                    assert_eq!(checked, read_view(created), "{kind:?}");
                }
                assert_eq!(api.list_len(kind, &owner).await, 2, "{kind:?}");
            }

            let id = str_field(&made_by_one, "id");
            assert_ok(
                &two.patch(kind, id, &owner, json!({ "revoked": true }))
                    .await,
            );
            for api in [&one, &two] {
                assert_known(
                    &api.check(kind, str_field(&made_by_one, "value")).await,
                    StatusCode::UNAUTHORIZED,
                    "API_KEY_REVOKED",
                );
                assert_ok(&api.check(kind, str_field(&made_by_two, "value")).await);
            }
        }
    }
}
