//! A keyed work queue in the manner of client-go's: a key is queued at
//! most once, is handed to one worker at a time, and a key queued again
//! while a worker has it is handed out again once that worker is done. So
//! a burst of events for one object costs one pass over its latest state.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::retry::retry_delay;

/// How a worker finished with a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Completion {
    Finished,
    /// Failed in a way that may pass: hand the key out again after a
    /// backoff that grows with each consecutive failure.
    RetryLater,
}

pub(crate) struct WorkQueue<K> {
    state: Mutex<QueueState<K>>,
    /// Wakes a worker waiting for a key.
    ready: Notify,
    /// Wakes [`run_delays`](Self::run_delays) when a retry is scheduled.
    delayed: Notify,
}

struct QueueState<K> {
    ready: VecDeque<K>,
    queued: HashSet<K>,
    processing: HashSet<K>,
    /// Keys queued again while a worker had them.
    dirty: HashSet<K>,
    failures: HashMap<K, u32>,
    retries: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Clone + Eq + Hash + Ord> WorkQueue<K> {
    pub(crate) fn new() -> Self {
        WorkQueue {
            state: Mutex::new(QueueState {
                ready: VecDeque::new(),
                queued: HashSet::new(),
                processing: HashSet::new(),
                dirty: HashSet::new(),
                failures: HashMap::new(),
                retries: BinaryHeap::new(),
            }),
            ready: Notify::new(),
            delayed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState<K>> {
        // The state stays consistent even if a holder panicked: every
        // critical section is a handful of collection operations.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn add(&self, key: K) {
        let mut state = self.lock();
        if state.processing.contains(&key) {
            state.dirty.insert(key);
            return;
        }
        if state.queued.insert(key.clone()) {
            state.ready.push_back(key);
            drop(state);
            self.ready.notify_one();
        }
    }

    /// Queues `key` once `at` has come.
    pub(crate) fn add_at(&self, key: K, at: Instant) {
        self.lock().retries.push(Reverse((at, key)));
        self.delayed.notify_one();
    }

    /// The next key to work on; the caller must call [`done`](Self::done)
    /// with it.
    pub(crate) async fn next(&self) -> K {
        loop {
            {
                let mut state = self.lock();
                if let Some(key) = state.ready.pop_front() {
                    state.queued.remove(&key);
                    state.processing.insert(key.clone());
                    return key;
                }
            }
            // A key added between the check above and this wait leaves a
            // permit behind, so the wakeup is not lost.
            self.ready.notified().await;
        }
    }

    /// Ends a worker's turn with `key`. Returns how many times in a row
    /// the key has failed (0 when it finished).
    pub(crate) fn done(&self, key: &K, completion: Completion) -> u32 {
        let mut state = self.lock();
        state.processing.remove(key);
        let failures = match completion {
            Completion::Finished => {
                state.failures.remove(key);
                0
            }
            Completion::RetryLater => {
                let failures = state.failures.entry(key.clone()).or_insert(0);
                *failures += 1;
                let failures = *failures;
                let at = Instant::now() + retry_delay(failures);
                state.retries.push(Reverse((at, key.clone())));
                self.delayed.notify_one();
                failures
            }
        };
        if state.dirty.remove(key) {
            drop(state);
            self.add(key.clone());
        }
        failures
    }

    /// Queues retries when their backoff is over. Runs forever.
    pub(crate) async fn run_delays(&self) {
        loop {
            let next_due = {
                let mut state = self.lock();
                let now = Instant::now();
                let mut due = Vec::new();
                while let Some(Reverse((at, _))) = state.retries.peek() {
                    if *at > now {
                        break;
                    }
                    if let Some(Reverse((_, key))) = state.retries.pop() {
                        due.push(key);
                    }
                }
                let next_due = state.retries.peek().map(|Reverse((at, _))| *at);
                drop(state);
                for key in due {
                    self.add(key);
                }
                next_due
            };
            match next_due {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.delayed.notified() => {}
                    }
                }
                None => self.delayed.notified().await,
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().ready.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_key_is_queued_once() {
        let queue = WorkQueue::new();
        queue.add("a");
        queue.add("b");
        queue.add("a");
        assert_eq!(queue.len(), 2);
        assert_eq!(queue.next().await, "a");
        assert_eq!(queue.next().await, "b");
    }

    #[tokio::test]
    async fn a_key_added_while_processed_comes_back_after_done() {
        let queue = WorkQueue::new();
        queue.add("a");
        let key = queue.next().await;
        queue.add("a");
        assert_eq!(queue.len(), 0, "not handed to a second worker");
        assert_eq!(queue.done(&key, Completion::Finished), 0);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.next().await, "a");
    }

    #[tokio::test]
    async fn failed_keys_come_back_after_a_growing_backoff() {
        let queue = std::sync::Arc::new(WorkQueue::new());
        let pump = tokio::spawn({
            let queue = queue.clone();
            async move { queue.run_delays().await }
        });
        queue.add("a");
        let key = queue.next().await;
        let started = Instant::now();
        assert_eq!(queue.done(&key, Completion::RetryLater), 1);
        assert_eq!(queue.len(), 0);
        let key = queue.next().await;
        assert_eq!(key, "a");
        assert!(started.elapsed() >= Duration::from_millis(250));
        let started = Instant::now();
        assert_eq!(queue.done(&key, Completion::RetryLater), 2);
        let key = queue.next().await;
        assert!(started.elapsed() >= Duration::from_millis(500));
        assert_eq!(queue.done(&key, Completion::Finished), 0);
        pump.abort();
    }
}
