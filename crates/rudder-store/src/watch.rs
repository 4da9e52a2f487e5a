use std::sync::Arc;
use std::sync::Mutex;

use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

use crate::{Event, Result, Revision, WatchMessage};

/// The receiving end of a watch. Dropping it cancels the watch.
pub struct WatchStream {
    rx: mpsc::Receiver<Result<WatchMessage>>,
    task: Option<JoinHandle<()>>,
}

impl WatchStream {
    pub(crate) fn new(rx: mpsc::Receiver<Result<WatchMessage>>, task: JoinHandle<()>) -> Self {
        WatchStream {
            rx,
            task: Some(task),
        }
    }

    /// The next message; `None` once the stream has ended. An `Err` is the
    /// last item: the watch is over (compacted, closed, store unavailable).
    pub async fn recv(&mut self) -> Option<Result<WatchMessage>> {
        self.rx.recv().await
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl futures::Stream for WatchStream {
    type Item = Result<WatchMessage>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Capacity of a watch's outgoing channel. A consumer that falls this far
/// behind makes its watch task wait, and then catch up from history.
pub(crate) const WATCH_CHANNEL_CAPACITY: usize = 256;

/// Fans committed writes out to the watch tasks of an embedded store.
///
/// The writer publishes every committed batch under `published`'s lock, and
/// a new watch subscribes under the same lock; so a watch knows exactly which
/// revisions it must read from history and which will reach it live, and no
/// event is lost or seen twice.
pub(crate) struct WatchHub {
    published: Mutex<Revision>,
    tx: broadcast::Sender<Arc<Vec<Event>>>,
}

/// How many committed batches the hub buffers for slow watch tasks before
/// they must catch up from history.
const HUB_CAPACITY: usize = 1024;

impl WatchHub {
    pub(crate) fn new(published: Revision) -> Self {
        let (tx, _) = broadcast::channel(HUB_CAPACITY);
        WatchHub {
            published: Mutex::new(published),
            tx,
        }
    }

    /// Publishes the events of committed writes up to `revision`.
    pub(crate) fn publish(&self, revision: Revision, events: Vec<Event>) {
        let mut published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        *published = revision;
        if !events.is_empty() {
            // No receivers is fine: nobody is watching.
            let _ = self.tx.send(Arc::new(events));
        }
    }

    /// A receiver of every batch published after the returned revision.
    pub(crate) fn subscribe(&self) -> (broadcast::Receiver<Arc<Vec<Event>>>, Revision) {
        let published = self.published.lock().unwrap_or_else(|e| e.into_inner());
        (self.tx.subscribe(), *published)
    }
}

/// Whether `key` falls in the watched range `[start, end)`.
pub(crate) fn in_range(key: &[u8], start: &[u8], end: Option<&[u8]>) -> bool {
    key >= start && end.is_none_or(|end| key < end)
}
