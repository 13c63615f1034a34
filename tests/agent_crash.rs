//! Crash safety with the real binary and a real chat.db: while the device simulator writes a
//! 100,000-message live stream, the agent is killed with SIGKILL at 50 random moments and
//! restarted; afterwards every simulated event is archived exactly once and the chain
//! verifies. The power-cut variant also tears the last write after each kill: part of an
//! uncommitted batch (stale but well-formed frames, then garbage) at the end of the spool
//! log's newest segment, a partial line at the end of the archive's newest segment, and a
//! half-written attachment file in the archive.

mod pipeline_support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use capturefleet::api::agent::DrainReceipt;
use capturefleet::device::{Simulator, SimulatorConfig};
use pipeline_support::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DEVICE: &str = "crash-device";
const STREAM_MESSAGES: usize = 100_000;
const KILLS: usize = 50;
/// The stream's pace: long enough that all kills land while it is being written.
const STREAM_RATE_PER_S: f64 = 7_000.0;

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        Setup { _tmp: tmp, root }
    }
    fn messages(&self) -> PathBuf {
        self.root.join("Messages")
    }
    fn spool(&self) -> PathBuf {
        self.root.join("spool")
    }
    fn archive(&self) -> PathBuf {
        self.root.join("archive")
    }

    fn agent(&self, until_idle: bool) -> std::process::Command {
        let mut cmd = capturefleet();
        cmd.args(["agent", "--device", DEVICE, "--poll-interval-ms", "50"])
            .arg("--chat-db")
            .arg(self.messages().join("chat.db"))
            .arg("--spool")
            .arg(self.spool())
            .arg(format!("--sink=file:{}", self.archive().display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if until_idle {
            cmd.arg("--until-idle");
        }
        cmd
    }
}

/// Run the stream in a thread, paced; returns the simulator when done.
fn stream(messages: PathBuf, done: Arc<AtomicBool>) -> std::thread::JoinHandle<Simulator> {
    let mut sim = Simulator::create(SimulatorConfig::new(&messages, 11)).expect("create chat.db");
    std::thread::spawn(move || {
        let started = Instant::now();
        for i in 0..STREAM_MESSAGES {
            sim.step().expect("simulator step");
            if i % 100 == 99 {
                let due = Duration::from_secs_f64((i + 1) as f64 / STREAM_RATE_PER_S);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        done.store(true, Ordering::SeqCst);
        sim
    })
}

fn kill9(mut child: Child) {
    child.kill().expect("SIGKILL the agent"); // std's kill() is SIGKILL on Unix
    child.wait().expect("reap the agent");
}

/// Run the scenario; `tear` is applied after every kill.
fn crash_and_recover(seed: u64, tear: impl Fn(&Setup, &mut StdRng)) {
    let setup = Setup::new();
    let mut rng = StdRng::seed_from_u64(seed);
    eprintln!("crash test seed {seed}");
    let done = Arc::new(AtomicBool::new(false));
    let writer = stream(setup.messages(), Arc::clone(&done));
    let mut kills_during_stream = 0;
    for _ in 0..KILLS {
        let child = setup.agent(false).spawn().expect("start the agent");
        std::thread::sleep(Duration::from_millis(rng.random_range(30..350)));
        if !done.load(Ordering::SeqCst) {
            kills_during_stream += 1;
        }
        kill9(child);
        tear(&setup, &mut rng);
    }
    let sim = writer.join().expect("the stream finished");
    assert!(
        kills_during_stream >= KILLS * 4 / 5,
        "only {kills_during_stream} of {KILLS} kills landed during the stream"
    );

    // Recover: one clean run until everything readable is delivered.
    let out = setup.agent(true).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "recovery run failed");
    let receipt = DrainReceipt::parse(&String::from_utf8_lossy(&out.stdout)).expect("receipt");
    assert!(receipt.complete, "{receipt:?}");

    let manifest = sim.manifest();
    assert!(
        manifest.events.len() >= STREAM_MESSAGES,
        "{} events",
        manifest.events.len()
    );
    let records = assert_archive_matches_manifest(&setup.archive(), DEVICE, manifest);
    assert_eq!(records as u64, receipt.records_captured);
    let (verified, summary) = verify_archive(&setup.archive());
    assert!(verified.status.success(), "archive verify after crashes: {summary}");
    assert_eq!(summary["heads"][DEVICE]["hash"], receipt.chain_head.as_str());
}

#[test]
fn sigkill_at_50_random_moments_during_a_100k_message_stream_loses_and_duplicates_nothing() {
    crash_and_recover(20_261_128, |_, _| {});
}

#[test]
fn power_cut_with_torn_last_writes_loses_and_duplicates_nothing() {
    crash_and_recover(4_242, |setup, rng| {
        tear_log_tail(&setup.spool().join("log"), rng);
        tear_archive_tail(&setup.archive().join(DEVICE), rng);
        tear_archive_attachment(&setup.archive().join(DEVICE), rng);
    });
}

/// The spool log as a power cut can leave it when a batch's fdatasync never returned: part
/// of that batch on disk after the last committed frame. Simulated by appending to the newest
/// segment a random prefix of well-formed frames (a copy of the segment's first frames:
/// their CRCs check, but they do not continue the chain) and then random garbage. Committed
/// frames are never touched: an append returned only after they were fsync'd.
fn tear_log_tail(log: &Path, rng: &mut StdRng) {
    let Ok(entries) = std::fs::read_dir(log) else { return };
    let Some(newest) = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max()
    else {
        return;
    };
    let bytes = std::fs::read(&newest).unwrap();
    let body = &bytes[bytes.len().min(32)..];
    let mut tail = Vec::new();
    if !body.is_empty() {
        tail.extend_from_slice(&body[..rng.random_range(1..=body.len().min(16_384))]);
    }
    tail.extend((0..rng.random_range(0..512)).map(|_| rng.random::<u8>()));
    let mut file = std::fs::OpenOptions::new().append(true).open(newest).unwrap();
    file.write_all(&tail).unwrap();
}

/// A partial record line at the end of the newest segment (a write that never completed).
fn tear_archive_tail(device_dir: &Path, rng: &mut StdRng) {
    let Ok(entries) = std::fs::read_dir(device_dir) else {
        return;
    };
    let Some(newest) = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .max()
    else {
        return;
    };
    let partial = r#"{"attachments":[],"body":{"origin":"text","text":"torn wri"#;
    let n = rng.random_range(1..partial.len());
    let mut file = std::fs::OpenOptions::new().append(true).open(newest).unwrap();
    file.write_all(&partial.as_bytes()[..n]).unwrap();
}

/// A half-written attachment file in the archive (a batch interrupted before it was synced
/// and renamed into place).
fn tear_archive_attachment(device_dir: &Path, rng: &mut StdRng) {
    let dir = device_dir.join("attachments").join("ab");
    std::fs::create_dir_all(&dir).unwrap();
    let name = format!(".{}.{:016x}.tmp", "ab".repeat(32), rng.random::<u64>());
    std::fs::write(dir.join(name), b"half a jpeg").unwrap();
}
