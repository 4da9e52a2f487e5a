//! The on-disk layout of the embedded store.
//!
//! `log` is the history: one row per revision, the way etcd's MVCC keeps it.
//! A put stores the new value; a delete stores a tombstone. `prev_rev` links
//! a row to the key's previous live row, which gives watches their previous
//! value. `current` indexes the live keys (their latest row), so reads at the
//! latest revision never scan history. `meta` holds the latest and the
//! compacted revision.

use rusqlite::Connection;

use crate::Revision;

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    revision  INTEGER NOT NULL,
    compacted INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (id, revision, compacted) VALUES (1, 1, 0);
CREATE TABLE IF NOT EXISTS log (
    rev        INTEGER PRIMARY KEY,
    key        BLOB NOT NULL,
    deleted    INTEGER NOT NULL,
    create_rev INTEGER NOT NULL,
    prev_rev   INTEGER NOT NULL,
    version    INTEGER NOT NULL,
    value      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS log_key_rev ON log (key, rev);
CREATE TABLE IF NOT EXISTS current (
    key        BLOB PRIMARY KEY,
    create_rev INTEGER NOT NULL,
    mod_rev    INTEGER NOT NULL,
    version    INTEGER NOT NULL
);
";

/// Settings every connection gets. WAL lets readers run beside the writer;
/// `synchronous = FULL` fsyncs the WAL at every commit, so an acknowledged
/// write survives a crash of the process or of the machine.
pub(super) fn configure(conn: &Connection, writer: bool) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    if writer {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
    } else {
        conn.pragma_update(None, "query_only", true)?;
    }
    conn.pragma_update(None, "cache_size", -16_000)?;
    Ok(())
}

pub(super) fn read_meta(conn: &Connection) -> rusqlite::Result<(Revision, Revision)> {
    conn.query_row(
        "SELECT revision, compacted FROM meta WHERE id = 1",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
}
