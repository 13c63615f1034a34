//! Object keys of the S3 sink: pure functions, one place.
//!
//! ```text
//! <prefix>/<namespace>/<device>/records/to-<last seq>-from-<first seq>.jsonl
//! <prefix>/<namespace>/<device>/attachments/<sha256>
//! ```
//! Sequence numbers are zero-padded to 20 digits so keys sort like numbers. A records object
//! is named by its *last* sequence number first: S3 lists keys in ascending order, so one
//! `ListObjectsV2(start-after = "…/to-<pos-1>-from-~", max-keys = 1)` returns the only object
//! that can contain sequence number `pos` (objects never overlap), or the next object after it.
//! That makes writes idempotent however the delivery loop re-cuts batches after a crash.
//! Devices without a namespace use `_` (not a valid namespace name, so it cannot collide).

/// The key prefix of one device: `<prefix>/<namespace>/<device>/` (the sink prefix may be empty).
pub fn device_base(prefix: &str, namespace: Option<&str>, device: &str) -> String {
    let prefix = prefix.trim_matches('/');
    let ns = namespace.filter(|n| !n.is_empty()).unwrap_or("_");
    if prefix.is_empty() {
        format!("{ns}/{device}/")
    } else {
        format!("{prefix}/{ns}/{device}/")
    }
}

/// The folder of a device's records objects.
pub fn records_dir(base: &str) -> String {
    format!("{base}records/")
}

/// The key of the records object holding `first..=last`.
pub fn records_key(base: &str, first: u64, last: u64) -> String {
    format!("{base}records/to-{last:020}-from-{first:020}.jsonl")
}

/// `(first, last)` of a records key under `base`, or None for anything else.
pub fn parse_records_key(base: &str, key: &str) -> Option<(u64, u64)> {
    let name = key
        .strip_prefix(base)?
        .strip_prefix("records/to-")?
        .strip_suffix(".jsonl")?;
    let (last, first) = name.split_once("-from-")?;
    if last.len() != 20 || first.len() != 20 {
        return None;
    }
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    (first <= last).then_some((first, last))
}

/// The `start-after` that makes a listing begin at the first object whose last sequence number
/// is at least `pos`.
pub fn start_after_for(base: &str, pos: u64) -> String {
    // Every key with last = pos - 1 continues with "-from-<digits>", which sorts before "~".
    format!("{base}records/to-{:020}-from-~", pos.saturating_sub(1))
}

/// The key of a captured attachment.
pub fn attachment_key(base: &str, sha256: &str) -> String {
    format!("{base}attachments/{sha256}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_last_sequence() {
        let base = device_base("/archive/", Some("compliance"), "dev-a");
        assert_eq!(base, "archive/compliance/dev-a/");
        assert_eq!(device_base("", None, "d"), "_/d/");
        let key = records_key(&base, 7, 12);
        assert_eq!(
            key,
            "archive/compliance/dev-a/records/to-00000000000000000012-from-00000000000000000007.jsonl"
        );
        assert_eq!(parse_records_key(&base, &key), Some((7, 12)));
        assert_eq!(parse_records_key(&base, &attachment_key(&base, "ab")), None);
        assert_eq!(parse_records_key("other/", &key), None);

        // The listing start for pos: after every object ending before pos, before every
        // object ending at or after pos.
        for (first, last) in [(1, 6), (7, 12), (13, 13), (14, 1000)] {
            let k = records_key(&base, first, last);
            for pos in [1u64, 6, 7, 12, 13, 14, 999, 1000, 1001] {
                let after = start_after_for(&base, pos);
                assert_eq!(k.as_str() > after.as_str(), last >= pos, "{k} vs {after}");
            }
        }
        let mut keys = [
            records_key(&base, 100, 200),
            records_key(&base, 1, 99),
            records_key(&base, 201, 201),
        ];
        keys.sort();
        let parsed: Vec<_> = keys.iter().map(|k| parse_records_key(&base, k).unwrap()).collect();
        assert_eq!(parsed, vec![(1, 99), (100, 200), (201, 201)]);
    }
}
