//! One conformance suite for every `KeyStore`: memory, SQLite and PostgreSQL run the same cases
//! (see [`store_conformance!`]), so the three cannot drift apart. Also the stores' setup for the
//! test files that include this module: temp SQLite files, and a fresh PostgreSQL schema per
//! test, dropped afterwards.
//!
//! `common::store_suite` (with feature `sqlite`); `#[macro_use] mod common;` brings the macro.
#![allow(dead_code, unused_macros, unused_imports)]

use std::collections::HashSet;
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keygate::key::{ApiKey, Deployment, KeyKind};
use keygate::store::{KeyRecord, KeyStore, NewKey, StoreError, WhyInvalid};
use keygate::verify::{InvalidReason, KeyVerifier, Owner, Verdict};
use keygate::CachedVerifier;
use uuid::Uuid;

// ---- Setup ---------------------------------------------------------------------------------

/// The service URL in `var` (`DATABASE_URL`, `REDIS_URL`), or `None` after printing why the
/// test is skipped (a panic instead when `KEYGATE_REQUIRE_SERVICES=1`, as in CI).
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            if std::env::var("KEYGATE_REQUIRE_SERVICES").as_deref() == Ok("1") {
                panic!("{var} not set, and KEYGATE_REQUIRE_SERVICES=1");
            }
            super::skip_note(&format!("{var} not set"));
            None
        }
    }
}

/// [`service_url`] for `DATABASE_URL`.
pub fn database_url() -> Option<String> {
    service_url("DATABASE_URL")
}

/// A fresh schema name, unique to one test.
pub fn fresh_schema() -> String {
    format!("keygate_test_{}", Uuid::new_v4().simple())
}

/// Drops its PostgreSQL schema (and everything in it) when dropped, even after a panic.
#[cfg(feature = "postgres")]
pub struct PgSchema {
    pub url: String,
    pub name: String,
}

#[cfg(feature = "postgres")]
impl Drop for PgSchema {
    fn drop(&mut self) {
        execute_detached(
            &self.url,
            format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name),
        );
    }
}

/// Runs `sql` on a connection of its own, ignoring failures: for guards' drops.
#[cfg(feature = "postgres")]
pub fn execute_detached(url: &str, sql: String) {
    let url = url.to_owned();
    // Its own thread and runtime: drop may run inside (or outside) a test's runtime.
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            use sqlx::Connection as _;
            if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
                let _ = sqlx::query(&sql).execute(&mut conn).await;
                let _ = conn.close().await;
            }
        });
    })
    .join();
}

/// A PostgreSQL store in a fresh schema, or `None` (skipped) without `DATABASE_URL`.
#[cfg(feature = "postgres")]
pub async fn postgres() -> Option<(keygate::PostgresKeyStore, PgSchema)> {
    let url = database_url()?;
    let schema = PgSchema {
        url: url.clone(),
        name: fresh_schema(),
    };
    let store = keygate::PostgresKeyStore::builder(&url)
        .schema(&schema.name)
        .max_connections(8)
        .connect()
        .await
        .expect("connect to DATABASE_URL");
    Some((store, schema))
}

/// A SQLite store in a new file under a temp dir (removed when the dir is dropped).
#[cfg(feature = "sqlite")]
pub async fn sqlite_file() -> Option<(keygate::SqliteKeyStore, tempfile::TempDir)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = keygate::SqliteKeyStore::open(dir.path().join("keys.db"))
        .await
        .expect("open SQLite");
    Some((store, dir))
}

/// A SQLite store in memory.
#[cfg(feature = "sqlite")]
pub async fn sqlite_memory() -> Option<(keygate::SqliteKeyStore, ())> {
    Some((
        keygate::SqliteKeyStore::in_memory()
            .await
            .expect("open sqlite::memory:"),
        (),
    ))
}

/// The memory store.
pub async fn memory() -> Option<(keygate::MemoryKeyStore, ())> {
    Some((keygate::MemoryKeyStore::new(), ()))
}

/// What a store's backing data looks like from outside (a table dump), to show it holds no key.
pub trait Dump {
    fn dump(&self) -> impl Future<Output = String> + Send;
}

/// Runs every conformance case against the store `$setup` makes (an `Option<(store, guard)>`
/// expression; `None` skips), as tests in module `$module`.
macro_rules! store_conformance {
    ($module:ident, $setup:expr) => {
        store_conformance!(@cases $module, $setup, [
            create_shows_the_key_once,
            the_backing_data_holds_no_key,
            list_is_newest_first_and_per_owner,
            get_find_and_update,
            revoke_is_irreversible_and_keeps_the_first_time,
            checks_in_stack_auth_order,
            expiry_is_checked_at_the_millisecond,
            public_keys_are_pk_and_verify,
            a_revocation_reaches_a_subscribed_cache_at_once,
            concurrent_revokes_updates_and_checks_lose_nothing,
            concurrent_creates_are_all_listed,
        ]);
    };
    (@cases $module:ident, $setup:expr, [$($case:ident),* $(,)?]) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(harness) = $setup else { return };
                    crate::common::store_suite::$case(&harness.0).await;
                }
            )*
        }
    };
}

// ---- Helpers -------------------------------------------------------------------------------

pub fn new_owner(kind: KeyKind) -> Owner {
    let id = Uuid::new_v4().to_string();
    match kind {
        KeyKind::User => Owner::user(id),
        KeyKind::Team => Owner::team(id),
    }
}

fn is_whole_millis(t: SystemTime) -> bool {
    t.duration_since(UNIX_EPOCH)
        .expect("after epoch")
        .subsec_nanos()
        .is_multiple_of(1_000_000)
}

pub async fn create<S: KeyStore>(
    store: &S,
    owner: &Owner,
    new: NewKey,
) -> keygate::store::CreatedKey {
    store.create(owner.clone(), new).await.expect("create")
}

pub async fn verdict<S: KeyVerifier>(store: &S, key: &ApiKey) -> Verdict {
    store.verify(key).await.expect("verify")
}

// ---- The cases -----------------------------------------------------------------------------

pub async fn create_shows_the_key_once<S: KeyStore + KeyVerifier>(store: &S) {
    for kind in [KeyKind::User, KeyKind::Team] {
        let owner = new_owner(kind);
        let before = SystemTime::now() - Duration::from_millis(1);
        let created = create(store, &owner, NewKey::new("CI token")).await;
        let r = &created.record;
        assert!(created.key.expose_secret().starts_with("sk_"));
        assert_eq!(created.key.kind(), kind);
        assert_eq!(created.key.key_id(), r.id, "the key names its record");
        assert_eq!(r.owner, owner);
        assert_eq!(r.description, "CI token");
        assert_eq!(r.last_four, created.key.last_four());
        assert!(!r.is_public);
        assert_eq!((r.expires_at, r.revoked_at), (None, None));
        assert!(r.created_at >= before && r.created_at <= SystemTime::now());
        assert!(is_whole_millis(r.created_at), "millisecond precision");

        assert_eq!(store.get(r.id).await.expect("get").as_ref(), Some(r));
        assert_eq!(
            store.find(&created.key).await.expect("find").as_ref(),
            Some(r)
        );
        match verdict(store, &created.key).await {
            Verdict::Valid(info) => {
                assert_eq!(info.key_id, r.id);
                assert_eq!(info.owner, owner);
                assert!(!info.is_public);
                assert_eq!(info.expires_at, None);
                assert_eq!(&*info.description, "CI token");
            }
            other => panic!("a new key is valid, got {other:?}"),
        }
    }
}

pub async fn the_backing_data_holds_no_key<S: KeyStore + Dump>(store: &S) {
    let owner = new_owner(KeyKind::User);
    let created = create(store, &owner, NewKey::new("dumped")).await;
    let dump = store.dump().await;
    let secret = created.key.expose_secret();
    assert!(dump.contains("dumped"), "the dump is real: {dump}");
    assert!(!dump.contains(secret), "a dump holds no key");
    // Not even the random middle of the key.
    assert!(
        !dump.contains(&secret[8..40]),
        "a dump holds no part of a key"
    );
}

pub async fn list_is_newest_first_and_per_owner<S: KeyStore>(store: &S) {
    let owner = new_owner(KeyKind::User);
    // A team with the same id string is another owner.
    let team = Owner::team(owner.id());
    let stranger = new_owner(KeyKind::User);
    let mut ids = Vec::new();
    for i in 0..5 {
        // Some within one millisecond, some not: the order holds either way.
        if i == 3 {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        let created = create(store, &owner, NewKey::new(format!("k{i}"))).await;
        ids.push(created.record.id);
    }
    let team_key = create(store, &team, NewKey::new("team")).await.record.id;
    create(store, &stranger, NewKey::new("other")).await;
    // Revoked and expired keys are listed too.
    store.revoke(ids[1]).await.expect("revoke");

    ids.reverse();
    assert_eq!(
        listed(store, &owner).await,
        ids,
        "newest first, the owner's keys only"
    );
    assert_eq!(listed(store, &team).await, vec![team_key]);
    assert!(listed(store, &new_owner(KeyKind::Team)).await.is_empty());
}

async fn listed<S: KeyStore>(store: &S, owner: &Owner) -> Vec<Uuid> {
    let records = store.list(owner).await.expect("list");
    records.iter().map(|r| r.id).collect()
}

pub async fn get_find_and_update<S: KeyStore + KeyVerifier>(store: &S) {
    let owner = new_owner(KeyKind::Team);
    let created = create(store, &owner, NewKey::new("before")).await;
    let id = created.record.id;
    let updated = store
        .update_description(id, "after ✓ 'quoted'".into())
        .await
        .expect("update");
    assert_eq!(updated.description, "after ✓ 'quoted'");
    let mut unchanged = updated.clone();
    unchanged.description = "before".into();
    assert_eq!(unchanged, created.record, "only the description changed");
    assert_eq!(store.get(id).await.expect("get"), Some(updated.clone()));
    assert_eq!(
        store.list(&owner).await.expect("list"),
        vec![updated.clone()]
    );
    match verdict(store, &created.key).await {
        Verdict::Valid(info) => assert_eq!(&*info.description, "after ✓ 'quoted'"),
        other => panic!("valid, got {other:?}"),
    }

    let unknown = Uuid::new_v4();
    assert_eq!(store.get(unknown).await.expect("get"), None);
    assert!(matches!(
        store.update_description(unknown, "x".into()).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.revoke(unknown).await,
        Err(StoreError::NotFound)
    ));
    let stranger =
        ApiKey::generate(unknown, KeyKind::Team, false, Deployment::SelfHosted).expect("rng");
    assert_eq!(store.find(&stranger).await.expect("find"), None);
    assert_eq!(
        verdict(store, &stranger).await,
        Verdict::Invalid(InvalidReason::NotFound)
    );
}

pub async fn revoke_is_irreversible_and_keeps_the_first_time<S: KeyStore + KeyVerifier>(store: &S) {
    let owner = new_owner(KeyKind::User);
    let created = create(store, &owner, NewKey::new("r")).await;
    let other = create(store, &owner, NewKey::new("untouched")).await;
    let id = created.record.id;
    let before = SystemTime::now() - Duration::from_millis(1);
    let revoked = store.revoke(id).await.expect("revoke");
    let at = revoked.revoked_at.expect("revoked_at set");
    assert!(at >= before && at <= SystemTime::now() && is_whole_millis(at));
    assert_eq!(revoked.why_invalid(), Some(WhyInvalid::ManuallyRevoked));
    let mut unchanged = revoked.clone();
    unchanged.revoked_at = None;
    assert_eq!(unchanged, created.record, "only revoked_at changed");

    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = store.revoke(id).await.expect("revoke again");
    assert_eq!(
        again.revoked_at,
        Some(at),
        "a second revoke keeps the first time"
    );
    // Updating a revoked key's description does not bring it back.
    let renamed = store
        .update_description(id, "renamed".into())
        .await
        .expect("update");
    assert_eq!(renamed.revoked_at, Some(at));
    assert_eq!(
        store.get(id).await.expect("get").and_then(|r| r.revoked_at),
        Some(at)
    );
    assert_eq!(
        verdict(store, &created.key).await,
        Verdict::Invalid(InvalidReason::Revoked)
    );
    assert!(
        verdict(store, &other.key).await.is_valid(),
        "only that key is revoked"
    );
}

pub async fn checks_in_stack_auth_order<S: KeyStore + KeyVerifier>(store: &S) {
    let now = SystemTime::now();
    let past = now - Duration::from_secs(60);
    for kind in [KeyKind::User, KeyKind::Team] {
        let owner = new_owner(kind);
        let other_kind = match kind {
            KeyKind::User => KeyKind::Team,
            KeyKind::Team => KeyKind::User,
        };
        let both = create(
            store,
            &owner,
            NewKey::new("revoked and expired").expires_at(past),
        )
        .await;
        store.revoke(both.record.id).await.expect("revoke");
        let expired = create(store, &owner, NewKey::new("expired").expires_at(past)).await;

        // not found
        let stranger =
            ApiKey::generate(Uuid::new_v4(), kind, false, Deployment::SelfHosted).expect("rng");
        assert_eq!(
            verdict(store, &stranger).await,
            Verdict::Invalid(InvalidReason::NotFound)
        );
        // wrong type before revoked (as the check route of the other kind sees it)
        let found = store.find(&both.key).await.expect("find").expect("stored");
        assert_eq!(
            found.check(other_kind, SystemTime::now()),
            Err(InvalidReason::WrongType)
        );
        // revoked before expired
        assert_eq!(
            found.check(kind, SystemTime::now()),
            Err(InvalidReason::Revoked)
        );
        assert_eq!(
            verdict(store, &both.key).await,
            Verdict::Invalid(InvalidReason::Revoked)
        );
        // expired
        assert_eq!(
            verdict(store, &expired.key).await,
            Verdict::Invalid(InvalidReason::Expired)
        );
        let found = store
            .find(&expired.key)
            .await
            .expect("find")
            .expect("stored");
        assert_eq!(found.why_invalid(), Some(WhyInvalid::Expired));
    }
}

pub async fn expiry_is_checked_at_the_millisecond<S: KeyStore + KeyVerifier>(store: &S) {
    let owner = new_owner(KeyKind::User);
    let at = UNIX_EPOCH + Duration::from_nanos(4_102_444_800_123_456_789); // 2100, sub-ms part
    let created = create(store, &owner, NewKey::new("until 2100").expires_at(at)).await;
    let truncated = UNIX_EPOCH + Duration::from_millis(4_102_444_800_123);
    assert_eq!(created.record.expires_at, Some(truncated));
    assert_eq!(
        store
            .get(created.record.id)
            .await
            .expect("get")
            .and_then(|r| r.expires_at),
        Some(truncated)
    );
    match verdict(store, &created.key).await {
        Verdict::Valid(info) => assert_eq!(info.expires_at, Some(truncated)),
        other => panic!("valid until 2100, got {other:?}"),
    }
    let soon = create(
        store,
        &owner,
        NewKey::new("soon").expires_in(Duration::from_millis(300)),
    )
    .await;
    assert!(verdict(store, &soon.key).await.is_valid());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        verdict(store, &soon.key).await,
        Verdict::Invalid(InvalidReason::Expired)
    );
    assert!(is_whole_millis(soon.record.expires_at.expect("expiry")));
}

pub async fn public_keys_are_pk_and_verify<S: KeyStore + KeyVerifier>(store: &S) {
    let owner = new_owner(KeyKind::Team);
    let created = create(store, &owner, NewKey::new("browser").public(true)).await;
    assert!(created.key.expose_secret().starts_with("pk_"));
    assert!(created.key.is_public() && created.record.is_public);
    assert_eq!(
        store
            .get(created.record.id)
            .await
            .expect("get")
            .map(|r| r.is_public),
        Some(true)
    );
    match verdict(store, &created.key).await {
        Verdict::Valid(info) => assert!(info.is_public),
        other => panic!("valid, got {other:?}"),
    }
}

pub async fn a_revocation_reaches_a_subscribed_cache_at_once<S>(store: &S)
where
    S: KeyStore + KeyVerifier + Clone,
{
    let cache = CachedVerifier::builder(store.clone())
        .ttl(Duration::from_secs(3600))
        .build();
    let created = create(store, &new_owner(KeyKind::User), NewKey::new("cached")).await;
    assert!(cache.verify(&created.key).await.expect("verify").is_valid());
    assert!(
        cache.verify(&created.key).await.expect("verify").is_valid(),
        "now cached for an hour"
    );
    store.revoke(created.record.id).await.expect("revoke");
    assert_eq!(
        cache.verify(&created.key).await.expect("verify"),
        Verdict::Invalid(InvalidReason::Revoked),
        "the cached verdict was dropped when the store revoked the key"
    );
}

/// Many tasks revoking, renaming and checking one key: every revocation answers the same first
/// timestamp, no rename brings the key back, and once a task has seen it revoked it never sees
/// it valid again.
pub async fn concurrent_revokes_updates_and_checks_lose_nothing<S>(store: &S)
where
    S: KeyStore + KeyVerifier + Clone,
{
    const TASKS: usize = 24;
    const ROUNDS: usize = 8;
    let owner = new_owner(KeyKind::User);
    let created = create(store, &owner, NewKey::new("contended")).await;
    let id = created.record.id;
    let key = created.key.clone();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let store = store.clone();
        let key = key.clone();
        tasks.spawn(async move {
            let mut revoked_ats = Vec::new();
            let mut descriptions = Vec::new();
            let mut seen_revoked = false;
            for round in 0..ROUNDS {
                match (t + round) % 3 {
                    0 => {
                        let r = store.revoke(id).await.expect("revoke");
                        revoked_ats.push(r.revoked_at.expect("revoked"));
                        seen_revoked = true;
                    }
                    1 => {
                        let d = format!("t{t}-r{round}");
                        let r = store
                            .update_description(id, d.clone())
                            .await
                            .expect("update");
                        descriptions.push(d);
                        if seen_revoked {
                            assert!(r.revoked_at.is_some(), "a rename resurrected a revoked key");
                        }
                    }
                    _ => match store.verify(&key).await.expect("verify") {
                        Verdict::Invalid(InvalidReason::Revoked) => seen_revoked = true,
                        Verdict::Valid(_) => assert!(!seen_revoked, "a revoked key came back"),
                        other => panic!("unexpected verdict {other:?}"),
                    },
                }
            }
            (revoked_ats, descriptions)
        });
    }
    let mut revoked_ats = HashSet::new();
    let mut descriptions = HashSet::new();
    while let Some(result) = tasks.join_next().await {
        let (ats, ds) = result.expect("task");
        revoked_ats.extend(ats);
        descriptions.extend(ds);
    }
    assert_eq!(
        revoked_ats.len(),
        1,
        "every revoke answered the first timestamp: {revoked_ats:?}"
    );
    let last = store.get(id).await.expect("get").expect("stored");
    assert_eq!(last.revoked_at, revoked_ats.into_iter().next());
    assert!(
        descriptions.contains(&last.description),
        "the last rename is kept: {}",
        last.description
    );
    assert_eq!(
        verdict(store, &key).await,
        Verdict::Invalid(InvalidReason::Revoked)
    );
}

pub async fn concurrent_creates_are_all_listed<S: KeyStore + Clone>(store: &S) {
    const TASKS: usize = 16;
    let owner = new_owner(KeyKind::Team);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let (store, owner) = (store.clone(), owner.clone());
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for i in 0..4 {
                ids.push(
                    store
                        .create(owner.clone(), NewKey::new(format!("{t}-{i}")))
                        .await
                        .expect("create")
                        .record
                        .id,
                );
            }
            ids
        });
    }
    let mut created = HashSet::new();
    while let Some(ids) = tasks.join_next().await {
        created.extend(ids.expect("task"));
    }
    let listed = store.list(&owner).await.expect("list");
    assert_eq!(listed.len(), TASKS * 4);
    assert_eq!(listed.iter().map(|r| r.id).collect::<HashSet<_>>(), created);
    assert!(
        listed
            .windows(2)
            .all(|w| w[0].created_at >= w[1].created_at),
        "newest first"
    );
}
