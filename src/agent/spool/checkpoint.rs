//! The spool's checkpoint: what is true of the spool after record `seq`, so that opening it
//! replays only the log after that point (`<spool>/checkpoint`, JSON plus a CRC line).
//!
//! Written whenever the recent keys are flushed into a run (and before compaction deletes a
//! segment that only the checkpoint can stand in for): under a temporary name, fsync'd,
//! renamed over the old one, directory fsync'd. A crash leaves the old checkpoint or the new
//! one, never a mixture; the log after it is replayed either way.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// File name of the checkpoint inside the spool directory.
pub const FILE: &str = "checkpoint";
/// The spool format this code writes.
pub const FORMAT: u32 = 2;

/// A GUID whose latest record is recent enough for deletion detection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveGuid {
    /// `source.guid`.
    pub guid: String,
    /// Idempotency key of the latest record archived for it.
    pub key: String,
    /// Latest event time, Apple-epoch nanoseconds.
    pub event_ns: i64,
}

/// The checkpoint's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Spool format ([`FORMAT`]).
    pub format: u32,
    /// The device whose chain this is.
    pub device: String,
    /// Records up to this sequence number are reflected below (their keys are in `runs`).
    pub seq: u64,
    /// Hash of record `seq` (empty for 0).
    pub hash: String,
    /// Log position right after record `seq`: replay starts here.
    pub pos: u64,
    /// Highest source ROWID per table.
    pub rowids: BTreeMap<String, i64>,
    /// Live GUIDs, sorted by GUID.
    pub live: Vec<LiveGuid>,
    /// Key run files in `keys/`, oldest first.
    pub runs: Vec<String>,
}

impl Checkpoint {
    /// The checkpoint of a new, empty spool.
    pub fn empty(device: &str) -> Self {
        Checkpoint {
            format: FORMAT,
            device: device.to_owned(),
            seq: 0,
            hash: String::new(),
            pos: 0,
            rowids: BTreeMap::new(),
            live: Vec::new(),
            runs: Vec::new(),
        }
    }

    /// Write durably into `dir` (replacing the previous checkpoint atomically).
    pub fn store(&self, dir: &Path) -> io::Result<()> {
        let json = serde_json::to_vec(self).map_err(io::Error::other)?;
        let tmp = dir.join(format!("{FILE}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(&json)?;
        writeln!(file)?;
        writeln!(file, "{:08x}", crc32fast::hash(&json))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, dir.join(FILE))?;
        super::sync_dir(dir)
    }

    /// Read the checkpoint in `dir` (None when there is none).
    pub fn load(dir: &Path) -> io::Result<Option<Checkpoint>> {
        let path = dir.join(FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {what}", path.display()));
        let text = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8"))?;
        let (json, crc) = text
            .trim_end_matches('\n')
            .rsplit_once('\n')
            .ok_or_else(|| bad("no checksum line"))?;
        if u32::from_str_radix(crc, 16).ok() != Some(crc32fast::hash(json.as_bytes())) {
            return Err(bad("checksum mismatch"));
        }
        let checkpoint: Checkpoint = serde_json::from_str(json).map_err(|e| bad(&format!("does not parse: {e}")))?;
        if checkpoint.format != FORMAT {
            return Err(bad(&format!(
                "spool format {} (this agent reads format {FORMAT})",
                checkpoint.format
            )));
        }
        Ok(Some(checkpoint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_loads_and_refuses_damage() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(Checkpoint::load(tmp.path()).unwrap(), None);
        let mut cp = Checkpoint::empty("dev-a");
        cp.seq = 9;
        cp.rowids.insert("message".into(), 4);
        cp.live.push(LiveGuid {
            guid: "G".into(),
            key: "dev-a/G/0".into(),
            event_ns: 3,
        });
        cp.store(tmp.path()).unwrap();
        assert_eq!(Checkpoint::load(tmp.path()).unwrap(), Some(cp.clone()));
        cp.seq = 10;
        cp.store(tmp.path()).unwrap();
        assert_eq!(Checkpoint::load(tmp.path()).unwrap().unwrap().seq, 10);

        let path = tmp.path().join(FILE);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace("\"seq\":10", "\"seq\":11")).unwrap();
        let err = Checkpoint::load(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("checksum"), "{err}");
    }
}
