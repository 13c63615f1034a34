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
