//! [`CachedVerifierBuilder`]: a cache's TTLs and bounds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::flight::Flights;
use super::stats::Counters;
use super::tiers::Tiers;
use super::{CachedVerifier, Shared};
use crate::verify::{KeyVerifier, RevocationListener};

/// Builds a [`CachedVerifier`].
#[derive(Debug)]
#[must_use]
pub struct CachedVerifierBuilder<V> {
    pub(super) verifier: V,
    pub(super) ttl: Duration,
    pub(super) negative_ttl: Duration,
    pub(super) max_entries: u64,
    pub(super) max_negative_entries: u64,
}

impl<V: KeyVerifier> CachedVerifierBuilder<V> {
    /// How long a valid verdict is kept (default 60 s), counted from when its lookup started.
    /// Also the longest a key revoked behind keygate's back can still be accepted.
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
        let tiers = Tiers::new(
            self.ttl,
            self.negative_ttl,
            self.max_entries,
            self.max_negative_entries,
        );
        let bars = Arc::clone(&tiers.bars);
        let on_revoke: Arc<dyn Fn(Uuid) + Send + Sync> =
            Arc::new(move |key_id| bars.bar_id(key_id, true));
        self.verifier
            .subscribe_revocations(RevocationListener::new(&on_revoke));
        CachedVerifier {
            shared: Arc::new(Shared {
                verifier: self.verifier,
                tiers,
                flights: Flights::default(),
                counters: Counters::default(),
                id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
                ttl: self.ttl,
                on_revoke,
            }),
        }
    }
}

/// Tells caches apart in the per-thread memo.
static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(0);
