//! `capturefleet inspect …`: decode Apple blobs and summarise databases for people debugging a
//! device. Prints to stdout; errors go to stderr with a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value, json};

use super::summary_info::SummaryInfo;
use super::typedstream::AttributedBody;
use super::{codes, epoch};

/// Inspection subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum InspectCommand {
    /// Decode a `message.attributedBody` blob (typedstream): text and parts.
    AttributedBody {
        /// The blob (`-` for standard input).
        file: PathBuf,
        /// Print JSON: `{"text": …, "parts": [{"index", "text", "attachment_guid"}], "runs": …}`.
        #[arg(long)]
        json: bool,
    },
    /// Decode a `message.message_summary_info` blob (binary plist): edit history and unsent parts.
    SummaryInfo {
        /// The blob (`-` for standard input).
        file: PathBuf,
        /// Print JSON: `{"edits": [{"part", "index", "at_ns", "text"}], "unsent": …, …}`.
        #[arg(long)]
        json: bool,
    },
    /// Summarise a chat.db: tables, services, chats, date range, edits, unsends, undecodable rows.
    ChatDb {
        /// Path of chat.db (opened read-only; its WAL is read).
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Run an inspection.
pub fn run(command: InspectCommand) -> anyhow::Result<ExitCode> {
    let (value, json_out) = match command {
        InspectCommand::AttributedBody { file, json } => (attributed_body_json(&read(&file)?)?, json),
        InspectCommand::SummaryInfo { file, json } => (summary_info_json(&read(&file)?)?, json),
        InspectCommand::ChatDb { path, json } => (chat_db_json(&path)?, json),
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_text(&value, 0);
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading standard input")?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The JSON for an `attributedBody` blob; an error when it holds no text.
pub fn attributed_body_json(bytes: &[u8]) -> anyhow::Result<Value> {
    let body = AttributedBody::from_typedstream(bytes).context("cannot decode attributedBody")?;
    let parts: Vec<Value> = body
        .parts()
        .into_iter()
        .map(|p| json!({"index": p.index, "text": p.text, "attachment_guid": p.attachment_guid}))
        .collect();
    let runs: Vec<Value> = body
        .runs
        .iter()
        .map(|r| {
            let attrs: serde_json::Map<String, Value> = r
                .attributes
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        super::typedstream::AttrValue::Str(s) => json!(s),
                        super::typedstream::AttrValue::Int { value, .. } => json!(value),
                        super::typedstream::AttrValue::Other(class) => json!({ "class": class }),
                    };
                    (k.clone(), v)
                })
                .collect();
            json!({"length_utf16": r.len_utf16, "attributes": attrs})
        })
        .collect();
    Ok(json!({"text": body.text, "parts": parts, "runs": runs}))
}

/// The JSON for a `message_summary_info` blob.
pub fn summary_info_json(bytes: &[u8]) -> anyhow::Result<Value> {
    let info = SummaryInfo::decode(bytes).context("cannot decode message_summary_info")?;
    let mut edits: Vec<Value> = Vec::new();
    for revisions in info.history.values() {
        for r in revisions {
            let mut e = json!({
                "part": r.part,
                "index": r.index,
                "at_ns": r.at_ns,
                "at": r.at_ns.map(epoch::rfc3339_from_apple_ns),
                "at_seconds": r.at_seconds,
                "text": r.text(),
            });
            if let Err(err) = &r.body {
                e["error"] = json!(err.to_string());
            }
            edits.push(e);
        }
    }
    edits.sort_by_key(|e| {
        (
            e["at_ns"].as_i64().unwrap_or(i64::MIN),
            e["part"].as_u64(),
            e["index"].as_u64(),
        )
    });
    let ranges: serde_json::Map<String, Value> = info
        .original_ranges
        .iter()
        .map(|(p, (lo, le))| (p.to_string(), json!({"start": lo, "length": le})))
        .collect();
    Ok(json!({
        "edits": edits,
        "edited_parts": info.edited_parts,
        "unsent": info.is_unsent(),
        "unsent_parts": info.unsent_parts,
        "original_ranges": ranges,
    }))
}

/// A summary of a chat.db.
pub fn chat_db_json(path: &Path) -> anyhow::Result<Value> {
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} read-only", path.display()))?;
    let count = |sql: &str| -> anyhow::Result<i64> {
        conn.query_row(sql, [], |r| r.get(0))
            .with_context(|| format!("query failed: {sql}"))
    };
    let journal: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    let mut services = serde_json::Map::new();
    let mut stmt = conn.prepare("SELECT COALESCE(service, ''), COUNT(*) FROM message GROUP BY 1 ORDER BY 2 DESC")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (s, n) = row?;
        services.insert(codes::canonical_service(&s), json!(n));
    }
    let (min, max): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT MIN(date), MAX(date) FROM message WHERE date > 0", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    // Decode every blob once, counting failures (the reader archives these as decode errors).
    let mut body_errors = 0i64;
    let mut bodies = 0i64;
    let mut stmt = conn.prepare("SELECT attributedBody FROM message WHERE attributedBody IS NOT NULL")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let blob: Vec<u8> = row.get(0)?;
        bodies += 1;
        if AttributedBody::from_typedstream(&blob).is_err() {
            body_errors += 1;
        }
    }
    let mut summary_errors = 0i64;
    let mut unsent = 0i64;
    let mut edited = 0i64;
    let mut stmt = conn.prepare("SELECT message_summary_info FROM message WHERE message_summary_info IS NOT NULL")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let blob: Vec<u8> = row.get(0)?;
        match SummaryInfo::decode(&blob) {
            Ok(info) => {
                unsent += info.is_unsent() as i64;
                edited += (!info.edits().is_empty()) as i64;
            }
            Err(_) => summary_errors += 1,
        }
    }
    Ok(json!({
        "path": path.display().to_string(),
        "journal_mode": journal,
        "messages": count("SELECT COUNT(*) FROM message")?,
        "max_message_rowid": count("SELECT COALESCE(MAX(ROWID), 0) FROM message")?,
        "services": services,
        "chats": count("SELECT COUNT(*) FROM chat")?,
        "group_chats": count(&format!("SELECT COUNT(*) FROM chat WHERE style = {}", codes::CHAT_STYLE_GROUP))?,
        "handles": count("SELECT COUNT(*) FROM handle")?,
        "attachments": count("SELECT COUNT(*) FROM attachment")?,
        "messages_in_no_chat": count(
            "SELECT COUNT(*) FROM message m WHERE NOT EXISTS (SELECT 1 FROM chat_message_join j WHERE j.message_id = m.ROWID)"
        )?,
        "text_only_in_attributed_body": count("SELECT COUNT(*) FROM message WHERE text IS NULL AND attributedBody IS NOT NULL")?,
        "attributed_bodies": bodies,
        "attributed_body_decode_errors": body_errors,
        "reactions": count("SELECT COUNT(*) FROM message WHERE associated_message_type BETWEEN 2000 AND 3007")?,
        "replies": count("SELECT COUNT(*) FROM message WHERE thread_originator_guid IS NOT NULL")?,
        "group_events": count("SELECT COUNT(*) FROM message WHERE item_type IN (1, 2, 3)")?,
        "edited_messages": edited,
        "unsent_messages": unsent,
        "summary_info_decode_errors": summary_errors,
        "first_date": min.map(|d| epoch::rfc3339_from_apple_ns(epoch::normalize_to_ns(d))),
        "last_date": max.map(|d| epoch::rfc3339_from_apple_ns(epoch::normalize_to_ns(d))),
    }))
}

fn print_text(value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::Object(_) | Value::Array(_) => {
                        println!("{pad}{k}:");
                        print_text(v, indent + 2);
                    }
                    _ => println!("{pad}{k}: {}", scalar(v)),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(_) | Value::Array(_) => {
                        println!("{pad}-");
                        print_text(item, indent + 2);
                    }
                    _ => println!("{pad}- {}", scalar(item)),
                }
            }
        }
        other => println!("{pad}{}", scalar(other)),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apple::typedstream::fixture;

    #[test]
    fn attributed_body_json_matches_fixture() {
        let v = attributed_body_json(&fixture("MultiPart")).unwrap();
        assert_eq!(v["text"], "\u{FFFC}test 1\u{FFFC}test 2 \u{FFFC}test 3");
        assert_eq!(v["parts"].as_array().unwrap().len(), 6);
        assert_eq!(
            v["parts"][0]["attachment_guid"],
            "at_0_F0668F79-20C2-49C9-A87F-1B007ABB0CED"
        );
    }

    #[test]
    fn attributed_body_without_text_is_an_error() {
        let err = attributed_body_json(&fixture("Edited.plist")).unwrap_err();
        assert!(format!("{err:#}").contains("cannot decode attributedBody"), "{err:#}");
    }

    #[test]
    fn summary_info_json_matches_fixtures() {
        let v = summary_info_json(&fixture("Edited.plist")).unwrap();
        let edits: Vec<(i64, &str)> = v["edits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["at_ns"].as_i64().unwrap(), e["text"].as_str().unwrap()))
            .collect();
        assert_eq!(
            edits,
            [
                (690_513_474_000_000_000, "First message  "),
                (690_513_480_000_000_000, "Edit 1"),
                (690_513_485_000_000_000, "Edit 2"),
                (690_513_494_000_000_000, "Edited message"),
            ]
        );
        assert_eq!(v["unsent"], false);
        let v = summary_info_json(&fixture("Deleted.plist")).unwrap();
        assert_eq!(v["edits"].as_array().unwrap().len(), 0);
        assert_eq!(v["unsent"], true);
    }
}
