//! Controller expectations (client-go's `ControllerExpectations`): after a
//! controller asks for N creations or deletions, its cache lags the API
//! for a moment; until the cache has seen them (or five minutes pass, in
//! case a watch event was lost), the controller must not count again, or
//! it would create or delete twice.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long unmet expectations hold a controller back.
const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Expected {
    adds: i64,
    deletes: i64,
    set_at: Instant,
}

#[derive(Debug, Default)]
pub struct Expectations {
    map: Mutex<HashMap<String, Expected>>,
}

impl Expectations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that the controller for `key` is about to create `adds`
    /// and delete `deletes` objects (replacing what was expected).
    pub fn expect(&self, key: &str, adds: usize, deletes: usize) {
        self.map.lock().unwrap().insert(
            key.to_owned(),
            Expected {
                adds: adds as i64,
                deletes: deletes as i64,
                set_at: Instant::now(),
            },
        );
    }

    /// A creation was seen (or will never happen: the request failed).
    pub fn creation_observed(&self, key: &str) {
        if let Some(e) = self.map.lock().unwrap().get_mut(key) {
            e.adds -= 1;
        }
    }

    /// A deletion was seen (or will never happen).
    pub fn deletion_observed(&self, key: &str) {
        if let Some(e) = self.map.lock().unwrap().get_mut(key) {
            e.deletes -= 1;
        }
    }

    /// Whether the controller may count again: nothing is pending, or the
    /// expectations are too old to trust.
    pub fn satisfied(&self, key: &str) -> bool {
        match self.map.lock().unwrap().get(key) {
            None => true,
            Some(e) => (e.adds <= 0 && e.deletes <= 0) || e.set_at.elapsed() > EXPECTATIONS_TIMEOUT,
        }
    }

    /// Forgets the key (its owner was deleted).
    pub fn delete(&self, key: &str) {
        self.map.lock().unwrap().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn satisfied_once_every_expected_change_is_seen() {
        let e = Expectations::new();
        assert!(e.satisfied("ns/rs"));
        e.expect("ns/rs", 2, 1);
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        e.deletion_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(e.satisfied("ns/rs"));
        e.delete("ns/rs");
        assert!(e.satisfied("ns/rs"));
    }
}
