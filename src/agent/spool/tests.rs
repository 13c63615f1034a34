use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::*;
use crate::agent::seal::tests::sample_record;
use crate::agent::source::Draft;
use crate::api::record::{ArchiveRecord, AttachmentInfo, RecordKind};
use crate::sinks::AttachmentStore;

fn draft(guid: &str, revision: &str, rowid: i64) -> Draft {
    let mut record = sample_record("dev-a", guid, revision);
    record.source.rowid = rowid;
    Draft { record, files: vec![] }
}

fn drafts(from: i64, to: i64) -> Vec<Draft> {
    (from..=to).map(|i| draft(&format!("G{i}"), "0", i)).collect()
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn seqs(batch: &Batch) -> Vec<u64> {
    batch.records.iter().map(|r| r.seq).collect()
}

/// A draft naming one attachment file with `content` (written under `dir`).
fn with_file(guid: &str, rowid: i64, dir: &Path, content: &[u8]) -> (Draft, String) {
    let sha = hex::encode(Sha256::digest(content));
    let file = dir.join(format!("{guid}.bin"));
    fs::write(&file, content).unwrap();
    let mut d = draft(guid, "0", rowid);
    d.record.attachments.push(AttachmentInfo {
        guid: format!("AT-{guid}"),
        size: content.len() as u64,
        sha256: Some(sha.clone()),
        ..Default::default()
    });
    d.files.push((sha.clone(), file));
    (d, sha)
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    segment::list(&dir.join(LOG_DIR))
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

#[test]
fn append_chains_from_one_and_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    assert_eq!(spool.head().seq, 0);
    let out = spool.append(&mut [draft("G1", "0", 1), draft("G2", "0", 2)]).unwrap();
    assert_eq!(out.appended.iter().map(|a| a.seq).collect::<Vec<_>>(), vec![1, 2]);
    let head = spool.head().clone();
    drop(spool);

    let spool = Spool::open(tmp.path(), "dev-a").unwrap();
    assert_eq!(spool.head(), &head);
    assert_eq!(spool.max_rowid("message"), 2);
    assert_eq!(spool.max_rowid("attachment"), 0);
    assert!(spool.contains_key("dev-a/G1/0"));
    assert!(!spool.contains_key("dev-a/G3/0"));

    let mut reader = spool.reader();
    let batch = reader.read_after(0, 10, usize::MAX).unwrap();
    assert_eq!(seqs(&batch), [1, 2]);
    let first = ArchiveRecord::from_json(&batch.records[0].json).unwrap();
    assert_eq!(first.prev_hash, GENESIS_HASH);
    assert!(first.hash_is_valid());
    let second = batch.records[1].record().unwrap();
    assert_eq!(second.prev_hash, first.hash);
    assert_eq!(second.hash, head.hash);
    assert_eq!(batch.records[1].json, second.to_canonical_json());
    assert_eq!(batch.records[1].meta.prev_hash, first.hash);
    assert_eq!(batch.records[1].meta.hash, head.hash);
    assert_eq!(&*batch.records[1].meta.device, "dev-a");
}

#[test]
fn duplicate_keys_are_dropped_within_and_across_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    let out = spool
        .append(&mut [draft("G1", "0", 1), draft("G1", "0", 1), draft("G1", "e1", 1)])
        .unwrap();
    assert_eq!((out.appended.len(), out.duplicates), (2, 1));
    let out = spool.append(&mut [draft("G1", "0", 1), draft("G2", "0", 2)]).unwrap();
    assert_eq!((out.appended.len(), out.duplicates), (1, 1));
    assert_eq!(out.appended[0].seq, 3, "no gap after a dropped duplicate");
}

#[test]
fn refuses_another_device_and_foreign_drafts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    let mut foreign = draft("G1", "0", 1);
    foreign.record.device.name = "dev-b".into();
    assert!(matches!(
        spool.append(&mut [foreign]),
        Err(SpoolError::InvalidDraft { .. })
    ));
    assert_eq!(spool.head().seq, 0, "nothing of a refused batch is chained");
    drop(spool);
    assert!(matches!(
        Spool::open(tmp.path(), "dev-b"),
        Err(SpoolError::WrongDevice { .. })
    ));
}

#[test]
fn live_guids_track_latest_key_and_deletions() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    let mut old = draft("OLD", "0", 1);
    old.record.event_time_apple_ns = 10;
    let mut edited = draft("G1", "0", 2);
    edited.record.event_time_apple_ns = 100;
    let mut edit = draft("G1", "e1", 2);
    edit.record.kind = RecordKind::Edit;
    edit.record.event_time_apple_ns = 150;
    let mut gone = draft("G2", "0", 3);
    gone.record.event_time_apple_ns = 120;
    let mut deletion = draft("G2", "deleted", 3);
    deletion.record.kind = RecordKind::DeletionDetected;
    spool.append(&mut [old, edited, edit, gone, deletion]).unwrap();
    let expected = vec![("G1".to_string(), "dev-a/G1/e1".to_string())];
    assert_eq!(spool.live_guids_since(50), expected);
    assert_eq!(spool.live_guids_since(0).len(), 2);
    drop(spool);
    let spool = Spool::open(tmp.path(), "dev-a").unwrap();
    assert_eq!(spool.live_guids_since(50), expected, "replayed from the log");
}

#[test]
fn cursors_start_at_the_compaction_floor_and_compaction_keeps_keys_and_head() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    spool.set_segment_max_bytes_unclamped(1); // one segment per batch
    spool.sync_cursors(&names(&["a", "b"])).unwrap();
    for i in 1..=10 {
        spool.append(&mut drafts(i, i)).unwrap();
    }
    assert_eq!(segment_files(tmp.path()).len(), 10);
    let mut reader = spool.reader();
    reader.ack("a", 10).unwrap();
    reader.ack("b", 4).unwrap();
    reader.ack("b", 2).unwrap();
    assert_eq!(reader.cursor("b").unwrap(), Some(4), "cursors never move back");
    assert_eq!(spool.compact(100).unwrap(), 4);
    assert_eq!(spool.compacted_through(), 4);
    assert_eq!(segment_files(tmp.path()).len(), 6);
    assert!(spool.contains_key("dev-a/G1/0"), "keys survive compaction");
    assert_eq!(
        seqs(&reader.read_after(4, 100, usize::MAX).unwrap()),
        [5, 6, 7, 8, 9, 10]
    );
    assert!(matches!(
        reader.read_after(2, 100, usize::MAX),
        Err(SpoolError::Missing { seq: 3, .. })
    ));

    // A sink added later starts where the spool still has records; a removed one is forgotten.
    let forgotten = spool.sync_cursors(&names(&["a", "c"])).unwrap();
    assert_eq!(forgotten, names(&["b"]));
    assert_eq!(reader.cursor("c").unwrap(), Some(4));
    assert_eq!(seqs(&reader.read_after(4, 2, usize::MAX).unwrap()), [5, 6]);
    reader.ack("c", 10).unwrap();
    spool.compact(100).unwrap();
    assert_eq!(
        spool.compacted_through(),
        9,
        "everything but the segment being appended to"
    );
    let head = spool.head().clone();
    let backlog = spool.backlog_bytes();
    assert_eq!(backlog, 0, "every sink has everything");
    drop((spool, reader));
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    assert_eq!(spool.head(), &head, "the chain head survives compaction");
    assert_eq!(spool.compacted_through(), 9);
    assert!((1..=10).all(|i| spool.contains_key(&format!("dev-a/G{i}/0"))));
    let out = spool.append(&mut drafts(1, 11)).unwrap();
    assert_eq!((out.appended.len(), out.duplicates), (1, 10));
    assert_eq!(spool.reader().cursor("a").unwrap(), Some(10));
}

#[test]
fn attachments_are_captured_with_the_record_and_compacted_after_delivery() {
    let tmp = tempfile::tempdir().unwrap();
    let device_files = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    spool.set_segment_max_bytes_unclamped(1);
    spool.sync_cursors(&names(&["a"])).unwrap();
    let content = b"%PDF-1.7 statement";
    let (with_file, sha) = with_file("G1", 1, device_files.path(), content);
    let mut vanished = draft("G2", "0", 2);
    let ghost = hex::encode(Sha256::digest(b"never there"));
    vanished.record.attachments.push(AttachmentInfo {
        guid: "AT-2".into(),
        size: 11,
        sha256: Some(ghost.clone()),
        ..Default::default()
    });
    vanished.files.push((ghost.clone(), PathBuf::from("/nonexistent/file")));
    let out = spool.append(&mut [with_file, vanished]).unwrap();
    assert_eq!((out.appended.len(), out.attachment_failures), (2, 1));
    // The device may delete its file now: the spool holds the content.
    fs::remove_file(device_files.path().join("G1.bin")).unwrap();

    let mut reader = spool.reader();
    let batch = reader.read_after(0, 10, usize::MAX).unwrap();
    assert_eq!(batch.records[0].meta.files, vec![sha.clone()]);
    assert_eq!(batch.get(&sha).unwrap().read_all().unwrap(), content);
    let second = batch.records[1].record().unwrap();
    assert!(second.attachments[0].missing && second.attachments[0].sha256.is_none());
    assert_eq!(second.decode_errors[0].field, "attachment:AT-2");
    assert!(second.hash_is_valid());
    assert!(batch.records[1].meta.files.is_empty());

    assert!(spool.backlog_bytes() > content.len() as u64);
    spool.append(&mut drafts(3, 3)).unwrap(); // a later segment, so the first can go
    reader.ack("a", 2).unwrap();
    let before = spool.used_bytes().unwrap();
    spool.compact(100).unwrap();
    assert_eq!(spool.compacted_through(), 2);
    assert!(spool.used_bytes().unwrap() < before);
    assert!(matches!(
        reader.read_after(0, 10, usize::MAX),
        Err(SpoolError::Missing { .. })
    ));
    reader.ack("a", 3).unwrap();
    assert_eq!(spool.backlog_bytes(), 0, "nothing waits for delivery");
}

#[test]
fn an_attachment_is_stored_once_per_segment_and_again_in_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    let content = vec![7u8; 5_000];
    let (a, sha) = with_file("G1", 1, files.path(), &content);
    let (b, _) = with_file("G2", 2, files.path(), &content);
    spool.append(&mut [a]).unwrap();
    let size_after_first = spool.used_bytes().unwrap();
    spool.append(&mut [b]).unwrap();
    assert!(
        spool.used_bytes().unwrap() - size_after_first < 4_000,
        "the same content is not stored twice in one segment"
    );
    spool.set_segment_max_bytes_unclamped(1);
    let (c, _) = with_file("G3", 3, files.path(), &content);
    spool.append(&mut [c]).unwrap();
    assert_eq!(segment_files(tmp.path()).len(), 2);
    // Each record resolves its file in its own segment, whatever the reader's starting point.
    for after in [0, 1, 2] {
        let mut reader = spool.reader();
        let batch = reader.read_after(after, 10, usize::MAX).unwrap();
        for record in &batch.records {
            assert_eq!(record.meta.files, vec![sha.clone()], "seq {}", record.seq);
            assert_eq!(batch.get(&sha).unwrap().read_all().unwrap(), content);
        }
    }
}

#[test]
fn a_large_attachment_is_streamed_into_the_log_and_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    let content: Vec<u8> = (0..(blobs::IN_MEMORY_MAX as usize * 5 + 17))
        .map(|i| (i % 241) as u8)
        .collect();
    let (d, sha) = with_file("BIG", 1, files.path(), &content);
    spool.append(&mut [d, draft("G2", "0", 2)]).unwrap();
    drop(spool);
    let spool = Spool::open(tmp.path(), "dev-a").unwrap();
    assert_eq!(spool.head().seq, 2);
    let batch = spool.reader().read_after(0, 10, usize::MAX).unwrap();
    let stored = batch.get(&sha).unwrap();
    assert_eq!(stored.len(), content.len() as u64);
    assert!(stored.read_all().unwrap() == content);
}

#[test]
fn a_torn_tail_is_cut_at_open_and_the_chain_continues() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    spool.append(&mut drafts(1, 3)).unwrap();
    spool.append(&mut drafts(4, 6)).unwrap();
    let head = spool.head().clone();
    drop(spool);
    // A batch whose fdatasync never returned: half of a frame, then garbage.
    let path = segment_files(tmp.path()).pop().unwrap();
    let file = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let len = file.metadata().unwrap().len();
    let mut first = vec![0u8; 600];
    file.read_exact_at(&mut first, segment::HEADER_LEN).unwrap();
    file.write_all_at(&first, len).unwrap();
    file.write_all_at(b"\xde\xad\xbe\xef garbage", len + 600).unwrap();
    drop(file);

    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    assert_eq!(spool.head(), &head);
    assert_eq!(fs::metadata(&path).unwrap().len(), len, "the torn tail is cut off");
    let out = spool.append(&mut drafts(4, 8)).unwrap();
    assert_eq!((out.appended.len(), out.duplicates), (2, 3));
    assert_eq!(out.appended[0].seq, 7);
    drop(spool);
    let spool = Spool::open(tmp.path(), "dev-a").unwrap();
    assert_eq!(spool.head().seq, 8);
    let batch = spool.reader().read_after(0, 100, usize::MAX).unwrap();
    assert_eq!(seqs(&batch), (1..=8).collect::<Vec<_>>());
}

#[test]
fn bytes_left_by_a_batch_that_failed_are_cut_before_the_next_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    spool.append(&mut drafts(1, 2)).unwrap();
    // What a failed batch could leave when cutting it off failed too: valid-looking frames.
    let path = segment_files(tmp.path()).pop().unwrap();
    let file = fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    let len = file.metadata().unwrap().len();
    let mut copy = vec![0u8; (len - segment::HEADER_LEN) as usize];
    file.read_exact_at(&mut copy, segment::HEADER_LEN).unwrap();
    file.write_all_at(&copy, len).unwrap();
    spool.append(&mut drafts(3, 3)).unwrap();
    drop(spool);
    let spool = Spool::open(tmp.path(), "dev-a").unwrap();
    assert_eq!(spool.head().seq, 3);
    assert_eq!(seqs(&spool.reader().read_after(0, 100, usize::MAX).unwrap()), [1, 2, 3]);
}

#[test]
fn damage_inside_a_closed_segment_refuses_to_open() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    spool.set_segment_max_bytes_unclamped(1);
    spool.append(&mut drafts(1, 2)).unwrap();
    spool.append(&mut drafts(3, 4)).unwrap();
    drop(spool);
    let first = segment_files(tmp.path()).remove(0);
    let file = fs::OpenOptions::new().write(true).open(&first).unwrap();
    file.write_all_at(b"X", segment::HEADER_LEN + 100).unwrap();
    let err = Spool::open(tmp.path(), "dev-a").map(|_| ()).unwrap_err();
    assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
}

#[test]
fn keys_stay_exactly_once_across_flushes_merges_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    spool.set_key_flush_every(3);
    let mut from = 1;
    while from <= 40 {
        let to = (from + 4).min(40);
        let out = spool.append(&mut drafts(from, to)).unwrap();
        assert_eq!((out.appended.len(), out.duplicates), ((to - from + 1) as usize, 0));
        from = to + 1;
    }
    // Keys in runs (merged ones too) and keys still recent are all duplicates now.
    let out = spool.append(&mut drafts(1, 40)).unwrap();
    assert_eq!((out.appended.len(), out.duplicates), (0, 40));
    let head = spool.head().clone();
    let runs = fs::read_dir(tmp.path().join(KEYS_DIR)).unwrap().count();
    assert!(runs < 8, "{runs} runs: merged");
    drop(spool);

    // A run no checkpoint names (a flush interrupted before its checkpoint) is removed.
    fs::write(tmp.path().join(KEYS_DIR).join(keys::run_name(99, 100)), b"junk").unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    assert!(!tmp.path().join(KEYS_DIR).join(keys::run_name(99, 100)).exists());
    assert!((1..=40).all(|i| spool.contains_key(&format!("dev-a/G{i}/0"))));
    assert!(!spool.contains_key("dev-a/G41/0"));
    let out = spool.append(&mut drafts(1, 41)).unwrap();
    assert_eq!((out.appended.len(), out.duplicates), (1, 40));
    assert_eq!(out.appended[0].seq, head.seq + 1);
}

#[test]
fn live_guids_outside_the_rescan_window_are_not_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    let now = crate::apple::epoch::now_apple_ns();
    let day = 86_400 * 1_000_000_000i64;
    let mut kept_before = draft("KEPT", "0", 1);
    kept_before.record.event_time_apple_ns = now - 30 * day;
    spool.append(&mut [kept_before]).unwrap();
    assert_eq!(
        spool.live_guids_since(0).len(),
        1,
        "without a window every GUID is kept"
    );

    spool.sync_cursors(&names(&["a"])).unwrap();
    spool.set_live_window(std::time::Duration::from_secs(7 * 86_400));
    assert!(
        spool.live_guids_since(0).is_empty(),
        "setting the window forgets what is outside it"
    );
    let mut old = draft("OLD", "0", 2);
    old.record.event_time_apple_ns = now - 9 * day;
    let mut recent = draft("NEW", "0", 3);
    recent.record.event_time_apple_ns = now - 7 * day;
    let mut old_edited = draft("OLD", "e1", 2);
    old_edited.record.kind = RecordKind::Edit;
    old_edited.record.event_time_apple_ns = now - day;
    spool.append(&mut [old, recent]).unwrap();
    let guids = |spool: &Spool| {
        spool
            .live_guids_since(0)
            .into_iter()
            .map(|(g, _)| g)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        guids(&spool),
        ["NEW"],
        "a record older than window + margin is not added"
    );
    spool.append(&mut [old_edited]).unwrap();
    assert_eq!(guids(&spool), ["NEW", "OLD"], "a recent edit brings its GUID in");
    assert_eq!(spool.live_guids_since(0)[1].1, "dev-a/OLD/e1");
}
