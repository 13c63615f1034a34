//! The delivery side of the spool: each sink's task reads batches in sequence order from the
//! committed log (never past the last fdatasync) and moves its own cursor after the sink
//! acknowledged. A reader remembers where it stopped, so consecutive batches read the log
//! sequentially; any other position is found by scanning the segment that holds it.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

use super::cursors::Cursor;
use super::frame;
use super::segment::{self, End, Scanned, Scanner};
use super::{ChainHead, LogView, Shared, SpoolError, io_err};
use crate::sinks::{Attachment, AttachmentStore, RecordMeta, SpooledRecord, StoredJson};

/// Records read for one delivery, with the attachment files they name.
#[derive(Default)]
pub struct Batch {
    /// The records, in sequence order.
    pub records: Vec<SpooledRecord>,
    files: HashMap<String, Attachment>,
}

impl Batch {
    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.records.len()
    }
}

impl AttachmentStore for Batch {
    fn get(&self, sha256: &str) -> Option<Attachment> {
        self.files.get(sha256).cloned()
    }
}

/// Where a reader stopped: the frame after record `seq`.
struct Position {
    seq: u64,
    segment_first_seq: u64,
    file: Arc<File>,
    path: Arc<std::path::Path>,
    offset: u64,
    /// Attachment files in this segment before `offset`: (content offset, length).
    blobs: HashMap<[u8; 32], (u64, u64)>,
}

/// Room beyond a batch's byte limit for the record that crosses it (larger ones grow the
/// buffer).
const BATCH_TEXT_SLACK: usize = 64 << 10;

/// A reader of the spool (one per delivery task).
pub struct SpoolReader {
    shared: Arc<Shared>,
    at: Option<Position>,
    /// (seq, log position after it) of the records of the last batch, for acknowledgements.
    read_ends: Vec<(u64, u64)>,
}

impl SpoolReader {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        SpoolReader {
            shared,
            at: None,
            read_ends: Vec::new(),
        }
    }

    /// The chain head as committed.
    pub fn head(&self) -> Result<ChainHead, SpoolError> {
        Ok(self.shared.view().head)
    }

    /// A sink's cursor: the last sequence number it acknowledged (None: unknown sink).
    pub fn cursor(&self, sink: &str) -> Result<Option<u64>, SpoolError> {
        Ok(self.shared.cursors.get(sink).map(|c| c.seq))
    }

    /// Move a sink's cursor forward to `seq` (never backwards), durably.
    pub fn ack(&mut self, sink: &str, seq: u64) -> Result<(), SpoolError> {
        let pos = match self.read_ends.binary_search_by_key(&seq, |(s, _)| *s) {
            Ok(i) => self.read_ends[i].1,
            Err(_) => self.position_after(seq)?,
        };
        let dir = self.shared.dir.join(super::CURSORS_DIR);
        self.shared
            .cursors
            .advance(sink, Cursor { seq, pos })
            .map_err(io_err(&dir))
    }

    /// The log position right after record `seq` (found by reading).
    fn position_after(&mut self, seq: u64) -> Result<u64, SpoolError> {
        let view = self.shared.view();
        if seq <= view.compacted_through() {
            return Ok(view.segments.first().map_or(view.end_pos, |s| s.first_pos));
        }
        let saved = (self.at.take(), std::mem::take(&mut self.read_ends));
        let found = self
            .read_after(seq - 1, 1, 1)
            .map(|_| self.read_ends.first().map(|(_, p)| *p));
        (self.at, self.read_ends) = saved;
        found?.ok_or(SpoolError::Missing {
            seq,
            compacted_through: view.compacted_through(),
        })
    }

    /// Up to `max_records` records after `after`, in order, stopping early once `max_bytes`
    /// of JSON are collected (at least one record is returned when any is there).
    pub fn read_after(&mut self, after: u64, max_records: usize, max_bytes: usize) -> Result<Batch, SpoolError> {
        let view = self.shared.view();
        let mut batch = Batch::default();
        self.read_ends.clear();
        if after >= view.head.seq || max_records == 0 {
            return Ok(batch);
        }
        let compacted_through = view.compacted_through();
        if after < compacted_through {
            return Err(SpoolError::Missing {
                seq: after + 1,
                compacted_through,
            });
        }
        let mut at = match self.at.take() {
            Some(at) if at.seq == after && view.segments.iter().any(|s| s.first_seq == at.segment_first_seq) => at,
            Some(at) if at.seq == after => {
                // Its segment was compacted after being read to its end: continue in the next.
                match self.next_segment(&view, at.segment_first_seq)? {
                    Some(next) => next,
                    None => return Ok(batch),
                }
            }
            _ => self.seek(&view, after)?,
        };
        // The batch's lines, back to back in one buffer the records share. Sized once: for a
        // full batch (which stops at the first record past `max_bytes`), or for what the log
        // holds past the position when that is less (live capture). Grown by doubling, a
        // 2 MiB batch held a 4 MiB buffer and, while growing, two copies of it.
        let unread = view
            .segments
            .iter()
            .find(|s| s.first_seq == at.segment_first_seq)
            .map_or(0, |s| {
                let pos = (s.first_pos + at.offset).saturating_sub(segment::HEADER_LEN);
                view.end_pos.saturating_sub(pos)
            });
        let full = max_bytes.saturating_add(BATCH_TEXT_SLACK);
        let mut text = String::with_capacity(usize::try_from(unread).map_or(full, |u| u.min(full)));
        let mut read: Vec<(u64, std::ops::Range<usize>, RecordMeta)> = Vec::new();
        'segments: loop {
            let index = view
                .segments
                .iter()
                .position(|s| s.first_seq == at.segment_first_seq)
                .ok_or(SpoolError::Missing {
                    seq: after + 1,
                    compacted_through,
                })?;
            let path = &view.segments[index].path;
            let first_pos = view.segments[index].first_pos;
            let limit = view.limit(index);
            let file = Arc::clone(&at.file);
            let mut scanner = Scanner::new(&file, at.offset, limit);
            while let Some(item) = scanner.next_frame().map_err(io_err(path))? {
                let next_offset = item.offset + item.len;
                match item.frame {
                    Scanned::Blob {
                        sha256,
                        content_offset,
                        len,
                    } => {
                        at.blobs.insert(sha256, (content_offset, len));
                    }
                    Scanned::Record(r) if r.seq <= at.seq => {}
                    Scanned::Record(r) => {
                        if r.seq != at.seq + 1 {
                            return Err(SpoolError::Corrupt {
                                path: path.clone(),
                                reason: format!("record {} follows record {}", r.seq, at.seq),
                            });
                        }
                        let mut files = Vec::with_capacity(r.files.len());
                        for sha in &r.files {
                            let hex = frame::to_hex(sha);
                            match at.blobs.get(sha) {
                                Some((offset, len)) => {
                                    batch.files.entry(hex.clone()).or_insert_with(|| {
                                        Attachment::in_file(Arc::clone(&file), Arc::clone(&at.path), *offset, *len)
                                    });
                                    files.push(hex);
                                }
                                None => {
                                    tracing::error!(seq = r.seq, sha256 = %hex, "a record names an attachment file its segment does not hold")
                                }
                            }
                        }
                        let start = text.len();
                        text.push_str(r.json);
                        read.push((
                            r.seq,
                            start..text.len(),
                            RecordMeta {
                                device: Arc::clone(&self.shared.device),
                                hash: frame::to_hex(&r.hash),
                                prev_hash: frame::to_hex(&r.prev_hash),
                                kind: r.kind,
                                event_time_apple_ns: r.event_ns,
                                files,
                            },
                        ));
                        text.push('\n');
                        at.seq = r.seq;
                        self.read_ends
                            .push((r.seq, first_pos + next_offset - segment::HEADER_LEN));
                    }
                }
                at.offset = next_offset;
                if read.len() >= max_records || text.len() >= max_bytes || at.seq >= view.head.seq {
                    break 'segments;
                }
            }
            if let Some(End::Torn(offset)) = scanner.end() {
                return Err(SpoolError::Corrupt {
                    path: path.clone(),
                    reason: format!("damaged frame at byte {offset} of committed log"),
                });
            }
            match self.next_segment(&view, at.segment_first_seq)? {
                Some(mut next) => {
                    next.seq = at.seq;
                    at = next;
                }
                None => break,
            }
        }
        self.at = Some(at);
        let text = Arc::new(text);
        batch.records = read
            .into_iter()
            .map(|(seq, range, meta)| SpooledRecord::stored(seq, StoredJson::shared(Arc::clone(&text), range), meta))
            .collect();
        Ok(batch)
    }

    /// A position at the start of the segment after `first_seq` (None: it is the newest).
    fn next_segment(&self, view: &LogView, first_seq: u64) -> Result<Option<Position>, SpoolError> {
        let Some(next) = view.segments.iter().find(|s| s.first_seq > first_seq) else {
            return Ok(None);
        };
        let file = File::open(&next.path).map_err(io_err(&next.path))?;
        Ok(Some(Position {
            seq: next.first_seq - 1,
            segment_first_seq: next.first_seq,
            file: Arc::new(file),
            path: Arc::from(next.path.as_path()),
            offset: segment::HEADER_LEN,
            blobs: HashMap::new(),
        }))
    }

    /// A position from which record `after + 1` is the next one read: the start of the
    /// segment holding it (its attachment files are indexed on the way).
    fn seek(&self, view: &LogView, after: u64) -> Result<Position, SpoolError> {
        let segment = view
            .segments
            .iter()
            .rev()
            .find(|s| s.first_seq <= after + 1)
            .ok_or(SpoolError::Missing {
                seq: after + 1,
                compacted_through: view.compacted_through(),
            })?;
        let file = File::open(&segment.path).map_err(io_err(&segment.path))?;
        Ok(Position {
            // Records up to `after` are skipped while scanning.
            seq: after,
            segment_first_seq: segment.first_seq,
            file: Arc::new(file),
            path: Arc::from(segment.path.as_path()),
            offset: segment::HEADER_LEN,
            blobs: HashMap::new(),
        })
    }
}
