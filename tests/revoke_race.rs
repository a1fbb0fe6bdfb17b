//! Regression test for the race between a revocation and concurrent cache reads in
//! `CachedVerifier`.
//!
//! Reader threads hammer one key through the public API (`verify`, `verify_now` and
//! `__cached_verdict`, so the per-thread memo, moka, the in-flight map and the store are all on
//! the path) while the main thread revokes the key through `KeyStore::revoke`. Once `revoke`
//! has returned, the main thread raises a flag; a reader reads the flag *before* it starts each
//! verification, and any verification started after the flag was up must not answer valid.
//!
//! The scenario runs over [`KEYS`] fresh keys, alternating between a fresh cache and one shared
//! cache (whose revoked set and epoch keep growing), and between a hot key (memos and moka warm,
//! nothing else going on) and a churned one (one reader keeps invalidating the key, so lookups
//! are in flight while the revocation lands). The work is bounded by counts, not by time.

// For the log audit, installed in every test binary (tests/common/audit.rs).
mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use keygate::key::ApiKey;
use keygate::verify::InvalidReason;
use keygate::{CachedVerifier, KeyStore, KeyVerifier, MemoryKeyStore, NewKey, Owner, Verdict};

/// Keys revoked, one scenario each.
const KEYS: usize = 200;
/// Reader threads.
const READERS: usize = 3;
/// Verifications each scenario waits for before the revocation, and after it.
const BEFORE: usize = 20 * READERS;
const AFTER: usize = 20 * READERS;
/// In a churned scenario, the churning reader invalidates the key every this many iterations.
const CHURN_EVERY: usize = 4;
/// A wait that takes longer than this has hung.
const STUCK: Duration = Duration::from_secs(10);

/// One key's scenario, shared with the readers.
struct Round {
    cache: CachedVerifier<MemoryKeyStore>,
    key: ApiKey,
    churn: bool,
    /// Raised once `revoke` has returned.
    revoked: AtomicBool,
    /// Verifications started before / after the flag went up.
    before: AtomicUsize,
    after: AtomicUsize,
    /// Bit `r` set once reader `r` got a valid answer before the revocation.
    warmed: AtomicUsize,
}

/// What the readers share with the main thread.
#[derive(Default)]
struct Board {
    round: RwLock<Option<Arc<Round>>>,
    stop: AtomicBool,
    violations: Mutex<Vec<String>>,
    /// Valid answers before revocations, per probe (`verify`, `verify_now`, `__cached_verdict`).
    valid_before: [AtomicUsize; 3],
    /// Answers checked after revocations, per probe.
    checked_after: [AtomicUsize; 3],
}

impl Board {
    fn current(&self) -> Option<Arc<Round>> {
        self.round
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn violation(&self, message: String) {
        self.violations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message);
    }
}

const PROBES: [&str; 3] = ["verify", "verify_now", "__cached_verdict"];

/// The answers a verification started after the revocation may give: refused as revoked (or
/// unknown), or, from the cache-only probes, no answer at all.
fn acceptable_after(answer: &Option<Result<Verdict, String>>) -> bool {
    matches!(
        answer,
        None | Some(Ok(Verdict::Invalid(
            InvalidReason::Revoked | InvalidReason::NotFound
        )))
    )
}

fn reader(id: usize, board: Arc<Board>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut iteration = 0usize;
    while !board.stop.load(Ordering::SeqCst) {
        let Some(round) = board.current() else {
            thread::yield_now();
            continue;
        };
        iteration += 1;
        if round.churn && id == 0 && iteration.is_multiple_of(CHURN_EVERY) {
            round.cache.invalidate(&round.key);
        }
        let probe = iteration % PROBES.len();
        // Read before the verification starts: `true` means `revoke` had returned by then.
        let after = round.revoked.load(Ordering::SeqCst);
        let answer = match probe {
            0 => Some(
                runtime
                    .block_on(round.cache.verify(&round.key))
                    .map_err(|e| e.to_string()),
            ),
            1 => round
                .cache
                .verify_now(&round.key)
                .map(|r| r.map_err(|e| e.to_string())),
            _ => round.cache.__cached_verdict(round.key.digest()).map(Ok),
        };
        if after {
            board.checked_after[probe].fetch_add(1, Ordering::Relaxed);
            if !acceptable_after(&answer) {
                board.violation(format!(
                    "reader {id}: {} of key {} started after revoke returned and answered {answer:?}",
                    PROBES[probe],
                    round.key.key_id(),
                ));
            }
            round.after.fetch_add(1, Ordering::SeqCst);
        } else {
            if let Some(Ok(Verdict::Valid(_))) = answer {
                board.valid_before[probe].fetch_add(1, Ordering::Relaxed);
                round.warmed.fetch_or(1 << id, Ordering::SeqCst);
            }
            if let Some(Err(error)) = &answer {
                board.violation(format!("reader {id}: {} failed: {error}", PROBES[probe]));
            }
            round.before.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Spins until `done`; panics if it takes [`STUCK`].
fn wait_until(what: &str, board: &Board, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < STUCK,
            "stuck waiting for {what}; violations so far: {:?}",
            board
                .violations
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        );
        thread::yield_now();
    }
}

#[test]
fn no_verification_started_after_revoke_returned_is_valid() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let store = MemoryKeyStore::new();
    let shared_cache = CachedVerifier::new(store.clone());
    let board = Arc::new(Board::default());
    let readers: Vec<_> = (0..READERS)
        .map(|id| {
            let board = Arc::clone(&board);
            thread::spawn(move || reader(id, board))
        })
        .collect();
    let all_warmed = (1 << READERS) - 1;
    let started = Instant::now();

    for n in 0..KEYS {
        let created = runtime
            .block_on(store.create(Owner::user(format!("user-{n}")), NewKey::new("race")))
            .expect("create");
        let cache = if n % 2 == 0 {
            CachedVerifier::new(store.clone())
        } else {
            shared_cache.clone()
        };
        let verdict = runtime
            .block_on(cache.verify(&created.key))
            .expect("warm-up verify");
        assert!(verdict.is_valid(), "key {n} before revocation: {verdict:?}");
        let round = Arc::new(Round {
            cache,
            key: created.key,
            churn: n % 4 >= 2,
            revoked: AtomicBool::new(false),
            before: AtomicUsize::new(0),
            after: AtomicUsize::new(0),
            warmed: AtomicUsize::new(0),
        });
        *board.round.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&round));

        // Every reader has had a valid answer, so its memo and moka hold the key.
        wait_until("the readers to warm up", &board, || {
            round.before.load(Ordering::SeqCst) >= BEFORE
                && round.warmed.load(Ordering::SeqCst) == all_warmed
        });
        runtime
            .block_on(store.revoke(created.record.id))
            .expect("revoke");
        round.revoked.store(true, Ordering::SeqCst);

        // The main thread's own view, right after revoke returned.
        let key = &round.key;
        let answers = [
            Some(
                runtime
                    .block_on(round.cache.verify(key))
                    .map_err(|e| e.to_string()),
            ),
            round
                .cache
                .verify_now(key)
                .map(|r| r.map_err(|e| e.to_string())),
            round.cache.__cached_verdict(key.digest()).map(Ok),
        ];
        for (name, answer) in PROBES.iter().zip(&answers) {
            assert!(
                acceptable_after(answer),
                "key {n}: {name} right after revoke returned answered {answer:?}"
            );
        }
        wait_until("the readers to probe the revoked key", &board, || {
            round.after.load(Ordering::SeqCst) >= AFTER
        });
    }
    board.stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.join().expect("reader thread");
    }

    let violations = board
        .violations
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    assert!(
        violations.is_empty(),
        "{} violations, first ones: {:#?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    // The probe was meaningful: every kind of read saw the key valid before and was checked
    // after.
    for (probe, name) in PROBES.iter().enumerate() {
        let valid = board.valid_before[probe].load(Ordering::Relaxed);
        let checked = board.checked_after[probe].load(Ordering::Relaxed);
        assert!(
            valid > 0 && checked > 0,
            "{name}: {valid} valid before, {checked} checked after"
        );
        eprintln!("{name}: {valid} valid answers before revocations, {checked} checked after");
    }
    eprintln!("{KEYS} revocations raced in {:?}", started.elapsed());
}
