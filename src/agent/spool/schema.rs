//! The spool's SQLite schema and connection settings.

use std::time::Duration;

use rusqlite::Connection;

/// Bumped when the layout changes incompatibly.
pub const SCHEMA_VERSION: &str = "1";

/// File name of the spool database inside the spool directory.
pub const DB_FILE: &str = "spool.sqlite";

/// Tables: the stored records (`records`, compacted once every sink has them; `cum_bytes` is
/// the running total of JSON bytes up to the record, so the backlog's size is a subtraction),
/// the exact
/// idempotency keys ever chained (`keys_recent` in sequence order and `keys` sorted by key,
/// see `keys.rs`; never compacted: they make re-reads exactly-once),
/// the live message GUIDs for deletion detection (`live`), the highest source row ids
/// (`rowids`), the captured attachment files (`blobs`), the chain head (`chain`, one row) and
/// one delivery cursor per sink (`cursors`).
const DDL: &str = "
CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chain(
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    compacted_through INTEGER NOT NULL,
    compacted_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS records(seq INTEGER PRIMARY KEY, cum_bytes INTEGER NOT NULL, json TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys(key TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys_recent(seq INTEGER PRIMARY KEY, key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS live(guid TEXT PRIMARY KEY, key TEXT NOT NULL, event_ns INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS live_by_event ON live(event_ns);
CREATE TABLE IF NOT EXISTS rowids(src_table TEXT PRIMARY KEY, max_rowid INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs(sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, last_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors(sink TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO chain(id, seq, hash, compacted_through, compacted_bytes) VALUES (1, 0, '', 0, 0);
";

/// Durability settings every connection uses: WAL with a full fsync at each commit, so a
/// transaction whose commit returned survives a crash or power cut, and a torn (uncommitted)
/// tail of the WAL is discarded by SQLite's frame checksums on the next open.
///
/// `cache_kib` is the page cache of this connection (the writer gets more than the readers).
pub fn configure(conn: &mut Connection, cache_kib: i64) -> rusqlite::Result<()> {
    // The capture loop, each sink's cursor updates and compaction all write. SQLite's default
    // busy handler sleeps up to 100 ms between retries, which would add that much latency to
    // every acknowledgement that meets a commit; retry every millisecond instead (for 30 s).
    conn.busy_handler(Some(retry_every_millisecond))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Keep the WAL file from growing without bound between checkpoints.
    conn.pragma_update(None, "journal_size_limit", 64i64 * 1024 * 1024)?;
    conn.pragma_update(None, "foreign_keys", false)?;
    // Sorts and temporary tables (the key merge's ORDER BY ... LIMIT) stay in memory: the
    // agent's root file system is read-only, so SQLite could not create a temporary file.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    // Checkpoint every ~32 MiB of WAL instead of 4 MiB: fewer checkpoint fsyncs on backfills.
    conn.pragma_update(None, "wal_autocheckpoint", 8192i64)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(())
}

fn retry_every_millisecond(attempt: i32) -> bool {
    if attempt >= 30_000 {
        return false;
    }
    std::thread::sleep(Duration::from_millis(1));
    true
}

/// Create the tables if they are missing.
pub fn create(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(DDL)
}
