//! Helpers for the capture-pipeline integration tests: the record JSON Schema, reading a
//! filesystem archive back, running the `capturefleet` binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use capturefleet::api::record::ArchiveRecord;
use serde_json::Value;

/// The repository's `docs/record.schema.json`, compiled.
pub fn record_validator() -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/record.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("read the record schema"))
        .expect("the record schema is JSON");
    jsonschema::validator_for(&schema).expect("the record schema compiles")
}

/// Schema violations of one stored line (empty when valid).
pub fn schema_errors(validator: &jsonschema::Validator, line: &str) -> Vec<String> {
    let value: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => return vec![format!("not JSON: {e}")],
    };
    validator
        .iter_errors(&value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Every stored line of a device in a filesystem archive, in segment order.
pub fn archived_lines(root: &Path, device: &str) -> Vec<String> {
    let dir = root.join(device);
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    segments.sort();
    segments
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The archive's records, parsed.
pub fn archived_records(root: &Path, device: &str) -> Vec<ArchiveRecord> {
    archived_lines(root, device)
        .iter()
        .map(|l| ArchiveRecord::from_json(l).expect("archived line parses"))
        .collect()
}

/// How often each idempotency key occurs.
pub fn key_counts(records: &[ArchiveRecord]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in records {
        *counts.entry(r.idempotency_key.clone()).or_insert(0) += 1;
    }
    counts
}

/// The binary under test.
pub fn capturefleet() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_capturefleet"));
    cmd.env("CAPTUREFLEET_LOG_FORMAT", "text").env("RUST_LOG", "warn");
    cmd
}

/// `capturefleet archive verify DIR`, parsed.
pub fn verify_archive(root: &Path) -> (Output, Value) {
    let out = capturefleet()
        .args(["archive", "verify"])
        .arg(root)
        .output()
        .expect("run archive verify");
    let summary: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("verify printed no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out, summary)
}

/// A free loopback address (`127.0.0.1:PORT`).
pub fn free_loopback_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    listener.local_addr().expect("local addr").to_string()
}

/// A plain HTTP/1.0 GET on loopback: (status, body); None when nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Send SIGTERM to a child.
pub fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -TERM failed");
}

/// Check an archive against the simulator's manifest: every simulated event archived exactly
/// once (events of rows deleted before the agent could read them may be absent, and then no
/// deletion record may claim them), nothing archived that was not simulated, and every line
/// valid against the record schema. Returns the number of records.
pub fn assert_archive_matches_manifest(root: &Path, device: &str, manifest: &capturefleet::device::Manifest) -> usize {
    let validator = record_validator();
    let lines = archived_lines(root, device);
    for line in &lines {
        let errors = schema_errors(&validator, line);
        assert!(errors.is_empty(), "record violates docs/record.schema.json: {errors:?}");
    }
    let records: Vec<ArchiveRecord> = lines.iter().map(|l| ArchiveRecord::from_json(l).unwrap()).collect();
    let counts = key_counts(&records);
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).map(|(k, _)| k.clone()).collect();
    assert!(
        duplicated.is_empty(),
        "archived more than once: {:?}",
        &duplicated[..duplicated.len().min(10)]
    );
    let deleted: std::collections::HashSet<&str> = manifest.deleted.iter().map(String::as_str).collect();
    let mut missing = Vec::new();
    let mut expected = std::collections::HashSet::new();
    for event in &manifest.events {
        let key = format!("{device}/{}", event.key());
        if !counts.contains_key(&key) && !deleted.contains(event.guid.as_str()) {
            missing.push(key.clone());
        }
        expected.insert(key);
    }
    assert!(
        missing.is_empty(),
        "{} simulated events never archived, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let unexpected: Vec<_> = records
        .iter()
        .filter(|r| !expected.contains(&r.idempotency_key))
        .filter(|r| !(r.source.revision == "deleted" && deleted.contains(r.source.guid.as_str())))
        .map(|r| r.idempotency_key.clone())
        .collect();
    assert!(
        unexpected.is_empty(),
        "archived events the simulator never wrote: {:?}",
        &unexpected[..unexpected.len().min(10)]
    );
    records.len()
}

/// A file projected the way the kubelet projects a downward-API volume: `<dir>/<name>` is a
/// symlink to `..data/<name>`, and `..data` a symlink to a timestamped directory that is
/// swapped atomically (rename) on every update.
pub struct ProjectedFile {
    dir: PathBuf,
    name: String,
    version: std::cell::Cell<u32>,
}

impl ProjectedFile {
    /// A projection of `name` in `dir` (created), with `text` as its first content.
    pub fn new(dir: &Path, name: &str, text: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let file = ProjectedFile {
            dir: dir.to_path_buf(),
            name: name.to_owned(),
            version: std::cell::Cell::new(0),
        };
        file.update(text);
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        file
    }

    /// The path a container reads.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Replace the content the way the kubelet does.
    pub fn update(&self, text: &str) {
        let version = self.version.get() + 1;
        self.version.set(version);
        let stamp = format!("..2026_01_01_00_00_{version:02}.{}", std::process::id());
        std::fs::create_dir_all(self.dir.join(&stamp)).unwrap();
        std::fs::write(self.dir.join(&stamp).join(&self.name), text).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

/// Poll `check` every 100 ms until it holds, for at most `seconds`; panic with `what` otherwise.
pub fn wait_until(seconds: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The files a process has open (Linux `/proc/<pid>/fd`).
pub fn open_files(pid: u32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every archived record of a device in a filesystem archive, or none while it has none.
pub fn archived_count(root: &Path, device: &str) -> usize {
    if root.join(device).is_dir() {
        archived_lines(root, device).len()
    } else {
        0
    }
}
