//! The durable spool on the device volume: an append-only log of CRC-checked frames, a
//! permanent index of idempotency keys, a checkpoint, and one cursor per sink (see
//! `docs/spool.md` for the design, why it is not SQLite any more, and what a torn write does).
//!
//! ```text
//! <spool>/checkpoint               state after record N (atomic replace)
//! <spool>/log/<first_seq>.seg      append-only segments of frames (records, attachment files)
//! <spool>/keys/<first>-<last>.run  sorted runs of idempotency keys (never compacted)
//! <spool>/cursors/<hex sink name>  each sink's last acknowledged record
//! ```
//!
//! The capture thread owns the [`Spool`] (the only writer); each delivery task owns a
//! [`SpoolReader`] made by [`Spool::reader`].
//!
//! Guarantees:
//! - [`Spool::append`] seals drafts into the device's chain (`seq` from 1 without gaps,
//!   `prev_hash`, `hash`) and makes them durable with one write and one fdatasync, attachment
//!   files included (their frames precede the records naming them). Drafts whose key is
//!   already chained are dropped. The reader's position is derived from what is in the spool
//!   ([`ArchiveIndex`]), so it never runs ahead of what is durable; readers see a batch only
//!   after its fdatasync returned.
//! - A sink's cursor only moves forward, durably, after the sink acknowledged.
//! - [`Spool::compact`] deletes whole segments every sink has passed; the keys, the row-id
//!   high-water marks and the chain head stay.

mod append;
mod blobs;
mod bloom;
mod checkpoint;
mod cursors;
mod frame;
mod keyrun;
mod keys;
mod legacy;
mod open;
mod reader;
mod segment;
mod state;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use blobs::BlobError;
pub use cursors::Cursor;
pub use reader::{Batch, SpoolReader};

use crate::agent::source::ArchiveIndex;
pub use crate::api::record::is_sha256_hex;
use crate::api::record::{GENESIS_HASH, RecordKind};
pub use crate::sinks::files::sync_dir;

/// Sub-directories and files of a spool.
const LOG_DIR: &str = "log";
const KEYS_DIR: &str = "keys";
const CURSORS_DIR: &str = "cursors";

/// Segments roll over at this size (or at a sixteenth of the spool's bound, if smaller), so
/// that compaction, which deletes whole segments, can free space long before the bound.
pub const SEGMENT_MAX_BYTES: u64 = 64 << 20;
/// Smallest segment size (tiny bounds in tests).
const SEGMENT_MIN_BYTES: u64 = 16 << 10;

/// Errors of the spool. All of them leave the spool as it was before the failed call.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed (disk full, I/O error, permissions).
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The spool's files contradict each other (damage beyond a torn tail): a person must
    /// look before anything is added to this chain.
    #[error("spool {path} is damaged: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
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

/// Wrap an I/O error with the path it concerns.
pub(crate) fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
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

/// A segment as readers see it.
#[derive(Clone, Debug)]
struct SegmentRef {
    first_seq: u64,
    first_pos: u64,
    path: PathBuf,
}

/// What is committed, as published to readers after each fdatasync.
#[derive(Clone, Debug)]
struct LogView {
    head: ChainHead,
    /// Log position of the end of the committed frames.
    end_pos: u64,
    /// Oldest first; the last is the one being appended to.
    segments: Vec<SegmentRef>,
}

impl LogView {
    /// Records up to this sequence number were compacted away.
    fn compacted_through(&self) -> u64 {
        self.segments.first().map_or(self.head.seq, |s| s.first_seq - 1)
    }

    /// The file offset in segment `i` where its committed frames end.
    fn limit(&self, i: usize) -> u64 {
        let end = self.segments.get(i + 1).map_or(self.end_pos, |next| next.first_pos);
        segment::HEADER_LEN + end.saturating_sub(self.segments[i].first_pos)
    }
}

/// State shared by the writer and the readers.
struct Shared {
    dir: PathBuf,
    log_dir: PathBuf,
    device: Arc<str>,
    view: Mutex<LogView>,
    cursors: cursors::Cursors,
}

impl Shared {
    fn view(&self) -> LogView {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut LogView)) {
        f(&mut self.view.lock().unwrap_or_else(|p| p.into_inner()));
    }
}

/// The segment being appended to.
struct Active {
    file: std::fs::File,
    path: PathBuf,
    first_seq: u64,
    first_pos: u64,
    /// File length (everything in it is valid: committed, or recovered).
    len: u64,
    /// Attachment files already in this segment (a later record may name them again).
    blobs: std::collections::HashSet<[u8; 32]>,
}

impl Active {
    /// The log position of the file's end.
    fn end_pos(&self) -> u64 {
        self.first_pos + self.len - segment::HEADER_LEN
    }
}

/// The writer side of the spool.
pub struct Spool {
    shared: Arc<Shared>,
    active: Active,
    keys: keys::KeyIndex,
    derived: state::Derived,
    head: ChainHead,
    /// Log position right after the head record.
    head_pos: u64,
    /// The last checkpoint: records up to this sequence number are in it.
    checkpointed: u64,
    /// Deletion detection looks back this far (None: keep every live GUID).
    live_window_ns: Option<i64>,
    segment_max: u64,
    /// Reused buffers: the batch's frames, attachment content, sealing.
    frames: Vec<u8>,
    content: Vec<u8>,
    sealer: crate::agent::seal::Sealer,
}

/// Margin kept beyond the rescan window in the live-GUID table (clock adjustments).
const LIVE_MARGIN_NS: i64 = 86_400 * 1_000_000_000;

impl Spool {
    /// Whether `dir` holds a spool (checked without creating anything: a drain-only agent
    /// treats a volume without one as holding nothing to deliver).
    pub fn exists(dir: &Path) -> bool {
        dir.join(checkpoint::FILE).is_file() || dir.join(open::LEGACY_DB_FILE).is_file()
    }

    /// Deletion detection (the reader's rescan) only asks for GUIDs whose latest event is
    /// within `window` of now; records older than that (plus a day's margin) are not added to
    /// the live GUIDs, and those that fell out are forgotten. Without this call every GUID is
    /// kept.
    pub fn set_live_window(&mut self, window: std::time::Duration) {
        self.live_window_ns = Some(i64::try_from(window.as_nanos()).unwrap_or(i64::MAX));
        if let Some(floor) = self.live_floor_ns() {
            self.derived.prune_live(floor);
        }
    }

    /// Oldest event time the live GUIDs need now (None: all).
    fn live_floor_ns(&self) -> Option<i64> {
        self.live_window_ns.map(|w| {
            crate::apple::epoch::now_apple_ns()
                .saturating_sub(w)
                .saturating_sub(LIVE_MARGIN_NS)
        })
    }

    /// Segments roll over at `bytes` (bounded to 16 KiB–64 MiB); the agent sets a sixteenth
    /// of its spool bound, so compaction can always free space before the bound is reached.
    pub fn set_segment_max_bytes(&mut self, bytes: u64) {
        self.segment_max = bytes.clamp(SEGMENT_MIN_BYTES, SEGMENT_MAX_BYTES);
    }

    /// Roll segments after `bytes` without the lower bound (tests: one segment per batch).
    #[cfg(test)]
    pub(crate) fn set_segment_max_bytes_unclamped(&mut self, bytes: u64) {
        self.segment_max = bytes;
    }

    /// Flush recent keys into a run after this many (tests use small numbers to cross
    /// flushes and merges).
    #[cfg(test)]
    pub(crate) fn set_key_flush_every(&mut self, n: usize) {
        self.keys.set_flush_every(n);
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The device whose chain this is.
    pub fn device(&self) -> &str {
        &self.shared.device
    }

    /// The chain head.
    pub fn head(&self) -> &ChainHead {
        &self.head
    }

    /// Records up to this sequence number have been compacted away.
    pub fn compacted_through(&self) -> u64 {
        self.shared.view().compacted_through()
    }

    /// A reader for a delivery task (or for watching cursors and the head).
    pub fn reader(&self) -> SpoolReader {
        SpoolReader::new(Arc::clone(&self.shared))
    }

    /// Make sure every configured sink has a cursor (a new sink starts at the compaction
    /// floor) and forget the cursors of sinks no longer configured (they would hold back
    /// compaction forever). Returns the names of the forgotten sinks.
    pub fn sync_cursors(&mut self, sinks: &[String]) -> Result<Vec<String>, SpoolError> {
        let view = self.shared.view();
        let floor = Cursor {
            seq: view.compacted_through(),
            pos: view.segments.first().map_or(self.head_pos, |s| s.first_pos),
        };
        let dir = self.shared.dir.join(CURSORS_DIR);
        self.shared.cursors.sync(sinks, floor).map_err(io_err(&dir))
    }

    /// The delivery cursor (last acknowledged sequence number) of every sink.
    pub fn cursors(&self) -> Result<std::collections::HashMap<String, u64>, SpoolError> {
        Ok(self
            .shared
            .cursors
            .all()
            .into_iter()
            .map(|(name, c)| (name, c.seq))
            .collect())
    }

    /// Bytes of disk the spool uses: log segments, key runs and their overhead.
    pub fn used_bytes(&self) -> Result<u64, SpoolError> {
        let view = self.shared.view();
        let first = view.segments.first().map_or(self.head_pos, |s| s.first_pos);
        let log = self.active.end_pos().saturating_sub(first) + segment::HEADER_LEN * view.segments.len() as u64;
        Ok(log + self.keys.disk_bytes())
    }

    /// Bytes waiting for delivery: the log from the slowest sink's cursor to the end (records
    /// and attachment files). This is what `spool_max_bytes` bounds; the permanent key index
    /// (tens of bytes per record ever captured) is not counted.
    pub fn backlog_bytes(&self) -> u64 {
        let end = self.active.end_pos();
        match self.shared.cursors.all().values().map(|c| c.pos).min() {
            Some(pos) => end.saturating_sub(pos),
            None => end.saturating_sub(self.shared.view().segments.first().map_or(end, |s| s.first_pos)),
        }
    }
}

impl ArchiveIndex for Spool {
    fn contains_key(&self, key: &str) -> bool {
        match self.keys.find(key) {
            Ok(found) => found.is_some(),
            Err(error) => {
                // Answering "no" is safe: append() checks again before chaining.
                tracing::error!(%error, "spool key lookup failed");
                false
            }
        }
    }

    fn live_guids_since(&self, since_apple_ns: i64) -> Vec<(String, String)> {
        self.derived.live_since(since_apple_ns)
    }

    fn max_rowid(&self, table: &str) -> i64 {
        self.derived.max_rowid(table)
    }
}

#[cfg(test)]
mod tests;
