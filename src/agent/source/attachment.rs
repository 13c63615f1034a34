//! The `attachment` table with `message_attachment_join`: attachment metadata, where the file
//! is on the device, and its SHA-256 when it is there.

use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::Connection;
use sha2::{Digest, Sha256};

use super::SourceError;
use crate::api::agent::AttachmentPolicy;
use crate::api::record::AttachmentInfo;

/// One attachment row of a message.
#[derive(Clone, Debug, PartialEq)]
pub struct AttachmentRow {
    /// `attachment.ROWID`.
    pub rowid: i64,
    /// `attachment.guid`.
    pub guid: String,
    /// `filename` as stored (`~/Library/Messages/Attachments/…`).
    pub filename: Option<String>,
    /// `transfer_name`.
    pub transfer_name: Option<String>,
    /// `mime_type`.
    pub mime_type: Option<String>,
    /// `uti`.
    pub uti: Option<String>,
    /// `total_bytes`.
    pub total_bytes: i64,
}

/// A captured (or not) attachment.
#[derive(Clone, Debug, PartialEq)]
pub struct Captured {
    /// The row.
    pub row: AttachmentRow,
    /// Metadata for the record, with the hash when the file was captured.
    pub info: AttachmentInfo,
    /// The file on the device, when captured.
    pub path: Option<PathBuf>,
    /// True when the `MetadataOnly` policy left the file out.
    pub policy_skipped: bool,
}

/// The attachment columns, in the order [`attachment_row`] reads them.
macro_rules! attachment_columns {
    () => {
        "a.ROWID, a.guid, a.filename, a.transfer_name, a.mime_type, a.uti, a.total_bytes"
    };
}

fn attachment_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AttachmentRow> {
    Ok(AttachmentRow {
        rowid: r.get(0)?,
        guid: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
        filename: r.get(2)?,
        transfer_name: r.get(3)?,
        mime_type: r.get(4)?,
        uti: r.get(5)?,
        total_bytes: r.get::<_, Option<i64>>(6)?.unwrap_or(0),
    })
}

fn query_error(e: impl ToString) -> SourceError {
    SourceError::Query {
        table: "attachment",
        reason: e.to_string(),
    }
}

/// [`for_message`]'s query (`+?1`: see `message::after_rowid_sql`).
pub(super) const FOR_MESSAGE_SQL: &str = concat!(
    "SELECT ",
    attachment_columns!(),
    " FROM message_attachment_join j JOIN attachment a ON a.ROWID = j.attachment_id \
     WHERE j.message_id = +?1 ORDER BY a.ROWID"
);

/// The attachments of message `message_rowid`, in ROWID order.
pub fn for_message(conn: &Connection, message_rowid: i64) -> Result<Vec<AttachmentRow>, SourceError> {
    conn.prepare_cached(FOR_MESSAGE_SQL)
        .and_then(|mut s| s.query_map([message_rowid], attachment_row)?.collect())
        .map_err(query_error)
}

/// How a batch of `message` rows finds its attachments: one query per message, or — for the
/// rows of a ROWID range — one query for the whole range, run when the first message asks.
/// Either way each message gets what [`for_message`] returns, errors included.
pub struct Lookup {
    range: Option<(i64, i64)>,
    batch: Option<Batch>,
}

/// The attachment rows of a ROWID range.
struct Batch {
    /// (message ROWID, its attachment row or why it could not be read), in message then
    /// attachment ROWID order.
    rows: Vec<(i64, Result<AttachmentRow, String>)>,
    /// Messages from this ROWID on could not be read (the query failed there), and why.
    failed_from: Option<(i64, String)>,
}

impl Lookup {
    /// One query per message.
    pub fn per_message() -> Self {
        Lookup {
            range: None,
            batch: None,
        }
    }

    /// One query for the messages with ROWID in `(after, upto]`. Only those may be asked for.
    pub fn range(after: i64, upto: i64) -> Self {
        Lookup {
            range: Some((after, upto)),
            batch: None,
        }
    }

    /// The attachments of message `message_rowid`, as [`for_message`].
    pub fn for_message(&mut self, conn: &Connection, message_rowid: i64) -> Result<Vec<AttachmentRow>, SourceError> {
        let Some((after, upto)) = self.range.filter(|(a, u)| message_rowid > *a && message_rowid <= *u) else {
            return for_message(conn, message_rowid);
        };
        let batch = self.batch.get_or_insert_with(|| Batch::read(conn, after, upto));
        if let Some((from, reason)) = &batch.failed_from
            && message_rowid >= *from
        {
            return Err(query_error(reason));
        }
        let start = batch.rows.partition_point(|(m, _)| *m < message_rowid);
        batch.rows[start..]
            .iter()
            .take_while(|(m, _)| *m == message_rowid)
            .map(|(_, r)| r.clone().map_err(query_error))
            .collect()
    }
}

impl Batch {
    fn read(conn: &Connection, after: i64, upto: i64) -> Batch {
        let mut batch = Batch {
            rows: Vec::new(),
            failed_from: None,
        };
        // The message ROWID comes last, so the columns (and their errors) are for_message's.
        let stmt = conn.prepare_cached(concat!(
            "SELECT ",
            attachment_columns!(),
            ", j.message_id FROM message_attachment_join j JOIN attachment a ON a.ROWID = j.attachment_id \
             WHERE j.message_id > ?1 AND j.message_id <= ?2 ORDER BY j.message_id, a.ROWID"
        ));
        let mut stmt = match stmt {
            Ok(s) => s,
            Err(e) => {
                batch.failed_from = Some((i64::MIN, e.to_string()));
                return batch;
            }
        };
        let mut rows = match stmt.query([after, upto]) {
            Ok(r) => r,
            Err(e) => {
                batch.failed_from = Some((i64::MIN, e.to_string()));
                return batch;
            }
        };
        loop {
            match rows.next() {
                Ok(Some(r)) => {
                    // A message_id that is not an integer equals no ROWID.
                    let Ok(rusqlite::types::ValueRef::Integer(message_id)) = r.get_ref(7) else {
                        continue;
                    };
                    batch
                        .rows
                        .push((message_id, attachment_row(r).map_err(|e| e.to_string())));
                }
                Ok(None) => break,
                Err(e) => {
                    // Messages before the last one reached are complete.
                    let from = batch.rows.last().map_or(i64::MIN, |(m, _)| *m);
                    batch.failed_from = Some((from, e.to_string()));
                    break;
                }
            }
        }
        batch
    }
}

/// Where a chat.db attachment path is on this machine: `~/Library/Messages/<rest>` (or any
/// absolute `…/Library/Messages/<rest>`) becomes `<messages_dir>/<rest>`; other relative paths
/// resolve against `messages_dir`.
pub fn resolve(messages_dir: &Path, filename: &str) -> PathBuf {
    const MARK: &str = "Library/Messages/";
    if let Some(rest) = filename.strip_prefix("~/") {
        if let Some(rest) = rest.strip_prefix(MARK) {
            return messages_dir.join(rest);
        }
        return messages_dir.join(rest);
    }
    if let Some(i) = filename.find(MARK) {
        return messages_dir.join(&filename[i + MARK.len()..]);
    }
    messages_dir.join(filename)
}

/// SHA-256 (lowercase hex) and size of a file, streamed.
pub fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    // One read buffer per thread, kept: a 64 KiB allocation per file cost more than reading
    // a small file (freeing it made glibc consolidate its free lists each time).
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with_borrow_mut(|buf| -> std::io::Result<()> {
        buf.resize(64 * 1024, 0);
        loop {
            let n = file.read(buf)?;
            if n == 0 {
                return Ok(());
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
    })?;
    Ok((crate::api::record::sha256_hex(&hasher.finalize().into()), size))
}

/// Builds the record metadata for an attachment, hashing the file when the policy includes
/// files and it is there.
pub fn capture(row: AttachmentRow, messages_dir: &Path, policy: AttachmentPolicy) -> Captured {
    let mut info = AttachmentInfo {
        guid: row.guid.clone(),
        name: row.transfer_name.clone(),
        mime_type: row.mime_type.clone(),
        uti: row.uti.clone(),
        size: row.total_bytes.max(0) as u64,
        sha256: None,
        missing: true,
    };
    let mut path = None;
    if policy == AttachmentPolicy::Include
        && let Some(filename) = row.filename.as_deref().filter(|f| !f.is_empty())
    {
        let resolved = resolve(messages_dir, filename);
        if let Ok((hash, size)) = hash_file(&resolved) {
            info.sha256 = Some(hash);
            info.size = size;
            info.missing = false;
            path = Some(resolved);
        }
    }
    Captured {
        row,
        info,
        path,
        policy_skipped: policy == AttachmentPolicy::MetadataOnly,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_home_relative_and_absolute_paths() {
        let root = Path::new("/data/Messages");
        assert_eq!(
            resolve(root, "~/Library/Messages/Attachments/ab/01/at_0_X/a.jpg"),
            Path::new("/data/Messages/Attachments/ab/01/at_0_X/a.jpg")
        );
        assert_eq!(
            resolve(root, "/Users/jane/Library/Messages/Attachments/a.jpg"),
            Path::new("/data/Messages/Attachments/a.jpg")
        );
        assert_eq!(
            resolve(root, "Attachments/a.jpg"),
            Path::new("/data/Messages/Attachments/a.jpg")
        );
    }

    #[test]
    fn hashes_present_files_and_marks_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("Attachments/x")).unwrap();
        std::fs::write(dir.path().join("Attachments/x/f.txt"), b"abc").unwrap();
        let row = |f: &str| AttachmentRow {
            rowid: 1,
            guid: "G".into(),
            filename: Some(f.into()),
            transfer_name: Some("f.txt".into()),
            mime_type: Some("text/plain".into()),
            uti: None,
            total_bytes: 99,
        };
        let c = capture(
            row("~/Library/Messages/Attachments/x/f.txt"),
            dir.path(),
            AttachmentPolicy::Include,
        );
        assert_eq!(
            c.info.sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(c.info.size, 3);
        assert!(!c.info.missing);
        let c = capture(
            row("~/Library/Messages/Attachments/x/none"),
            dir.path(),
            AttachmentPolicy::Include,
        );
        assert!(c.info.missing && c.info.sha256.is_none() && c.path.is_none());
        assert_eq!(c.info.size, 99);
        let c = capture(
            row("~/Library/Messages/Attachments/x/f.txt"),
            dir.path(),
            AttachmentPolicy::MetadataOnly,
        );
        assert!(c.info.missing && c.path.is_none());
    }
}
