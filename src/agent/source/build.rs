//! Builds drafts (unsealed archive records) from `message` rows: pure given the row and the
//! lookups, so reading the same database state twice yields the same records (except
//! `captured_at`).
//!
//! Revisions (the last part of the idempotency key `device/guid/revision`) are documented on
//! [`crate::api::record::SourceRef::revision`].

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use base64::Engine;

use super::Draft;
use super::attachment::Captured;
use super::message::MessageRow;
use crate::api::record::{
    ArchiveRecord, Body, BodyPart, ClockInfo, Conversation, DecodeError, DeletionInfo, DeviceInfo, Direction, EditInfo,
    GroupEvent, RECORD_SCHEMA, ReactionInfo, RecordKind, ReplyRef, Sender, SourceRef, UnsendInfo, idempotency_key,
};
use crate::apple::codes::{self, Tapback};
use crate::apple::epoch;
use crate::apple::summary_info::SummaryInfo;
use crate::apple::typedstream;

pub use crate::api::record::revision::{
    DELETED as REV_DELETED, METADATA as REV_METADATA, MISSING as REV_MISSING, ORIGINAL as REV_ORIGINAL,
};
use crate::api::record::revision::{
    edit as rev_edit, edit_without_history as rev_edit_without_history, unsend as rev_unsend,
};

/// Everything that is the same for every record of one poll.
pub struct Stamp<'a> {
    /// The device.
    pub device: &'a DeviceInfo,
    /// `captured_at` (RFC 3339).
    pub captured_at: String,
    /// Now, Apple-epoch nanoseconds.
    pub now_apple_ns: i64,
}

/// Lookups a row needs, resolved by the caller.
pub struct RowContext {
    /// The chat the row is in.
    pub conversation: Option<Arc<Conversation>>,
    /// `handle.id` of `handle_id`.
    pub handle: Option<Arc<str>>,
    /// `handle.id` of `other_handle` (group membership changes).
    pub other_handle: Option<Arc<str>>,
    /// The row's attachments, captured per policy.
    pub attachments: Vec<Captured>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode_error(field: &str, error: impl ToString, raw: &[u8]) -> DecodeError {
    DecodeError {
        field: field.to_owned(),
        error: error.to_string(),
        raw_base64: b64(raw),
    }
}

impl Stamp<'_> {
    /// A record with the fields every kind has.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        kind: RecordKind,
        table: &'static str,
        rowid: i64,
        guid: &str,
        revision: impl Into<Cow<'static, str>>,
        event_ns: i64,
        service: Option<String>,
    ) -> ArchiveRecord {
        let revision = revision.into();
        ArchiveRecord {
            schema: Cow::Borrowed(RECORD_SCHEMA),
            kind,
            idempotency_key: idempotency_key(&self.device.name, guid, &revision),
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
            device: self.device.clone(),
            event_time: epoch::rfc3339_from_apple_ns(event_ns),
            event_time_apple_ns: event_ns,
            captured_at: self.captured_at.clone(),
            clock: ClockInfo {
                source: Cow::Borrowed("system-realtime"),
                synchronized: None,
            },
            source: SourceRef {
                table: Cow::Borrowed(table),
                rowid,
                guid: guid.to_owned(),
                revision,
                service,
            },
            conversation: None,
            sender: None,
            direction: None,
            body: None,
            reply_to: None,
            edit: None,
            unsend: None,
            reaction: None,
            group_event: None,
            deletion: None,
            attachments: Vec::new(),
            decode_errors: Vec::new(),
        }
    }

    /// A `deletion_detected` record for a GUID no longer in chat.db.
    pub fn deletion(&self, guid: &str, last_archived_key: &str) -> Draft {
        let mut r = self.record(
            RecordKind::DeletionDetected,
            "message",
            0,
            guid,
            REV_DELETED,
            self.now_apple_ns,
            None,
        );
        r.deletion = Some(DeletionInfo {
            last_archived_key: last_archived_key.to_owned(),
            detected_at: r.captured_at.clone(),
        });
        Draft {
            record: r,
            files: Vec::new(),
        }
    }
}

/// The body of a row, as first sent: `attributedBody` when present (else `text`), with the
/// parts that were edited replaced by their original text from the edit history.
fn body(row: &MessageRow, summary: Option<&SummaryInfo>, errors: &mut Vec<DecodeError>) -> Option<Body> {
    let mut decoded = None;
    if let Some(blob) = &row.attributed_body {
        match typedstream::parts_from_typedstream(blob) {
            Ok(parts) => decoded = Some(parts),
            Err(e) => errors.push(decode_error("attributedBody", e, blob)),
        }
    }
    let decoded_some = decoded.is_some();
    let (mut parts, origin) = match (decoded, &row.text) {
        (Some(parts), _) => (
            parts
                .into_iter()
                .map(|p| BodyPart {
                    index: p.index,
                    text: p.text,
                    attachment_guid: p.attachment_guid,
                })
                .collect::<Vec<_>>(),
            "attributedBody",
        ),
        (None, Some(t)) => (
            vec![BodyPart {
                index: 0,
                text: t.clone(),
                attachment_guid: None,
            }],
            "text",
        ),
        (None, None) => (Vec::new(), "none"),
    };
    if let Some(summary) = summary {
        for (part, revisions) in &summary.history {
            let Some(original) = revisions.first().and_then(|r| r.text()) else {
                continue;
            };
            match parts.iter_mut().find(|p| p.index == *part) {
                Some(p) => p.text = original.to_owned(),
                None => parts.push(BodyPart {
                    index: *part,
                    text: original.to_owned(),
                    attachment_guid: None,
                }),
            }
        }
        parts.sort_by_key(|p| p.index);
    }
    if parts.is_empty() && row.subject.is_none() {
        return None;
    }
    // A single plain part says nothing the text does not.
    let keep_parts = parts.len() > 1 || parts.iter().any(|p| p.attachment_guid.is_some() || p.index != 0);
    let text: String = if keep_parts {
        parts.iter().map(|p| p.text.as_str()).collect()
    } else {
        // At most one part: its text is the whole text.
        parts.pop().map(|p| p.text).unwrap_or_default()
    };
    let origin = if summary.is_some_and(|s| !s.history.is_empty()) && !decoded_some && row.text.is_none() {
        "message_summary_info"
    } else {
        origin
    };
    Some(Body {
        text,
        parts,
        subject: row.subject.clone(),
        origin: origin.to_owned(),
    })
}

/// All drafts of one row, in chain order: the row's own record, then edits (in time order),
/// unsends, then one attachment record per attachment. Drafts whose key the index already
/// holds are left out by the caller.
pub fn row_drafts(stamp: &Stamp<'_>, row: &MessageRow, ctx: RowContext) -> Vec<Draft> {
    let mut out = VecDeque::new();
    row_drafts_into(stamp, row, ctx, &mut out);
    out.into()
}

/// [`row_drafts`], appended to `out` (where the reader queues them: a draft is a large value,
/// and this moves it once instead of through a vector of its own).
pub fn row_drafts_into(stamp: &Stamp<'_>, row: &MessageRow, ctx: RowContext, out: &mut VecDeque<Draft>) {
    let date_ns = epoch::normalize_to_ns(row.date);
    let service = row.service.as_deref().map(codes::canonical_service);
    let Some(guid) = row.guid.as_deref() else {
        out.push_back(row_decode_error(stamp, row, date_ns, service, "the row has no guid"));
        return;
    };
    let first = out.len();
    let mut errors: Vec<DecodeError> = row
        .errors
        .iter()
        .map(|e| decode_error(e.column, &e.error, &e.raw))
        .collect();
    let summary = row
        .summary_info
        .as_deref()
        .and_then(|blob| match SummaryInfo::decode(blob) {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(decode_error("message_summary_info", e, blob));
                None
            }
        });

    let kind;
    let mut record;
    let group = codes::group_action(row.item_type, row.group_action_type);
    let tapback = codes::tapback(row.associated_message_type);
    if let Some(action) = group {
        kind = match action {
            codes::GroupAction::MemberAdded => RecordKind::GroupMemberAdded,
            codes::GroupAction::MemberRemoved => RecordKind::GroupMemberRemoved,
            codes::GroupAction::Renamed => RecordKind::GroupRenamed,
            codes::GroupAction::MemberLeft => RecordKind::GroupMemberLeft,
            codes::GroupAction::IconChanged | codes::GroupAction::IconRemoved => RecordKind::GroupIconChanged,
        };
        record = stamp.record(kind, "message", row.rowid, guid, REV_ORIGINAL, date_ns, None);
        record.group_event = Some(GroupEvent {
            action: action.as_str().to_owned(),
            new_name: if action == codes::GroupAction::Renamed {
                row.group_title.clone()
            } else {
                None
            },
            member: match action {
                codes::GroupAction::MemberAdded | codes::GroupAction::MemberRemoved => {
                    ctx.other_handle.as_deref().map(str::to_owned)
                }
                codes::GroupAction::MemberLeft => ctx.handle.as_deref().map(str::to_owned),
                _ => None,
            },
            item_type: row.item_type,
            group_action_type: row.group_action_type,
        });
    } else if let Some(t) = tapback {
        let (k, added) = match t {
            Tapback::Added(k) => (k, true),
            Tapback::Removed(k) => (k, false),
        };
        kind = if added {
            RecordKind::ReactionAdded
        } else {
            RecordKind::ReactionRemoved
        };
        record = stamp.record(kind, "message", row.rowid, guid, REV_ORIGINAL, date_ns, None);
        let (target_guid, target_part) =
            codes::parse_associated_guid(row.associated_message_guid.as_deref().unwrap_or(""));
        record.reaction = Some(ReactionInfo {
            reaction: k.as_str().to_owned(),
            code: row.associated_message_type,
            target_guid,
            target_part,
            emoji: row.associated_message_emoji.clone(),
        });
        record.body = body(row, summary.as_ref(), &mut errors);
    } else {
        kind = if row.thread_originator_guid.is_some() {
            RecordKind::Reply
        } else {
            RecordKind::Message
        };
        record = stamp.record(kind, "message", row.rowid, guid, REV_ORIGINAL, date_ns, None);
        record.body = body(row, summary.as_ref(), &mut errors);
        record.reply_to = row.thread_originator_guid.as_ref().map(|g| ReplyRef {
            originator_guid: g.clone(),
            originator_part: row.thread_originator_part.clone(),
        });
    }
    let sender = if row.is_from_me {
        let own = row
            .destination_caller_id
            .as_deref()
            .or(row.account.as_deref())
            .map(|a| super::handle::bare_address(a).to_owned())
            .filter(|a| !a.is_empty())
            .or_else(|| ctx.conversation.as_ref().and_then(|c| c.account.clone()));
        Sender {
            handle: own,
            is_from_me: true,
        }
    } else {
        Sender {
            handle: ctx.handle.as_deref().map(str::to_owned),
            is_from_me: false,
        }
    };
    let direction = if row.is_from_me {
        Direction::Outbound
    } else {
        Direction::Inbound
    };
    let conversation = ctx.conversation.clone();
    record.attachments = ctx.attachments.iter().map(|c| c.info.clone()).collect();
    record.decode_errors = errors;
    out.push_back(Draft {
        record,
        files: Vec::new(),
    });

    // Edits: every revision after the original, in time order.
    let date_edited_ns = epoch::normalize_to_ns(row.date_edited);
    if let Some(summary) = &summary {
        for rev in summary.edits() {
            let at = rev.at_ns.unwrap_or(date_edited_ns);
            let revision = rev_edit(rev.part, rev.index);
            let mut r = stamp.record(RecordKind::Edit, "message", row.rowid, guid, revision, at, None);
            let original = summary
                .history
                .get(&rev.part)
                .and_then(|h| h.first())
                .and_then(|o| o.text())
                .map(str::to_owned);
            r.edit = Some(EditInfo {
                part: rev.part,
                revision: rev.index,
                edited_at: epoch::rfc3339_from_apple_ns(at),
                text: rev.text().unwrap_or_default().to_owned(),
                original_text: original,
            });
            if let Err(e) = &rev.body {
                r.decode_errors.push(decode_error(
                    &format!("message_summary_info.ec.{}.{}.t", rev.part, rev.index),
                    e,
                    &rev.raw,
                ));
            }
            out.push_back(Draft {
                record: r,
                files: Vec::new(),
            });
        }
    }
    let has_history = summary.as_ref().is_some_and(|s| !s.history.is_empty());
    let unsent: &[u32] = summary.as_ref().map(|s| s.unsent_parts.as_slice()).unwrap_or(&[]);
    if date_edited_ns != 0 && !has_history && unsent.is_empty() && group.is_none() && tapback.is_none() {
        // Edited before edit histories existed: the row holds only the latest text.
        let revision = rev_edit_without_history(date_edited_ns);
        let mut r = stamp.record(
            RecordKind::Edit,
            "message",
            row.rowid,
            guid,
            revision,
            date_edited_ns,
            None,
        );
        let text = out[first]
            .record
            .body
            .as_ref()
            .map(|b| b.text.clone())
            .unwrap_or_default();
        r.edit = Some(EditInfo {
            part: 0,
            revision: 0,
            edited_at: epoch::rfc3339_from_apple_ns(date_edited_ns),
            text,
            original_text: None,
        });
        out.push_back(Draft {
            record: r,
            files: Vec::new(),
        });
    }
    for part in unsent {
        let at = if date_edited_ns != 0 {
            date_edited_ns
        } else if row.date_retracted != 0 {
            epoch::normalize_to_ns(row.date_retracted)
        } else {
            date_ns
        };
        let mut r = stamp.record(
            RecordKind::Unsend,
            "message",
            row.rowid,
            guid,
            rev_unsend(*part),
            at,
            None,
        );
        r.unsend = Some(UnsendInfo {
            part: *part,
            unsent_at: epoch::rfc3339_from_apple_ns(at),
        });
        out.push_back(Draft {
            record: r,
            files: Vec::new(),
        });
    }

    for captured in ctx.attachments {
        let revision = match (&captured.path, captured.info.missing) {
            (Some(_), false) => REV_ORIGINAL,
            _ if captured.policy_skipped => REV_METADATA,
            _ => REV_MISSING,
        };
        let aguid = if captured.row.guid.is_empty() {
            format!("attachment-rowid-{}", captured.row.rowid)
        } else {
            captured.row.guid.clone()
        };
        let mut r = stamp.record(
            RecordKind::Attachment,
            "attachment",
            captured.row.rowid,
            &aguid,
            revision,
            date_ns,
            None,
        );
        let files = match (&captured.path, &captured.info.sha256) {
            (Some(p), Some(h)) => vec![(h.clone(), p.clone())],
            _ => Vec::new(),
        };
        r.attachments = vec![captured.info];
        out.push_back(Draft { record: r, files });
    }

    // What every record of the row carries: the conversation, the sender, the direction and the
    // service (the last record takes the sender and service, the others copies).
    let last = out.len().saturating_sub(1);
    let mut sender = Some(sender);
    let mut service = service;
    for (i, d) in out.iter_mut().enumerate().skip(first) {
        let r = &mut d.record;
        r.conversation = conversation.clone();
        r.direction = Some(direction);
        if i == last {
            r.sender = sender.take();
            r.source.service = service.take();
        } else {
            r.sender = sender.clone();
            r.source.service = service.clone();
        }
    }
}

fn row_decode_error(stamp: &Stamp<'_>, row: &MessageRow, date_ns: i64, service: Option<String>, why: &str) -> Draft {
    let guid = format!("rowid-{}", row.rowid);
    let mut r = stamp.record(
        RecordKind::DecodeError,
        "message",
        row.rowid,
        &guid,
        REV_ORIGINAL,
        date_ns,
        service,
    );
    r.decode_errors.push(decode_error("message", why, &[]));
    for e in &row.errors {
        r.decode_errors.push(decode_error(e.column, &e.error, &e.raw));
    }
    if let Some(b) = &row.attributed_body {
        r.decode_errors
            .push(decode_error("attributedBody", "row not interpretable", b));
    }
    if let Some(t) = &row.text {
        r.decode_errors
            .push(decode_error("text", "row not interpretable", t.as_bytes()));
    }
    Draft {
        record: r,
        files: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::record::DeviceInfo;

    fn fixture(name: &str) -> Vec<u8> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/apple")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    fn stamp(device: &DeviceInfo) -> Stamp<'_> {
        Stamp {
            device,
            captured_at: "2026-01-01T00:00:00.000000000Z".into(),
            now_apple_ns: 0,
        }
    }

    fn device() -> DeviceInfo {
        DeviceInfo {
            name: "dev".into(),
            agent_version: "0.1.0".into(),
            ..Default::default()
        }
    }

    fn ctx() -> RowContext {
        RowContext {
            conversation: None,
            handle: Some("+15550100".into()),
            other_handle: Some("+15550111".into()),
            attachments: Vec::new(),
        }
    }

    fn row(guid: &str) -> MessageRow {
        MessageRow {
            rowid: 7,
            guid: Some(guid.into()),
            service: Some("iMessage".into()),
            date: 690_513_474_000_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn edited_message_keeps_the_original_and_emits_every_revision() {
        let d = device();
        let mut r = row("G-EDIT");
        r.attributed_body = Some(fixture("AttributedBodyTextOnly"));
        r.summary_info = Some(fixture("Edited.plist"));
        r.date_edited = 690_513_494_000_000_000;
        let drafts = row_drafts(&stamp(&d), &r, ctx());
        let keys: Vec<&str> = drafts.iter().map(|d| d.record.idempotency_key.as_str()).collect();
        assert_eq!(
            keys,
            ["dev/G-EDIT/0", "dev/G-EDIT/p0e1", "dev/G-EDIT/p0e2", "dev/G-EDIT/p0e3"]
        );
        let body = drafts[0].record.body.as_ref().unwrap();
        assert_eq!(body.text, "First message  ", "the message record carries the original");
        let edits: Vec<(i64, &str)> = drafts[1..]
            .iter()
            .map(|d| {
                (
                    d.record.event_time_apple_ns,
                    d.record.edit.as_ref().unwrap().text.as_str(),
                )
            })
            .collect();
        assert_eq!(
            edits,
            [
                (690_513_480_000_000_000, "Edit 1"),
                (690_513_485_000_000_000, "Edit 2"),
                (690_513_494_000_000_000, "Edited message")
            ]
        );
        assert_eq!(
            drafts[3].record.edit.as_ref().unwrap().original_text.as_deref(),
            Some("First message  ")
        );
        assert_eq!(
            drafts[1].record.sender.as_ref().unwrap().handle.as_deref(),
            Some("+15550100")
        );
    }

    #[test]
    fn unsent_message_yields_an_unsend_record() {
        let d = device();
        let mut r = row("G-UNSENT");
        r.summary_info = Some(fixture("Deleted.plist"));
        r.date_edited = 690_513_500_000_000_000;
        r.is_from_me = true;
        let drafts = row_drafts(&stamp(&d), &r, ctx());
        assert_eq!(drafts.len(), 2);
        assert_eq!(drafts[0].record.kind, RecordKind::Message);
        assert!(drafts[0].record.body.is_none(), "the text is gone from the row");
        assert_eq!(drafts[1].record.kind, RecordKind::Unsend);
        assert_eq!(drafts[1].record.idempotency_key, "dev/G-UNSENT/p0u");
        assert_eq!(drafts[1].record.event_time_apple_ns, 690_513_500_000_000_000);
        assert_eq!(drafts[1].record.direction, Some(Direction::Outbound));
    }

    #[test]
    fn multipart_body_keeps_parts_and_attachment_guids() {
        let d = device();
        let mut r = row("G-MULTI");
        r.attributed_body = Some(fixture("MultiPart"));
        let drafts = row_drafts(&stamp(&d), &r, ctx());
        let body = drafts[0].record.body.as_ref().unwrap();
        assert_eq!(body.origin, "attributedBody");
        assert_eq!(body.parts.len(), 6);
        assert_eq!(
            body.parts[4].attachment_guid.as_deref(),
            Some("at_4_F0668F79-20C2-49C9-A87F-1B007ABB0CED")
        );
    }

    #[test]
    fn tapbacks_and_group_events() {
        let d = device();
        let mut r = row("G-TAP");
        r.associated_message_type = 2006;
        r.associated_message_guid = Some("p:1/TARGET".into());
        r.associated_message_emoji = Some("🦄".into());
        let t = &row_drafts(&stamp(&d), &r, ctx())[0].record;
        assert_eq!(t.kind, RecordKind::ReactionAdded);
        let info = t.reaction.as_ref().unwrap();
        assert_eq!(
            (info.reaction.as_str(), info.target_guid.as_str(), info.target_part),
            ("emoji", "TARGET", Some(1))
        );
        assert_eq!(info.emoji.as_deref(), Some("🦄"));

        let mut r = row("G-UNTAP");
        r.associated_message_type = 3007;
        r.associated_message_guid = Some("bp:TARGET".into());
        let t = &row_drafts(&stamp(&d), &r, ctx())[0].record;
        assert_eq!(t.kind, RecordKind::ReactionRemoved);
        assert_eq!(t.reaction.as_ref().unwrap().reaction, "sticker");
        assert_eq!(t.reaction.as_ref().unwrap().target_part, None);

        let mut r = row("G-ADD");
        r.item_type = 1;
        r.group_action_type = 0;
        let g = &row_drafts(&stamp(&d), &r, ctx())[0].record;
        assert_eq!(g.kind, RecordKind::GroupMemberAdded);
        assert_eq!(g.group_event.as_ref().unwrap().member.as_deref(), Some("+15550111"));

        let mut r = row("G-NAME");
        r.item_type = 2;
        r.group_title = Some("Deal team".into());
        let g = &row_drafts(&stamp(&d), &r, ctx())[0].record;
        assert_eq!(g.kind, RecordKind::GroupRenamed);
        assert_eq!(g.group_event.as_ref().unwrap().new_name.as_deref(), Some("Deal team"));
    }

    #[test]
    fn replies_point_at_their_thread() {
        let d = device();
        let mut r = row("G-REPLY");
        r.text = Some("sure".into());
        r.thread_originator_guid = Some("ROOT".into());
        r.thread_originator_part = Some("0:0:5".into());
        let rec = &row_drafts(&stamp(&d), &r, ctx())[0].record;
        assert_eq!(rec.kind, RecordKind::Reply);
        assert_eq!(rec.reply_to.as_ref().unwrap().originator_guid, "ROOT");
        assert_eq!(rec.body.as_ref().unwrap().origin, "text");
        assert_eq!(rec.event_time, "2022-11-19T01:17:54.000000000Z");
    }
}
