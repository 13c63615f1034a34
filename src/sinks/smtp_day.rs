//! The durable buffer behind SMTP journaling per conversation-day.
//!
//! A conversation-day message can only be written once the day is over, but the delivery loop
//! needs an acknowledgement per batch, and after an acknowledgement the spool may drop the
//! records. So the sink keeps its own journal on the device volume (beside the spool):
//!
//! ```text
//! <state dir>/last-seq                    highest sequence number journaled (atomic replace)
//! <state dir>/open/<YYYY-MM-DD>/<conversation>.jsonl   the day's records, one stored line each
//! <state dir>/blobs/<sha256>              attachment files those records need
//! ```
//! A batch is acknowledged once its records are appended and `fsync`ed (records at or below
//! `last-seq` are skipped, so a redelivered batch is not journaled twice). When a day is closed
//! the message is built from the file alone — deterministically, duplicates removed by sequence
//! number, so its `Message-ID` is a function of the records — sent, and only then is the file
//! removed. A crash between sending and removing sends the identical message again, which the
//! archive deduplicates by `Message-ID`. A torn last line (crash during an append) is cut off
//! before the next append and ignored when reading; its record was not acknowledged and comes
//! again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::eml::EmlAttachment;
use super::files::place_durably;
use super::{AttachmentStore, SinkError, SpooledRecord};
use crate::api::record::{ArchiveRecord, is_sha256_hex};

/// One conversation on one UTC day.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConvDay {
    /// `YYYY-MM-DD` (UTC) of the records' event time.
    pub day: String,
    /// The conversation id, or `none` for records outside any conversation.
    pub conversation: String,
}

/// The UTC day of a record's event (falls back to the capture time, then to `unknown`).
pub fn record_day(r: &ArchiveRecord) -> String {
    [&r.event_time, &r.captured_at]
        .into_iter()
        .find_map(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| t.strftime("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn conversation_of(r: &ArchiveRecord) -> String {
    r.conversation.as_ref().map_or_else(|| "none".into(), |c| c.id.clone())
}

fn io(what: &str, path: &Path, e: std::io::Error) -> SinkError {
    SinkError::Transient(format!("SMTP day journal: {what} {}: {e}", path.display()))
}

/// The journal of one sink.
#[derive(Debug)]
pub struct DayJournal {
    dir: PathBuf,
}

impl DayJournal {
    /// Open (create) the journal in `dir`.
    pub fn open(dir: &Path) -> Result<Self, SinkError> {
        for sub in ["open", "blobs"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| {
                SinkError::Misconfigured(format!("cannot create the SMTP day journal {}: {e}", p.display()))
            })?;
        }
        Ok(DayJournal { dir: dir.to_owned() })
    }

    /// The highest sequence number journaled.
    pub fn last_seq(&self) -> Result<u64, SinkError> {
        let path = self.dir.join("last-seq");
        match fs::read_to_string(&path) {
            Ok(s) => s
                .trim()
                .parse()
                .map_err(|_| SinkError::Permanent(format!("{} is corrupt", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io("reading", &path, e)),
        }
    }

    fn file_of(&self, cd: &ConvDay) -> PathBuf {
        self.dir
            .join("open")
            .join(&cd.day)
            .join(format!("{}.jsonl", cd.conversation))
    }

    /// Journal the records of `batch` not journaled yet (and their attachment files), durably.
    /// Returns the conversation-days that received records.
    pub fn append(
        &self,
        batch: &[SpooledRecord],
        attachments: &dyn AttachmentStore,
    ) -> Result<BTreeSet<ConvDay>, SinkError> {
        let last = self.last_seq()?;
        let mut groups: BTreeMap<ConvDay, Vec<&SpooledRecord>> = BTreeMap::new();
        for rec in batch.iter().filter(|r| r.seq > last) {
            let parsed = rec.record()?;
            let cd = ConvDay {
                day: record_day(parsed),
                conversation: conversation_of(parsed),
            };
            groups.entry(cd).or_default().push(rec);
        }
        let Some(max) = batch.iter().map(|r| r.seq).max().filter(|&m| m > last) else {
            return Ok(BTreeSet::new());
        };
        for recs in groups.values() {
            for rec in recs {
                for sha in &rec.meta.files {
                    self.keep_blob(sha, attachments, rec.seq)?;
                }
            }
        }
        for (cd, recs) in &groups {
            let mut text = String::new();
            for r in recs {
                text.push_str(&r.json);
                text.push('\n');
            }
            append_durably(&self.file_of(cd), text.as_bytes())?;
        }
        sync_dir(&self.dir.join("blobs"))?;
        replace_durably(&self.dir.join("last-seq"), max.to_string().as_bytes())?;
        Ok(groups.into_keys().collect())
    }

    fn keep_blob(&self, sha: &str, attachments: &dyn AttachmentStore, seq: u64) -> Result<(), SinkError> {
        if !is_sha256_hex(sha) {
            return Err(SinkError::Permanent(format!(
                "record seq {seq}: attachment hash {sha:?} is not a SHA-256"
            )));
        }
        let target = self.dir.join("blobs").join(sha);
        if target.exists() {
            return Ok(());
        }
        let content = attachments.get(sha).ok_or_else(|| {
            SinkError::Permanent(format!(
                "record seq {seq} names attachment {sha} but the spool does not hold its file"
            ))
        })?;
        // The directory is fsync'd once for the batch by the caller.
        place_durably(&content, &target)
            .map(|_| ())
            .map_err(|e| io("storing attachment at", &target, e))
    }

    /// Every conversation-day with journaled records not yet sent.
    pub fn pending(&self) -> Result<Vec<ConvDay>, SinkError> {
        let open = self.dir.join("open");
        let mut out = Vec::new();
        for day in fs::read_dir(&open).map_err(|e| io("listing", &open, e))? {
            let day = day.map_err(|e| io("listing", &open, e))?;
            let Ok(day_name) = day.file_name().into_string() else {
                continue;
            };
            for f in fs::read_dir(day.path()).map_err(|e| io("listing", &day.path(), e))? {
                let f = f.map_err(|e| io("listing", &day.path(), e))?;
                if let Some(conv) = f.file_name().to_str().and_then(|n| n.strip_suffix(".jsonl")) {
                    out.push(ConvDay {
                        day: day_name.clone(),
                        conversation: conv.to_owned(),
                    });
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The records of a conversation-day in sequence order without duplicates (a torn last
    /// line is ignored), and the attachment files they name.
    pub fn load(&self, cd: &ConvDay) -> Result<(Vec<SpooledRecord>, Vec<EmlAttachment>), SinkError> {
        let path = self.file_of(cd);
        let text = fs::read_to_string(&path).map_err(|e| io("reading", &path, e))?;
        let mut by_seq = BTreeMap::new();
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let json = line.trim_end_matches('\n');
            let record = ArchiveRecord::from_json(json)
                .map_err(|e| SinkError::Permanent(format!("{} holds an unreadable line: {e}", path.display())))?;
            by_seq.insert(
                record.seq,
                SpooledRecord::from_record(record.seq, record, json.to_owned()),
            );
        }
        let records: Vec<SpooledRecord> = by_seq.into_values().collect();
        let mut files = Vec::new();
        let mut seen = BTreeSet::new();
        for r in &records {
            for att in r.record()?.attachments.iter().filter(|a| !a.missing) {
                let Some(sha) = &att.sha256 else { continue };
                if !seen.insert(sha.clone()) {
                    continue;
                }
                let blob = self.dir.join("blobs").join(sha);
                let bytes = match fs::read(&blob) {
                    Ok(bytes) => bytes,
                    // Not captured when its message was journaled: its own `attachment`
                    // record brings it (and is journaled with it).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io("reading", &blob, e)),
                };
                files.push(EmlAttachment {
                    info: att.clone(),
                    bytes,
                });
            }
        }
        Ok((records, files))
    }

    /// How many distinct records are journaled and not yet sent.
    pub fn buffered(&self) -> Result<u64, SinkError> {
        let mut n = 0;
        for cd in self.pending()? {
            let (records, ()) = self.load_records_only(&cd)?;
            n += records.iter().map(|r| r.seq).collect::<BTreeSet<_>>().len() as u64;
        }
        Ok(n)
    }

    /// Forget a sent conversation-day, and the attachment files no open day needs any more.
    pub fn remove(&self, cd: &ConvDay) -> Result<(), SinkError> {
        let path = self.file_of(cd);
        fs::remove_file(&path).map_err(|e| io("removing", &path, e))?;
        if let Some(parent) = path.parent() {
            let _ = fs::remove_dir(parent); // only succeeds once the day's folder is empty
        }
        let mut needed = BTreeSet::new();
        for other in self.pending()? {
            let (records, _) = self.load_records_only(&other)?;
            for r in records {
                needed.extend(r.meta.files);
            }
        }
        let blobs = self.dir.join("blobs");
        for entry in fs::read_dir(&blobs).map_err(|e| io("listing", &blobs, e))? {
            let entry = entry.map_err(|e| io("listing", &blobs, e))?;
            if entry.file_name().to_str().is_some_and(|n| !needed.contains(n)) {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    fn load_records_only(&self, cd: &ConvDay) -> Result<(Vec<SpooledRecord>, ()), SinkError> {
        let path = self.file_of(cd);
        let text = fs::read_to_string(&path).map_err(|e| io("reading", &path, e))?;
        let records = text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .filter_map(|l| ArchiveRecord::from_json(l.trim_end_matches('\n')).ok())
            .map(|record| SpooledRecord::from_record(record.seq, record, String::new()))
            .collect();
        Ok((records, ()))
    }
}

/// Append to a file durably, first cutting off a torn last line.
fn append_durably(path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let parent = path.parent().expect("journal files have a parent");
    let new_dir = !parent.exists();
    fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
    let existed = path.exists();
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .map_err(|e| io("opening", path, e))?;
    let len = f.metadata().map_err(|e| io("inspecting", path, e))?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1)).map_err(|e| io("seeking", path, e))?;
        f.read_exact(&mut last).map_err(|e| io("reading", path, e))?;
        if last[0] != b'\n' {
            let text = fs::read(path).map_err(|e| io("reading", path, e))?;
            let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            f.set_len(keep as u64).map_err(|e| io("truncating", path, e))?;
        }
    }
    f.write_all(bytes).map_err(|e| io("appending to", path, e))?;
    f.sync_all().map_err(|e| io("syncing", path, e))?;
    if !existed {
        sync_dir(parent)?;
    }
    if new_dir && let Some(grand) = parent.parent() {
        sync_dir(grand)?;
    }
    Ok(())
}

fn replace_durably(path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
    f.write_all(bytes).map_err(|e| io("writing", &tmp, e))?;
    f.sync_all().map_err(|e| io("syncing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io("renaming", path, e))?;
    sync_dir(path.parent().expect("has a parent"))
}

fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    super::files::sync_dir(dir).map_err(|e| io("syncing", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::record::*;

    struct NoFiles;
    impl AttachmentStore for NoFiles {
        fn get(&self, _: &str) -> Option<crate::sinks::Attachment> {
            None
        }
    }

    fn rec(seq: u64, conv: &str, time: &str) -> SpooledRecord {
        with_attachments(seq, conv, time, vec![])
    }

    fn with_attachments(seq: u64, conv: &str, time: &str, attachments: Vec<AttachmentInfo>) -> SpooledRecord {
        let mut r = ArchiveRecord {
            schema: RECORD_SCHEMA.into(),
            kind: RecordKind::Message,
            idempotency_key: format!("d/G{seq}/0"),
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
            device: DeviceInfo {
                name: "d".into(),
                agent_version: "0".into(),
                ..Default::default()
            },
            event_time: time.into(),
            event_time_apple_ns: 0,
            captured_at: time.into(),
            clock: ClockInfo::default(),
            source: SourceRef::default(),
            conversation: Some(std::sync::Arc::new(Conversation {
                id: conv.into(),
                ..Default::default()
            })),
            sender: None,
            direction: None,
            body: None,
            reply_to: None,
            edit: None,
            unsend: None,
            reaction: None,
            group_event: None,
            deletion: None,
            attachments,
            decode_errors: vec![],
        };
        r.seal(seq, GENESIS_HASH);
        let json = r.to_canonical_json();
        SpooledRecord::from_record(seq, r, json)
    }

    #[test]
    fn groups_by_conversation_and_day_skips_redelivered_records_and_survives_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let j = DayJournal::open(dir.path()).unwrap();
        let batch = vec![
            rec(1, "c1", "2024-03-09T23:59:59Z"),
            rec(2, "c2", "2024-03-09T12:00:00Z"),
            rec(3, "c1", "2024-03-10T00:00:01Z"),
        ];
        let touched = j.append(&batch[..2], &NoFiles).unwrap();
        assert_eq!(touched.len(), 2);
        // Redelivery of 1..=3: only 3 is new.
        let touched = j.append(&batch, &NoFiles).unwrap();
        assert_eq!(
            touched.into_iter().map(|c| c.day).collect::<Vec<_>>(),
            vec!["2024-03-10"]
        );
        assert_eq!(j.last_seq().unwrap(), 3);
        let pending = j.pending().unwrap();
        assert_eq!(pending.len(), 3);
        let c1_day1 = &pending[0];
        assert_eq!(
            (c1_day1.day.as_str(), c1_day1.conversation.as_str()),
            ("2024-03-09", "c1")
        );

        // A crash left half a line behind: it is ignored and cut off before the next append.
        let file = dir.path().join("open/2024-03-09/c1.jsonl");
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(b"{\"schema\":\"capturef").unwrap();
        let (records, _) = j.load(c1_day1).unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
        let late = rec(4, "c1", "2024-03-09T23:00:00Z");
        j.append(std::slice::from_ref(&late), &NoFiles).unwrap();
        let (records, _) = j.load(c1_day1).unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(records[1].json, late.json);

        assert_eq!(j.buffered().unwrap(), 4);
        j.remove(c1_day1).unwrap();
        assert_eq!(j.pending().unwrap().len(), 2);
        assert_eq!(j.buffered().unwrap(), 2);
    }

    #[test]
    fn missing_attachment_files_are_permanent_errors() {
        let dir = tempfile::tempdir().unwrap();
        let j = DayJournal::open(dir.path()).unwrap();
        let r = with_attachments(
            1,
            "c",
            "2024-03-09T10:00:00Z",
            vec![AttachmentInfo {
                guid: "a".into(),
                sha256: Some("ab".repeat(32)),
                ..Default::default()
            }],
        );
        assert!(matches!(j.append(&[r], &NoFiles), Err(SinkError::Permanent(_))));
        assert_eq!(j.last_seq().unwrap(), 0, "nothing acknowledged");
    }
}
