//! The scheduling queue: an active heap (higher priority first, then
//! older), a back-off queue with exponential back-off for pods that just
//! failed, and an unschedulable pool that cluster events move back.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::cache::PodInfo;

const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Unschedulable pods are retried at least this often even without an
/// event that could help them.
const UNSCHEDULABLE_FLUSH: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    Active,
    Backoff,
    Unschedulable,
    /// Popped; its scheduling cycle is running.
    InFlight,
}

struct Entry {
    pod: Arc<PodInfo>,
    place: Place,
    attempts: u32,
    /// When the pod entered the queue (age breaks priority ties).
    added: Instant,
    since: Instant,
    /// The move counter when the pod was popped.
    popped_at_move: u64,
    /// The last FailedScheduling message sent, to avoid repeating it.
    last_message: Option<String>,
}

#[derive(PartialEq, Eq)]
struct HeapItem {
    priority: i32,
    added: Instant,
    seq: u64,
    key: String,
}

impl Ord for HeapItem {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.added.cmp(&self.added))
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    active: BinaryHeap<HeapItem>,
    backoff: BTreeMap<(Instant, u64), String>,
    seq: u64,
    moves: u64,
}

impl Inner {
    fn push_active(&mut self, key: &str) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.place = Place::Active;
        self.seq += 1;
        self.active.push(HeapItem {
            priority: entry.pod.priority,
            added: entry.added,
            seq: self.seq,
            key: key.to_owned(),
        });
    }

    fn push_backoff(&mut self, key: &str) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        let exponent = entry.attempts.saturating_sub(1).min(8);
        let delay = (INITIAL_BACKOFF * 2u32.pow(exponent)).min(MAX_BACKOFF);
        entry.place = Place::Backoff;
        entry.since = Instant::now();
        self.seq += 1;
        self.backoff
            .insert((Instant::now() + delay, self.seq), key.to_owned());
    }

    /// Moves pods whose back-off is over, and unschedulable pods that
    /// waited too long, to the active heap.
    fn flush(&mut self, now: Instant) {
        let ready: Vec<(Instant, u64)> = self
            .backoff
            .range(..(now, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for k in ready {
            if let Some(key) = self.backoff.remove(&k) {
                if self
                    .entries
                    .get(&key)
                    .is_some_and(|e| e.place == Place::Backoff)
                {
                    self.push_active(&key);
                }
            }
        }
        let stale: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.place == Place::Unschedulable && now.duration_since(e.since) > UNSCHEDULABLE_FLUSH
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            self.push_active(&key);
        }
    }

    fn next_backoff(&self) -> Option<Instant> {
        self.backoff.keys().next().map(|(t, _)| *t)
    }
}

/// A popped pod and how many attempts it has had.
pub struct Popped {
    pub pod: Arc<PodInfo>,
    pub attempts: u32,
}

#[derive(Default)]
pub struct SchedulingQueue {
    inner: Mutex<Inner>,
    notify: Notify,
}

impl SchedulingQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a pending pod, or takes a new version of one already queued.
    pub fn add_or_update(&self, pod: Arc<PodInfo>) {
        let mut inner = self.lock();
        let key = pod.key.clone();
        match inner.entries.get_mut(&key) {
            Some(entry) => {
                let changed = entry.pod.pod.spec != pod.pod.spec || entry.pod.labels != pod.labels;
                entry.pod = pod;
                // A changed pod may fit now.
                if changed && entry.place == Place::Unschedulable {
                    inner.push_active(&key);
                    drop(inner);
                    self.notify.notify_one();
                }
            }
            None => {
                let now = Instant::now();
                inner.entries.insert(
                    key.clone(),
                    Entry {
                        pod,
                        place: Place::Active,
                        attempts: 0,
                        added: now,
                        since: now,
                        popped_at_move: 0,
                        last_message: None,
                    },
                );
                inner.push_active(&key);
                drop(inner);
                self.notify.notify_one();
            }
        }
    }

    /// Forgets a pod (bound, deleted, or no longer ours).
    pub fn remove(&self, key: &str) {
        self.lock().entries.remove(key);
    }

    /// Waits for the next pod to schedule.
    pub async fn pop(&self) -> Popped {
        loop {
            let notified = self.notify.notified();
            let wait = {
                let mut inner = self.lock();
                inner.flush(Instant::now());
                while let Some(item) = inner.active.pop() {
                    let moves = inner.moves;
                    let Some(entry) = inner.entries.get_mut(&item.key) else {
                        continue;
                    };
                    if entry.place != Place::Active {
                        continue;
                    }
                    entry.place = Place::InFlight;
                    entry.attempts += 1;
                    entry.popped_at_move = moves;
                    return Popped {
                        pod: entry.pod.clone(),
                        attempts: entry.attempts,
                    };
                }
                inner
                    .next_backoff()
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .unwrap_or(UNSCHEDULABLE_FLUSH)
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
            }
        }
    }

    /// The pod was bound (or handed to binding): it leaves the queue.
    pub fn done(&self, key: &str) {
        self.lock().entries.remove(key);
    }

    /// The pod fits nowhere. It waits in the unschedulable pool for an
    /// event that may help, unless such an event came during its cycle.
    pub fn unschedulable(&self, key: &str) {
        let mut inner = self.lock();
        let moves = inner.moves;
        if let Some(entry) = inner.entries.get_mut(key) {
            if entry.place != Place::InFlight {
                return;
            }
            if entry.popped_at_move != moves {
                inner.push_backoff(key);
                return;
            }
            entry.place = Place::Unschedulable;
            entry.since = Instant::now();
        }
    }

    /// The attempt failed for another reason (a binding error): retry
    /// after a back-off.
    pub fn backoff(&self, key: &str) {
        let mut inner = self.lock();
        if inner
            .entries
            .get(key)
            .is_some_and(|e| e.place == Place::InFlight)
        {
            inner.push_backoff(key);
        }
    }

    /// A pod whose binding cycle failed (it had left the queue) comes
    /// back with its attempts: to the unschedulable pool when a plugin
    /// rejected it, else after a back-off. A newer version the informer
    /// queued meanwhile is kept.
    pub fn requeue(&self, pod: Arc<PodInfo>, attempts: u32, rejected: bool) {
        let mut inner = self.lock();
        let key = pod.key.clone();
        if inner.entries.contains_key(&key) {
            return;
        }
        let now = Instant::now();
        let moves = inner.moves;
        inner.entries.insert(
            key.clone(),
            Entry {
                pod,
                place: Place::Unschedulable,
                attempts,
                added: now,
                since: now,
                popped_at_move: moves,
                last_message: None,
            },
        );
        if !rejected {
            inner.push_backoff(&key);
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// A cluster change (a node came, a pod left) may let waiting pods in.
    pub fn move_all_to_active(&self) {
        let mut inner = self.lock();
        inner.moves += 1;
        let waiting: Vec<String> = inner
            .entries
            .iter()
            .filter(|(_, e)| e.place == Place::Unschedulable)
            .map(|(k, _)| k.clone())
            .collect();
        for key in waiting {
            inner.push_backoff(&key);
        }
        drop(inner);
        self.notify.notify_one();
    }

    /// Records the FailedScheduling message; returns whether it is new.
    pub fn note_message(&self, key: &str, message: &str) -> bool {
        let mut inner = self.lock();
        match inner.entries.get_mut(key) {
            Some(entry) if entry.last_message.as_deref() != Some(message) => {
                entry.last_message = Some(message.to_owned());
                true
            }
            _ => false,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::pod;
    use serde_json::json;

    #[tokio::test]
    async fn higher_priority_then_older_pods_come_first() {
        let q = SchedulingQueue::default();
        q.add_or_update(pod("low", json!({"priority": 1})));
        q.add_or_update(pod("high", json!({"priority": 100})));
        q.add_or_update(pod("low2", json!({"priority": 1})));
        let order: Vec<String> = vec![q.pop().await, q.pop().await, q.pop().await]
            .into_iter()
            .map(|p| p.pod.key.clone())
            .collect();
        assert_eq!(order, vec!["default/high", "default/low", "default/low2"]);
    }

    #[tokio::test]
    async fn unschedulable_pods_wait_for_an_event() {
        let q = SchedulingQueue::default();
        q.add_or_update(pod("p", json!({})));
        let popped = q.pop().await;
        assert_eq!(popped.attempts, 1);
        q.unschedulable(&popped.pod.key);
        assert!(tokio::time::timeout(Duration::from_millis(200), q.pop())
            .await
            .is_err());
        q.move_all_to_active();
        // Back-off of the first attempt is one second.
        let again = tokio::time::timeout(Duration::from_secs(5), q.pop())
            .await
            .unwrap();
        assert_eq!(again.attempts, 2);
        assert!(q.note_message(&again.pod.key, "0/1 nodes are available."));
        assert!(!q.note_message(&again.pod.key, "0/1 nodes are available."));
        q.done(&again.pod.key);
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn an_event_during_the_cycle_is_not_missed() {
        let q = SchedulingQueue::default();
        q.add_or_update(pod("p", json!({})));
        let popped = q.pop().await;
        q.move_all_to_active();
        q.unschedulable(&popped.pod.key);
        let again = tokio::time::timeout(Duration::from_secs(5), q.pop())
            .await
            .unwrap();
        assert_eq!(again.pod.key, "default/p");
    }
}
