//! The SMTP journaling sink against a real SMTP server (aiosmtpd with STARTTLS and AUTH
//! required, started by tests/sinks/up); the journal mailbox is read back from its Maildir and
//! parsed with an independent MIME parser (mail-parser). `make test` runs these.

mod sink_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mail_parser::{Message, MessageParser, MimeHeaders};

use capturefleet::api::agent::{SmtpGrouping, SmtpTarget, SmtpTls};
use capturefleet::sinks::smtp::SmtpSink;
use capturefleet::sinks::{Sink, SinkError, SpooledRecord};
use sink_support::{DirAttachments, GROUP_PARTICIPANTS, ServerInstance, env, records};

struct SmtpEnv {
    port: u16,
    maildir: PathBuf,
    credentials_dir: PathBuf,
    ca_file: PathBuf,
}

impl SmtpEnv {
    fn from_env() -> Self {
        SmtpEnv {
            port: env("CAPTUREFLEET_SMTP_PORT").parse().unwrap(),
            maildir: env("CAPTUREFLEET_SMTP_MAILDIR").into(),
            credentials_dir: env("CAPTUREFLEET_SMTP_CREDENTIALS_DIR").into(),
            ca_file: env("CAPTUREFLEET_SINKS_CA_FILE").into(),
        }
    }

    fn from_instance(i: &ServerInstance) -> Self {
        SmtpEnv {
            port: i.var("SMTP_PORT").parse().unwrap(),
            maildir: i.var("SMTP_MAILDIR").into(),
            credentials_dir: i.var("SMTP_CREDENTIALS_DIR").into(),
            ca_file: i.var("CA_FILE").into(),
        }
    }

    /// A target whose journal address is unique to the test, so tests sharing the server
    /// can find their own messages.
    fn target(&self, journal: &str, grouping: SmtpGrouping) -> SmtpTarget {
        SmtpTarget {
            host: "127.0.0.1".into(),
            port: self.port,
            tls: SmtpTls::StartTls,
            from: "capture@bank.example".into(),
            journal_address: journal.into(),
            grouping,
            credentials_dir: Some(self.credentials_dir.clone()),
            ca_file: Some(self.ca_file.clone()),
        }
    }
}

fn journal_address(test: &str) -> String {
    format!(
        "journal+{test}-{:06x}@archive.example",
        rand::random::<u32>() & 0xffffff
    )
}

/// The parser: every header it should decode (mail-parser decodes RFC 2047 only in headers it
/// parses as text; its default for unknown headers is raw).
fn parser() -> MessageParser {
    MessageParser::new()
        .with_mime_headers()
        .with_date_headers()
        .with_address_headers()
        .with_message_ids()
        .with_minimal_headers()
        .default_header_text()
}

/// The raw messages delivered to `journal` (our server prepends `X-Original-To`).
fn delivered(maildir: &Path, journal: &str) -> Vec<Vec<u8>> {
    let Ok(dir) = std::fs::read_dir(maildir.join("new")) else {
        return Vec::new();
    };
    let marker = format!("X-Original-To: {journal}\r\n");
    dir.map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .filter(|raw| raw.windows(marker.len()).any(|w| w == marker.as_bytes()))
        .collect()
}

fn text<'a>(m: &'a Message<'a>, header: &'a str) -> &'a str {
    m.header(header)
        .and_then(|h| h.as_text())
        .unwrap_or_else(|| panic!("no {header}"))
}

/// Check one per-record message against its record: ids, headers, the exact JSON, every
/// participant and every attachment.
fn check_record_message(m: &Message<'_>, rec: &SpooledRecord, files: &DirAttachments) {
    let r = rec.record().unwrap();
    assert_eq!(text(m, "X-Capturefleet-Record-Sha256"), r.hash);
    assert_eq!(text(m, "X-Capturefleet-Seq"), rec.seq.to_string());
    assert_eq!(text(m, "X-Capturefleet-Idempotency-Key"), r.idempotency_key);
    assert_eq!(text(m, "X-Capturefleet-Kind"), r.kind.as_str());
    let conv = r.conversation.as_ref().unwrap();
    assert_eq!(text(m, "X-Capturefleet-Conversation"), conv.id);
    assert_eq!(text(m, "X-Capturefleet-Service"), "iMessage");
    let participants: BTreeSet<&str> = text(m, "X-Capturefleet-Participants").split(", ").collect();
    assert_eq!(
        participants,
        conv.participants.iter().map(String::as_str).collect(),
        "every participant"
    );
    if let Some(name) = &conv.display_name {
        assert_eq!(text(m, "X-Capturefleet-Conversation-Name"), name, "RFC 2047 round trip");
    }
    let json = m.attachment(0).expect("the record part");
    assert_eq!(
        json.attachment_name(),
        Some(format!("record-{}.json", rec.seq).as_str())
    );
    assert_eq!(json.contents(), rec.json.as_bytes(), "the record byte for byte");
    assert_eq!(m.attachment_count(), 1 + r.attachments.len(), "every attachment");
    for (i, a) in r.attachments.iter().enumerate() {
        let part = m.attachment(1 + i as u32).unwrap();
        assert_eq!(part.attachment_name(), a.name.as_deref());
        assert_eq!(
            part.contents(),
            files.bytes(a.sha256.as_ref().unwrap()),
            "attachment {}",
            a.guid
        );
    }
    if let Some(body) = &r.body {
        let first_line = body.text.lines().next().unwrap();
        assert!(
            m.body_text(0).unwrap().contains(first_line),
            "transcript shows the text"
        );
    }
}

#[tokio::test]
#[ignore = "needs the SMTP test server (tests/sinks/up); run by make test"]
async fn per_record_messages_parse_and_carry_every_participant_and_attachment() {
    capturefleet::tls::install_crypto_provider();
    let smtp = SmtpEnv::from_env();
    let journal = journal_address("per-record");
    let sink = SmtpSink::new("mail", &smtp.target(&journal, SmtpGrouping::PerRecord), None).unwrap();
    sink.start().await.unwrap();
    let mut files = DirAttachments::new();
    let all = records("dev-mail", 20, &mut files);
    sink.deliver(&all[..12], &files).await.unwrap();
    sink.deliver(&all[12..], &files).await.unwrap();

    let raw = delivered(&smtp.maildir, &journal);
    assert_eq!(raw.len(), 20);
    let by_id: BTreeMap<String, &Vec<u8>> = raw
        .iter()
        .map(|r| (parser().parse(r).unwrap().message_id().unwrap().to_owned(), r))
        .collect();
    assert_eq!(by_id.len(), 20, "one Message-ID per record");
    for rec in &all {
        let id = format!("rec.{}@bank.example", &rec.meta.hash[..40]);
        let m = parser().parse(by_id[&id]).unwrap();
        check_record_message(&m, rec, &files);
        assert_eq!(
            m.from().unwrap().first().unwrap().address(),
            Some("capture@bank.example")
        );
    }
    let all_participants: BTreeSet<String> = raw
        .iter()
        .flat_map(|r| {
            let m = parser().parse(r).unwrap();
            text(&m, "X-Capturefleet-Participants")
                .split(", ")
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    for p in GROUP_PARTICIPANTS {
        assert!(all_participants.contains(p), "{p}");
    }
}

#[tokio::test]
#[ignore = "needs the SMTP test server (tests/sinks/up); run by make test"]
async fn redelivered_records_resend_identical_messages_with_the_same_message_id() {
    capturefleet::tls::install_crypto_provider();
    let smtp = SmtpEnv::from_env();
    let journal = journal_address("redeliver");
    let sink = SmtpSink::new("mail", &smtp.target(&journal, SmtpGrouping::PerRecord), None).unwrap();
    let mut files = DirAttachments::new();
    let all = records("dev-redo", 8, &mut files);
    sink.deliver(&all[..6], &files).await.unwrap();
    sink.deliver(&all[3..], &files).await.unwrap(); // 4..=6 again after a lost acknowledgement

    let raw = delivered(&smtp.maildir, &journal);
    assert_eq!(raw.len(), 11, "SMTP itself delivers the resends");
    // The archive's key is the Message-ID: resends are byte-identical messages under it.
    let mut by_id: BTreeMap<String, BTreeSet<Vec<u8>>> = BTreeMap::new();
    for r in &raw {
        let m = parser().parse(r).unwrap();
        let id = m.message_id().unwrap().to_owned();
        // Drop our server's trace lines (Return-Path, X-Original-To) before comparing.
        let body = r.splitn(3, |&b| b == b'\n').nth(2).unwrap().to_vec();
        by_id.entry(id).or_default().insert(body);
    }
    assert_eq!(by_id.len(), 8, "deduplicated by Message-ID: each record once");
    assert!(
        by_id.values().all(|versions| versions.len() == 1),
        "resends are byte-identical"
    );
}

#[tokio::test]
#[ignore = "needs the SMTP test server (tests/sinks/up); run by make test"]
async fn starttls_is_required_and_the_certificate_verified() {
    capturefleet::tls::install_crypto_provider();
    let smtp = SmtpEnv::from_env();
    let journal = journal_address("tls");
    // Plain text: the server refuses mail before STARTTLS (530), a misconfiguration.
    let mut plain = smtp.target(&journal, SmtpGrouping::PerRecord);
    plain.tls = SmtpTls::None;
    plain.credentials_dir = None;
    let mut files = DirAttachments::new();
    let batch = records("dev-tls", 1, &mut files);
    let err = SmtpSink::new("mail", &plain, None)
        .unwrap()
        .deliver(&batch, &files)
        .await
        .unwrap_err();
    assert!(
        matches!(err, SinkError::Misconfigured(ref m) if m.contains("530")),
        "{err}"
    );
    // Without the CA the server's certificate is refused.
    let mut untrusted = smtp.target(&journal, SmtpGrouping::PerRecord);
    untrusted.ca_file = None;
    let sink = SmtpSink::new("mail", &untrusted, None).unwrap();
    assert!(sink.health().await.is_err());
    assert!(sink.deliver(&batch, &files).await.is_err());
    // Wrong password: refused at AUTH.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("username"), "journal").unwrap();
    std::fs::write(dir.path().join("password"), "wrong").unwrap();
    let mut wrong = smtp.target(&journal, SmtpGrouping::PerRecord);
    wrong.credentials_dir = Some(dir.path().to_owned());
    let err = SmtpSink::new("mail", &wrong, None)
        .unwrap()
        .deliver(&batch, &files)
        .await
        .unwrap_err();
    assert!(matches!(err, SinkError::Misconfigured(_)), "{err}");
    assert!(delivered(&smtp.maildir, &journal).is_empty(), "nothing got through");
}

#[tokio::test]
#[ignore = "needs the SMTP test server (tests/sinks/up); run by make test"]
async fn per_conversation_day_messages_hold_each_days_records_once_across_restarts() {
    capturefleet::tls::install_crypto_provider();
    let smtp = SmtpEnv::from_env();
    let journal = journal_address("per-day");
    let state = tempfile::tempdir().unwrap();
    let target = smtp.target(&journal, SmtpGrouping::PerConversationDay);
    let mut files = DirAttachments::new();
    // 2 conversations x 2 days (2024-03-09 and 2024-03-10), all long over.
    let all = records("dev-day", 30, &mut files);

    let sink = SmtpSink::new("mail", &target, Some(state.path())).unwrap();
    sink.start().await.unwrap();
    sink.deliver(&all[..10], &files).await.unwrap();
    assert!(
        delivered(&smtp.maildir, &journal).is_empty(),
        "day 1 may still continue"
    );
    drop(sink);
    // Restart: the journal survives; the batch is redelivered with other boundaries.
    let sink = SmtpSink::new("mail", &target, Some(state.path())).unwrap();
    sink.deliver(&all[5..20], &files).await.unwrap();
    // The stream reached day 2, so both conversations' day 1 were sent.
    assert_eq!(delivered(&smtp.maildir, &journal).len(), 2);
    sink.deliver(&all[20..], &files).await.unwrap();
    assert_eq!(
        sink.buffered().await.unwrap(),
        15,
        "day 2 (seq 16..=30) waits in the journal"
    );
    sink.flush().await.unwrap();
    assert_eq!(sink.buffered().await.unwrap(), 0);

    let raw = delivered(&smtp.maildir, &journal);
    assert_eq!(raw.len(), 4, "2 conversations x 2 days");
    let mut seen = BTreeMap::new();
    for r in &raw {
        let m = parser().parse(r).unwrap();
        let day = text(&m, "X-Capturefleet-Day").to_owned();
        let conv = text(&m, "X-Capturefleet-Conversation").to_owned();
        let jsonl = m.attachment(0).unwrap();
        assert_eq!(jsonl.content_type().unwrap().c_type, "application");
        let lines: Vec<&str> = std::str::from_utf8(jsonl.contents()).unwrap().lines().collect();
        let expected: Vec<&SpooledRecord> = all
            .iter()
            .filter(|x| {
                x.record().unwrap().event_time.starts_with(&day)
                    && x.record().unwrap().conversation.as_ref().unwrap().id == conv
            })
            .collect();
        assert_eq!(
            lines,
            expected.iter().map(|x| x.json.as_str()).collect::<Vec<_>>(),
            "{day} {conv}"
        );
        let participants: BTreeSet<&str> = text(&m, "X-Capturefleet-Participants").split(", ").collect();
        for x in &expected {
            for p in &x.record().unwrap().conversation.as_ref().unwrap().participants {
                assert!(participants.contains(p.as_str()), "{p}");
            }
        }
        let wanted: BTreeSet<String> = expected
            .iter()
            .flat_map(|x| {
                x.record()
                    .unwrap()
                    .attachments
                    .iter()
                    .map(|a| a.sha256.clone().unwrap())
            })
            .collect();
        let got: BTreeSet<String> = (1..m.attachment_count() as u32)
            .map(|i| {
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                    m.attachment(i).unwrap().contents(),
                ))
            })
            .collect();
        assert_eq!(got, wanted, "every attachment of {day} {conv}");
        for x in expected {
            seen.insert(x.seq, ());
        }
    }
    assert_eq!(seen.len(), 30, "every record in exactly one day message");
}

#[tokio::test]
#[ignore = "needs the SMTP test server (tests/sinks/server); run by make test"]
async fn server_outage_mid_stream_loses_nothing() {
    capturefleet::tls::install_crypto_provider();
    let mut server = ServerInstance::start("smtp");
    let smtp = SmtpEnv::from_instance(&server);
    let journal = journal_address("outage");
    let sink = SmtpSink::new("mail", &smtp.target(&journal, SmtpGrouping::PerRecord), None).unwrap();
    sink.start().await.unwrap();
    let mut files = DirAttachments::new();
    let all = records("dev-mo", 30, &mut files);
    let (mut cursor, mut failures, mut stopped) = (0, 0, false);
    while cursor < all.len() {
        if cursor >= 10 && !stopped {
            server.stop();
            stopped = true;
        }
        let end = (cursor + 4).min(all.len());
        match sink.deliver(&all[cursor..end], &files).await {
            Ok(()) => cursor = end,
            Err(e) => {
                assert!(matches!(e, SinkError::Transient(_)), "{e}");
                assert!(sink.health().await.is_err());
                failures += 1;
                if failures == 2 {
                    server.restart();
                }
            }
        }
    }
    assert_eq!(failures, 2);
    let ids: BTreeSet<String> = delivered(&smtp.maildir, &journal)
        .iter()
        .map(|r| parser().parse(r).unwrap().message_id().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = all
        .iter()
        .map(|r| format!("rec.{}@bank.example", &r.meta.hash[..40]))
        .collect();
    assert_eq!(ids, expected, "every record's message arrived");
}
