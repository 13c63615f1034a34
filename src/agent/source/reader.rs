//! [`ChatDbReader`]: the chat.db reader and its change detection.
//!
//! Each poll:
//! 1. returns drafts left over from the previous poll (a row can yield several);
//! 2. reads new rows by ROWID (resuming from [`ArchiveIndex::max_rowid`] after a restart, one
//!    row back so a row whose drafts were cut by `limit` is completed);
//! 3. once caught up, rescans the recent window: rows dated within
//!    `rescan_window_seconds` that carry `date_edited` (edits and unsends rewrite rows in
//!    place), and rows whose attachment files were missing;
//! 4. asks the index which recently archived GUIDs are still live and reports those no longer in
//!    chat.db as deletions.
//!
//! When nothing changed (`PRAGMA data_version`, file identity) since a complete cycle, a poll
//! costs two tiny queries; a full cycle still runs every [`FULL_CYCLE_EVERY`] to notice
//! attachment files arriving on disk.
//!
//! The database is opened read-only (never `immutable`, so the WAL is read), reopened after an
//! error and when the file is replaced (its inode changes).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use tracing::{debug, info, info_span, warn};

use super::attachment;
use super::build::{self, RowContext, Stamp};
use super::chat::Chats;
use super::config::ReaderConfig;
use super::handle::Handles;
use super::message::{self, MessageRow};
use super::{ArchiveIndex, Draft, RecordSource, SourceError};
use crate::api::agent::AttachmentPolicy;
use crate::apple::{codes, epoch};

/// How often a full cycle runs even when the database reports no change.
pub const FULL_CYCLE_EVERY: Duration = Duration::from_secs(30);
/// Rows read per query.
const BATCH: usize = 512;
/// Edits are possible up to 15 minutes after sending: the rescan reaches that far past the window.
const EDIT_GRACE_NS: i64 = 15 * 60 * epoch::NANOS_PER_SECOND;

/// Where the reader is within a cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading rows by ROWID.
    Forward,
    /// Re-reading edited rows of the window, after this ROWID.
    Rescan { after: i64 },
    /// Checking archived GUIDs against the database.
    Deletions,
    /// The cycle is complete.
    Idle,
}

/// The chat.db reader.
pub struct ChatDbReader {
    config: ReaderConfig,
    conn: Option<Connection>,
    file_id: Option<(u64, u64)>,
    data_version: Option<i64>,
    handles: Handles,
    chats: Chats,
    pending: VecDeque<Draft>,
    /// Rows of the last forward batch, kept for their buffers.
    rows: Vec<MessageRow>,
    /// Last ROWID read forward (None before the first poll).
    cursor: Option<i64>,
    /// Rows at or below this ROWID existed when the reader started: the backfill window
    /// applies to them.
    backfill_upto: i64,
    phase: Phase,
    /// Upper ROWID bound of the current rescan.
    rescan_upto: i64,
    /// Messages whose attachment files were missing (checked again each full cycle while in
    /// the window).
    missing_attachments: BTreeSet<i64>,
    /// Row → `date_edited` of edited rows whose drafts were all archived: skipped on rescan
    /// until `date_edited` changes. Pruned to the window.
    settled_edits: HashMap<i64, (i64, i64)>,
    last_full_cycle: Option<Instant>,
    /// Raw `date` units of this database: seconds (old) or nanoseconds.
    dates_in_seconds: Option<bool>,
    /// Whether the database has Recently Deleted (`chat_recoverable_message_join`).
    has_recently_deleted: bool,
}

/// What the tables of a database say about it.
#[derive(Debug, PartialEq, Eq)]
enum SchemaState {
    /// Messages' `message`, `chat` and `handle` tables are there.
    Messages,
    /// No tables yet, or only some of Messages' own: Messages is creating it.
    Creating(&'static str),
    /// Tables that Messages does not create, without Messages' core tables: another database.
    Foreign,
}

fn schema_state(tables: &[String]) -> SchemaState {
    let has = |name: &str| tables.iter().any(|t| t == name);
    if has("message") && has("chat") && has("handle") {
        return SchemaState::Messages;
    }
    if tables.is_empty() {
        return SchemaState::Creating("chat.db has no tables yet");
    }
    let apple = apple_table_names();
    if tables.iter().all(|t| apple.contains(&t.as_str())) {
        SchemaState::Creating("chat.db has only some of Messages' tables yet")
    } else {
        SchemaState::Foreign
    }
}

/// The names of the tables Messages creates (from `apple::schema`).
fn apple_table_names() -> Vec<&'static str> {
    crate::apple::schema::TABLES
        .iter()
        .filter_map(|sql| sql.strip_prefix("CREATE TABLE "))
        .filter_map(|rest| rest.split([' ', '(']).next())
        .collect()
}

fn file_id(path: &std::path::Path) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path)
            .ok()
            .and_then(|m| m.modified().ok())
            .map(|t| (0, t.elapsed().map(|d| d.as_secs()).unwrap_or(0)))
    }
}

/// Whether an `attributedBody` shows an attachment: holds U+FFFC (bytes EF BF BC) anywhere.
fn shows_object_replacement(blob: &[u8]) -> bool {
    let mut rest = blob;
    while let Some(i) = rest.iter().position(|&b| b == 0xEF) {
        rest = &rest[i + 1..];
        if rest.starts_with(&[0xBF, 0xBC]) {
            return true;
        }
    }
    false
}

fn query_error(e: rusqlite::Error) -> SourceError {
    SourceError::Query {
        table: "message",
        reason: e.to_string(),
    }
}

impl ChatDbReader {
    /// Opens chat.db read-only (through its WAL) and checks that it is a Messages database.
    pub fn open(config: &ReaderConfig) -> Result<Self, SourceError> {
        let mut reader = Self::new(config);
        reader.connect()?;
        Ok(reader)
    }

    /// A reader that opens chat.db at its first poll, and at every poll until the database is
    /// there: while Messages has not created it (or its tables) yet, polls fail with
    /// [`SourceError::NotYet`]; a file that is something else fails with
    /// [`SourceError::Open`] — and both are retried, so the agent never exits over them.
    pub fn new(config: &ReaderConfig) -> Self {
        ChatDbReader {
            config: config.clone(),
            conn: None,
            file_id: None,
            data_version: None,
            handles: Handles::default(),
            chats: Chats::default(),
            pending: VecDeque::new(),
            rows: Vec::new(),
            cursor: None,
            backfill_upto: 0,
            phase: Phase::Forward,
            rescan_upto: 0,
            missing_attachments: BTreeSet::new(),
            settled_edits: HashMap::new(),
            last_full_cycle: None,
            dates_in_seconds: None,
            has_recently_deleted: false,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ReaderConfig {
        &self.config
    }

    fn open_error(&self, reason: impl ToString) -> SourceError {
        SourceError::Open {
            path: self.config.chat_db.clone(),
            reason: reason.to_string(),
        }
    }

    fn connect(&mut self) -> Result<(), SourceError> {
        let path = &self.config.chat_db;
        if !path.exists() {
            return Err(SourceError::NotYet {
                path: path.clone(),
                reason: "chat.db does not exist yet".into(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )
        .map_err(|e| self.open_error(e))?;
        conn.busy_timeout(Duration::from_millis(2000))
            .map_err(|e| self.open_error(e))?;
        conn.set_prepared_statement_cache_capacity(32);
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| self.open_error(e))?;
        match schema_state(&tables) {
            SchemaState::Messages => {}
            SchemaState::Creating(reason) => {
                return Err(SourceError::NotYet {
                    path: path.clone(),
                    reason: reason.into(),
                });
            }
            SchemaState::Foreign => {
                return Err(self.open_error("not a Messages database (no message, chat and handle tables)"));
            }
        }
        self.has_recently_deleted = conn
            .query_row(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'chat_recoverable_message_join'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.open_error(e))?;
        self.file_id = file_id(path);
        self.data_version = None;
        self.handles.clear();
        self.chats.clear();
        self.conn = Some(conn);
        info!(path = %path.display(), "opened chat.db read-only");
        Ok(())
    }

    /// Reopens when the file was replaced, or after an error dropped the connection.
    fn ensure_connected(&mut self) -> Result<(), SourceError> {
        let current = file_id(&self.config.chat_db);
        if self.conn.is_some() && current.is_some() && current != self.file_id {
            info!("chat.db was replaced; reopening");
            self.conn = None;
            // A replaced database may hold other rows under the same ROWIDs: re-read it all
            // (what is archived is recognised by key) and re-check the window.
            self.cursor = Some(0);
            self.phase = Phase::Forward;
            self.dates_in_seconds = None;
            self.settled_edits.clear();
        }
        if self.conn.is_none() {
            self.connect()?;
        }
        Ok(())
    }

    fn conn(&self) -> &Connection {
        self.conn.as_ref().expect("connected before use")
    }

    fn query_failed(&mut self, e: SourceError) -> SourceError {
        warn!(error = %e, "chat.db query failed; will reopen");
        self.conn = None;
        e
    }

    fn services_allow(&self, row: &MessageRow) -> bool {
        match row.service.as_deref() {
            None | Some("") => true,
            Some(s) => {
                let s = codes::canonical_service_str(s);
                self.config
                    .capture
                    .services
                    .iter()
                    .any(|allowed| codes::canonical_service_str(allowed) == s)
            }
        }
    }

    fn raw_date(&self, apple_ns: i64) -> i64 {
        if self.dates_in_seconds == Some(true) {
            apple_ns / epoch::NANOS_PER_SECOND
        } else {
            apple_ns
        }
    }

    fn detect_date_unit(&mut self) -> Result<(), SourceError> {
        if self.dates_in_seconds.is_some() {
            return Ok(());
        }
        let max: Option<i64> = self
            .conn()
            .query_row(
                "SELECT MAX(date) FROM message WHERE typeof(date) = 'integer'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| SourceError::Query {
                table: "message",
                reason: e.to_string(),
            })?;
        if let Some(max) = max {
            self.dates_in_seconds = Some(max != 0 && epoch::normalize_to_ns(max) != max);
        }
        Ok(())
    }

    fn stamp(&self) -> Stamp<'_> {
        let now = epoch::now_apple_ns();
        Stamp {
            device: &self.config.device,
            captured_at: epoch::rfc3339_from_apple_ns(now),
            now_apple_ns: now,
        }
    }

    /// Builds the drafts of `rows` not yet archived, queueing them.
    fn process_rows(
        &mut self,
        rows: &[MessageRow],
        index: &dyn ArchiveIndex,
        rescan: bool,
        attachments: &mut attachment::Lookup,
    ) -> Result<(), SourceError> {
        let backfill_cutoff = self
            .config
            .capture
            .backfill_days
            .map(|d| epoch::now_apple_ns() - d as i64 * 86_400 * epoch::NANOS_PER_SECOND);
        let policy = self.config.capture.attachments;
        let messages_dir = self.config.messages_dir.clone();
        let now = epoch::now_apple_ns();
        let stamp_device = self.config.device.clone();
        let stamp = Stamp {
            device: &stamp_device,
            captured_at: epoch::rfc3339_from_apple_ns(now),
            now_apple_ns: now,
        };
        let mut key = String::new();
        for row in rows {
            if !self.services_allow(row) {
                continue;
            }
            if let Some(cutoff) = backfill_cutoff
                && row.rowid <= self.backfill_upto
                && row.date != 0
                && epoch::normalize_to_ns(row.date) < cutoff
            {
                continue;
            }
            let guid = row.guid.as_deref().unwrap_or("");
            // Fast path: an ordinary, unedited row whose record is archived needs no work.
            if !rescan && row.date_edited == 0 && !row.has_attachments {
                // The key idempotency_key() builds, in a reused buffer.
                key.clear();
                for piece in [stamp.device.name.as_str(), "/", guid, "/", build::REV_ORIGINAL] {
                    key.push_str(piece);
                }
                if index.contains_key(&key) {
                    continue;
                }
            }
            let conn = self.conn.as_ref().expect("connected");
            let chat_id = match row.chat_id {
                None if self.has_recently_deleted => message::recoverable_chat(conn, row.rowid)?,
                id => id,
            };
            let conversation = match chat_id {
                Some(id) => self.chats.conversation(conn, id)?,
                None => None,
            };
            let handle = self.handles.id(conn, row.handle_id)?;
            let other_handle = self.handles.id(conn, row.other_handle)?;
            // Messages sets cache_has_attachments; a body showing an attachment (U+FFFC) is
            // checked too, in case a row lacks the flag.
            let shows_attachment = row.attributed_body.as_deref().is_some_and(shows_object_replacement);
            let attachments = if row.has_attachments || shows_attachment {
                attachments
                    .for_message(conn, row.rowid)?
                    .into_iter()
                    .map(|a| attachment::capture(a, &messages_dir, policy))
                    .collect::<Vec<_>>()
            } else {
                Vec::new()
            };
            let any_missing = policy == AttachmentPolicy::Include
                && attachments.iter().any(|a| a.info.missing && a.row.filename.is_some());
            if any_missing {
                self.missing_attachments.insert(row.rowid);
            } else if self.missing_attachments.last().is_some_and(|&m| m >= row.rowid) {
                self.missing_attachments.remove(&row.rowid);
            }
            // The row's drafts are queued, then those already archived (or, on a rescan, already
            // queued before them) are taken out again, in order.
            let start = self.pending.len();
            build::row_drafts_into(
                &stamp,
                row,
                RowContext {
                    conversation,
                    handle,
                    other_handle,
                    attachments,
                },
                &mut self.pending,
            );
            let mut kept = start;
            for i in start..self.pending.len() {
                let key = &self.pending[i].record.idempotency_key;
                // A rescan in the same cycle as the forward pass sees rows whose drafts are
                // still queued here (not yet handed out, so not yet in the index).
                let skip = index.contains_key(key)
                    || (rescan && self.pending.range(..kept).any(|d| d.record.idempotency_key == *key));
                if !skip {
                    if kept != i {
                        self.pending.swap(kept, i);
                    }
                    kept += 1;
                }
            }
            self.pending.truncate(kept);
            let all_archived = kept == start;
            if row.date_edited != 0 && all_archived {
                self.settled_edits.insert(row.rowid, (row.date_edited, row.date));
            }
        }
        Ok(())
    }

    /// Whether a draft with this key is queued but not yet handed out.
    fn queued(&self, key: &str) -> bool {
        self.pending.iter().any(|d| d.record.idempotency_key == key)
    }

    fn forward(&mut self, index: &dyn ArchiveIndex, limit: usize) -> Result<bool, SourceError> {
        let cursor = match self.cursor {
            Some(c) => c,
            None => {
                let archived = index.max_rowid("message");
                let max: i64 = self
                    .conn()
                    .query_row("SELECT COALESCE(MAX(ROWID), 0) FROM message", [], |r| r.get(0))
                    .map_err(|e| SourceError::Query {
                        table: "message",
                        reason: e.to_string(),
                    })?;
                self.backfill_upto = max;
                // One row back: its drafts may have been cut by `limit` before a restart.
                let start = (archived - 1).max(0);
                info!(resume_after_rowid = start, max_rowid = max, "reading chat.db");
                self.cursor = Some(start);
                start
            }
        };
        let mut cursor = cursor;
        while self.pending.len() < limit {
            // One read transaction per batch: its rows, chats and attachments are read from one
            // snapshot, and SQLite takes the WAL read lock once instead of once per query. (On
            // an error the poll drops the connection, and the transaction with it.)
            self.conn().execute_batch("BEGIN").map_err(query_error)?;
            // The rows (and their buffers) are reused from batch to batch.
            let mut rows = std::mem::take(&mut self.rows);
            let n = message::after_rowid_into(self.conn(), cursor, BATCH.min(limit.max(16)), &mut rows)?;
            let Some(last) = rows[..n].last().map(|r| r.rowid) else {
                self.conn().execute_batch("COMMIT").map_err(query_error)?;
                self.rows = rows;
                self.cursor = Some(cursor);
                return Ok(true);
            };
            self.process_rows(&rows[..n], index, false, &mut attachment::Lookup::range(cursor, last))?;
            self.rows = rows;
            self.conn().execute_batch("COMMIT").map_err(query_error)?;
            cursor = last;
            self.cursor = Some(cursor);
        }
        Ok(false)
    }

    fn window_start_ns(&self) -> i64 {
        epoch::now_apple_ns() - self.config.capture.rescan_window_seconds as i64 * epoch::NANOS_PER_SECOND
    }

    fn rescan(&mut self, index: &dyn ArchiveIndex, limit: usize, mut after: i64) -> Result<bool, SourceError> {
        let since_ns = self.window_start_ns() - EDIT_GRACE_NS;
        let since_raw = self.raw_date(since_ns);
        let since_raw_window = self.raw_date(self.window_start_ns());
        self.settled_edits.retain(|_, (_, date)| *date >= since_raw);
        while self.pending.len() < limit {
            let rows = message::edited_since(self.conn(), since_raw, after, self.rescan_upto, BATCH)?;
            let Some(last) = rows.last().map(|r| r.rowid) else {
                break;
            };
            let changed: Vec<MessageRow> = rows
                .into_iter()
                .filter(|r| self.settled_edits.get(&r.rowid).map(|(e, _)| *e) != Some(r.date_edited))
                .collect();
            self.process_rows(&changed, index, true, &mut attachment::Lookup::per_message())?;
            after = last;
            self.phase = Phase::Rescan { after };
        }
        if self.pending.len() >= limit {
            return Ok(false);
        }
        // Attachments that were missing: their files may have arrived.
        let missing: Vec<i64> = std::mem::take(&mut self.missing_attachments).into_iter().collect();
        if !missing.is_empty() {
            let rows = message::by_rowids(self.conn(), &missing)?;
            let in_window: Vec<MessageRow> = rows.into_iter().filter(|r| r.date >= since_raw_window).collect();
            self.process_rows(&in_window, index, true, &mut attachment::Lookup::per_message())?;
        }
        Ok(true)
    }

    fn deletions(&mut self, index: &dyn ArchiveIndex) -> Result<(), SourceError> {
        let live = index.live_guids_since(self.window_start_ns());
        if live.is_empty() {
            return Ok(());
        }
        let guids: Vec<&str> = live.iter().map(|(g, _)| g.as_str()).collect();
        let mut present = message::existing_guids(self.conn(), "message", &guids, self.has_recently_deleted)?;
        let absent: Vec<&str> = guids.iter().copied().filter(|g| !present.contains(*g)).collect();
        if !absent.is_empty() {
            present.extend(message::existing_guids(self.conn(), "attachment", &absent, false)?);
        }
        let stamp = self.stamp();
        let mut drafts = Vec::new();
        for (guid, key) in &live {
            if !present.contains(guid) {
                let d = stamp.deletion(guid, key);
                if !index.contains_key(&d.record.idempotency_key) && !self.queued(&d.record.idempotency_key) {
                    drafts.push(d);
                }
            }
        }
        if !drafts.is_empty() {
            info!(count = drafts.len(), "rows deleted from chat.db");
        }
        self.pending.extend(drafts);
        Ok(())
    }

    fn cycle(&mut self, index: &dyn ArchiveIndex, limit: usize) -> Result<(), SourceError> {
        self.ensure_connected()?;
        let version: i64 = self
            .conn()
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| SourceError::Query {
                table: "message",
                reason: e.to_string(),
            })?;
        let changed = self.data_version != Some(version);
        let due = self.last_full_cycle.is_none_or(|t| t.elapsed() >= FULL_CYCLE_EVERY);
        if self.phase == Phase::Idle {
            if !changed && !due {
                return Ok(());
            }
            self.phase = Phase::Forward;
        }
        if changed {
            self.handles.clear();
            self.chats.clear();
        }
        self.data_version = Some(version);
        self.detect_date_unit()?;
        loop {
            match self.phase {
                Phase::Forward => {
                    if !self.forward(index, limit)? {
                        return Ok(());
                    }
                    self.rescan_upto = self.cursor.unwrap_or(0);
                    self.phase = Phase::Rescan { after: 0 };
                }
                Phase::Rescan { after } => {
                    if !self.rescan(index, limit, after)? {
                        return Ok(());
                    }
                    self.phase = Phase::Deletions;
                }
                Phase::Deletions => {
                    self.deletions(index)?;
                    self.phase = Phase::Idle;
                    self.last_full_cycle = Some(Instant::now());
                    return Ok(());
                }
                Phase::Idle => return Ok(()),
            }
        }
    }
}

impl RecordSource for ChatDbReader {
    fn poll(&mut self, index: &dyn ArchiveIndex, limit: usize) -> Result<Vec<Draft>, SourceError> {
        let limit = limit.max(1);
        let span = info_span!("chatdb_poll", limit);
        let _enter = span.enter();
        if self.pending.len() < limit
            && let Err(e) = self.cycle(index, limit)
        {
            let e = match e {
                SourceError::Query { .. } => self.query_failed(e),
                other => {
                    self.conn = None;
                    other
                }
            };
            if self.pending.is_empty() {
                return Err(e);
            }
        }
        let n = limit.min(self.pending.len());
        let out: Vec<Draft> = self.pending.drain(..n).collect();
        debug!(drafts = out.len(), pending = self.pending.len(), "poll");
        Ok(out)
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        let db = &self.config.chat_db;
        let mut wal = db.clone().into_os_string();
        wal.push("-wal");
        vec![db.clone(), PathBuf::from(wal)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn object_replacement_is_found_anywhere() {
        let fffc = "\u{FFFC}".as_bytes();
        for blob in [&b"x\xEF\xBF\xBC"[..], fffc, b"\xEF\xEF\xBF\xBCy", b"ab\xEF\xBF\xBC\xEF"] {
            assert!(shows_object_replacement(blob), "{blob:?}");
        }
        for blob in [
            &b""[..],
            b"\xEF",
            b"\xEF\xBF",
            b"\xEF\xBF\xBD",
            b"\xBF\xBC",
            b"\xEF\xBC\xBF",
        ] {
            assert!(!shows_object_replacement(blob), "{blob:?}");
        }
    }

    #[test]
    fn a_database_being_created_is_waited_for_and_another_one_is_foreign() {
        assert_eq!(
            schema_state(&names(&["message", "chat", "handle", "x"])),
            SchemaState::Messages
        );
        assert!(matches!(schema_state(&[]), SchemaState::Creating(_)));
        assert!(matches!(
            schema_state(&names(&["_SqliteDatabaseProperties", "handle"])),
            SchemaState::Creating(_)
        ));
        assert_eq!(schema_state(&names(&["t"])), SchemaState::Foreign);
        assert_eq!(schema_state(&names(&["handle", "orders"])), SchemaState::Foreign);
        let apple = apple_table_names();
        for table in [
            "message",
            "chat",
            "handle",
            "attachment",
            "chat_message_join",
            "sqlite_sequence",
        ] {
            assert!(apple.contains(&table), "{table} in {apple:?}");
        }
    }
}
