use std::time::Duration;

use crate::{DynStore, Revision, StoreError};

/// Compacts a store's history periodically, the way kube-apiserver does for
/// etcd: at every tick it compacts up to the revision it saw at the previous
/// tick, so history is kept for at least one interval. Watchers that fall
/// further behind than that get a "compacted" error and re-list.
pub struct Compactor {
    store: DynStore,
    interval: Duration,
}

impl Compactor {
    pub fn new(store: DynStore, interval: Duration) -> Self {
        Compactor { store, interval }
    }

    /// Runs until the task is dropped.
    pub async fn run(self) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: Option<Revision> = None;
        loop {
            ticker.tick().await;
            previous = self.tick(previous).await;
        }
    }

    /// One round: compacts to `previous` (if any), and returns the revision
    /// to compact to next time.
    pub async fn tick(&self, previous: Option<Revision>) -> Option<Revision> {
        if let Some(target) = previous {
            match self.store.compact(target).await {
                Ok(()) => tracing::debug!(revision = target, "compacted store history"),
                // Someone (another server on the same etcd) compacted further.
                Err(StoreError::Compacted { .. }) => {}
                Err(err) => tracing::warn!(error = %err, revision = target, "compaction failed"),
            }
        }
        match self.store.revisions().await {
            Ok((latest, _)) => Some(latest),
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the store revision for compaction");
                previous
            }
        }
    }
}
