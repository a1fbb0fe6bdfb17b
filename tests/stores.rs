//! The store conformance suite (tests/common/store_suite.rs) over every store: memory, SQLite
//! (file and `sqlite::memory:`) and PostgreSQL (a fresh schema per test; skipped without
//! `DATABASE_URL`). Plus what only a file can show: keys survive a restart.

#[macro_use]
mod common;

use std::time::{Duration, SystemTime};

use common::store_suite;
use keygate::key::KeyKind;
use keygate::store::{KeyStore, NewKey, WhyInvalid};
use keygate::verify::{InvalidReason, KeyVerifier, Verdict};
use keygate::{MemoryKeyStore, SqliteKeyStore};
use sqlx::Row as _;
use store_suite::{new_owner, Dump};

impl Dump for MemoryKeyStore {
    async fn dump(&self) -> String {
        format!("{self:?}")
    }
}

impl Dump for SqliteKeyStore {
    async fn dump(&self) -> String {
        let rows = sqlx::query(
            "SELECT id || '|' || hex(digest) || '|' || owner_kind || '|' || owner_id || '|' || \
             description || '|' || is_public || '|' || last_four || '|' || created_at || '|' || \
             coalesce(expires_at, '') || '|' || coalesce(revoked_at, '') FROM keygate_api_keys",
        )
        .fetch_all(self.pool())
        .await
        .expect("dump");
        rows.iter()
            .map(|r| r.get::<String, _>(0))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[cfg(feature = "postgres")]
impl Dump for keygate::PostgresKeyStore {
    async fn dump(&self) -> String {
        let rows = sqlx::query("SELECT t::text FROM keygate_api_keys t")
            .fetch_all(self.pool())
            .await
            .expect("dump");
        rows.iter()
            .map(|r| r.get::<String, _>(0))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

store_conformance!(memory, store_suite::memory().await);
store_conformance!(sqlite_file, store_suite::sqlite_file().await);
store_conformance!(sqlite_memory, store_suite::sqlite_memory().await);
#[cfg(feature = "postgres")]
store_conformance!(postgres, store_suite::postgres().await);

#[tokio::test]
async fn sqlite_keys_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("restart.db");
    let owner = new_owner(KeyKind::User);
    let team = new_owner(KeyKind::Team);
    let store = SqliteKeyStore::open(&path).await.expect("open");
    let kept = store
        .create(owner.clone(), NewKey::new("kept"))
        .await
        .expect("create");
    let public = store
        .create(team.clone(), NewKey::new("public").public(true))
        .await
        .expect("create");
    let revoked = store
        .create(owner.clone(), NewKey::new("revoked"))
        .await
        .expect("create");
    let revoked_record = store.revoke(revoked.record.id).await.expect("revoke");
    let expired = store
        .create(
            owner.clone(),
            NewKey::new("expired").expires_at(SystemTime::now() - Duration::from_secs(1)),
        )
        .await
        .expect("create");
    let renamed = store
        .update_description(kept.record.id, "kept, renamed".into())
        .await
        .expect("update");
    let before_user = store.list(&owner).await.expect("list");
    let before_team = store.list(&team).await.expect("list");
    store.pool().close().await;
    drop(store);

    let store = SqliteKeyStore::open(&path).await.expect("reopen");
    assert_eq!(
        store.list(&owner).await.expect("list"),
        before_user,
        "nothing lost"
    );
    assert_eq!(
        store.list(&team).await.expect("list"),
        before_team,
        "nothing lost"
    );
    assert_eq!(store.get(kept.record.id).await.expect("get"), Some(renamed));
    match store.verify(&kept.key).await.expect("verify") {
        Verdict::Valid(info) => assert_eq!(&*info.description, "kept, renamed"),
        other => panic!("kept key is valid, got {other:?}"),
    }
    assert!(store.verify(&public.key).await.expect("verify").is_valid());
    assert_eq!(
        store.verify(&revoked.key).await.expect("verify"),
        Verdict::Invalid(InvalidReason::Revoked),
        "a revoked key stays revoked"
    );
    let again = store.revoke(revoked.record.id).await.expect("revoke");
    assert_eq!(
        again.revoked_at, revoked_record.revoked_at,
        "with its first timestamp"
    );
    assert_eq!(again.why_invalid(), Some(WhyInvalid::ManuallyRevoked));
    assert_eq!(
        store.verify(&expired.key).await.expect("verify"),
        Verdict::Invalid(InvalidReason::Expired)
    );
    // Opening a third time (migrations already applied) changes nothing either.
    drop(store);
    let store = SqliteKeyStore::open(&path).await.expect("reopen");
    assert_eq!(store.list(&owner).await.expect("list").len(), 3);
}

#[tokio::test]
async fn a_sqlite_url_opens_a_file_too() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("url.db");
    let url = format!("sqlite://{}", path.display());
    let store = SqliteKeyStore::open(&url).await.expect("open by URL");
    let created = store
        .create(new_owner(KeyKind::Team), NewKey::new("u"))
        .await
        .expect("create");
    drop(store);
    assert!(path.exists(), "the URL named this file");
    let store = SqliteKeyStore::open(&path).await.expect("open by path");
    assert!(store.verify(&created.key).await.expect("verify").is_valid());
}

#[tokio::test]
async fn the_sqlite_file_is_in_wal_mode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteKeyStore::open(dir.path().join("wal.db"))
        .await
        .expect("open");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(store.pool())
        .await
        .expect("pragma");
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn a_check_is_one_indexed_lookup() {
    let store = SqliteKeyStore::in_memory().await.expect("open");
    let plan: Vec<String> =
        sqlx::query("EXPLAIN QUERY PLAN SELECT id FROM keygate_api_keys WHERE digest = ?1")
            .bind(vec![0u8; 32])
            .fetch_all(store.pool())
            .await
            .expect("plan")
            .iter()
            .map(|r| r.get::<String, _>("detail"))
            .collect();
    assert_eq!(plan.len(), 1, "{plan:?}");
    assert!(
        plan[0].contains("USING INDEX keygate_api_keys_digest"),
        "{plan:?}"
    );
    let plan: Vec<String> = sqlx::query(
        "EXPLAIN QUERY PLAN SELECT id FROM keygate_api_keys WHERE owner_kind = ?1 AND owner_id = ?2 \
         ORDER BY created_at DESC, rowid DESC",
    )
    .bind("user")
    .bind("u")
    .fetch_all(store.pool())
    .await
    .expect("plan")
    .iter()
    .map(|r| r.get::<String, _>("detail"))
    .collect();
    assert!(
        plan.iter().any(|p| p.contains("keygate_api_keys_owner")),
        "{plan:?}"
    );
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_schema_names_are_checked() {
    let Some(url) = store_suite::database_url() else {
        return;
    };
    let error = keygate::PostgresKeyStore::builder(url)
        .schema("x\"; DROP TABLE y; --")
        .connect()
        .await
        .expect_err("refused");
    assert!(matches!(error, keygate::store::StoreError::Backend { .. }));
    assert!(error.to_string().contains("schema name"), "{error}");
}

#[cfg(feature = "postgres")]
mod postgres_schema {
    use std::collections::HashSet;

    use keygate::store::REVOCATION_CHANNEL;
    use sqlx::postgres::PgListener;
    use uuid::Uuid;

    use super::*;

    /// The next notification on the channel about one of `ids` (others' tests share the channel).
    async fn next_of(listener: &mut PgListener, ids: &HashSet<Uuid>) -> Uuid {
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), listener.recv())
                .await
                .expect("a notification within 5 s")
                .expect("listener");
            assert_eq!(n.channel(), REVOCATION_CHANNEL);
            let (id, millis) = n
                .payload()
                .split_once(' ')
                .expect("the payload is `<key id> <millis>`, nothing else");
            let id = Uuid::try_parse(id).expect("a key id");
            millis.parse::<i64>().expect("the time of the change");
            if ids.contains(&id) {
                return id;
            }
        }
    }

    #[tokio::test]
    async fn the_trigger_notifies_revocations_expiry_changes_and_deletions_once() {
        let Some((store, _schema)) = store_suite::postgres().await else {
            return;
        };
        let mut listener = PgListener::connect_with(store.pool())
            .await
            .expect("listen");
        listener.listen(REVOCATION_CHANNEL).await.expect("listen");
        let owner = new_owner(KeyKind::User);
        let mut keys = Vec::new();
        for i in 0..5 {
            keys.push(
                store
                    .create(owner.clone(), NewKey::new(format!("k{i}")))
                    .await
                    .expect("create")
                    .record
                    .id,
            );
        }
        let ids: HashSet<Uuid> = keys.iter().copied().collect();

        store.revoke(keys[0]).await.expect("revoke");
        assert_eq!(next_of(&mut listener, &ids).await, keys[0]);
        // Changes that revoke nothing are silent: a second revoke, a new description, a create.
        store.revoke(keys[0]).await.expect("revoke again");
        store
            .update_description(keys[1], "renamed".into())
            .await
            .expect("update");
        store.revoke(keys[2]).await.expect("revoke");
        assert_eq!(
            next_of(&mut listener, &ids).await,
            keys[2],
            "nothing was sent between the two revocations"
        );
        sqlx::query("UPDATE keygate_api_keys SET expires_at = 1 WHERE id = $1")
            .bind(keys[3])
            .execute(store.pool())
            .await
            .expect("expire");
        assert_eq!(next_of(&mut listener, &ids).await, keys[3]);
        sqlx::query("DELETE FROM keygate_api_keys WHERE id = $1")
            .bind(keys[4])
            .execute(store.pool())
            .await
            .expect("delete");
        assert_eq!(next_of(&mut listener, &ids).await, keys[4]);
        // A rolled-back revocation sends nothing.
        let mut tx = store.pool().begin().await.expect("begin");
        sqlx::query("UPDATE keygate_api_keys SET revoked_at = 1 WHERE id = $1")
            .bind(keys[1])
            .execute(&mut *tx)
            .await
            .expect("revoke in tx");
        tx.rollback().await.expect("rollback");
        store.revoke(keys[1]).await.expect("revoke");
        let got = next_of(&mut listener, &ids).await;
        assert_eq!(got, keys[1]);
        assert_eq!(
            store
                .get(keys[1])
                .await
                .expect("get")
                .and_then(|r| r.revoked_at)
                .map(|t| t > std::time::UNIX_EPOCH + Duration::from_secs(1)),
            Some(true),
            "the committed revocation, not the rolled-back one"
        );
    }

    #[tokio::test]
    async fn checks_and_lists_use_the_indexes() {
        let Some((store, _schema)) = store_suite::postgres().await else {
            return;
        };
        let mut conn = store.pool().acquire().await.expect("conn");
        sqlx::query("SET enable_seqscan = off")
            .execute(&mut *conn)
            .await
            .expect("set");
        let plan = |sql: &'static str| sqlx::query_scalar::<_, String>(sql);
        let check: Vec<String> =
            plan("EXPLAIN SELECT id FROM keygate_api_keys WHERE digest = '\\x00'::bytea")
                .fetch_all(&mut *conn)
                .await
                .expect("explain");
        assert!(check[0].contains("keygate_api_keys_digest"), "{check:?}");
        let list: Vec<String> = plan(
            "EXPLAIN SELECT id FROM keygate_api_keys WHERE owner_kind = 'user' AND owner_id = 'u' \
             ORDER BY created_at DESC, seq DESC",
        )
        .fetch_all(&mut *conn)
        .await
        .expect("explain");
        assert!(
            list.iter().any(|l| l.contains("keygate_api_keys_owner")),
            "{list:?}"
        );
        assert!(
            !list.iter().any(|l| l.contains("Sort")),
            "no sort step: {list:?}"
        );
    }
}

#[tokio::test]
async fn sql_stores_mint_keys_for_their_deployment() {
    use keygate::key::Deployment;
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cloud.db");
    let default = SqliteKeyStore::open(&path).await.expect("open");
    let created = default
        .create(new_owner(KeyKind::User), NewKey::new("d"))
        .await
        .expect("create");
    assert_eq!(created.key.parts().deployment, Deployment::SelfHosted);
    let cloud = SqliteKeyStore::builder(&path)
        .deployment(Deployment::Cloud)
        .open()
        .await
        .expect("open");
    let created = cloud
        .create(new_owner(KeyKind::Team), NewKey::new("c"))
        .await
        .expect("create");
    assert_eq!(created.key.parts().deployment, Deployment::Cloud);
    assert!(cloud.verify(&created.key).await.expect("verify").is_valid());
    #[cfg(feature = "postgres")]
    if let Some(url) = store_suite::database_url() {
        let schema = store_suite::PgSchema {
            url: url.clone(),
            name: store_suite::fresh_schema(),
        };
        let pg = keygate::PostgresKeyStore::builder(url)
            .schema(&schema.name)
            .deployment(Deployment::Cloud)
            .connect()
            .await
            .expect("connect");
        let created = pg
            .create(new_owner(KeyKind::User), NewKey::new("c"))
            .await
            .expect("create");
        assert_eq!(created.key.parts().deployment, Deployment::Cloud);
    }
}
