//! Regression test: an invalidation must not be undone by a concurrent cache hit on another
//! thread.
//!
//! For each entry point (`invalidate_key_id`, `invalidate(&key)`, `invalidate_all`), reader
//! threads spin on the cache-only reads (`verify_now`, which reads moka and fills the thread's
//! memo, and the digest fast path, which reads the memo alone; now and then a full `verify`)
//! while the main thread turns the key invalid at its source and then invalidates it. The
//! source tells no one (no revocation listener): only the `invalidate*` call can make the cache
//! forget. Once that call has returned the main thread raises a flag; a reader reads the flag
//! *before* each read, and any read started after the flag was up must not answer valid.
//!
//! Before the fix a reader could read the new invalidation epoch and the not-yet-removed moka
//! entry, memoise it under the new epoch and answer valid for up to the positive TTL. The work
//! is bounded by counts ([`ROUNDS`] per entry point), not by time.

// For the log audit, installed in every test binary (tests/common/audit.rs).
mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use keygate::key::{ApiKey, Deployment, KeyKind};
use keygate::verify::{InvalidReason, KeyInfo, VerifyError};
use keygate::{CachedVerifier, KeyVerifier, Owner, Verdict};
use uuid::Uuid;

/// Racing rounds per entry point.
const ROUNDS: usize = 3000;
/// Reader threads.
const READERS: usize = 2;
/// Reads each round waits for after the invalidation (all readers together).
const AFTER: usize = 8 * READERS;
/// A wait that takes longer than this has hung.
const STUCK: Duration = Duration::from_secs(20);

/// A source whose keys are valid until the test marks them dead. It notifies no one.
#[derive(Clone, Default)]
struct Source {
    dead: Arc<RwLock<HashSet<Uuid>>>,
}

impl Source {
    fn kill(&self, key_id: Uuid) {
        self.dead
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key_id);
    }
}

impl KeyVerifier for Source {
    async fn verify(&self, key: &ApiKey) -> Result<Verdict, VerifyError> {
        let dead = self
            .dead
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&key.key_id());
        Ok(if dead {
            Verdict::Invalid(InvalidReason::Revoked)
        } else {
            Verdict::valid(KeyInfo::new(key.key_id(), Owner::user("racer"), false))
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum EntryPoint {
    KeyId,
    Key,
    All,
}

impl EntryPoint {
    fn invalidate(self, cache: &CachedVerifier<Source>, key: &ApiKey) {
        match self {
            EntryPoint::KeyId => cache.invalidate_key_id(key.key_id()),
            EntryPoint::Key => cache.invalidate(key),
            EntryPoint::All => cache.invalidate_all(),
        }
    }
}

/// One round, shared with the readers.
struct Round {
    key: ApiKey,
    /// Raised once the invalidation has returned.
    invalidated: AtomicBool,
    /// Reads started after the flag went up.
    after: AtomicUsize,
    /// Bit `r` set once reader `r` got a valid answer from `verify_now` (its memo is warm).
    warmed: AtomicUsize,
    /// Stale valid answers in this round.
    stale: AtomicUsize,
}

#[derive(Default)]
struct Board {
    round: RwLock<Option<Arc<Round>>>,
    stop: AtomicBool,
    /// Valid answers to reads started after the invalidation had returned.
    stale: AtomicUsize,
    /// Rounds with at least one such answer.
    stale_rounds: AtomicUsize,
    /// Valid answers from the digest fast path before invalidations (the memo was exercised).
    fast_path_hits: AtomicUsize,
    first_stale: Mutex<Option<String>>,
}

fn reader(id: usize, cache: CachedVerifier<Source>, board: Arc<Board>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut iteration = 0usize;
    while !board.stop.load(Ordering::SeqCst) {
        let Some(round) = board
            .round
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        else {
            thread::yield_now();
            continue;
        };
        iteration += 1;
        // Read before the probe starts: `true` means the invalidation had returned by then.
        let after = round.invalidated.load(Ordering::SeqCst);
        let (probe, valid) = match iteration % 16 {
            0 => (
                "verify",
                matches!(
                    runtime.block_on(cache.verify(&round.key)),
                    Ok(Verdict::Valid(_))
                ),
            ),
            n if n % 2 == 0 => (
                "digest fast path",
                matches!(
                    cache.__cached_verdict(round.key.digest()),
                    Some(Verdict::Valid(_))
                ),
            ),
            _ => {
                let valid = matches!(cache.verify_now(&round.key), Some(Ok(Verdict::Valid(_))));
                if valid && !after {
                    round.warmed.fetch_or(1 << id, Ordering::SeqCst);
                }
                ("verify_now", valid)
            }
        };
        if after {
            if valid {
                round.stale.fetch_add(1, Ordering::SeqCst);
                board
                    .first_stale
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert_with(|| format!("reader {id}: {probe} answered valid"));
            }
            round.after.fetch_add(1, Ordering::SeqCst);
        } else if valid && probe == "digest fast path" {
            board.fast_path_hits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < STUCK, "stuck waiting for {what}");
        thread::yield_now();
    }
}

/// Runs [`ROUNDS`] rounds against one cache; returns the number of rounds with a stale valid
/// answer.
fn race(entry_point: EntryPoint) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let source = Source::default();
    let cache = CachedVerifier::builder(source.clone())
        .ttl(Duration::from_secs(3600))
        .build();
    let board = Arc::new(Board::default());
    let readers: Vec<_> = (0..READERS)
        .map(|id| {
            let (cache, board) = (cache.clone(), Arc::clone(&board));
            thread::spawn(move || reader(id, cache, board))
        })
        .collect();
    let all_warmed = (1 << READERS) - 1;
    let started = Instant::now();
    for n in 0..ROUNDS {
        let key = ApiKey::generate(Uuid::new_v4(), KeyKind::User, false, Deployment::SelfHosted)
            .expect("os rng");
        let warm = runtime.block_on(cache.verify(&key)).expect("verify");
        assert!(warm.is_valid(), "round {n}: {warm:?}");
        let round = Arc::new(Round {
            key: key.clone(),
            invalidated: AtomicBool::new(false),
            after: AtomicUsize::new(0),
            warmed: AtomicUsize::new(0),
            stale: AtomicUsize::new(0),
        });
        *board.round.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&round));
        wait_until("the readers to warm up", || {
            round.warmed.load(Ordering::SeqCst) == all_warmed
        });
        source.kill(key.key_id());
        entry_point.invalidate(&cache, &key);
        round.invalidated.store(true, Ordering::SeqCst);
        // The invalidating thread's own view.
        if matches!(cache.verify_now(&key), Some(Ok(Verdict::Valid(_)))) {
            round.stale.fetch_add(1, Ordering::SeqCst);
            board
                .first_stale
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert_with(|| format!("round {n}: verify_now on the invalidating thread"));
        }
        wait_until("the readers to probe the invalidated key", || {
            round.after.load(Ordering::SeqCst) >= AFTER
        });
        let stale = round.stale.load(Ordering::SeqCst);
        if stale > 0 {
            board.stale.fetch_add(stale, Ordering::SeqCst);
            board.stale_rounds.fetch_add(1, Ordering::SeqCst);
        }
    }
    board.stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.join().expect("reader thread");
    }
    let stale = board.stale_rounds.load(Ordering::SeqCst);
    eprintln!(
        "{entry_point:?}: {ROUNDS} rounds in {:?}: {stale} rounds with stale valid answers, {} stale answers in all ({} fast-path hits before invalidations){}",
        started.elapsed(),
        board.stale.load(Ordering::SeqCst),
        board.fast_path_hits.load(Ordering::Relaxed),
        board
            .first_stale
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_deref()
            .map(|s| format!("; first: {s}"))
            .unwrap_or_default(),
    );
    assert!(
        board.fast_path_hits.load(Ordering::Relaxed) > 0,
        "the digest fast path never hit: the test did not exercise the memo"
    );
    stale
}

#[test]
fn no_read_started_after_an_invalidation_returned_answers_valid() {
    let counts: Vec<(EntryPoint, usize)> = [EntryPoint::KeyId, EntryPoint::Key, EntryPoint::All]
        .into_iter()
        .map(|entry_point| (entry_point, race(entry_point)))
        .collect();
    assert!(
        counts.iter().all(|&(_, stale)| stale == 0),
        "rounds with stale valid answers after the invalidation returned: {counts:?}"
    );
}
