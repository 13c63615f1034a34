//! RFC 5322 / MIME journal messages for the SMTP sink: pure, deterministic builders.
//!
//! The same records always give the same bytes: `Message-ID`, `Date` and the MIME boundaries
//! are derived from the records (never from the clock or a random source), so a message sent
//! again after a crash is the same message, and an archive that deduplicates by `Message-ID`
//! stores it once.
//!
//! Layout of every message (`multipart/mixed`):
//! 1. `text/plain; charset=utf-8` — a readable transcript for reviewers;
//! 2. the records, exactly as stored in the spool: `record-<seq>.json` (one record) or
//!    `records-<first>-<last>.jsonl` (a conversation-day), `application/json` /
//!    `application/x-ndjson`, base64, so the decoded part is byte-identical to the spool;
//! 3. each captured attachment file, with its original name and MIME type.
//!
//! Headers: `From` is the sink's sender address with the message sender's handle as display
//! name, `To` the journal address; `X-Capturefleet-*` headers carry device, conversation,
//! participants, service, sequence numbers and hashes, RFC 2047-encoded where not ASCII.

use std::borrow::Cow;

use mail_builder::MessageBuilder;
use mail_builder::headers::HeaderType;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::text::Text;
use mail_builder::mime::{BodyPart, MimePart};
use sha2::{Digest, Sha256};

use super::{SinkError, SpooledRecord};
use crate::api::record::{ArchiveRecord, AttachmentInfo, Conversation};

/// Addresses of the journal messages.
#[derive(Clone, Debug)]
pub struct EmlSettings {
    /// Header and envelope sender (`from` of the sink).
    pub from: String,
    /// The archive's journal mailbox.
    pub journal_address: String,
}

impl EmlSettings {
    /// The right-hand side of generated Message-IDs: the sender's domain.
    fn domain(&self) -> &str {
        self.from.rsplit_once('@').map_or("capturefleet.invalid", |(_, d)| d)
    }
}

/// A captured attachment file to include.
#[derive(Clone, Debug)]
pub struct EmlAttachment {
    /// The record's description of the file.
    pub info: AttachmentInfo,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// The Message-ID (without angle brackets) of the message for one record.
pub fn record_message_id(settings: &EmlSettings, record: &ArchiveRecord) -> String {
    format!(
        "rec.{}@{}",
        &record.hash[..record.hash.len().min(40)],
        settings.domain()
    )
}

/// The Message-ID of a conversation-day message: derived from its content, so the same
/// records give the same id and a different set of records a different one.
pub fn day_message_id(settings: &EmlSettings, records: &[SpooledRecord]) -> String {
    let mut h = Sha256::new();
    for r in records {
        h.update(r.meta.hash.as_bytes());
        h.update(b"\n");
    }
    format!("day.{}@{}", &hex::encode(h.finalize())[..40], settings.domain())
}

fn device_of(r: &ArchiveRecord) -> String {
    match &r.device.namespace {
        Some(ns) => format!("{ns}/{}", r.device.name),
        None => r.device.name.clone(),
    }
}

/// Seconds since the Unix epoch of an RFC 3339 timestamp (0 when unparseable).
fn unix_seconds(rfc3339: &str) -> i64 {
    rfc3339.parse::<jiff::Timestamp>().map(|t| t.as_second()).unwrap_or(0)
}

fn conversation_name(c: &Conversation) -> String {
    c.display_name.clone().unwrap_or_else(|| c.chat_identifier.clone())
}

fn sender_name(r: &ArchiveRecord) -> String {
    match &r.sender {
        Some(s) if s.is_from_me => format!("{} (employee)", s.handle.clone().unwrap_or_else(|| "me".into())),
        Some(s) => s.handle.clone().unwrap_or_else(|| "unknown sender".into()),
        None => "capturefleet".into(),
    }
}

/// One transcript entry.
fn transcript_entry(out: &mut String, r: &ArchiveRecord) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "[{}] #{} {} — {}",
        r.event_time,
        r.seq,
        r.kind.as_str(),
        sender_name(r)
    );
    if let Some(body) = &r.body {
        for line in body.text.lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    if let Some(e) = &r.edit {
        let _ = writeln!(out, "    edited part {} (revision {}): {}", e.part, e.revision, e.text);
    }
    if let Some(u) = &r.unsend {
        let _ = writeln!(out, "    unsent part {} at {}", u.part, u.unsent_at);
    }
    if let Some(x) = &r.reaction {
        let _ = writeln!(out, "    reaction {} to {}", x.reaction, x.target_guid);
    }
    if let Some(reply) = &r.reply_to {
        let _ = writeln!(out, "    in reply to {}", reply.originator_guid);
    }
    if let Some(g) = &r.group_event {
        let _ = writeln!(
            out,
            "    group {} {}",
            g.action,
            g.new_name.as_deref().or(g.member.as_deref()).unwrap_or("")
        );
    }
    if let Some(d) = &r.deletion {
        let _ = writeln!(
            out,
            "    deletion of {} detected at {}",
            d.last_archived_key, d.detected_at
        );
    }
    for a in &r.attachments {
        let _ = writeln!(
            out,
            "    attachment {} ({}, {} bytes{}{})",
            a.name.as_deref().unwrap_or(&a.guid),
            a.mime_type.as_deref().unwrap_or("application/octet-stream"),
            a.size,
            a.sha256.as_deref().map(|h| format!(", sha256 {h}")).unwrap_or_default(),
            if a.missing { ", file not captured" } else { "" }
        );
    }
    for e in &r.decode_errors {
        let _ = writeln!(out, "    could not decode {}: {}", e.field, e.error);
    }
}

fn conversation_headers<'x>(mut m: MessageBuilder<'x>, conv: Option<&Conversation>) -> MessageBuilder<'x> {
    if let Some(c) = conv {
        m = m
            .header("X-Capturefleet-Conversation", Text::new(c.id.clone()))
            .header("X-Capturefleet-Conversation-Name", Text::new(conversation_name(c)))
            .header("X-Capturefleet-Chat-Identifier", Text::new(c.chat_identifier.clone()))
            .header("X-Capturefleet-Service", Text::new(c.service.clone()))
            .header("X-Capturefleet-Group", Text::new(if c.is_group { "yes" } else { "no" }))
            .header("X-Capturefleet-Participants", Text::new(c.participants.join(", ")));
        if let Some(account) = &c.account {
            m = m.header("X-Capturefleet-Account", Text::new(account.clone()));
        }
    }
    m
}

fn attachment_parts<'x>(attachments: &'x [EmlAttachment]) -> impl Iterator<Item = MimePart<'x>> {
    attachments.iter().map(|a| {
        let name = a.info.name.clone().unwrap_or_else(|| a.info.guid.clone());
        let ctype = a
            .info
            .mime_type
            .clone()
            .unwrap_or_else(|| "application/octet-stream".into());
        MimePart::new(ContentType::new(ctype), BodyPart::Binary(Cow::Borrowed(&a.bytes[..]))).attachment(name)
    })
}

fn finish(
    m: MessageBuilder<'_>,
    boundary_seed: &str,
    text: String,
    data_type: &str,
    data_name: String,
    data: Vec<u8>,
    attachments: &[EmlAttachment],
) -> Vec<u8> {
    let boundary = format!("=_cf{}", &hex::encode(Sha256::digest(boundary_seed.as_bytes()))[..32]);
    let mut parts = vec![
        MimePart::new(
            ContentType::new("text/plain").attribute("charset", "utf-8"),
            BodyPart::Text(text.into()),
        ),
        MimePart::new(ContentType::new(data_type.to_owned()), BodyPart::Binary(data.into())).attachment(data_name),
    ];
    parts.extend(attachment_parts(attachments));
    let body = MimePart::new(
        ContentType::new("multipart/mixed").attribute("boundary", boundary),
        parts,
    );
    m.body(body).write_to_vec().expect("writing to a Vec cannot fail")
}

fn base<'x>(settings: &EmlSettings, display: String, id: String, date: i64, subject: String) -> MessageBuilder<'x> {
    MessageBuilder::new()
        .message_id(MessageId::new(id))
        .date(Date::new(date))
        .from((display, settings.from.clone()))
        .to(settings.journal_address.clone())
        .subject(subject)
        .header("MIME-Version", HeaderType::Text(Text::new("1.0")))
}

/// The journal message of one record (an error only when the stored record does not parse).
pub fn record_eml(
    settings: &EmlSettings,
    rec: &SpooledRecord,
    attachments: &[EmlAttachment],
) -> Result<Vec<u8>, SinkError> {
    let r = rec.record()?;
    let conv = r.conversation.as_deref();
    let service = conv
        .map(|c| c.service.as_str())
        .or(r.source.service.as_deref())
        .unwrap_or("Messages");
    let subject = format!(
        "[{service}] {} in {} (#{})",
        r.kind.as_str(),
        conv.map(conversation_name).unwrap_or_else(|| "no conversation".into()),
        rec.seq
    );
    let id = record_message_id(settings, r);
    let mut m = base(settings, sender_name(r), id, unix_seconds(&r.event_time), subject)
        .header("X-Capturefleet-Schema", Text::new(r.schema.clone()))
        .header("X-Capturefleet-Kind", Text::new(r.kind.as_str()))
        .header("X-Capturefleet-Device", Text::new(device_of(r)))
        .header("X-Capturefleet-Seq", Text::new(rec.seq.to_string()))
        .header("X-Capturefleet-Idempotency-Key", Text::new(r.idempotency_key.clone()))
        .header("X-Capturefleet-Record-Sha256", Text::new(r.hash.clone()))
        .header("X-Capturefleet-Prev-Sha256", Text::new(r.prev_hash.clone()))
        .header("X-Capturefleet-Event-Time", Text::new(r.event_time.clone()));
    if let Some(user) = &r.device.user_id {
        m = m.header("X-Capturefleet-User-Id", Text::new(user.clone()));
    }
    if let Some(s) = &r.sender {
        if let Some(h) = &s.handle {
            m = m.header("X-Capturefleet-Sender", Text::new(h.clone()));
        }
        m = m.header(
            "X-Capturefleet-Direction",
            Text::new(if s.is_from_me { "outbound" } else { "inbound" }),
        );
    }
    m = conversation_headers(m, conv);
    let mut text = String::new();
    if let Some(c) = conv {
        text.push_str(&format!(
            "Conversation: {} ({}, {})\nParticipants: {}\n\n",
            conversation_name(c),
            if c.is_group { "group" } else { "one-to-one" },
            c.service,
            c.participants.join(", ")
        ));
    }
    transcript_entry(&mut text, r);
    text.push_str(&format!(
        "\nRecord sha256 {} (seq {}); the exact record is attached.\n",
        r.hash, rec.seq
    ));
    Ok(finish(
        m,
        &r.hash,
        text,
        "application/json",
        format!("record-{}.json", rec.seq),
        rec.json.as_bytes().to_vec(),
        attachments,
    ))
}

/// The journal message of one conversation-day: `records` are that conversation's records of
/// one UTC day, in sequence order, without duplicates (an error only when a stored record
/// does not parse).
pub fn day_eml(
    settings: &EmlSettings,
    day: &str,
    records: &[SpooledRecord],
    attachments: &[EmlAttachment],
) -> Result<Vec<u8>, SinkError> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Ok(Vec::new());
    };
    let parsed = records
        .iter()
        .map(SpooledRecord::record)
        .collect::<Result<Vec<_>, _>>()?;
    let r = parsed[parsed.len() - 1];
    // Participants: the union over the day (members may join or leave).
    let mut participants: Vec<String> = parsed
        .iter()
        .filter_map(|x| x.conversation.as_ref())
        .flat_map(|c| c.participants.iter().cloned())
        .collect();
    participants.sort();
    participants.dedup();
    let mut conv = r.conversation.clone();
    if let Some(c) = conv.as_mut() {
        std::sync::Arc::make_mut(c).participants = participants;
    }
    let conv = conv.as_deref();
    let service = conv.map(|c| c.service.as_str()).unwrap_or("Messages");
    let subject = format!(
        "[{service}] {} on {day} ({} events)",
        conv.map(conversation_name).unwrap_or_else(|| "no conversation".into()),
        records.len()
    );
    let id = day_message_id(settings, records);
    let mut jsonl = Vec::new();
    for x in records {
        jsonl.extend_from_slice(x.json.as_bytes());
        jsonl.push(b'\n');
    }
    let mut m = base(
        settings,
        "capturefleet journal".into(),
        id.clone(),
        unix_seconds(&r.event_time),
        subject,
    )
    .header("X-Capturefleet-Schema", Text::new(r.schema.clone()))
    .header("X-Capturefleet-Device", Text::new(device_of(r)))
    .header("X-Capturefleet-Day", Text::new(day.to_owned()))
    .header("X-Capturefleet-Seq", Text::new(format!("{}-{}", first.seq, last.seq)))
    .header("X-Capturefleet-Records", Text::new(records.len().to_string()))
    .header(
        "X-Capturefleet-Records-Sha256",
        Text::new(hex::encode(Sha256::digest(&jsonl))),
    )
    .header("X-Capturefleet-First-Record-Sha256", Text::new(first.meta.hash.clone()))
    .header("X-Capturefleet-Last-Record-Sha256", Text::new(last.meta.hash.clone()));
    if let Some(user) = &r.device.user_id {
        m = m.header("X-Capturefleet-User-Id", Text::new(user.clone()));
    }
    let mut senders: Vec<String> = parsed
        .iter()
        .filter_map(|x| x.sender.as_ref()?.handle.clone())
        .collect();
    senders.sort();
    senders.dedup();
    if !senders.is_empty() {
        m = m.header("X-Capturefleet-Senders", Text::new(senders.join(", ")));
    }
    m = conversation_headers(m, conv);
    let mut text = String::new();
    if let Some(c) = conv {
        text.push_str(&format!(
            "Conversation: {} ({}, {}) on {day}\nParticipants: {}\n\n",
            conversation_name(c),
            if c.is_group { "group" } else { "one-to-one" },
            c.service,
            c.participants.join(", ")
        ));
    }
    for x in &parsed {
        transcript_entry(&mut text, x);
    }
    text.push_str(&format!(
        "\n{} records, seq {}..{}; the exact records are attached as JSON Lines.\n",
        records.len(),
        first.seq,
        last.seq
    ));
    Ok(finish(
        m,
        &id,
        text,
        "application/x-ndjson",
        format!("records-{}-{}.jsonl", first.seq, last.seq),
        jsonl,
        attachments,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::record::*;
    use mail_parser::MimeHeaders;

    fn record(seq: u64, text: &str) -> SpooledRecord {
        let mut r = ArchiveRecord {
            schema: RECORD_SCHEMA.into(),
            kind: RecordKind::Message,
            idempotency_key: idempotency_key("dev", &format!("G{seq}"), "0"),
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
            device: DeviceInfo {
                name: "dev".into(),
                namespace: Some("ns".into()),
                user_id: Some("u1".into()),
                agent_version: "0".into(),
            },
            event_time: "2024-03-09T10:00:00Z".into(),
            event_time_apple_ns: 0,
            captured_at: "2024-03-09T10:00:01Z".into(),
            clock: ClockInfo::default(),
            source: SourceRef::default(),
            conversation: Some(std::sync::Arc::new(Conversation {
                id: "c1".into(),
                guid: "iMessage;+;chat1".into(),
                chat_identifier: "chat1".into(),
                service: "iMessage".into(),
                is_group: true,
                display_name: Some("Zürich désk 🏦".into()),
                participants: vec!["+15550100".into(), "zoë@example.com".into()],
                account: None,
            })),
            sender: Some(Sender {
                handle: Some("zoë@example.com".into()),
                is_from_me: false,
            }),
            direction: Some(Direction::Inbound),
            body: Some(Body {
                text: text.into(),
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
            attachments: vec![AttachmentInfo {
                guid: "A1".into(),
                name: Some("Bilanz 2024.pdf".into()),
                mime_type: Some("application/pdf".into()),
                uti: None,
                size: 4,
                sha256: Some("00".repeat(32)),
                missing: false,
            }],
            decode_errors: vec![],
        };
        r.seal(seq, GENESIS_HASH);
        let json = r.to_canonical_json();
        SpooledRecord::from_record(seq, r, json)
    }

    /// An independent MIME parser. mail-parser parses every header it knows only while its
    /// header table is empty; once one is added, the rest must be named, and unknown headers
    /// are decoded (RFC 2047) only with `default_header_text`.
    fn parser() -> mail_parser::MessageParser {
        mail_parser::MessageParser::new()
            .with_mime_headers()
            .with_date_headers()
            .with_address_headers()
            .with_message_ids()
            .with_minimal_headers()
            .default_header_text()
    }

    fn settings() -> EmlSettings {
        EmlSettings {
            from: "capture@bank.example".into(),
            journal_address: "journal@archive.example".into(),
        }
    }

    #[test]
    fn record_message_is_deterministic_and_parses_with_every_part() {
        let rec = record(7, "Grüße — \"quoted\"\nline 2");
        let att = [EmlAttachment {
            info: rec.record().unwrap().attachments[0].clone(),
            bytes: b"%PDF".to_vec(),
        }];
        let a = record_eml(&settings(), &rec, &att).unwrap();
        let b = record_eml(&settings(), &rec, &att).unwrap();
        assert_eq!(a, b, "same record, same bytes");
        assert!(a.is_ascii(), "7-bit clean");

        let msg = parser().parse(&a).unwrap();
        assert_eq!(
            msg.message_id(),
            Some(record_message_id(&settings(), rec.record().unwrap()).as_str())
        );
        assert_eq!(
            msg.header("X-Capturefleet-Participants").and_then(|h| h.as_text()),
            Some("+15550100, zoë@example.com")
        );
        assert_eq!(
            msg.header("X-Capturefleet-Conversation-Name").and_then(|h| h.as_text()),
            Some("Zürich désk 🏦")
        );
        assert_eq!(
            msg.header("X-Capturefleet-Record-Sha256").and_then(|h| h.as_text()),
            Some(rec.meta.hash.as_str())
        );
        assert_eq!(msg.attachment_count(), 2);
        let json = msg.attachment(0).unwrap();
        assert_eq!(json.attachment_name(), Some("record-7.json"));
        assert_eq!(json.contents(), rec.json.as_bytes());
        let pdf = msg.attachment(1).unwrap();
        assert_eq!(pdf.attachment_name(), Some("Bilanz 2024.pdf"));
        assert_eq!(pdf.contents(), b"%PDF");
        assert!(msg.body_text(0).unwrap().contains("Grüße"));
    }

    #[test]
    fn day_message_id_follows_the_content() {
        let (a, b) = (record(1, "a"), record(2, "b"));
        let one = day_message_id(&settings(), std::slice::from_ref(&a));
        let both = day_message_id(&settings(), &[a.clone(), b.clone()]);
        assert_ne!(one, both);
        assert_eq!(both, day_message_id(&settings(), &[a.clone(), b.clone()]));
        let eml = day_eml(&settings(), "2024-03-09", &[a.clone(), b.clone()], &[]).unwrap();
        let msg = parser().parse(&eml).unwrap();
        let jsonl = msg.attachment(0).unwrap().contents();
        assert_eq!(jsonl, format!("{}\n{}\n", a.json, b.json).as_bytes());
        assert_eq!(msg.header("X-Capturefleet-Seq").and_then(|h| h.as_text()), Some("1-2"));
    }
}
