//! `docs/record.schema.json` accepts every kind of record the agent emits and refuses broken
//! ones. (The end-to-end tests also validate every record they archive against it.)

mod pipeline_support;

use capturefleet::api::record::{ArchiveRecord, GENESIS_HASH};
use pipeline_support::{record_validator, schema_errors};
use serde_json::{Value, json};

fn base(kind: &str) -> Value {
    json!({
        "schema": "capturefleet.dev/record/v1",
        "kind": kind,
        "idempotency_key": "dev-a/3F2C-11/0",
        "seq": 0,
        "prev_hash": "",
        "device": {"name": "dev-a", "namespace": "desk", "user_id": "u-1", "agent_version": "0.1.0"},
        "event_time": "2025-03-01T10:00:00.123456789Z",
        "event_time_apple_ns": 762_516_000_123_456_789i64,
        "captured_at": "2025-03-01T10:00:00.5Z",
        "clock": {"source": "system-realtime", "synchronized": true},
        "source": {"table": "message", "rowid": 42, "guid": "3F2C-11", "revision": "0", "service": "iMessage"},
        "conversation": {
            "id": "0123456789abcdef0123456789abcdef", "guid": "iMessage;+;chat1", "chat_identifier": "chat1",
            "service": "iMessage", "is_group": true, "display_name": "Desk", "participants": ["+15550100", "a@example.com"]
        },
        "sender": {"handle": "+15550100", "is_from_me": false},
        "direction": "inbound"
    })
}

fn sealed(mut value: Value, extra: Value) -> String {
    for (k, v) in extra.as_object().unwrap() {
        value[k] = v.clone();
    }
    let mut record: ArchiveRecord = serde_json::from_value(value).expect("a valid ArchiveRecord");
    record.seal(1, GENESIS_HASH);
    record.to_canonical_json()
}

fn every_kind() -> Vec<String> {
    let sha = "a".repeat(64);
    vec![
        sealed(
            base("message"),
            json!({"body": {"text": "hi \u{fffc}", "origin": "attributedBody",
            "parts": [{"index": 0, "text": "hi "}, {"index": 1, "text": "\u{fffc}", "attachment_guid": "AT-1"}]},
            "attachments": [{"guid": "AT-1", "name": "a.jpg", "mime_type": "image/jpeg", "uti": "public.jpeg",
                "size": 10, "sha256": sha, "missing": false}]}),
        ),
        sealed(
            base("reply"),
            json!({"body": {"text": "yes", "origin": "text"},
            "reply_to": {"originator_guid": "ROOT", "originator_part": "0:0:3"}}),
        ),
        sealed(
            base("edit"),
            json!({"edit": {"part": 0, "revision": 1, "edited_at": "2025-03-01T10:01:00Z",
            "text": "fixed", "original_text": "fxied"}}),
        ),
        sealed(
            base("unsend"),
            json!({"unsend": {"part": 0, "unsent_at": "2025-03-01T10:01:00Z"}}),
        ),
        sealed(
            base("reaction_added"),
            json!({"reaction": {"reaction": "emoji", "code": 2006,
            "target_guid": "T", "target_part": 0, "emoji": "🚀"}}),
        ),
        sealed(
            base("reaction_removed"),
            json!({"reaction": {"reaction": "unknown(3999)", "code": 3999, "target_guid": "T"}}),
        ),
        sealed(
            base("attachment"),
            json!({"attachments": [{"guid": "AT-2", "size": 0, "missing": true}]}),
        ),
        sealed(
            base("group_renamed"),
            json!({"group_event": {"action": "renamed", "new_name": "Desk 2",
            "item_type": 2, "group_action_type": 0}}),
        ),
        sealed(
            base("group_member_added"),
            json!({"group_event": {"action": "member_added", "member": "+15550101",
            "item_type": 1, "group_action_type": 0}}),
        ),
        sealed(
            base("group_member_left"),
            json!({"group_event": {"action": "member_left", "item_type": 3, "group_action_type": 0}}),
        ),
        sealed(
            base("group_icon_changed"),
            json!({"group_event": {"action": "icon_removed", "item_type": 3, "group_action_type": 2}}),
        ),
        sealed(
            base("deletion_detected"),
            json!({"deletion": {"last_archived_key": "dev-a/3F2C-11/e1",
            "detected_at": "2025-03-02T00:00:00Z"}}),
        ),
        sealed(
            base("decode_error"),
            json!({"decode_errors": [{"field": "attributedBody",
            "error": "typedstream: unexpected end", "raw_base64": "BAtzdHJlYW10eXBlZA=="}]}),
        ),
    ]
}

#[test]
fn every_kind_of_record_validates() {
    let validator = record_validator();
    for line in every_kind() {
        let errors = schema_errors(&validator, &line);
        assert!(errors.is_empty(), "{line}\n{errors:#?}");
    }
}

/// A way of breaking a valid record.
type Breaker = Box<dyn Fn(&mut Value)>;

#[test]
fn broken_records_are_refused() {
    let validator = record_validator();
    let good: Value = serde_json::from_str(&every_kind()[1]).unwrap();
    let cases: Vec<(&str, Breaker)> = vec![
        (
            "unsealed",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("hash");
            }),
        ),
        ("seq 0", Box::new(|v| v["seq"] = json!(0))),
        ("upper-case hash", Box::new(|v| v["hash"] = json!("A".repeat(64)))),
        ("unknown member", Box::new(|v| v["extra"] = json!(1))),
        (
            "local time",
            Box::new(|v| v["event_time"] = json!("2025-03-01T11:00:00+01:00")),
        ),
        (
            "reply without reply_to",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("reply_to");
            }),
        ),
        ("unknown kind", Box::new(|v| v["kind"] = json!("typing"))),
        (
            "bad base64",
            Box::new(|v| v["decode_errors"] = json!([{"field": "f", "error": "e", "raw_base64": "***"}])),
        ),
    ];
    for (what, break_it) in cases {
        let mut v = good.clone();
        break_it(&mut v);
        assert!(
            !schema_errors(&validator, &v.to_string()).is_empty(),
            "{what} must be refused"
        );
    }
}
