//! The `message` table: one row per message, tapback, group event or other system item. Rows
//! are read tolerantly (a column of an unexpected type becomes a decode error on the record,
//! never a failed poll or a dropped row).

use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row};

use super::SourceError;

/// The `message` columns the reader uses, in this order (a macro, so both column lists below
/// are string literals).
macro_rules! row_columns {
    () => {
        "m.ROWID, m.guid, m.text, m.attributedBody, m.service, m.handle_id, \
     m.destination_caller_id, m.account, m.subject, m.date, m.date_edited, m.date_retracted, m.is_from_me, \
     m.item_type, m.group_title, m.group_action_type, m.other_handle, m.associated_message_guid, \
     m.associated_message_type, m.associated_message_emoji, m.thread_originator_guid, m.thread_originator_part, \
     m.message_summary_info, m.cache_has_attachments"
    };
}

/// The columns the reader uses, in this order (with the chat the message is in).
pub const COLUMNS: &str = concat!(
    row_columns!(),
    ", (SELECT j.chat_id FROM chat_message_join j WHERE j.message_id = m.ROWID ORDER BY j.chat_id LIMIT 1)"
);

/// [`COLUMNS`] without the chat: reading rows by ROWID range, the chats of the whole range are
/// looked up in one query (`chat_ids::fill`) instead of one subquery per row.
const ROW_COLUMNS: &str = row_columns!();

/// A column that could not be read as the type the reader expects.
#[derive(Clone, Debug, PartialEq)]
pub struct ColumnError {
    /// The column.
    pub column: &'static str,
    /// What was wrong.
    pub error: String,
    /// The raw value's bytes (text or blob), if any.
    pub raw: Vec<u8>,
}

/// One `message` row.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MessageRow {
    /// `ROWID`.
    pub rowid: i64,
    /// `guid` (None when NULL or empty: such a row becomes a decode-error record).
    pub guid: Option<String>,
    /// `text`.
    pub text: Option<String>,
    /// `attributedBody`.
    pub attributed_body: Option<Vec<u8>>,
    /// `service`.
    pub service: Option<String>,
    /// `handle_id`.
    pub handle_id: i64,
    /// `destination_caller_id`.
    pub destination_caller_id: Option<String>,
    /// `account`.
    pub account: Option<String>,
    /// `subject`.
    pub subject: Option<String>,
    /// `date` (raw).
    pub date: i64,
    /// `date_edited` (raw).
    pub date_edited: i64,
    /// `date_retracted` (raw).
    pub date_retracted: i64,
    /// `is_from_me`.
    pub is_from_me: bool,
    /// `item_type`.
    pub item_type: i64,
    /// `group_title`.
    pub group_title: Option<String>,
    /// `group_action_type`.
    pub group_action_type: i64,
    /// `other_handle`.
    pub other_handle: i64,
    /// `associated_message_guid`.
    pub associated_message_guid: Option<String>,
    /// `associated_message_type`.
    pub associated_message_type: i64,
    /// `associated_message_emoji`.
    pub associated_message_emoji: Option<String>,
    /// `thread_originator_guid`.
    pub thread_originator_guid: Option<String>,
    /// `thread_originator_part`.
    pub thread_originator_part: Option<String>,
    /// `message_summary_info`.
    pub summary_info: Option<Vec<u8>>,
    /// `cache_has_attachments`.
    pub has_attachments: bool,
    /// The first chat the message is in (`chat_message_join`), if any.
    pub chat_id: Option<i64>,
    /// Columns that could not be read.
    pub errors: Vec<ColumnError>,
}

struct Cols<'a, 'r> {
    row: &'a Row<'r>,
    errors: Vec<ColumnError>,
}

impl Cols<'_, '_> {
    fn raw(v: ValueRef<'_>) -> Vec<u8> {
        match v {
            ValueRef::Text(b) | ValueRef::Blob(b) => b.to_vec(),
            ValueRef::Integer(i) => i.to_string().into_bytes(),
            ValueRef::Real(f) => f.to_string().into_bytes(),
            ValueRef::Null => Vec::new(),
        }
    }

    fn fail(&mut self, column: &'static str, error: String, v: ValueRef<'_>) {
        self.errors.push(ColumnError {
            column,
            error,
            raw: Self::raw(v),
        });
    }

    fn int(&mut self, i: usize, column: &'static str) -> i64 {
        match self.row.get_ref(i) {
            Ok(ValueRef::Integer(n)) => n,
            Ok(ValueRef::Null) => 0,
            Ok(ValueRef::Real(f)) => f as i64,
            Ok(v @ (ValueRef::Text(_) | ValueRef::Blob(_))) => {
                let parsed = std::str::from_utf8(match v {
                    ValueRef::Text(b) | ValueRef::Blob(b) => b,
                    _ => &[],
                })
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok());
                match parsed {
                    Some(n) => n,
                    None => {
                        self.fail(column, "expected an integer".into(), v);
                        0
                    }
                }
            }
            Err(e) => {
                self.fail(column, e.to_string(), ValueRef::Null);
                0
            }
        }
    }

    /// Reads a text column into `slot`, reusing its buffer.
    fn text(&mut self, i: usize, column: &'static str, slot: &mut Option<String>) {
        match self.row.get_ref(i) {
            Ok(ValueRef::Null) => *slot = None,
            Ok(v @ (ValueRef::Text(b) | ValueRef::Blob(b))) => match std::str::from_utf8(b) {
                Ok(s) => match slot {
                    Some(buf) => {
                        buf.clear();
                        buf.push_str(s);
                    }
                    None => *slot = Some(s.to_owned()),
                },
                Err(e) => {
                    self.fail(column, format!("not UTF-8: {e}"), v);
                    *slot = Some(String::from_utf8_lossy(b).into_owned());
                }
            },
            Ok(ValueRef::Integer(n)) => *slot = Some(n.to_string()),
            Ok(ValueRef::Real(f)) => *slot = Some(f.to_string()),
            Err(e) => {
                self.fail(column, e.to_string(), ValueRef::Null);
                *slot = None;
            }
        }
    }

    /// [`Self::text`], with an empty text read as none.
    fn non_empty_text(&mut self, i: usize, column: &'static str, slot: &mut Option<String>) {
        self.text(i, column, slot);
        if slot.as_deref() == Some("") {
            *slot = None;
        }
    }

    /// Reads a blob column into `slot`, reusing its buffer.
    fn blob(&mut self, i: usize, column: &'static str, slot: &mut Option<Vec<u8>>) {
        match self.row.get_ref(i) {
            Ok(ValueRef::Null) => *slot = None,
            Ok(ValueRef::Blob(b) | ValueRef::Text(b)) => match slot {
                Some(buf) => {
                    buf.clear();
                    buf.extend_from_slice(b);
                }
                None => *slot = Some(b.to_vec()),
            },
            Ok(v) => {
                self.fail(column, "expected a blob".into(), v);
                *slot = None;
            }
            Err(e) => {
                self.fail(column, e.to_string(), ValueRef::Null);
                *slot = None;
            }
        }
    }
}

impl MessageRow {
    /// Reads a row selected with [`COLUMNS`].
    pub fn from_row(row: &Row<'_>) -> Self {
        let mut m = MessageRow::default();
        m.read(row);
        m
    }

    /// [`Self::from_row`] into this row, reusing its strings' buffers.
    pub fn read(&mut self, row: &Row<'_>) {
        let mut c = Cols {
            row,
            errors: Vec::new(),
        };
        self.rowid = c.int(0, "ROWID");
        c.non_empty_text(1, "guid", &mut self.guid);
        c.text(2, "text", &mut self.text);
        c.blob(3, "attributedBody", &mut self.attributed_body);
        c.text(4, "service", &mut self.service);
        self.handle_id = c.int(5, "handle_id");
        c.text(6, "destination_caller_id", &mut self.destination_caller_id);
        c.text(7, "account", &mut self.account);
        c.text(8, "subject", &mut self.subject);
        self.date = c.int(9, "date");
        self.date_edited = c.int(10, "date_edited");
        self.date_retracted = c.int(11, "date_retracted");
        self.is_from_me = c.int(12, "is_from_me") != 0;
        self.item_type = c.int(13, "item_type");
        c.text(14, "group_title", &mut self.group_title);
        self.group_action_type = c.int(15, "group_action_type");
        self.other_handle = c.int(16, "other_handle");
        c.text(17, "associated_message_guid", &mut self.associated_message_guid);
        self.associated_message_type = c.int(18, "associated_message_type");
        c.text(19, "associated_message_emoji", &mut self.associated_message_emoji);
        c.non_empty_text(20, "thread_originator_guid", &mut self.thread_originator_guid);
        c.text(21, "thread_originator_part", &mut self.thread_originator_part);
        c.blob(22, "message_summary_info", &mut self.summary_info);
        self.has_attachments = c.int(23, "cache_has_attachments") != 0;
        self.chat_id = match row.get_ref(24) {
            Ok(ValueRef::Integer(n)) => Some(n),
            _ => None,
        };
        self.errors = c.errors;
    }
}

fn query_error(e: rusqlite::Error) -> SourceError {
    SourceError::Query {
        table: "message",
        reason: e.to_string(),
    }
}

/// Rows with `ROWID > after`, in ROWID order, at most `limit`.
pub fn after_rowid(conn: &Connection, after: i64, limit: usize) -> Result<Vec<MessageRow>, SourceError> {
    let mut rows = Vec::new();
    let n = after_rowid_into(conn, after, limit, &mut rows)?;
    rows.truncate(n);
    Ok(rows)
}

/// The forward read. A parameter written `+?N` is the same value; written bare, SQLite reads
/// it while planning (the LIMIT, or a comparison with an index's condition) and marks the
/// statement to be prepared again whenever the parameter is bound again — which, through the
/// statement cache (it clears bindings), meant on every use.
fn after_rowid_sql() -> String {
    format!("SELECT {ROW_COLUMNS} FROM message m WHERE m.ROWID > ?1 ORDER BY m.ROWID LIMIT +?2")
}

/// [`after_rowid`] into the first rows of `rows`, reusing them (and their buffers) and adding
/// rows as needed; returns how many were read. Rows past that are left as they were.
pub fn after_rowid_into(
    conn: &Connection,
    after: i64,
    limit: usize,
    rows: &mut Vec<MessageRow>,
) -> Result<usize, SourceError> {
    let mut stmt = conn.prepare_cached(&after_rowid_sql()).map_err(query_error)?;
    let mut result = stmt
        .query(rusqlite::params![after, limit as i64])
        .map_err(query_error)?;
    let mut n = 0;
    while let Some(r) = result.next().map_err(query_error)? {
        match rows.get_mut(n) {
            Some(row) => row.read(r),
            None => rows.push(MessageRow::from_row(r)),
        }
        n += 1;
    }
    if let Some(last) = rows[..n].last().map(|r| r.rowid) {
        super::chat_ids::fill(conn, &mut rows[..n], after, last)?;
    }
    Ok(n)
}

/// Rows that may have changed in place since they were first read: dated at or after
/// `since_raw` (raw `date` units), with `date_edited` set (edits and unsends), `ROWID` in
/// `(after, upto]`, in ROWID order, at most `limit`. Edits are only possible within 15
/// minutes of sending, so the date index bounds the scan.
///
/// The unary `+` (which changes no value or comparison here) keeps SQLite from using the other
/// terms for the search: without statistics (chat.db has none) it otherwise walks the ROWID
/// range — every row of the table on a first backfill, and on every cycle after — or the
/// partial index of all edited rows, where the date index holds only the window (200,000-row
/// database, 7-day window: 41 ms → 0.2 ms per query).
pub fn edited_since(
    conn: &Connection,
    since_raw: i64,
    after: i64,
    upto: i64,
    limit: usize,
) -> Result<Vec<MessageRow>, SourceError> {
    let mut stmt = conn.prepare_cached(&edited_since_sql()).map_err(query_error)?;
    let rows = stmt
        .query_map(rusqlite::params![since_raw, after, upto, limit as i64], |r| {
            Ok(MessageRow::from_row(r))
        })
        .map_err(query_error)?;
    rows.collect::<Result<_, _>>().map_err(query_error)
}

/// See [`after_rowid_sql`] for the `+?4`.
fn edited_since_sql() -> String {
    format!(
        "SELECT {COLUMNS} FROM message m WHERE m.date >= ?1 AND +m.ROWID > ?2 AND +m.ROWID <= ?3 \
         AND +m.date_edited > 0 ORDER BY +m.ROWID LIMIT +?4"
    )
}

/// The rows with these ROWIDs (missing ones are left out).
pub fn by_rowids(conn: &Connection, rowids: &[i64]) -> Result<Vec<MessageRow>, SourceError> {
    let mut out = Vec::with_capacity(rowids.len());
    let sql = format!("SELECT {COLUMNS} FROM message m WHERE m.ROWID = ?1");
    let mut stmt = conn.prepare_cached(&sql).map_err(query_error)?;
    for id in rowids {
        let mut rows = stmt.query([id]).map_err(query_error)?;
        if let Some(r) = rows.next().map_err(query_error)? {
            out.push(MessageRow::from_row(r));
        }
    }
    Ok(out)
}

/// Which of `guids` still exist in `table` (`message` or `attachment`).
/// With `recently_deleted` (the database has `chat_recoverable_message_join`), a message that
/// moved to Recently Deleted counts as gone.
pub fn existing_guids(
    conn: &Connection,
    table: &'static str,
    guids: &[&str],
    recently_deleted: bool,
) -> Result<std::collections::HashSet<String>, SourceError> {
    let mut out = std::collections::HashSet::new();
    for chunk in guids.chunks(500) {
        let placeholders = vec!["?"; chunk.len()].join(",");
        // A message moved to Recently Deleted keeps its row but leaves its chat: deleted.
        let sql = if table == "message" && recently_deleted {
            format!(
                "SELECT guid FROM message m WHERE guid IN ({placeholders}) AND NOT (\
                 EXISTS (SELECT 1 FROM chat_recoverable_message_join r WHERE r.message_id = m.ROWID) \
                 AND NOT EXISTS (SELECT 1 FROM chat_message_join j WHERE j.message_id = m.ROWID))"
            )
        } else {
            format!("SELECT guid FROM {table} WHERE guid IN ({placeholders})")
        };
        let mut stmt = conn.prepare(&sql).map_err(|e| SourceError::Query {
            table,
            reason: e.to_string(),
        })?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(chunk.iter()), |r| r.get::<_, String>(0))
            .map_err(|e| SourceError::Query {
                table,
                reason: e.to_string(),
            })?;
        for g in rows.flatten() {
            out.insert(g);
        }
    }
    Ok(out)
}

/// See [`after_rowid_sql`] for the `+?1`.
const RECOVERABLE_CHAT_SQL: &str =
    "SELECT chat_id FROM chat_recoverable_message_join WHERE message_id = +?1 ORDER BY chat_id LIMIT 1";

/// The chat a message moved to Recently Deleted came from (`chat_recoverable_message_join`):
/// a row deleted before the reader first saw it is still archived in its conversation.
pub fn recoverable_chat(conn: &Connection, rowid: i64) -> Result<Option<i64>, SourceError> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached(RECOVERABLE_CHAT_SQL)
        .and_then(|mut s| s.query_row([rowid], |r| r.get(0)).optional())
        .map_err(|e| SourceError::Query {
            table: "chat_recoverable_message_join",
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::source::attachment::{self, Lookup};

    /// A database in Apple's schema whose join tables hold what a damaged or odd chat.db may:
    /// messages in several chats, NULL, text and real chat ids, message ids that are not
    /// integers, attachments referenced by several messages.
    fn odd_database() -> Connection {
        let conn = Connection::open_in_memory().expect("in-memory database");
        conn.execute_batch(&crate::apple::schema::create_sql()).expect("schema");
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF; \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60) \
             INSERT INTO message (ROWID, guid, date) SELECT i * 2, 'G' || i, i FROM n; \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 9) \
             INSERT INTO attachment (ROWID, guid, original_guid, filename) SELECT i, 'A' || i, 'A' || i, 'f' || i FROM n; \
             INSERT INTO chat_message_join (chat_id, message_id) SELECT 7, ROWID FROM message WHERE ROWID % 3 = 0; \
             INSERT INTO chat_message_join (chat_id, message_id) SELECT 4, ROWID FROM message WHERE ROWID % 4 = 0; \
             INSERT INTO chat_message_join (chat_id, message_id) SELECT NULL, ROWID FROM message WHERE ROWID % 10 = 0; \
             INSERT INTO chat_message_join (chat_id, message_id) SELECT 'c', ROWID FROM message WHERE ROWID % 14 = 0; \
             INSERT INTO chat_message_join (chat_id, message_id) SELECT 2.5, ROWID FROM message WHERE ROWID % 22 = 0; \
             INSERT INTO chat_message_join (chat_id, message_id) SELECT 7.5, ROWID FROM message WHERE ROWID % 8 = 0; \
             INSERT INTO chat_message_join (chat_id, message_id) SELECT -1.5, ROWID FROM message WHERE ROWID % 26 = 0; \
             INSERT INTO chat_message_join (chat_id, message_id) SELECT x'01', ROWID FROM message WHERE ROWID % 34 = 0; \
             INSERT INTO chat_message_join (chat_id, message_id) SELECT 1, ROWID + 0.5 FROM message; \
             INSERT INTO chat_message_join (chat_id, message_id) VALUES (1, 'x'), (1, NULL); \
             INSERT INTO message_attachment_join (message_id, attachment_id) \
               SELECT ROWID, 1 + ROWID % 9 FROM message WHERE ROWID % 6 = 0; \
             INSERT OR IGNORE INTO message_attachment_join (message_id, attachment_id) \
               SELECT ROWID, 1 + ROWID % 5 FROM message WHERE ROWID % 8 = 0; \
             INSERT INTO message_attachment_join (message_id, attachment_id) VALUES (3.5, 1), ('y', 2), (12, 99);",
        )
        .expect("rows");
        conn
    }

    #[test]
    fn cached_statements_are_not_prepared_again_at_each_use() {
        let conn = odd_database();
        conn.execute_batch(
            "INSERT INTO handle (ROWID, id, service) VALUES (1, '+15550100', 'iMessage'); \
             INSERT INTO chat (ROWID, guid) VALUES (10, 'C10'), (20, 'C20'), (30, 'C30'); \
             INSERT INTO chat_handle_join (chat_id, handle_id) VALUES (10, 1), (20, 1), (30, 1);",
        )
        .expect("chats");
        let mut chats = crate::agent::source::chat::Chats::default();
        for after in [0, 10, 20, 30] {
            after_rowid(&conn, after, 7).expect("rows");
            edited_since(&conn, 1, after, 100, 7).expect("rows");
            attachment::for_message(&conn, after + 12).expect("attachments");
            recoverable_chat(&conn, after).expect("chat");
            chats.clear();
            chats.conversation(&conn, after).expect("chat");
        }
        for sql in [
            after_rowid_sql(),
            edited_since_sql(),
            RECOVERABLE_CHAT_SQL.to_owned(),
            attachment::FOR_MESSAGE_SQL.to_owned(),
            crate::agent::source::chat::PARTICIPANTS_SQL.to_owned(),
        ] {
            let stmt = conn.prepare_cached(&sql).expect("cached");
            assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0, "{sql}");
        }
    }

    #[test]
    fn the_rescan_searches_the_date_index() {
        let conn = odd_database();
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {}", edited_since_sql()))
            .and_then(|mut s| s.query_map([1, 0, 100, 10], |r| r.get::<_, String>(3))?.collect())
            .expect("plan");
        assert!(
            plan.iter().any(|step| step.contains("USING INDEX message_idx_date ")),
            "{plan:?}"
        );
    }

    #[test]
    fn batched_chat_and_attachment_lookups_match_the_per_row_queries() {
        let conn = odd_database();
        let per_row = |rowid: i64| by_rowids(&conn, &[rowid]).expect("row").pop().expect("exists").chat_id;
        let mut after = 0;
        let mut seen = 0;
        loop {
            let rows = after_rowid(&conn, after, 7).expect("rows");
            let Some(last) = rows.last().map(|r| r.rowid) else {
                break;
            };
            let mut lookup = Lookup::range(after, last);
            for row in &rows {
                assert_eq!(row.chat_id, per_row(row.rowid), "chat of {}", row.rowid);
                assert_eq!(
                    lookup.for_message(&conn, row.rowid).expect("batch"),
                    attachment::for_message(&conn, row.rowid).expect("per message"),
                    "attachments of {}",
                    row.rowid
                );
                seen += 1;
            }
            after = last;
        }
        assert_eq!(seen, 60);
        assert_eq!(per_row(12), Some(4), "the smallest chat");
        assert_eq!(per_row(20), None, "a NULL chat sorts first");
        assert_eq!(per_row(16), Some(4), "an integer before a real");
        assert_eq!(per_row(52), None, "a real before an integer");
    }
}
