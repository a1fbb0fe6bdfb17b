//! Invalidation, made synchronous: the epoch and the *bars*.
//!
//! moka removes entries on its own schedule: a reader on another thread can still get an entry
//! back from `get` while (and, for `invalidate_all` and predicate invalidation, after) it is
//! being removed. So the cache does not rely on removal. Every entry is stamped at insert with
//! the epoch its lookup *started* in (its birth), and every read, from moka or from a thread's
//! memo, checks the entry against the bars:
//!
//! - `invalidate_all` raises the global bar: every entry born before it is dead;
//! - `invalidate_key_id` and `invalidate(&key)` bar one key id: every entry of that id born
//!   before the bar is dead;
//! - a revocation reported by the verifier's source bars the id and marks it revoked: for the
//!   next positive TTL no valid verdict for it is served or stored, whenever its lookup started.
//!
//! An invalidation takes the write lock, sets its bar, and only then moves the epoch, all before
//! it returns. A reader reads the epoch first and checks the bars after. So a reader either read
//! the old epoch (and whatever it memoises under it is dead the moment the epoch moves), or read
//! the new one and sees the bar. A lookup that started before an invalidation carries the old
//! epoch as its birth: the bar refuses its verdict at insert and at every read.
//!
//! Bars on ids live until every entry born before them has expired by itself (the longer TTL and
//! a second), then are pruned. Their number is bounded: past the bound, the global bar is raised
//! (everything older is forgotten) and the per-id bars that only barred old entries are dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// The epoch, the global bar and the per-id bars of one cache.
pub(super) struct Bars {
    /// Moved by every invalidation, after its bar is set.
    epoch: AtomicU64,
    /// Entries born before this epoch are dead.
    all: AtomicU64,
    /// Whether `by_id` may hold a bar (spares the lock until the first invalidation by id).
    any: AtomicBool,
    /// The write lock also serialises invalidations.
    by_id: RwLock<Ids>,
    /// How long a bar must stay: the longer TTL and a margin.
    keep: Duration,
    /// How long a revoked id stays barred from the cache: the positive TTL.
    revoked_for: Duration,
    /// Past this many per-id bars, raise the global bar instead.
    cap: usize,
}

struct Ids {
    bars: HashMap<Uuid, Bar>,
    /// Prune expired bars when there are more than this many.
    prune_at: usize,
}

struct Bar {
    /// Entries of this id born before this epoch are dead.
    epoch: u64,
    /// Whether the verifier's source revoked the id.
    revoked: bool,
    /// Until when a revoked id's valid verdicts are refused (`None`: for ever, for a TTL too
    /// long for the clock).
    revoked_until: Option<Instant>,
    /// When the bar may go (`None`: never).
    until: Option<Instant>,
}

/// Whether `t` (`None`: never) has come by `now`.
fn past(t: Option<Instant>, now: Instant) -> bool {
    t.is_some_and(|t| t <= now)
}

impl Bar {
    fn revoked_at(&self, now: Instant) -> bool {
        self.revoked && !past(self.revoked_until, now)
    }

    fn expired_at(&self, now: Instant) -> bool {
        past(self.until, now) && !self.revoked_at(now)
    }
}

const MIN_PRUNE_AT: usize = 64;

impl Bars {
    /// Bars for a cache whose valid verdicts live `ttl` and invalid ones `negative_ttl`, with
    /// at most `cap` per-id bars.
    pub(super) fn new(ttl: Duration, negative_ttl: Duration, cap: usize) -> Self {
        Self {
            epoch: AtomicU64::new(0),
            all: AtomicU64::new(0),
            any: AtomicBool::new(false),
            by_id: RwLock::new(Ids {
                bars: HashMap::new(),
                prune_at: MIN_PRUNE_AT,
            }),
            keep: ttl.max(negative_ttl).saturating_add(Duration::from_secs(1)),
            revoked_for: ttl,
            cap: cap.max(MIN_PRUNE_AT),
        }
    }

    /// The current epoch. Read it before reading the entry it will vouch for.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Whether an entry of `key_id` born in epoch `born` may be served (or stored). A valid
    /// verdict of a revoked id never may.
    pub(super) fn admits(&self, born: u64, key_id: Uuid, valid: bool) -> bool {
        if born < self.all.load(Ordering::SeqCst) {
            return false;
        }
        if !self.any.load(Ordering::SeqCst) {
            return true;
        }
        let ids = self.by_id.read().unwrap_or_else(PoisonError::into_inner);
        match ids.bars.get(&key_id) {
            None => true,
            Some(bar) => born >= bar.epoch && !(valid && bar.revoked_at(Instant::now())),
        }
    }

    /// Kills every entry born before now.
    pub(super) fn bar_all(&self) {
        let _ids = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        let next = self.epoch.load(Ordering::SeqCst) + 1;
        self.all.store(next, Ordering::SeqCst);
        self.epoch.store(next, Ordering::SeqCst);
    }

    /// Kills every entry of `key_id` born before now; if `revoked`, also bars its valid
    /// verdicts from the cache for the positive TTL.
    pub(super) fn bar_id(&self, key_id: Uuid, revoked: bool) {
        let mut ids = self.by_id.write().unwrap_or_else(PoisonError::into_inner);
        let next = self.epoch.load(Ordering::SeqCst) + 1;
        let now = Instant::now();
        let until = now.checked_add(self.keep);
        let bar = ids.bars.entry(key_id).or_insert(Bar {
            epoch: next,
            revoked: false,
            revoked_until: None,
            until,
        });
        bar.epoch = next;
        bar.until = until;
        if revoked {
            bar.revoked = true;
            bar.revoked_until = now.checked_add(self.revoked_for);
        }
        if ids.bars.len() > ids.prune_at {
            self.prune(&mut ids, next, now);
        }
        self.any.store(true, Ordering::SeqCst);
        self.epoch.store(next, Ordering::SeqCst);
    }

    /// Drops the bars that outlived every entry they barred; past the cap, raises the global
    /// bar to `next` (the epoch being entered) so that the per-id bars can go.
    fn prune(&self, ids: &mut Ids, next: u64, now: Instant) {
        ids.bars.retain(|_, bar| !bar.expired_at(now));
        if ids.bars.len() > self.cap {
            // Every entry born before `next` is dead now: only the revocations still bar
            // anything.
            self.all.store(next, Ordering::SeqCst);
            ids.bars.retain(|_, bar| bar.revoked_at(now));
            if ids.bars.len() > self.cap {
                tracing::warn!(
                    revoked = ids.bars.len(),
                    "more revocations within one TTL than the cache can bar; forgetting the oldest bars (their verdicts are dropped all the same)"
                );
                // The revocations that end first go first.
                let mut oldest: Vec<(Uuid, Option<Instant>)> = ids
                    .bars
                    .iter()
                    .map(|(id, bar)| (*id, bar.revoked_until))
                    .collect();
                oldest.sort_by_key(|(_, until)| (until.is_none(), *until));
                for (id, _) in oldest.iter().take(ids.bars.len() - self.cap / 2) {
                    ids.bars.remove(id);
                }
            }
        }
        ids.prune_at = (ids.bars.len() * 2).max(MIN_PRUNE_AT);
    }

    /// Per-id bars held (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_id
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .bars
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bars() -> Bars {
        Bars::new(Duration::from_secs(60), Duration::from_secs(10), 100)
    }

    #[test]
    fn an_invalidation_kills_what_was_born_before_it_and_nothing_after() {
        let bars = bars();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let born = bars.epoch();
        bars.bar_id(a, false);
        assert!(!bars.admits(born, a, true), "born before the bar");
        assert!(bars.admits(born, b, true), "another id");
        assert!(bars.admits(bars.epoch(), a, true), "born after the bar");
        let later = bars.epoch();
        bars.bar_all();
        assert!(!bars.admits(later, b, false) && !bars.admits(later, a, true));
        assert!(bars.admits(bars.epoch(), b, true));
    }

    #[test]
    fn a_revoked_id_is_refused_valid_verdicts_whenever_they_were_born() {
        let bars = bars();
        let id = Uuid::new_v4();
        bars.bar_id(id, true);
        let after = bars.epoch();
        assert!(!bars.admits(after, id, true), "valid, born after");
        assert!(
            bars.admits(after, id, false),
            "invalid verdicts may be cached"
        );
        // A later plain invalidation keeps the revocation.
        bars.bar_id(id, false);
        assert!(!bars.admits(bars.epoch(), id, true));
    }

    #[test]
    fn past_the_cap_the_global_bar_rises_and_revocations_stay() {
        let bars = bars();
        let revoked = Uuid::new_v4();
        bars.bar_id(revoked, true);
        let born = bars.epoch();
        let bystander = Uuid::new_v4();
        for _ in 0..500 {
            bars.bar_id(Uuid::new_v4(), false);
        }
        assert!(bars.len() <= 2 * 100 + 1, "{} bars", bars.len());
        assert!(
            !bars.admits(born, bystander, true),
            "the global bar covers what the dropped bars did"
        );
        assert!(!bars.admits(bars.epoch(), revoked, true), "still revoked");
    }
}
