//! Sealing a draft into the chain: set `seq` and `prev_hash`, compute `hash`, and produce the
//! canonical JSON that is stored byte for byte in the spool and in every byte-for-byte sink.
//!
//! Equivalent to [`ArchiveRecord::seal`] followed by [`ArchiveRecord::to_canonical_json`], but
//! serialises the record once, directly (the record's structs declare their fields in
//! canonical order), instead of three times through a JSON value (this is on the backfill's
//! hot path). Unit tests pin the equivalence.

use sha2::{Digest, Sha256};

use crate::api::record::ArchiveRecord;

/// Seal `record` at `seq` after `prev_hash` and return its canonical JSON (with `hash`).
pub fn seal_canonical(record: &mut ArchiveRecord, seq: u64, prev_hash: &str) -> String {
    let mut sealer = Sealer::default();
    sealer.seal(record, seq, prev_hash);
    sealer.sealed
}

/// Seals records with reused buffers (the spool seals every record of a backfill).
#[derive(Default)]
pub struct Sealer {
    unsealed: Vec<u8>,
    sealed: String,
}

impl Sealer {
    /// Seal `record` at `seq` after `prev_hash`: sets its chain fields and returns its
    /// canonical JSON (valid until the next call) and its hash.
    pub fn seal(&mut self, record: &mut ArchiveRecord, seq: u64, prev_hash: &str) -> (&str, [u8; 32]) {
        record.seq = seq;
        record.prev_hash.clear();
        record.prev_hash.push_str(prev_hash);
        record.hash.clear();
        // Every struct of the record declares its fields in name order, so serde writes each
        // object key-sorted: the canonical form without building a JSON value first (pinned by
        // `direct_serialisation_is_canonical_with_every_section_present`).
        self.unsealed.clear();
        serde_json::to_writer(&mut self.unsealed, &*record).expect("ArchiveRecord always serialises");
        let hash: [u8; 32] = Sha256::digest(&self.unsealed).into();
        // `hash` sorts right before `idempotency_key`, which every record has. The text
        // `,"idempotency_key":` can only be that top-level member: inside strings quotes are
        // escaped, and no nested object has such a member. So the sealed canonical JSON is the
        // unsealed one with the member spliced in (pinned by a test against the slow path).
        const NEXT: &[u8] = b",\"idempotency_key\":";
        let at = memchr::memmem::find(&self.unsealed, NEXT).expect("every record has an idempotency_key");
        let hex = crate::api::record::sha256_hex(&hash);
        let unsealed = std::str::from_utf8(&self.unsealed).expect("serde_json writes UTF-8");
        self.sealed.clear();
        self.sealed.push_str(&unsealed[..at]);
        self.sealed.push_str(",\"hash\":\"");
        self.sealed.push_str(&hex);
        self.sealed.push('"');
        self.sealed.push_str(&unsealed[at..]);
        record.hash = hex;
        (&self.sealed, hash)
    }
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
                revision: revision.to_owned().into(),
                service: Some("iMessage".into()),
            },
            conversation: Some(std::sync::Arc::new(Conversation {
                id: conversation_id("iMessage;-;+15550100"),
                guid: "iMessage;-;+15550100".into(),
                chat_identifier: "+15550100".into(),
                service: "iMessage".into(),
                is_group: false,
                display_name: None,
                participants: vec!["+15550100".into()],
                account: Some("e:adviser@example.com".into()),
            })),
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

    /// `sample_record` with every optional section and list filled in.
    fn record_with_every_section() -> ArchiveRecord {
        let mut r = sample_record("dev-a", "G-1", "e2");
        r.kind = RecordKind::Edit;
        r.device.user_id = Some("u-2".into());
        r.clock.synchronized = Some(false);
        r.source.service = Some("SMS".into());
        if let Some(c) = &mut r.conversation {
            std::sync::Arc::make_mut(c).display_name = Some("Desk".into());
        }
        if let Some(b) = &mut r.body {
            b.subject = Some("Re: fees".into());
            b.parts[0].attachment_guid = Some("AT-1".into());
        }
        r.reply_to = Some(ReplyRef {
            originator_guid: "G-0".into(),
            originator_part: Some("0:0:12".into()),
        });
        r.edit = Some(EditInfo {
            part: 0,
            revision: 2,
            edited_at: "2024-01-01T00:01:00Z".into(),
            text: "new".into(),
            original_text: Some("old".into()),
        });
        r.unsend = Some(UnsendInfo {
            part: 1,
            unsent_at: "2024-01-01T00:02:00Z".into(),
        });
        r.reaction = Some(ReactionInfo {
            reaction: "love".into(),
            code: 2000,
            target_guid: "G-0".into(),
            target_part: Some(0),
            emoji: Some("\u{2764}".into()),
        });
        r.group_event = Some(GroupEvent {
            action: "renamed".into(),
            new_name: Some("Desk 2".into()),
            member: Some("+15550101".into()),
            item_type: 2,
            group_action_type: 0,
        });
        r.deletion = Some(DeletionInfo {
            last_archived_key: "dev-a/G-0/0".into(),
            detected_at: "2024-01-01T00:03:00Z".into(),
        });
        r.attachments = vec![AttachmentInfo {
            guid: "AT-1".into(),
            name: Some("a.pdf".into()),
            mime_type: Some("application/pdf".into()),
            uti: Some("com.adobe.pdf".into()),
            size: 3,
            sha256: Some("ab".repeat(32)),
            missing: true,
        }];
        r.decode_errors = vec![DecodeError {
            field: "attributedBody".into(),
            error: "truncated".into(),
            raw_base64: "AAE=".into(),
        }];
        r
    }

    #[test]
    fn direct_serialisation_is_canonical_with_every_section_present() {
        let mut r = record_with_every_section();
        let through_value = serde_json::to_value(&r).unwrap();
        // Every optional member is present, so a field added later without sorting shows.
        for section in [
            "reply_to",
            "edit",
            "unsend",
            "reaction",
            "group_event",
            "deletion",
            "attachments",
        ] {
            assert!(
                through_value.get(section).is_some(),
                "{section} missing from the sample"
            );
        }
        assert_eq!(serde_json::to_string(&r).unwrap(), r.to_canonical_json());
        let mut slow = r.clone();
        let json = seal_canonical(&mut r, 7, GENESIS_HASH);
        slow.seal(7, GENESIS_HASH);
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
