//! The filesystem sink, the embedded default: append-only JSON Lines segments per device,
//! attachments stored by hash, everything fsync'd before the batch is acknowledged.
//!
//! Layout under the archive root:
//! ```text
//! <root>/<device>/records-<first seq, 20 digits>.jsonl   one canonical record per line,
//!                                                        exactly the spool's bytes
//! <root>/<device>/attachments/<aa>/<sha256>              the attachment files
//! ```
//! Idempotent on redelivery: the sink knows the last sequence number and hash it holds per
//! device (read back from the newest segment on first use), skips records it already has,
//! and refuses loudly (`Permanent`) a gap or a record whose `prev_hash` does not continue its
//! chain (a fork). The only repair it ever makes is cutting a trailing partial line (bytes
//! after the last newline), which can only come from a write that was interrupted before it
//! was fsync'd and acknowledged.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::link_or_copy::{Placed, link_or_copy};
use super::parallel::parallel_map;
use super::{AttachmentStore, Sink, SinkError, SpooledRecord};
use crate::api::agent::FilesystemTarget;
use crate::api::record::{ArchiveRecord, GENESIS_HASH};

/// Prefix and suffix of segment file names.
pub const SEGMENT_PREFIX: &str = "records-";
/// Suffix of segment file names.
pub const SEGMENT_SUFFIX: &str = ".jsonl";
/// Directory of attachment files inside a device directory.
pub const ATTACHMENTS_DIR: &str = "attachments";

/// The segment file name for a segment starting at `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}")
}

/// The first sequence number encoded in a segment file name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?
        .parse()
        .ok()
}

/// Where an attachment with this hash is stored inside a device directory.
pub fn attachment_path(device_dir: &Path, sha256: &str) -> PathBuf {
    device_dir
        .join(ATTACHMENTS_DIR)
        .join(&sha256[..2.min(sha256.len())])
        .join(sha256)
}

/// The filesystem sink.
pub struct FilesystemSink {
    name: String,
    root: PathBuf,
    segment_max_records: u64,
    devices: Arc<Mutex<HashMap<String, DeviceState>>>,
}

/// What the sink knows about one device's directory.
struct DeviceState {
    dir: PathBuf,
    last_seq: u64,
    last_hash: String,
    /// The open segment and how many lines it holds.
    segment: Option<(File, u64)>,
}

/// One record prepared for the blocking writer.
struct Item {
    seq: u64,
    device: String,
    hash: String,
    prev_hash: String,
    json: String,
    /// (sha256, file in the spool).
    files: Vec<(String, PathBuf)>,
}

impl FilesystemSink {
    /// A sink named `name` writing under `target.path`.
    pub fn new(name: &str, target: &FilesystemTarget) -> Self {
        FilesystemSink {
            name: name.to_owned(),
            root: target.path.clone(),
            segment_max_records: target.segment_max_records.max(1),
            devices: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The archive root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

fn io_err(what: &str, path: &Path) -> impl Fn(io::Error) -> SinkError {
    let context = format!("{what} {}", path.display());
    move |e| SinkError::Transient(format!("{context}: {e}"))
}

fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err("fsync directory", dir))
}

/// A device name must be one plain path component.
fn check_device_name(device: &str) -> Result<(), SinkError> {
    let ok = !device.is_empty()
        && device != "."
        && device != ".."
        && !device.contains(['/', '\\', '\0'])
        && device.len() <= 253;
    if ok {
        Ok(())
    } else {
        Err(SinkError::Permanent(format!(
            "device name {device:?} cannot be used as a directory name"
        )))
    }
}

impl DeviceState {
    /// Read the device directory back: the newest segment's last record, after cutting a
    /// trailing partial line.
    fn load(root: &Path, device: &str) -> Result<DeviceState, SinkError> {
        let dir = root.join(device);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let newest = newest_segment(&dir)?;
        let mut state = DeviceState {
            dir,
            last_seq: 0,
            last_hash: String::new(),
            segment: None,
        };
        let Some((first_seq, path)) = newest else {
            return Ok(state);
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_err("read", &path))?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            tracing::warn!(
                segment = %path.display(),
                bytes = bytes.len() - complete,
                "cutting an unacknowledged partial line left by an interrupted write"
            );
            file.set_len(complete as u64).map_err(io_err("truncate", &path))?;
            file.sync_all().map_err(io_err("fsync", &path))?;
            bytes.truncate(complete);
        }
        let lines = bytes.iter().filter(|&&b| b == b'\n').count() as u64;
        if lines == 0 {
            // Created by a write that was interrupted before anything in it was acknowledged:
            // it holds nothing, so remove it and continue after the previous segment.
            drop(file);
            fs::remove_file(&path).map_err(io_err("remove empty segment", &path))?;
            sync_dir(&state.dir)?;
            tracing::warn!(segment = %path.display(), first_seq, "removed an empty segment left by an interrupted write");
            return DeviceState::load(root, device);
        } else {
            let body = &bytes[..bytes.len() - 1];
            let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let last = std::str::from_utf8(&body[start..])
                .ok()
                .and_then(|line| ArchiveRecord::from_json(line).ok())
                .ok_or_else(|| {
                    SinkError::Permanent(format!(
                        "the last line of {} is not a record; run `capturefleet archive verify`",
                        path.display()
                    ))
                })?;
            state.last_seq = last.seq;
            state.last_hash = last.hash;
        }
        file.seek(SeekFrom::End(0)).map_err(io_err("seek", &path))?;
        state.segment = Some((file, lines));
        Ok(state)
    }
}

/// The segment with the highest first sequence number in `dir`.
fn newest_segment(dir: &Path) -> Result<Option<(u64, PathBuf)>, SinkError> {
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name)
            && newest.as_ref().is_none_or(|(n, _)| first > *n)
        {
            newest = Some((first, entry.path()));
        }
    }
    Ok(newest)
}

/// Place a spool blob in the archive: a hard link when the archive is on the spool's file
/// system, else a fsync'd copy (see [`link_or_copy`]). Returns the directory to fsync, when a
/// name was added.
fn store_attachment(device_dir: &Path, sha256: &str, source: &Path) -> Result<Option<PathBuf>, SinkError> {
    let dest = attachment_path(device_dir, sha256);
    if dest.exists() {
        return Ok(None);
    }
    let dir = dest.parent().expect("attachment path has a parent").to_path_buf();
    if !dir.exists() {
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        sync_dir(&device_dir.join(ATTACHMENTS_DIR))?;
        sync_dir(device_dir)?;
    }
    match link_or_copy(source, &dest).map_err(io_err("store attachment at", &dest))? {
        Placed::Existed => Ok(None),
        Placed::Linked | Placed::Copied => Ok(Some(dir)),
    }
}

/// Append the items, in order, durably. Runs on a blocking thread.
fn write_batch(
    root: &Path,
    segment_max_records: u64,
    devices: &mut HashMap<String, DeviceState>,
    items: Vec<Item>,
) -> Result<(), SinkError> {
    // Pass 1: decide what is new, check continuity, and store attachments first.
    let mut new_items = Vec::with_capacity(items.len());
    let mut expected: HashMap<String, (u64, String)> = HashMap::new();
    let mut dirs_to_sync: Vec<PathBuf> = Vec::new();
    let mut files: Vec<(PathBuf, String, PathBuf)> = Vec::new();
    for item in items {
        check_device_name(&item.device)?;
        if !devices.contains_key(&item.device) {
            let state = DeviceState::load(root, &item.device)?;
            devices.insert(item.device.clone(), state);
        }
        let state = &devices[&item.device];
        let (last_seq, last_hash) = expected
            .entry(item.device.clone())
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
        for (sha256, source) in &item.files {
            files.push((state.dir.clone(), sha256.clone(), source.clone()));
        }
        new_items.push(item);
    }
    files.sort();
    files.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    for stored in parallel_map(&files, |(dir, sha256, source)| store_attachment(dir, sha256, source)) {
        dirs_to_sync.extend(stored?);
    }
    dirs_to_sync.sort();
    dirs_to_sync.dedup();
    for synced in parallel_map(&dirs_to_sync, |d| sync_dir(d)) {
        synced?;
    }

    // Pass 2: append lines, starting new segments as needed, then fsync.
    let mut touched: Vec<String> = Vec::new();
    let mut writers: HashMap<String, BufWriter<File>> = HashMap::new();
    for item in new_items {
        let state = devices.get_mut(&item.device).expect("loaded in pass 1");
        let full = state
            .segment
            .as_ref()
            .is_none_or(|(_, lines)| *lines >= segment_max_records);
        if full {
            if let Some(mut writer) = writers.remove(&item.device) {
                writer.flush().map_err(io_err("write", &state.dir))?;
                writer
                    .get_ref()
                    .sync_all()
                    .map_err(io_err("fsync segment in", &state.dir))?;
            }
            let path = state.dir.join(segment_name(item.seq));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err("create", &path))?;
            sync_dir(&state.dir)?;
            state.segment = Some((file, 0));
        }
        let (file, lines) = state.segment.as_mut().expect("segment open");
        let writer = match writers.entry(item.device.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let clone = file.try_clone().map_err(io_err("open segment in", &state.dir))?;
                e.insert(BufWriter::with_capacity(256 * 1024, clone))
            }
        };
        writer
            .write_all(item.json.as_bytes())
            .map_err(io_err("write", &state.dir))?;
        writer.write_all(b"\n").map_err(io_err("write", &state.dir))?;
        *lines += 1;
        state.last_seq = item.seq;
        state.last_hash = item.hash;
        if !touched.contains(&item.device) {
            touched.push(item.device);
        }
    }
    for (device, mut writer) in writers {
        let dir = &devices[&device].dir;
        writer.flush().map_err(io_err("write", dir))?;
        writer.get_ref().sync_all().map_err(io_err("fsync segment in", dir))?;
    }
    Ok(())
}

#[async_trait]
impl Sink for FilesystemSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn type_name(&self) -> &'static str {
        "filesystem"
    }

    async fn start(&self) -> Result<(), SinkError> {
        fs::create_dir_all(&self.root).map_err(|e| {
            SinkError::Misconfigured(format!("cannot create archive root {}: {e}", self.root.display()))
        })?;
        self.health().await
    }

    async fn health(&self) -> Result<(), SinkError> {
        match fs::metadata(&self.root) {
            Ok(meta) if meta.is_dir() && !meta.permissions().readonly() => Ok(()),
            Ok(_) => Err(SinkError::Misconfigured(format!(
                "archive root {} is not a writable directory",
                self.root.display()
            ))),
            Err(e) => Err(SinkError::Transient(format!(
                "archive root {}: {e}",
                self.root.display()
            ))),
        }
    }

    async fn deliver(&self, batch: &[SpooledRecord], attachments: &dyn AttachmentStore) -> Result<(), SinkError> {
        let mut items = Vec::with_capacity(batch.len());
        for spooled in batch {
            let record = &spooled.record;
            let mut files = Vec::new();
            for attachment in &record.attachments {
                let Some(sha256) = attachment.sha256.as_deref() else {
                    continue;
                };
                if attachment.missing {
                    continue;
                }
                match attachments.path_of(sha256) {
                    Some(path) => files.push((sha256.to_owned(), path)),
                    // Not in the spool: either delivered with an earlier record (and since
                    // compacted from the spool) or it arrives with a later `attachment`
                    // record of the same message; `archive verify` reports it if it never does.
                    None => tracing::debug!(
                        sink = %self.name,
                        seq = spooled.seq,
                        attachment = %attachment.guid,
                        "attachment file not in the spool for this record"
                    ),
                }
            }
            items.push(Item {
                seq: spooled.seq,
                device: record.device.name.clone(),
                hash: record.hash.clone(),
                prev_hash: record.prev_hash.clone(),
                json: spooled.json.clone(),
                files,
            });
        }
        let root = self.root.clone();
        let max = self.segment_max_records;
        let devices = Arc::clone(&self.devices);
        tokio::task::spawn_blocking(move || {
            let mut devices = devices.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let result = write_batch(&root, max, &mut devices, items);
            if result.is_err() {
                // Forget what we knew: the next attempt reads the directory back from disk.
                devices.clear();
            }
            result
        })
        .await
        .map_err(|e| SinkError::Transient(format!("filesystem writer task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests;
