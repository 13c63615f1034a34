//! [`Simulator`]: writes chat.db in Apple's schema, the way Messages does.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{Connection, params};
use tracing::info;

use super::content;
use super::manifest::{Manifest, ManifestEvent};
use crate::api::record::{RecordKind, revision};
use crate::apple::codes::{self, GroupAction, TapbackKind};
use crate::apple::epoch::{self, NANOS_PER_SECOND};
use crate::apple::schema;
use crate::apple::summary_info::SummaryBuilder;
use crate::apple::typedstream::{AttributedBody, Run};

/// Rows dated before this (2022-10-24, macOS Ventura) carry plain `text`; later ones carry
/// `attributedBody` (and, like most rows on macOS 14, no `text`).
pub const ATTRIBUTED_BODY_SINCE_NS: i64 = 688_262_400 * NANOS_PER_SECOND;
/// Successive live edits of a message are at least this far apart (seconds; Messages stores
/// edit times as floating-point seconds).
const MIN_EDIT_GAP_S: f64 = 0.001;

/// Simulator errors.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// SQLite.
    #[error("chat.db: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Files.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SimError + '_ {
    move |source| SimError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Simulator settings.
#[derive(Clone, Debug)]
pub struct SimulatorConfig {
    /// The directory standing for `~/Library/Messages`: `chat.db` and `Attachments/` go here.
    pub messages_dir: PathBuf,
    /// Seed: the same seed and calls give the same database.
    pub seed: u64,
    /// One-to-one contacts.
    pub contacts: usize,
    /// Group chats.
    pub groups: usize,
    /// The employee's own address.
    pub owner: String,
    /// How far back a bulk history starts.
    pub history_days: u32,
    /// Keep a manifest of every event (costs memory on huge histories).
    pub record_manifest: bool,
    /// In `step()`, only delete rows written at least this many steps ago (so a reader
    /// polling between steps has seen them).
    pub delete_after_steps: u64,
}

impl SimulatorConfig {
    /// Defaults: 40 contacts, 8 groups, 5 years of history, manifest on.
    pub fn new(messages_dir: impl Into<PathBuf>, seed: u64) -> Self {
        SimulatorConfig {
            messages_dir: messages_dir.into(),
            seed,
            contacts: 40,
            groups: 8,
            owner: "employee@example.com".into(),
            history_days: 5 * 365,
            record_manifest: true,
            delete_after_steps: 20,
        }
    }
}

struct Contact {
    handle: i64,
    id: String,
}

struct Chat {
    rowid: i64,
    guid: String,
    service: &'static str,
    is_group: bool,
    /// Contact indexes currently in the chat.
    members: Vec<usize>,
}

#[derive(Clone)]
struct Recent {
    rowid: i64,
    guid: String,
    chat: usize,
    date_ns: i64,
    text: String,
    from_me: bool,
    edits: Vec<(f64, String)>,
    unsent: bool,
    step: u64,
}

/// A message row to insert.
#[derive(Default)]
struct Row {
    guid: String,
    text: Option<String>,
    body: Option<Vec<u8>>,
    chat: usize,
    from_me: bool,
    sender: Option<usize>,
    date_ns: i64,
    item_type: i64,
    group_action_type: i64,
    group_title: Option<String>,
    other_handle: i64,
    assoc_guid: Option<String>,
    assoc_type: i64,
    assoc_emoji: Option<String>,
    thread_guid: Option<String>,
    thread_part: Option<String>,
    summary: Option<Vec<u8>>,
    date_edited: i64,
    has_attachments: bool,
    is_empty: bool,
    part_count: i64,
}

/// The simulator.
pub struct Simulator {
    cfg: SimulatorConfig,
    conn: Connection,
    rng: StdRng,
    contacts: Vec<Contact>,
    chats: Vec<Chat>,
    manifest: Manifest,
    recent: VecDeque<Recent>,
    reactions: VecDeque<(String, usize, TapbackKind, usize)>,
    clock_ns: i64,
    /// No event (original, edit or unsend) is dated after this: the end of the history while
    /// it is written, the wall clock in a live step.
    ceiling_ns: i64,
    steps: u64,
    attachments_written: u64,
}

impl Simulator {
    /// Creates `messages_dir/chat.db` (replacing any database there) with handles and chats.
    pub fn create(cfg: SimulatorConfig) -> Result<Self, SimError> {
        std::fs::create_dir_all(cfg.messages_dir.join("Attachments")).map_err(io(&cfg.messages_dir))?;
        let db = cfg.messages_dir.join("chat.db");
        for suffix in ["", "-wal", "-shm"] {
            let mut p = db.clone().into_os_string();
            p.push(suffix);
            let p = PathBuf::from(p);
            if p.exists() {
                std::fs::remove_file(&p).map_err(io(&p))?;
            }
        }
        let conn = Connection::open(&db)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        conn.execute_batch(&format!("BEGIN; {} COMMIT;", schema::create_sql()))?;
        let mut sim = Simulator {
            rng: StdRng::seed_from_u64(cfg.seed),
            manifest: Manifest {
                seed: cfg.seed,
                ..Manifest::default()
            },
            clock_ns: epoch::now_apple_ns() - cfg.history_days as i64 * 86_400 * NANOS_PER_SECOND,
            ceiling_ns: epoch::now_apple_ns(),
            cfg,
            conn,
            contacts: Vec::new(),
            chats: Vec::new(),
            recent: VecDeque::new(),
            reactions: VecDeque::new(),
            steps: 0,
            attachments_written: 0,
        };
        sim.setup()?;
        Ok(sim)
    }

    /// Path of the database.
    pub fn chat_db(&self) -> PathBuf {
        self.cfg.messages_dir.join("chat.db")
    }

    /// What was written so far.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn setup(&mut self) -> Result<(), SimError> {
        let tx = self.conn.transaction()?;
        for i in 0..self.cfg.contacts {
            let service = match i % 10 {
                0..=6 => "iMessage",
                7 | 8 => "SMS",
                _ => "RCS",
            };
            let id = if service == "iMessage" && i % 3 == 0 {
                format!("contact{i}@example.com")
            } else {
                format!("+1555{:07}", self.rng.random_range(0..10_000_000u32))
            };
            tx.execute(
                "INSERT INTO handle (id, country, service, uncanonicalized_id, person_centric_id) VALUES (?1, 'us', ?2, NULL, NULL)",
                params![id, service],
            )?;
            let handle = tx.last_insert_rowid();
            let guid = format!("{service};-;{id}");
            tx.execute(
                "INSERT INTO chat (guid, style, state, account_id, properties, chat_identifier, service_name, room_name, \
                 account_login, is_archived, last_addressed_handle, display_name, group_id, is_filtered, successful_query) \
                 VALUES (?1, ?2, 3, ?3, NULL, ?4, ?5, NULL, ?6, 0, ?7, '', ?8, 0, 1)",
                params![
                    guid,
                    codes::CHAT_STYLE_DIRECT,
                    content::guid(&mut self.rng),
                    id,
                    service,
                    format!("E:{}", self.cfg.owner),
                    self.cfg.owner,
                    content::guid(&mut self.rng)
                ],
            )?;
            let chat = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO chat_handle_join (chat_id, handle_id) VALUES (?1, ?2)",
                params![chat, handle],
            )?;
            self.contacts.push(Contact { handle, id: id.clone() });
            self.chats.push(Chat {
                rowid: chat,
                guid,
                service,
                is_group: false,
                members: vec![i],
            });
        }
        let imessage: Vec<usize> = (0..self.contacts.len()).filter(|i| i % 10 <= 6).collect();
        for g in 0..self.cfg.groups {
            if imessage.len() < 3 {
                break;
            }
            let n = self.rng.random_range(2..=imessage.len().min(5));
            let mut members: Vec<usize> = Vec::new();
            while members.len() < n {
                let c = imessage[self.rng.random_range(0..imessage.len())];
                if !members.contains(&c) {
                    members.push(c);
                }
            }
            let ident = format!("chat{}", self.rng.random_range(100_000_000_000u64..999_999_999_999));
            let guid = format!("iMessage;+;{ident}");
            let name = if g % 3 == 2 {
                String::new()
            } else {
                content::group_name(&mut self.rng)
            };
            tx.execute(
                "INSERT INTO chat (guid, style, state, account_id, chat_identifier, service_name, room_name, account_login, \
                 is_archived, last_addressed_handle, display_name, group_id, is_filtered, successful_query) \
                 VALUES (?1, ?2, 3, ?3, ?4, 'iMessage', ?4, ?5, 0, ?6, ?7, ?8, 0, 1)",
                params![
                    guid,
                    codes::CHAT_STYLE_GROUP,
                    content::guid(&mut self.rng),
                    ident,
                    format!("E:{}", self.cfg.owner),
                    self.cfg.owner,
                    name,
                    content::guid(&mut self.rng)
                ],
            )?;
            let chat = tx.last_insert_rowid();
            for m in &members {
                tx.execute(
                    "INSERT INTO chat_handle_join (chat_id, handle_id) VALUES (?1, ?2)",
                    params![chat, self.contacts[*m].handle],
                )?;
            }
            self.chats.push(Chat {
                rowid: chat,
                guid,
                service: "iMessage",
                is_group: true,
                members,
            });
        }
        tx.commit()?;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn note(
        &mut self,
        kind: RecordKind,
        guid: &str,
        rev: &str,
        rowid: i64,
        chat: usize,
        text: Option<String>,
        at_ns: i64,
    ) {
        if self.cfg.record_manifest {
            self.manifest.events.push(ManifestEvent {
                kind: kind.as_str().to_owned(),
                guid: guid.to_owned(),
                revision: rev.to_owned(),
                rowid,
                chat_guid: self.chats[chat].guid.clone(),
                text,
                at_ns,
                file_missing: false,
            });
        }
    }

    fn insert(&mut self, row: &Row) -> Result<i64, SimError> {
        let chat = &self.chats[row.chat];
        let service = chat.service;
        let handle_id = if chat.is_group {
            row.sender.map(|s| self.contacts[s].handle).unwrap_or(0)
        } else {
            self.contacts[chat.members[0]].handle
        };
        let delivered = row.date_ns + 1_500_000_000;
        self.conn
            .prepare_cached(
                "INSERT INTO message (guid, text, attributedBody, service, handle_id, destination_caller_id, account, \
                 account_guid, date, date_read, date_delivered, is_delivered, is_finished, is_from_me, is_read, is_sent, \
                 item_type, other_handle, group_title, group_action_type, associated_message_guid, associated_message_type, \
                 associated_message_emoji, thread_originator_guid, thread_originator_part, message_summary_info, \
                 date_edited, cache_has_attachments, part_count, is_empty, is_system_message, date_retracted, date_played, \
                 reply_to_guid, ck_sync_state, sort_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 1, 1, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, \
                 ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, 0, 0, NULL, 1, 0)",
            )?
            .execute(params![
                row.guid,
                row.text,
                row.body,
                service,
                handle_id,
                self.cfg.owner,
                format!("E:{}", self.cfg.owner),
                "AC0E6B2E-5C1A-4F55-9A7E-6A0C0F3B1D2E",
                row.date_ns,
                if row.from_me { 0 } else { delivered },
                if row.from_me { delivered } else { 0 },
                row.from_me as i64,
                (!row.from_me) as i64,
                row.from_me as i64,
                row.item_type,
                row.other_handle,
                row.group_title,
                row.group_action_type,
                row.assoc_guid,
                row.assoc_type,
                row.assoc_emoji,
                row.thread_guid,
                row.thread_part,
                row.summary,
                row.date_edited,
                row.has_attachments as i64,
                row.part_count,
                row.is_empty as i64,
                (row.item_type != 0) as i64,
            ])?;
        let rowid = self.conn.last_insert_rowid();
        self.conn
            .prepare_cached("INSERT INTO chat_message_join (chat_id, message_id, message_date) VALUES (?1, ?2, ?3)")?
            .execute(params![self.chats[row.chat].rowid, rowid, row.date_ns])?;
        Ok(rowid)
    }

    fn body_columns(&self, text: &str, date_ns: i64) -> (Option<String>, Option<Vec<u8>>) {
        if date_ns < ATTRIBUTED_BODY_SINCE_NS {
            (Some(text.to_owned()), None)
        } else {
            (None, Some(AttributedBody::plain(text).to_typedstream()))
        }
    }

    fn pick_chat(&mut self) -> usize {
        self.rng.random_range(0..self.chats.len())
    }

    fn pick_sender(&mut self, chat: usize) -> (bool, Option<usize>) {
        let from_me = self.rng.random_ratio(2, 5);
        let members = &self.chats[chat].members;
        if from_me || members.is_empty() {
            (true, None)
        } else {
            (false, Some(members[self.rng.random_range(0..members.len())]))
        }
    }

    fn remember(&mut self, r: Recent) {
        self.recent.push_back(r);
        if self.recent.len() > 400 {
            self.recent.pop_front();
        }
    }

    fn recent_in(&mut self, chat: usize) -> Option<Recent> {
        let candidates: Vec<&Recent> = self.recent.iter().filter(|r| r.chat == chat && !r.unsent).collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.rng.random_range(0..candidates.len())].clone())
    }

    fn message(&mut self, date_ns: i64, chat: usize, reply_to: Option<&Recent>) -> Result<(), SimError> {
        let text = content::sentence(&mut self.rng);
        let (from_me, sender) = self.pick_sender(chat);
        let guid = content::guid(&mut self.rng);
        let (text_col, body) = self.body_columns(&text, date_ns);
        let row = Row {
            guid: guid.clone(),
            text: text_col,
            body,
            chat,
            from_me,
            sender,
            date_ns,
            thread_guid: reply_to.map(|r| r.guid.clone()),
            thread_part: reply_to.map(|r| format!("0:0:{}", crate::apple::typedstream::attributed::utf16_len(&r.text))),
            part_count: 1,
            ..Row::default()
        };
        let rowid = self.insert(&row)?;
        let kind = if reply_to.is_some() {
            RecordKind::Reply
        } else {
            RecordKind::Message
        };
        self.note(
            kind,
            &guid,
            revision::ORIGINAL,
            rowid,
            chat,
            Some(text.clone()),
            date_ns,
        );
        self.remember(Recent {
            rowid,
            guid,
            chat,
            date_ns,
            text,
            from_me,
            edits: Vec::new(),
            unsent: false,
            step: self.steps,
        });
        Ok(())
    }

    fn reaction(&mut self, date_ns: i64, chat: usize) -> Result<(), SimError> {
        // One in four removes an earlier tapback in this chat.
        let removal = self.rng.random_ratio(1, 4);
        let earlier = self.reactions.iter().position(|(_, c, _, _)| *c == chat);
        let (target_guid, kind, sender) = match (removal, earlier) {
            (true, Some(i)) => {
                let (g, _, k, s) = self.reactions.remove(i).expect("index from position");
                (g, k, s)
            }
            _ => {
                let Some(target) = self.recent_in(chat) else {
                    return self.message(date_ns, chat, None);
                };
                let k = TapbackKind::ALL[self.rng.random_range(0..TapbackKind::ALL.len())];
                let s = self.chats[chat].members.first().copied().unwrap_or(0);
                (target.guid, k, s)
            }
        };
        let removed = removal && earlier.is_some();
        let code = kind.added_code() + if removed { 1000 } else { 0 };
        let guid = content::guid(&mut self.rng);
        let emoji = (kind == TapbackKind::Emoji).then(|| "🦄".to_owned());
        let from_me = self.chats[chat].is_group || self.rng.random_ratio(1, 2);
        let row = Row {
            guid: guid.clone(),
            text: Some(format!(
                "{} a message",
                if removed {
                    "Removed a reaction from"
                } else {
                    "Reacted to"
                }
            )),
            chat,
            from_me,
            sender: (!from_me).then_some(sender),
            date_ns,
            assoc_guid: Some(codes::associated_guid(&target_guid, 0)),
            assoc_type: code,
            assoc_emoji: emoji,
            part_count: 1,
            ..Row::default()
        };
        let rowid = self.insert(&row)?;
        let rk = if removed {
            RecordKind::ReactionRemoved
        } else {
            RecordKind::ReactionAdded
        };
        self.note(
            rk,
            &guid,
            revision::ORIGINAL,
            rowid,
            chat,
            Some(target_guid.clone()),
            date_ns,
        );
        if !removed {
            self.reactions.push_back((target_guid, chat, kind, sender));
            if self.reactions.len() > 200 {
                self.reactions.pop_front();
            }
        }
        Ok(())
    }

    fn attachment_message(&mut self, date_ns: i64, chat: usize) -> Result<(), SimError> {
        let (from_me, sender) = self.pick_sender(chat);
        let guid = content::guid(&mut self.rng);
        let count = self.rng.random_range(1..=2usize);
        let caption = self.rng.random_ratio(1, 2).then(|| content::sentence(&mut self.rng));
        let mut text = String::new();
        let mut runs = Vec::new();
        let mut files = Vec::new();
        for i in 0..count {
            let aguid = format!("at_{i}_{guid}");
            text.push(crate::apple::typedstream::OBJECT_REPLACEMENT);
            runs.push(Run::attachment(i as u32, &aguid));
            files.push(aguid);
        }
        if let Some(c) = &caption {
            runs.push(Run::part(
                crate::apple::typedstream::attributed::utf16_len(c),
                count as u32,
            ));
            text.push_str(c);
        }
        let body = AttributedBody {
            text: text.clone(),
            runs,
            mutable: true,
        };
        let (text_col, body_col) = if date_ns < ATTRIBUTED_BODY_SINCE_NS {
            (Some(text.clone()), Some(body.to_typedstream()))
        } else {
            (None, Some(body.to_typedstream()))
        };
        let row = Row {
            guid: guid.clone(),
            text: text_col,
            body: body_col,
            chat,
            from_me,
            sender,
            date_ns,
            has_attachments: true,
            part_count: runs_len(&body),
            ..Row::default()
        };
        let rowid = self.insert(&row)?;
        self.note(
            RecordKind::Message,
            &guid,
            revision::ORIGINAL,
            rowid,
            chat,
            Some(text),
            date_ns,
        );
        for aguid in files {
            self.attachments_written += 1;
            let n = self.attachments_written;
            let name = format!("IMG_{:04}.jpeg", n % 10_000);
            let hash = format!("{:02x}", n % 256);
            let rel = format!("Attachments/{hash}/{:02}/{aguid}/{name}", n % 100);
            let size = self.rng.random_range(200..2_000usize);
            let missing = self.rng.random_ratio(1, 10);
            if !missing {
                let path = self.cfg.messages_dir.join(&rel);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io(dir))?;
                }
                let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
                bytes.extend((0..size).map(|_| self.rng.random::<u8>()));
                std::fs::write(&path, &bytes).map_err(io(&path))?;
            }
            self.conn
                .prepare_cached(
                    "INSERT INTO attachment (guid, created_date, start_date, filename, uti, mime_type, transfer_state, \
                     is_outgoing, transfer_name, total_bytes, is_sticker, hide_attachment, original_guid) \
                     VALUES (?1, ?2, ?2, ?3, 'public.jpeg', 'image/jpeg', 5, ?4, ?5, ?6, 0, 0, ?1)",
                )?
                .execute(params![
                    aguid,
                    date_ns / NANOS_PER_SECOND,
                    format!("~/Library/Messages/{rel}"),
                    from_me as i64,
                    name,
                    (size + 4) as i64
                ])?;
            let arow = self.conn.last_insert_rowid();
            self.conn
                .prepare_cached("INSERT INTO message_attachment_join (message_id, attachment_id) VALUES (?1, ?2)")?
                .execute(params![rowid, arow])?;
            let rev = if missing { revision::MISSING } else { revision::ORIGINAL };
            self.note(RecordKind::Attachment, &aguid, rev, arow, chat, Some(name), date_ns);
            if missing && let Some(e) = self.manifest.events.last_mut() {
                e.file_missing = true;
            }
        }
        Ok(())
    }

    fn edited_message(&mut self, date_ns: i64, chat: usize) -> Result<(), SimError> {
        let original = content::sentence(&mut self.rng);
        let guid = content::guid(&mut self.rng);
        let n = self.rng.random_range(1..=3);
        let mut edits = Vec::with_capacity(n);
        let mut at = date_ns;
        for _ in 0..n {
            at += self.rng.random_range(5..200) * NANOS_PER_SECOND + self.rng.random_range(0..NANOS_PER_SECOND);
            edits.push((at, content::sentence(&mut self.rng)));
        }
        // The last edit must not be dated after the ceiling (now, in a live step): the whole
        // exchange moves earlier, keeping its order and spacing.
        let shift = (at - self.ceiling_ns).max(0);
        let (date_ns, at) = (date_ns - shift, at - shift);
        let mut history = vec![(ns_to_seconds(date_ns), original.clone())];
        history.extend(edits.into_iter().map(|(t, text)| (ns_to_seconds(t - shift), text)));
        let latest = history.last().map(|(_, t)| t.clone()).unwrap_or_default();
        let summary = summary(&history, &original, false);
        let row = Row {
            guid: guid.clone(),
            body: Some(AttributedBody::plain(&latest).to_typedstream()),
            chat,
            from_me: true,
            date_ns,
            summary: Some(summary),
            date_edited: at,
            part_count: 1,
            ..Row::default()
        };
        let rowid = self.insert(&row)?;
        self.note(
            RecordKind::Message,
            &guid,
            revision::ORIGINAL,
            rowid,
            chat,
            Some(original),
            date_ns,
        );
        for (i, (d, t)) in history.iter().enumerate().skip(1) {
            let at_ns = epoch::ns_from_float_seconds(*d).unwrap_or(at);
            self.note(
                RecordKind::Edit,
                &guid,
                &revision::edit(0, i as u32),
                rowid,
                chat,
                Some(t.clone()),
                at_ns,
            );
        }
        Ok(())
    }

    fn unsent_message(&mut self, date_ns: i64, chat: usize) -> Result<(), SimError> {
        let original = content::sentence(&mut self.rng);
        let guid = content::guid(&mut self.rng);
        let at = date_ns + self.rng.random_range(3..110) * NANOS_PER_SECOND;
        // Sent and unsent no later than the ceiling (now, in a live step).
        let shift = (at - self.ceiling_ns).max(0);
        let (date_ns, at) = (date_ns - shift, at - shift);
        let row = Row {
            guid: guid.clone(),
            chat,
            from_me: true,
            date_ns,
            summary: Some(summary(&[], &original, true)),
            date_edited: at,
            is_empty: true,
            part_count: 1,
            ..Row::default()
        };
        let rowid = self.insert(&row)?;
        self.note(
            RecordKind::Message,
            &guid,
            revision::ORIGINAL,
            rowid,
            chat,
            Some(original),
            date_ns,
        );
        self.note(RecordKind::Unsend, &guid, &revision::unsend(0), rowid, chat, None, at);
        self.manifest.unsent.push(guid);
        Ok(())
    }

    fn group_event(&mut self, date_ns: i64) -> Result<(), SimError> {
        let groups: Vec<usize> = (0..self.chats.len()).filter(|c| self.chats[*c].is_group).collect();
        if groups.is_empty() {
            let chat = self.pick_chat();
            return self.message(date_ns, chat, None);
        }
        let chat = groups[self.rng.random_range(0..groups.len())];
        let action = match self.rng.random_range(0..10) {
            0..=3 => GroupAction::Renamed,
            4 | 5 => GroupAction::MemberAdded,
            6 => GroupAction::MemberRemoved,
            7 => GroupAction::MemberLeft,
            8 => GroupAction::IconChanged,
            _ => GroupAction::IconRemoved,
        };
        let (item_type, gat) = action.codes();
        let guid = content::guid(&mut self.rng);
        let mut row = Row {
            guid: guid.clone(),
            chat,
            from_me: true,
            date_ns,
            item_type,
            group_action_type: gat,
            ..Row::default()
        };
        let chat_rowid = self.chats[chat].rowid;
        let mut text = None;
        match action {
            GroupAction::Renamed => {
                let name = content::group_name(&mut self.rng);
                row.group_title = Some(name.clone());
                self.conn.execute(
                    "UPDATE chat SET display_name = ?1 WHERE ROWID = ?2",
                    params![name, chat_rowid],
                )?;
                text = Some(name);
            }
            GroupAction::MemberAdded => {
                let candidates: Vec<usize> = (0..self.contacts.len())
                    .filter(|c| c % 10 <= 6 && !self.chats[chat].members.contains(c))
                    .collect();
                let Some(&c) = candidates.get(self.rng.random_range(0..candidates.len().max(1))) else {
                    return self.message(date_ns, chat, None);
                };
                row.other_handle = self.contacts[c].handle;
                self.conn.execute(
                    "INSERT OR IGNORE INTO chat_handle_join (chat_id, handle_id) VALUES (?1, ?2)",
                    params![chat_rowid, self.contacts[c].handle],
                )?;
                self.chats[chat].members.push(c);
                text = Some(self.contacts[c].id.clone());
            }
            GroupAction::MemberRemoved | GroupAction::MemberLeft => {
                if self.chats[chat].members.len() <= 2 {
                    return self.message(date_ns, chat, None);
                }
                let i = self.rng.random_range(0..self.chats[chat].members.len());
                let c = self.chats[chat].members.remove(i);
                if action == GroupAction::MemberLeft {
                    row.from_me = false;
                    row.sender = Some(c);
                } else {
                    row.other_handle = self.contacts[c].handle;
                }
                self.conn.execute(
                    "DELETE FROM chat_handle_join WHERE chat_id = ?1 AND handle_id = ?2",
                    params![chat_rowid, self.contacts[c].handle],
                )?;
                text = Some(self.contacts[c].id.clone());
            }
            GroupAction::IconChanged | GroupAction::IconRemoved => {}
        }
        let rowid = self.insert(&row)?;
        let kind = match action {
            GroupAction::Renamed => RecordKind::GroupRenamed,
            GroupAction::MemberAdded => RecordKind::GroupMemberAdded,
            GroupAction::MemberRemoved => RecordKind::GroupMemberRemoved,
            GroupAction::MemberLeft => RecordKind::GroupMemberLeft,
            _ => RecordKind::GroupIconChanged,
        };
        self.note(kind, &guid, revision::ORIGINAL, rowid, chat, text, date_ns);
        Ok(())
    }

    /// One event of a history or of live traffic, dated `date_ns`. A live event happens now:
    /// it is never a row written with edits or an unsend already in place (live edits and
    /// unsends rewrite an earlier row, as Messages does; see [`Simulator::step`]), so its date
    /// is the moment it was written.
    fn event(&mut self, date_ns: i64, live: bool) -> Result<(), SimError> {
        let chat = self.pick_chat();
        match self.rng.random_range(0..100) {
            90..=95 if live => self.message(date_ns, chat, None),
            0..=69 => self.message(date_ns, chat, None),
            70..=76 => {
                let target = self.recent_in(chat);
                self.message(date_ns, chat, target.as_ref())
            }
            77..=84 => self.reaction(date_ns, chat),
            85..=89 => self.attachment_message(date_ns, chat),
            90..=93 if date_ns >= ATTRIBUTED_BODY_SINCE_NS => self.edited_message(date_ns, chat),
            94 | 95 if date_ns >= ATTRIBUTED_BODY_SINCE_NS => self.unsent_message(date_ns, chat),
            96..=99 => self.group_event(date_ns),
            _ => self.message(date_ns, chat, None),
        }
    }

    /// Writes `n` events of history, dated from `history_days` ago towards now (never later
    /// than a minute ago, edits and unsends included), in transactions of 10,000.
    ///
    /// Each gap is drawn around the time left divided by the events left, so the history ends
    /// near its end instead of drifting past it (a sum of random gaps would overshoot by hours
    /// as often as not).
    pub fn write_history(&mut self, n: usize) -> Result<(), SimError> {
        let end = epoch::now_apple_ns() - 60 * NANOS_PER_SECOND;
        self.ceiling_ns = end;
        self.conn.execute_batch("PRAGMA synchronous = OFF")?;
        let mut written = 0;
        while written < n {
            let batch = (n - written).min(10_000);
            self.conn.execute_batch("BEGIN")?;
            for i in 0..batch {
                let left = (n - written - i) as i64;
                let gap = ((end - self.clock_ns) / left).max(1);
                self.clock_ns = (self.clock_ns + self.rng.random_range(1..=2 * gap)).min(end);
                let at = self.clock_ns;
                self.event(at, false)?;
            }
            self.conn.execute_batch("COMMIT")?;
            written += batch;
            if written % 100_000 == 0 {
                info!(written, "history");
            }
        }
        self.conn.execute_batch("PRAGMA synchronous = NORMAL")?;
        Ok(())
    }

    /// One live event dated now, in its own transaction: mostly new messages, tapbacks,
    /// replies, attachments and group changes; sometimes an edit of a recent message of the
    /// owner (within 15 minutes, at most 5), an unsend (within 2 minutes) or a deletion of a
    /// row written at least `delete_after_steps` steps ago (purged, or moved to Recently
    /// Deleted).
    ///
    /// Live events are dated by the wall clock, when they are written: new rows are dated now,
    /// and edits and unsends rewrite recent rows in place with `date_edited` now.
    pub fn step(&mut self) -> Result<(), SimError> {
        self.steps += 1;
        let now = epoch::now_apple_ns();
        self.clock_ns = self.clock_ns.max(now);
        self.ceiling_ns = now;
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = match self.rng.random_range(0..100) {
            0..=9 => self.live_edit(now),
            10..=13 => self.live_unsend(now),
            14..=17 => self.live_delete(now),
            _ => self.event(now, true),
        };
        match result {
            Ok(()) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(())
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn live_edit(&mut self, now: i64) -> Result<(), SimError> {
        let window = 15 * 60 * NANOS_PER_SECOND;
        let Some(i) = self
            .recent
            .iter()
            .rposition(|r| {
                r.from_me
                    && !r.unsent
                    && r.edits.len() < 5
                    && now - r.date_ns < window
                    // The next edit must not be dated after now.
                    && r.edits.last().map_or(ns_to_seconds(r.date_ns), |(d, _)| *d) + MIN_EDIT_GAP_S <= ns_to_seconds(now)
            })
        else {
            return self.event(now, true);
        };
        let new_text = content::sentence(&mut self.rng);
        let r = &mut self.recent[i];
        if r.edits.is_empty() {
            r.edits.push((ns_to_seconds(r.date_ns), r.text.clone()));
        }
        let at_s = ns_to_seconds(now).max(r.edits.last().map(|(d, _)| d + MIN_EDIT_GAP_S).unwrap_or(0.0));
        r.edits.push((at_s, new_text.clone()));
        let (rowid, guid, chat, n) = (r.rowid, r.guid.clone(), r.chat, r.edits.len() - 1);
        let summary = summary(&r.edits, &r.edits[0].1, false);
        let at_ns = epoch::ns_from_float_seconds(at_s).unwrap_or(now);
        self.conn.execute(
            "UPDATE message SET attributedBody = ?1, text = NULL, message_summary_info = ?2, date_edited = ?3 WHERE ROWID = ?4",
            params![AttributedBody::plain(&new_text).to_typedstream(), summary, now, rowid],
        )?;
        self.note(
            RecordKind::Edit,
            &guid,
            &revision::edit(0, n as u32),
            rowid,
            chat,
            Some(new_text),
            at_ns,
        );
        Ok(())
    }

    fn live_unsend(&mut self, now: i64) -> Result<(), SimError> {
        let window = 2 * 60 * NANOS_PER_SECOND;
        let Some(i) = self
            .recent
            .iter()
            .rposition(|r| r.from_me && !r.unsent && r.edits.is_empty() && now - r.date_ns < window)
        else {
            return self.event(now, true);
        };
        let r = &mut self.recent[i];
        r.unsent = true;
        let (rowid, guid, chat) = (r.rowid, r.guid.clone(), r.chat);
        let summary = summary(&[], &r.text, true);
        self.conn.execute(
            "UPDATE message SET attributedBody = NULL, text = NULL, message_summary_info = ?1, date_edited = ?2, \
             is_empty = 1 WHERE ROWID = ?3",
            params![summary, now, rowid],
        )?;
        self.note(RecordKind::Unsend, &guid, &revision::unsend(0), rowid, chat, None, now);
        self.manifest.unsent.push(guid);
        Ok(())
    }

    fn live_delete(&mut self, now: i64) -> Result<(), SimError> {
        let limit = self.steps.saturating_sub(self.cfg.delete_after_steps);
        let Some(i) = self.recent.iter().position(|r| r.step <= limit && r.step > 0) else {
            return self.event(now, true);
        };
        let r = self.recent.remove(i).expect("index from position");
        self.reactions.retain(|(g, ..)| *g != r.guid);
        if self.rng.random_ratio(1, 2) {
            // Purged: the row and its joins go; Messages remembers the GUID for sync.
            self.conn
                .execute("DELETE FROM chat_message_join WHERE message_id = ?1", params![r.rowid])?;
            self.conn.execute(
                "DELETE FROM message_attachment_join WHERE message_id = ?1",
                params![r.rowid],
            )?;
            self.conn
                .execute("DELETE FROM message WHERE ROWID = ?1", params![r.rowid])?;
            self.conn.execute(
                "INSERT INTO sync_deleted_messages (guid, recordID) VALUES (?1, NULL)",
                params![r.guid],
            )?;
        } else {
            // Moved to Recently Deleted: out of the chat, into chat_recoverable_message_join.
            self.conn
                .execute("DELETE FROM chat_message_join WHERE message_id = ?1", params![r.rowid])?;
            self.conn.execute(
                "INSERT INTO chat_recoverable_message_join (chat_id, message_id, delete_date) VALUES (?1, ?2, ?3)",
                params![self.chats[r.chat].rowid, r.rowid, now / NANOS_PER_SECOND],
            )?;
        }
        self.manifest.deleted.push(r.guid);
        Ok(())
    }
}

fn runs_len(body: &AttributedBody) -> i64 {
    body.parts().len() as i64
}

fn ns_to_seconds(ns: i64) -> f64 {
    ns as f64 / NANOS_PER_SECOND as f64
}

fn summary(history: &[(f64, String)], original: &str, unsent: bool) -> Vec<u8> {
    let mut b = SummaryBuilder::default();
    if !history.is_empty() {
        b.history.insert(0, history.to_vec());
    }
    if unsent {
        b.unsent_parts = vec![0];
    }
    b.original_ranges.insert(
        0,
        (0, crate::apple::typedstream::attributed::utf16_len(original) as i64),
    );
    b.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event date the simulator wrote into chat.db (message dates and edit/unsend
    /// times) and into its manifest.
    fn latest_dates(sim: &Simulator) -> (i64, i64) {
        let in_db: i64 = sim
            .conn
            .query_row("SELECT MAX(MAX(date), MAX(date_edited)) FROM message", [], |r| r.get(0))
            .unwrap();
        let in_manifest = sim.manifest().events.iter().map(|e| e.at_ns).max().unwrap_or(0);
        (in_db, in_manifest)
    }

    #[test]
    fn no_event_is_dated_in_the_future_after_a_bulk_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut sim = Simulator::create(SimulatorConfig::new(dir.path(), 5)).unwrap();
        let before = epoch::now_apple_ns();
        sim.write_history(300).unwrap();
        let (db, manifest) = latest_dates(&sim);
        assert!(
            db <= before && manifest <= before,
            "history ends before it was written: {db} / {manifest} > {before}"
        );
        let history = sim.manifest().events.len();
        // Live traffic as fast as it goes: edits of rows written a moment ago, unsends.
        for _ in 0..300 {
            sim.step().unwrap();
            let now = epoch::now_apple_ns();
            let (db, manifest) = latest_dates(&sim);
            assert!(db <= now, "a chat.db date {} ns after now", db - now);
            assert!(manifest <= now, "an event dated {} ns after now", manifest - now);
        }
        let live = &sim.manifest().events[history..];
        assert!(
            live.iter().any(|e| e.kind == "edit"),
            "live edits still happen at full speed"
        );
        // Dated when they were written, never backdated (the live latency measured from these
        // dates is the agent's, not the simulator's). Edit times are whole seconds (as the reader
        // decodes edit histories, see `epoch::ns_from_float_seconds`), so up to 1 s early.
        let backdated: Vec<_> = live
            .iter()
            .filter(|e| e.at_ns < before - if e.kind == "edit" { NANOS_PER_SECOND } else { 0 })
            .collect();
        assert!(
            backdated.is_empty(),
            "live events dated before they were written: {backdated:?}"
        );
    }

    #[test]
    fn the_history_is_the_same_for_the_same_seed() {
        let events = |dir: &Path| {
            let mut sim = Simulator::create(SimulatorConfig::new(dir, 9)).unwrap();
            sim.write_history(2_000).unwrap();
            sim.manifest()
                .events
                .iter()
                .map(|e| (e.kind.clone(), e.key(), e.text.clone(), e.rowid))
                .collect::<Vec<_>>()
        };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = events(a.path());
        assert!(first.len() >= 2_000);
        assert_eq!(first, events(b.path()));
    }
}
