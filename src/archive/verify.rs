//! Verifying a filesystem archive from its stored lines alone: every device's chain is
//! recomputed and every attachment file re-hashed.
//!
//! Reported problems (`kind`):
//! - `unparsable`: a line that is not a v1 record;
//! - `hash_mismatch`: a record whose content does not hash to its `hash` (altered);
//! - `broken_link`: a record whose `prev_hash` is not the previous record's `hash` (a record
//!   altered and re-hashed, removed and replaced, or a forked chain);
//! - `gap`: sequence numbers missing (records removed);
//! - `duplicate`: the same sequence number stored again;
//! - `duplicate_key`: two records with one idempotency key (an event archived twice);
//! - `reordered`: a record stored before one with a lower sequence number;
//! - `not_canonical`: a line that parses but is not the canonical bytes of its record;
//! - `wrong_device`: a record of another device in this device's directory;
//! - `segment_name`: a segment whose first record is not the one its name says;
//! - `attachment_missing` / `attachment_altered`: a file named by a record is absent, or a
//!   stored file's content no longer matches the hash it is named by.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::api::record::{ArchiveRecord, GENESIS_HASH};
use crate::sinks::filesystem::{ATTACHMENTS_DIR, attachment_path, parse_segment_name};

/// At most this many problems are listed (all are counted).
pub const MAX_LISTED_PROBLEMS: usize = 1000;

/// One thing wrong with an archive.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// See the module docs.
    pub kind: &'static str,
    /// The device directory.
    pub device: String,
    /// The file, relative to the archive root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// 1-based line number in `file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// The sequence number concerned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// What exactly (never message content).
    pub detail: String,
}

/// A device chain's head as found.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// Highest sequence number.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// The verification summary printed by `capturefleet archive verify`.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Records read (parsable lines).
    pub records: u64,
    /// Device directories.
    pub devices: u64,
    /// True when no problem was found.
    pub ok: bool,
    /// The problems (the first [`MAX_LISTED_PROBLEMS`]).
    pub problems: Vec<Problem>,
    /// How many problems there are in all.
    pub problems_total: u64,
    /// Each device's chain head, to compare with its drain receipt.
    pub heads: std::collections::BTreeMap<String, Head>,
}

/// The archive could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read archive {path}: {source}")]
pub struct VerifyError {
    /// What.
    pub path: PathBuf,
    /// Why.
    pub source: io::Error,
}

struct Collector {
    listed: Vec<Problem>,
    total: u64,
}

impl Collector {
    fn push(&mut self, problem: Problem) {
        self.total += 1;
        if self.listed.len() < MAX_LISTED_PROBLEMS {
            self.listed.push(problem);
        }
    }
}

/// What the sorted pass needs of each record.
struct Entry {
    seq: u64,
    hash: [u8; 32],
    prev_hash: [u8; 32],
    file: u32,
    line: u64,
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Verify the archive under `root` (one directory per device).
pub fn verify(root: &Path) -> Result<Report, VerifyError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| VerifyError { path, source }
    };
    let mut devices: Vec<String> = Vec::new();
    for entry in fs::read_dir(root).map_err(err(root))? {
        let entry = entry.map_err(err(root))?;
        if entry.file_type().map_err(err(&entry.path()))?.is_dir() {
            devices.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    devices.sort();
    let mut problems = Collector {
        listed: Vec::new(),
        total: 0,
    };
    let mut records = 0;
    let mut heads = std::collections::BTreeMap::new();
    for device in &devices {
        let (count, head) = verify_device(root, device, &mut problems).map_err(err(&root.join(device)))?;
        records += count;
        if let Some(head) = head {
            heads.insert(device.clone(), head);
        }
    }
    Ok(Report {
        records,
        devices: devices.len() as u64,
        ok: problems.total == 0,
        problems: problems.listed,
        problems_total: problems.total,
        heads,
    })
}

fn verify_device(root: &Path, device: &str, problems: &mut Collector) -> io::Result<(u64, Option<Head>)> {
    let dir = root.join(device);
    let mut segments: Vec<(u64, String)> = Vec::new();
    for entry in fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(first) = parse_segment_name(&name) {
            segments.push((first, name));
        }
    }
    segments.sort();
    let problem = |kind, file: Option<&str>, line: Option<u64>, seq: Option<u64>, detail: String| Problem {
        kind,
        device: device.to_owned(),
        file: file.map(|f| format!("{device}/{f}")),
        line,
        seq,
        detail,
    };

    let mut entries: Vec<Entry> = Vec::new();
    let mut keys: HashMap<[u8; 16], u64> = HashMap::new();
    let mut checked_files: HashMap<String, bool> = HashMap::new();
    let mut highest_in_file_order = 0u64;
    let mut seen_seqs: HashSet<u64> = HashSet::new();
    let mut count = 0u64;
    for (file_index, (first, name)) in segments.iter().enumerate() {
        let reader = BufReader::with_capacity(1 << 20, File::open(dir.join(name))?);
        let mut line_no = 0u64;
        for line in reader.split(b'\n') {
            let line = line?;
            line_no += 1;
            let parsed = std::str::from_utf8(&line).map_err(|e| e.to_string()).and_then(|text| {
                ArchiveRecord::from_json(text)
                    .map(|r| (text, r))
                    .map_err(|e| e.to_string())
            });
            let (text, record) = match parsed {
                Ok(ok) => ok,
                Err(error) => {
                    let detail = format!("not a record: {}", error.chars().take(200).collect::<String>());
                    problems.push(problem("unparsable", Some(name), Some(line_no), None, detail));
                    continue;
                }
            };
            count += 1;
            let seq = record.seq;
            let at = (Some(name.as_str()), Some(line_no), Some(seq));
            // Content and hash.
            let mut value = serde_json::to_value(&record).expect("a parsed record serialises");
            let canonical = serde_json::to_string(&value).expect("a JSON value serialises");
            if let serde_json::Value::Object(map) = &mut value {
                map.remove("hash");
            }
            let computed = hex::encode(Sha256::digest(
                serde_json::to_string(&value)
                    .expect("a JSON value serialises")
                    .as_bytes(),
            ));
            if computed != record.hash {
                problems.push(problem(
                    "hash_mismatch",
                    at.0,
                    at.1,
                    at.2,
                    "record content does not match its hash".into(),
                ));
            } else if canonical != text {
                problems.push(problem(
                    "not_canonical",
                    at.0,
                    at.1,
                    at.2,
                    "line is not the record's canonical JSON".into(),
                ));
            }
            if record.device.name != device {
                problems.push(problem(
                    "wrong_device",
                    at.0,
                    at.1,
                    at.2,
                    "record belongs to another device".into(),
                ));
            }
            if line_no == 1 && seq != *first {
                let detail = format!("segment named for record {first} starts with record {seq}");
                problems.push(problem("segment_name", at.0, at.1, at.2, detail));
            }
            // Order and duplicates (file order).
            if seq <= highest_in_file_order && !seen_seqs.contains(&seq) {
                let detail = format!("stored after record {highest_in_file_order}");
                problems.push(problem("reordered", at.0, at.1, at.2, detail));
            }
            seen_seqs.insert(seq);
            highest_in_file_order = highest_in_file_order.max(seq);
            let key_digest: [u8; 16] = Sha256::digest(record.idempotency_key.as_bytes())[..16]
                .try_into()
                .expect("16 bytes");
            match keys.get(&key_digest) {
                Some(&other) if other != seq => {
                    let detail = format!("idempotency key also archived as record {other}");
                    problems.push(problem("duplicate_key", at.0, at.1, at.2, detail));
                }
                Some(_) => {}
                None => {
                    keys.insert(key_digest, seq);
                }
            }
            // Attachments named by the record.
            for attachment in &record.attachments {
                let Some(sha) = attachment.sha256.as_deref() else {
                    continue;
                };
                if attachment.missing {
                    continue;
                }
                checked_files.entry(sha.to_owned()).or_insert_with(|| {
                    let path = attachment_path(&dir, sha);
                    match sha256_file(&path) {
                        Ok(actual) if actual == sha => true,
                        Ok(_) => {
                            let detail = format!("attachment {sha} content no longer matches its hash");
                            problems.push(problem("attachment_altered", None, None, Some(seq), detail));
                            false
                        }
                        Err(e) => {
                            let detail = format!("attachment {sha} ({}) is missing: {e}", attachment.guid);
                            problems.push(problem("attachment_missing", None, None, Some(seq), detail));
                            false
                        }
                    }
                });
            }
            entries.push(Entry {
                seq,
                hash: hex32(&record.hash).unwrap_or([0xff; 32]),
                prev_hash: hex32(&record.prev_hash).unwrap_or([0xff; 32]),
                file: file_index as u32,
                line: line_no,
            });
        }
    }

    // Stored attachment files that are not named by any record are still checked.
    let attachments = dir.join(ATTACHMENTS_DIR);
    if attachments.is_dir() {
        for sub in fs::read_dir(&attachments)? {
            let sub = sub?;
            if !sub.file_type()?.is_dir() {
                continue;
            }
            for file in fs::read_dir(sub.path())? {
                let file = file?;
                let name = file.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') || checked_files.contains_key(&name) {
                    continue;
                }
                let actual = sha256_file(&file.path())?;
                if actual != name {
                    let detail = format!("attachment {name} content no longer matches its hash");
                    problems.push(problem("attachment_altered", None, None, None, detail));
                }
            }
        }
    }

    // Chain pass, in sequence order.
    entries.sort_by_key(|e| e.seq);
    let genesis = hex32(GENESIS_HASH).expect("genesis is hex");
    let mut expected = 1u64;
    let mut prev: Option<&Entry> = None;
    for entry in &entries {
        let name = &segments[entry.file as usize].1;
        let at = (Some(name.as_str()), Some(entry.line), Some(entry.seq));
        if let Some(p) = prev
            && p.seq == entry.seq
        {
            let detail = if p.hash == entry.hash {
                "the same record is stored twice".to_owned()
            } else {
                "two different records carry this sequence number".to_owned()
            };
            problems.push(problem("duplicate", at.0, at.1, at.2, detail));
            continue;
        }
        if entry.seq > expected {
            let detail = if entry.seq == expected + 1 {
                format!("record {expected} is missing")
            } else {
                format!("records {expected} to {} are missing", entry.seq - 1)
            };
            problems.push(problem("gap", at.0, at.1, Some(expected), detail));
        } else {
            let link = prev.map_or(genesis, |p| p.hash);
            if entry.prev_hash != link {
                let detail = "prev_hash is not the previous record's hash".to_owned();
                problems.push(problem("broken_link", at.0, at.1, at.2, detail));
            }
        }
        expected = entry.seq + 1;
        prev = Some(entry);
    }
    let head = prev.map(|p| Head {
        seq: p.seq,
        hash: hex::encode(p.hash),
    });
    Ok((count, head))
}

#[cfg(test)]
mod tests;
