//! The shared tiers: the moka caches of valid and invalid verdicts, their [`Bars`], and the
//! table of owner records the valid entries share.
//!
//! A cached valid verdict holds what a request needs and nothing else: the owner (shared: one
//! record per owner and `pk_` flag, however many keys it has), the expiry, the epoch it was born
//! in and when its TTL ends. The key id is the key's own, which every reader has at hand (the
//! cache is read with the key). 32 bytes on 64-bit Linux, against a `KeyInfo` behind an `Arc`
//! with its owner id and description in two more allocations before. The description is not
//! kept: a verdict served from the cache carries an empty one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::sync::Cache;
use uuid::Uuid;

use super::bars::Bars;
use super::memo::{self, Deadline};
use crate::key::KeyDigest;
use crate::verify::{InvalidReason, KeyInfo, Owner};

/// The caches of one `CachedVerifier`.
pub(super) struct Tiers {
    pub(super) valid: Cache<KeyDigest, ValidEntry>,
    pub(super) invalid: Cache<KeyDigest, InvalidEntry>,
    pub(super) bars: Arc<Bars>,
    owners: Owners,
}

impl Tiers {
    pub(super) fn new(
        ttl: Duration,
        negative_ttl: Duration,
        max_entries: u64,
        max_negative_entries: u64,
    ) -> Self {
        let valid = Cache::builder()
            .max_capacity(max_entries)
            .expire_after(ValidExpiry);
        let invalid = Cache::builder()
            .max_capacity(max_negative_entries)
            .time_to_live(negative_ttl);
        // Evictions are counted with the `metrics` feature only: without it, no listener at all.
        #[cfg(feature = "metrics")]
        let (valid, invalid) = (
            valid.eviction_listener(|_, _, cause| crate::metrics::cache_eviction(true, cause)),
            invalid.eviction_listener(|_, _, cause| crate::metrics::cache_eviction(false, cause)),
        );
        Self {
            valid: valid.build(),
            invalid: invalid.build(),
            bars: Arc::new(Bars::new(
                ttl,
                negative_ttl,
                usize::try_from(max_entries).unwrap_or(usize::MAX),
            )),
            owners: Owners::default(),
        }
    }

    /// The entry for a valid verdict on the key with id `key_id`, from a lookup that started
    /// in epoch `born`, good until `until`; `None` for an expiry the entry cannot hold (before
    /// 1970 or after 2554: not cached).
    pub(super) fn valid_entry(
        &self,
        key_id: Uuid,
        info: &KeyInfo,
        born: u64,
        until: Deadline,
    ) -> Option<ValidEntry> {
        let expires = match info.expires_at {
            None => NEVER,
            Some(at) => at
                .duration_since(UNIX_EPOCH)
                .ok()
                .and_then(|d| u64::try_from(d.as_nanos()).ok())
                .filter(|&nanos| nanos != NEVER)?,
        };
        // A verifier that names another key id is refused by the layer; the entry is still
        // barred by the key's own id, and gives back the id the verifier named.
        let claimed_id = (info.key_id != key_id).then_some(info.key_id);
        Some(ValidEntry {
            owner: self.owners.intern(&info.owner, info.is_public, claimed_id),
            expires,
            born,
            until,
        })
    }

    /// Owner records held (for tests).
    #[cfg(test)]
    pub(super) fn owner_records(&self) -> usize {
        self.owners.len()
    }
}

/// `ValidEntry::expires` of a key that never expires.
const NEVER: u64 = u64::MAX;

/// A cached valid verdict.
#[derive(Clone)]
pub(super) struct ValidEntry {
    owner: Arc<OwnerRecord>,
    /// When the key expires, in nanoseconds since 1970 ([`NEVER`]: it does not).
    expires: u64,
    /// The epoch the lookup that found it started in.
    pub(super) born: u64,
    /// The end of its TTL, counted from when the lookup started.
    pub(super) until: Deadline,
}

impl ValidEntry {
    pub(super) fn expires_at(&self) -> Option<SystemTime> {
        (self.expires != NEVER).then(|| UNIX_EPOCH + Duration::from_nanos(self.expires))
    }

    /// Whether the key has expired by now. Reads the clock only for a key that expires.
    pub(super) fn is_expired(&self) -> bool {
        self.expires_at().is_some_and(|at| at <= SystemTime::now())
    }

    /// The verdict on the key with id `key_id` (the one it was cached for) as a [`KeyInfo`]
    /// this thread alone holds (see [`memo::private_copy`]).
    pub(super) fn private_info(&self, key_id: Uuid) -> Arc<KeyInfo> {
        memo::private_copy(
            self.owner.claimed_id.unwrap_or(key_id),
            &self.owner.owner,
            self.owner.is_public,
            self.expires_at(),
        )
    }
}

/// A cached invalid verdict.
#[derive(Clone, Copy)]
pub(super) struct InvalidEntry {
    pub(super) reason: InvalidReason,
    pub(super) born: u64,
}

/// What valid entries share: the owner and the key's `pk_` flag (and, from a verifier that
/// contradicts the key, the key id it named instead: such a record is not shared).
struct OwnerRecord {
    owner: Owner,
    is_public: bool,
    claimed_id: Option<Uuid>,
}

/// One [`OwnerRecord`] per owner and flag while any entry holds it.
#[derive(Default)]
struct Owners {
    records: Mutex<OwnerTable>,
}

#[derive(Default)]
struct OwnerTable {
    map: HashMap<(Owner, bool, Option<Uuid>), Weak<OwnerRecord>>,
    /// Drop the dead records when there are more than this many.
    prune_at: usize,
}

impl Owners {
    /// The record of `owner` with `is_public` and `claimed_id`: the live one, or a new one.
    fn intern(&self, owner: &Owner, is_public: bool, claimed_id: Option<Uuid>) -> Arc<OwnerRecord> {
        let mut table = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (owner.clone(), is_public, claimed_id);
        if let Some(record) = table.map.get(&key).and_then(Weak::upgrade) {
            return record;
        }
        let record = Arc::new(OwnerRecord {
            owner: owner.clone(),
            is_public,
            claimed_id,
        });
        table.map.insert(key, Arc::downgrade(&record));
        if table.map.len() > table.prune_at {
            table.map.retain(|_, record| record.strong_count() > 0);
            table.prune_at = (table.map.len() * 2).max(1024);
        }
        record
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let table = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        table.map.values().filter(|r| r.strong_count() > 0).count()
    }
}

/// Valid verdicts expire at the end of their TTL (counted from when their lookup started) or at
/// the key's own expiry, whichever is first.
struct ValidExpiry;

impl moka::Expiry<KeyDigest, ValidEntry> for ValidExpiry {
    fn expire_after_create(
        &self,
        _key: &KeyDigest,
        entry: &ValidEntry,
        _created_at: Instant,
    ) -> Option<Duration> {
        let left = entry.until.left();
        Some(match entry.expires_at() {
            Some(at) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .min(left),
            None => left,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers() -> Tiers {
        Tiers::new(Duration::from_secs(60), Duration::from_secs(10), 100, 100)
    }

    fn hour() -> Deadline {
        Deadline::after(Duration::from_secs(3600))
    }

    #[test]
    fn a_valid_entry_is_32_bytes_on_64_bit_linux() {
        if cfg!(all(target_os = "linux", target_pointer_width = "64")) {
            assert_eq!(std::mem::size_of::<ValidEntry>(), 32);
        }
    }

    #[test]
    fn an_entry_gives_back_what_a_request_needs() {
        let tiers = tiers();
        let at = SystemTime::now() + Duration::from_secs(300);
        let info = KeyInfo::new(Uuid::new_v4(), Owner::team("t-1"), true)
            .with_expires_at(Some(at))
            .with_description("not kept");
        let entry = tiers
            .valid_entry(info.key_id, &info, 3, hour())
            .expect("entry");
        let back = entry.private_info(info.key_id);
        assert_eq!(
            (back.key_id, &back.owner, back.is_public, back.expires_at),
            (info.key_id, &info.owner, true, Some(at))
        );
        assert_eq!(&*back.description, "", "the description is not cached");
        assert_eq!(entry.born, 3);
        assert!(!entry.is_expired());
    }

    #[test]
    fn expiries_the_entry_cannot_hold_are_not_cached() {
        let tiers = tiers();
        let info = |at| KeyInfo::new(Uuid::new_v4(), Owner::user("u"), false).with_expires_at(at);
        assert!(tiers
            .valid_entry(Uuid::nil(), &info(None), 0, hour())
            .is_some());
        let before_1970 = UNIX_EPOCH - Duration::from_secs(1);
        assert!(tiers
            .valid_entry(Uuid::nil(), &info(Some(before_1970)), 0, hour())
            .is_none());
        let after_2554 = UNIX_EPOCH + Duration::from_secs(600 * 365 * 86_400);
        assert!(tiers
            .valid_entry(Uuid::nil(), &info(Some(after_2554)), 0, hour())
            .is_none());
    }

    #[test]
    fn entries_of_one_owner_share_one_record_while_any_holds_it() {
        let tiers = tiers();
        let info = |owner: &str, public| KeyInfo::new(Uuid::nil(), Owner::user(owner), public);
        let a = tiers.valid_entry(Uuid::nil(), &info("u", false), 0, hour());
        let b = tiers.valid_entry(Uuid::nil(), &info("u", false), 0, hour());
        let public = tiers.valid_entry(Uuid::nil(), &info("u", true), 0, hour());
        let other = tiers.valid_entry(Uuid::nil(), &info("v", false), 0, hour());
        let (a, b) = (a.expect("a"), b.expect("b"));
        assert!(Arc::ptr_eq(&a.owner, &b.owner));
        assert_eq!(tiers.owner_records(), 3);
        drop((a, b, public, other));
        assert_eq!(tiers.owner_records(), 0, "records die with their entries");
    }

    #[test]
    fn an_entry_naming_another_key_id_gives_that_id_back() {
        let tiers = tiers();
        let (own, named) = (Uuid::new_v4(), Uuid::new_v4());
        let info = KeyInfo::new(named, Owner::user("u"), false);
        let entry = tiers.valid_entry(own, &info, 0, hour()).expect("entry");
        assert_eq!(
            entry.private_info(own).key_id,
            named,
            "what the layer checks"
        );
    }
}
