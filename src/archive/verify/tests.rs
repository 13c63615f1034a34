use std::path::Path;

use super::*;
use crate::agent::seal::seal_canonical;
use crate::agent::seal::tests::sample_record;
use crate::api::agent::FilesystemTarget;
use crate::api::record::AttachmentInfo;
use crate::sinks::attachment::FilesByHash;
use crate::sinks::filesystem::{FilesystemSink, segment_name};
use crate::sinks::{Sink, SpooledRecord};

const DEVICE: &str = "dev-a";

/// An archive of `n` records written by the real filesystem sink (record 2 carries an
/// attachment), in segments of 4.
fn archive(n: u64) -> (tempfile::TempDir, Vec<SpooledRecord>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut blobs = FilesByHash::default();
    let sha = blobs.add(tmp.path(), b"attachment");
    let mut prev = GENESIS_HASH.to_owned();
    let records: Vec<SpooledRecord> = (1..=n)
        .map(|seq| {
            let mut record = sample_record(DEVICE, &format!("G{seq}"), "0");
            if seq == 2 {
                record.attachments.push(AttachmentInfo {
                    guid: "AT".into(),
                    size: 10,
                    sha256: Some(sha.clone()),
                    ..Default::default()
                });
            }
            let json = seal_canonical(&mut record, seq, &prev);
            prev = record.hash.clone();
            SpooledRecord::from_record(seq, record, json)
        })
        .collect();
    let sink = FilesystemSink::new(
        "a",
        &FilesystemTarget {
            path: tmp.path().join("archive"),
            segment_max_records: 4,
        },
    );
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(sink.deliver(&records, &blobs))
        .unwrap();
    (tmp, records)
}

fn root(tmp: &tempfile::TempDir) -> PathBuf {
    tmp.path().join("archive")
}

fn segment(tmp: &tempfile::TempDir, first: u64) -> PathBuf {
    root(tmp).join(DEVICE).join(segment_name(first))
}

fn edit_lines(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect();
    f(&mut lines);
    fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn kinds(report: &Report) -> Vec<&'static str> {
    let mut kinds: Vec<_> = report.problems.iter().map(|p| p.kind).collect();
    kinds.dedup();
    kinds
}

#[test]
fn an_untouched_archive_verifies() {
    let (tmp, records) = archive(10);
    let report = verify(&root(&tmp)).unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!((report.records, report.devices, report.problems_total), (10, 1, 0));
    assert_eq!(report.heads[DEVICE].hash, records[9].meta.hash);
}

#[test]
fn an_altered_body_is_a_hash_mismatch() {
    let (tmp, _) = archive(10);
    edit_lines(&segment(&tmp, 5), |lines| {
        lines[1] = lines[1].replacen("quoted", "QUOTED", 1)
    });
    let report = verify(&root(&tmp)).unwrap();
    assert!(!report.ok);
    assert_eq!(kinds(&report), vec!["hash_mismatch"]);
    assert_eq!(report.problems[0].seq, Some(6));
    assert_eq!(report.problems[0].line, Some(2));
}

#[test]
fn an_altered_and_rehashed_record_breaks_the_next_link() {
    let (tmp, records) = archive(10);
    let mut forged = records[5].record().unwrap().clone();
    forged.body.as_mut().unwrap().text = "something else".into();
    let json = seal_canonical(&mut forged, 6, &records[4].meta.hash);
    edit_lines(&segment(&tmp, 5), |lines| lines[1] = json);
    let report = verify(&root(&tmp)).unwrap();
    assert_eq!(kinds(&report), vec!["broken_link"]);
    assert_eq!(report.problems[0].seq, Some(7));
}

#[test]
fn a_removed_record_is_a_gap() {
    let (tmp, _) = archive(10);
    edit_lines(&segment(&tmp, 5), |lines| {
        lines.remove(2);
    });
    let report = verify(&root(&tmp)).unwrap();
    assert_eq!(kinds(&report), vec!["gap"]);
    assert_eq!(report.problems[0].seq, Some(7));
}

#[test]
fn a_repeated_record_is_a_duplicate() {
    let (tmp, _) = archive(10);
    edit_lines(&segment(&tmp, 5), |lines| {
        let copy = lines[0].clone();
        lines.insert(1, copy);
    });
    let report = verify(&root(&tmp)).unwrap();
    assert_eq!(kinds(&report), vec!["duplicate"]);
}

#[test]
fn swapped_records_are_reordered() {
    let (tmp, _) = archive(10);
    edit_lines(&segment(&tmp, 5), |lines| lines.swap(1, 2));
    let report = verify(&root(&tmp)).unwrap();
    assert_eq!(kinds(&report), vec!["reordered"]);
}

#[test]
fn garbage_and_reformatted_lines_are_reported() {
    let (tmp, _) = archive(10);
    edit_lines(&segment(&tmp, 9), |lines| {
        lines[0] = lines[0].replacen('{', "{ ", 1);
        lines.push("{\"schema\":\"capturefleet.dev/record/v1\",\"trunc".into());
    });
    let report = verify(&root(&tmp)).unwrap();
    assert_eq!(kinds(&report), vec!["not_canonical", "unparsable"]);
}

#[test]
fn an_event_archived_twice_is_a_duplicate_key_even_in_a_valid_chain() {
    let (tmp, records) = archive(10);
    let mut again = records[3].record().unwrap().clone();
    let json = seal_canonical(&mut again, 11, &records[9].meta.hash);
    edit_lines(&segment(&tmp, 9), |lines| lines.push(json));
    let report = verify(&root(&tmp)).unwrap();
    assert_eq!(kinds(&report), vec!["duplicate_key"]);
}

#[test]
fn altered_and_missing_attachments_are_reported() {
    let (tmp, _) = archive(10);
    let sha = hex::encode(Sha256::digest(b"attachment"));
    let path = attachment_path(&root(&tmp).join(DEVICE), &sha);
    fs::write(&path, b"attachmenT").unwrap();
    let report = verify(&root(&tmp)).unwrap();
    assert_eq!(kinds(&report), vec!["attachment_altered"]);
    fs::remove_file(&path).unwrap();
    let report = verify(&root(&tmp)).unwrap();
    assert_eq!(kinds(&report), vec!["attachment_missing"]);
}

#[test]
fn a_record_moved_to_another_device_and_a_misnamed_segment_are_reported() {
    let (tmp, _) = archive(8);
    fs::create_dir_all(root(&tmp).join("dev-b")).unwrap();
    fs::rename(segment(&tmp, 5), root(&tmp).join("dev-b").join(segment_name(1))).unwrap();
    let report = verify(&root(&tmp)).unwrap();
    let mut found = kinds(&report);
    found.sort();
    found.dedup();
    assert_eq!(found, vec!["gap", "segment_name", "wrong_device"]);
    assert_eq!(report.devices, 2);
}
