//! The delivery side of the spool: one connection per sink task, reading batches in sequence
//! order and moving that sink's cursor after it acknowledged.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, params};

use super::{ChainHead, SpoolError, db_err, schema};
use crate::api::record::ArchiveRecord;
use crate::sinks::SpooledRecord;

/// A reader of the spool with its own SQLite connection.
pub struct SpoolReader {
    conn: Connection,
    db_path: PathBuf,
}

impl SpoolReader {
    /// Open the spool in `dir` (which [`super::Spool::open`] created).
    pub fn open(dir: &Path) -> Result<SpoolReader, SpoolError> {
        let db_path = dir.join(schema::DB_FILE);
        let err = db_err(&db_path);
        let mut conn = Connection::open_with_flags(
            &db_path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(&err)?;
        schema::configure(&mut conn, 1024).map_err(&err)?;
        drop(err);
        Ok(SpoolReader {
            conn,
            db_path: dir.join(schema::DB_FILE),
        })
    }

    /// The chain head as committed.
    pub fn head(&self) -> Result<ChainHead, SpoolError> {
        self.conn
            .query_row("SELECT seq, hash FROM chain WHERE id = 1", [], |r| {
                Ok(ChainHead {
                    seq: r.get::<_, i64>(0)? as u64,
                    hash: r.get(1)?,
                })
            })
            .map_err(db_err(&self.db_path))
    }

    /// A sink's cursor: the last sequence number it acknowledged (None: unknown sink).
    pub fn cursor(&self, sink: &str) -> Result<Option<u64>, SpoolError> {
        use rusqlite::OptionalExtension;
        self.conn
            .query_row("SELECT seq FROM cursors WHERE sink = ?1", [sink], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
            .map(|v| v.map(|s| s as u64))
            .map_err(db_err(&self.db_path))
    }

    /// Move a sink's cursor forward to `seq` (never backwards), durably.
    pub fn ack(&self, sink: &str, seq: u64) -> Result<(), SpoolError> {
        self.conn
            .prepare_cached("UPDATE cursors SET seq = max(seq, ?2) WHERE sink = ?1")
            .and_then(|mut stmt| stmt.execute(params![sink, seq as i64]))
            .map(|_| ())
            .map_err(db_err(&self.db_path))
    }

    /// Up to `max_records` records after `after`, in order, stopping early once `max_bytes`
    /// of JSON are collected (at least one record is returned when any is there).
    pub fn read_after(
        &self,
        after: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<SpooledRecord>, SpoolError> {
        let err = db_err(&self.db_path);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, json FROM records WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .map_err(&err)?;
        let mut rows = stmt.query(params![after as i64, max_records as i64]).map_err(&err)?;
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.next().map_err(&err)? {
            let seq = row.get::<_, i64>(0).map_err(&err)? as u64;
            let json: String = row.get(1).map_err(&err)?;
            let expected = after + batch.len() as u64 + 1;
            if seq != expected {
                let compacted_through = self
                    .conn
                    .query_row("SELECT compacted_through FROM chain WHERE id = 1", [], |r| {
                        r.get::<_, i64>(0)
                    })
                    .map_err(&err)? as u64;
                return Err(SpoolError::Missing {
                    seq: expected,
                    compacted_through,
                });
            }
            let record = ArchiveRecord::from_json(&json).map_err(|e| SpoolError::InvalidDraft {
                key: format!("seq {seq}"),
                reason: format!("stored record does not parse: {e}"),
            })?;
            bytes += json.len();
            batch.push(SpooledRecord { seq, record, json });
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(batch)
    }
}
