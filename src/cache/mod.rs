//! [`CachedVerifier`]: a moka verdict cache in front of any [`KeyVerifier`].
//!
//! - Valid verdicts live for the positive TTL (default 60 s, counted from when their lookup
//!   started), and **never past the key's own `expires_at`**.
//! - Invalid verdicts live for the negative TTL (default 10 s) in a separate, separately bounded
//!   cache, so a flood of unknown keys cannot evict valid ones.
//! - Concurrent misses on one key share one verifier call.
//! - Verifier errors are never cached.
//! - A revocation through the wrapped store, and every [`invalidate`](CachedVerifier::invalidate),
//!   [`invalidate_key_id`](CachedVerifier::invalidate_key_id) and
//!   [`invalidate_all`](CachedVerifier::invalidate_all), takes effect on every thread before the
//!   call returns, and a lookup that was under way at the time cannot put back what it read
//!   before. A revocation that keygate does not see (made directly at Stack Auth, say) takes
//!   effect when the entry's TTL runs out: the positive TTL is the longest a revoked key can
//!   still be accepted.
//! - The cache is keyed by the key's SHA-256 digest; it never holds a key.
//! - A cached valid verdict keeps what a request needs (key id, owner, kind, `pk_` flag,
//!   expiry): a verdict served from the cache carries an empty
//!   [`description`](crate::verify::KeyInfo::description); the first answer, straight from the
//!   wrapped verifier, carries the verifier's.
//! - Hits are served from a small per-thread memo of recent valid verdicts when possible (no
//!   moka read); an entry never outlives the key's expiry, and outlives the verdict's TTL by at
//!   most one tick of the coarse clock (1–16 ms).
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
//!
//! Inside: `tiers` (the moka caches and their compact entries), `bars` (how an invalidation is
//! made synchronous), `memo` (the per-thread fast path), `flight` (single flight), `stats`.

mod bars;
mod builder;
mod flight;
mod memo;
mod stats;
#[cfg(test)]
mod tests;
mod tiers;

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

pub use builder::CachedVerifierBuilder;
pub use stats::CacheStats;

use crate::key::{ApiKey, KeyDigest};
use crate::verify::{KeyVerifier, RevocationListener, Verdict, VerifyError};
use flight::Flights;
use memo::Deadline;
use stats::Counters;
use tiers::{InvalidEntry, Tiers, ValidEntry};

/// Default lifetime of a cached valid verdict.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Default lifetime of a cached invalid verdict.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Default bound on cached valid verdicts.
pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;
/// Default bound on cached invalid verdicts.
pub const DEFAULT_MAX_NEGATIVE_ENTRIES: u64 = 10_000;

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
    tiers: Tiers,
    flights: Flights,
    counters: Counters,
    /// Tells this cache's entries apart in the per-thread memo.
    id: u64,
    ttl: Duration,
    /// Keeps the revocation hook registered with the verifier alive.
    on_revoke: Arc<dyn Fn(Uuid) + Send + Sync>,
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

    /// Forgets any verdict on `key`, valid or invalid, on every thread, before it returns.
    pub fn invalidate(&self, key: &ApiKey) {
        let tiers = &self.shared.tiers;
        tiers.bars.bar_id(key.key_id(), false);
        tiers.valid.invalidate(key.digest());
        tiers.invalid.invalidate(key.digest());
    }

    /// Forgets the verdicts on the key with this id, on every thread, before it returns. (A
    /// revocation reported by the verifier's source does more: for the next positive TTL no
    /// valid verdict for that id is served from or stored in the cache.)
    ///
    /// The forgotten entries are refused from then on and leave moka when read or when they
    /// expire; [`stats`](Self::stats) counts them until then.
    pub fn invalidate_key_id(&self, key_id: Uuid) {
        self.shared.tiers.bars.bar_id(key_id, false);
    }

    /// A listener that drops revoked keys from this cache, for a revocation source the cache
    /// was not built on (a separately built `StackAuthClient`, a message bus, …).
    pub fn revocation_listener(&self) -> RevocationListener {
        RevocationListener::new(&self.shared.on_revoke)
    }

    /// Forgets every verdict, on every thread, before it returns.
    pub fn invalidate_all(&self) {
        let tiers = &self.shared.tiers;
        tiers.bars.bar_all();
        tiers.valid.invalidate_all();
        tiers.invalid.invalidate_all();
    }

    /// The counters so far.
    pub fn stats(&self) -> CacheStats {
        let tiers = &self.shared.tiers;
        self.shared
            .counters
            .snapshot(tiers.valid.entry_count(), tiers.invalid.entry_count())
    }

    /// Runs moka's pending housekeeping (evictions, entry counts) now. Useful in tests.
    pub fn run_pending_tasks(&self) {
        self.shared.tiers.valid.run_pending_tasks();
        self.shared.tiers.invalid.run_pending_tasks();
    }

    /// The cached verdict on the key with this digest, if any, counting a hit.
    ///
    /// Valid verdicts are looked up in this thread's memo first: no moka read, no shared cache
    /// line written. What moka answers is checked against the bars and memoised under the epoch
    /// read before it.
    fn cached(&self, key: &ApiKey) -> Option<Verdict> {
        let shared = &*self.shared;
        let tiers = &shared.tiers;
        let (digest, key_id) = (key.digest(), key.key_id());
        let epoch = tiers.bars.epoch();
        if let Some(info) = memo::get(shared.id, digest, epoch) {
            shared.counters.hits.add_one();
            crate::metrics::cache_hit();
            return Some(Verdict::Valid(info));
        }
        if let Some(entry) = tiers.valid.get(digest) {
            if self.serves(&entry, key_id) {
                let info = entry.private_info(key_id);
                memo::put(shared.id, digest, epoch, Arc::clone(&info), entry.until);
                shared.counters.hits.add_one();
                crate::metrics::cache_hit();
                return Some(Verdict::Valid(info));
            }
            // Dead: barred or expired. (A fresher entry put meanwhile goes too: one more miss.)
            tiers.valid.invalidate(digest);
        }
        if let Some(entry) = tiers.invalid.get(digest) {
            if tiers.bars.admits(entry.born, key_id, false) {
                Counters::bump(&shared.counters.negative_hits);
                crate::metrics::cache_negative_hit();
                return Some(Verdict::Invalid(entry.reason));
            }
            tiers.invalid.invalidate(digest);
        }
        None
    }

    /// Whether a valid entry read from moka for the key with id `key_id` may be served.
    fn serves(&self, entry: &ValidEntry, key_id: Uuid) -> bool {
        // Belt and braces on the expiry: moka's already ends the entry at `expires_at`.
        let bars = &self.shared.tiers.bars;
        !entry.is_expired() && !entry.until.passed() && bars.admits(entry.born, key_id, true)
    }

    /// Same as [`cached`](Self::cached), without touching the counters or the memo.
    fn peek(&self, key: &ApiKey) -> Option<Verdict> {
        let tiers = &self.shared.tiers;
        let (digest, key_id) = (key.digest(), key.key_id());
        if let Some(entry) = tiers.valid.get(digest) {
            if self.serves(&entry, key_id) {
                return Some(Verdict::Valid(entry.private_info(key_id)));
            }
        }
        tiers
            .invalid
            .get(digest)
            .filter(|entry| tiers.bars.admits(entry.born, key_id, false))
            .map(|entry| Verdict::Invalid(entry.reason))
    }

    /// Remembers what the verifier said about `key` in a lookup that started in epoch `born`,
    /// unless an invalidation since then bars it.
    fn remember(
        &self,
        key: &ApiKey,
        born: u64,
        until: Deadline,
        result: &Result<Verdict, VerifyError>,
    ) {
        let tiers = &self.shared.tiers;
        let bars = &tiers.bars;
        let (digest, key_id) = (key.digest(), key.key_id());
        match result {
            Ok(Verdict::Valid(info)) if !info.is_expired() => {
                if !bars.admits(born, key_id, true) {
                    return;
                }
                let Some(entry) = tiers.valid_entry(key_id, info, born, until) else {
                    return;
                };
                tiers.invalid.invalidate(digest);
                tiers.valid.insert(*digest, entry);
                // Readers check the bars themselves; this only frees the slot early.
                if !bars.admits(born, key_id, true) {
                    tiers.valid.invalidate(digest);
                }
            }
            Ok(Verdict::Valid(_)) => {}
            Ok(Verdict::Invalid(reason)) => {
                if !bars.admits(born, key_id, false) {
                    return;
                }
                let entry = InvalidEntry {
                    reason: *reason,
                    born,
                };
                tiers.invalid.insert(*digest, entry);
                if !bars.admits(born, key_id, false) {
                    tiers.invalid.invalidate(digest);
                }
            }
            Err(error) => {
                Counters::bump(&self.shared.counters.errors);
                tracing::warn!(key = %key, key_id = %key_id, %error, "key verification failed; not cached");
            }
        }
    }

    async fn load(&self, key: &ApiKey, epoch: u64) -> Result<Verdict, VerifyError> {
        // The TTL counts from before the lookup: an entry never outlives a bar on its birth.
        let until = Deadline::after(self.shared.ttl);
        // A flight that finished just before this one started may have filled the cache.
        if let Some(verdict) = self.peek(key) {
            return Ok(verdict);
        }
        Counters::bump(&self.shared.counters.verifier_calls);
        let call = crate::metrics::VerifierCall::start();
        let result = self.shared.verifier.verify(key).await;
        call.end(result.as_ref().err().map(VerifyError::kind));
        self.remember(key, epoch, until, &result);
        result
    }
}

impl<V: KeyVerifier> KeyVerifier for CachedVerifier<V> {
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        if let Some(verdict) = self.cached(key) {
            return Ok(verdict);
        }
        Counters::bump(&self.shared.counters.misses);
        crate::metrics::cache_miss();
        let epoch = self.shared.tiers.bars.epoch();
        self.shared
            .flights
            .join(key.digest(), epoch)
            .answer(self.load(key, epoch))
            .await
    }

    /// Answers from the cache only. A miss goes through [`verify`](Self::verify) even when the
    /// wrapped verifier could answer at once, so that concurrent misses share one call.
    fn verify_now(&self, key: &ApiKey) -> Option<Result<Verdict, VerifyError>> {
        self.cached(key).map(Ok)
    }

    // The layer's internal fast path: this thread's memo only. The layer asks before it has
    // checked the secret's alphabet and the checksum, so a malformed key's digest is asked too:
    // the memo is thread-local and read-only here, and the shared caches (whose admission policy
    // counts reads) are only read for keys that passed every rule, through `verify_now`.
    #[doc(hidden)]
    fn __cached_verdict(&self, digest: &KeyDigest) -> Option<Verdict> {
        let shared = &*self.shared;
        let info = memo::get(shared.id, digest, shared.tiers.bars.epoch())?;
        shared.counters.hits.add_one();
        crate::metrics::cache_hit();
        Some(Verdict::Valid(info))
    }

    fn subscribe_revocations(&self, listener: RevocationListener) {
        self.shared.verifier.subscribe_revocations(listener);
    }
}

impl<V> std::fmt::Debug for CachedVerifier<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedVerifier")
            .field("valid_entries", &self.shared.tiers.valid.entry_count())
            .field("invalid_entries", &self.shared.tiers.invalid.entry_count())
            .finish_non_exhaustive()
    }
}
