use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::*;
use crate::agent::seal::tests::sample_record;
use crate::api::record::{ArchiveRecord, AttachmentInfo, RecordKind};
use crate::sinks::AttachmentStore;

fn draft(guid: &str, revision: &str, rowid: i64) -> Draft {
    let mut record = sample_record("dev-a", guid, revision);
    record.source.rowid = rowid;
    Draft { record, files: vec![] }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
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

    let reader = SpoolReader::open(tmp.path()).unwrap();
    let batch = reader.read_after(0, 10, usize::MAX).unwrap();
    assert_eq!(batch.len(), 2);
    let first = ArchiveRecord::from_json(&batch[0].json).unwrap();
    assert_eq!(first.prev_hash, GENESIS_HASH);
    assert!(first.hash_is_valid());
    assert_eq!(batch[1].record.prev_hash, first.hash);
    assert_eq!(batch[1].record.hash, head.hash);
    assert_eq!(batch[1].json, batch[1].record.to_canonical_json());
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
    assert_eq!(
        spool.live_guids_since(50),
        vec![("G1".to_string(), "dev-a/G1/e1".to_string())]
    );
    assert_eq!(spool.live_guids_since(0).len(), 2);
}

#[test]
fn cursors_start_at_the_compaction_floor_and_compaction_keeps_keys_and_head() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    spool.sync_cursors(&names(&["a", "b"])).unwrap();
    spool
        .append(&mut (1..=10).map(|i| draft(&format!("G{i}"), "0", i)).collect::<Vec<_>>())
        .unwrap();
    let reader = SpoolReader::open(tmp.path()).unwrap();
    reader.ack("a", 10).unwrap();
    reader.ack("b", 4).unwrap();
    reader.ack("b", 2).unwrap();
    assert_eq!(reader.cursor("b").unwrap(), Some(4), "cursors never move back");
    assert_eq!(spool.compact(100).unwrap(), 4);
    assert_eq!(spool.compacted_through(), 4);
    assert!(spool.contains_key("dev-a/G1/0"), "keys survive compaction");
    assert_eq!(reader.read_after(4, 100, usize::MAX).unwrap().len(), 6);
    assert!(matches!(
        reader.read_after(2, 100, usize::MAX),
        Err(SpoolError::Missing { seq: 3, .. })
    ));

    // A sink added later starts where the spool still has records; a removed one is forgotten.
    let forgotten = spool.sync_cursors(&names(&["a", "c"])).unwrap();
    assert_eq!(forgotten, names(&["b"]));
    assert_eq!(reader.cursor("c").unwrap(), Some(4));
    reader.ack("c", 10).unwrap();
    spool.compact(100).unwrap();
    assert_eq!(spool.compacted_through(), 10);
    let head = spool.head().clone();
    drop(spool);
    let spool = Spool::open(tmp.path(), "dev-a").unwrap();
    assert_eq!(spool.head(), &head, "the chain head survives compaction");
    assert_eq!(spool.compacted_through(), 10);
}

#[test]
fn attachments_are_captured_with_the_record_and_compacted_after_delivery() {
    let tmp = tempfile::tempdir().unwrap();
    let device_files = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    spool.sync_cursors(&names(&["a"])).unwrap();
    let content = b"%PDF-1.7 statement";
    let sha = hex::encode(Sha256::digest(content));
    let file = device_files.path().join("statement.pdf");
    std::fs::write(&file, content).unwrap();
    let mut with_file = draft("G1", "0", 1);
    with_file.record.attachments.push(AttachmentInfo {
        guid: "AT-1".into(),
        size: content.len() as u64,
        sha256: Some(sha.clone()),
        ..Default::default()
    });
    with_file.files.push((sha.clone(), file.clone()));
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
    let before = spool.used_bytes().unwrap();
    let stored = spool.blobs().path_of(&sha).expect("blob captured");
    assert_eq!(std::fs::read(&stored).unwrap(), content);

    let reader = SpoolReader::open(tmp.path()).unwrap();
    let batch = reader.read_after(0, 10, usize::MAX).unwrap();
    let second = &batch[1].record;
    assert!(second.attachments[0].missing && second.attachments[0].sha256.is_none());
    assert_eq!(second.decode_errors[0].field, "attachment:AT-2");
    assert!(second.hash_is_valid());

    assert!(spool.backlog_bytes() > content.len() as u64);
    reader.ack("a", 2).unwrap();
    spool.compact(100).unwrap();
    assert_eq!(spool.backlog_bytes(), 0, "nothing waits for delivery");
    assert!(spool.blobs().path_of(&sha).is_none(), "delivered blobs are compacted");
    assert!(spool.used_bytes().unwrap() <= before);
}

#[test]
fn keys_stay_exactly_once_across_merges_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    spool.set_key_merge_every(3);
    let batch = |from: i64, to: i64| (from..=to).map(|i| draft(&format!("G{i}"), "0", i)).collect::<Vec<_>>();
    for (from, to) in [(1, 2), (3, 4), (5, 8), (9, 9)] {
        let out = spool.append(&mut batch(from, to)).unwrap();
        assert_eq!((out.appended.len(), out.duplicates), ((to - from + 1) as usize, 0));
    }
    // Keys merged into the sorted table and keys still recent are both duplicates now.
    let out = spool.append(&mut batch(1, 9)).unwrap();
    assert_eq!((out.appended.len(), out.duplicates), (0, 9));
    let head = spool.head().clone();
    drop(spool);

    let mut spool = Spool::open(tmp.path(), "dev-a").unwrap();
    assert!((1..=9).all(|i| spool.contains_key(&format!("dev-a/G{i}/0"))));
    assert!(!spool.contains_key("dev-a/G10/0"));
    let out = spool.append(&mut batch(1, 10)).unwrap();
    assert_eq!((out.appended.len(), out.duplicates), (1, 9));
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
        ["KEPT", "NEW"],
        "a record older than window + margin is not added"
    );
    spool.append(&mut [old_edited]).unwrap();
    assert_eq!(
        guids(&spool),
        ["KEPT", "NEW", "OLD"],
        "a recent edit brings its GUID in"
    );

    // Compaction drops what fell out of the window.
    SpoolReader::open(tmp.path()).unwrap().ack("a", 4).unwrap();
    spool.compact(100).unwrap();
    assert_eq!(guids(&spool), ["NEW", "OLD"]);
    assert_eq!(spool.live_guids_since(0)[1].1, "dev-a/OLD/e1");
}
