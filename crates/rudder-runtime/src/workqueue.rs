//! A work queue of keys with client-go's guarantees: a key waiting in the
//! queue is held once however often it is added, a key being processed is
//! never handed to a second worker (a re-add while processing runs it
//! again afterwards), and failures back off exponentially per key.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// The first retry waits this long; each further failure doubles it.
const BASE_DELAY: Duration = Duration::from_millis(5);
/// Back-off never exceeds this.
const MAX_DELAY: Duration = Duration::from_secs(300);

struct State<T> {
    queue: VecDeque<T>,
    dirty: HashSet<T>,
    processing: HashSet<T>,
    failures: HashMap<T, u32>,
    shutting_down: bool,
}

pub struct WorkQueue<T> {
    state: Arc<Mutex<State<T>>>,
    notify: Arc<Notify>,
}

impl<T> Clone for WorkQueue<T> {
    fn clone(&self) -> Self {
        WorkQueue {
            state: self.state.clone(),
            notify: self.notify.clone(),
        }
    }
}

impl<T: Clone + Eq + Hash + Send + 'static> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Clone + Eq + Hash + Send + 'static> WorkQueue<T> {
    pub fn new() -> Self {
        WorkQueue {
            state: Arc::new(Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                failures: HashMap::new(),
                shutting_down: false,
            })),
            notify: Arc::new(Notify::new()),
        }
    }

    pub fn add(&self, item: T) {
        let mut state = self.state.lock().unwrap();
        if state.shutting_down || !state.dirty.insert(item.clone()) {
            return;
        }
        if !state.processing.contains(&item) {
            state.queue.push_back(item);
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Adds the item once `delay` has passed.
    pub fn add_after(&self, item: T, delay: Duration) {
        if delay.is_zero() {
            return self.add(item);
        }
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(item);
        });
    }

    /// Adds the item after its back-off: 5 ms doubling per failure up to
    /// five minutes, until [`WorkQueue::forget`].
    pub fn add_rate_limited(&self, item: T) {
        let failures = {
            let mut state = self.state.lock().unwrap();
            let n = state.failures.entry(item.clone()).or_insert(0);
            *n += 1;
            *n
        };
        self.add_after(item, backoff(failures));
    }

    /// Clears the item's failure count.
    pub fn forget(&self, item: &T) {
        self.state.lock().unwrap().failures.remove(item);
    }

    pub fn failures(&self, item: &T) -> u32 {
        self.state
            .lock()
            .unwrap()
            .failures
            .get(item)
            .copied()
            .unwrap_or(0)
    }

    /// The next item, once there is one; `None` after shutdown. Call
    /// [`WorkQueue::done`] when finished with it.
    pub async fn get(&self) -> Option<T> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock().unwrap();
                if let Some(item) = state.queue.pop_front() {
                    state.dirty.remove(&item);
                    state.processing.insert(item.clone());
                    if !state.queue.is_empty() {
                        // Wake another worker for the rest.
                        self.notify.notify_one();
                    }
                    return Some(item);
                }
                if state.shutting_down {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Marks the item processed; re-queues it if it was added meanwhile.
    pub fn done(&self, item: &T) {
        let mut state = self.state.lock().unwrap();
        state.processing.remove(item);
        if state.dirty.contains(item) {
            state.queue.push_back(item.clone());
            drop(state);
            self.notify.notify_one();
        }
    }

    pub fn len(&self) -> usize {
        self.state.lock().unwrap().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn shutdown(&self) {
        self.state.lock().unwrap().shutting_down = true;
        self.notify.notify_waiters();
    }

    /// Runs `workers` loops that take keys and reconcile them. A
    /// reconcile returns `Ok(Some(d))` to look again after `d`, `Ok(None)`
    /// when done, or an error to retry with back-off.
    pub async fn run_workers<F, Fut, E>(&self, name: &'static str, workers: usize, reconcile: F)
    where
        F: Fn(T) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<Duration>, E>> + Send,
        E: Display,
        T: Display + Sync,
    {
        let mut tasks = Vec::new();
        for _ in 0..workers.max(1) {
            let queue = self.clone();
            let reconcile = reconcile.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(item) = queue.get().await {
                    match reconcile(item.clone()).await {
                        Ok(requeue) => {
                            queue.forget(&item);
                            if let Some(after) = requeue {
                                queue.add_after(item.clone(), after);
                            }
                        }
                        Err(err) => {
                            let failures = queue.failures(&item);
                            if failures >= 5 {
                                tracing::warn!(controller = name, key = %item, error = %err, failures, "sync failed");
                            } else {
                                tracing::debug!(controller = name, key = %item, error = %err, failures, "sync failed");
                            }
                            queue.add_rate_limited(item.clone());
                        }
                    }
                    queue.done(&item);
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }
}

fn backoff(failures: u32) -> Duration {
    let factor = 1u64 << failures.saturating_sub(1).min(30);
    BASE_DELAY
        .checked_mul(factor as u32)
        .unwrap_or(MAX_DELAY)
        .min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_waits_once_and_is_never_processed_twice_at_once() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        let a = q.get().await.unwrap();
        assert_eq!(a, "a");
        // Re-added while processing: not handed out until done.
        q.add("a");
        assert_eq!(q.get().await.unwrap(), "b");
        assert!(q.is_empty());
        q.done(&"a");
        assert_eq!(q.get().await.unwrap(), "a");
        q.done(&"a");
        q.done(&"b");
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn shutdown_wakes_waiting_workers() {
        let q: WorkQueue<&str> = WorkQueue::new();
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.get().await })
        };
        tokio::task::yield_now().await;
        q.shutdown();
        assert_eq!(waiter.await.unwrap(), None);
    }

    #[test]
    fn back_off_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_millis(5));
        assert_eq!(backoff(2), Duration::from_millis(10));
        assert_eq!(backoff(4), Duration::from_millis(40));
        assert_eq!(backoff(40), MAX_DELAY);
    }

    #[tokio::test]
    async fn delayed_adds_arrive() {
        let q = WorkQueue::new();
        q.add_after(7, Duration::from_millis(20));
        assert!(q.is_empty());
        assert_eq!(q.get().await, Some(7));
    }
}
