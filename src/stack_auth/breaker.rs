//! A small circuit breaker: after `threshold` consecutive failed checks it answers "open" for
//! `cooldown`, then lets one probe through; the probe's outcome closes or reopens it.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is in flight; everyone else is turned away.
    Probing,
}

/// Whether a call may go ahead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    Allowed,
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
                    *state = State::Probing;
                    Admission::Allowed
                } else {
                    Admission::Rejected(until - now)
                }
            }
            State::Probing => Admission::Rejected(self.cooldown),
        }
    }

    pub(crate) fn record_success(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *state = State::Closed { failures: 0 };
    }

    /// Records a failure; `true` if this failure opened the circuit.
    pub(crate) fn record_failure(&self) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let open = State::Open {
            until: Instant::now() + self.cooldown,
        };
        match *state {
            State::Closed { failures } if failures + 1 >= self.threshold => {
                *state = open;
                true
            }
            State::Closed { failures } => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::Probing => {
                *state = open;
                true
            }
            State::Open { .. } => false,
        }
    }

    /// Forgets a probe that never finished (the caller was dropped).
    pub(crate) fn abandon_probe(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let State::Probing = *state {
            *state = State::Open {
                until: Instant::now(),
            };
        }
    }
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
        assert_eq!(b.admit(), Admission::Allowed, "probe");
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
        assert_eq!(b.admit(), Admission::Allowed);
        assert!(b.record_failure());
        assert!(matches!(b.admit(), Admission::Rejected(_)));
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
