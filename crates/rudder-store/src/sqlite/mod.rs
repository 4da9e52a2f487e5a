//! The embedded backend: SQLite in WAL mode, one group-committing writer
//! thread and a small pool of reader connections.

mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use tokio::sync::{broadcast, mpsc, oneshot};

use self::writer::{WriteOp, WriteOutcome, WriteRequest, Writer};
use crate::watch::{in_range, WatchHub, WATCH_CHANNEL_CAPACITY};
use crate::{
    check_key, check_range, check_value, prefix_end, Event, EventKind, KeyValue, RangeRequest,
    RangeResponse, Result, Revision, Store, StoreError, WatchMessage, WatchStream,
};

/// Settings of the embedded store.
#[derive(Clone, Debug)]
pub struct SqliteConfig {
    /// The database file; its directory is created if missing.
    pub path: PathBuf,
    /// Reader connections (reads run in parallel with each other and with
    /// the writer).
    pub readers: usize,
    /// How long a watch stays quiet before it reports progress.
    pub progress_interval: Duration,
}

impl SqliteConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            readers: 4,
            progress_interval: Duration::from_secs(5),
        }
    }
}

/// The embedded store. Cheap to clone; the writer thread stops when the
/// last clone is dropped.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    writes: mpsc::Sender<WriteRequest>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    hub: Arc<WatchHub>,
    progress_interval: Duration,
}

/// Most history rows one watch catch-up query returns.
const HISTORY_PAGE: usize = 1_000;

impl SqliteStore {
    /// Opens (creating if needed) the database at `config.path`. Fails with
    /// [`StoreError::Open`] naming the path when the file cannot be used.
    pub async fn open(config: SqliteConfig) -> Result<Self> {
        tokio::task::spawn_blocking(move || Self::open_blocking(config))
            .await
            .map_err(|e| StoreError::Unavailable(format!("opening the store panicked: {e}")))?
    }

    fn open_blocking(config: SqliteConfig) -> Result<Self> {
        let path = config.path.clone();
        let open_error = |reason: String| StoreError::Open {
            location: path.display().to_string(),
            reason,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_error(format!("cannot create {}: {e}", dir.display())))?;
        }
        let writer_conn = Connection::open(&path).map_err(|e| open_error(e.to_string()))?;
        schema::configure(&writer_conn, true).map_err(|e| open_error(e.to_string()))?;
        let (revision, _) =
            schema::read_meta(&writer_conn).map_err(|e| open_error(e.to_string()))?;
        let mut readers = Vec::with_capacity(config.readers.max(1));
        for _ in 0..config.readers.max(1) {
            let conn = open_reader(&path).map_err(|e| open_error(e.to_string()))?;
            readers.push(Mutex::new(conn));
        }
        let hub = Arc::new(WatchHub::new(revision));
        let writer =
            Writer::new(writer_conn, hub.clone()).map_err(|e| open_error(e.to_string()))?;
        let (tx, rx) = mpsc::channel(4 * 1024);
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| open_error(format!("cannot start the writer thread: {e}")))?;
        tracing::info!(path = %path.display(), revision, "opened the embedded store");
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writes: tx,
                readers,
                next_reader: AtomicUsize::new(0),
                hub,
                progress_interval: config.progress_interval,
            }),
        })
    }

    async fn write(&self, op: WriteOp) -> Result<WriteOutcome> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writes
            .send(WriteRequest { op, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?
    }

    /// Runs `f` on a reader connection inside a read transaction, so that
    /// the revision and the data it reads belong to one snapshot.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, Revision, Revision) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.read(f))
            .await
            .map_err(|e| StoreError::Unavailable(format!("a store read panicked: {e}")))?
    }
}

impl Inner {
    fn read<T>(&self, f: impl FnOnce(&Connection, Revision, Revision) -> Result<T>) -> Result<T> {
        let n = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let conn = self.readers[n].lock().unwrap_or_else(|e| e.into_inner());
        // A read transaction, so the revision and the rows come from one
        // snapshot. Cached statements: BEGIN/COMMIT are hot, and parsing
        // them each time shows in profiles.
        conn.prepare_cached("BEGIN")?.execute([])?;
        let result = schema::read_meta(&conn)
            .map_err(StoreError::from)
            .and_then(|(latest, compacted)| f(&conn, latest, compacted));
        conn.prepare_cached("COMMIT")?.execute([])?;
        result
    }
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    schema::configure(&conn, false)?;
    Ok(conn)
}

/// Checks a requested read revision against the store's window.
fn check_read_revision(requested: Revision, latest: Revision, compacted: Revision) -> Result<()> {
    if requested > latest {
        return Err(StoreError::FutureRevision { requested, latest });
    }
    if requested < compacted {
        return Err(StoreError::Compacted {
            requested,
            compacted,
        });
    }
    Ok(())
}

fn key_from(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| StoreError::Corrupt("a stored key is not UTF-8".into()))
}

/// A `(key, create_rev, mod_rev, version, value)` row.
type KvRow = (Vec<u8>, Revision, Revision, i64, Vec<u8>);

fn kv_row(row: &Row) -> rusqlite::Result<KvRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn into_kv(row: KvRow) -> Result<KeyValue> {
    Ok(KeyValue {
        key: key_from(row.0)?,
        create_revision: row.1,
        mod_revision: row.2,
        version: row.3,
        value: row.4,
    })
}

/// Reads keys in `[start, end)` at the latest revision (`at = None`) or at
/// a past one. Returns up to `limit` keys (0: all) and whether more follow.
fn read_range(
    conn: &Connection,
    start: &[u8],
    end: Option<&[u8]>,
    at: Option<Revision>,
    limit: usize,
) -> Result<(Vec<KeyValue>, bool)> {
    // SQLite has no "no upper bound" for blobs; a key never starts with
    // 0xff 0xff ... in practice, and `prefix_end` is `None` only for such
    // prefixes, so an all-0xff bound stands in for "to the end".
    let end = end
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| vec![0xff; crate::MAX_KEY_BYTES + 1]);
    let fetch = if limit == 0 { -1 } else { limit as i64 + 1 };
    let rows: Vec<_> = match at {
        None => {
            let mut stmt = conn.prepare_cached(
                "SELECT c.key, c.create_rev, c.mod_rev, c.version, l.value
                 FROM current c JOIN log l ON l.rev = c.mod_rev
                 WHERE c.key >= ?1 AND c.key < ?2 ORDER BY c.key LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![start, end, fetch], kv_row)?;
            rows.collect::<rusqlite::Result<_>>()?
        }
        Some(rev) => {
            let mut stmt = conn.prepare_cached(
                "SELECT l.key, l.create_rev, l.rev, l.version, l.value FROM log l
                 WHERE l.key >= ?1 AND l.key < ?2 AND l.rev <= ?3 AND l.deleted = 0
                   AND l.rev = (SELECT max(x.rev) FROM log x WHERE x.key = l.key AND x.rev <= ?3)
                 ORDER BY l.key LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![start, end, rev, fetch], kv_row)?;
            rows.collect::<rusqlite::Result<_>>()?
        }
    };
    let mut kvs = rows.into_iter().map(into_kv).collect::<Result<Vec<_>>>()?;
    let more = limit > 0 && kvs.len() > limit;
    kvs.truncate(if limit == 0 { kvs.len() } else { limit });
    Ok((kvs, more))
}

fn count_range(
    conn: &Connection,
    start: &[u8],
    end: Option<&[u8]>,
    at: Option<Revision>,
) -> Result<i64> {
    let end = end
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| vec![0xff; crate::MAX_KEY_BYTES + 1]);
    let count = match at {
        None => conn
            .prepare_cached("SELECT count(*) FROM current WHERE key >= ?1 AND key < ?2")?
            .query_row(params![start, end], |r| r.get(0))?,
        Some(rev) => conn
            .prepare_cached(
                "SELECT count(*) FROM log l
                 WHERE l.key >= ?1 AND l.key < ?2 AND l.rev <= ?3 AND l.deleted = 0
                   AND l.rev = (SELECT max(x.rev) FROM log x WHERE x.key = l.key AND x.rev <= ?3)",
            )?
            .query_row(params![start, end, rev], |r| r.get(0))?,
    };
    Ok(count)
}

/// Reads the changes in `[from, to]` under `[start, end)` from history, at
/// most `HISTORY_PAGE` of them. Returns the events and the last revision the
/// read covered.
fn read_history(
    conn: &Connection,
    start: &[u8],
    end: Option<&[u8]>,
    from: Revision,
    to: Revision,
) -> Result<(Vec<Event>, Revision)> {
    let end = end
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| vec![0xff; crate::MAX_KEY_BYTES + 1]);
    let mut stmt = conn.prepare_cached(
        "SELECT l.rev, l.key, l.deleted, l.create_rev, l.version, l.value,
                p.create_rev, p.rev, p.version, p.value
         FROM log l LEFT JOIN log p ON p.rev = l.prev_rev AND l.prev_rev > 0
         WHERE l.rev >= ?1 AND l.rev <= ?2 AND l.key >= ?3 AND l.key < ?4
         ORDER BY l.rev LIMIT ?5",
    )?;
    let mut rows = stmt.query(params![from, to, start, end, HISTORY_PAGE as i64])?;
    let mut events = Vec::new();
    while let Some(row) = rows.next()? {
        let rev: Revision = row.get(0)?;
        let key = key_from(row.get(1)?)?;
        let deleted: bool = row.get(2)?;
        let prev = match row.get::<_, Option<Revision>>(7)? {
            Some(prev_rev) => Some(KeyValue {
                key: key.clone(),
                create_revision: row.get(6)?,
                mod_revision: prev_rev,
                version: row.get(8)?,
                value: row.get(9)?,
            }),
            None => None,
        };
        let event = if deleted {
            Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key,
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: rev,
                    version: 0,
                },
                prev,
            }
        } else {
            Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key,
                    value: row.get(5)?,
                    create_revision: row.get(3)?,
                    mod_revision: rev,
                    version: row.get(4)?,
                },
                prev,
            }
        };
        events.push(event);
    }
    let covered = if events.len() == HISTORY_PAGE {
        events.last().map(Event::revision).unwrap_or(to)
    } else {
        to
    };
    Ok((events, covered))
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Option<KeyValue>, Revision)> {
        check_key(key)?;
        let key = key.to_owned();
        self.read(move |conn, latest, compacted| {
            if let Some(rev) = revision {
                check_read_revision(rev, latest, compacted)?;
            }
            let row = match revision {
                None => conn
                    .prepare_cached(
                        "SELECT c.key, c.create_rev, c.mod_rev, c.version, l.value
                         FROM current c JOIN log l ON l.rev = c.mod_rev WHERE c.key = ?1",
                    )?
                    .query_row(params![key.as_bytes()], kv_row)
                    .optional()?,
                Some(rev) => conn
                    .prepare_cached(
                        "SELECT key, create_rev, rev, version, value FROM log
                         WHERE key = ?1 AND rev <= ?2 AND deleted = 0
                           AND rev = (SELECT max(rev) FROM log WHERE key = ?1 AND rev <= ?2)",
                    )?
                    .query_row(params![key.as_bytes(), rev], kv_row)
                    .optional()?,
            };
            Ok((row.map(into_kv).transpose()?, revision.unwrap_or(latest)))
        })
        .await
    }

    async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        check_range(&req)?;
        self.read(move |conn, latest, compacted| {
            if let Some(rev) = req.revision {
                check_read_revision(rev, latest, compacted)?;
            }
            let end = prefix_end(req.prefix.as_bytes());
            let start = req.start.as_deref().unwrap_or(&req.prefix).as_bytes();
            let revision = req.revision.unwrap_or(latest);
            if req.count_only {
                let count = count_range(conn, start, end.as_deref(), req.revision)?;
                return Ok(RangeResponse {
                    kvs: Vec::new(),
                    more: false,
                    count,
                    revision,
                });
            }
            let (kvs, more) = read_range(conn, start, end.as_deref(), req.revision, req.limit)?;
            let count = if more {
                count_range(conn, start, end.as_deref(), req.revision)?
            } else {
                kvs.len() as i64
            };
            Ok(RangeResponse {
                kvs,
                more,
                count,
                revision,
            })
        })
        .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        check_key(key)?;
        check_value(&value)?;
        match self
            .write(WriteOp::Create {
                key: key.to_owned(),
                value,
            })
            .await?
        {
            WriteOutcome::Written { revision, .. } => Ok(revision),
            WriteOutcome::Compacted => unreachable!("a create never compacts"),
        }
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        check_key(key)?;
        check_value(&value)?;
        let op = WriteOp::Update {
            key: key.to_owned(),
            value,
            expected,
        };
        match self.write(op).await? {
            WriteOutcome::Written { revision, .. } => Ok(revision),
            WriteOutcome::Compacted => unreachable!("an update never compacts"),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        check_key(key)?;
        let op = WriteOp::Delete {
            key: key.to_owned(),
            expected,
        };
        match self.write(op).await? {
            WriteOutcome::Written {
                revision,
                prev: Some(prev),
            } => Ok((revision, prev)),
            _ => Err(StoreError::Corrupt(
                "a delete did not report the deleted value".into(),
            )),
        }
    }

    async fn watch(&self, prefix: &str, start_revision: Revision) -> Result<WatchStream> {
        let (live, published) = self.inner.hub.subscribe();
        let (_, compacted) = self
            .read(|_, latest, compacted| Ok((latest, compacted)))
            .await?;
        let next = if start_revision <= 0 {
            published + 1
        } else {
            start_revision
        };
        if next < compacted {
            return Err(StoreError::Compacted {
                requested: next,
                compacted,
            });
        }
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL_CAPACITY);
        let watch = SqliteWatch {
            store: self.clone(),
            start: prefix.as_bytes().to_vec(),
            end: prefix_end(prefix.as_bytes()),
            next,
            tx,
        };
        let task = tokio::spawn(watch.run(live, published));
        Ok(WatchStream::new(rx, task))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.write(WriteOp::Compact { revision }).await.map(|_| ())
    }

    async fn revisions(&self) -> Result<(Revision, Revision)> {
        self.read(|_, latest, compacted| Ok((latest, compacted)))
            .await
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

/// One watch's task: replays history from `next`, then follows the hub.
struct SqliteWatch {
    store: SqliteStore,
    start: Vec<u8>,
    end: Option<Vec<u8>>,
    /// The next revision this watch has to deliver.
    next: Revision,
    tx: mpsc::Sender<Result<WatchMessage>>,
}

impl SqliteWatch {
    async fn run(
        mut self,
        mut live: broadcast::Receiver<Arc<Vec<Event>>>,
        mut published: Revision,
    ) {
        loop {
            if let Err(err) = self.catch_up(published).await {
                let _ = self.tx.send(Err(err)).await;
                return;
            }
            match self.follow(&mut live).await {
                Follow::Lagged => {
                    // Too far behind the hub: resubscribe and read the gap
                    // from history.
                    (live, published) = self.store.inner.hub.subscribe();
                }
                Follow::Done => return,
            }
        }
    }

    /// Delivers every change from `self.next` up to `to` from history.
    async fn catch_up(&mut self, to: Revision) -> Result<()> {
        while self.next <= to {
            let (start, end, from) = (self.start.clone(), self.end.clone(), self.next);
            let (events, covered) = self
                .store
                .read(move |conn, _, compacted| {
                    if from < compacted {
                        return Err(StoreError::Compacted {
                            requested: from,
                            compacted,
                        });
                    }
                    read_history(conn, &start, end.as_deref(), from, to)
                })
                .await?;
            self.next = covered + 1;
            if !events.is_empty()
                && self
                    .tx
                    .send(Ok(WatchMessage::Events(events)))
                    .await
                    .is_err()
            {
                return Err(StoreError::WatchClosed("the watcher went away".into()));
            }
        }
        Ok(())
    }

    async fn follow(&mut self, live: &mut broadcast::Receiver<Arc<Vec<Event>>>) -> Follow {
        let mut ticker = tokio::time::interval(self.store.inner.progress_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.reset();
        let mut reported = self.next - 1;
        loop {
            let batch = tokio::select! {
                batch = live.recv() => batch,
                _ = ticker.tick() => {
                    // Everything before `next` has been delivered.
                    let progress = self.next - 1;
                    if progress > reported {
                        reported = progress;
                        if self.tx.send(Ok(WatchMessage::Progress(progress))).await.is_err() {
                            return Follow::Done;
                        }
                    }
                    continue;
                }
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(broadcast::error::RecvError::Lagged(_)) => return Follow::Lagged,
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = self
                        .tx
                        .send(Err(StoreError::WatchClosed("the store was closed".into())))
                        .await;
                    return Follow::Done;
                }
            };
            let events: Vec<Event> = batch
                .iter()
                .filter(|e| {
                    e.revision() >= self.next
                        && in_range(e.kv.key.as_bytes(), &self.start, self.end.as_deref())
                })
                .cloned()
                .collect();
            if let Some(last) = batch.last() {
                self.next = self.next.max(last.revision() + 1);
            }
            if !events.is_empty() {
                reported = self.next - 1;
                if self
                    .tx
                    .send(Ok(WatchMessage::Events(events)))
                    .await
                    .is_err()
                {
                    return Follow::Done;
                }
            }
        }
    }
}

enum Follow {
    Lagged,
    Done,
}
