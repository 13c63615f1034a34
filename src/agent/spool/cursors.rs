//! Delivery cursors: one small file per sink (`<spool>/cursors/<hex of the sink name>`)
//! holding the last sequence number the sink acknowledged and the log position after it.
//!
//! Each file has two 512-byte slots written alternately, each with a counter and a CRC; an
//! update writes the other slot and fdatasyncs. A torn write damages at most the slot being
//! written, and the other one still holds the previous cursor, so a cursor never goes back
//! past an acknowledgement that returned, and never forward past one that did not.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

const MAGIC: &[u8; 8] = b"CFCURSR1";
const SLOT: u64 = 512;
const SLOT_LEN: usize = 8 + 8 + 8 + 8 + 4;

/// Where a sink is: the last record it acknowledged, and the log position after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cursor {
    /// Last acknowledged sequence number.
    pub seq: u64,
    /// Log position right after that record.
    pub pos: u64,
}

struct CursorFile {
    file: File,
    counter: u64,
    cursor: Cursor,
}

fn encode(counter: u64, c: Cursor) -> [u8; SLOT_LEN] {
    let mut out = [0u8; SLOT_LEN];
    out[..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&counter.to_le_bytes());
    out[16..24].copy_from_slice(&c.seq.to_le_bytes());
    out[24..32].copy_from_slice(&c.pos.to_le_bytes());
    let crc = crc32fast::hash(&out[..32]);
    out[32..].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<(u64, Cursor)> {
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes.get(32..36)?.try_into().ok()?);
    (&bytes[..8] == MAGIC && crc32fast::hash(&bytes[..32]) == crc).then(|| {
        (
            word(8),
            Cursor {
                seq: word(16),
                pos: word(24),
            },
        )
    })
}

impl CursorFile {
    fn open(path: &Path) -> io::Result<Option<CursorFile>> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut best: Option<(u64, Cursor)> = None;
        for slot in 0..2 {
            let mut buf = [0u8; SLOT_LEN];
            if file.read_exact_at(&mut buf, slot * SLOT).is_ok()
                && let Some(found) = decode(&buf)
                && best.is_none_or(|b| found.0 > b.0)
            {
                best = Some(found);
            }
        }
        let Some((counter, cursor)) = best else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: no valid cursor slot", path.display()),
            ));
        };
        Ok(Some(CursorFile { file, counter, cursor }))
    }

    fn create(path: &Path, cursor: Cursor) -> io::Result<CursorFile> {
        let tmp = path.with_extension("tmp");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        file.write_all_at(&encode(1, cursor), SLOT)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        Ok(CursorFile {
            file,
            counter: 1,
            cursor,
        })
    }

    fn store(&mut self, cursor: Cursor) -> io::Result<()> {
        let counter = self.counter + 1;
        self.file.write_all_at(&encode(counter, cursor), (counter % 2) * SLOT)?;
        self.file.sync_data()?;
        self.counter = counter;
        self.cursor = cursor;
        Ok(())
    }
}

/// Every sink's cursor, shared by the capture thread (compaction) and the delivery tasks.
pub struct Cursors {
    dir: PathBuf,
    sinks: RwLock<HashMap<String, Arc<Mutex<CursorFile>>>>,
}

fn file_name(sink: &str) -> String {
    hex::encode(sink.as_bytes())
}

impl Cursors {
    /// Load the cursor files in `dir` (created if missing).
    pub fn open(dir: &Path) -> io::Result<Cursors> {
        fs::create_dir_all(dir)?;
        let mut sinks = HashMap::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(sink) = hex::decode(name).ok().and_then(|b| String::from_utf8(b).ok()) else {
                continue;
            };
            if let Some(file) = CursorFile::open(&entry.path())? {
                sinks.insert(sink, Arc::new(Mutex::new(file)));
            }
        }
        Ok(Cursors {
            dir: dir.to_path_buf(),
            sinks: RwLock::new(sinks),
        })
    }

    /// Make the cursor set exactly `sinks`: new ones start at `start`, others are removed.
    /// Returns the removed sinks' names.
    pub fn sync(&self, sinks: &[String], start: Cursor) -> io::Result<Vec<String>> {
        let mut map = self.sinks.write().unwrap_or_else(|p| p.into_inner());
        let mut forgotten: Vec<String> = map.keys().filter(|k| !sinks.contains(k)).cloned().collect();
        forgotten.sort();
        for name in &forgotten {
            map.remove(name);
            fs::remove_file(self.dir.join(file_name(name)))?;
        }
        for name in sinks {
            if !map.contains_key(name) {
                let file = CursorFile::create(&self.dir.join(file_name(name)), start)?;
                map.insert(name.clone(), Arc::new(Mutex::new(file)));
            }
        }
        super::sync_dir(&self.dir)?;
        Ok(forgotten)
    }

    /// A sink's cursor (None: not a configured sink).
    pub fn get(&self, sink: &str) -> Option<Cursor> {
        let map = self.sinks.read().unwrap_or_else(|p| p.into_inner());
        let file = map.get(sink)?;
        let cursor = file.lock().unwrap_or_else(|p| p.into_inner()).cursor;
        Some(cursor)
    }

    /// Every sink's cursor.
    pub fn all(&self) -> HashMap<String, Cursor> {
        let map = self.sinks.read().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .map(|(name, file)| (name.clone(), file.lock().unwrap_or_else(|p| p.into_inner()).cursor))
            .collect()
    }

    /// Move a sink's cursor forward to `cursor` (never back), durably. Unknown sinks are
    /// ignored (the sink was removed from the configuration).
    pub fn advance(&self, sink: &str, cursor: Cursor) -> io::Result<()> {
        let file = {
            let map = self.sinks.read().unwrap_or_else(|p| p.into_inner());
            match map.get(sink) {
                Some(file) => Arc::clone(file),
                None => return Ok(()),
            }
        };
        let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
        if cursor.seq <= file.cursor.seq {
            return Ok(());
        }
        file.store(cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seq: u64) -> Cursor {
        Cursor { seq, pos: seq * 100 }
    }

    #[test]
    fn cursors_persist_only_move_forward_and_follow_the_sink_list() {
        let tmp = tempfile::tempdir().unwrap();
        let cursors = Cursors::open(tmp.path()).unwrap();
        let names = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(cursors.sync(&names(&["a", "b/weird name"]), at(3)).unwrap().is_empty());
        cursors.advance("a", at(10)).unwrap();
        cursors.advance("a", at(7)).unwrap();
        cursors.advance("gone", at(7)).unwrap();
        assert_eq!(cursors.get("a"), Some(at(10)));
        assert_eq!(cursors.get("b/weird name"), Some(at(3)));
        drop(cursors);

        let cursors = Cursors::open(tmp.path()).unwrap();
        assert_eq!(cursors.get("a"), Some(at(10)));
        assert_eq!(
            cursors.sync(&names(&["a", "c"]), at(5)).unwrap(),
            names(&["b/weird name"])
        );
        assert_eq!(cursors.all().len(), 2);
        assert_eq!(cursors.get("c"), Some(at(5)));
    }

    #[test]
    fn a_torn_slot_leaves_the_previous_cursor() {
        let tmp = tempfile::tempdir().unwrap();
        let cursors = Cursors::open(tmp.path()).unwrap();
        cursors.sync(&["s".to_string()], at(0)).unwrap();
        cursors.advance("s", at(1)).unwrap();
        cursors.advance("s", at(2)).unwrap();
        drop(cursors);
        // The last write (counter 3) went to slot 1: tear it.
        let path = tmp.path().join(file_name("s"));
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xAA; 20], SLOT + 10).unwrap();
        let cursors = Cursors::open(tmp.path()).unwrap();
        assert_eq!(cursors.get("s"), Some(at(1)));
    }
}
