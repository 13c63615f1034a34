//! The simulator is faithful: imessage-exporter (an independent, GPL-licensed reader of real
//! chat.db files, run here only as an external program) exports a simulated database without
//! errors, and per conversation the texts it prints — including those it decodes from our
//! `attributedBody` blobs and the edit histories in our `message_summary_info` plists — are
//! exactly the texts our reader returns, and the group events and unsends match in number.
//!
//! Needs imessage-exporter: `scripts/install-imessage-exporter` installs it (cached under
//! ~/.cache/capturefleet/) and this test runs that script, so it fails — never skips — when
//! the tool cannot be installed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use capturefleet::agent::source::{ChatDbReader, MemoryIndex, ReaderConfig, RecordSource};
use capturefleet::api::record::RecordKind;
use capturefleet::device::{Simulator, SimulatorConfig};

fn exporter() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install-imessage-exporter");
    let out = Command::new(&script)
        .output()
        .expect("running scripts/install-imessage-exporter");
    assert!(
        out.status.success(),
        "installing imessage-exporter failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// What one conversation holds, as comparable facts.
#[derive(Default, Debug, PartialEq)]
struct Facts {
    /// Message texts and edit texts (attachment placeholders removed, trimmed, non-empty).
    texts: BTreeSet<String>,
    /// Group events and unsends by phrase.
    events: BTreeMap<&'static str, usize>,
}

const EVENT_PHRASES: &[(&str, &str)] = &[
    ("renamed", " named the conversation "),
    ("member_added", " to the conversation."),
    ("member_removed", " from the conversation."),
    ("member_left", " left the conversation."),
    ("icon_changed", " changed the group photo."),
    ("icon_removed", " removed the group photo."),
    ("unsent", " unsent a message!"),
];

fn clean(text: &str) -> Option<String> {
    let t = text.replace('\u{FFFC}', "");
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// Whether a line is the date line that starts every block (`Mon DD, YYYY  H:MM:SS AM …`).
fn date_prefix(line: &str) -> Option<usize> {
    let am = line.find(" AM").or_else(|| line.find(" PM"))?;
    let head = &line[..am];
    (head.len() >= 18 && head.as_bytes()[3] == b' ' && head.contains(", 20")).then_some(am + 3)
}

/// Parses one exported transcript.
fn parse_export(text: &str) -> Facts {
    let mut facts = Facts::default();
    let lines: Vec<&str> = text.lines().map(str::trim_start).collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let Some(end) = date_prefix(line) else {
            i += 1;
            continue;
        };
        let rest = &line[end..];
        if let Some((name, _)) = EVENT_PHRASES.iter().find(|(_, p)| rest.contains(p)) {
            // "removed the group photo" also contains " from the conversation."? No; but
            // "removed X from the conversation." and "removed the group photo." differ.
            *facts.events.entry(name).or_default() += 1;
            i += 1;
            continue;
        }
        // A message: date line, sender line, then content until a blank line.
        i += 2;
        let mut in_tapbacks = false;
        while i < lines.len() && !lines[i].is_empty() {
            let l = lines[i];
            i += 1;
            if l == "Tapbacks:" {
                in_tapbacks = true;
                continue;
            }
            // Annotations, not texts: a reply marker and a message moved to Recently Deleted
            // (we archive its text in its conversation, then a deletion record).
            if in_tapbacks
                || l.starts_with('/')
                || l == "This message responded to an earlier message."
                || l == "This message was deleted from the conversation!"
            {
                continue;
            }
            if let Some(pos) = l.find(" later: ").filter(|_| l.starts_with("Edited ")) {
                facts.texts.extend(clean(&l[pos + " later: ".len()..]));
                continue;
            }
            if let Some(end) = date_prefix(l) {
                // The original text of an edited message follows its date.
                facts.texts.extend(clean(&l[end..]));
                // A nested reply block starts with a date line too: step back so it is parsed.
                if i < lines.len()
                    && !lines[i].is_empty()
                    && date_prefix(lines[i]).is_none()
                    && !lines[i].starts_with("Edited ")
                {
                    facts.texts.remove(&clean(&l[end..]).unwrap_or_default());
                    i -= 1;
                    break;
                }
                continue;
            }
            facts.texts.extend(clean(l));
        }
    }
    facts
}

#[test]
#[ignore = "needs imessage-exporter (installed by scripts/install-imessage-exporter); run by make test"]
fn imessage_exporter_reads_simulated_databases_like_our_reader() {
    let exporter = exporter();
    let dir = tempfile::tempdir().unwrap();
    let messages = dir.path().join("Messages");
    let mut sim = Simulator::create(SimulatorConfig::new(&messages, 2024)).unwrap();
    sim.write_history(2_000).unwrap();
    for _ in 0..200 {
        sim.step().unwrap();
    }
    let db = sim.chat_db();
    drop(sim);

    // imessage-exporter's export.
    let out = dir.path().join("export");
    let run = Command::new(&exporter)
        .args(["-f", "txt", "-a", "macOS", "--no-progress", "-p"])
        .arg(&db)
        .arg("-r")
        .arg(&messages)
        .arg("-o")
        .arg(&out)
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "imessage-exporter failed: {stderr}");
    assert!(
        !stderr.to_lowercase().contains("error"),
        "imessage-exporter reported errors: {stderr}"
    );

    // Our reader.
    let mut reader = ChatDbReader::open(&ReaderConfig::local(&db, "cmp")).unwrap();
    let mut index = MemoryIndex::new();
    let mut ours: BTreeMap<String, Facts> = BTreeMap::new();
    loop {
        let drafts = reader.poll(&index, 500).unwrap();
        if drafts.is_empty() {
            break;
        }
        for d in drafts {
            index.archive(&d);
            let r = d.record;
            let Some(conv) = &r.conversation else { continue };
            let facts = ours.entry(conv.guid.clone()).or_default();
            match r.kind {
                RecordKind::Message | RecordKind::Reply => {
                    facts.texts.extend(r.body.as_ref().and_then(|b| clean(&b.text)));
                }
                RecordKind::Edit => facts.texts.extend(r.edit.as_ref().and_then(|e| clean(&e.text))),
                RecordKind::Unsend => *facts.events.entry("unsent").or_default() += 1,
                _ => {
                    if let Some(g) = &r.group_event {
                        let name = match g.action.as_str() {
                            "renamed" => "renamed",
                            "member_added" => "member_added",
                            "member_removed" => "member_removed",
                            "member_left" => "member_left",
                            "icon_changed" => "icon_changed",
                            _ => "icon_removed",
                        };
                        *facts.events.entry(name).or_default() += 1;
                    }
                }
            }
        }
    }
    // A message whose text was unsent has no text in the row: we archive it without a body,
    // and imessage-exporter prints "unsent"; neither side has its text.

    // Match conversations to transcript files: 1:1 chats by chat_identifier, groups by ROWID.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let files: Vec<PathBuf> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
    let mut compared = 0;
    let mut texts = 0;
    for (guid, facts) in &ours {
        let (rowid, ident, style, display_name): (i64, String, i64, String) = conn
            .query_row(
                "SELECT ROWID, chat_identifier, style, COALESCE(display_name, '') FROM chat WHERE guid = ?1",
                [guid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        let members: Vec<String> = conn
            .prepare("SELECT h.id FROM chat_handle_join j JOIN handle h ON h.ROWID = j.handle_id WHERE j.chat_id = ?1")
            .unwrap()
            .query_map([rowid], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let file = files
            .iter()
            .find(|f| {
                let name = f.file_name().unwrap().to_string_lossy();
                let group_name = &display_name;
                if style == 43 {
                    // Named groups: "<name> - <number>.txt"; unnamed ones: the members' addresses.
                    if group_name.is_empty() {
                        members.iter().all(|m| name.contains(m.as_str()))
                    } else {
                        name.starts_with(&format!("{group_name} - "))
                    }
                } else {
                    name == format!("{ident}.txt")
                }
            })
            .unwrap_or_else(|| panic!("no transcript for {guid} among {files:?}"));
        let theirs = parse_export(&std::fs::read_to_string(file).unwrap());
        let missing: Vec<_> = facts.texts.difference(&theirs.texts).collect();
        let extra: Vec<_> = theirs.texts.difference(&facts.texts).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{guid}: texts only we have: {missing:?}; only imessage-exporter has: {extra:?}"
        );
        assert_eq!(facts.events, theirs.events, "{guid}: group events and unsends");
        compared += 1;
        texts += facts.texts.len();
    }
    assert!(
        compared >= 40 && texts > 1_000,
        "compared {compared} conversations, {texts} texts"
    );
    eprintln!("compared {compared} conversations and {texts} distinct texts with imessage-exporter");
}
