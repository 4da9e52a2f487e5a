//! "Now" for the time-driven controllers (Job back-off and deadlines,
//! TTL after finished, CronJob schedules), injectable so tests can move
//! time instead of waiting for it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock for tests: either frozen at an instant, or the system's clock
/// shifted by an offset; `advance` moves either forward at once.
#[derive(Clone, Debug)]
pub struct FakeClock {
    state: Arc<Mutex<(Option<Timestamp>, jiff::SignedDuration)>>,
}

impl FakeClock {
    /// Stands still at `now` until advanced.
    pub fn new(now: Timestamp) -> Self {
        FakeClock {
            state: Arc::new(Mutex::new((Some(now), jiff::SignedDuration::ZERO))),
        }
    }

    /// Runs with the system's clock, plus whatever it is advanced by.
    pub fn shifted() -> Self {
        FakeClock {
            state: Arc::new(Mutex::new((None, jiff::SignedDuration::ZERO))),
        }
    }

    /// Stands still at `to` from now on.
    pub fn set(&self, to: Timestamp) {
        *self.state.lock().unwrap() = (Some(to), jiff::SignedDuration::ZERO);
    }

    pub fn advance(&self, by: Duration) {
        let by = jiff::SignedDuration::try_from(by).unwrap_or(jiff::SignedDuration::MAX);
        let mut state = self.state.lock().unwrap();
        state.1 = state.1.saturating_add(by);
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Timestamp {
        let (base, offset) = *self.state.lock().unwrap();
        let base = base.unwrap_or_else(Timestamp::now);
        base.checked_add(offset).unwrap_or(base)
    }
}

/// The time from `now` until `then`, zero when it has passed.
pub fn until(now: Timestamp, then: Timestamp) -> Duration {
    Duration::try_from(then.duration_since(now)).unwrap_or(Duration::ZERO)
}
