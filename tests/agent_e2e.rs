//! End to end with the real binary: the agent starts before chat.db exists (it waits, not
//! ready), then `capturefleet device simulate` writes a chat.db live while `capturefleet agent`
//! captures it into a filesystem archive; on SIGTERM the agent drains and
//! writes its receipt; `capturefleet archive verify` passes and every simulated event is
//! archived exactly once (checked against the simulator's manifest), every record valid
//! against `docs/record.schema.json`.

mod pipeline_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use capturefleet::api::agent::DrainReceipt;
use capturefleet::device::Manifest;
use pipeline_support::*;

const DEVICE: &str = "e2e-device";

#[test]
fn live_simulation_to_filesystem_archive_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let messages = tmp.path().join("Messages");
    let manifest_path = tmp.path().join("manifest.json");
    let archive = tmp.path().join("archive");
    let termination = tmp.path().join("termination-log");
    let addr = free_loopback_addr();

    // The agent starts first, like a device Pod whose Messages has not created chat.db yet: it
    // stays up, not ready, and says why.
    let chat_db = messages.join("chat.db");
    std::fs::create_dir_all(&messages).unwrap();
    let agent = capturefleet()
        .args([
            "agent",
            "--device",
            DEVICE,
            "--poll-interval-ms",
            "100",
            "--http-listen",
            &addr,
        ])
        .arg("--chat-db")
        .arg(&chat_db)
        .arg("--spool")
        .arg(tmp.path().join("spool"))
        .arg(format!("--sink=file:{}", archive.display()))
        .arg("--termination-message-path")
        .arg(&termination)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut waiting = None;
    while Instant::now() < deadline {
        if let Some((503, body)) = http_get(&addr, "/readyz")
            && body.contains("waiting for Messages: chat.db does not exist yet")
        {
            waiting = Some(body);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(waiting.is_some(), "/readyz never said it waits for chat.db");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(http_get(&addr, "/livez").map(|r| r.0), Some(200), "still alive");

    // Then the device: history first (so the agent starts with a backfill), then live traffic
    // for 5 s.
    let mut simulator = capturefleet()
        .args([
            "device",
            "simulate",
            "--seed",
            "7",
            "--messages",
            "400",
            "--rate",
            "120",
            "--duration",
            "5",
        ])
        .arg("--dir")
        .arg(&messages)
        .arg("--manifest")
        .arg(&manifest_path)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the simulator");

    // While the simulation runs, the agent is ready and its metrics carry no personal data.
    let mut ready = false;
    let mut metrics = String::new();
    while !ready && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        ready = http_get(&addr, "/readyz").is_some_and(|(status, _)| status == 200);
    }
    assert!(ready, "/readyz never became ready while capturing");
    assert_eq!(http_get(&addr, "/livez").map(|r| r.0), Some(200));

    let status = simulator.wait().unwrap();
    assert!(status.success(), "simulator failed: {status}");
    let manifest = Manifest::read_json(&manifest_path).unwrap();
    assert!(
        manifest.events.len() > 800,
        "history plus live traffic: {}",
        manifest.events.len()
    );

    // Wait until the live agent has archived the last simulated event, then SIGTERM it.
    let last_key = format!("{DEVICE}/{}", manifest.events.last().unwrap().key());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let archived = archive.join(DEVICE).is_dir()
            && archived_records(&archive, DEVICE)
                .iter()
                .any(|r| r.idempotency_key == last_key);
        if archived {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent did not capture the live traffic in time"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some((200, body)) = http_get(&addr, "/metrics") {
        metrics = body;
    }
    sigterm(&agent);
    let out = agent.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "agent exit after a complete drain");

    // The receipt (stdout and termination-message path agree), and the archive.
    let receipt = DrainReceipt::parse(&std::fs::read_to_string(&termination).unwrap()).expect("a drain receipt");
    assert_eq!(
        DrainReceipt::parse(&String::from_utf8_lossy(&out.stdout)),
        Some(receipt.clone())
    );
    assert!(receipt.complete && receipt.pending_total == 0, "{receipt:?}");
    assert!(std::fs::metadata(&termination).unwrap().len() < 4096);
    let records = assert_archive_matches_manifest(&archive, DEVICE, &manifest);
    assert_eq!(receipt.records_captured as usize, records);

    let (verified, summary) = verify_archive(&archive);
    assert!(verified.status.success(), "{summary}");
    assert_eq!(summary["ok"], true);
    assert_eq!(summary["records"], records as u64);
    assert_eq!(summary["heads"][DEVICE]["hash"], receipt.chain_head.as_str());

    for expected in [
        "capture_records_captured_total{kind=\"message\"}",
        "capture_records_delivered_total{sink=\"filesystem\"}",
        "capture_commit_to_ack_seconds_count{sink=\"filesystem\"}",
        "capture_spool_bytes",
    ] {
        assert!(metrics.contains(expected), "missing {expected}");
    }
    for participant in manifest.events.iter().filter_map(|e| e.text.as_deref()).take(50) {
        if participant.len() > 8 {
            assert!(!metrics.contains(participant), "message text in metrics");
        }
    }
    assert!(!metrics.contains("@example.com"), "an e-mail address in metrics");
}

#[test]
fn until_idle_backfill_then_restart_adds_only_new_events() {
    let tmp = tempfile::tempdir().unwrap();
    let messages = tmp.path().join("Messages");
    let archive = tmp.path().join("archive");
    let mut sim =
        capturefleet::device::Simulator::create(capturefleet::device::SimulatorConfig::new(&messages, 3)).unwrap();
    sim.write_history(1_500).unwrap();
    let chat_db = sim.chat_db();
    let agent = |extra: &[&str]| {
        let out = capturefleet()
            .args(["agent", "--device", DEVICE, "--until-idle"])
            .arg("--chat-db")
            .arg(&chat_db)
            .arg("--spool")
            .arg(tmp.path().join("spool"))
            .arg(format!("--sink=file:{}", archive.display()))
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        DrainReceipt::parse(&String::from_utf8_lossy(&out.stdout)).expect("receipt on stdout")
    };
    let first = agent(&[]);
    assert!(first.complete);
    for _ in 0..200 {
        sim.step().unwrap();
    }
    let second = agent(&[]);
    assert!(second.records_captured > first.records_captured);
    let records = assert_archive_matches_manifest(&archive, DEVICE, sim.manifest());
    assert_eq!(records as u64, second.records_captured);
    let (verified, summary) = verify_archive(&archive);
    assert!(verified.status.success(), "{summary}");
}
