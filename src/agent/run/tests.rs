//! `run` end to end in-process, with a test double for the chat.db reader (`FixtureSource`)
//! and real spools and filesystem sinks. The chat.db-backed end-to-end and crash tests live in
//! `tests/agent_*.rs`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use super::*;
use crate::agent::seal::tests::sample_record;
use crate::agent::source::{ArchiveIndex, Draft, SourceError};
use crate::api::agent::FilesystemTarget;
use crate::api::record::AttachmentInfo;
use crate::archive::verify::verify;
use crate::sinks::filesystem::FilesystemSink;
use crate::sinks::{AttachmentStore, SinkError, SpooledRecord};

const DEVICE: &str = "dev-a";

/// Test double of the chat.db reader: serves a fixed list of drafts from the start on every
/// construction (like a reader that lost its place), paging by `limit`, skipping what the
/// index already has, as the real reader does.
struct FixtureSource {
    drafts: Arc<StdMutex<Vec<Draft>>>,
    position: usize,
}

impl RecordSource for FixtureSource {
    fn poll(&mut self, index: &dyn ArchiveIndex, limit: usize) -> Result<Vec<Draft>, SourceError> {
        let drafts = self.drafts.lock().unwrap();
        let mut out = Vec::new();
        while self.position < drafts.len() && out.len() < limit {
            let draft = &drafts[self.position];
            self.position += 1;
            if !index.contains_key(&draft.record.idempotency_key) {
                out.push(draft.clone());
            }
        }
        Ok(out)
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        vec![]
    }
}

/// `n` message drafts; every 100th carries an attachment file in `files_dir`.
fn drafts(n: usize, files_dir: &Path, offset: usize) -> Vec<Draft> {
    (offset..offset + n)
        .map(|i| {
            let mut record = sample_record(DEVICE, &format!("GUID-{i:07}"), "0");
            record.source.rowid = i as i64 + 1;
            let mut files = vec![];
            if i % 100 == 0 {
                let content = format!("attachment {i}");
                let sha = hex::encode(Sha256::digest(content.as_bytes()));
                let path = files_dir.join(format!("{i}.bin"));
                std::fs::write(&path, &content).unwrap();
                record.attachments.push(AttachmentInfo {
                    guid: format!("AT-{i}"),
                    size: content.len() as u64,
                    sha256: Some(sha.clone()),
                    ..Default::default()
                });
                files.push((sha, path));
            }
            Draft { record, files }
        })
        .collect()
}

fn fs_sink(name: &str, root: &Path) -> Arc<dyn Sink> {
    Arc::new(FilesystemSink::new(
        name,
        &FilesystemTarget {
            path: root.to_path_buf(),
            segment_max_records: 1000,
        },
    ))
}

fn settings(tmp: &Path, sinks: &[&str]) -> AgentRun {
    let config: AgentConfig = serde_json::from_value(serde_json::json!({
        "schema": crate::api::agent::AGENT_CONFIG_SCHEMA,
        "device": {"name": DEVICE},
        "chatDb": "/nonexistent/chat.db",
        "spoolDir": tmp.join("spool"),
        "sinks": sinks.iter().map(|n| serde_json::json!({"name": n, "filesystem": {"path": tmp.join(n)}})).collect::<Vec<_>>(),
        "drainTimeoutSeconds": 2,
    }))
    .unwrap();
    let mut run = AgentRun::from_config(config);
    run.until_idle = true;
    run.http_listen = None;
    run.termination_path = Some(tmp.join("termination-log"));
    run.capture.poll_interval = Duration::from_millis(20);
    run.capture.batch_limit = 500;
    run.delivery.backoff.base = Duration::from_millis(5);
    run.delivery.backoff.cap = Duration::from_millis(50);
    run
}

fn source(list: &Arc<StdMutex<Vec<Draft>>>) -> Box<dyn RecordSource> {
    Box::new(FixtureSource {
        drafts: Arc::clone(list),
        position: 0,
    })
}

/// The idempotency keys in an archive, counted.
fn archived_keys(root: &Path) -> HashMap<String, usize> {
    let mut keys = HashMap::new();
    let dir = root.join(DEVICE);
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().ends_with(".jsonl") {
            for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
                let record = crate::api::record::ArchiveRecord::from_json(line).unwrap();
                *keys.entry(record.idempotency_key).or_insert(0) += 1;
            }
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_idle_delivers_everything_to_every_sink_exactly_once_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let list = Arc::new(StdMutex::new(drafts(2_345, tmp.path(), 0)));
    let sinks = || {
        vec![
            fs_sink("archive", &tmp.path().join("archive")),
            fs_sink("copy", &tmp.path().join("copy")),
        ]
    };
    let exit = run(
        settings(tmp.path(), &["archive", "copy"]),
        source(&list),
        sinks(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!((exit.reason, exit.code), (StopReason::Idle, 0));
    assert_eq!((exit.receipt.records_captured, exit.receipt.pending_total), (2_345, 0));
    assert!(exit.receipt.complete);
    let written = std::fs::read_to_string(tmp.path().join("termination-log")).unwrap();
    assert_eq!(DrainReceipt::parse(&written), Some(exit.receipt.clone()));

    // Restart: the reader re-reads everything (dropped as duplicates) plus 10 new events.
    list.lock().unwrap().extend(drafts(10, tmp.path(), 2_345));
    let again = run(
        settings(tmp.path(), &["archive", "copy"]),
        source(&list),
        sinks(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(again.receipt.records_captured, 2_355);
    for root in ["archive", "copy"] {
        let report = verify(&tmp.path().join(root)).unwrap();
        assert!(report.ok, "{root}: {:?}", report.problems);
        assert_eq!(report.records, 2_355);
        let keys = archived_keys(&tmp.path().join(root));
        assert_eq!(keys.len(), 2_355);
        assert!(keys.values().all(|&n| n == 1), "every event exactly once");
        assert_eq!(report.heads[DEVICE].hash, again.receipt.chain_head);
    }
    // Every emitted record validates against the published JSON Schema.
    let schema: serde_json::Value = serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/record.schema.json"
    )))
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for entry in std::fs::read_dir(tmp.path().join("archive").join(DEVICE))
        .unwrap()
        .flatten()
    {
        if entry.file_name().to_string_lossy().ends_with(".jsonl") {
            for line in std::fs::read_to_string(entry.path()).unwrap().lines() {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                assert!(validator.is_valid(&value), "{line}");
            }
        }
    }
}

/// Test double of a sink that is down: every delivery fails with the given class.
struct DownSink {
    name: String,
    permanent: bool,
    attempts: AtomicUsize,
}

#[async_trait]
impl Sink for DownSink {
    fn name(&self) -> &str {
        &self.name
    }
    fn type_name(&self) -> &'static str {
        "test-double"
    }
    async fn start(&self) -> Result<(), SinkError> {
        Ok(())
    }
    async fn health(&self) -> Result<(), SinkError> {
        Ok(())
    }
    async fn deliver(&self, _: &[SpooledRecord], _: &dyn AttachmentStore) -> Result<(), SinkError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.permanent {
            Err(SinkError::Permanent("refused by test double".into()))
        } else {
            Err(SinkError::Transient("connection refused by test double".into()))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sink_blocks_neither_capture_nor_the_other_sink_and_the_receipt_says_what_is_pending() {
    let tmp = tempfile::tempdir().unwrap();
    let list = Arc::new(StdMutex::new(drafts(1_200, tmp.path(), 0)));
    let down = Arc::new(DownSink {
        name: "down".into(),
        permanent: false,
        attempts: AtomicUsize::new(0),
    });
    let mut settings = settings(tmp.path(), &["archive", "down"]);
    settings.until_idle = false;
    let shutdown = CancellationToken::new();
    let stopper = shutdown.clone();
    let archive = tmp.path().join("archive");
    let watcher = tokio::spawn(async move {
        // SIGTERM once the healthy sink has everything.
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if archive.join(DEVICE).is_dir() && verify(&archive).map(|r| r.records).unwrap_or(0) == 1_200 {
                stopper.cancel();
                return;
            }
        }
    });
    let sinks: Vec<Arc<dyn Sink>> = vec![fs_sink("archive", &tmp.path().join("archive")), down.clone()];
    let exit = tokio::time::timeout(Duration::from_secs(60), run(settings, source(&list), sinks, shutdown))
        .await
        .expect("the healthy sink finished although the other is down")
        .unwrap();
    watcher.await.unwrap();
    assert_eq!(exit.reason, StopReason::Shutdown);
    assert_eq!(
        exit.code, 0,
        "the drain timeout ended the drain: exit 0, receipt incomplete"
    );
    assert!(!exit.receipt.complete);
    assert_eq!(exit.receipt.pending["archive"], 0);
    assert_eq!(exit.receipt.pending["down"], 1_200);
    assert!(down.attempts.load(Ordering::SeqCst) >= 2, "the down sink was retried");

    // The records stay in the spool for the down sink: a later run delivers them to a
    // working sink of that name.
    let mut later = settings_with(tmp.path(), &["archive", "down"]);
    later.until_idle = true;
    let sinks: Vec<Arc<dyn Sink>> = vec![
        fs_sink("archive", &tmp.path().join("archive")),
        fs_sink("down", &tmp.path().join("recovered")),
    ];
    let exit = run(later, source(&list), sinks, CancellationToken::new())
        .await
        .unwrap();
    assert!(exit.receipt.complete);
    assert_eq!(verify(&tmp.path().join("recovered")).unwrap().records, 1_200);
}

fn settings_with(tmp: &Path, sinks: &[&str]) -> AgentRun {
    settings(tmp, sinks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn until_idle_stops_with_code_3_when_a_sink_refuses_permanently_and_keeps_the_records() {
    let tmp = tempfile::tempdir().unwrap();
    let list = Arc::new(StdMutex::new(drafts(50, tmp.path(), 0)));
    let down = Arc::new(DownSink {
        name: "strict".into(),
        permanent: true,
        attempts: AtomicUsize::new(0),
    });
    let sinks: Vec<Arc<dyn Sink>> = vec![fs_sink("archive", &tmp.path().join("archive")), down];
    let exit = run(
        settings(tmp.path(), &["archive", "strict"]),
        source(&list),
        sinks,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!((exit.reason, exit.code), (StopReason::SinkFailed, 3));
    assert_eq!(exit.receipt.pending["strict"], 50);
    let spool = Spool::open(&tmp.path().join("spool"), DEVICE).unwrap();
    assert_eq!(spool.head().seq, 50);
    assert_eq!(
        spool.compacted_through(),
        0,
        "nothing the strict sink lacks is compacted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_pauses_reading_and_drops_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let list = Arc::new(StdMutex::new(drafts(3_000, tmp.path(), 0)));
    let mut settings = settings(tmp.path(), &["archive"]);
    settings.capture.spool_max_bytes = 200_000; // about 150 records
    settings.capture.batch_limit = 100;
    settings.capture.compact_threshold = 50;
    let exit = run(
        settings,
        source(&list),
        vec![fs_sink("archive", &tmp.path().join("archive"))],
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!((exit.reason, exit.receipt.records_captured), (StopReason::Idle, 3_000));
    let report = verify(&tmp.path().join("archive")).unwrap();
    assert!(report.ok, "{:?}", report.problems);
    assert_eq!(report.records, 3_000);
    let spool = Spool::open(&tmp.path().join("spool"), DEVICE).unwrap();
    assert!(
        spool.compacted_through() > 2_500,
        "delivered records were compacted to make room"
    );
    assert!(spool.backlog_bytes() < 200_000 + 100 * 2_000);
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn free_loopback_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_follow_capture_and_sink_health() {
    let tmp = tempfile::tempdir().unwrap();
    let list = Arc::new(StdMutex::new(drafts(300, tmp.path(), 0)));
    let addr = free_loopback_port();
    let mut settings = settings(tmp.path(), &["archive", "down"]);
    settings.until_idle = false;
    settings.http_listen = Some(addr.clone());
    settings.delivery.unhealthy_after = 2;
    let down = Arc::new(DownSink {
        name: "down".into(),
        permanent: false,
        attempts: AtomicUsize::new(0),
    });
    let sinks: Vec<Arc<dyn Sink>> = vec![fs_sink("archive", &tmp.path().join("archive")), down.clone()];
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run(settings, source(&list), sinks, shutdown.clone()));

    // The gauges follow the counters a moment later (each delivery task publishes its own):
    // wait, bounded, until every expected value is there, then check them all.
    let expected = [
        "capture_records_captured_total{kind=\"message\"} 300",
        "capture_records_delivered_total{sink=\"archive\"} 300",
        "capture_records_pending{sink=\"archive\"} 0",
        "capture_records_pending{sink=\"down\"} 300",
        "capture_delivery_errors_total{class=\"transient\",sink=\"down\"}",
        "capture_sink_healthy{sink=\"down\"} 0",
        "capture_chain_sequence 300",
        "capture_spool_full 0",
        "capture_last_poll_timestamp_seconds",
    ];
    let mut metrics = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(Ok((200, body))) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::spawn(http_get_owned(addr.clone(), "/metrics")),
        )
        .await
        else {
            continue;
        };
        metrics = body;
        if expected.iter().all(|e| metrics.contains(e)) && down.attempts.load(Ordering::SeqCst) >= 2 {
            break;
        }
    }
    for expected in expected {
        assert!(metrics.contains(expected), "missing {expected} in\n{metrics}");
    }
    assert!(down.attempts.load(Ordering::SeqCst) >= 2, "the down sink was retried");
    assert!(!metrics.contains("+1555"), "no phone numbers in metrics");
    assert_eq!(http_get(&addr, "/livez").await.0, 200);
    // Readiness is republished every 250 ms.
    let (mut status, mut body) = http_get(&addr, "/readyz").await;
    for _ in 0..20 {
        if body.contains("transient") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        (status, body) = http_get(&addr, "/readyz").await;
    }
    assert_eq!(status, 503);
    assert!(body.contains("sink down unhealthy (transient)"), "{body}");
    shutdown.cancel();
    let exit = agent.await.unwrap().unwrap();
    assert_eq!(exit.receipt.pending["down"], 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_is_ready_while_capturing_with_healthy_sinks() {
    let tmp = tempfile::tempdir().unwrap();
    let list = Arc::new(StdMutex::new(drafts(10, tmp.path(), 0)));
    let addr = free_loopback_port();
    let mut settings = settings(tmp.path(), &["archive"]);
    settings.until_idle = false;
    settings.http_listen = Some(addr.clone());
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(run(
        settings,
        source(&list),
        vec![fs_sink("archive", &tmp.path().join("archive"))],
        shutdown.clone(),
    ));
    let mut last = (0, String::new());
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(Ok(r)) = tokio::spawn(http_get_owned(addr.clone(), "/readyz"))
            .await
            .map(Ok::<_, ()>)
        {
            last = r;
            if last.0 == 200 {
                break;
            }
        }
    }
    assert_eq!(last.0, 200, "{}", last.1);
    shutdown.cancel();
    assert!(agent.await.unwrap().unwrap().receipt.complete);
}

async fn http_get_owned(addr: String, path: &'static str) -> (u16, String) {
    match tokio::net::TcpStream::connect(&addr).await {
        Ok(_) => http_get(&addr, path).await,
        Err(_) => (0, String::new()),
    }
}

/// Test double of a sink that acknowledges records into a journal of its own and sends them
/// only on `flush()` (like SMTP per conversation-day), whose flush fails `flush_failures`
/// times before it works (`u32::MAX`: never).
struct JournalingSinkDouble {
    name: String,
    journal: StdMutex<Vec<u64>>,
    sent: StdMutex<Vec<u64>>,
    flush_failures: u32,
    flush_attempts: AtomicUsize,
}

impl JournalingSinkDouble {
    fn new(name: &str, flush_failures: u32) -> Arc<Self> {
        Arc::new(JournalingSinkDouble {
            name: name.into(),
            journal: StdMutex::new(Vec::new()),
            sent: StdMutex::new(Vec::new()),
            flush_failures,
            flush_attempts: AtomicUsize::new(0),
        })
    }
}

#[async_trait]
impl Sink for JournalingSinkDouble {
    fn name(&self) -> &str {
        &self.name
    }
    fn type_name(&self) -> &'static str {
        "test-double"
    }
    async fn start(&self) -> Result<(), SinkError> {
        Ok(())
    }
    async fn health(&self) -> Result<(), SinkError> {
        Ok(())
    }
    async fn deliver(&self, batch: &[SpooledRecord], _: &dyn AttachmentStore) -> Result<(), SinkError> {
        self.journal.lock().unwrap().extend(batch.iter().map(|r| r.seq));
        Ok(())
    }
    async fn flush(&self) -> Result<(), SinkError> {
        let attempt = self.flush_attempts.fetch_add(1, Ordering::SeqCst) as u32;
        if attempt < self.flush_failures {
            return Err(SinkError::Transient("journal server unreachable (test double)".into()));
        }
        let mut journal = self.journal.lock().unwrap();
        self.sent.lock().unwrap().append(&mut journal);
        Ok(())
    }
    async fn buffered(&self) -> Result<u64, SinkError> {
        Ok(self.journal.lock().unwrap().len() as u64)
    }
}

async fn run_journaling(tmp: &Path, sink: Arc<JournalingSinkDouble>) -> (AgentExit, String) {
    let list = Arc::new(StdMutex::new(drafts(300, tmp, 0)));
    let telemetry = Telemetry::new().unwrap();
    let registry = telemetry.metrics.registry.clone();
    let sinks: Vec<Arc<dyn Sink>> = vec![fs_sink("archive", &tmp.join("archive")), sink];
    let exit = run_with(
        settings(tmp, &["archive", "journal"]),
        Mode::Capture(source(&list)),
        sinks,
        Signals::default(),
        telemetry,
    )
    .await
    .unwrap();
    let mut text = Vec::new();
    prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut text).unwrap();
    (exit, String::from_utf8(text).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_a_sink_still_holds_in_its_journal_after_the_drain_are_pending_in_the_receipt() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = JournalingSinkDouble::new("journal", u32::MAX);
    let (exit, metrics) = run_journaling(tmp.path(), Arc::clone(&sink)).await;
    // Every record was acknowledged (the cursor is at the head) but none left the journal.
    assert_eq!(exit.receipt.records_captured, 300);
    assert_eq!(exit.receipt.pending["archive"], 0);
    assert_eq!(exit.receipt.pending["journal"], 300);
    assert_eq!((exit.receipt.pending_total, exit.receipt.complete), (300, false));
    assert!(
        sink.flush_attempts.load(Ordering::SeqCst) >= 2,
        "the failed flush was retried"
    );
    assert!(sink.sent.lock().unwrap().is_empty());
    assert!(
        metrics.contains("capture_records_pending{sink=\"journal\"} 300"),
        "{metrics}"
    );
    let written = std::fs::read_to_string(tmp.path().join("termination-log")).unwrap();
    assert_eq!(DrainReceipt::parse(&written), Some(exit.receipt));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_that_fails_then_works_is_retried_and_the_drain_is_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let sink = JournalingSinkDouble::new("journal", 2);
    let (exit, metrics) = run_journaling(tmp.path(), Arc::clone(&sink)).await;
    assert!(exit.receipt.complete, "{:?}", exit.receipt);
    assert_eq!(exit.receipt.pending["journal"], 0);
    assert_eq!(sink.flush_attempts.load(Ordering::SeqCst), 3);
    assert_eq!(*sink.sent.lock().unwrap(), (1..=300).collect::<Vec<u64>>());
    assert!(
        metrics.contains("capture_records_pending{sink=\"journal\"} 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_only_delivers_what_the_spool_holds_without_capturing() {
    let tmp = tempfile::tempdir().unwrap();
    // A run whose second sink was down leaves 400 records pending for it in the spool.
    let list = Arc::new(StdMutex::new(drafts(400, tmp.path(), 0)));
    let down = Arc::new(DownSink {
        name: "down".into(),
        permanent: false,
        attempts: AtomicUsize::new(0),
    });
    let mut first = settings(tmp.path(), &["archive", "down"]);
    first.until_idle = false;
    let shutdown = CancellationToken::new();
    let archive = tmp.path().join("archive");
    let stopper = shutdown.clone();
    tokio::spawn(async move {
        while !(archive.join(DEVICE).is_dir() && verify(&archive).map(|r| r.records).unwrap_or(0) == 400) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stopper.cancel();
    });
    let sinks: Vec<Arc<dyn Sink>> = vec![fs_sink("archive", &tmp.path().join("archive")), down];
    let exit = run(first, source(&list), sinks, shutdown).await.unwrap();
    assert_eq!(exit.receipt.pending["down"], 400);

    // The drain-only run: no source at all; the sink is back.
    let sinks: Vec<Arc<dyn Sink>> = vec![
        fs_sink("archive", &tmp.path().join("archive")),
        fs_sink("down", &tmp.path().join("recovered")),
    ];
    let drained = run_with(
        settings(tmp.path(), &["archive", "down"]),
        Mode::DrainOnly,
        sinks,
        Signals::default(),
        Telemetry::new().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!((drained.reason, drained.code), (StopReason::DrainOnly, 0));
    assert!(drained.receipt.complete, "{:?}", drained.receipt);
    assert_eq!(drained.receipt.records_captured, 400, "nothing new was captured");
    assert_eq!(drained.receipt.chain_head, exit.receipt.chain_head);
    let report = verify(&tmp.path().join("recovered")).unwrap();
    assert!(report.ok && report.records == 400, "{:?}", report.problems);
    let written = std::fs::read_to_string(tmp.path().join("termination-log")).unwrap();
    assert_eq!(DrainReceipt::parse(&written), Some(drained.receipt));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_only_without_a_spool_is_a_complete_drain_of_nothing_and_creates_none() {
    let tmp = tempfile::tempdir().unwrap();
    let exit = run_with(
        settings(tmp.path(), &["archive"]),
        Mode::DrainOnly,
        vec![fs_sink("archive", &tmp.path().join("archive"))],
        Signals::default(),
        Telemetry::new().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!((exit.reason, exit.code), (StopReason::DrainOnly, 0));
    assert!(exit.receipt.complete);
    assert_eq!((exit.receipt.records_captured, exit.receipt.pending_total), (0, 0));
    assert!(!tmp.path().join("spool").exists(), "the spool was not created");
    let written = std::fs::read_to_string(tmp.path().join("termination-log")).unwrap();
    assert_eq!(DrainReceipt::parse(&written), Some(exit.receipt));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_only_ends_at_the_timeout_or_on_sigterm_with_the_pending_records_in_the_receipt() {
    let tmp = tempfile::tempdir().unwrap();
    let list = Arc::new(StdMutex::new(drafts(50, tmp.path(), 0)));
    // Spool 50 records with a sink that then goes away for good.
    let exit = run(
        settings(tmp.path(), &["archive"]),
        source(&list),
        vec![fs_sink("archive", &tmp.path().join("archive"))],
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert!(exit.receipt.complete);
    let down = || -> Vec<Arc<dyn Sink>> {
        vec![Arc::new(DownSink {
            name: "archive".into(),
            permanent: false,
            attempts: AtomicUsize::new(0),
        })]
    };
    // A new sink ("archive" is replaced by "other", whose cursor starts at the compaction
    // floor, 0) that is down: the drain timeout (2 s) ends it.
    let timed = settings(tmp.path(), &["other"]);
    let sinks: Vec<Arc<dyn Sink>> = vec![Arc::new(DownSink {
        name: "other".into(),
        permanent: true,
        attempts: AtomicUsize::new(0),
    })];
    let exit = run_with(
        timed,
        Mode::DrainOnly,
        sinks,
        Signals::default(),
        Telemetry::new().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(exit.code, 0, "the drain timeout ends a drain with exit 0");
    assert_eq!((exit.receipt.pending["other"], exit.receipt.complete), (50, false));

    // SIGTERM cuts a long drain short, with the same honest receipt.
    let mut long = settings(tmp.path(), &["archive"]);
    long.config.drain_timeout_seconds = 3_000;
    let signals = Signals::default();
    let term = signals.shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        term.cancel();
    });
    let sinks = down();
    // "archive" was forgotten by the run above (not configured there): it starts at 0 again.
    let exit = tokio::time::timeout(
        Duration::from_secs(60),
        run_with(long, Mode::DrainOnly, sinks, signals, Telemetry::new().unwrap()),
    )
    .await
    .expect("SIGTERM ended the drain")
    .unwrap();
    assert_eq!((exit.reason, exit.code), (StopReason::DrainOnly, 0));
    assert_eq!((exit.receipt.pending["archive"], exit.receipt.complete), (50, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_drains_like_a_shutdown_and_says_why_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let list = Arc::new(StdMutex::new(drafts(200, tmp.path(), 0)));
    let mut settings = settings(tmp.path(), &["archive"]);
    settings.until_idle = false;
    let signals = Signals::default();
    let reload = signals.reload.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        reload.cancel();
    });
    let exit = run_with(
        settings,
        Mode::Capture(source(&list)),
        vec![fs_sink("archive", &tmp.path().join("archive"))],
        signals,
        Telemetry::new().unwrap(),
    )
    .await
    .unwrap();
    assert_eq!((exit.reason, exit.code), (StopReason::Reload, 0));
    assert!(exit.receipt.complete, "{:?}", exit.receipt);
    let report = verify(&tmp.path().join("archive")).unwrap();
    assert_eq!(report.records, exit.receipt.records_captured);
}
