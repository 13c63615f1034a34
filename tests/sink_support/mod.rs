//! Shared helpers for the sink integration tests (`tests/sink_*.rs`): realistic sealed records
//! with attachments on disk, and the sink test servers started by `tests/sinks/up` (make test)
//! or, for outage tests, private instances started through `tests/sinks/server`.
#![allow(dead_code)]

pub mod webhook_receiver;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use capturefleet::api::record::*;
use capturefleet::sinks::{Attachment, AttachmentStore, SpooledRecord};

/// A required environment variable written by `tests/sinks/up`; panics with instructions.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the sink test servers with tests/sinks/up and \
             `source target/sinks/env` (make test does both)"
        )
    })
}

/// Attachment files captured into a directory, found by SHA-256 (like the spool's store).
pub struct DirAttachments {
    pub dir: tempfile::TempDir,
    by_hash: BTreeMap<String, PathBuf>,
}

impl DirAttachments {
    pub fn new() -> Self {
        DirAttachments {
            dir: tempfile::tempdir().unwrap(),
            by_hash: BTreeMap::new(),
        }
    }

    /// Store bytes, return their hash.
    pub fn add(&mut self, bytes: &[u8]) -> String {
        let hash = hex::encode(Sha256::digest(bytes));
        let path = self.dir.path().join(&hash);
        std::fs::write(&path, bytes).unwrap();
        self.by_hash.insert(hash.clone(), path);
        hash
    }

    /// Where the file with this hash is (the device's copy, for drafts).
    pub fn path(&self, hash: &str) -> PathBuf {
        self.by_hash[hash].clone()
    }

    pub fn bytes(&self, hash: &str) -> Vec<u8> {
        std::fs::read(&self.by_hash[hash]).unwrap()
    }
}

impl AttachmentStore for DirAttachments {
    fn get(&self, sha256: &str) -> Option<Attachment> {
        Attachment::whole_file(self.by_hash.get(sha256)?).ok()
    }
}

/// The participants of the test conversations, with non-ASCII names and handles.
pub const GROUP_PARTICIPANTS: [&str; 3] = ["+15550100", "jörg.müller@example.de", "zoë@example.com"];

/// `n` sealed records of device `device` (namespace `compliance`) from seq 1: messages in a
/// 1:1 chat and a group chat named with non-ASCII characters, a reply, a reaction, an edit, a
/// group rename, and every 5th message with one or two attachments whose files are stored in
/// `attachments`. The events fall on two UTC days.
pub fn records(device: &str, n: u64, attachments: &mut DirAttachments) -> Vec<SpooledRecord> {
    let direct = Conversation {
        id: conversation_id("iMessage;-;+15550100"),
        guid: "iMessage;-;+15550100".into(),
        chat_identifier: "+15550100".into(),
        service: "iMessage".into(),
        is_group: false,
        display_name: None,
        participants: vec!["+15550100".into()],
        account: Some("e:adviser@bank.example".into()),
    };
    let group = Conversation {
        id: conversation_id("iMessage;+;chat424242"),
        guid: "iMessage;+;chat424242".into(),
        chat_identifier: "chat424242".into(),
        service: "iMessage".into(),
        is_group: true,
        display_name: Some("Équipe Zürich — Q4 🏦".into()),
        participants: GROUP_PARTICIPANTS.iter().map(|s| s.to_string()).collect(),
        account: Some("e:adviser@bank.example".into()),
    };
    let mut out = Vec::new();
    let mut prev = GENESIS_HASH.to_owned();
    for seq in 1..=n {
        let conv = if seq % 3 == 0 { direct.clone() } else { group.clone() };
        let guid = format!("MSG-{device}-{seq:06}");
        // Two days: the first half on 2024-03-09, the rest on 2024-03-10 (UTC).
        let day = if seq <= n / 2 { 9 } else { 10 };
        let minute = seq % 60;
        let event_time = format!("2024-03-{day:02}T14:{minute:02}:05.123456789Z");
        let from_me = seq % 4 == 0;
        let sender = if from_me {
            None
        } else {
            Some(conv.participants[(seq as usize) % conv.participants.len()].clone())
        };
        let kind = match seq % 10 {
            7 => RecordKind::Reply,
            8 => RecordKind::ReactionAdded,
            9 => RecordKind::Edit,
            _ if seq % 25 == 0 => RecordKind::GroupRenamed,
            _ => RecordKind::Message,
        };
        let mut rec = ArchiveRecord {
            schema: RECORD_SCHEMA.into(),
            kind,
            idempotency_key: idempotency_key(device, &guid, "0"),
            seq: 0,
            prev_hash: String::new(),
            hash: String::new(),
            device: DeviceInfo {
                name: device.into(),
                namespace: Some("compliance".into()),
                user_id: Some("u-1234".into()),
                agent_version: "0.1.0".into(),
            },
            event_time: event_time.clone(),
            event_time_apple_ns: 731_000_000_000_000_000 + seq as i64,
            captured_at: "2024-03-10T23:59:59.000000001Z".into(),
            clock: ClockInfo {
                source: "system-realtime".into(),
                synchronized: Some(true),
            },
            source: SourceRef {
                table: "message".into(),
                rowid: seq as i64,
                guid: guid.clone(),
                revision: "0".into(),
                service: Some("iMessage".into()),
            },
            conversation: Some(conv.into()),
            sender: Some(Sender {
                handle: sender,
                is_from_me: from_me,
            }),
            direction: Some(if from_me {
                Direction::Outbound
            } else {
                Direction::Inbound
            }),
            body: Some(Body {
                text: format!("Trade idea #{seq}: buy 100 × ACME @ 12,50 € — \"ok?\"\nline two"),
                parts: vec![],
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
        };
        match kind {
            RecordKind::Reply => {
                rec.reply_to = Some(ReplyRef {
                    originator_guid: format!("MSG-{device}-{:06}", seq - 1),
                    originator_part: Some("0:0:10".into()),
                })
            }
            RecordKind::ReactionAdded => {
                rec.body = None;
                rec.reaction = Some(ReactionInfo {
                    reaction: "love".into(),
                    code: 2000,
                    target_guid: format!("MSG-{device}-{:06}", seq - 1),
                    target_part: Some(0),
                    emoji: None,
                })
            }
            RecordKind::Edit => {
                rec.idempotency_key = idempotency_key(device, &format!("MSG-{device}-{:06}", seq - 2), "e1");
                rec.edit = Some(EditInfo {
                    part: 0,
                    revision: 1,
                    edited_at: event_time.clone(),
                    text: "corrected: 90 × ACME".into(),
                    original_text: Some("buy 100".into()),
                })
            }
            RecordKind::GroupRenamed => {
                rec.body = None;
                rec.group_event = Some(GroupEvent {
                    action: "renamed".into(),
                    new_name: Some("Équipe Zürich — Q4 🏦".into()),
                    member: None,
                    item_type: 2,
                    group_action_type: 0,
                })
            }
            _ => {}
        }
        if seq % 5 == 0 {
            let count = if seq % 10 == 0 { 2 } else { 1 };
            for i in 0..count {
                let bytes: Vec<u8> = (0..(1000 + seq * 37 + i))
                    .map(|b| ((b * 31 + seq * 7 + i) % 251) as u8)
                    .collect();
                let hash = attachments.add(&bytes);
                rec.attachments.push(AttachmentInfo {
                    guid: format!("ATT-{seq}-{i}"),
                    name: Some(if i == 0 {
                        format!("Kontoauszug-{seq}.pdf")
                    } else {
                        format!("photo {seq}.heic")
                    }),
                    mime_type: Some(if i == 0 {
                        "application/pdf".into()
                    } else {
                        "image/heic".into()
                    }),
                    uti: None,
                    size: bytes.len() as u64,
                    sha256: Some(hash),
                    missing: false,
                });
            }
        }
        rec.seal(seq, &prev);
        prev = rec.hash.clone();
        let json = rec.to_canonical_json();
        out.push(SpooledRecord::from_record(seq, rec, json));
    }
    out
}

/// A private instance of a sink test server (for tests that stop and restart it), started by
/// `tests/sinks/server` under `$CAPTUREFLEET_SINKS_STATE/instances/`, stopped on drop.
pub struct ServerInstance {
    pub dir: PathBuf,
    pub env: BTreeMap<String, String>,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sinks/server")
}

impl ServerInstance {
    pub fn start(kind: &str) -> Self {
        let state = env("CAPTUREFLEET_SINKS_STATE");
        let dir = Path::new(&state)
            .join("instances")
            .join(format!("{kind}-{:08x}", rand::random::<u32>()));
        let mut instance = ServerInstance {
            dir,
            env: BTreeMap::new(),
        };
        instance.restart();
        instance
    }

    /// Start (again) on the same ports with the same data.
    pub fn restart(&mut self) {
        let kind = self
            .dir
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .to_owned();
        let status = Command::new(script())
            .args(["start", &kind])
            .arg(&self.dir)
            .env("CAPTUREFLEET_SINKS_STATE", env("CAPTUREFLEET_SINKS_STATE"))
            .status()
            .expect("run tests/sinks/server");
        assert!(status.success(), "tests/sinks/server start {kind} failed");
        self.env = std::fs::read_to_string(self.dir.join("env"))
            .unwrap()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    }

    /// Stop the server (its data stays).
    pub fn stop(&self) {
        let status = Command::new(script()).arg("stop").arg(&self.dir).status().unwrap();
        assert!(status.success(), "tests/sinks/server stop failed");
    }

    pub fn var(&self, name: &str) -> String {
        self.env
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} missing from {}/env", self.dir.display()))
    }
}

impl Drop for ServerInstance {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("stop").arg(&self.dir).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
