//! The drain receipt: what the agent reports when it stops, written to the termination-message
//! path so the kubelet copies it into the Pod status for the operator's finalizer.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::api::agent::{DRAIN_RECEIPT_SCHEMA, DrainReceipt};

use super::spool::ChainHead;

/// The kubelet keeps at most 4096 bytes of a termination message; stay below with margin.
pub const MAX_RECEIPT_BYTES: usize = 4000;

/// Build the receipt from the chain head and each sink's cursor.
pub fn receipt(head: &ChainHead, cursors: &BTreeMap<String, u64>) -> DrainReceipt {
    receipt_with_buffered(head, cursors, &BTreeMap::new())
}

/// Build the receipt from the chain head, each sink's cursor, and the records each sink
/// acknowledged but still holds in its own journal ([`crate::sinks::Sink::buffered`] after the
/// final flush): those are not in the archive yet, so they count as pending for that sink, and
/// the drain is complete only when every sink holds every record.
pub fn receipt_with_buffered(
    head: &ChainHead,
    cursors: &BTreeMap<String, u64>,
    buffered: &BTreeMap<String, u64>,
) -> DrainReceipt {
    let pending: BTreeMap<String, u64> = cursors
        .iter()
        .map(|(sink, cursor)| {
            let unacknowledged = head.seq.saturating_sub(*cursor);
            let held = buffered.get(sink).copied().unwrap_or(0);
            (sink.clone(), unacknowledged.saturating_add(held))
        })
        .collect();
    let pending_total = pending.values().sum();
    DrainReceipt {
        schema: DRAIN_RECEIPT_SCHEMA.to_owned(),
        records_captured: head.seq,
        last_sequence: head.seq,
        chain_head: head.hash.clone(),
        pending,
        pending_total,
        complete: pending_total == 0,
        finished_at: jiff::Timestamp::now().to_string(),
    }
}

/// The receipt as JSON of at most [`MAX_RECEIPT_BYTES`]: if many long sink names would make
/// it longer, the per-sink map keeps the sinks with the most pending records that fit (the
/// total stays exact).
pub fn to_bounded_json(receipt: &DrainReceipt) -> String {
    let mut receipt = receipt.clone();
    loop {
        let json = serde_json::to_string(&receipt).expect("a receipt serialises");
        if json.len() <= MAX_RECEIPT_BYTES || receipt.pending.is_empty() {
            return json;
        }
        let smallest = receipt
            .pending
            .iter()
            .min_by_key(|(name, pending)| (**pending, std::cmp::Reverse(name.len())))
            .map(|(name, _)| name.clone())
            .expect("not empty");
        receipt.pending.remove(&smallest);
    }
}

/// Write the receipt to `path` (a plain write: `/dev/termination-log` is a file the kubelet
/// mounted, which must not be replaced by a rename).
pub fn write(path: &Path, json: &str) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(json.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_counts_pending_per_sink_and_completes_at_zero() {
        let head = ChainHead {
            seq: 10,
            hash: "ab".repeat(32),
        };
        let r = receipt(&head, &BTreeMap::from([("a".into(), 10), ("b".into(), 7)]));
        assert_eq!(
            (r.records_captured, r.last_sequence, r.pending_total, r.complete),
            (10, 10, 3, false)
        );
        assert_eq!(r.pending["b"], 3);
        let done = receipt(&head, &BTreeMap::from([("a".into(), 10)]));
        assert!(done.complete);
        assert_eq!(DrainReceipt::parse(&to_bounded_json(&done)), Some(done));
    }

    #[test]
    fn records_a_sink_still_journals_are_pending_for_that_sink() {
        let head = ChainHead {
            seq: 10,
            hash: "ab".repeat(32),
        };
        let cursors = BTreeMap::from([("archive".into(), 10), ("smtp".into(), 10)]);
        let r = receipt_with_buffered(&head, &cursors, &BTreeMap::from([("smtp".into(), 4)]));
        assert_eq!((r.pending["archive"], r.pending["smtp"]), (0, 4));
        assert_eq!((r.pending_total, r.complete), (4, false));
        let flushed = receipt_with_buffered(&head, &cursors, &BTreeMap::from([("smtp".into(), 0)]));
        assert!(flushed.complete && flushed.pending_total == 0);
    }

    #[test]
    fn receipt_stays_under_the_termination_message_limit() {
        let head = ChainHead {
            seq: 5,
            hash: "c".repeat(64),
        };
        let cursors: BTreeMap<String, u64> = (0..100)
            .map(|i| (format!("{i:03}-{}", "s".repeat(60)), i % 5))
            .collect();
        let json = to_bounded_json(&receipt(&head, &cursors));
        assert!(json.len() <= MAX_RECEIPT_BYTES, "{}", json.len());
        let parsed = DrainReceipt::parse(&json).unwrap();
        assert_eq!(parsed.pending_total, (0..100).map(|i| 5 - i % 5).sum::<u64>());
        assert!(
            parsed.pending.values().all(|p| *p > 0),
            "the sinks with most pending are kept"
        );
    }
}
