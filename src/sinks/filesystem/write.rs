//! Writing one batch into the filesystem archive (on a blocking thread): check that it
//! continues each device's chain, store the attachment files it names, append its lines, and
//! make all of it durable before returning.
//!
//! Durability per batch (see `sinks::files`): with a few new attachment files, each is
//! written unnamed, fsync'd and named, and the segments and directories touched are fsync'd —
//! as many flushes as files. With more than [`PER_FILE_MAX`], the files are written unnamed,
//! one `syncfs` makes them durable, they are named, the lines are appended, and a second
//! `syncfs` makes the names, the lines and any new directory or segment durable: two flushes
//! for up to 256 files (`sinks::files`), whatever the batch holds.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{ATTACHMENTS_DIR, DeviceState, attachment_path, check_device_name, io_err, segment_name, sync_dir};
use crate::api::record::GENESIS_HASH;
use crate::sinks::files::{BatchPlacer, place_durably, sync_file_system};
use crate::sinks::{Attachment, AttachmentStore, SinkError, SpooledRecord, StoredJson};

/// Up to this many new attachment files a batch makes each durable on its own; above it,
/// the whole batch is made durable with two file-system syncs.
pub const PER_FILE_MAX: usize = 8;

/// One record of the batch.
struct Item {
    seq: u64,
    device: Arc<str>,
    hash: String,
    prev_hash: String,
    /// Its stored JSON (shared with the batch, not copied).
    json: StoredJson,
    /// (sha256, content) of the captured files it names.
    files: Vec<(String, Attachment)>,
}

/// A batch prepared for the blocking writer.
pub struct Prepared {
    items: Vec<Item>,
}

impl Prepared {
    /// Take what the writer needs from `batch` (no record is parsed).
    pub fn new(batch: &[SpooledRecord], attachments: &dyn AttachmentStore, sink: &str) -> Self {
        let mut items = Vec::with_capacity(batch.len());
        for spooled in batch {
            let mut files = Vec::new();
            for sha256 in &spooled.meta.files {
                match attachments.get(sha256) {
                    Some(content) => files.push((sha256.clone(), content)),
                    // Delivered with an earlier record (and since compacted from the spool);
                    // `archive verify` reports it if it never arrives.
                    None => tracing::debug!(
                        sink,
                        seq = spooled.seq,
                        "attachment file not in the spool for this record"
                    ),
                }
            }
            items.push(Item {
                seq: spooled.seq,
                device: Arc::clone(&spooled.meta.device),
                hash: spooled.meta.hash.clone(),
                prev_hash: spooled.meta.prev_hash.clone(),
                json: spooled.json.clone(),
                files,
            });
        }
        Prepared { items }
    }
}

/// Append the batch's records, in order, durably.
pub fn write_batch(
    root: &Path,
    segment_max_records: u64,
    devices: &mut HashMap<String, DeviceState>,
    batch: Prepared,
) -> Result<(), SinkError> {
    let Prepared { items } = batch;
    // 1. What is new, and does it continue each device's chain?
    let mut new_items = Vec::with_capacity(items.len());
    let mut expected: HashMap<Arc<str>, (u64, String)> = HashMap::new();
    for item in items {
        check_device_name(&item.device)?;
        if !devices.contains_key(&*item.device) {
            let state = DeviceState::load(root, &item.device)?;
            devices.insert(item.device.to_string(), state);
        }
        let state = &devices[&*item.device];
        let (last_seq, last_hash) = expected
            .entry(Arc::clone(&item.device))
            .or_insert_with(|| (state.last_seq, state.last_hash.clone()));
        if item.seq <= *last_seq {
            if item.seq == *last_seq && item.hash != *last_hash {
                return Err(SinkError::Permanent(format!(
                    "device {}: record {} differs from the one archived (the spool's chain forked from the archive)",
                    item.device, item.seq
                )));
            }
            continue; // redelivery of something already archived
        }
        if item.seq != *last_seq + 1 {
            return Err(SinkError::Permanent(format!(
                "device {}: archive ends at record {} but the next record offered is {} (gap)",
                item.device, last_seq, item.seq
            )));
        }
        let continues = if *last_seq == 0 {
            item.prev_hash == GENESIS_HASH
        } else {
            item.prev_hash == *last_hash
        };
        if !continues {
            return Err(SinkError::Permanent(format!(
                "device {}: record {} does not continue the archived chain (prev_hash mismatch)",
                item.device, item.seq
            )));
        }
        *last_seq = item.seq;
        last_hash.clone_from(&item.hash);
        new_items.push(item);
    }
    if new_items.is_empty() {
        return Ok(());
    }

    // 2. Attachment files, before the lines naming them.
    let mut wanted: Vec<(PathBuf, &Attachment)> = Vec::new();
    let mut seen = BTreeSet::new();
    for item in &new_items {
        let dir = &devices[&*item.device].dir;
        for (sha256, content) in &item.files {
            let dest = attachment_path(dir, sha256);
            if seen.insert(dest.clone()) && !dest.exists() {
                wanted.push((dest, content));
            }
        }
    }
    let per_batch = wanted.len() > PER_FILE_MAX;
    let mut dirs_to_sync: BTreeSet<PathBuf> = BTreeSet::new();
    let mut placer = BatchPlacer::new(root);
    for (dest, content) in &wanted {
        let mut place = || -> std::io::Result<bool> {
            if per_batch {
                placer.write(content, dest).map(|()| false)
            } else {
                place_durably(content, dest)
            }
        };
        let placed = match place() {
            // The first file under this prefix: create its directory (no stat per file).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dir = dest.parent().expect("attachment path has a parent");
                fs::create_dir_all(dir).map_err(io_err("create", dir))?;
                let attachments = dir.parent().expect("attachments dir");
                dirs_to_sync.insert(attachments.to_path_buf());
                dirs_to_sync.insert(attachments.parent().expect("device dir").to_path_buf());
                place()
            }
            other => other,
        }
        .map_err(io_err("store attachment at", dest))?;
        if placed {
            dirs_to_sync.insert(dest.parent().expect("attachment path has a parent").to_path_buf());
        }
    }
    placer.commit().map_err(io_err("store attachments under", root))?;

    // 3. The lines: contiguous runs per segment file, one write each.
    let mut touched: Vec<String> = Vec::new();
    let mut i = 0;
    while i < new_items.len() {
        let device = new_items[i].device.to_string();
        let state = devices.get_mut(&device).expect("loaded above");
        let full = state
            .segment
            .as_ref()
            .is_none_or(|(_, lines)| *lines >= segment_max_records);
        if full {
            if let Some((file, _)) = state.segment.take()
                && !per_batch
            {
                file.sync_all().map_err(io_err("fsync segment in", &state.dir))?;
            }
            let path = state.dir.join(segment_name(new_items[i].seq));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err("create", &path))?;
            dirs_to_sync.insert(state.dir.clone());
            state.segment = Some((file, 0));
        }
        let (file, lines) = state.segment.as_mut().expect("segment open");
        let room = segment_max_records - *lines;
        let mut end = i;
        while end < new_items.len() && *new_items[end].device == *device && ((end - i) as u64) < room {
            end += 1;
        }
        let run = &new_items[i..end];
        match StoredJson::line_run(run.iter().map(|item| &item.json)) {
            // The spool's batch buffer already holds these lines back to back.
            Some(lines) => file.write_all(lines),
            None => {
                let mut lines = Vec::with_capacity(run.iter().map(|item| item.json.len() + 1).sum());
                for item in run {
                    lines.extend_from_slice(item.json.as_bytes());
                    lines.push(b'\n');
                }
                file.write_all(&lines)
            }
        }
        .map_err(io_err("write", &state.dir))?;
        *lines += (end - i) as u64;
        let last = &new_items[end - 1];
        state.last_seq = last.seq;
        state.last_hash.clone_from(&last.hash);
        if !touched.contains(&device) {
            touched.push(device);
        }
        i = end;
    }

    // 4. Durable before the batch is acknowledged.
    if per_batch {
        sync_file_system(root).map_err(io_err("sync the file system of", root))?;
        return Ok(());
    }
    for device in &touched {
        let state = &devices[device];
        if let Some((file, _)) = &state.segment {
            file.sync_all().map_err(io_err("fsync segment in", &state.dir))?;
        }
    }
    for dir in &dirs_to_sync {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Remove temporary attachment files an interrupted batch left in a device directory.
pub fn remove_temporaries(device_dir: &Path) {
    let Ok(dirs) = fs::read_dir(device_dir.join(ATTACHMENTS_DIR)) else {
        return;
    };
    for dir in dirs.flatten() {
        let Ok(files) = fs::read_dir(dir.path()) else { continue };
        for file in files.flatten() {
            if file.file_name().to_str().is_some_and(crate::sinks::files::is_temporary) {
                let _ = fs::remove_file(file.path());
            }
        }
    }
}
