//! A small circuit breaker: after `threshold` consecutive failed checks it answers "open" for
//! `cooldown`, then lets one probe through; the probe's outcome closes or reopens it.
//!
//! A cooldown too long to add to the clock (`Duration::MAX`) saturates at a century: the circuit
//! then stays open for the life of the process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::key::KeyKind;

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
    /// Numbers the probes, so that only the call holding the current one can abandon it.
    next_probe: AtomicU64,
    /// The route whose state the `keygate_stack_auth_breaker_state` gauge shows, if any.
    route: Option<KeyKind>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe (this one) is in flight; everyone else is turned away.
    Probing(ProbeId),
}

/// Names one half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProbeId(u64);

/// Whether a call may go ahead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Allowed,
    /// Allowed as the half-open probe: this call must report back, or
    /// [`abandon_probe`](Breaker::abandon_probe) with this id if it is dropped first.
    Probe(ProbeId),
    /// Turned away; retry after this long.
    Rejected(Duration),
}

impl Breaker {
    /// A breaker; a `threshold` of 0 disables it.
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
            next_probe: AtomicU64::new(0),
            route: None,
        }
    }

    /// Shows this breaker's state in the gauge of `route` (closed, from now).
    pub(crate) fn with_route(mut self, route: KeyKind) -> Self {
        self.route = Some(route);
        self.publish(&State::Closed { failures: 0 });
        self
    }

    /// Sets the gauge to `state`: 0 closed, 1 open, 2 half-open.
    fn publish(&self, state: &State) {
        if let Some(route) = self.route {
            let value = match state {
                State::Closed { .. } => 0.0,
                State::Open { .. } => 1.0,
                State::Probing(_) => 2.0,
            };
            crate::metrics::breaker_state(route, value);
        }
    }

    pub(crate) fn admit(&self) -> Admission {
        if self.threshold == 0 {
            return Admission::Allowed;
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match *state {
            State::Closed { .. } => Admission::Allowed,
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    let probe = ProbeId(self.next_probe.fetch_add(1, Ordering::Relaxed));
                    *state = State::Probing(probe);
                    self.publish(&state);
                    Admission::Probe(probe)
                } else {
                    Admission::Rejected(until - now)
                }
            }
            State::Probing(_) => Admission::Rejected(self.cooldown),
        }
    }

    pub(crate) fn record_success(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let was_closed = matches!(*state, State::Closed { .. });
        *state = State::Closed { failures: 0 };
        if !was_closed {
            self.publish(&state);
        }
    }

    /// Records a failure; `true` if this failure opened the circuit.
    pub(crate) fn record_failure(&self) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let open = State::Open {
            until: later(Instant::now(), self.cooldown),
        };
        match *state {
            State::Closed { failures } if failures + 1 >= self.threshold => {
                *state = open;
                self.publish(&state);
                true
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Probing(_) => {
                *state = open;
                self.publish(&state);
                true
            }
            State::Open { .. } => false,
        }
    }

    /// Forgets `probe`, which never finished (its caller was dropped), so the next call probes.
    /// Does nothing if `probe` is no longer the one in flight.
    pub(crate) fn abandon_probe(&self, probe: ProbeId) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*state, State::Probing(current) if current == probe) {
            *state = State::Open {
                until: Instant::now(),
            };
            self.publish(&state);
        }
    }
}

/// About a century: the furthest a cooldown reaches.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `now + wait`, saturating at [`FOREVER`] from now.
fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait.min(FOREVER)).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once() {
        let b = Breaker::new(2, Duration::from_millis(30));
        assert_eq!(b.admit(), Admission::Allowed);
        assert!(!b.record_failure());
        assert!(b.record_failure());
        assert!(matches!(b.admit(), Admission::Rejected(_)));
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(b.admit(), Admission::Probe(_)));
        assert!(
            matches!(b.admit(), Admission::Rejected(_)),
            "one probe at a time"
        );
        b.record_success();
        assert_eq!(b.admit(), Admission::Allowed);
    }

    #[test]
    fn failed_probe_reopens() {
        let b = Breaker::new(1, Duration::from_millis(10));
        assert!(b.record_failure());
        std::thread::sleep(Duration::from_millis(15));
        assert!(matches!(b.admit(), Admission::Probe(_)));
        assert!(b.record_failure());
        assert!(matches!(b.admit(), Admission::Rejected(_)));
    }

    fn probe(b: &Breaker) -> ProbeId {
        match b.admit() {
            Admission::Probe(id) => id,
            other => panic!("expected a probe, got {other:?}"),
        }
    }

    #[test]
    fn only_the_current_probe_can_be_abandoned() {
        let b = Breaker::new(1, Duration::from_millis(10));
        assert_eq!(b.admit(), Admission::Allowed, "closed: no probe");
        assert!(b.record_failure());
        std::thread::sleep(Duration::from_millis(15));
        let first = probe(&b);
        b.abandon_probe(first);
        let second = probe(&b);
        assert_ne!(first, second);
        // The first probe's caller is long gone; abandoning it again must not free the slot.
        b.abandon_probe(first);
        assert!(matches!(b.admit(), Admission::Rejected(_)));
        b.abandon_probe(second);
        probe(&b);
    }

    #[test]
    fn an_endless_cooldown_saturates() {
        let b = Breaker::new(1, Duration::MAX);
        assert!(b.record_failure());
        match b.admit() {
            Admission::Rejected(wait) => assert!(wait > Duration::from_secs(86_400 * 365)),
            other => panic!("expected open, got {other:?}"),
        }
        assert!(later(Instant::now(), Duration::MAX) > Instant::now());
    }

    #[test]
    fn success_resets_the_count() {
        let b = Breaker::new(2, Duration::from_secs(10));
        b.record_failure();
        b.record_success();
        assert!(!b.record_failure());
        assert_eq!(b.admit(), Admission::Allowed);
    }
}
