//! Migrating a spool of the earlier SQLite format (`spool.sqlite` and `blobs/`) into the log
//! format, the first time an upgraded agent opens a device volume.
//!
//! Everything is carried over: the undelivered records byte for byte (with the attachment
//! files they name), every idempotency key, the live GUIDs, the row-id marks, the chain head
//! and every sink's cursor. The new checkpoint is written last: a crash before it leaves the
//! SQLite spool as it was, and the next open starts the migration again from scratch; after
//! it, the SQLite files are removed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::checkpoint::{Checkpoint, LiveGuid};
use super::cursors::{Cursor, Cursors};
use super::frame::{self, RecordFrame};
use super::keyrun::{self, Entry, key_hash};
use super::keys;
use super::open::LEGACY_DB_FILE;
use super::segment::{self, Header};
use super::{CURSORS_DIR, KEYS_DIR, LOG_DIR, SEGMENT_MAX_BYTES, SpoolError, io_err};
use crate::api::record::ArchiveRecord;

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> SpoolError + '_ {
    move |e| SpoolError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("cannot read the SQLite spool: {e}"),
    }
}

/// Empty the directories a failed earlier attempt may have filled.
fn clear(dir: &Path) -> Result<(), SpoolError> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(io_err(dir))?;
    }
    fs::create_dir_all(dir).map_err(io_err(dir))
}

/// Migrate the SQLite spool in `dir` (of `device`) and return the new checkpoint.
pub fn migrate(dir: &Path, device: &str) -> Result<Checkpoint, SpoolError> {
    let db_path = dir.join(LEGACY_DB_FILE);
    let err = db_err(&db_path);
    // Read-write, so SQLite recovers its WAL as it would have.
    let conn = Connection::open_with_flags(&db_path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(&err)?;
    let found: Option<String> = conn
        .query_row("SELECT v FROM meta WHERE k = 'device'", [], |r| r.get(0))
        .optional()
        .map_err(&err)?;
    if let Some(found) = found.filter(|f| f != device) {
        return Err(SpoolError::WrongDevice {
            path: dir.to_path_buf(),
            found,
            expected: device.to_owned(),
        });
    }
    tracing::info!(spool = %dir.display(), "migrating the spool from SQLite to the log format");
    let (head_seq, head_hash, compacted_through): (i64, String, i64) = conn
        .query_row("SELECT seq, hash, compacted_through FROM chain WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .map_err(&err)?;
    let (log_dir, keys_dir) = (dir.join(LOG_DIR), dir.join(KEYS_DIR));
    for d in [&log_dir, &keys_dir, &dir.join(CURSORS_DIR)] {
        clear(d)?;
    }

    // Keys: in runs of FLUSH_EVERY, then merged into one.
    let mut runs = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT key, seq FROM keys UNION ALL SELECT key, seq FROM keys_recent")
            .map_err(&err)?;
        let mut rows = stmt.query([]).map_err(&err)?;
        let mut chunk: Vec<Entry> = Vec::new();
        loop {
            let row = rows.next().map_err(&err)?;
            if let Some(row) = row {
                let key: String = row.get(0).map_err(&err)?;
                let seq: i64 = row.get(1).map_err(&err)?;
                chunk.push(Entry {
                    hash: key_hash(key.as_bytes()),
                    seq: seq as u64,
                    key: key.into_bytes(),
                });
            }
            if chunk.len() >= keys::FLUSH_EVERY || (row.is_none() && !chunk.is_empty()) {
                chunk.sort_unstable();
                let path = keys_dir.join(format!("migrated-{:06}.tmprun", runs.len()));
                runs.push(keyrun::write(&path, chunk.drain(..)).map_err(io_err(&path))?);
            }
            if row.is_none() {
                break;
            }
        }
    }
    let run_names = if runs.is_empty() {
        Vec::new()
    } else {
        let name = keys::run_name(1, head_seq as u64);
        let path = keys_dir.join(&name);
        let refs: Vec<&keyrun::Run> = runs.iter().collect();
        let mut failed = None;
        keyrun::write(
            &path,
            keyrun::merge(&refs).map_while(|e| e.map_err(|error| failed = Some(error)).ok()),
        )
        .map_err(io_err(&path))?;
        if let Some(error) = failed {
            return Err(io_err(&path)(error));
        }
        for run in runs {
            run.remove().map_err(io_err(&keys_dir))?;
        }
        vec![name]
    };
    super::sync_dir(&keys_dir).map_err(io_err(&keys_dir))?;

    // Records still in the spool, with the attachment files they name.
    let mut header = Header {
        first_seq: compacted_through as u64 + 1,
        first_pos: 0,
    };
    let (mut file, mut path) = segment::create(&log_dir, header).map_err(io_err(&log_dir))?;
    let mut len = segment::HEADER_LEN;
    let mut blobs = std::collections::HashSet::new();
    let mut ends: BTreeMap<u64, u64> = BTreeMap::new();
    let mut frames = Vec::new();
    {
        let mut stmt = conn
            .prepare("SELECT seq, json FROM records WHERE seq > ?1 ORDER BY seq")
            .map_err(&err)?;
        let mut rows = stmt.query([compacted_through]).map_err(&err)?;
        while let Some(row) = rows.next().map_err(&err)? {
            let seq = row.get::<_, i64>(0).map_err(&err)? as u64;
            let json: String = row.get(1).map_err(&err)?;
            let record = ArchiveRecord::from_json(&json).map_err(|e| SpoolError::Corrupt {
                path: db_path.clone(),
                reason: format!("stored record {seq} does not parse: {e}"),
            })?;
            if len >= SEGMENT_MAX_BYTES {
                file.sync_data().map_err(io_err(&path))?;
                header = Header {
                    first_seq: seq,
                    first_pos: header.first_pos + len - segment::HEADER_LEN,
                };
                (file, path) = segment::create(&log_dir, header).map_err(io_err(&log_dir))?;
                len = segment::HEADER_LEN;
                blobs.clear();
            }
            frames.clear();
            let mut files = Vec::new();
            for sha in record
                .attachments
                .iter()
                .filter(|a| !a.missing)
                .filter_map(|a| a.sha256.as_deref())
            {
                let Some(bytes) = frame::from_hex(sha) else { continue };
                let blob = dir.join("blobs").join(&sha[..2]).join(sha);
                if !blobs.contains(&bytes) {
                    match fs::read(&blob) {
                        Ok(content) => frame::encode_blob(&mut frames, &bytes, &content),
                        // Delivered with an earlier record and compacted, or arriving later.
                        Err(_) => continue,
                    }
                    blobs.insert(bytes);
                }
                files.push(bytes);
            }
            let hash = frame::from_hex(&record.hash).unwrap_or([0; 32]);
            let prev_hash = frame::from_hex(&record.prev_hash).unwrap_or([0; 32]);
            frame::encode_record(
                &mut frames,
                &RecordFrame::of(&record, seq, hash, prev_hash, files, &json),
            );
            file.write_all_at(&frames, len).map_err(io_err(&path))?;
            len += frames.len() as u64;
            ends.insert(seq, header.first_pos + len - segment::HEADER_LEN);
        }
    }
    file.sync_data().map_err(io_err(&path))?;
    let end_pos = header.first_pos + len - segment::HEADER_LEN;

    // Cursors, at the log position after each one's record.
    let mut cursors: Vec<(String, u64)> = Vec::new();
    {
        let mut stmt = conn.prepare("SELECT sink, seq FROM cursors").map_err(&err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(&err)?;
        for row in rows {
            cursors.push(row.map_err(&err)?);
        }
    }
    let store = Cursors::open(&dir.join(CURSORS_DIR)).map_err(io_err(dir))?;
    let names: Vec<String> = cursors.iter().map(|(n, _)| n.clone()).collect();
    store
        .sync(
            &names,
            Cursor {
                seq: compacted_through as u64,
                pos: 0,
            },
        )
        .map_err(io_err(dir))?;
    for (name, seq) in &cursors {
        if let Some(pos) = ends.get(seq) {
            store
                .advance(name, Cursor { seq: *seq, pos: *pos })
                .map_err(io_err(dir))?;
        }
    }

    let mut cp = Checkpoint::empty(device);
    cp.seq = head_seq as u64;
    cp.hash = head_hash;
    cp.pos = end_pos;
    cp.runs = run_names;
    cp.rowids = {
        let mut stmt = conn.prepare("SELECT src_table, max_rowid FROM rowids").map_err(&err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)?
    };
    cp.live = {
        let mut stmt = conn
            .prepare("SELECT guid, key, event_ns FROM live ORDER BY guid")
            .map_err(&err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(LiveGuid {
                    guid: r.get(0)?,
                    key: r.get(1)?,
                    event_ns: r.get(2)?,
                })
            })
            .map_err(&err)?;
        rows.collect::<Result<_, _>>().map_err(&err)?
    };
    drop(conn);
    cp.store(dir).map_err(io_err(dir))?;
    remove_legacy_files(dir);
    tracing::info!(
        spool = %dir.display(), head = cp.seq, records = ends.len(), sinks = cursors.len(),
        "spool migrated to the log format"
    );
    Ok(cp)
}

/// Remove the SQLite spool's files (after a migration's checkpoint is durable).
pub fn remove_legacy_files(dir: &Path) {
    for name in [LEGACY_DB_FILE, "spool.sqlite-wal", "spool.sqlite-shm"] {
        let _ = fs::remove_file(dir.join(name));
    }
    let _ = fs::remove_dir_all(dir.join("blobs"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::seal::tests::sample_record;
    use crate::agent::source::ArchiveIndex;
    use crate::agent::spool::Spool;
    use crate::api::record::{AttachmentInfo, GENESIS_HASH};
    use sha2::{Digest, Sha256};

    /// The SQLite spool's tables as the earlier agent created them.
    const LEGACY_DDL: &str = "
        CREATE TABLE meta(k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID;
        CREATE TABLE chain(id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL, hash TEXT NOT NULL,
            compacted_through INTEGER NOT NULL, compacted_bytes INTEGER NOT NULL);
        CREATE TABLE records(seq INTEGER PRIMARY KEY, cum_bytes INTEGER NOT NULL, json TEXT NOT NULL);
        CREATE TABLE keys(key TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE keys_recent(seq INTEGER PRIMARY KEY, key TEXT NOT NULL);
        CREATE TABLE live(guid TEXT PRIMARY KEY, key TEXT NOT NULL, event_ns INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE rowids(src_table TEXT PRIMARY KEY, max_rowid INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE blobs(sha256 TEXT PRIMARY KEY, size INTEGER NOT NULL, last_seq INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE cursors(sink TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;";

    #[test]
    fn a_sqlite_spool_is_migrated_with_every_record_key_cursor_and_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let conn = Connection::open(dir.join(LEGACY_DB_FILE)).unwrap();
        conn.execute_batch(LEGACY_DDL).unwrap();
        conn.execute("INSERT INTO meta VALUES ('device', 'dev-a')", []).unwrap();
        // Five records; the first two were compacted (all sinks had them).
        let content = b"attachment bytes";
        let sha = hex::encode(Sha256::digest(content));
        fs::create_dir_all(dir.join("blobs").join(&sha[..2])).unwrap();
        fs::write(dir.join("blobs").join(&sha[..2]).join(&sha), content).unwrap();
        let mut prev = GENESIS_HASH.to_string();
        let mut jsons = Vec::new();
        for seq in 1..=5i64 {
            let mut r = sample_record("dev-a", &format!("G{seq}"), "0");
            r.source.rowid = seq * 10;
            if seq == 4 {
                r.attachments.push(AttachmentInfo {
                    guid: "AT".into(),
                    sha256: Some(sha.clone()),
                    size: content.len() as u64,
                    ..Default::default()
                });
            }
            r.seal(seq as u64, &prev);
            prev = r.hash.clone();
            let json = r.to_canonical_json();
            if seq > 2 {
                conn.execute("INSERT INTO records VALUES (?1, 0, ?2)", rusqlite::params![seq, json])
                    .unwrap();
            }
            let table = if seq % 2 == 0 { "keys" } else { "keys_recent" };
            conn.execute(
                &format!("INSERT INTO {table}(key, seq) VALUES (?1, ?2)"),
                rusqlite::params![r.idempotency_key, seq],
            )
            .unwrap();
            jsons.push(json);
        }
        conn.execute("INSERT INTO chain VALUES (1, 5, ?1, 2, 0)", [&prev])
            .unwrap();
        conn.execute("INSERT INTO rowids VALUES ('message', 50)", []).unwrap();
        conn.execute("INSERT INTO live VALUES ('G5', 'dev-a/G5/0', 77)", [])
            .unwrap();
        conn.execute("INSERT INTO cursors VALUES ('archive', 3), ('s3', 2)", [])
            .unwrap();
        drop(conn);

        assert!(Spool::exists(dir));
        let mut spool = Spool::open(dir, "dev-a").unwrap();
        assert!(!dir.join(LEGACY_DB_FILE).exists() && !dir.join("blobs").exists());
        assert_eq!((spool.head().seq, spool.head().hash.as_str()), (5, prev.as_str()));
        assert_eq!(spool.compacted_through(), 2);
        assert!((1..=5).all(|i| spool.contains_key(&format!("dev-a/G{i}/0"))));
        assert_eq!(spool.max_rowid("message"), 50);
        assert_eq!(spool.live_guids_since(0), vec![("G5".into(), "dev-a/G5/0".into())]);
        let mut reader = spool.reader();
        assert_eq!(reader.cursor("archive").unwrap(), Some(3));
        assert_eq!(reader.cursor("s3").unwrap(), Some(2));
        let batch = reader.read_after(2, 10, usize::MAX).unwrap();
        let got: Vec<&str> = batch.records.iter().map(|r| r.json.as_str()).collect();
        assert_eq!(got, jsons[2..].iter().map(String::as_str).collect::<Vec<_>>());
        use crate::sinks::AttachmentStore;
        assert_eq!(batch.get(&sha).unwrap().read_all().unwrap(), content);
        assert_eq!(batch.records[1].meta.files, vec![sha.clone()]);
        // The migrated chain continues.
        let mut next = crate::agent::source::Draft {
            record: sample_record("dev-a", "G6", "0"),
            files: vec![],
        };
        let out = spool.append(std::slice::from_mut(&mut next)).unwrap();
        assert_eq!(out.appended[0].seq, 6);
        assert_eq!(next.record.prev_hash, prev);
        drop(spool);
        let spool = Spool::open(dir, "dev-a").unwrap();
        assert_eq!(spool.head().seq, 6);
    }
}
