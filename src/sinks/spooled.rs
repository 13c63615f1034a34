//! [`SpooledRecord`]: a sealed record as the spool hands it to sinks — its exact stored bytes,
//! the chain fields and the little the delivery path needs in binary, and the parsed record
//! on demand (most sinks write the bytes and never need it).

use std::sync::{Arc, OnceLock};

use super::SinkError;
use crate::api::record::{ArchiveRecord, RecordKind};

/// What the spool knows about a record without parsing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMeta {
    /// The capture device (`device.name`).
    pub device: Arc<str>,
    /// The record's hash.
    pub hash: String,
    /// The previous record's hash.
    pub prev_hash: String,
    /// Its kind.
    pub kind: RecordKind,
    /// Its event time, Apple-epoch nanoseconds.
    pub event_time_apple_ns: i64,
    /// SHA-256s of the attachment files it names that the spool captured (each one
    /// available from the batch's [`super::AttachmentStore`]).
    pub files: Vec<String>,
}

/// A sealed record as stored in the spool.
#[derive(Debug)]
pub struct SpooledRecord {
    /// The record's chain position.
    pub seq: u64,
    /// The canonical JSON stored in the spool (what byte-for-byte sinks must write).
    pub json: String,
    /// The chain fields and what delivery needs, without parsing.
    pub meta: RecordMeta,
    parsed: OnceLock<Result<ArchiveRecord, String>>,
}

impl Clone for SpooledRecord {
    fn clone(&self) -> Self {
        SpooledRecord {
            seq: self.seq,
            json: self.json.clone(),
            meta: self.meta.clone(),
            parsed: self.parsed.clone(),
        }
    }
}

impl PartialEq for SpooledRecord {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq && self.json == other.json && self.meta == other.meta
    }
}

impl SpooledRecord {
    /// A record as the spool read it: the JSON is parsed only if a sink asks for it.
    pub fn stored(seq: u64, json: String, meta: RecordMeta) -> Self {
        SpooledRecord {
            seq,
            json,
            meta,
            parsed: OnceLock::new(),
        }
    }

    /// A record already parsed (tests, and sinks' own journals): `meta` is derived from it and
    /// every attachment with a hash counts as captured.
    pub fn from_record(seq: u64, record: ArchiveRecord, json: String) -> Self {
        let meta = RecordMeta {
            device: Arc::from(record.device.name.as_str()),
            hash: record.hash.clone(),
            prev_hash: record.prev_hash.clone(),
            kind: record.kind,
            event_time_apple_ns: record.event_time_apple_ns,
            files: record
                .attachments
                .iter()
                .filter(|a| !a.missing)
                .filter_map(|a| a.sha256.clone())
                .collect(),
        };
        SpooledRecord {
            seq,
            json,
            meta,
            parsed: OnceLock::from(Ok(record)),
        }
    }

    /// The parsed record (parsed once, on first use). The spool only stores JSON it produced,
    /// so a failure means the stored bytes were damaged: a permanent error for the batch.
    pub fn record(&self) -> Result<&ArchiveRecord, SinkError> {
        self.parsed
            .get_or_init(|| ArchiveRecord::from_json(&self.json).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| SinkError::Permanent(format!("stored record {} does not parse: {e}", self.seq)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::seal::tests::sample_record;

    #[test]
    fn a_stored_record_parses_on_demand_and_damage_is_a_permanent_error() {
        let mut record = sample_record("dev-a", "G-1", "0");
        record.seal(3, crate::api::record::GENESIS_HASH);
        let json = record.to_canonical_json();
        let from = SpooledRecord::from_record(3, record.clone(), json.clone());
        let stored = SpooledRecord::stored(3, json.clone(), from.meta.clone());
        assert_eq!(stored.record().unwrap(), &record);
        assert_eq!(stored, from);
        let damaged = SpooledRecord::stored(3, json.replace("{\"", "{x"), from.meta.clone());
        assert!(matches!(damaged.record(), Err(SinkError::Permanent(m)) if m.contains("record 3")));
    }
}
