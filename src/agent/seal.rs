//! Sealing a draft into the chain: set `seq` and `prev_hash`, compute `hash`, and produce the
//! canonical JSON that is stored byte for byte in the spool and in every byte-for-byte sink.
//!
//! Equivalent to [`ArchiveRecord::seal`] followed by [`ArchiveRecord::to_canonical_json`], but
//! serialises the record to a JSON value once instead of three times (this is on the backfill's
//! hot path). A unit test pins the equivalence.

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api::record::ArchiveRecord;

/// Seal `record` at `seq` after `prev_hash` and return its canonical JSON (with `hash`).
pub fn seal_canonical(record: &mut ArchiveRecord, seq: u64, prev_hash: &str) -> String {
    record.seq = seq;
    record.prev_hash.clear();
    record.prev_hash.push_str(prev_hash);
    record.hash.clear();
    // serde_json's map is a BTreeMap (no `preserve_order`), so every object is key-sorted.
    let mut value = serde_json::to_value(&*record).expect("ArchiveRecord always serialises");
    let unsealed = serde_json::to_string(&value).expect("a JSON value always serialises");
    let hash = hex::encode(Sha256::digest(unsealed.as_bytes()));
    if let Value::Object(map) = &mut value {
        map.insert("hash".to_owned(), Value::String(hash.clone()));
    }
    record.hash = hash;
    serde_json::to_string(&value).expect("a JSON value always serialises")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::api::record::*;

    /// A complete, realistic record for unit tests (not sealed).
    pub(crate) fn sample_record(device: &str, guid: &str, revision: &str) -> ArchiveRecord {
        ArchiveRecord {
            schema: RECORD_SCHEMA.into(),
            kind: RecordKind::Message,
            idempotency_key: idempotency_key(device, guid, revision),
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
            device: DeviceInfo {
                name: device.into(),
                namespace: Some("desk".into()),
                user_id: Some("u-1".into()),
                agent_version: "0.1.0".into(),
            },
            event_time: "2024-01-01T00:00:00Z".into(),
            event_time_apple_ns: 725_846_400_000_000_000,
            captured_at: "2024-01-01T00:00:01Z".into(),
            clock: ClockInfo {
                source: "system-realtime".into(),
                synchronized: Some(true),
            },
            source: SourceRef {
                table: "message".into(),
                rowid: 7,
                guid: guid.into(),
                revision: revision.into(),
                service: Some("iMessage".into()),
            },
            conversation: Some(Conversation {
                id: conversation_id("iMessage;-;+15550100"),
                guid: "iMessage;-;+15550100".into(),
                chat_identifier: "+15550100".into(),
                service: "iMessage".into(),
                is_group: false,
                display_name: None,
                participants: vec!["+15550100".into()],
                account: Some("e:adviser@example.com".into()),
            }),
            sender: Some(Sender {
                handle: Some("+15550100".into()),
                is_from_me: false,
            }),
            direction: Some(Direction::Inbound),
            body: Some(Body {
                text: "hé \"quoted\" \u{fffc}\n".into(),
                parts: vec![BodyPart {
                    index: 0,
                    text: "hé".into(),
                    attachment_guid: None,
                }],
                subject: None,
                origin: "attributedBody".into(),
            }),
            reply_to: None,
            edit: None,
            unsend: None,
            reaction: None,
            group_event: None,
            deletion: None,
            attachments: vec![],
            decode_errors: vec![],
        }
    }

    #[test]
    fn seal_canonical_equals_seal_then_to_canonical_json() {
        let mut fast = sample_record("dev-a", "G-1", "0");
        let mut slow = fast.clone();
        let json = seal_canonical(&mut fast, 42, GENESIS_HASH);
        slow.seal(42, GENESIS_HASH);
        assert_eq!(fast, slow);
        assert_eq!(json, slow.to_canonical_json());
        assert!(ArchiveRecord::from_json(&json).unwrap().hash_is_valid());
    }

    #[test]
    fn resealing_a_record_replaces_old_chain_fields() {
        let mut r = sample_record("dev-a", "G-1", "0");
        seal_canonical(&mut r, 1, GENESIS_HASH);
        let first = r.hash.clone();
        let json = seal_canonical(&mut r, 2, &first);
        let parsed = ArchiveRecord::from_json(&json).unwrap();
        assert_eq!((parsed.seq, parsed.prev_hash.as_str()), (2, first.as_str()));
        assert!(parsed.hash_is_valid());
    }
}
