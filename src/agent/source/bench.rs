//! `capturefleet bench reader`: reader throughput on a chat.db, as a backfill into an empty
//! archive (every draft is built; nothing is skipped as archived). Prints one JSON line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;

use super::{ArchiveIndex, ChatDbReader, ReaderConfig, RecordSource};

/// Benchmark options.
#[derive(clap::Args, Debug)]
pub struct BenchReaderArgs {
    /// chat.db to read (attachments resolve against its directory).
    pub chat_db: PathBuf,
    /// Drafts per poll.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
    /// Also serialise every record to canonical JSON (what the pipeline hashes).
    #[arg(long)]
    pub canonical_json: bool,
}

/// An archive that holds nothing: a first backfill.
struct EmptyArchive;

impl ArchiveIndex for EmptyArchive {
    fn contains_key(&self, _key: &str) -> bool {
        false
    }
    fn live_guids_since(&self, _since_apple_ns: i64) -> Vec<(String, String)> {
        Vec::new()
    }
    fn max_rowid(&self, _table: &str) -> i64 {
        0
    }
}

/// Peak resident set size of this process, in kB (Linux), when known.
pub fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Run the benchmark.
pub fn run(args: BenchReaderArgs) -> anyhow::Result<ExitCode> {
    let config = ReaderConfig::local(&args.chat_db, "bench");
    let mut reader = ChatDbReader::open(&config).context("opening chat.db")?;
    let rows: i64 = rusqlite::Connection::open_with_flags(&args.chat_db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?
        .query_row("SELECT COUNT(*) FROM message", [], |r| r.get(0))?;
    let started = Instant::now();
    let mut drafts = 0u64;
    let mut files = 0u64;
    let mut json_bytes = 0u64;
    loop {
        let batch = reader.poll(&EmptyArchive, args.limit)?;
        if batch.is_empty() {
            break;
        }
        drafts += batch.len() as u64;
        for d in &batch {
            files += d.files.len() as u64;
            if args.canonical_json {
                json_bytes += d.record.to_canonical_json().len() as u64;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let out = json!({
        "chat_db": args.chat_db.display().to_string(),
        "message_rows": rows,
        "drafts": drafts,
        "attachment_files_hashed": files,
        "canonical_json_bytes": json_bytes,
        "seconds": secs,
        "rows_per_second": rows as f64 / secs,
        "drafts_per_second": drafts as f64 / secs,
        "peak_rss_kb": peak_rss_kb(),
    });
    println!("{out}");
    Ok(ExitCode::SUCCESS)
}
