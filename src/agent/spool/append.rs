//! The writer's operations: [`Spool::append`] (seal a batch and make it durable),
//! checkpoints, and [`Spool::compact`].

use std::fs::File;
use std::path::Path;

use super::blobs::{self, BlobError, IN_MEMORY_MAX};
use super::checkpoint::Checkpoint;
use super::frame::{self, RecordFrame, SourceTable};
use super::keys::KeyIndex;
use super::segment::{self, Header};
use super::state::Effect;
use super::{Active, AppendOutcome, Appended, ChainHead, KEYS_DIR, SegmentRef, Spool, SpoolError, io_err, sync_dir};

use crate::agent::source::Draft;
use crate::api::record::{ArchiveRecord, DecodeError, RECORD_SCHEMA};

/// The frame buffer is written out (still uncommitted) once it holds this much, so a batch
/// with large attachments does not pile up in memory.
const WRITE_OUT_AT: usize = 256 << 10;

impl Spool {
    /// Seal and durably commit a batch of drafts (see the module docs). Drafts already
    /// chained are dropped. On error nothing of the batch is chained.
    ///
    /// The drafts are sealed in place; after an error the same slice can be passed again.
    pub fn append(&mut self, drafts: &mut [Draft]) -> Result<AppendOutcome, SpoolError> {
        for draft in drafts.iter() {
            let record = &draft.record;
            if record.schema != RECORD_SCHEMA || record.device.name != *self.shared.device {
                return Err(SpoolError::InvalidDraft {
                    key: record.idempotency_key.clone(),
                    reason: format!(
                        "schema {:?} / device {:?}, expected {RECORD_SCHEMA:?} / {:?}",
                        record.schema, record.device.name, self.shared.device
                    ),
                });
            }
        }
        self.roll_if_full()?;
        // A failed batch whose bytes could not be cut off earlier is cut now.
        let on_disk = self.active.file.metadata().map_err(io_err(&self.active.path))?.len();
        if on_disk > self.active.len {
            self.active
                .file
                .set_len(self.active.len)
                .map_err(io_err(&self.active.path))?;
        }
        let started = std::time::Instant::now();
        let mark = self.keys.mark();
        let mut frames = std::mem::take(&mut self.frames);
        frames.clear();
        let result = self.seal_and_write(drafts, &mut frames);
        if frames.capacity() > 4 * WRITE_OUT_AT {
            frames = Vec::new();
        }
        self.frames = frames;
        let staged = match result {
            Ok(staged) => staged,
            Err(error) => {
                self.keys.rollback(mark);
                if let Err(e) = self.active.file.set_len(self.active.len) {
                    tracing::error!(error = %e, "cannot cut a failed batch off the spool log; cut before the next one");
                }
                return Err(error);
            }
        };
        // Durable: only now does the in-memory state (and so the readers' view) move.
        let live_floor = self.live_floor_ns();
        for (index, _) in &staged.sealed {
            let r = &drafts[*index].record;
            self.derived.apply(
                &Effect {
                    kind: r.kind,
                    table: SourceTable::of(&r.source.table),
                    rowid: r.source.rowid,
                    guid: &r.source.guid,
                    key: &r.idempotency_key,
                    event_ns: r.event_time_apple_ns,
                },
                live_floor,
            );
        }
        self.active.len = staged.file_len;
        self.active.blobs.extend(staged.new_blobs);
        if let Some((head, head_pos)) = staged.head {
            self.head = head;
            self.head_pos = head_pos;
        }
        let end_pos = self.active.end_pos();
        let head = self.head.clone();
        self.shared.update(|v| {
            v.head = head;
            v.end_pos = end_pos;
        });
        tracing::debug!(
            records = staged.outcome.appended.len(),
            files = staged.files,
            commit_ms = started.elapsed().as_millis() as u64,
            "spool append"
        );
        if self.keys.is_full()
            && let Err(error) = self.checkpoint()
        {
            // The batch is durable; the keys stay recent (replayed from the log) and the
            // checkpoint is tried again after the next batch.
            tracing::error!(%error, "spool checkpoint failed; retried after the next batch");
        }
        Ok(staged.outcome)
    }

    /// Capture the batch's files, seal its records into `frames`, write and fdatasync.
    fn seal_and_write(&mut self, drafts: &mut [Draft], frames: &mut Vec<u8>) -> Result<Staged, SpoolError> {
        let mut staged = Staged {
            file_len: self.active.len,
            ..Staged::default()
        };
        // 1. Attachment files, before the records that name them.
        let mut failed: Vec<(usize, String, BlobError)> = Vec::new();
        for (index, draft) in drafts.iter().enumerate() {
            if draft.files.is_empty()
                || self
                    .keys
                    .find(&draft.record.idempotency_key)
                    .map_err(io_err(&self.shared.dir))?
                    .is_some()
            {
                continue;
            }
            for (sha_hex, path) in &draft.files {
                let Some(sha) = frame::from_hex(sha_hex) else {
                    let error = BlobError::HashMismatch {
                        expected: sha_hex.clone(),
                        actual: "(not a lowercase hex SHA-256)".to_owned(),
                    };
                    failed.push((index, sha_hex.clone(), error));
                    continue;
                };
                if self.active.blobs.contains(&sha) || staged.new_blobs.contains(&sha) {
                    continue;
                }
                match self.capture_file(path, &sha, frames, &mut staged) {
                    Ok(()) => {
                        staged.new_blobs.push(sha);
                        staged.files += 1;
                    }
                    Err(BlobError::Spool { path, source }) => return Err(SpoolError::Io { path, source }),
                    Err(error) => failed.push((index, sha_hex.clone(), error)),
                }
            }
        }
        for (index, sha256, error) in failed {
            // Never drop the record: it says the file could not be captured, and why.
            staged.outcome.attachment_failures += 1;
            mark_attachment_uncaptured(&mut drafts[index].record, &sha256, &error);
        }

        // 2. Seal the records.
        let mut head = self.head.clone();
        let mut head_pos = self.head_pos;
        let mut prev_hash = frame::from_hex(&head.hash).unwrap_or([0; 32]);
        for (index, draft) in drafts.iter_mut().enumerate() {
            let record = &mut draft.record;
            let seq = head.seq + 1;
            if !self
                .keys
                .stage(&record.idempotency_key, seq)
                .map_err(io_err(&self.shared.dir))?
            {
                staged.outcome.duplicates += 1;
                continue;
            }
            let (json, hash) = self.sealer.seal(record, seq, head.next_prev_hash());
            let files: Vec<[u8; 32]> = record
                .attachments
                .iter()
                .filter(|a| !a.missing)
                .filter_map(|a| frame::from_hex(a.sha256.as_deref()?))
                .filter(|sha| self.active.blobs.contains(sha) || staged.new_blobs.contains(sha))
                .collect();
            frame::encode_record(frames, &RecordFrame::of(record, seq, hash, prev_hash, files, json));
            prev_hash = hash;
            head_pos = self.active.first_pos + staged.file_len + frames.len() as u64 - segment::HEADER_LEN;
            head = ChainHead {
                seq,
                hash: record.hash.clone(),
            };
            staged.sealed.push((index, seq));
            staged.outcome.appended.push(Appended {
                seq,
                kind: record.kind,
                event_apple_ns: record.event_time_apple_ns,
                decode_errors: record.decode_errors.len(),
            });
            if frames.len() >= WRITE_OUT_AT {
                self.write_out(frames, &mut staged)?;
            }
        }
        if staged.outcome.appended.is_empty() && staged.new_blobs.is_empty() {
            return Ok(staged);
        }
        // 3. One write, one fdatasync.
        self.write_out(frames, &mut staged)?;
        self.active.file.sync_data().map_err(io_err(&self.active.path))?;
        if !staged.outcome.appended.is_empty() {
            staged.head = Some((head, head_pos));
        }
        Ok(staged)
    }

    /// Write the buffered frames at the end of what the batch wrote so far (uncommitted until
    /// the fdatasync).
    fn write_out(&mut self, frames: &mut Vec<u8>, staged: &mut Staged) -> Result<(), SpoolError> {
        if frames.is_empty() {
            return Ok(());
        }
        use std::os::unix::fs::FileExt;
        self.active
            .file
            .write_all_at(frames, staged.file_len)
            .map_err(io_err(&self.active.path))?;
        staged.file_len += frames.len() as u64;
        frames.clear();
        Ok(())
    }

    /// Capture one attachment file as a blob frame (see `blobs.rs`).
    fn capture_file(
        &mut self,
        path: &Path,
        sha: &[u8; 32],
        frames: &mut Vec<u8>,
        staged: &mut Staged,
    ) -> Result<(), BlobError> {
        let mut source = File::open(path).map_err(BlobError::Source)?;
        let len = source.metadata().map_err(BlobError::Source)?.len();
        if len <= IN_MEMORY_MAX {
            let mut content = std::mem::take(&mut self.content);
            let result = blobs::capture_small(&mut source, sha, &mut content, frames);
            if content.capacity() > IN_MEMORY_MAX as usize * 2 {
                content = Vec::new();
            }
            self.content = content;
            return result.map(|_| ());
        }
        self.write_out(frames, staged).map_err(|e| match e {
            SpoolError::Io { path, source } => BlobError::Spool { path, source },
            other => BlobError::Spool {
                path: self.active.path.clone(),
                source: std::io::Error::other(other.to_string()),
            },
        })?;
        let at = staged.file_len;
        match blobs::capture_large(&mut source, len, sha, &self.active.file, &self.active.path, at) {
            Ok(written) => {
                staged.file_len += written;
                Ok(())
            }
            Err(error) => {
                // Nothing of the failed frame counts; later frames are written over it.
                let _ = self.active.file.set_len(at);
                Err(error)
            }
        }
    }

    /// Start a new segment when the active one is full (and holds at least one record).
    fn roll_if_full(&mut self) -> Result<(), SpoolError> {
        if self.active.len < self.segment_max || self.head.seq < self.active.first_seq {
            return Ok(());
        }
        let header = Header {
            first_seq: self.head.seq + 1,
            first_pos: self.active.end_pos(),
        };
        let log_dir = self.shared.log_dir.clone();
        let (file, path) = segment::create(&log_dir, header).map_err(io_err(&log_dir))?;
        tracing::debug!(segment = %path.display(), "spool log segment started");
        self.active = Active {
            file,
            path: path.clone(),
            first_seq: header.first_seq,
            first_pos: header.first_pos,
            len: segment::HEADER_LEN,
            blobs: Default::default(),
        };
        self.shared.update(|v| {
            v.segments.push(SegmentRef {
                first_seq: header.first_seq,
                first_pos: header.first_pos,
                path,
            })
        });
        Ok(())
    }

    /// Flush the recent keys into a run and record the state in a new checkpoint (then merge
    /// runs if due, with a second checkpoint naming the merged run).
    pub(super) fn checkpoint(&mut self) -> Result<(), SpoolError> {
        let keys_dir = self.shared.dir.join(KEYS_DIR);
        self.keys.flush().map_err(io_err(&keys_dir))?;
        sync_dir(&keys_dir).map_err(io_err(&keys_dir))?;
        if let Some(floor) = self.live_floor_ns() {
            self.derived.prune_live(floor);
        }
        self.store_checkpoint()?;
        tracing::debug!(
            seq = self.head.seq,
            key_index_memory_bytes = self.keys.memory_bytes(),
            key_runs_bytes = self.keys.disk_bytes(),
            "spool checkpoint"
        );
        let replaced = self.keys.merge_if_due().map_err(io_err(&keys_dir))?;
        if !replaced.is_empty() {
            sync_dir(&keys_dir).map_err(io_err(&keys_dir))?;
            self.store_checkpoint()?;
            KeyIndex::remove_runs(replaced);
        }
        Ok(())
    }

    fn store_checkpoint(&mut self) -> Result<(), SpoolError> {
        let mut cp = Checkpoint::empty(&self.shared.device);
        cp.seq = self.head.seq;
        cp.hash = self.head.hash.clone();
        cp.pos = self.head_pos;
        cp.runs = self.keys.run_names();
        self.derived.fill(&mut cp);
        cp.store(&self.shared.dir).map_err(io_err(&self.shared.dir))?;
        self.checkpointed = self.head.seq;
        Ok(())
    }

    /// Delete the log segments every sink has passed, and forget live GUIDs that fell out of
    /// the rescan window. Returns how many records went.
    pub fn compact(&mut self, _max_records: u64) -> Result<u64, SpoolError> {
        if let Some(floor) = self.live_floor_ns() {
            self.derived.prune_live(floor);
        }
        let Some(floor) = self.shared.cursors.all().values().map(|c| c.seq).min() else {
            return Ok(0);
        };
        let view = self.shared.view();
        let closed = view.segments.len().saturating_sub(1);
        let n = (0..closed)
            .take_while(|&i| view.segments[i + 1].first_seq - 1 <= floor)
            .count();
        if n == 0 {
            return Ok(0);
        }
        let through = view.segments[n].first_seq - 1;
        if self.checkpointed < through {
            // The checkpoint must stand in for what the deleted segments' records did.
            self.checkpoint()?;
        }
        for segment in &view.segments[..n] {
            match std::fs::remove_file(&segment.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&segment.path)(e)),
                _ => {}
            }
        }
        self.shared.update(|v| {
            v.segments.retain(|s| s.first_seq > through);
        });
        Ok(through - view.compacted_through())
    }
}

/// What a batch did before it is committed.
#[derive(Default)]
struct Staged {
    outcome: AppendOutcome,
    /// (draft index, seq) of every sealed record.
    sealed: Vec<(usize, u64)>,
    /// Attachment files the batch adds to the active segment.
    new_blobs: Vec<[u8; 32]>,
    files: usize,
    /// The active segment's length once the batch is written.
    file_len: u64,
    /// The new head and the log position after it (None: no record chained).
    head: Option<(ChainHead, u64)>,
}

/// The file named by `sha256` could not be captured: the record keeps the attachment's
/// metadata, says it is missing, and carries the reason as a decode error.
fn mark_attachment_uncaptured(record: &mut ArchiveRecord, sha256: &str, error: &BlobError) {
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
