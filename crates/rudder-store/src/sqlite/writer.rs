//! The embedded store's single writer.
//!
//! SQLite allows one writer at a time, and every durable commit costs an
//! fsync. So all writes go through one thread that takes every request
//! waiting in its queue, applies them one after another in one transaction
//! (each at its own revision, each with its own compare-and-swap check) and
//! commits them with a single fsync: group commit. Only after the commit are
//! the callers answered and the events published to watches.

use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::schema::read_meta;
use crate::watch::WatchHub;
use crate::{Event, EventKind, KeyValue, Result, Revision, StoreError};

/// Most requests committed together.
const MAX_BATCH: usize = 512;
/// Revisions of history examined per compaction transaction, so compaction
/// never holds the write lock for long.
const COMPACTION_CHUNK: Revision = 2_000;

pub(super) enum WriteOp {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact {
        revision: Revision,
    },
}

pub(super) enum WriteOutcome {
    Written {
        revision: Revision,
        prev: Option<KeyValue>,
    },
    Compacted,
}

pub(super) struct WriteRequest {
    pub op: WriteOp,
    pub reply: oneshot::Sender<Result<WriteOutcome>>,
}

pub(super) struct Writer {
    conn: Connection,
    hub: Arc<WatchHub>,
    revision: Revision,
    compacted: Revision,
    /// Physical compaction under way: the next revision to examine and the
    /// revision to compact up to.
    compaction: Option<(Revision, Revision)>,
}

impl Writer {
    pub(super) fn new(conn: Connection, hub: Arc<WatchHub>) -> rusqlite::Result<Self> {
        let (revision, compacted) = read_meta(&conn)?;
        Ok(Writer {
            conn,
            hub,
            revision,
            compacted,
            compaction: None,
        })
    }

    /// Runs until every sender is gone.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<WriteRequest>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            if self.compaction.is_some() {
                match rx.try_recv() {
                    Ok(req) => batch.push(req),
                    Err(mpsc::error::TryRecvError::Empty) => {}
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            } else {
                match rx.blocking_recv() {
                    Some(req) => batch.push(req),
                    None => return,
                }
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(req) => batch.push(req),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.commit_batch(&mut batch);
            }
            if self.compaction.is_some() {
                if let Err(err) = self.compaction_step() {
                    tracing::warn!(error = %err, "compaction step failed; will retry");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            }
        }
    }

    fn commit_batch(&mut self, batch: &mut Vec<WriteRequest>) {
        let start_revision = self.revision;
        let start_compacted = self.compacted;
        let mut events = Vec::with_capacity(batch.len());
        let mut results = Vec::with_capacity(batch.len());
        let outcome = (|| -> rusqlite::Result<()> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            for req in batch.iter() {
                match apply(
                    &tx,
                    self.revision + 1,
                    self.revision,
                    self.compacted,
                    &req.op,
                )? {
                    Ok(Applied::Event(event)) => {
                        self.revision += 1;
                        results.push(Ok(WriteOutcome::Written {
                            revision: self.revision,
                            prev: event.prev.clone(),
                        }));
                        events.push(event);
                    }
                    Ok(Applied::Compact(revision)) => {
                        self.compacted = revision;
                        results.push(Ok(WriteOutcome::Compacted));
                    }
                    Err(err) => results.push(Err(err)),
                }
            }
            tx.execute(
                "UPDATE meta SET revision = ?1, compacted = ?2 WHERE id = 1",
                params![self.revision, self.compacted],
            )?;
            tx.commit()
        })();
        match outcome {
            Ok(()) => {
                if self.compacted > start_compacted {
                    let from = self.compaction.map(|(next, _)| next).unwrap_or(0);
                    self.compaction = Some((from, self.compacted));
                }
                self.hub.publish(self.revision, events);
                for (req, result) in batch.drain(..).zip(results) {
                    let _ = req.reply.send(result);
                }
            }
            Err(err) => {
                // Nothing of the batch was written: the transaction rolled back.
                tracing::error!(error = %err, "store commit failed");
                let err = StoreError::from(err);
                self.revision = start_revision;
                self.compacted = start_compacted;
                for req in batch.drain(..) {
                    let _ = req.reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// Removes one chunk of history older than the compaction target: rows
    /// superseded by a later row that is also older than the target, and
    /// tombstones. The latest row of every key before the target stays, so
    /// reads at the target and watches from it still work.
    fn compaction_step(&mut self) -> rusqlite::Result<()> {
        let Some((mut next, target)) = self.compaction else {
            return Ok(());
        };
        if next == 0 {
            next = self
                .conn
                .query_row("SELECT coalesce(min(rev), 0) FROM log", [], |r| r.get(0))?;
        }
        let end = (next + COMPACTION_CHUNK).min(target);
        if next < end {
            self.conn.execute(
                "DELETE FROM log WHERE rev >= ?1 AND rev < ?2 AND (deleted = 1 OR EXISTS (
                     SELECT 1 FROM log later
                     WHERE later.key = log.key AND later.rev > log.rev AND later.rev < ?3))",
                params![next, end, target],
            )?;
        }
        self.compaction = if end >= target {
            None
        } else {
            Some((end, target))
        };
        if self.compaction.is_none() {
            tracing::debug!(revision = target, "compaction finished");
        }
        Ok(())
    }
}

enum Applied {
    Event(Event),
    Compact(Revision),
}

/// The live row of `key`, if any, with its value.
fn current(tx: &Transaction, key: &str) -> rusqlite::Result<Option<KeyValue>> {
    tx.prepare_cached(
        "SELECT c.create_rev, c.mod_rev, c.version, l.value
         FROM current c JOIN log l ON l.rev = c.mod_rev WHERE c.key = ?1",
    )?
    .query_row(params![key.as_bytes()], |row| {
        Ok(KeyValue {
            key: key.to_owned(),
            create_revision: row.get(0)?,
            mod_revision: row.get(1)?,
            version: row.get(2)?,
            value: row.get(3)?,
        })
    })
    .optional()
}

#[allow(clippy::too_many_arguments)]
fn insert_log(
    tx: &Transaction,
    rev: Revision,
    key: &str,
    deleted: bool,
    create_rev: Revision,
    prev_rev: Revision,
    version: i64,
    value: &[u8],
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO log (rev, key, deleted, create_rev, prev_rev, version, value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        rev,
        key.as_bytes(),
        deleted,
        create_rev,
        prev_rev,
        version,
        value
    ])?;
    Ok(())
}

/// Applies one request at revision `rev`. The outer error is a database
/// failure that aborts the whole batch; the inner one is the request's own
/// outcome (a lost compare-and-swap, say), which writes nothing.
fn apply(
    tx: &Transaction,
    rev: Revision,
    latest: Revision,
    compacted: Revision,
    op: &WriteOp,
) -> rusqlite::Result<Result<Applied>> {
    match op {
        WriteOp::Create { key, value } => {
            if current(tx, key)?.is_some() {
                return Ok(Err(StoreError::AlreadyExists { key: key.clone() }));
            }
            insert_log(tx, rev, key, false, rev, 0, 1, value)?;
            tx.prepare_cached(
                "INSERT INTO current (key, create_rev, mod_rev, version) VALUES (?1, ?2, ?2, 1)",
            )?
            .execute(params![key.as_bytes(), rev])?;
            Ok(Ok(Applied::Event(Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: rev,
                    mod_revision: rev,
                    version: 1,
                },
                prev: None,
            })))
        }
        WriteOp::Update {
            key,
            value,
            expected,
        } => {
            let Some(cur) = current(tx, key)? else {
                return Ok(Err(StoreError::NotFound(key.clone())));
            };
            if cur.mod_revision != *expected {
                return Ok(Err(StoreError::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    current: Box::new(cur),
                }));
            }
            let version = cur.version + 1;
            insert_log(
                tx,
                rev,
                key,
                false,
                cur.create_revision,
                cur.mod_revision,
                version,
                value,
            )?;
            tx.prepare_cached("UPDATE current SET mod_rev = ?2, version = ?3 WHERE key = ?1")?
                .execute(params![key.as_bytes(), rev, version])?;
            Ok(Ok(Applied::Event(Event {
                kind: EventKind::Put,
                kv: KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: cur.create_revision,
                    mod_revision: rev,
                    version,
                },
                prev: Some(cur),
            })))
        }
        WriteOp::Delete { key, expected } => {
            let Some(cur) = current(tx, key)? else {
                return Ok(Err(StoreError::NotFound(key.clone())));
            };
            if let Some(expected) = expected {
                if cur.mod_revision != *expected {
                    return Ok(Err(StoreError::Conflict {
                        key: key.clone(),
                        expected: *expected,
                        current: Box::new(cur),
                    }));
                }
            }
            insert_log(
                tx,
                rev,
                key,
                true,
                cur.create_revision,
                cur.mod_revision,
                0,
                &[],
            )?;
            tx.prepare_cached("DELETE FROM current WHERE key = ?1")?
                .execute(params![key.as_bytes()])?;
            Ok(Ok(Applied::Event(Event {
                kind: EventKind::Delete,
                kv: KeyValue {
                    key: key.clone(),
                    value: Vec::new(),
                    create_revision: 0,
                    mod_revision: rev,
                    version: 0,
                },
                prev: Some(cur),
            })))
        }
        WriteOp::Compact { revision } => {
            if *revision > latest {
                return Ok(Err(StoreError::FutureRevision {
                    requested: *revision,
                    latest,
                }));
            }
            if *revision <= compacted {
                return Ok(Err(StoreError::Compacted {
                    requested: *revision,
                    compacted,
                }));
            }
            Ok(Ok(Applied::Compact(*revision)))
        }
    }
}
