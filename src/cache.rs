//! [`CachedVerifier`]: a moka verdict cache in front of any [`KeyVerifier`].
//!
//! - Valid verdicts live for the positive TTL (default 60 s), and **never past the key's own
//!   `expires_at`**.
//! - Invalid verdicts live for the negative TTL (default 10 s) in a separate, separately bounded
//!   cache, so a flood of unknown keys cannot evict valid ones.
//! - Concurrent misses on one key share one verifier call.
//! - Verifier errors are never cached.
//! - A revocation through the wrapped store (or [`invalidate_key_id`](CachedVerifier::invalidate_key_id))
//!   takes effect at once. A revocation that keygate does not see (made directly at Stack Auth,
//!   say) takes effect when the entry's TTL runs out: the positive TTL is the longest a revoked key
//!   can still be accepted.
//! - The cache is keyed by the key's SHA-256 digest; it never holds a key.
//! - Hits are served from a small per-thread memo of recent valid verdicts when possible (no
//!   moka read). Any invalidation empties it in effect; an entry never outlives the key's expiry,
//!   and outlives the verdict's TTL by at most one tick of the coarse clock (1–16 ms). The memo
//!   is what [`cached_verdict`](KeyVerifier::cached_verdict) answers from.
//!
//! ```
//! use std::time::Duration;
//! use keygate::{CachedVerifier, MemoryKeyStore};
//!
//! let store = MemoryKeyStore::new();
//! let verifier = CachedVerifier::builder(store)
//!     .ttl(Duration::from_secs(30))
//!     .negative_ttl(Duration::from_secs(5))
//!     .max_entries(50_000)
//!     .build();
//! assert_eq!(verifier.stats().verifier_calls, 0);
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use moka::sync::Cache;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::key::{ApiKey, KeyDigest};
use crate::verify::{
    InvalidReason, KeyInfo, KeyVerifier, Owner, RevocationListener, Verdict, VerifyError,
};

/// Default lifetime of a cached valid verdict.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Default lifetime of a cached invalid verdict.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Default bound on cached valid verdicts.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;
/// Default bound on cached invalid verdicts.
pub const DEFAULT_MAX_NEGATIVE_ENTRIES: u64 = 10_000;

type Flight = Arc<OnceCell<Result<Verdict, VerifyError>>>;
type FlightKey = (KeyDigest, u64);

/// A caching [`KeyVerifier`] wrapper. Cheap to clone: clones share one cache.
pub struct CachedVerifier<V> {
    shared: Arc<Shared<V>>,
}

impl<V> Clone for CachedVerifier<V> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<V> {
    verifier: V,
    caches: Caches,
    /// Lookups under way, by digest and by the invalidation epoch they started in: a request
    /// that arrives after an invalidation never joins a lookup that started before it.
    inflight: Mutex<HashMap<FlightKey, Flight>>,
    counters: Counters,
    /// Tells this cache's entries apart in the per-thread memo.
    id: u64,
    ttl: Duration,
    /// Keeps the revocation hook registered with the verifier alive.
    on_revoke: Arc<dyn Fn(Uuid) + Send + Sync>,
}

#[derive(Clone)]
struct Caches {
    valid: Cache<KeyDigest, ValidEntry>,
    /// Key ids revoked within the last positive TTL. moka's predicate invalidation can still
    /// return an older entry for a moment, so every valid answer is checked against this set.
    revoked: Cache<Uuid, ()>,
    /// Whether anything was ever revoked (skips the set on the hot path until then).
    any_revoked: Arc<std::sync::atomic::AtomicBool>,
    invalid: Cache<KeyDigest, InvalidReason>,
    /// Bumped on every invalidation, before anything is removed, so that a lookup that started
    /// before it does not cache a verdict it may have read before the revocation.
    epoch: Arc<AtomicU64>,
}

impl Caches {
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn is_revoked(&self, key_id: Uuid) -> bool {
        self.any_revoked.load(Ordering::SeqCst) && self.revoked.contains_key(&key_id)
    }

    /// A revocation: the key id is also barred from the cache for the next positive TTL.
    fn revoke_key_id(&self, key_id: Uuid) {
        // Recorded before the epoch moves, so no answer read after this call can miss it.
        self.revoked.insert(key_id, ());
        self.any_revoked.store(true, Ordering::SeqCst);
        self.invalidate_key_id(key_id);
    }

    fn invalidate_key_id(&self, key_id: Uuid) {
        self.bump();
        // moka stops returning every matching entry inserted before this call at once, and
        // removes them in its housekeeping.
        if let Err(error) = self
            .valid
            .invalidate_entries_if(move |_, entry| entry.info.key_id == key_id)
        {
            tracing::error!(%error, "targeted invalidation refused; dropping every cached verdict");
            self.valid.invalidate_all();
        }
    }
}

#[derive(Default)]
struct Counters {
    hits: StripedCounter,
    negative_hits: AtomicU64,
    misses: AtomicU64,
    verifier_calls: AtomicU64,
    errors: AtomicU64,
}

/// The hit counter, which every cache hit bumps: split over cache-line-aligned stripes, one per
/// thread (modulo their number), so that threads serving hits at once do not contend for one
/// cache line.
#[derive(Default)]
struct StripedCounter([Stripe; STRIPES]);

const STRIPES: usize = 8;

#[derive(Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

impl StripedCounter {
    fn add_one(&self) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            static STRIPE: usize = (NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES as u64) as usize;
        }
        let stripe = STRIPE.try_with(|s| *s).unwrap_or(0);
        self.0[stripe].0.fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// A snapshot of a cache's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Requests answered by a cached valid verdict.
    pub hits: u64,
    /// Requests answered by a cached invalid verdict.
    pub negative_hits: u64,
    /// Requests that found nothing cached.
    pub misses: u64,
    /// Calls made to the wrapped verifier.
    pub verifier_calls: u64,
    /// Verifier calls that failed (never cached).
    pub errors: u64,
    /// Valid verdicts held (approximate: moka counts lazily).
    pub valid_entries: u64,
    /// Invalid verdicts held (approximate).
    pub invalid_entries: u64,
}

/// Builds a [`CachedVerifier`].
#[derive(Debug)]
#[must_use]
pub struct CachedVerifierBuilder<V> {
    verifier: V,
    ttl: Duration,
    negative_ttl: Duration,
    max_entries: u64,
    max_negative_entries: u64,
}

impl<V: KeyVerifier> CachedVerifierBuilder<V> {
    /// How long a valid verdict is kept (default 60 s). Also the longest a key revoked behind
    /// keygate's back can still be accepted.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long an invalid verdict is kept (default 10 s).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Bound on valid verdicts (default 100,000).
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self
    }

    /// Bound on invalid verdicts, kept apart from valid ones (default 10,000).
    pub fn max_negative_entries(mut self, n: u64) -> Self {
        self.max_negative_entries = n;
        self
    }

    /// Builds the cache and subscribes it to the verifier's revocations.
    pub fn build(self) -> CachedVerifier<V> {
        let ttl = self.ttl;
        let valid = Cache::builder()
            .max_capacity(self.max_entries)
            .expire_after(ValidExpiry { ttl })
            .support_invalidation_closures()
            .build();
        let invalid = Cache::builder()
            .max_capacity(self.max_negative_entries)
            .time_to_live(self.negative_ttl)
            .build();
        let caches = Caches {
            valid,
            invalid,
            epoch: Arc::new(AtomicU64::new(0)),
            revoked: Cache::builder()
                .max_capacity(self.max_entries)
                .time_to_live(ttl)
                .build(),
            any_revoked: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        };
        let hook_caches = caches.clone();
        let on_revoke: Arc<dyn Fn(Uuid) + Send + Sync> =
            Arc::new(move |key_id| hook_caches.revoke_key_id(key_id));
        self.verifier
            .subscribe_revocations(RevocationListener::new(&on_revoke));
        CachedVerifier {
            shared: Arc::new(Shared {
                verifier: self.verifier,
                caches,
                inflight: Mutex::new(HashMap::new()),
                counters: Counters::default(),
                id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
                ttl,
                on_revoke,
            }),
        }
    }
}

/// Valid verdicts expire after the TTL or at the key's own expiry, whichever is first.
struct ValidExpiry {
    ttl: Duration,
}

impl moka::Expiry<KeyDigest, ValidEntry> for ValidExpiry {
    fn expire_after_create(
        &self,
        _key: &KeyDigest,
        entry: &ValidEntry,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(match entry.info.expires_at {
            Some(at) => at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .min(self.ttl),
            None => self.ttl,
        })
    }
}

impl<V: KeyVerifier> CachedVerifier<V> {
    /// A cache with the default settings in front of `verifier`.
    pub fn new(verifier: V) -> Self {
        Self::builder(verifier).build()
    }

    /// A builder for a cache in front of `verifier`.
    pub fn builder(verifier: V) -> CachedVerifierBuilder<V> {
        CachedVerifierBuilder {
            verifier,
            ttl: DEFAULT_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_negative_entries: DEFAULT_MAX_NEGATIVE_ENTRIES,
        }
    }

    /// The wrapped verifier.
    pub fn get_ref(&self) -> &V {
        &self.shared.verifier
    }

    /// Forgets any verdict on `key`.
    pub fn invalidate(&self, key: &ApiKey) {
        let caches = &self.shared.caches;
        caches.bump();
        caches.valid.invalidate(key.digest());
        caches.invalid.invalidate(key.digest());
    }

    /// Forgets the valid verdict on the key with this id. (A revocation reported by the
    /// verifier's source does more: for the next positive TTL no valid verdict for that id is
    /// served from or stored in the cache.)
    pub fn invalidate_key_id(&self, key_id: Uuid) {
        self.shared.caches.invalidate_key_id(key_id);
    }

    /// A listener that drops revoked keys from this cache, for a revocation source the cache
    /// was not built on (a separately built `StackAuthClient`, a message bus, …).
    pub fn revocation_listener(&self) -> RevocationListener {
        RevocationListener::new(&self.shared.on_revoke)
    }

    /// Forgets every verdict.
    pub fn invalidate_all(&self) {
        let caches = &self.shared.caches;
        caches.bump();
        caches.valid.invalidate_all();
        caches.invalid.invalidate_all();
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        CacheStats {
            hits: c.hits.sum(),
            negative_hits: c.negative_hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            verifier_calls: c.verifier_calls.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            valid_entries: self.shared.caches.valid.entry_count(),
            invalid_entries: self.shared.caches.invalid.entry_count(),
        }
    }

    /// Runs moka's pending housekeeping (evictions, entry counts) now. Useful in tests.
    pub fn run_pending_tasks(&self) {
        self.shared.caches.valid.run_pending_tasks();
        self.shared.caches.invalid.run_pending_tasks();
    }

    /// The cached verdict on the key with this digest, if any, counting a hit.
    ///
    /// Valid verdicts are looked up in a small per-thread memo first: no moka read, no shared
    /// cache line touched. A memo entry is used only while nothing was invalidated since it was
    /// taken (the epoch), within the TTL of the verdict it copies, and before the key expires.
    fn cached(&self, digest: &KeyDigest) -> Option<Verdict> {
        let shared = &*self.shared;
        let caches = &shared.caches;
        let counters = &shared.counters;
        let epoch = caches.epoch();
        if let Some(verdict) = self.cached_verdict(digest) {
            return Some(verdict);
        }
        if let Some(entry) = caches.valid.get(digest) {
            // Belt and braces: moka's expiry already ends the entry at `expires_at`.
            if !entry.info.is_expired() && !caches.is_revoked(entry.info.key_id) {
                counters.hits.add_one();
                memo_put(shared.id, digest, epoch, &entry, shared.ttl);
                return Some(Verdict::Valid(entry.info));
            }
            caches.valid.invalidate(digest);
        }
        if let Some(reason) = caches.invalid.get(digest) {
            counters.negative_hits.fetch_add(1, Ordering::Relaxed);
            return Some(Verdict::Invalid(reason));
        }
        None
    }

    /// Same as [`cached`](Self::cached), without touching the counters or the memo.
    fn peek(&self, digest: &KeyDigest) -> Option<Verdict> {
        let caches = &self.shared.caches;
        if let Some(entry) = caches.valid.get(digest) {
            if !entry.info.is_expired() && !caches.is_revoked(entry.info.key_id) {
                return Some(Verdict::Valid(entry.info));
            }
        }
        caches.invalid.get(digest).map(Verdict::Invalid)
    }

    /// Remembers what the verifier said, unless an invalidation raced with the lookup.
    fn remember(&self, key: &ApiKey, epoch: u64, result: &Result<Verdict, VerifyError>) {
        let caches = &self.shared.caches;
        match result {
            Ok(Verdict::Valid(info)) => {
                if caches.epoch() != epoch || info.is_expired() || caches.is_revoked(info.key_id) {
                    return;
                }
                caches.invalid.invalidate(key.digest());
                caches.valid.insert(
                    *key.digest(),
                    ValidEntry {
                        info: Arc::clone(info),
                        cached_at: Instant::now(),
                    },
                );
                // An invalidation that bumped the epoch after the check above may have run
                // before the insert and missed it: look again, and undo.
                if caches.epoch() != epoch {
                    caches.valid.invalidate(key.digest());
                }
            }
            Ok(Verdict::Invalid(reason)) => caches.invalid.insert(*key.digest(), *reason),
            Err(error) => {
                self.shared.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %key, key_id = %key.key_id(), %error, "key verification failed; not cached");
            }
        }
    }

    async fn load(&self, key: &ApiKey, epoch: u64) -> Result<Verdict, VerifyError> {
        // A flight that finished just before this one started may have filled the cache.
        if let Some(verdict) = self.peek(key.digest()) {
            return Ok(verdict);
        }
        self.shared
            .counters
            .verifier_calls
            .fetch_add(1, Ordering::Relaxed);
        let result = self.shared.verifier.verify(key).await;
        self.remember(key, epoch, &result);
        result
    }
}

/// A cached valid verdict and when it was cached.
#[derive(Clone)]
struct ValidEntry {
    info: Arc<KeyInfo>,
    cached_at: Instant,
}

static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(0);

const MEMO_SLOTS: usize = 64;

/// One slot of the per-thread memo: a copy of a valid verdict read from moka.
struct MemoEntry {
    cache_id: u64,
    digest: KeyDigest,
    epoch: u64,
    /// A thread-private copy (see [`thread_private_copy`]).
    info: Arc<KeyInfo>,
    /// When the verdict's TTL ends.
    until: Deadline,
    /// When this thread last used the entry (its memo's clock), to evict the older of two.
    used: u64,
}

/// The per-thread memo: two-way set associative, so two hot keys whose digests pick the same
/// set both stay, and a third evicts the one used least recently.
struct Memo {
    slots: [Option<MemoEntry>; MEMO_SLOTS],
    clock: u64,
}

thread_local! {
    static MEMO: RefCell<Memo> = const {
        RefCell::new(Memo {
            slots: [const { None }; MEMO_SLOTS],
            clock: 0,
        })
    };
}

/// The first of the two slots of `digest`'s set.
fn memo_set(digest: &KeyDigest) -> usize {
    (usize::from(digest.as_bytes()[31]) % MEMO_SLOTS) & !1
}

/// A copy of `info` whose reference counts (its own and its owner id's, which every request
/// clones into its principal) live on memory only this thread writes to: threads serving one
/// key do not take turns owning one cache line, as they would with the shared `Arc`.
fn thread_private_copy(info: &KeyInfo) -> KeyInfo {
    let owner = match &info.owner {
        Owner::User(id) => Owner::User(Arc::from(&**id)),
        Owner::Team(id) => Owner::Team(Arc::from(&**id)),
    };
    KeyInfo {
        owner,
        ..info.clone()
    }
}

/// A memo entry's end, on a coarse monotonic clock where the platform has one (see
/// [`coarse_clock`]).
#[derive(Clone, Copy)]
struct Deadline(coarse_clock::Instant);

impl Deadline {
    fn after(d: Duration) -> Self {
        Self(coarse_clock::after(coarse_clock::now(), d))
    }

    fn passed(&self) -> bool {
        coarse_clock::now() >= self.0
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
}

/// The memo's copy of the valid verdict on `digest`, if it is still good: taken in this
/// invalidation epoch, before its [`Deadline`] (the verdict's TTL, to the clock's tick) and the
/// key's own expiry (checked exactly).
fn memo_get(cache_id: u64, digest: &KeyDigest, epoch: u64) -> Option<Arc<KeyInfo>> {
    MEMO.try_with(|memo| {
        let memo = &mut *memo.borrow_mut();
        let set = memo_set(digest);
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

fn memo_put(cache_id: u64, digest: &KeyDigest, epoch: u64, entry: &ValidEntry, ttl: Duration) {
    let left = ttl.saturating_sub(entry.cached_at.elapsed());
    let until = Deadline::after(left);
    let _ = MEMO.try_with(|memo| {
        let memo = &mut *memo.borrow_mut();
        let set = memo_set(digest);
        // This key's old slot, else an empty one, else the one used least recently.
        let pick = |e: &Option<MemoEntry>| match e {
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
        memo.slots[at] = Some(MemoEntry {
            cache_id,
            digest: *digest,
            epoch,
            info: Arc::new(thread_private_copy(&entry.info)),
            until,
            used: memo.clock,
        });
    });
}

/// Removes a flight from the in-flight map once its last waiter is done with it (or dropped).
struct FlightGuard<'a> {
    map: &'a Mutex<HashMap<FlightKey, Flight>>,
    key: FlightKey,
    flight: Flight,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let ours = map
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight));
        // Waiters clone the flight under this lock: 2 means only the map and this guard hold it,
        // or the flight is finished and later arrivals will find the cache filled.
        if ours && (self.flight.initialized() || Arc::strong_count(&self.flight) <= 2) {
            map.remove(&self.key);
        }
    }
}

impl<V: KeyVerifier> KeyVerifier for CachedVerifier<V> {
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        if let Some(verdict) = self.cached(key.digest()) {
            return Ok(verdict);
        }
        self.shared.counters.misses.fetch_add(1, Ordering::Relaxed);
        let epoch = self.shared.caches.epoch();
        let flight_key = (*key.digest(), epoch);
        let flight = {
            let mut map = self
                .shared
                .inflight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            Arc::clone(map.entry(flight_key).or_default())
        };
        let guard = FlightGuard {
            map: &self.shared.inflight,
            key: flight_key,
            flight,
        };
        guard
            .flight
            .get_or_init(|| self.load(key, epoch))
            .await
            .clone()
    }

    /// Answers from the cache only. A miss goes through [`verify`](Self::verify) even when the
    /// wrapped verifier could answer at once, so that concurrent misses share one call.
    fn verify_now(&self, key: &ApiKey) -> Option<Result<Verdict, VerifyError>> {
        self.cached(key.digest()).map(Ok)
    }

    /// Answers from this thread's memo only: a valid verdict the wrapped verifier gave for the
    /// key with this digest, which passed every format rule then.
    ///
    /// The layer asks before it has checked the secret's alphabet and the checksum, so a
    /// malformed key's digest is asked too: the memo is thread-local and read-only here, and
    /// the shared caches (whose admission policy counts reads) are only read for keys that
    /// passed every rule, through [`verify_now`](KeyVerifier::verify_now).
    fn cached_verdict(&self, digest: &KeyDigest) -> Option<Verdict> {
        let shared = &*self.shared;
        let caches = &shared.caches;
        let info = memo_get(shared.id, digest, caches.epoch())
            .filter(|info| !caches.is_revoked(info.key_id))?;
        shared.counters.hits.add_one();
        Some(Verdict::Valid(info))
    }

    fn subscribe_revocations(&self, listener: RevocationListener) {
        self.shared.verifier.subscribe_revocations(listener);
    }
}

impl<V> std::fmt::Debug for CachedVerifier<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedVerifier")
            .field("valid_entries", &self.shared.caches.valid.entry_count())
            .field("invalid_entries", &self.shared.caches.invalid.entry_count())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::key::{Deployment, KeyKind};
    use crate::verify::{KeyInfo, Owner};

    /// Says every key is valid (or every key unknown), and counts calls.
    struct Fixed {
        valid: bool,
        calls: AtomicUsize,
    }

    impl KeyVerifier for Fixed {
        async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(if self.valid {
                Verdict::valid(KeyInfo::new(key.key_id(), Owner::user("u"), false))
            } else {
                Verdict::Invalid(InvalidReason::NotFound)
            })
        }
    }

    fn fixed(valid: bool) -> Fixed {
        Fixed {
            valid,
            calls: AtomicUsize::new(0),
        }
    }

    fn key() -> ApiKey {
        ApiKey::generate(Uuid::new_v4(), KeyKind::User, false, Deployment::SelfHosted).expect("rng")
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn the_memo_never_outlives_the_ttl() {
        block_on(async {
            let cache = CachedVerifier::builder(fixed(true))
                .ttl(Duration::from_millis(150))
                .build();
            let key = key();
            assert!(cache.verify(&key).await.expect("verify").is_valid());
            assert!(cache.verify_now(&key).is_some(), "moka hit, memo filled");
            assert!(cache.verify_now(&key).is_some(), "memo hit");
            assert_eq!(cache.get_ref().calls.load(Ordering::SeqCst), 1);
            tokio::time::sleep(Duration::from_millis(250)).await;
            assert!(cache.verify_now(&key).is_none(), "lapsed with the TTL");
            assert!(cache.verify(&key).await.expect("verify").is_valid());
            assert_eq!(cache.get_ref().calls.load(Ordering::SeqCst), 2);
        });
    }

    #[test]
    fn the_digest_fast_path_reads_only_this_threads_memo() {
        let cache = CachedVerifier::new(fixed(true));
        let key = key();
        let (warm, cache2) = (key.clone(), cache.clone());
        // Verified and memoised on another thread: moka holds the verdict, this thread's memo
        // does not.
        std::thread::spawn(move || {
            block_on(async {
                assert!(cache2.verify(&warm).await.expect("verify").is_valid());
                assert!(cache2.cached_verdict(warm.digest()).is_none(), "moka only");
                assert!(cache2.verify_now(&warm).is_some());
                assert!(cache2.cached_verdict(warm.digest()).is_some(), "memoised");
            })
        })
        .join()
        .expect("thread");
        assert!(
            cache.cached_verdict(key.digest()).is_none(),
            "not in this thread's memo"
        );
        assert!(
            cache.verify_now(&key).is_some(),
            "moka, for a fully parsed key"
        );
        assert!(
            cache.cached_verdict(key.digest()).is_some(),
            "now memoised here"
        );
        // An unknown digest is never answered, and counts nothing.
        let before = cache.stats();
        assert!(cache.cached_verdict(&KeyDigest::of("not a key")).is_none());
        assert_eq!(cache.stats().hits, before.hits);
        assert_eq!(cache.get_ref().calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn two_hot_keys_in_one_memo_set_both_stay_and_a_third_evicts_the_older() {
        let cache = CachedVerifier::new(fixed(true));
        // Three keys whose digests pick the same two-slot set.
        let first = key();
        let mut same_set = Vec::new();
        while same_set.len() < 2 {
            let k = key();
            if memo_set(k.digest()) == memo_set(first.digest()) {
                same_set.push(k);
            }
        }
        let (a, b, c) = (first, same_set.remove(0), same_set.remove(0));
        block_on(async {
            for k in [&a, &b, &c] {
                assert!(cache.verify(k).await.expect("verify").is_valid());
            }
        });
        let memoised = |k: &ApiKey| cache.cached_verdict(k.digest()).is_some();
        // `verify` filled moka; `verify_now` copies a verdict into this thread's memo.
        assert!(cache.verify_now(&a).is_some() && cache.verify_now(&b).is_some());
        for _ in 0..3 {
            assert!(memoised(&a) && memoised(&b), "both stay");
        }
        // `b` was used last: `c` takes `a`'s slot.
        assert!(memoised(&b));
        assert!(cache.verify_now(&c).is_some());
        assert!(!memoised(&a), "least recently used, evicted");
        assert!(memoised(&b) && memoised(&c));
    }

    #[test]
    fn a_ttl_too_long_for_the_clock_does_not_overflow() {
        block_on(async {
            let cache = CachedVerifier::builder(fixed(true))
                .ttl(Duration::from_secs(200 * 365 * 86_400))
                .build();
            let key = key();
            assert!(cache.verify(&key).await.expect("verify").is_valid());
            assert!(cache.verify_now(&key).is_some(), "moka hit, memo filled");
            assert!(cache.cached_verdict(key.digest()).is_some(), "memo hit");
            assert_eq!(cache.get_ref().calls.load(Ordering::SeqCst), 1);
        });
    }

    #[test]
    fn the_memo_is_per_cache_and_forgets_on_invalidation() {
        block_on(async {
            let yes = CachedVerifier::new(fixed(true));
            let no = CachedVerifier::new(fixed(false));
            let key = key();
            assert!(yes.verify(&key).await.expect("verify").is_valid());
            assert!(yes.verify_now(&key).is_some());
            // Another cache on this thread must not see the first one's memo.
            assert_eq!(
                no.verify(&key).await.expect("verify"),
                Verdict::Invalid(InvalidReason::NotFound)
            );
            yes.invalidate_key_id(key.key_id());
            assert!(yes.verify_now(&key).is_none(), "memo and moka both forgot");
            let stats = yes.stats();
            assert_eq!((stats.hits, stats.verifier_calls), (1, 1), "{stats:?}");
        });
    }
}
