//! The cache's counters: a striped hit counter and [`CacheStats`], their snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Valid verdicts held (approximate: moka counts lazily, and an invalidated verdict is
    /// counted until it is read or expires).
    pub valid_entries: u64,
    /// Invalid verdicts held (approximate).
    pub invalid_entries: u64,
}

/// The counters behind [`CacheStats`].
#[derive(Default)]
pub(super) struct Counters {
    pub(super) hits: StripedCounter,
    pub(super) negative_hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) verifier_calls: AtomicU64,
    pub(super) errors: AtomicU64,
}

impl Counters {
    /// A snapshot, with the entry counts the caller read.
    pub(super) fn snapshot(&self, valid_entries: u64, invalid_entries: u64) -> CacheStats {
        CacheStats {
            hits: self.hits.sum(),
            negative_hits: self.negative_hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            verifier_calls: self.verifier_calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            valid_entries,
            invalid_entries,
        }
    }

    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The hit counter, which every cache hit bumps: split over cache-line-aligned stripes, one per
/// thread (modulo their number), so that threads serving hits at once do not contend for one
/// cache line.
#[derive(Default)]
pub(super) struct StripedCounter([Stripe; STRIPES]);

const STRIPES: usize = 8;

#[derive(Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

impl StripedCounter {
    pub(super) fn add_one(&self) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        thread_local! {
            static STRIPE: usize = (NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES as u64) as usize;
        }
        let stripe = STRIPE.try_with(|s| *s).unwrap_or(0);
        self.0[stripe].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn sum(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_striped_counter_sums_every_threads_stripe() {
        let counter = std::sync::Arc::new(StripedCounter::default());
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let counter = std::sync::Arc::clone(&counter);
                std::thread::spawn(move || (0..1000).for_each(|_| counter.add_one()))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().expect("thread"));
        assert_eq!(counter.sum(), 12_000);
    }
}
