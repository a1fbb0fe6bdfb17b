//! [`MemoryKeyStore`]: an in-process store that keeps SHA-256 digests only.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use uuid::Uuid;

use super::{to_millis_precision, CreatedKey, KeyRecord, KeyStore, NewKey, StoreError};
use crate::key::{ApiKey, Deployment, KeyDigest};
use crate::verify::{
    InvalidReason, KeyVerifier, Owner, RevocationListener, RevocationListeners, Verdict,
    VerifyError,
};

/// An in-memory key store and verifier. Cheap to clone: clones share the same keys.
///
/// It keeps each key's SHA-256 digest, never the key. Lookups are by digest, and the digest is
/// compared in constant time. It answers [`KeyVerifier::verify_now`] synchronously, so the layer
/// never waits on it.
#[derive(Clone, Debug, Default)]
pub struct MemoryKeyStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: RwLock<State>,
    listeners: RevocationListeners,
    deployment: Option<Deployment>,
}

#[derive(Debug, Default)]
struct State {
    by_id: HashMap<Uuid, Stored>,
    by_digest: HashMap<KeyDigest, Uuid>,
    sequence: u64,
}

#[derive(Debug)]
struct Stored {
    record: KeyRecord,
    digest: KeyDigest,
    sequence: u64,
}

impl MemoryKeyStore {
    /// An empty store minting self-hosted keys (scanner flag `1`/`3`).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store minting keys marked with `deployment` in their scanner flag.
    pub fn with_deployment(deployment: Deployment) -> Self {
        Self {
            inner: Arc::new(Inner {
                deployment: Some(deployment),
                ..Inner::default()
            }),
        }
    }

    /// How many keys the store holds, valid or not.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// Whether the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn check_now(&self, key: &ApiKey) -> Verdict {
        let state = self.read();
        let stored = state
            .by_digest
            .get(key.digest())
            .and_then(|id| state.by_id.get(id))
            .filter(|s| s.digest == *key.digest());
        match stored {
            None => Verdict::Invalid(InvalidReason::NotFound),
            Some(s) => s.record.verdict(key.kind(), SystemTime::now()),
        }
    }

    fn create_now(&self, owner: Owner, new: NewKey) -> Result<CreatedKey, StoreError> {
        let id = Uuid::new_v4();
        let key = ApiKey::generate(
            id,
            owner.kind(),
            new.is_public,
            self.inner.deployment.unwrap_or(Deployment::SelfHosted),
        )
        .map_err(StoreError::Random)?;
        let record = KeyRecord {
            id,
            owner,
            description: new.description,
            created_at: to_millis_precision(SystemTime::now()),
            expires_at: new.expires_at.map(to_millis_precision),
            revoked_at: None,
            is_public: new.is_public,
            last_four: key.last_four().to_owned(),
        };
        let mut state = self.write();
        state.sequence += 1;
        let sequence = state.sequence;
        state.by_digest.insert(*key.digest(), id);
        state.by_id.insert(
            id,
            Stored {
                record: record.clone(),
                digest: *key.digest(),
                sequence,
            },
        );
        Ok(CreatedKey { key, record })
    }
}

impl KeyStore for MemoryKeyStore {
    async fn create(&self, owner: Owner, new: NewKey) -> Result<CreatedKey, StoreError> {
        self.create_now(owner, new)
    }

    async fn list(&self, owner: &Owner) -> Result<Vec<KeyRecord>, StoreError> {
        let state = self.read();
        let mut keys: Vec<&Stored> = state
            .by_id
            .values()
            .filter(|s| s.record.owner == *owner)
            .collect();
        keys.sort_by(|a, b| {
            b.record
                .created_at
                .cmp(&a.record.created_at)
                .then(b.sequence.cmp(&a.sequence))
        });
        Ok(keys.into_iter().map(|s| s.record.clone()).collect())
    }

    async fn get(&self, key_id: Uuid) -> Result<Option<KeyRecord>, StoreError> {
        Ok(self.read().by_id.get(&key_id).map(|s| s.record.clone()))
    }

    async fn find(&self, key: &ApiKey) -> Result<Option<KeyRecord>, StoreError> {
        let state = self.read();
        Ok(state
            .by_digest
            .get(key.digest())
            .and_then(|id| state.by_id.get(id))
            .filter(|s| s.digest == *key.digest())
            .map(|s| s.record.clone()))
    }

    async fn update_description(
        &self,
        key_id: Uuid,
        description: String,
    ) -> Result<KeyRecord, StoreError> {
        let mut state = self.write();
        let stored = state.by_id.get_mut(&key_id).ok_or(StoreError::NotFound)?;
        stored.record.description = description;
        Ok(stored.record.clone())
    }

    async fn revoke(&self, key_id: Uuid) -> Result<KeyRecord, StoreError> {
        let record = {
            let mut state = self.write();
            let stored = state.by_id.get_mut(&key_id).ok_or(StoreError::NotFound)?;
            if stored.record.revoked_at.is_none() {
                stored.record.revoked_at = Some(to_millis_precision(SystemTime::now()));
            }
            stored.record.clone()
        };
        // Outside the lock: listeners invalidate caches, which may call back into the store.
        self.inner.listeners.notify(key_id);
        Ok(record)
    }
}

impl KeyVerifier for MemoryKeyStore {
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        Ok(self.check_now(key))
    }

    fn verify_now(&self, key: &ApiKey) -> Option<Result<Verdict, VerifyError>> {
        Some(Ok(self.check_now(key)))
    }

    fn subscribe_revocations(&self, listener: RevocationListener) {
        self.inner.listeners.add(listener);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::key::KeyKind;
    use crate::store::WhyInvalid;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn lifecycle_follows_stack_auth() {
        block_on(async {
            let store = MemoryKeyStore::new();
            let owner = Owner::user("u1");
            let first = store
                .create(owner.clone(), NewKey::new("first"))
                .await
                .expect("create");
            let second = store
                .create(owner.clone(), NewKey::new("second").public(true))
                .await
                .expect("create");
            store
                .create(Owner::team("t1"), NewKey::new("team"))
                .await
                .expect("create");

            assert!(first.key.expose_secret().starts_with("sk_"));
            assert!(second.key.expose_secret().starts_with("pk_"));
            assert_eq!(first.key.kind(), KeyKind::User);
            assert_eq!(first.record.last_four, first.key.last_four());

            let listed = store.list(&owner).await.expect("list");
            let ids: Vec<Uuid> = listed.iter().map(|r| r.id).collect();
            assert_eq!(ids, vec![second.record.id, first.record.id], "newest first");

            let renamed = store
                .update_description(first.record.id, "renamed".into())
                .await
                .expect("update");
            assert_eq!(renamed.description, "renamed");

            let revoked = store.revoke(first.record.id).await.expect("revoke");
            let at = revoked.revoked_at.expect("revoked");
            tokio::time::sleep(Duration::from_millis(5)).await;
            let again = store.revoke(first.record.id).await.expect("revoke again");
            assert_eq!(
                again.revoked_at,
                Some(at),
                "a second revoke keeps the first time"
            );
            assert_eq!(again.why_invalid(), Some(WhyInvalid::ManuallyRevoked));

            assert_eq!(
                store.verify(&first.key).await.expect("verify"),
                Verdict::Invalid(InvalidReason::Revoked)
            );
            assert!(store.verify(&second.key).await.expect("verify").is_valid());
            assert!(matches!(
                store.revoke(Uuid::new_v4()).await,
                Err(StoreError::NotFound)
            ));
        });
    }

    #[test]
    fn the_store_never_holds_the_key() {
        block_on(async {
            let store = MemoryKeyStore::new();
            let created = store
                .create(Owner::user("u"), NewKey::new("d"))
                .await
                .expect("create");
            let dump = format!("{store:?}");
            assert!(!dump.contains(created.key.expose_secret()));
            assert!(!dump.contains(&created.key.expose_secret()[3..48]));
        });
    }

    #[test]
    fn expired_and_unknown_keys_are_invalid() {
        block_on(async {
            let store = MemoryKeyStore::new();
            let past = SystemTime::now() - Duration::from_secs(10);
            let created = store
                .create(Owner::team("t"), NewKey::new("old").expires_at(past))
                .await
                .expect("create");
            assert_eq!(
                store.verify(&created.key).await.expect("verify"),
                Verdict::Invalid(InvalidReason::Expired)
            );
            let stranger =
                ApiKey::generate(Uuid::new_v4(), KeyKind::User, false, Deployment::SelfHosted)
                    .expect("rng");
            assert_eq!(
                store.verify_now(&stranger).and_then(Result::ok),
                Some(Verdict::Invalid(InvalidReason::NotFound))
            );
        });
    }
}
