//! Minting keys, and bending them out of shape.

use std::time::{SystemTime, UNIX_EPOCH};

use keygate::key::{ApiKey, Deployment, KeyKind};
use keygate::store::CreatedKey;
use keygate::{KeyStore, MemoryKeyStore, NewKey, Owner};
use uuid::Uuid;

/// Creates a key in `store`.
pub async fn mint(store: &MemoryKeyStore, owner: Owner, new: NewKey) -> CreatedKey {
    store.create(owner, new).await.expect("create key")
}

/// The full key of `created`, as a caller sends it.
pub fn secret(created: &CreatedKey) -> String {
    created.key.expose_secret().to_owned()
}

/// A well-formed key that no store knows.
pub fn generated(kind: KeyKind, is_public: bool) -> ApiKey {
    ApiKey::generate(Uuid::new_v4(), kind, is_public, Deployment::SelfHosted).expect("OS RNG")
}

/// A well-formed secret user key that no store knows.
pub fn unknown_key() -> ApiKey {
    generated(KeyKind::User, false)
}

/// A well-formed secret user key that no store knows, as a caller sends it.
pub fn unknown_secret() -> String {
    unknown_key().expose_secret().to_owned()
}

/// `key` with its last checksum digit changed: well-formed in every other way.
pub fn with_bad_checksum(key: &str) -> String {
    let (head, last) = key.split_at(key.len() - 1);
    format!("{head}{}", if last == "0" { "1" } else { "0" })
}

/// `key` with the character at `at` replaced by `c`.
pub fn with_char(key: &str, at: usize, c: char) -> String {
    let mut key = key.to_owned();
    key.replace_range(at..=at, c.encode_utf8(&mut [0; 4]));
    key
}

/// A store with one key of each sort.
pub struct Keys {
    pub store: MemoryKeyStore,
    /// Secret user key of `user-1`.
    pub user: CreatedKey,
    /// Secret team key of `team-1`.
    pub team: CreatedKey,
    /// Public user key of `user-2`.
    pub public_user: CreatedKey,
    /// Public team key of `team-2`.
    pub public_team: CreatedKey,
}

impl Keys {
    pub async fn new() -> Self {
        let store = MemoryKeyStore::new();
        let user = mint(&store, Owner::user("user-1"), NewKey::new("user")).await;
        let team = mint(&store, Owner::team("team-1"), NewKey::new("team")).await;
        let public_user = mint(
            &store,
            Owner::user("user-2"),
            NewKey::new("public user").public(true),
        )
        .await;
        let public_team = mint(
            &store,
            Owner::team("team-2"),
            NewKey::new("public team").public(true),
        )
        .await;
        Self {
            store,
            user,
            team,
            public_user,
            public_team,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Timestamps, in milliseconds since the epoch as Stack Auth keeps them
// ---------------------------------------------------------------------------------------------

/// `t` in milliseconds since the epoch.
pub fn millis(t: Option<SystemTime>) -> Option<u128> {
    t.map(|t| {
        t.duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis()
    })
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
}

/// `offset_secs` from now, in milliseconds since the epoch.
pub fn millis_from_now(offset_secs: i64) -> i64 {
    now_ms() + offset_secs * 1000
}
