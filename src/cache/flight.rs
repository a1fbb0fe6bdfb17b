//! Single flight: concurrent misses on one key share one verifier call.
//!
//! Flights are keyed by the key's digest *and* the invalidation epoch the miss started in, so a
//! request that arrives after an invalidation never joins a lookup that started before it (whose
//! answer may predate the invalidation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

use crate::key::KeyDigest;
use crate::verify::{Verdict, VerifyError};

type Flight = Arc<OnceCell<Result<Verdict, VerifyError>>>;
type FlightKey = (KeyDigest, u64);

/// The lookups under way.
#[derive(Default)]
pub(super) struct Flights {
    map: Mutex<HashMap<FlightKey, Flight>>,
}

impl Flights {
    /// The flight for `digest` started in `epoch`, joined or started.
    pub(super) fn join(&self, digest: &KeyDigest, epoch: u64) -> FlightGuard<'_> {
        let key = (*digest, epoch);
        let flight = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(map.entry(key).or_default())
        };
        FlightGuard {
            map: &self.map,
            key,
            flight,
        }
    }

    /// Flights in the map (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A share in a flight. Removes the flight from the map once its last waiter is done with it
/// (or dropped).
pub(super) struct FlightGuard<'a> {
    map: &'a Mutex<HashMap<FlightKey, Flight>>,
    key: FlightKey,
    flight: Flight,
}

impl FlightGuard<'_> {
    /// The flight's answer: `load`'s, run by the first to ask, awaited by the rest.
    pub(super) async fn answer<F>(&self, load: F) -> Result<Verdict, VerifyError>
    where
        F: std::future::Future<Output = Result<Verdict, VerifyError>>,
    {
        self.flight.get_or_init(|| load).await.clone()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::InvalidReason;

    #[test]
    fn joiners_share_one_load_and_the_map_empties() {
        let flights = Flights::default();
        let digest = KeyDigest::of("k");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (a, b) = (flights.join(&digest, 0), flights.join(&digest, 0));
            let other_epoch = flights.join(&digest, 1);
            assert_eq!(flights.len(), 2, "one flight per epoch");
            let answer = || async { Ok(Verdict::Invalid(InvalidReason::NotFound)) };
            let first = a.answer(answer()).await;
            // The second load never runs: the flight already has its answer.
            let second = b
                .answer(async { Ok(Verdict::Invalid(InvalidReason::Revoked)) })
                .await;
            assert_eq!(first.ok(), second.ok());
            drop((a, b, other_epoch));
            assert_eq!(flights.len(), 0);
        });
    }
}
