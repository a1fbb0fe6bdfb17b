//! The per-thread memo: the last few valid verdicts this thread read from the shared cache.
//!
//! # Why it exists
//!
//! A cache hit is the request path of almost every request. moka's `get` is fast, but it writes
//! shared memory on every read (its access-order bookkeeping, the entry's last-access time) and
//! the `Arc`s it hands out have one reference count shared by every thread serving that key, so
//! threads serving one hot key take turns owning the same cache lines. The memo keeps, per
//! thread, a private copy of the verdicts this thread served lately: a hit reads one
//! thread-local array and one shared atomic that only invalidations write (the epoch).
//!
//! # The door
//!
//! Two functions, [`get`] and [`put`], by cache id (the memo is shared by every
//! `CachedVerifier` on the thread), the key's digest, and the invalidation *epoch*. An entry is
//! answered only under the epoch it was put with: every invalidation moves the epoch, so every
//! memo entry on every thread is dead the moment an invalidation returns. The caller must read
//! the epoch **before** it reads and checks the shared cache it copies from (see
//! `bars.rs` for why that order makes a racing invalidation safe).
//!
//! An entry also ends at its [`Deadline`] (the verdict's TTL, on a coarse clock: one tick late
//! at most, 1–16 ms) and at the key's own expiry (checked exactly on every hit).

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use crate::key::KeyDigest;
use crate::verify::{KeyInfo, Owner};

/// Slots per thread (two-way set associative: 32 sets of two).
pub(super) const SLOTS: usize = 64;

/// The copy of the valid verdict on `digest` that this thread memoised for the cache
/// `cache_id` under `epoch`, if it is still good.
pub(super) fn get(cache_id: u64, digest: &KeyDigest, epoch: u64) -> Option<Arc<KeyInfo>> {
    MEMO.try_with(|memo| {
        let memo = &mut *memo.borrow_mut();
        let set = set_of(digest);
        let entry = memo.slots[set..set + 2]
            .iter_mut()
            .flatten()
            .find(|e| e.cache_id == cache_id && e.epoch == epoch && e.digest == *digest)?;
        if entry.until.passed() || entry.info.is_expired() {
            return None;
        }
        memo.clock += 1;
        entry.used = memo.clock;
        Some(Arc::clone(&entry.info))
    })
    .ok()
    .flatten()
}

/// Memoises `info` (a [`private_copy`]) as the valid verdict on `digest` for the cache
/// `cache_id`, good while the epoch is `epoch` and until `until`. `epoch` must have been read
/// before the verdict was read and checked.
pub(super) fn put(
    cache_id: u64,
    digest: &KeyDigest,
    epoch: u64,
    info: Arc<KeyInfo>,
    until: Deadline,
) {
    let _ = MEMO.try_with(|memo| {
        let memo = &mut *memo.borrow_mut();
        let set = set_of(digest);
        // This key's old slot, else an empty one, else the one used least recently.
        let pick = |e: &Option<Entry>| match e {
            Some(e) if e.cache_id == cache_id && e.digest == *digest => 0,
            None => 1,
            Some(e) => e.used.saturating_add(2),
        };
        let at = if pick(&memo.slots[set + 1]) < pick(&memo.slots[set]) {
            set + 1
        } else {
            set
        };
        memo.clock += 1;
        memo.slots[at] = Some(Entry {
            cache_id,
            digest: *digest,
            epoch,
            info,
            until,
            used: memo.clock,
        });
    });
}

/// A copy of a verdict whose reference counts (its own and its owner id's, which every request
/// clones into its principal) live on memory only this thread writes to.
pub(super) fn private_copy(
    key_id: uuid::Uuid,
    owner: &Owner,
    is_public: bool,
    expires_at: Option<std::time::SystemTime>,
) -> Arc<KeyInfo> {
    let owner = match owner {
        Owner::User(id) => Owner::User(Arc::from(&**id)),
        Owner::Team(id) => Owner::Team(Arc::from(&**id)),
    };
    Arc::new(KeyInfo::new(key_id, owner, is_public).with_expires_at(expires_at))
}

/// One slot: a copy of a valid verdict read from the shared cache.
struct Entry {
    cache_id: u64,
    digest: KeyDigest,
    epoch: u64,
    info: Arc<KeyInfo>,
    until: Deadline,
    /// When this thread last used the entry (its memo's clock), to evict the older of two.
    used: u64,
}

struct Memo {
    slots: [Option<Entry>; SLOTS],
    clock: u64,
}

thread_local! {
    static MEMO: RefCell<Memo> = const {
        RefCell::new(Memo {
            slots: [const { None }; SLOTS],
            clock: 0,
        })
    };
}

/// The first of the two slots of `digest`'s set.
pub(super) fn set_of(digest: &KeyDigest) -> usize {
    (usize::from(digest.as_bytes()[31]) % SLOTS) & !1
}

/// The end of a verdict's TTL, on a coarse monotonic clock where the platform has one (see
/// `coarse_clock`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Deadline(coarse_clock::Instant);

impl Deadline {
    /// `d` from now.
    pub(super) fn after(d: Duration) -> Self {
        Self(coarse_clock::after(coarse_clock::now(), d))
    }

    /// Whether the deadline has passed.
    pub(super) fn passed(&self) -> bool {
        coarse_clock::now() >= self.0
    }

    /// The time left until the deadline (zero once passed).
    pub(super) fn left(&self) -> Duration {
        coarse_clock::until(coarse_clock::now(), self.0)
    }
}

/// On Linux, Android, macOS, iOS, FreeBSD and Windows: the coarse monotonic clock
/// (`CLOCK_MONOTONIC_COARSE` on Linux: the kernel's last tick, 8 ns against 30 ns for
/// `Instant::now` here), so a memo entry can outlive its verdict's TTL by one tick (1–16 ms).
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    windows
))]
mod coarse_clock {
    use std::time::Duration;

    pub(super) type Instant = coarsetime::Instant;

    /// Without updating coarsetime's process-wide "recent" value: a shared cache line written
    /// on every hit is what the memo is there to avoid.
    pub(super) fn now() -> Instant {
        coarsetime::Instant::now_without_cache_update()
    }

    pub(super) fn after(now: Instant, d: Duration) -> Instant {
        now.saturating_add(coarsetime::Duration::from(d))
    }

    /// Saturating: zero once `then` has passed.
    pub(super) fn until(now: Instant, then: Instant) -> Duration {
        Duration::from(then - now)
    }
}

/// Elsewhere, where `coarsetime` would fall back to the wall clock: `std::time::Instant`.
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "ios",
    target_os = "freebsd",
    windows
)))]
mod coarse_clock {
    use std::time::Duration;

    pub(super) type Instant = std::time::Instant;

    pub(super) fn now() -> Instant {
        Instant::now()
    }

    /// A TTL too long for the clock ends in a century, or at once if even that overflows.
    pub(super) fn after(now: Instant, d: Duration) -> Instant {
        let century = Duration::from_secs(100 * 365 * 86_400);
        now.checked_add(d)
            .or_else(|| now.checked_add(century))
            .unwrap_or(now)
    }

    pub(super) fn until(now: Instant, then: Instant) -> Duration {
        then.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(owner: &str) -> Arc<KeyInfo> {
        private_copy(uuid::Uuid::new_v4(), &Owner::user(owner), false, None)
    }

    fn hour() -> Deadline {
        Deadline::after(Duration::from_secs(3600))
    }

    /// Digests that pick the same two-slot set as `first`.
    fn same_set(first: &KeyDigest, n: usize) -> Vec<KeyDigest> {
        (0u64..)
            .map(|i| KeyDigest::of(&format!("key {i}")))
            .filter(|d| set_of(d) == set_of(first) && d != first)
            .take(n)
            .collect()
    }

    #[test]
    fn an_entry_is_answered_only_under_its_cache_id_digest_and_epoch() {
        let digest = KeyDigest::of("a");
        let copy = info("u");
        put(1, &digest, 7, Arc::clone(&copy), hour());
        assert!(get(1, &digest, 7).is_some_and(|i| Arc::ptr_eq(&i, &copy)));
        assert!(get(1, &digest, 8).is_none(), "another epoch");
        assert!(get(2, &digest, 7).is_none(), "another cache");
        assert!(get(1, &KeyDigest::of("b"), 7).is_none(), "another digest");
    }

    #[test]
    fn an_entry_ends_at_its_deadline_and_at_the_keys_expiry() {
        let digest = KeyDigest::of("short");
        put(3, &digest, 0, info("u"), Deadline::after(Duration::ZERO));
        assert!(get(3, &digest, 0).is_none(), "deadline passed");
        let expired = private_copy(
            uuid::Uuid::new_v4(),
            &Owner::user("u"),
            false,
            Some(std::time::SystemTime::now() - Duration::from_secs(1)),
        );
        put(3, &digest, 0, expired, hour());
        assert!(get(3, &digest, 0).is_none(), "key expired");
    }

    #[test]
    fn two_entries_of_one_set_stay_and_a_third_evicts_the_least_recently_used() {
        let a = KeyDigest::of("first");
        let others = same_set(&a, 2);
        let (b, c) = (others[0], others[1]);
        put(4, &a, 0, info("a"), hour());
        put(4, &b, 0, info("b"), hour());
        for _ in 0..3 {
            assert!(
                get(4, &a, 0).is_some() && get(4, &b, 0).is_some(),
                "both stay"
            );
        }
        assert!(get(4, &b, 0).is_some());
        put(4, &c, 0, info("c"), hour());
        assert!(get(4, &a, 0).is_none(), "least recently used, evicted");
        assert!(get(4, &b, 0).is_some() && get(4, &c, 0).is_some());
    }

    #[test]
    fn the_memo_is_per_thread() {
        let digest = KeyDigest::of("mine");
        put(5, &digest, 0, info("u"), hour());
        let elsewhere = std::thread::spawn(move || get(5, &digest, 0).is_some())
            .join()
            .expect("thread");
        assert!(!elsewhere);
        assert!(get(5, &digest, 0).is_some());
    }

    #[test]
    fn private_copies_share_no_reference_count() {
        let owner = Owner::user("shared");
        let copy = private_copy(uuid::Uuid::new_v4(), &owner, true, None);
        let Owner::User(id) = &copy.owner else {
            panic!("a user")
        };
        let Owner::User(original) = &owner else {
            panic!("a user")
        };
        assert!(!Arc::ptr_eq(id, original));
        assert_eq!(copy.owner, owner);
        assert!(copy.is_public);
    }
}
