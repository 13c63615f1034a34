//! [`SpooledRecord`]: a sealed record as the spool hands it to sinks — its exact stored bytes,
//! the chain fields and the little the delivery path needs in binary, and the parsed record
//! on demand (most sinks write the bytes and never need it).

use std::fmt;
use std::ops::{Deref, Range};
use std::sync::{Arc, OnceLock};

use super::SinkError;
use crate::api::record::{ArchiveRecord, RecordKind};

/// A record's stored JSON. The records of one spool batch share one buffer holding their
/// lines back to back, each followed by a newline, so a sink can write consecutive records
/// with one write and no copy ([`StoredJson::line_run`]).
#[derive(Clone)]
pub struct StoredJson {
    text: Arc<String>,
    range: Range<usize>,
}

impl StoredJson {
    /// The record `text[range]` of a shared batch buffer (`range` must fall on character
    /// boundaries).
    pub fn shared(text: Arc<String>, range: Range<usize>) -> Self {
        assert!(
            text.get(range.clone()).is_some(),
            "a stored record is a slice of its batch's text"
        );
        StoredJson { text, range }
    }

    /// The JSON.
    pub fn as_str(&self) -> &str {
        &self.text[self.range.clone()]
    }

    /// The bytes of `records`' lines (JSON plus newline) as one slice of their shared buffer,
    /// when they are consecutive lines of one buffer (None otherwise).
    pub fn line_run<'a>(records: impl IntoIterator<Item = &'a StoredJson>) -> Option<&'a [u8]> {
        let mut records = records.into_iter();
        let first = records.next()?;
        let mut end = first.range.end;
        for next in records {
            if !Arc::ptr_eq(&next.text, &first.text) || next.range.start != end + 1 {
                return None;
            }
            end = next.range.end;
        }
        (first.text.as_bytes().get(end) == Some(&b'\n')).then(|| &first.text.as_bytes()[first.range.start..=end])
    }
}

impl From<String> for StoredJson {
    fn from(mut json: String) -> Self {
        let end = json.len();
        json.push('\n');
        StoredJson {
            text: Arc::new(json),
            range: 0..end,
        }
    }
}

impl Deref for StoredJson {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for StoredJson {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for StoredJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for StoredJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for StoredJson {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<str> for StoredJson {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<String> for StoredJson {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

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
    pub json: StoredJson,
    /// The chain fields and what delivery needs, without parsing.
    pub meta: RecordMeta,
    /// Boxed: most sinks never parse, and a batch should not carry a record's size per entry.
    parsed: OnceLock<Box<Result<ArchiveRecord, String>>>,
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
    pub fn stored(seq: u64, json: StoredJson, meta: RecordMeta) -> Self {
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
            json: json.into(),
            meta,
            parsed: OnceLock::from(Box::new(Ok(record))),
        }
    }

    /// The parsed record (parsed once, on first use). The spool only stores JSON it produced,
    /// so a failure means the stored bytes were damaged: a permanent error for the batch.
    pub fn record(&self) -> Result<&ArchiveRecord, SinkError> {
        self.parsed
            .get_or_init(|| Box::new(ArchiveRecord::from_json(&self.json).map_err(|e| e.to_string())))
            .as_ref()
            .as_ref()
            .map_err(|e| SinkError::Permanent(format!("stored record {} does not parse: {e}", self.seq)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::seal::tests::sample_record;

    #[test]
    fn consecutive_lines_of_one_buffer_are_one_run() {
        let text = Arc::new("{\"a\":1}\n{\"b\":2}\n{\"c\":3}\n".to_string());
        let a = StoredJson::shared(Arc::clone(&text), 0..7);
        let b = StoredJson::shared(Arc::clone(&text), 8..15);
        let c = StoredJson::shared(Arc::clone(&text), 16..23);
        assert_eq!((&*a, b.as_str()), ("{\"a\":1}", "{\"b\":2}"));
        assert_eq!(StoredJson::line_run([&a, &b, &c]), Some(text.as_bytes()));
        assert_eq!(StoredJson::line_run([&b]), Some(&text.as_bytes()[8..16]));
        assert_eq!(StoredJson::line_run([&a, &c]), None, "not consecutive");
        let own = StoredJson::from("{\"a\":1}".to_string());
        assert_eq!(own, a);
        assert_eq!(StoredJson::line_run([&own]), Some(&b"{\"a\":1}\n"[..]));
        assert_eq!(StoredJson::line_run([&a, &own]), None, "other buffer");
    }

    #[test]
    fn a_stored_record_parses_on_demand_and_damage_is_a_permanent_error() {
        let mut record = sample_record("dev-a", "G-1", "0");
        record.seal(3, crate::api::record::GENESIS_HASH);
        let json = record.to_canonical_json();
        let from = SpooledRecord::from_record(3, record.clone(), json.clone());
        let stored = SpooledRecord::stored(3, json.clone().into(), from.meta.clone());
        assert_eq!(stored.record().unwrap(), &record);
        assert_eq!(stored, from);
        let damaged = SpooledRecord::stored(3, json.replace("{\"", "{x").into(), from.meta.clone());
        assert!(matches!(damaged.record(), Err(SinkError::Permanent(m)) if m.contains("record 3")));
    }
}
