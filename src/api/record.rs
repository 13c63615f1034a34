//! The archive record, `capturefleet.dev/record/v1`: the contract between the capture agent,
//! the archive sinks and the auditors who verify an archive.
//!
//! One record per event. Each device's records form a hash chain: `seq` counts from 1 without
//! gaps, `prev_hash` is the previous record's `hash` (64 zeros for the first), and `hash` is the
//! SHA-256 of the record's canonical JSON with the `hash` member left out. Canonical JSON here
//! means: object members sorted by key (byte order), no insignificant whitespace, integers only
//! (the record has no floating-point fields), strings escaped as `serde_json` does. The bytes
//! stored in an archive are exactly [`ArchiveRecord::to_canonical_json`], so any verifier can
//! recompute the chain from the stored lines alone.
//!
//! Every struct here declares its fields in name order, so serialising a record directly
//! writes each object key-sorted, as the canonical form wants (the agent's sealing relies on
//! it; `agent::seal` tests pin it). Keep new fields in order.
//!
//! A record is never dropped because something could not be decoded: the undecodable field is
//! carried in [`DecodeError`] with its raw bytes (base64) and the error.

use std::borrow::Cow;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The schema identifier carried by every record of this version.
pub const RECORD_SCHEMA: &str = "capturefleet.dev/record/v1";

/// `prev_hash` of the first record of a device's chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A message as first seen (text, parts, attachments' metadata).
    Message,
    /// A message that replies inside a thread (`reply_to` is set).
    Reply,
    /// A new revision of an edited message part (`edit` is set; earlier revisions stay in the
    /// archive as their own records).
    Edit,
    /// A message part was unsent by its sender (`unsend` is set).
    Unsend,
    /// A tapback was added to a message (`reaction` is set).
    ReactionAdded,
    /// A tapback was removed from a message (`reaction` is set).
    ReactionRemoved,
    /// An attachment's file was captured (`attachments[0]` carries its hash and size).
    Attachment,
    /// A group chat was renamed (`group_event` is set).
    GroupRenamed,
    /// A member was added to a group chat.
    GroupMemberAdded,
    /// A member was removed from a group chat by someone else.
    GroupMemberRemoved,
    /// A member left a group chat.
    GroupMemberLeft,
    /// A group chat's photo was changed or removed.
    GroupIconChanged,
    /// A row the agent archived earlier disappeared from chat.db (deleted on the device or
    /// purged); the archived original stays.
    DeletionDetected,
    /// A row could not be interpreted at all; `decode_errors` holds its raw columns.
    DecodeError,
}

impl RecordKind {
    /// The snake_case name used in JSON and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Message => "message",
            RecordKind::Reply => "reply",
            RecordKind::Edit => "edit",
            RecordKind::Unsend => "unsend",
            RecordKind::ReactionAdded => "reaction_added",
            RecordKind::ReactionRemoved => "reaction_removed",
            RecordKind::Attachment => "attachment",
            RecordKind::GroupRenamed => "group_renamed",
            RecordKind::GroupMemberAdded => "group_member_added",
            RecordKind::GroupMemberRemoved => "group_member_removed",
            RecordKind::GroupMemberLeft => "group_member_left",
            RecordKind::GroupIconChanged => "group_icon_changed",
            RecordKind::DeletionDetected => "deletion_detected",
            RecordKind::DecodeError => "decode_error",
        }
    }
}

/// One archived event. Optional sections are present only for the kinds that use them, and
/// are left out of the JSON when absent (so they do not take part in the hash).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ArchiveRecord {
    /// Attachments of a message, or the one captured attachment of an `attachment` record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentInfo>,
    /// Text of a message or reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Body>,
    /// When the agent captured the event (UTC, RFC 3339 with nanoseconds).
    pub captured_at: String,
    /// Which clock produced `captured_at`.
    pub clock: ClockInfo,
    /// The conversation the event belongs to (absent only for rows in no chat). Shared: every
    /// record of a chat holds the same one (it serialises as the object itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<Arc<Conversation>>,
    /// Everything that could not be decoded, with the raw bytes. Never silently dropped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decode_errors: Vec<DecodeError>,
    /// For `deletion_detected` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion: Option<DeletionInfo>,
    /// The capture device and the employee it belongs to.
    pub device: DeviceInfo,
    /// Inbound (to the employee) or outbound (from the employee).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// For `edit` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit: Option<EditInfo>,
    /// When the event happened, per the device's database (UTC, RFC 3339 with nanoseconds).
    pub event_time: String,
    /// The raw Apple timestamp behind `event_time`: nanoseconds since 2001-01-01T00:00:00Z.
    pub event_time_apple_ns: i64,
    /// For group records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_event: Option<GroupEvent>,
    /// SHA-256 (lowercase hex) of this record's canonical JSON without this member.
    /// Empty until [`ArchiveRecord::seal`] is called.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    /// `device/guid/revision`: stable across re-reads, so a redelivered or re-captured event
    /// can be recognised as the same event.
    pub idempotency_key: String,
    /// What happened.
    pub kind: RecordKind,
    /// `hash` of the record with `seq - 1`, or [`GENESIS_HASH`].
    pub prev_hash: String,
    /// For `reaction_added` / `reaction_removed` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction: Option<ReactionInfo>,
    /// The thread this message replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyRef>,
    /// Always [`RECORD_SCHEMA`].
    pub schema: Cow<'static, str>,
    /// Who sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<Sender>,
    /// Position in the device's chain, from 1, without gaps.
    pub seq: u64,
    /// Where in chat.db the event was read.
    pub source: SourceRef,
    /// For `unsend` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsend: Option<UnsendInfo>,
}

/// The capture device and its employee.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct DeviceInfo {
    /// The capture agent's version.
    pub agent_version: String,
    /// CaptureDevice name (or `--device` for local runs).
    pub name: String,
    /// CaptureDevice namespace, when run by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The employee's immutable user id (`spec.user.id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

/// Provenance of `captured_at`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ClockInfo {
    /// `system-realtime` (CLOCK_REALTIME of the agent's host).
    pub source: Cow<'static, str>,
    /// Whether the kernel reported the clock as NTP-synchronised at capture time, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synchronized: Option<bool>,
}

/// Where the event was read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct SourceRef {
    /// The row's GUID.
    pub guid: String,
    /// The revision of that row this record describes, as in the idempotency key
    /// `device/guid/revision` (see [`revision`] for the builders):
    /// - `0`: the row as first sent — a message or reply (edited parts carry their original
    ///   text, from the edit history), a tapback, a group event, a row-level decode error
    ///   (whose guid is `rowid-<ROWID>` when the row has none); for an `attachment` record
    ///   (`table` = `attachment`, `guid` = the attachment's GUID) the file was captured;
    /// - `p<part>e<n>`: edit `n` (1-based; the `n`-th entry after the original in
    ///   `message_summary_info.ec[part]`) of part `part`;
    /// - `e@<apple-ns>`: an edit without history (pre-Ventura rows), keyed by `date_edited`;
    /// - `p<part>u`: part `part` was unsent;
    /// - `missing`: an attachment referenced but not on the device (a later `0` record
    ///   follows if the file arrives); `metadata`: an attachment under `MetadataOnly`;
    /// - `deleted`: the row disappeared from chat.db (or moved to Recently Deleted).
    ///
    /// Every revision is a function of the database content alone, so re-reading the same
    /// state yields the same keys.
    pub revision: Cow<'static, str>,
    /// The row's ROWID.
    pub rowid: i64,
    /// The Messages service: `iMessage`, `SMS`, `RCS`, `iMessageLite`, or what the row said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The table (`message`, `attachment`, …).
    pub table: Cow<'static, str>,
}

/// A conversation (chat).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Conversation {
    /// The employee's own receiving address for this chat, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// `chat_identifier` (phone, e-mail or `chat…` id for groups).
    pub chat_identifier: String,
    /// The group's current name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The chat's GUID in chat.db.
    pub guid: String,
    /// Stable id: lowercase hex SHA-256 of the chat's GUID, first 32 characters.
    pub id: String,
    /// Whether it is a group chat.
    pub is_group: bool,
    /// The other participants' handles (phone numbers in E.164 or e-mail addresses), sorted.
    pub participants: Vec<String>,
    /// The chat's service name.
    pub service: String,
}

/// The sender of a message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Sender {
    /// The sender's handle; for outbound messages, the employee's own address when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
    /// Whether the employee sent it.
    pub is_from_me: bool,
}

/// Direction relative to the employee.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Received by the employee.
    Inbound,
    /// Sent by the employee.
    Outbound,
}

/// Message text, whole and by part.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Body {
    /// Where the text came from: `text` column, `attributedBody`, or `none`.
    pub origin: String,
    /// The message's parts in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<BodyPart>,
    /// The message subject, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The full text; U+FFFC marks where an attachment sits.
    pub text: String,
}

/// One part of a message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct BodyPart {
    /// The attachment GUID this part shows, when it is an attachment part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment_guid: Option<String>,
    /// Part index (`__kIMMessagePartAttributeName`).
    pub index: u32,
    /// The part's text (U+FFFC for an attachment part).
    pub text: String,
}

/// Reply threading.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplyRef {
    /// GUID of the thread's first message.
    pub originator_guid: String,
    /// `thread_originator_part` as stored (`part:start:len`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub originator_part: Option<String>,
}

/// One revision of an edited part.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct EditInfo {
    /// When the edit was made (RFC 3339 UTC).
    pub edited_at: String,
    /// The original text of the part as first captured, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_text: Option<String>,
    /// The edited part.
    pub part: u32,
    /// Revision number within the part (1 = first edit; 0 is the original message).
    pub revision: u32,
    /// The text of this revision.
    pub text: String,
}

/// An unsent part.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct UnsendInfo {
    /// The unsent part.
    pub part: u32,
    /// When the unsend was seen (`date_edited` of the row, RFC 3339 UTC).
    pub unsent_at: String,
}

/// A tapback.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct ReactionInfo {
    /// The raw `associated_message_type`.
    pub code: i64,
    /// The custom emoji, for `emoji` reactions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// `love`, `like`, `dislike`, `laugh`, `emphasize`, `question`, `emoji`, `sticker`, or
    /// `unknown(<code>)`.
    pub reaction: String,
    /// GUID of the message reacted to.
    pub target_guid: String,
    /// The part reacted to (`p:<part>/` prefix), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_part: Option<u32>,
}

/// A group change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct GroupEvent {
    /// `renamed`, `member_added`, `member_removed`, `member_left`, `icon_changed`, `icon_removed`.
    pub action: String,
    /// Raw `group_action_type`.
    pub group_action_type: i64,
    /// Raw `item_type` / `group_action_type`.
    pub item_type: i64,
    /// The member added or removed, when the row names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The new name, for renames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_name: Option<String>,
}

/// A row that disappeared from chat.db.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct DeletionInfo {
    /// When the agent noticed (RFC 3339 UTC).
    pub detected_at: String,
    /// The idempotency key of the last record archived for that row.
    pub last_archived_key: String,
}

/// Attachment metadata, and its content hash once captured.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct AttachmentInfo {
    /// The attachment's GUID.
    pub guid: String,
    /// MIME type, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    /// True when chat.db references the file but it is not on the device (e.g. iCloud
    /// "optimise storage"), or capture policy is `MetadataOnly`.
    pub missing: bool,
    /// The file name the sender gave it (`transfer_name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Lowercase hex SHA-256 of the file's bytes, when the file was captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Size in bytes (of the captured file when captured, else `total_bytes`).
    pub size: u64,
    /// Uniform type identifier, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uti: Option<String>,
}

/// Something that could not be decoded, kept with its raw bytes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct DecodeError {
    /// What went wrong.
    pub error: String,
    /// The column or structure (`attributedBody`, `message_summary_info`, …).
    pub field: String,
    /// The raw bytes, base64 (standard alphabet, padded).
    pub raw_base64: String,
}

/// A record failed to (de)serialise or its chain fields are malformed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The JSON could not be parsed as a v1 record.
    #[error("not a valid {RECORD_SCHEMA} record: {0}")]
    Parse(#[from] serde_json::Error),
    /// The record names a different schema.
    #[error("unsupported record schema {0:?} (expected {RECORD_SCHEMA})")]
    Schema(String),
}

impl ArchiveRecord {
    /// Canonical JSON of the record as it is (including `hash` when set).
    pub fn to_canonical_json(&self) -> String {
        // serde_json::Value's map is a BTreeMap (the `preserve_order` feature is not enabled),
        // so serialising through a Value sorts every object's keys.
        let value = serde_json::to_value(self).expect("ArchiveRecord always serialises");
        serde_json::to_string(&value).expect("a JSON value always serialises")
    }

    /// The hash this record should carry: SHA-256 of its canonical JSON without `hash`.
    pub fn compute_hash(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.hash.clear();
        sha256_hex(&Sha256::digest(unsealed.to_canonical_json().as_bytes()).into())
    }

    /// Put the record into a chain after the record `prev_hash` at position `seq`, and set
    /// its hash.
    pub fn seal(&mut self, seq: u64, prev_hash: &str) {
        self.seq = seq;
        self.prev_hash = prev_hash.to_owned();
        self.hash = self.compute_hash();
    }

    /// Whether the stored hash matches the content.
    pub fn hash_is_valid(&self) -> bool {
        !self.hash.is_empty() && self.hash == self.compute_hash()
    }

    /// Parse one stored line.
    pub fn from_json(line: &str) -> Result<Self, RecordError> {
        let record: ArchiveRecord = serde_json::from_str(line)?;
        if record.schema != RECORD_SCHEMA {
            return Err(RecordError::Schema(record.schema.into_owned()));
        }
        Ok(record)
    }
}

/// Whether `s` is a SHA-256 as records carry it: 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A SHA-256 as records carry it (64 lowercase hex digits). `hex::encode` collects an
/// iterator of chars; this runs for every record sealed and delivered.
pub fn sha256_hex(hash: &[u8; 32]) -> String {
    let mut out = vec![0u8; 64];
    hex::encode_to_slice(hash, &mut out).expect("64 hex digits for 32 bytes");
    String::from_utf8(out).expect("hex digits are ASCII")
}

/// Builds the idempotency key `device/guid/revision`.
pub fn idempotency_key(device: &str, guid: &str, revision: &str) -> String {
    let mut key = String::with_capacity(device.len() + guid.len() + revision.len() + 2);
    key.push_str(device);
    key.push('/');
    key.push_str(guid);
    key.push('/');
    key.push_str(revision);
    key
}

/// Builders of [`SourceRef::revision`] values.
pub mod revision {
    /// A row as first sent; a captured attachment.
    pub const ORIGINAL: &str = "0";
    /// A row that disappeared.
    pub const DELETED: &str = "deleted";
    /// An attachment whose file is not on the device.
    pub const MISSING: &str = "missing";
    /// An attachment under the `MetadataOnly` policy.
    pub const METADATA: &str = "metadata";

    /// Edit `n` (≥ 1) of `part`.
    pub fn edit(part: u32, n: u32) -> String {
        format!("p{part}e{n}")
    }

    /// An edit without history, at `date_edited` (Apple-epoch nanoseconds).
    pub fn edit_without_history(date_edited_ns: i64) -> String {
        format!("e@{date_edited_ns}")
    }

    /// The unsend of `part`.
    pub fn unsend(part: u32) -> String {
        format!("p{part}u")
    }
}

/// The stable conversation id for a chat GUID.
pub fn conversation_id(chat_guid: &str) -> String {
    hex::encode(Sha256::digest(chat_guid.as_bytes()))[..32].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_is_lowercase_hex_of_every_byte() {
        let mut hash = [0u8; 32];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(0xa5);
        }
        for h in [[0u8; 32], [0xff; 32], hash] {
            let text = sha256_hex(&h);
            assert_eq!(text, hex::encode(h));
            assert!(is_sha256_hex(&text), "{text}");
        }
    }

    fn sample() -> ArchiveRecord {
        ArchiveRecord {
            schema: RECORD_SCHEMA.into(),
            kind: RecordKind::Message,
            idempotency_key: idempotency_key("dev-a", "GUID-1", "0"),
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
            device: DeviceInfo {
                name: "dev-a".into(),
                agent_version: "0.1.0".into(),
                ..Default::default()
            },
            event_time: "2024-01-01T00:00:00Z".into(),
            event_time_apple_ns: 725_846_400_000_000_000,
            captured_at: "2024-01-01T00:00:01Z".into(),
            clock: ClockInfo {
                source: "system-realtime".into(),
                synchronized: None,
            },
            source: SourceRef {
                table: "message".into(),
                rowid: 1,
                guid: "GUID-1".into(),
                revision: "0".into(),
                service: Some("iMessage".into()),
            },
            conversation: None,
            sender: Some(Sender {
                handle: Some("+15550100".into()),
                is_from_me: false,
            }),
            direction: Some(Direction::Inbound),
            body: Some(Body {
                text: "hé \"quoted\"\n".into(),
                parts: vec![],
                subject: None,
                origin: "text".into(),
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
    fn canonical_json_sorts_keys_and_omits_absent_sections() {
        let json = sample().to_canonical_json();
        let keys: Vec<&str> = json
            .match_indices("\":")
            .map(|(i, _)| &json[json[..i].rfind('"').unwrap() + 1..i])
            .collect();
        assert!(
            keys.starts_with(&["body", "origin", "text", "captured_at", "clock"]),
            "{keys:?}"
        );
        assert!(!json.contains("reaction"), "absent sections must not appear: {json}");
        assert!(
            !json.contains(' ') || json.contains("hé"),
            "no insignificant whitespace"
        );
    }

    #[test]
    fn seal_chains_and_detects_alteration() {
        let mut first = sample();
        first.seal(1, GENESIS_HASH);
        assert!(first.hash_is_valid());
        let mut second = sample();
        second.idempotency_key = idempotency_key("dev-a", "GUID-2", "0");
        second.seal(2, &first.hash);
        assert_eq!(second.prev_hash, first.hash);
        assert_ne!(first.hash, second.hash);

        let stored = second.to_canonical_json();
        let mut parsed = ArchiveRecord::from_json(&stored).unwrap();
        assert!(parsed.hash_is_valid());
        assert_eq!(parsed.to_canonical_json(), stored, "round trip is byte-identical");
        parsed.body.as_mut().unwrap().text.push('!');
        assert!(!parsed.hash_is_valid(), "a changed body must break the hash");
    }

    #[test]
    fn rejects_other_schema_and_unknown_fields() {
        let mut r = sample();
        r.schema = "capturefleet.dev/record/v0".into();
        assert!(matches!(
            ArchiveRecord::from_json(&r.to_canonical_json()),
            Err(RecordError::Schema(_))
        ));
        let line = sample().to_canonical_json().replacen('{', "{\"extra\":1,", 1);
        assert!(matches!(ArchiveRecord::from_json(&line), Err(RecordError::Parse(_))));
    }

    #[test]
    fn conversation_id_is_stable_and_short() {
        assert_eq!(
            conversation_id("iMessage;-;+15550100"),
            conversation_id("iMessage;-;+15550100")
        );
        assert_eq!(conversation_id("x").len(), 32);
    }
}
