//! The agent's life in a Pod, with the real binary and a real chat.db: a configuration change
//! is applied by draining and exiting 0 (the kubelet restarts the container with the new
//! file), a change to another device is refused (exit 4, and the spool refuses it after a
//! restart too), and a drain-only run delivers what a spool holds after a sink outage without
//! chat.db being there at all.

mod pipeline_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use capturefleet::api::agent::DrainReceipt;
use capturefleet::device::{Simulator, SimulatorConfig};
use pipeline_support::*;

const DEVICE: &str = "lifecycle-device";

struct Pod {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Pod {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        Pod { _tmp: tmp, root }
    }

    fn messages(&self) -> PathBuf {
        self.root.join("messages")
    }

    fn archive(&self, name: &str) -> PathBuf {
        self.root.join("archive").join(name)
    }

    fn termination_log(&self) -> PathBuf {
        self.root.join("termination-log")
    }

    /// An agent configuration for `device` delivering to filesystem sinks `sinks`.
    fn config(&self, device: &str, sinks: &[&str]) -> String {
        let sinks: Vec<serde_json::Value> = sinks
            .iter()
            .map(|name| serde_json::json!({"name": name, "filesystem": {"path": self.archive(name)}}))
            .collect();
        serde_yaml::to_string(&serde_json::json!({
            "schema": "capturefleet.dev/agent-config/v1",
            "device": {"name": device, "namespace": "lifecycle", "userId": "u1"},
            "chatDb": self.messages().join("chat.db"),
            "spoolDir": self.root.join("spool"),
            "capture": {"services": ["iMessage", "SMS", "RCS"], "attachments": "Include",
                        "rescanWindowSeconds": 3600, "pollIntervalMs": 100},
            "sinks": sinks,
            "httpListen": "",
            "terminationMessagePath": self.termination_log(),
            "drainTimeoutSeconds": 2,
        }))
        .unwrap()
    }

    fn agent(&self, config: &Path, extra: &[&str]) -> Child {
        capturefleet()
            .args(["agent", "--config"])
            .arg(config)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the agent")
    }
}

/// Wait for a child to exit by itself, at most `seconds`.
fn exits_within(mut child: Child, seconds: u64) -> Output {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not exit by itself within {seconds} s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// A metric's value in a Prometheus text body.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A simulated device that never deletes rows (so every event must be archived).
fn simulator(pod: &Pod, seed: u64) -> Simulator {
    let mut config = SimulatorConfig::new(pod.messages(), seed);
    config.delete_after_steps = u64::MAX;
    Simulator::create(config).unwrap()
}

fn receipt_of(out: &Output) -> DrainReceipt {
    DrainReceipt::parse(&String::from_utf8_lossy(&out.stdout))
        .unwrap_or_else(|| panic!("no receipt; stderr: {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_settings_change_drains_and_exits_0_and_another_device_is_refused() {
    let pod = Pod::new();
    let mut sim = simulator(&pod, 31);
    sim.write_history(300).unwrap();
    let file = ProjectedFile::new(&pod.root.join("config"), "agent.yaml", &pod.config(DEVICE, &["first"]));

    let agent = pod.agent(&file.path(), &[]);
    let expected = sim.manifest().events.len();
    wait_until(60, "the first sink has the history", || {
        archived_count(&pod.archive("first"), DEVICE) >= expected
    });
    // The operator adds a sink: the agent drains and exits 0 by itself.
    file.update(&pod.config(DEVICE, &["first", "second"]));
    let out = exits_within(agent, 30);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let receipt = receipt_of(&out);
    assert!(receipt.complete, "{receipt:?}");
    assert_eq!(receipt.pending.keys().collect::<Vec<_>>(), vec!["first"]);
    let written = std::fs::read_to_string(pod.termination_log()).unwrap();
    assert_eq!(DrainReceipt::parse(&written), Some(receipt.clone()));

    // The kubelet restarts it with the new file: both sinks get everything, the chain goes on.
    let agent = pod.agent(&file.path(), &[]);
    for _ in 0..30 {
        sim.step().unwrap();
    }
    let expected = sim.manifest().events.len();
    wait_until(60, "both sinks have history and live events", || {
        archived_count(&pod.archive("first"), DEVICE) >= expected
            && archived_count(&pod.archive("second"), DEVICE) >= expected
    });

    // The annotation now names another device: refused, after draining this one's records.
    file.update(&pod.config("someone-else", &["first", "second"]));
    let out = exits_within(agent, 30);
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let receipt = receipt_of(&out);
    assert!(receipt.complete, "{receipt:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("another device"));
    for sink in ["first", "second"] {
        let records = assert_archive_matches_manifest(&pod.archive(sink), DEVICE, sim.manifest());
        assert_eq!(records as u64, receipt.records_captured, "{sink}");
        let (verified, summary) = verify_archive(&pod.archive(sink));
        assert!(verified.status.success(), "{sink}: {summary}");
    }
    assert!(!pod.archive("first").join("someone-else").exists());

    // Restarted with the other device's file, the spool refuses it: exit 1, loudly.
    let out = exits_within(pod.agent(&file.path(), &[]), 30);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("holds the chain of device"), "{stderr}");
}

#[test]
fn drain_only_delivers_a_spool_left_by_a_sink_outage_without_chat_db() {
    let pod = Pod::new();
    let mut sim = simulator(&pod, 32);
    sim.write_history(250).unwrap();
    // The archive is unusable (its device directory is a file): every delivery fails.
    std::fs::create_dir_all(pod.archive("archive")).unwrap();
    std::fs::write(pod.archive("archive").join(DEVICE), b"not a directory").unwrap();
    let file = ProjectedFile::new(
        &pod.root.join("config"),
        "agent.yaml",
        &pod.config(DEVICE, &["archive"]),
    );
    let addr = free_loopback_addr();
    let agent = pod.agent(&file.path(), &["--http-listen", &addr]);
    let expected = sim.manifest().events.len() as f64;
    wait_until(60, "the history is spooled", || {
        http_get(&addr, "/metrics").is_some_and(|(_, body)| metric(&body, "capture_chain_sequence") >= Some(expected))
    });
    sigterm(&agent);
    let out = agent.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "the drain timeout ends the drain with exit 0"
    );
    let stranded = receipt_of(&out);
    assert!(!stranded.complete);
    assert_eq!(stranded.pending["archive"], stranded.records_captured);

    // The device is gone: no chat.db any more. The archive is repaired; a drain-only Pod runs.
    std::fs::remove_dir_all(pod.messages()).unwrap();
    std::fs::remove_file(pod.archive("archive").join(DEVICE)).unwrap();
    let out = exits_within(pod.agent(&file.path(), &["--drain-only"]), 60);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let receipt = receipt_of(&out);
    assert!(receipt.complete, "{receipt:?}");
    assert_eq!(
        (receipt.records_captured, &receipt.chain_head),
        (stranded.records_captured, &stranded.chain_head),
        "nothing new was captured"
    );
    let written = std::fs::read_to_string(pod.termination_log()).unwrap();
    assert_eq!(DrainReceipt::parse(&written), Some(receipt.clone()));
    assert!(!pod.messages().exists(), "chat.db was never looked for");
    let (verified, summary) = verify_archive(&pod.archive("archive"));
    assert!(verified.status.success(), "{summary}");
    assert_eq!(summary["records"], receipt.records_captured);
    assert_eq!(summary["heads"][DEVICE]["hash"], receipt.chain_head.as_str());
}

#[test]
fn drain_only_on_a_volume_without_a_spool_is_a_complete_drain_of_nothing() {
    let pod = Pod::new();
    let file = ProjectedFile::new(
        &pod.root.join("config"),
        "agent.yaml",
        &pod.config(DEVICE, &["archive"]),
    );
    let out = exits_within(pod.agent(&file.path(), &["--drain-only"]), 30);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let receipt = receipt_of(&out);
    assert!(receipt.complete && receipt.records_captured == 0 && receipt.pending_total == 0);
    assert!(!pod.root.join("spool").exists(), "no spool was created");
    assert!(!pod.messages().exists());
}

#[test]
fn a_spare_stopped_before_any_claim_exits_0_with_an_empty_complete_receipt() {
    let pod = Pod::new();
    let spare = pod.config("", &[]);
    let file = ProjectedFile::new(&pod.root.join("config"), "agent.yaml", &spare);
    let addr = free_loopback_addr();
    let agent = pod.agent(&file.path(), &["--http-listen", &addr]);
    wait_until(30, "the spare says it is unassigned", || {
        http_get(&addr, "/readyz").is_some_and(|(status, body)| status == 503 && body.contains("unassigned warm spare"))
    });
    sigterm(&agent);
    let out = exits_within(agent, 30);
    assert_eq!(out.status.code(), Some(0));
    let receipt = receipt_of(&out);
    assert!(receipt.complete && receipt.records_captured == 0 && receipt.pending.is_empty());
    let written = std::fs::read_to_string(pod.termination_log()).unwrap();
    assert_eq!(DrainReceipt::parse(&written), Some(receipt));
    assert!(!pod.root.join("spool").exists());
}

#[test]
fn a_chat_db_that_is_something_else_is_reported_and_retried_not_fatal() {
    let pod = Pod::new();
    std::fs::create_dir_all(pod.messages()).unwrap();
    rusqlite::Connection::open(pod.messages().join("chat.db"))
        .unwrap()
        .execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .unwrap();
    let file = ProjectedFile::new(
        &pod.root.join("config"),
        "agent.yaml",
        &pod.config(DEVICE, &["archive"]),
    );
    let addr = free_loopback_addr();
    let mut agent = pod.agent(&file.path(), &["--http-listen", &addr]);
    wait_until(30, "/readyz says chat.db is not usable", || {
        http_get(&addr, "/readyz").is_some_and(|(status, body)| {
            status == 503 && body.contains("chat.db cannot be used: not a Messages database")
        })
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(agent.try_wait().unwrap().is_none(), "still running, retrying");
    assert_eq!(http_get(&addr, "/livez").map(|r| r.0), Some(200));

    // Messages' real database replaces it: capture starts.
    let mut sim = simulator(&pod, 33);
    sim.write_history(100).unwrap();
    let expected = sim.manifest().events.len();
    wait_until(60, "the history is archived", || {
        archived_count(&pod.archive("archive"), DEVICE) >= expected
    });
    sigterm(&agent);
    let out = agent.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let receipt = receipt_of(&out);
    assert!(receipt.complete);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a Messages database"), "reported loudly: {stderr}");
    assert_archive_matches_manifest(&pod.archive("archive"), DEVICE, sim.manifest());
}
