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
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{AttachmentStore, Sink, SinkError, SpooledRecord};
use crate::api::agent::FilesystemTarget;
use crate::api::record::ArchiveRecord;

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
    super::files::sync_dir(dir).map_err(io_err("fsync directory", dir))
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
        write::remove_temporaries(&dir);
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
        let prepared = write::Prepared::new(batch, attachments, &self.name);
        let root = self.root.clone();
        let max = self.segment_max_records;
        let devices = Arc::clone(&self.devices);
        tokio::task::spawn_blocking(move || {
            let mut devices = devices.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let result = write::write_batch(&root, max, &mut devices, prepared);
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

mod write;

#[cfg(test)]
mod tests;
