//! The durable spool on the device volume: SQLite in WAL mode with `synchronous=FULL`
//! (see `docs/spool.md` for why, and what a torn write does).
//!
//! The capture thread owns the [`Spool`] (the only writer of records); each delivery task owns
//! a [`SpoolReader`] (its own connection) to read batches and move its sink's cursor.
//!
//! Guarantees:
//! - [`Spool::append`] seals drafts into the device's chain (`seq` from 1 without gaps,
//!   `prev_hash`, `hash`) and commits them with one fsync'd transaction, after their
//!   attachment files were written and fsync'd. Drafts whose idempotency key is already
//!   chained are dropped. The reader's position is derived from what is in the spool
//!   ([`ArchiveIndex`]), so it never runs ahead of what is durable.
//! - A sink's cursor only moves forward, after the sink acknowledged.
//! - [`Spool::compact`] deletes record bodies (and attachment files) every sink has; the keys,
//!   the row-id high-water marks and the chain head stay.

mod blobs;
mod bloom;
mod keys;
mod reader;
mod schema;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

pub use blobs::{BlobError, BlobStore, PARALLEL_FSYNCS, is_sha256_hex, parallel_map, sync_dir};
pub use reader::SpoolReader;

use crate::agent::seal::seal_canonical;
use crate::agent::source::{ArchiveIndex, Draft};
use crate::api::record::{DecodeError, GENESIS_HASH, RECORD_SCHEMA, RecordKind};

/// Errors of the spool. All of them leave the spool as it was before the failed call.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// SQLite failed (disk full, I/O error, corruption).
    #[error("spool database {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// The cause.
        source: rusqlite::Error,
    },
    /// A file operation failed.
    #[error("spool directory {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The spool belongs to another device (its chain must not be mixed with this one).
    #[error("spool {path} holds the chain of device {found:?}, not {expected:?}")]
    WrongDevice {
        /// The spool directory.
        path: PathBuf,
        /// The device in the spool.
        found: String,
        /// The configured device.
        expected: String,
    },
    /// A draft violates the reader contract (wrong device or schema).
    #[error("draft {key} is invalid: {reason}")]
    InvalidDraft {
        /// Its idempotency key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The records a cursor needs are no longer in the spool.
    #[error("spool no longer holds record {seq} (compacted through {compacted_through})")]
    Missing {
        /// The record wanted.
        seq: u64,
        /// Compaction floor.
        compacted_through: u64,
    },
}

/// The head of the device's chain.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ChainHead {
    /// Sequence number of the last record (0 when empty).
    pub seq: u64,
    /// Its hash (empty when the chain is empty).
    pub hash: String,
}

impl ChainHead {
    /// The `prev_hash` of the next record.
    pub fn next_prev_hash(&self) -> &str {
        if self.seq == 0 { GENESIS_HASH } else { &self.hash }
    }
}

/// One record committed by [`Spool::append`].
#[derive(Clone, Debug, PartialEq)]
pub struct Appended {
    /// Its sequence number.
    pub seq: u64,
    /// Its kind.
    pub kind: RecordKind,
    /// Its event time, nanoseconds since 2001-01-01 UTC.
    pub event_apple_ns: i64,
    /// How many undecodable fields it carries.
    pub decode_errors: usize,
}

/// What [`Spool::append`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppendOutcome {
    /// The records now chained, in order.
    pub appended: Vec<Appended>,
    /// Drafts dropped because their key was already chained.
    pub duplicates: usize,
    /// Attachment files that could not be captured (the record says so in `decode_errors`).
    pub attachment_failures: usize,
}

pub(crate) fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> SpoolError + '_ {
    move |source| SpoolError::Db {
        path: path.to_path_buf(),
        source,
    }
}

/// The writer side of the spool.
pub struct Spool {
    conn: Connection,
    dir: PathBuf,
    db_path: PathBuf,
    blobs: BlobStore,
    device: String,
    head: ChainHead,
    compacted_through: u64,
    max_rowids: HashMap<String, i64>,
    blob_bytes: u64,
    /// Running total of record JSON bytes through the compaction floor, and through the head.
    compacted_bytes: u64,
    head_bytes: u64,
    keys: keys::KeyIndex,
    /// Deletion detection looks back this far (None: keep every live GUID).
    live_window_ns: Option<i64>,
}

/// Margin kept beyond the rescan window in the live-GUID table (clock adjustments).
const LIVE_MARGIN_NS: i64 = 86_400 * 1_000_000_000;

impl Spool {
    /// Whether `dir` holds a spool (checked without creating anything: a drain-only agent
    /// treats a volume without one as holding nothing to deliver).
    pub fn exists(dir: &Path) -> bool {
        dir.join(schema::DB_FILE).is_file()
    }

    /// Open (or create) the spool in `dir` for `device`.
    pub fn open(dir: &Path, device: &str) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|source| SpoolError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let db_path = dir.join(schema::DB_FILE);
        let err = db_err(&db_path);
        let mut conn = Connection::open(&db_path).map_err(&err)?;
        schema::configure(&mut conn, 4096).map_err(&err)?;
        schema::create(&conn).map_err(&err)?;
        let stored: Option<String> = conn
            .query_row("SELECT v FROM meta WHERE k = 'device'", [], |r| r.get(0))
            .optional()
            .map_err(&err)?;
        match stored {
            Some(found) if found != device => {
                return Err(SpoolError::WrongDevice {
                    path: dir.to_path_buf(),
                    found,
                    expected: device.to_owned(),
                });
            }
            Some(_) => {}
            None => {
                conn.execute(
                    "INSERT INTO meta(k, v) VALUES ('device', ?1), ('schema', ?2)",
                    params![device, schema::SCHEMA_VERSION],
                )
                .map_err(&err)?;
            }
        }
        let (seq, hash, compacted_through, compacted_bytes): (i64, String, i64, i64) = conn
            .query_row(
                "SELECT seq, hash, compacted_through, compacted_bytes FROM chain WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(&err)?;
        let head_bytes: i64 = conn
            .query_row(
                "SELECT COALESCE(MAX(cum_bytes), ?1) FROM records",
                [compacted_bytes],
                |r| r.get(0),
            )
            .map_err(&err)?;
        let mut max_rowids = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT src_table, max_rowid FROM rowids").map_err(&err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(&err)?;
            for row in rows {
                let (table, rowid) = row.map_err(&err)?;
                max_rowids.insert(table, rowid);
            }
        }
        let blob_bytes: i64 = conn
            .query_row("SELECT COALESCE(SUM(size), 0) FROM blobs", [], |r| r.get(0))
            .map_err(&err)?;
        let keys = keys::KeyIndex::load(&conn, keys::FLUSH_EVERY).map_err(&err)?;
        let blobs = BlobStore::new(dir);
        blobs.remove_temporaries();
        drop(err);
        Ok(Spool {
            conn,
            dir: dir.to_path_buf(),
            db_path: dir.join(schema::DB_FILE),
            blobs,
            device: device.to_owned(),
            head: ChainHead { seq: seq as u64, hash },
            compacted_through: compacted_through as u64,
            max_rowids,
            blob_bytes: blob_bytes as u64,
            compacted_bytes: compacted_bytes as u64,
            head_bytes: head_bytes as u64,
            keys,
            live_window_ns: None,
        })
    }

    /// Deletion detection (the reader's rescan) only asks for GUIDs whose latest event is
    /// within `window` of now; records older than that (plus a day's margin) are not added to
    /// the live-GUID table, and compaction removes entries that fell out of it. Without this
    /// call every GUID is kept.
    pub fn set_live_window(&mut self, window: std::time::Duration) {
        self.live_window_ns = Some(i64::try_from(window.as_nanos()).unwrap_or(i64::MAX));
    }

    /// Oldest event time the live-GUID table needs now (None: all).
    fn live_floor_ns(&self) -> Option<i64> {
        self.live_window_ns.map(|w| {
            crate::apple::epoch::now_apple_ns()
                .saturating_sub(w)
                .saturating_sub(LIVE_MARGIN_NS)
        })
    }

    /// Merge the recent idempotency keys into the sorted table after this many (tests use
    /// small numbers to cross merges).
    #[cfg(test)]
    pub(crate) fn set_key_merge_every(&mut self, n: usize) {
        self.keys = keys::KeyIndex::load(&self.conn, n).expect("spool readable");
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The device whose chain this is.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The chain head.
    pub fn head(&self) -> &ChainHead {
        &self.head
    }

    /// Records up to this sequence number have been compacted away.
    pub fn compacted_through(&self) -> u64 {
        self.compacted_through
    }

    /// The attachment store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> SpoolError + '_ {
        db_err(&self.db_path)
    }

    /// Make sure every configured sink has a cursor (a new sink starts at the compaction
    /// floor) and forget the cursors of sinks no longer configured (they would hold back
    /// compaction forever). Returns the names of the forgotten sinks.
    pub fn sync_cursors(&mut self, sinks: &[String]) -> Result<Vec<String>, SpoolError> {
        let err = db_err(&self.db_path);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        let existing: Vec<String> = {
            let mut stmt = tx.prepare("SELECT sink FROM cursors").map_err(&err)?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(&err)?;
            rows.collect::<Result<_, _>>().map_err(&err)?
        };
        let wanted: HashSet<&str> = sinks.iter().map(String::as_str).collect();
        let mut forgotten = Vec::new();
        for name in existing {
            if !wanted.contains(name.as_str()) {
                tx.execute("DELETE FROM cursors WHERE sink = ?1", [&name])
                    .map_err(&err)?;
                forgotten.push(name);
            }
        }
        for name in sinks {
            tx.execute(
                "INSERT OR IGNORE INTO cursors(sink, seq) VALUES (?1, ?2)",
                params![name, self.compacted_through as i64],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        Ok(forgotten)
    }

    /// The delivery cursor of every sink.
    pub fn cursors(&self) -> Result<HashMap<String, u64>, SpoolError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT sink, seq FROM cursors")
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// Bytes of disk the spool uses: live database pages plus captured attachment files.
    pub fn used_bytes(&self) -> Result<u64, SpoolError> {
        let pages: i64 = self
            .conn
            .query_row(
                "SELECT page_count - freelist_count FROM pragma_page_count, pragma_freelist_count",
                [],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        let page_size: i64 = self
            .conn
            .query_row("SELECT page_size FROM pragma_page_size", [], |r| r.get(0))
            .map_err(self.err())?;
        Ok((pages.max(0) * page_size) as u64 + self.blob_bytes)
    }

    /// Bytes waiting for delivery: stored record bodies plus captured attachment files. This
    /// is what `spool_max_bytes` bounds (the permanent key index, tens of bytes per record
    /// ever captured, is not compactable and is not counted).
    pub fn backlog_bytes(&self) -> u64 {
        self.head_bytes.saturating_sub(self.compacted_bytes) + self.blob_bytes
    }

    /// Seal and durably commit a batch of drafts (see the module docs). Drafts already
    /// chained are dropped. On error nothing of the batch is chained.
    ///
    /// The drafts are sealed in place; after an error the same slice can be passed again.
    pub fn append(&mut self, drafts: &mut [Draft]) -> Result<AppendOutcome, SpoolError> {
        let mut outcome = AppendOutcome::default();
        let started = std::time::Instant::now();
        // 1. Validate, and capture attachment files first (durable before the commit).
        let mut dirs_to_sync: Vec<PathBuf> = Vec::new();
        let mut blob_rows: Vec<(String, u64, usize)> = Vec::new(); // (sha, size, draft index)
        let mut wanted: Vec<(String, PathBuf)> = Vec::new();
        let mut wanted_by: Vec<usize> = Vec::new();
        for (index, draft) in drafts.iter().enumerate() {
            let record = &draft.record;
            if record.schema != RECORD_SCHEMA || record.device.name != self.device {
                return Err(SpoolError::InvalidDraft {
                    key: record.idempotency_key.clone(),
                    reason: format!(
                        "schema {:?} / device {:?}, expected {RECORD_SCHEMA:?} / {:?}",
                        record.schema, record.device.name, self.device
                    ),
                });
            }
            if draft.files.is_empty() || self.contains_key(&draft.record.idempotency_key) {
                continue;
            }
            for file in &draft.files {
                wanted.push(file.clone());
                wanted_by.push(index);
            }
        }
        let mut failed: Vec<(usize, String, BlobError)> = Vec::new();
        for (((sha256, _), index), result) in wanted.iter().zip(wanted_by).zip(self.blobs.put_all(&wanted)) {
            match result {
                Ok((size, dir)) => {
                    dirs_to_sync.extend(dir);
                    blob_rows.push((sha256.clone(), size, index));
                }
                Err(BlobError::Spool { path, source }) => return Err(SpoolError::Io { path, source }),
                Err(error) => failed.push((index, sha256.clone(), error)),
            }
        }
        for (index, sha256, error) in failed {
            // Never drop the record: it says the file could not be captured, and why.
            outcome.attachment_failures += 1;
            mark_attachment_uncaptured(&mut drafts[index].record, &sha256, &error);
        }
        dirs_to_sync.sort();
        dirs_to_sync.dedup();
        for (dir, result) in dirs_to_sync.iter().zip(parallel_map(&dirs_to_sync, |d| sync_dir(d))) {
            result.map_err(|source| SpoolError::Io {
                path: dir.clone(),
                source,
            })?;
        }

        let files_done = std::time::Instant::now();
        // 2. Seal and insert in one transaction.
        let err = db_err(&self.db_path);
        let mut head = self.head.clone();
        let mut rowids: HashMap<String, i64> = HashMap::new();
        let mut seq_of_draft: Vec<Option<u64>> = vec![None; drafts.len()];
        let mut new_blob_bytes = 0u64;
        let mut cum_bytes = self.head_bytes;
        let live_floor = self.live_floor_ns();
        let mut staged = keys::Staged::default();
        {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(&err)?;
            {
                let mut insert_record = tx
                    .prepare_cached("INSERT INTO records(seq, cum_bytes, json) VALUES (?1, ?2, ?3)")
                    .map_err(&err)?;
                let mut upsert_live = tx
                    .prepare_cached(
                        "INSERT INTO live(guid, key, event_ns) VALUES (?1, ?2, ?3)
                         ON CONFLICT(guid) DO UPDATE SET key = excluded.key,
                             event_ns = max(event_ns, excluded.event_ns)",
                    )
                    .map_err(&err)?;
                let mut delete_live = tx.prepare_cached("DELETE FROM live WHERE guid = ?1").map_err(&err)?;
                for (index, draft) in drafts.iter_mut().enumerate() {
                    let record = &mut draft.record;
                    let seq = head.seq + 1;
                    if !self
                        .keys
                        .stage(&tx, &mut staged, &record.idempotency_key, seq)
                        .map_err(&err)?
                    {
                        outcome.duplicates += 1;
                        continue;
                    }
                    let json = seal_canonical(record, seq, head.next_prev_hash());
                    cum_bytes += json.len() as u64;
                    insert_record
                        .execute(params![seq as i64, cum_bytes as i64, json])
                        .map_err(&err)?;
                    if record.source.table == "message" || record.source.table == "attachment" {
                        if record.kind == RecordKind::DeletionDetected {
                            delete_live.execute([&record.source.guid]).map_err(&err)?;
                        } else if live_floor.is_none_or(|floor| record.event_time_apple_ns >= floor) {
                            upsert_live
                                .execute(params![
                                    record.source.guid,
                                    record.idempotency_key,
                                    record.event_time_apple_ns
                                ])
                                .map_err(&err)?;
                        }
                    }
                    let max = rowids.entry(record.source.table.to_string()).or_insert(i64::MIN);
                    *max = (*max).max(record.source.rowid);
                    head = ChainHead {
                        seq,
                        hash: record.hash.clone(),
                    };
                    seq_of_draft[index] = Some(seq);
                    outcome.appended.push(Appended {
                        seq,
                        kind: record.kind,
                        event_apple_ns: record.event_time_apple_ns,
                        decode_errors: record.decode_errors.len(),
                    });
                }
                let mut upsert_blob = tx
                    .prepare_cached(
                        "INSERT INTO blobs(sha256, size, last_seq) VALUES (?1, ?2, ?3)
                         ON CONFLICT(sha256) DO UPDATE SET last_seq = max(last_seq, excluded.last_seq)",
                    )
                    .map_err(&err)?;
                for (sha256, size, index) in &blob_rows {
                    let Some(seq) = seq_of_draft[*index] else { continue };
                    let existed: bool = tx
                        .query_row("SELECT 1 FROM blobs WHERE sha256 = ?1", [sha256], |_| Ok(true))
                        .optional()
                        .map_err(&err)?
                        .unwrap_or(false);
                    upsert_blob
                        .execute(params![sha256, *size as i64, seq as i64])
                        .map_err(&err)?;
                    if !existed {
                        new_blob_bytes += size;
                    }
                }
                let mut upsert_rowid = tx
                    .prepare_cached(
                        "INSERT INTO rowids(src_table, max_rowid) VALUES (?1, ?2)
                         ON CONFLICT(src_table) DO UPDATE SET max_rowid = max(max_rowid, excluded.max_rowid)",
                    )
                    .map_err(&err)?;
                for (table, rowid) in &rowids {
                    upsert_rowid.execute(params![table, rowid]).map_err(&err)?;
                }
                self.keys.flush_if_full(&tx, &mut staged).map_err(&err)?;
            }
            if head.seq != self.head.seq {
                tx.execute(
                    "UPDATE chain SET seq = ?1, hash = ?2 WHERE id = 1",
                    params![head.seq as i64, head.hash],
                )
                .map_err(&err)?;
            }
            tx.commit().map_err(&err)?;
        }
        self.keys.commit(&self.conn, staged);
        tracing::debug!(
            files = blob_rows.len(),
            files_ms = (files_done - started).as_millis() as u64,
            commit_ms = files_done.elapsed().as_millis() as u64,
            "spool append"
        );
        // 3. Only now does the in-memory state (and so the reader's view) move.
        self.head = head;
        self.blob_bytes += new_blob_bytes;
        self.head_bytes = cum_bytes;
        for (table, rowid) in rowids {
            let max = self.max_rowids.entry(table).or_insert(0);
            *max = (*max).max(rowid);
        }
        Ok(outcome)
    }

    /// Delete the bodies of records every sink has acknowledged, at most `max_records` at a
    /// time, and the attachment files no pending record names. Returns how many records went.
    pub fn compact(&mut self, max_records: u64) -> Result<u64, SpoolError> {
        let cursors = self.cursors()?;
        let Some(floor) = cursors.values().copied().min() else {
            return Ok(0);
        };
        let upto = floor.min(self.compacted_through + max_records).min(self.head.seq);
        if upto <= self.compacted_through {
            return Ok(0);
        }
        let err = db_err(&self.db_path);
        let live_floor = self.live_floor_ns();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(&err)?;
        if let Some(floor) = live_floor {
            tx.execute("DELETE FROM live WHERE event_ns < ?1", [floor])
                .map_err(&err)?;
        }
        let cum_at_floor: i64 = tx
            .query_row("SELECT cum_bytes FROM records WHERE seq = ?1", [upto as i64], |r| {
                r.get(0)
            })
            .map_err(&err)?;
        let deleted = tx
            .execute(
                "DELETE FROM records WHERE seq > ?1 AND seq <= ?2",
                params![self.compacted_through as i64, upto as i64],
            )
            .map_err(&err)?;
        let gone: Vec<(String, i64)> = {
            let mut stmt = tx
                .prepare("DELETE FROM blobs WHERE last_seq <= ?1 RETURNING sha256, size")
                .map_err(&err)?;
            let rows = stmt
                .query_map([upto as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(&err)?;
            rows.collect::<Result<_, _>>().map_err(&err)?
        };
        tx.execute(
            "UPDATE chain SET compacted_through = ?1, compacted_bytes = ?2 WHERE id = 1",
            params![upto as i64, cum_at_floor],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        self.compacted_through = upto;
        self.compacted_bytes = cum_at_floor as u64;
        for (sha256, size) in gone {
            self.blob_bytes = self.blob_bytes.saturating_sub(size as u64);
            if let Err(source) = self.blobs.remove(&sha256) {
                tracing::warn!(%sha256, error = %source, "could not remove a compacted attachment file");
            }
        }
        Ok(deleted as u64)
    }
}

/// The file named by `sha256` could not be captured: the record keeps the attachment's
/// metadata, says it is missing, and carries the reason as a decode error.
fn mark_attachment_uncaptured(record: &mut crate::api::record::ArchiveRecord, sha256: &str, error: &BlobError) {
    let mut guid = String::new();
    for attachment in &mut record.attachments {
        if attachment.sha256.as_deref() == Some(sha256) {
            attachment.sha256 = None;
            attachment.missing = true;
            guid.clone_from(&attachment.guid);
        }
    }
    record.decode_errors.push(DecodeError {
        field: format!("attachment:{guid}"),
        error: format!("file not captured ({sha256}): {error}"),
        raw_base64: String::new(),
    });
}

impl ArchiveIndex for Spool {
    fn contains_key(&self, key: &str) -> bool {
        match self.keys.contains(&self.conn, key) {
            Ok(found) => found,
            Err(error) => {
                // Answering "no" is safe: append() checks again inside its transaction.
                tracing::error!(%error, "spool key lookup failed");
                false
            }
        }
    }

    fn live_guids_since(&self, since_apple_ns: i64) -> Vec<(String, String)> {
        let result = self
            .conn
            .prepare_cached("SELECT guid, key FROM live WHERE event_ns >= ?1 ORDER BY guid")
            .and_then(|mut stmt| {
                stmt.query_map([since_apple_ns], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            });
        result.unwrap_or_else(|error| {
            // An empty answer only delays deletion detection to a later poll.
            tracing::error!(%error, "spool live-guid lookup failed");
            Vec::new()
        })
    }

    fn max_rowid(&self, table: &str) -> i64 {
        self.max_rowids.get(table).copied().unwrap_or(0).max(0)
    }
}

#[cfg(test)]
mod tests;
