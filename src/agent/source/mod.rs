//! The chat.db reader and change detection: turns what Messages wrote into unsealed archive
//! records (drafts). The capture pipeline (spool, chain, delivery) consumes drafts through
//! [`RecordSource`] and answers the reader's questions about what is already archived through
//! [`ArchiveIndex`]; neither side knows the other's internals.
//!
//! Contract:
//! - [`RecordSource::poll`] returns drafts in the order they must be chained. A draft's record
//!   has `seq = 0`, empty `prev_hash` and `hash`; everything else is final. Its
//!   `idempotency_key` (`device/guid/revision`) is deterministic: reading the same database
//!   state twice yields the same keys, so the pipeline drops drafts whose key is already
//!   archived ([`ArchiveIndex::contains_key`]) — this is what makes re-reading a rescan window,
//!   or re-reading after a crash, safe.
//! - The reader may re-emit a draft it emitted before (e.g. after a restart); it must never
//!   emit two different drafts with the same key.
//! - [`RecordSource::poll`] must not block for long: it reads what is there and returns.
//! - Attachment files named in a draft are copied into the spool by the pipeline, in the same
//!   durable step as the record.

use std::path::PathBuf;

use crate::api::record::ArchiveRecord;

pub mod attachment;
pub mod bench;
pub mod build;
pub mod chat;
mod chat_ids;
pub mod config;
pub mod handle;
pub mod memory_index;
pub mod message;
pub mod reader;

pub use config::ReaderConfig;
pub use memory_index::MemoryIndex;
pub use reader::ChatDbReader;

/// An unsealed record plus the files that must be captured with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Draft {
    /// The record, with `seq`, `prev_hash` and `hash` not yet set.
    pub record: ArchiveRecord,
    /// Attachment files to capture: (lowercase hex SHA-256 of the content, path on the device).
    /// Each hash also appears in `record.attachments[*].sha256`.
    pub files: Vec<(String, PathBuf)>,
}

/// What the pipeline has already archived for this device, for change detection.
pub trait ArchiveIndex {
    /// Whether a record with this idempotency key is already in the chain.
    fn contains_key(&self, key: &str) -> bool;

    /// Message GUIDs archived with an event time at or after `since_apple_ns` (nanoseconds
    /// since 2001-01-01) that have no `deletion_detected` record yet, each with the
    /// idempotency key of the latest record archived for it. Used to notice rows that
    /// disappeared from chat.db. (`source.guid` of records from the `message` table; the
    /// reader also accepts attachment GUIDs here and checks them against `attachment`.)
    fn live_guids_since(&self, since_apple_ns: i64) -> Vec<(String, String)>;

    /// The highest `source.rowid` archived from `table` (0 when none): where reading new rows
    /// resumes after a restart.
    fn max_rowid(&self, table: &str) -> i64;
}

/// Why a poll failed. The pipeline logs it (no message content), reopens the database on the
/// next poll and retries; nothing already spooled is affected.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Messages has not created its database yet: chat.db does not exist, or has none (or not
    /// all) of Messages' tables yet — a device that has just booted. Not a fault: the pipeline
    /// waits, not ready, and polls again.
    #[error("waiting for {path}: {reason}")]
    NotYet {
        /// The database path.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// chat.db could not be opened (missing, locked, permissions).
    #[error("cannot open {path}: {reason}")]
    Open {
        /// The database path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A query failed.
    #[error("query on {table} failed: {reason}")]
    Query {
        /// The table.
        table: &'static str,
        /// Why.
        reason: String,
    },
}

/// A source of drafts (the chat.db reader in production; fixtures in unit tests).
pub trait RecordSource: Send {
    /// Read what changed since the last poll (or, on the first poll after start, what is in
    /// the backfill window and not yet archived) and return at most `limit` drafts. When more
    /// is readable the reader keeps its place and the next poll continues (so a backfill of a
    /// million messages streams through in bounded memory); an empty result means everything
    /// readable is archived.
    fn poll(&mut self, index: &dyn ArchiveIndex, limit: usize) -> Result<Vec<Draft>, SourceError>;

    /// Files whose change should wake the poll loop early (chat.db and its WAL). Notifications
    /// are only a hint: the pipeline polls on a timer regardless.
    fn watch_paths(&self) -> Vec<PathBuf>;
}
