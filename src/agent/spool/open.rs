//! Opening a spool: the checkpoint, then the log after it replayed (keys, derived state, chain
//! head), checking every frame's CRC and the chain's continuity. A torn tail of the newest
//! segment (a batch whose fdatasync never returned) is cut off; damage anywhere else stops
//! the open with [`SpoolError::Corrupt`], because records there may already be delivered.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::checkpoint::Checkpoint;
use super::frame;
use super::keys::{self, KeyIndex};
use super::segment::{self, End, Header, Scanned, Scanner};
use super::state::{Derived, Effect};
use super::{
    Active, CURSORS_DIR, ChainHead, KEYS_DIR, LOG_DIR, LogView, SEGMENT_MAX_BYTES, SegmentRef, Shared, Spool,
    SpoolError, cursors, io_err,
};

/// The SQLite database of spools written before the log format (migrated on open).
pub const LEGACY_DB_FILE: &str = "spool.sqlite";

fn corrupt(path: &Path, reason: impl Into<String>) -> SpoolError {
    SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Remove what a crash can leave behind in `keys/`: temporary files and runs no checkpoint
/// names (a flush or merge that did not reach its checkpoint).
fn remove_stray_runs(keys_dir: &Path, named: &[String]) -> Result<(), SpoolError> {
    for entry in fs::read_dir(keys_dir).map_err(io_err(keys_dir))? {
        let entry = entry.map_err(io_err(keys_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !named.contains(&name) {
            tracing::debug!(file = %name, "removing a key run no checkpoint names");
            fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
        }
    }
    Ok(())
}

impl Spool {
    /// Open (or create) the spool in `dir` for `device`. A spool of the earlier SQLite format
    /// is migrated first (see `legacy.rs`).
    pub fn open(dir: &Path, device: &str) -> Result<Spool, SpoolError> {
        let (log_dir, keys_dir) = (dir.join(LOG_DIR), dir.join(KEYS_DIR));
        for d in [dir, &log_dir, &keys_dir] {
            fs::create_dir_all(d).map_err(io_err(d))?;
        }
        let cp = match Checkpoint::load(dir).map_err(io_err(dir))? {
            Some(cp) => cp,
            None if dir.join(LEGACY_DB_FILE).is_file() => super::legacy::migrate(dir, device)?,
            None => {
                let cp = Checkpoint::empty(device);
                cp.store(dir).map_err(io_err(dir))?;
                cp
            }
        };
        if dir.join(LEGACY_DB_FILE).exists() {
            // A migration reached its checkpoint but not the removal of the old files.
            super::legacy::remove_legacy_files(dir);
        }
        if cp.device != device {
            return Err(SpoolError::WrongDevice {
                path: dir.to_path_buf(),
                found: cp.device,
                expected: device.to_owned(),
            });
        }
        remove_stray_runs(&keys_dir, &cp.runs)?;
        let keys = KeyIndex::open(&keys_dir, &cp.runs, keys::FLUSH_EVERY).map_err(io_err(&keys_dir))?;
        let mut segments = segment::list(&log_dir).map_err(io_err(&log_dir))?;
        if segments.is_empty() {
            let header = Header {
                first_seq: cp.seq + 1,
                first_pos: cp.pos,
            };
            let (_, path) = segment::create(&log_dir, header).map_err(io_err(&log_dir))?;
            segments.push((header.first_seq, path));
        }
        let cursors = cursors::Cursors::open(&dir.join(CURSORS_DIR)).map_err(io_err(dir))?;
        let mut spool = Replay::new(cp, keys).run(&segments)?;
        let shared = Shared {
            dir: dir.to_path_buf(),
            log_dir,
            device: Arc::from(device),
            view: Mutex::new(LogView {
                head: spool.head.clone(),
                end_pos: spool.active.end_pos(),
                segments: spool.refs,
            }),
            cursors,
        };
        spool.refs = Vec::new();
        Ok(Spool {
            shared: Arc::new(shared),
            active: spool.active,
            keys: spool.keys,
            derived: spool.derived,
            head: spool.head,
            head_pos: spool.head_pos,
            checkpointed: spool.checkpointed,
            live_window_ns: None,
            segment_max: SEGMENT_MAX_BYTES,
            frames: Vec::new(),
            content: Vec::new(),
            sealer: Default::default(),
        })
    }
}

/// The state rebuilt while replaying.
struct Replay {
    cp: Checkpoint,
    keys: KeyIndex,
    derived: Derived,
    head: ChainHead,
    head_hash: [u8; 32],
    head_pos: u64,
    checkpointed: u64,
    refs: Vec<SegmentRef>,
}

/// What [`Replay::run`] hands back.
struct Replayed {
    active: Active,
    keys: KeyIndex,
    derived: Derived,
    head: ChainHead,
    head_pos: u64,
    checkpointed: u64,
    refs: Vec<SegmentRef>,
}

impl Replay {
    fn new(cp: Checkpoint, keys: KeyIndex) -> Self {
        let head_hash = frame::from_hex(&cp.hash).unwrap_or([0; 32]);
        Replay {
            derived: Derived::from_checkpoint(&cp),
            head: ChainHead {
                seq: cp.seq,
                hash: cp.hash.clone(),
            },
            head_hash,
            head_pos: cp.pos,
            checkpointed: cp.seq,
            keys,
            refs: Vec::new(),
            cp,
        }
    }

    fn run(mut self, segments: &[(u64, std::path::PathBuf)]) -> Result<Replayed, SpoolError> {
        let mut headers = Vec::with_capacity(segments.len());
        for (first_seq, path) in segments {
            let file = fs::File::open(path).map_err(io_err(path))?;
            let header = segment::read_header(&file, path).map_err(|e| corrupt(path, e.to_string()))?;
            if header.first_seq != *first_seq {
                return Err(corrupt(path, "the segment's name and header disagree"));
            }
            headers.push(header);
            self.refs.push(SegmentRef {
                first_seq: header.first_seq,
                first_pos: header.first_pos,
                path: path.clone(),
            });
        }
        // Replay from the segment holding the checkpoint's position (whole, so the newest
        // segment's attachment files are all known).
        let start = headers
            .iter()
            .rposition(|h| h.first_pos <= self.cp.pos)
            .ok_or_else(|| corrupt(&segments[0].1, "the log starts after the checkpoint"))?;
        let last = segments.len() - 1;
        let mut expected_pos = headers[start].first_pos;
        let mut blobs = HashSet::new();
        let mut active_len = segment::HEADER_LEN;
        for i in start..=last {
            let (path, header) = (&segments[i].1, headers[i]);
            if header.first_pos != expected_pos {
                return Err(corrupt(path, "the segment does not continue the previous one"));
            }
            let file = OpenOptions::new()
                .read(true)
                .write(i == last)
                .open(path)
                .map_err(io_err(path))?;
            let file_len = file.metadata().map_err(io_err(path))?.len();
            blobs.clear();
            let mut scanner = Scanner::new(&file, segment::HEADER_LEN, file_len);
            let mut broken_at = None;
            while let Some(item) = scanner.next_frame().map_err(io_err(path))? {
                let pos = header.first_pos + item.offset - segment::HEADER_LEN;
                match item.frame {
                    Scanned::Blob { sha256, .. } => {
                        blobs.insert(sha256);
                    }
                    // Before the checkpoint's position: already reflected in it.
                    Scanned::Record(_) if pos < self.cp.pos => {}
                    Scanned::Record(r) => {
                        if let Err(reason) = self.apply(&r, pos + item.len) {
                            broken_at = Some((item.offset, reason));
                            break;
                        }
                    }
                }
            }
            let torn = match (broken_at, scanner.end()) {
                (Some((at, reason)), _) => Some((at, reason)),
                (None, Some(End::Torn(at))) => Some((at, "an incomplete or damaged frame".to_owned())),
                _ => None,
            };
            let end = match torn {
                Some((at, reason)) if i == last => {
                    tracing::warn!(
                        segment = %path.display(), cut_at = at, bytes = file_len - at, %reason,
                        "cutting a torn tail off the spool log (a batch whose commit never returned)"
                    );
                    file.set_len(at).map_err(io_err(path))?;
                    at
                }
                Some((at, reason)) => {
                    return Err(corrupt(path, format!("closed segment, at byte {at}: {reason}")));
                }
                None => file_len,
            };
            if i == last {
                // Whatever is there now stays: make sure it is durable before anything builds
                // on it (a batch whose fdatasync failed may have left complete frames).
                file.sync_all().map_err(io_err(path))?;
            }
            expected_pos = header.first_pos + end - segment::HEADER_LEN;
            if i == last {
                active_len = end;
            }
        }
        if expected_pos < self.cp.pos {
            return Err(corrupt(
                &segments[last].1,
                "the log ends before the checkpoint's position",
            ));
        }
        let (first_seq, path) = &segments[last];
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let active = Active {
            file,
            path: path.clone(),
            first_seq: *first_seq,
            first_pos: headers[last].first_pos,
            len: active_len,
            blobs,
        };
        Ok(Replayed {
            active,
            keys: self.keys,
            derived: self.derived,
            head: self.head,
            head_pos: self.head_pos,
            checkpointed: self.checkpointed,
            refs: self.refs,
        })
    }

    /// Apply one replayed record (ending at log position `end_pos`), unless it does not
    /// continue the chain (then why).
    fn apply(&mut self, r: &frame::RecordFrame<'_>, end_pos: u64) -> Result<(), String> {
        let continues = r.seq == self.head.seq + 1
            && (self.head.seq == 0 && r.prev_hash == [0; 32] || self.head.seq > 0 && r.prev_hash == self.head_hash);
        if !continues {
            return Err(format!(
                "record {} does not continue the chain at {}",
                r.seq, self.head.seq
            ));
        }
        self.keys.insert(r.key.as_bytes(), r.seq);
        self.derived.apply(
            &Effect {
                kind: r.kind,
                table: r.table,
                rowid: r.rowid,
                guid: r.guid,
                key: r.key,
                event_ns: r.event_ns,
            },
            None,
        );
        self.head = ChainHead {
            seq: r.seq,
            hash: frame::to_hex(&r.hash),
        };
        self.head_hash = r.hash;
        self.head_pos = end_pos;
        Ok(())
    }
}
