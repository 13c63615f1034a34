use sha2::{Digest, Sha256};

use super::*;
use crate::agent::seal::seal_canonical;
use crate::agent::seal::tests::sample_record;
use crate::agent::spool::BlobStore;
use crate::api::record::AttachmentInfo;

/// `n` sealed records of `device`, chained from 1.
fn chain(device: &str, n: u64) -> Vec<SpooledRecord> {
    let mut prev = GENESIS_HASH.to_owned();
    (1..=n)
        .map(|seq| {
            let mut record = sample_record(device, &format!("G{seq}"), "0");
            let json = seal_canonical(&mut record, seq, &prev);
            prev = record.hash.clone();
            SpooledRecord { seq, record, json }
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
    let blobs = BlobStore::new(tmp.path());
    let records = chain("dev-a", 7);
    let s = sink(&tmp.path().join("archive"), 3);
    s.start().await.unwrap();
    s.deliver(&records[..4], &blobs).await.unwrap();
    s.deliver(&records[2..7], &blobs).await.unwrap(); // overlaps: 3 and 4 again
    let stored = lines(&tmp.path().join("archive"), "dev-a");
    let expected: Vec<String> = records.iter().map(|r| r.json.clone()).collect();
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
    let blobs = BlobStore::new(tmp.path());
    let records = chain("dev-a", 5);
    let s = sink(tmp.path(), 100);
    s.deliver(&records[..2], &blobs).await.unwrap();
    let err = s.deliver(&records[3..], &blobs).await.unwrap_err();
    assert!(matches!(err, SinkError::Permanent(ref m) if m.contains("gap")), "{err}");

    let other = chain("dev-a", 3); // same seqs, but resealed with different content below
    let mut forked = other[2].clone();
    forked.record.prev_hash = "f".repeat(64);
    let err = s.deliver(&[forked], &blobs).await.unwrap_err();
    assert!(
        matches!(err, SinkError::Permanent(ref m) if m.contains("prev_hash")),
        "{err}"
    );

    let mut altered = records[1].clone();
    altered.record.hash = "e".repeat(64);
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
    let blobs = BlobStore::new(tmp.path());
    let records = chain("dev-a", 4);
    sink(tmp.path(), 2).deliver(&records[..3], &blobs).await.unwrap();
    let newest = tmp.path().join("dev-a").join(segment_name(3));
    let mut f = OpenOptions::new().append(true).open(&newest).unwrap();
    f.write_all(&records[3].json.as_bytes()[..40]).unwrap();
    drop(f);
    fs::write(tmp.path().join("dev-a").join(segment_name(5)), b"").unwrap();
    sink(tmp.path(), 2).deliver(&records[3..], &blobs).await.unwrap();
    let stored = lines(tmp.path(), "dev-a");
    assert_eq!(stored, records.iter().map(|r| r.json.clone()).collect::<Vec<_>>());
    assert!(!tmp.path().join("dev-a").join(segment_name(5)).exists());
}

#[tokio::test]
async fn stores_attachments_by_hash_and_rejects_unsafe_device_names() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    let blobs = BlobStore::new(&spool);
    let content = b"\x89PNG image";
    let sha = hex::encode(Sha256::digest(content));
    let src = tmp.path().join("img.png");
    fs::write(&src, content).unwrap();
    blobs.put(&sha, &src).unwrap();
    let mut record = sample_record("dev-a", "G1", "0");
    record.attachments.push(AttachmentInfo {
        guid: "AT".into(),
        size: content.len() as u64,
        sha256: Some(sha.clone()),
        ..Default::default()
    });
    let json = seal_canonical(&mut record, 1, GENESIS_HASH);
    let s = sink(&tmp.path().join("archive"), 10);
    s.deliver(&[SpooledRecord { seq: 1, record, json }], &blobs)
        .await
        .unwrap();
    let stored = attachment_path(&tmp.path().join("archive/dev-a"), &sha);
    assert_eq!(fs::read(stored).unwrap(), content);

    let mut evil = chain("../escape", 1);
    evil[0].record.device.name = "../escape".into();
    assert!(matches!(s.deliver(&evil, &blobs).await, Err(SinkError::Permanent(_))));
}
