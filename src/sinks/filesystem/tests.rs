use std::io::Write;

use super::*;
use crate::agent::seal::seal_canonical;
use crate::agent::seal::tests::sample_record;
use crate::api::record::{AttachmentInfo, GENESIS_HASH};
use crate::sinks::attachment::FilesByHash;

/// `n` sealed records of `device`, chained from 1.
fn chain(device: &str, n: u64) -> Vec<SpooledRecord> {
    let mut prev = GENESIS_HASH.to_owned();
    (1..=n)
        .map(|seq| {
            let mut record = sample_record(device, &format!("G{seq}"), "0");
            let json = seal_canonical(&mut record, seq, &prev);
            prev = record.hash.clone();
            SpooledRecord::from_record(seq, record, json)
        })
        .collect()
}

fn sink(root: &Path, segment_max_records: u64) -> FilesystemSink {
    FilesystemSink::new(
        "archive",
        &FilesystemTarget {
            path: root.to_path_buf(),
            segment_max_records,
        },
    )
}

fn lines(root: &Path, device: &str) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(root.join(device))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(parse_segment_name).map(|_| e.path()))
        .collect();
    names.sort();
    names
        .iter()
        .flat_map(|p| {
            fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn writes_spool_bytes_in_rotated_segments_and_skips_redelivery() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = FilesByHash::default();
    let records = chain("dev-a", 7);
    let s = sink(&tmp.path().join("archive"), 3);
    s.start().await.unwrap();
    s.deliver(&records[..4], &blobs).await.unwrap();
    s.deliver(&records[2..7], &blobs).await.unwrap(); // overlaps: 3 and 4 again
    let stored = lines(&tmp.path().join("archive"), "dev-a");
    let expected: Vec<String> = records.iter().map(|r| r.json.to_string()).collect();
    assert_eq!(stored, expected, "exactly the spool's bytes, once each");
    let mut segments: Vec<String> = fs::read_dir(tmp.path().join("archive/dev-a"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    segments.sort();
    assert_eq!(segments, vec![segment_name(1), segment_name(4), segment_name(7)]);

    // A fresh sink (agent restart) reads its position back and still skips.
    let again = sink(&tmp.path().join("archive"), 3);
    again.deliver(&records[5..7], &blobs).await.unwrap();
    assert_eq!(lines(&tmp.path().join("archive"), "dev-a").len(), 7);
}

#[tokio::test]
async fn refuses_gaps_and_forks_loudly() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = FilesByHash::default();
    let records = chain("dev-a", 5);
    let s = sink(tmp.path(), 100);
    s.deliver(&records[..2], &blobs).await.unwrap();
    let err = s.deliver(&records[3..], &blobs).await.unwrap_err();
    assert!(matches!(err, SinkError::Permanent(ref m) if m.contains("gap")), "{err}");

    let other = chain("dev-a", 3); // same seqs, but resealed with different content below
    let mut forked = other[2].clone();
    forked.meta.prev_hash = "f".repeat(64);
    let err = s.deliver(&[forked], &blobs).await.unwrap_err();
    assert!(
        matches!(err, SinkError::Permanent(ref m) if m.contains("prev_hash")),
        "{err}"
    );

    let mut altered = records[1].clone();
    altered.meta.hash = "e".repeat(64);
    let err = s.deliver(&[altered], &blobs).await.unwrap_err();
    assert!(
        matches!(err, SinkError::Permanent(ref m) if m.contains("differs")),
        "{err}"
    );
    assert_eq!(
        lines(tmp.path(), "dev-a").len(),
        2,
        "nothing written by refused batches"
    );
    s.deliver(&records[2..], &blobs).await.unwrap();
    assert_eq!(lines(tmp.path(), "dev-a").len(), 5);
}

#[tokio::test]
async fn cuts_a_torn_trailing_line_and_removes_an_empty_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = FilesByHash::default();
    let records = chain("dev-a", 4);
    sink(tmp.path(), 2).deliver(&records[..3], &blobs).await.unwrap();
    let newest = tmp.path().join("dev-a").join(segment_name(3));
    let mut f = OpenOptions::new().append(true).open(&newest).unwrap();
    f.write_all(&records[3].json.as_bytes()[..40]).unwrap();
    drop(f);
    fs::write(tmp.path().join("dev-a").join(segment_name(5)), b"").unwrap();
    sink(tmp.path(), 2).deliver(&records[3..], &blobs).await.unwrap();
    let stored = lines(tmp.path(), "dev-a");
    assert_eq!(stored, records.iter().map(|r| r.json.to_string()).collect::<Vec<_>>());
    assert!(!tmp.path().join("dev-a").join(segment_name(5)).exists());
}

/// `n` records chained from 1, each naming its own attachment file (served by `files`).
fn chain_with_files(n: u64, dir: &Path, files: &mut FilesByHash) -> Vec<SpooledRecord> {
    let mut prev = GENESIS_HASH.to_owned();
    (1..=n)
        .map(|seq| {
            let content = format!("\u{89}PNG image {seq}").into_bytes();
            let sha = files.add(dir, &content);
            let mut record = sample_record("dev-a", &format!("G{seq}"), "0");
            record.attachments.push(AttachmentInfo {
                guid: format!("AT{seq}"),
                size: content.len() as u64,
                sha256: Some(sha),
                ..Default::default()
            });
            let json = seal_canonical(&mut record, seq, &prev);
            prev = record.hash.clone();
            SpooledRecord::from_record(seq, record, json)
        })
        .collect()
}

fn stored_files(device_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(device_dir.join(ATTACHMENTS_DIR))
        .unwrap()
        .flatten()
        .flat_map(|d| fs::read_dir(d.path()).unwrap().flatten())
        .map(|f| f.file_name().into_string().unwrap())
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn stores_attachments_by_hash_one_by_one_or_per_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = FilesByHash::default();
    // 3 files: each made durable on its own; then 30 in one batch: two file-system syncs.
    let records = chain_with_files(3 + 30, tmp.path(), &mut files);
    let s = sink(&tmp.path().join("archive"), 10);
    s.deliver(&records[..3], &files).await.unwrap();
    s.deliver(&records[3..], &files).await.unwrap();
    let device = tmp.path().join("archive/dev-a");
    let mut expected: Vec<String> = files.0.keys().cloned().collect();
    expected.sort();
    assert_eq!(
        stored_files(&device),
        expected,
        "every file, under its hash, no temporary left"
    );
    for (sha, source) in &files.0 {
        assert_eq!(
            fs::read(attachment_path(&device, sha)).unwrap(),
            fs::read(source).unwrap()
        );
    }
    assert_eq!(lines(&tmp.path().join("archive"), "dev-a").len(), 33);
}

#[tokio::test]
async fn temporary_files_of_an_interrupted_batch_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = FilesByHash::default();
    let records = chain_with_files(2, tmp.path(), &mut files);
    let device = tmp.path().join("archive/dev-a");
    sink(&tmp.path().join("archive"), 10)
        .deliver(&records[..1], &files)
        .await
        .unwrap();
    let leftover = crate::sinks::files::temporary_name(&attachment_path(&device, &"ab".repeat(32)));
    fs::create_dir_all(leftover.parent().unwrap()).unwrap();
    fs::write(&leftover, b"half").unwrap();
    sink(&tmp.path().join("archive"), 10)
        .deliver(&records[1..], &files)
        .await
        .unwrap();
    assert!(!leftover.exists());
    assert_eq!(stored_files(&device).len(), 2);
}

#[tokio::test]
async fn rejects_unsafe_device_names() {
    let tmp = tempfile::tempdir().unwrap();
    let blobs = FilesByHash::default();
    let s = sink(&tmp.path().join("archive"), 10);
    let evil = chain("../escape", 1);
    assert!(matches!(s.deliver(&evil, &blobs).await, Err(SinkError::Permanent(_))));
}
