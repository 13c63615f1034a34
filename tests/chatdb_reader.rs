//! The chat.db reader against real SQLite databases in Apple's schema, written by the device
//! simulator: every simulated event is archived exactly once, through backfill, live traffic
//! (edits, unsends, deletions), restarts, replaced files and undecodable rows.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use capturefleet::agent::source::{ArchiveIndex, ChatDbReader, Draft, MemoryIndex, ReaderConfig, RecordSource};
use capturefleet::api::agent::AttachmentPolicy;
use capturefleet::api::record::{ArchiveRecord, RecordKind};
use capturefleet::device::{Manifest, Simulator, SimulatorConfig};
use rusqlite::params;

const DEVICE: &str = "dev-test";

/// Polls until the reader has nothing more, archiving like the pipeline does (drop drafts
/// whose key is archived). Returns the records archived by this call.
fn drain(reader: &mut ChatDbReader, index: &mut MemoryIndex, limit: usize) -> Vec<Draft> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let drafts = reader.poll(index, limit).expect("poll");
        assert!(drafts.len() <= limit, "poll returned more than limit");
        if drafts.is_empty() {
            return out;
        }
        for d in drafts {
            assert!(d.record.seq == 0 && d.record.hash.is_empty() && d.record.prev_hash.is_empty());
            if index.archive(&d) {
                out.push(d);
            }
        }
    }
    panic!("the reader never caught up");
}

fn key_of(e: &capturefleet::device::ManifestEvent) -> String {
    format!("{DEVICE}/{}", e.key())
}

fn by_key(drafts: &[Draft]) -> BTreeMap<String, &ArchiveRecord> {
    let mut map = BTreeMap::new();
    for d in drafts {
        assert!(
            map.insert(d.record.idempotency_key.clone(), &d.record).is_none(),
            "duplicate key {}",
            d.record.idempotency_key
        );
    }
    map
}

fn config(dir: &std::path::Path) -> ReaderConfig {
    ReaderConfig::local(dir.join("chat.db"), DEVICE)
}

fn check_against_manifest(manifest: &Manifest, archived: &BTreeMap<String, &ArchiveRecord>) {
    let deleted: BTreeSet<&str> = manifest.deleted.iter().map(String::as_str).collect();
    let unsent: BTreeSet<&str> = manifest.unsent.iter().map(String::as_str).collect();
    let mut expected = BTreeSet::new();
    for e in &manifest.events {
        let key = key_of(e);
        let parent = e
            .guid
            .split_once('_')
            .map(|(_, rest)| rest.split_once('_').map(|x| x.1).unwrap_or(rest));
        let gone = deleted.contains(e.guid.as_str()) || parent.is_some_and(|p| deleted.contains(p));
        let Some(r) = archived.get(&key) else {
            assert!(gone, "simulated event {key} ({}) was not archived", e.kind);
            continue;
        };
        expected.insert(key.clone());
        assert_eq!(r.kind.as_str(), e.kind, "{key}");
        assert_eq!(
            r.conversation.as_ref().map(|c| c.guid.as_str()),
            Some(e.chat_guid.as_str()),
            "{key}"
        );
        match r.kind {
            RecordKind::Message | RecordKind::Reply if !unsent.contains(e.guid.as_str()) => {
                let body = r.body.as_ref().unwrap_or_else(|| panic!("{key} has no body"));
                assert_eq!(Some(&body.text), e.text.as_ref(), "{key}");
                assert_eq!(r.event_time_apple_ns, e.at_ns, "{key}");
            }
            RecordKind::Edit => {
                let edit = r.edit.as_ref().expect("edit info");
                assert_eq!(Some(&edit.text), e.text.as_ref(), "{key}");
                assert_eq!(r.event_time_apple_ns, e.at_ns, "{key}");
            }
            RecordKind::ReactionAdded | RecordKind::ReactionRemoved => {
                let reaction = r.reaction.as_ref().expect("reaction info");
                assert_eq!(Some(&reaction.target_guid), e.text.as_ref(), "{key}");
                assert_eq!(reaction.target_part, Some(0));
            }
            RecordKind::GroupRenamed => {
                assert_eq!(r.group_event.as_ref().unwrap().new_name, e.text, "{key}");
            }
            RecordKind::GroupMemberAdded | RecordKind::GroupMemberRemoved | RecordKind::GroupMemberLeft => {
                assert_eq!(r.group_event.as_ref().unwrap().member, e.text, "{key}");
            }
            RecordKind::Attachment => {
                let a = &r.attachments[0];
                assert_eq!(a.missing, e.file_missing, "{key}");
                assert_eq!(a.sha256.is_some(), !e.file_missing, "{key}");
            }
            _ => {}
        }
    }
    for (key, r) in archived {
        if r.kind == RecordKind::DeletionDetected {
            assert!(
                deleted.contains(r.source.guid.as_str()),
                "deletion of a live row: {key}"
            );
            continue;
        }
        assert!(
            expected.contains(key),
            "archived {key} ({:?}) that the simulator did not write",
            r.kind
        );
    }
}

#[test]
fn backfill_archives_every_simulated_event_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Simulator::create(SimulatorConfig::new(dir.path(), 7)).unwrap();
    sim.write_history(3_000).unwrap();
    let mut index = MemoryIndex::new();
    let mut reader = ChatDbReader::open(&config(dir.path())).unwrap();
    let drafts = drain(&mut reader, &mut index, 97);
    let archived = by_key(&drafts);
    check_against_manifest(sim.manifest(), &archived);
    assert_eq!(archived.len(), sim.manifest().events.len());
    // Every kind the simulator writes shows up.
    let kinds: BTreeSet<RecordKind> = drafts.iter().map(|d| d.record.kind).collect();
    for k in [
        RecordKind::Message,
        RecordKind::Reply,
        RecordKind::Edit,
        RecordKind::Unsend,
        RecordKind::ReactionAdded,
        RecordKind::ReactionRemoved,
        RecordKind::Attachment,
        RecordKind::GroupRenamed,
    ] {
        assert!(kinds.contains(&k), "no {k:?} record");
    }
    // Attachment files are listed with their hashes, and the hashes are right.
    for d in drafts
        .iter()
        .filter(|d| d.record.kind == RecordKind::Attachment && !d.files.is_empty())
    {
        let (hash, path) = &d.files[0];
        assert_eq!(d.record.attachments[0].sha256.as_ref(), Some(hash));
        let bytes = std::fs::read(path).unwrap();
        use sha2::Digest;
        assert_eq!(&hex::encode(sha2::Sha256::digest(&bytes)), hash);
    }
    // Records are well formed: RFC 3339 UTC with nanoseconds, sorted participants.
    for d in &drafts {
        let r = &d.record;
        assert_eq!(r.event_time.len(), 30, "{}", r.event_time);
        assert!(r.event_time.ends_with('Z') && r.captured_at.ends_with('Z'));
        assert_eq!(r.clock.source, "system-realtime");
        if let Some(c) = &r.conversation {
            assert!(c.participants.windows(2).all(|w| w[0] <= w[1]));
            assert_eq!(c.id, capturefleet::api::record::conversation_id(&c.guid));
        }
    }
    // Nothing new: an empty poll, and a new reader on the same index emits nothing new.
    assert!(reader.poll(&index, 100).unwrap().is_empty());
    let mut again = ChatDbReader::open(&config(dir.path())).unwrap();
    assert!(drain(&mut again, &mut index, 1000).is_empty());
}

#[test]
fn a_poll_never_hands_out_the_same_record_twice_even_before_it_is_archived() {
    // Recent edits and unsends are seen by the forward pass and again by the rescan of the
    // same cycle, while the forward pass's drafts are still queued: each must come out once.
    let dir = tempfile::tempdir().unwrap();
    // Some rows are deleted before the reader first sees them: purged ones are gone, and
    // ones in Recently Deleted are archived in the conversation they came from.
    let mut sim = Simulator::create(SimulatorConfig::new(dir.path(), 2024)).unwrap();
    sim.write_history(2_000).unwrap();
    for _ in 0..200 {
        sim.step().unwrap();
    }
    let mut index = MemoryIndex::new();
    let mut reader = ChatDbReader::open(&config(dir.path())).unwrap();
    let mut seen = BTreeSet::new();
    let mut all = Vec::new();
    let mut recent_edits = 0;
    loop {
        let drafts = reader.poll(&index, 100_000).unwrap();
        if drafts.is_empty() {
            break;
        }
        for d in drafts {
            let key = d.record.idempotency_key.clone();
            if matches!(d.record.kind, RecordKind::Edit | RecordKind::Unsend) {
                recent_edits += 1;
            }
            index.archive(&d);
            assert!(seen.insert(key.clone()), "{key} handed out twice");
            all.push(d);
        }
    }
    assert!(recent_edits > 0, "the simulation wrote no edits or unsends");
    check_against_manifest(sim.manifest(), &by_key(&all));
}

#[test]
fn re_reading_yields_identical_records_except_capture_time() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Simulator::create(SimulatorConfig::new(dir.path(), 11)).unwrap();
    sim.write_history(500).unwrap();
    let read_all = || {
        let mut index = MemoryIndex::new();
        let mut reader = ChatDbReader::open(&config(dir.path())).unwrap();
        drain(&mut reader, &mut index, 50)
            .into_iter()
            .map(|mut d| {
                d.record.captured_at.clear();
                d.record
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(read_all(), read_all());
}

#[test]
fn live_traffic_with_edits_unsends_and_deletions() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SimulatorConfig::new(dir.path(), 3);
    cfg.delete_after_steps = 5;
    let mut sim = Simulator::create(cfg).unwrap();
    sim.write_history(300).unwrap();
    let mut index = MemoryIndex::new();
    let mut reader = ChatDbReader::open(&config(dir.path())).unwrap();
    let mut drafts = drain(&mut reader, &mut index, 64);
    for i in 0..600 {
        sim.step().unwrap();
        if i % 3 == 0 {
            drafts.extend(drain(&mut reader, &mut index, 64));
        }
    }
    drafts.extend(drain(&mut reader, &mut index, 64));
    let archived = by_key(&drafts);
    check_against_manifest(sim.manifest(), &archived);
    let manifest = sim.manifest();
    assert!(!manifest.deleted.is_empty(), "the simulator deleted rows");
    let deletions: Vec<&&ArchiveRecord> = archived
        .values()
        .filter(|r| r.kind == RecordKind::DeletionDetected)
        .collect();
    // Every deleted row the reader had seen is reported deleted, exactly once.
    for guid in &manifest.deleted {
        let seen = archived.contains_key(&format!("{DEVICE}/{guid}/0"));
        let reported = deletions.iter().filter(|r| &r.source.guid == guid).count();
        assert_eq!(reported, seen as usize, "deletion of {guid}");
    }
    let live_edits = manifest.events.iter().filter(|e| e.kind == "edit").count();
    assert!(live_edits > 0 && !deletions.is_empty());
    for r in deletions {
        let info = r.deletion.as_ref().unwrap();
        assert!(
            info.last_archived_key
                .starts_with(&format!("{DEVICE}/{}/", r.source.guid))
        );
    }
}

#[test]
fn resumes_after_restart_without_gaps_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Simulator::create(SimulatorConfig::new(dir.path(), 5)).unwrap();
    sim.write_history(1_500).unwrap();
    let mut index = MemoryIndex::new();
    let mut drafts = Vec::new();
    {
        let mut reader = ChatDbReader::open(&config(dir.path())).unwrap();
        for _ in 0..7 {
            for d in reader.poll(&index, 33).unwrap() {
                if index.archive(&d) {
                    drafts.push(d);
                }
            }
        }
        // The reader is dropped mid-backfill, with drafts possibly pending (a crash).
    }
    let mut reader = ChatDbReader::open(&config(dir.path())).unwrap();
    drafts.extend(drain(&mut reader, &mut index, 33));
    let archived = by_key(&drafts);
    check_against_manifest(sim.manifest(), &archived);
    assert_eq!(archived.len(), sim.manifest().events.len());
}

#[test]
fn a_replaced_database_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Simulator::create(SimulatorConfig::new(dir.path(), 1)).unwrap();
    sim.write_history(200).unwrap();
    let mut index = MemoryIndex::new();
    let mut reader = ChatDbReader::open(&config(dir.path())).unwrap();
    let first = drain(&mut reader, &mut index, 100);
    assert_eq!(first.len(), sim.manifest().events.len());
    drop(sim);
    // A new file under the same name (e.g. restored from a snapshot), with other rows.
    let mut sim = Simulator::create(SimulatorConfig::new(dir.path(), 2)).unwrap();
    sim.write_history(250).unwrap();
    let second = drain(&mut reader, &mut index, 100);
    let keys: BTreeSet<String> = second.iter().map(|d| d.record.idempotency_key.clone()).collect();
    for e in &sim.manifest().events {
        assert!(keys.contains(&key_of(e)), "{} from the new file was not read", e.key());
    }
    // The first file's rows are gone: reported as deletions.
    assert!(second.iter().any(|d| d.record.kind == RecordKind::DeletionDetected));
}

#[test]
fn undecodable_rows_are_archived_with_their_raw_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Simulator::create(SimulatorConfig::new(dir.path(), 9)).unwrap();
    sim.write_history(20).unwrap();
    drop(sim);
    let conn = rusqlite::Connection::open(dir.path().join("chat.db")).unwrap();
    let garbage = vec![0x04, 0x0b, b's', 0xff, 0x00, 0x84];
    conn.execute(
        "INSERT INTO message (guid, attributedBody, message_summary_info, service, date, date_edited) VALUES \
         ('BAD-BODY', ?1, ?2, 'iMessage', 700000000000000000, 700000000100000000)",
        params![garbage, b"not a plist".to_vec()],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO message (guid, text, service, date, handle_id) VALUES ('', 'orphan', 'SMS', 'yesterday', 'x')",
        [],
    )
    .unwrap();
    drop(conn);
    let mut index = MemoryIndex::new();
    let mut reader = ChatDbReader::open(&config(dir.path())).unwrap();
    let drafts = drain(&mut reader, &mut index, 10);
    let bad = drafts
        .iter()
        .find(|d| d.record.source.guid == "BAD-BODY" && d.record.kind == RecordKind::Message)
        .expect("the row with a bad body is archived");
    let mut fields: Vec<&str> = bad.record.decode_errors.iter().map(|e| e.field.as_str()).collect();
    fields.sort();
    assert_eq!(fields, ["attributedBody", "message_summary_info"]);
    use base64::Engine;
    let raw_of = |field: &str| {
        let e = bad.record.decode_errors.iter().find(|e| e.field == field).unwrap();
        assert!(!e.error.is_empty());
        base64::engine::general_purpose::STANDARD.decode(&e.raw_base64).unwrap()
    };
    assert_eq!(raw_of("attributedBody"), garbage);
    assert_eq!(raw_of("message_summary_info"), b"not a plist");
    assert!(
        bad.record.conversation.is_none(),
        "a row in no chat has no conversation"
    );
    let no_guid = drafts
        .iter()
        .find(|d| d.record.kind == RecordKind::DecodeError)
        .expect("the row without a guid is archived as a decode error");
    assert!(no_guid.record.source.guid.starts_with("rowid-"));
    let fields: Vec<&str> = no_guid.record.decode_errors.iter().map(|e| e.field.as_str()).collect();
    assert!(
        fields.contains(&"date") && fields.contains(&"handle_id") && fields.contains(&"text"),
        "{fields:?}"
    );
}

#[test]
fn services_filter_backfill_window_and_metadata_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Simulator::create(SimulatorConfig::new(dir.path(), 4)).unwrap();
    sim.write_history(2_000).unwrap();
    let mut cfg = config(dir.path());
    cfg.capture.services = vec!["iMessage".into()];
    cfg.capture.backfill_days = Some(365);
    cfg.capture.attachments = AttachmentPolicy::MetadataOnly;
    let mut index = MemoryIndex::new();
    let mut reader = ChatDbReader::open(&cfg).unwrap();
    let drafts = drain(&mut reader, &mut index, 200);
    assert!(!drafts.is_empty());
    let year_ago = capturefleet::apple::epoch::now_apple_ns() - 365 * 86_400 * 1_000_000_000;
    for d in &drafts {
        assert_eq!(d.record.source.service.as_deref(), Some("iMessage"));
        if matches!(d.record.kind, RecordKind::Message | RecordKind::Reply) {
            assert!(d.record.event_time_apple_ns >= year_ago);
        }
        if d.record.kind == RecordKind::Attachment {
            assert!(d.files.is_empty() && d.record.attachments[0].missing);
            assert_eq!(d.record.source.revision, "metadata");
        }
    }
    let rcs_or_sms = sim
        .manifest()
        .events
        .iter()
        .filter(|e| !e.chat_guid.starts_with("iMessage"))
        .count();
    assert!(rcs_or_sms > 0 && drafts.len() < sim.manifest().events.len());
}

#[test]
fn old_databases_with_dates_in_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let mut sim = Simulator::create(SimulatorConfig::new(dir.path(), 6)).unwrap();
    sim.write_history(10).unwrap();
    drop(sim);
    let conn = rusqlite::Connection::open(dir.path().join("chat.db")).unwrap();
    // macOS 10.12 and earlier stored seconds.
    conn.execute(
        "UPDATE message SET date = date / 1000000000, date_edited = date_edited / 1000000000",
        [],
    )
    .unwrap();
    let expected: HashMap<String, i64> = conn
        .prepare("SELECT guid, date FROM message")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? * 1_000_000_000)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    drop(conn);
    let mut index = MemoryIndex::new();
    let mut reader = ChatDbReader::open(&config(dir.path())).unwrap();
    let drafts = drain(&mut reader, &mut index, 100);
    for d in drafts
        .iter()
        .filter(|d| d.record.source.revision == "0" && d.record.source.table == "message")
    {
        assert_eq!(d.record.event_time_apple_ns, expected[&d.record.source.guid]);
        assert!(d.record.event_time.starts_with("20"));
    }
    assert!(index.max_rowid("message") > 0);
}

#[test]
fn open_fails_clearly_on_a_missing_or_foreign_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = ChatDbReader::open(&config(dir.path())).err().expect("missing file");
    assert!(err.to_string().contains("does not exist yet"), "{err}");
    rusqlite::Connection::open(dir.path().join("chat.db"))
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    let err = ChatDbReader::open(&config(dir.path())).err().expect("foreign file");
    assert!(err.to_string().contains("not a Messages database"), "{err}");
}

#[test]
fn a_lazy_reader_waits_for_messages_to_create_its_database_then_reads_it() {
    use capturefleet::agent::source::SourceError;
    let dir = tempfile::tempdir().unwrap();
    let mut reader = ChatDbReader::new(&config(dir.path()));
    let mut index = MemoryIndex::new();
    // Not there yet.
    let err = reader.poll(&index, 100).expect_err("no chat.db yet");
    assert!(matches!(err, SourceError::NotYet { .. }), "{err}");
    // There, but empty (the file exists before Messages has created its tables).
    std::fs::write(dir.path().join("chat.db"), b"").unwrap();
    let err = reader.poll(&index, 100).expect_err("no tables yet");
    assert!(matches!(err, SourceError::NotYet { .. }), "{err}");
    // Messages creates the database: the same reader reads it.
    let mut sim = Simulator::create(SimulatorConfig::new(dir.path(), 4)).unwrap();
    sim.write_history(50).unwrap();
    let drafts = drain(&mut reader, &mut index, 100);
    assert!(drafts.len() >= 50, "{}", drafts.len());
    // Something else entirely is an error (retried by the agent, never waited for silently).
    let foreign = tempfile::tempdir().unwrap();
    rusqlite::Connection::open(foreign.path().join("chat.db"))
        .unwrap()
        .execute_batch("CREATE TABLE orders (x)")
        .unwrap();
    let err = ChatDbReader::new(&config(foreign.path()))
        .poll(&MemoryIndex::new(), 10)
        .expect_err("foreign file");
    assert!(matches!(err, SourceError::Open { .. }), "{err}");
    assert!(err.to_string().contains("not a Messages database"), "{err}");
}
