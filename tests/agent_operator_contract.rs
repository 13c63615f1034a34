//! The operator ↔ agent contract, end to end with the real binary: the YAML the operator renders
//! into the Pod annotation (`operator::device::build::agent_config` +
//! `agent_config_annotation`, on the operator's own fixtures in `src/operator/testdata/`) is
//! what the agent runs with. Only absolute paths and the listen address are moved to a temp
//! dir (what the Pod's volumes would provide); every key and value format is the operator's.
//!
//! - an assigned device's configuration captures a simulated chat.db into the filesystem sink,
//!   stamping the device identity the operator rendered, and drains on SIGTERM;
//! - a warm spare's configuration idles (live, not ready, chat.db and spool untouched) until
//!   the file — swapped like the kubelet swaps a downward-API volume — gains the identity and
//!   sinks a claim renders, then the same process captures.

mod pipeline_support;

use std::path::Path;
use std::process::{Child, Stdio};

use capturefleet::api::agent::DrainReceipt;
use capturefleet::api::{ArchiveSink, CaptureDevice, DevicePool};
use capturefleet::device::{Simulator, SimulatorConfig};
use capturefleet::operator::device::build::{self, PodPlan, PodRole};
use capturefleet::operator::device::settings::{DeviceSettings, PoolSettings};
use capturefleet::operator::device::sink_mounts::{self, SinkMount};
use pipeline_support::*;
use serde::Deserialize;

fn device() -> CaptureDevice {
    serde_yaml::from_str(include_str!("../src/operator/testdata/device.yaml")).unwrap()
}

fn pool() -> DevicePool {
    serde_yaml::from_str(include_str!("../src/operator/testdata/pool.yaml")).unwrap()
}

/// The fixture sinks the agent can reach here: the filesystem one (the S3 one needs a server;
/// `tests/sink_agent.rs` covers it).
fn filesystem_sinks() -> Vec<SinkMount> {
    serde_yaml::Deserializer::from_str(include_str!("../src/operator/testdata/sinks.yaml"))
        .map(|doc| ArchiveSink::deserialize(doc).unwrap())
        .filter(|s| s.spec.filesystem.is_some())
        .map(|s| sink_mounts::render(&s))
        .collect()
}

/// The annotation the operator renders for a Pod of `role`.
fn rendered(role: &str) -> String {
    let (device, pool, sinks) = (device(), pool(), filesystem_sinks());
    let (settings, pool_settings) = (DeviceSettings::resolve(&device), PoolSettings::resolve(&pool));
    let role = match role {
        "spare" => PodRole::Spare,
        _ => PodRole::Assigned {
            device: &device,
            settings: &settings,
        },
    };
    // As `claim.rs` renders it for a claimed spare (no pinned host yet).
    let plan = PodPlan {
        name: "advisers-spare-x1".into(),
        claim_name: "advisers-spare-x1".into(),
        pool: &pool,
        pool_settings: &pool_settings,
        role,
        sinks: &sinks,
        pinned_host: None,
    };
    build::agent_config_annotation(&build::agent_config(&plan))
}

/// Move every absolute path of the rendered YAML under `root` (the Pod's mounts) and listen on
/// `addr`; nothing else changes.
fn localise(yaml: &str, root: &Path, addr: &str) -> String {
    fn walk(value: &mut serde_yaml::Value, root: &Path) {
        match value {
            serde_yaml::Value::String(s) if s.starts_with('/') => {
                *s = root.join(s.trim_start_matches('/')).display().to_string();
            }
            serde_yaml::Value::Mapping(map) => map.iter_mut().for_each(|(_, v)| walk(v, root)),
            serde_yaml::Value::Sequence(items) => items.iter_mut().for_each(|v| walk(v, root)),
            _ => {}
        }
    }
    let mut value: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
    walk(&mut value, root);
    assert_eq!(
        value["httpListen"].as_str(),
        Some("0.0.0.0:9464"),
        "the operator's port"
    );
    value["httpListen"] = serde_yaml::Value::String(addr.to_owned());
    serde_yaml::to_string(&value).unwrap()
}

fn start_agent(config: &Path) -> Child {
    capturefleet()
        .args(["agent", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the agent")
}

fn stop(agent: Child) -> (Option<i32>, DrainReceipt) {
    sigterm(&agent);
    let out = agent.wait_with_output().unwrap();
    let receipt = DrainReceipt::parse(&String::from_utf8_lossy(&out.stdout)).expect("a receipt on stdout");
    (out.status.code(), receipt)
}

/// chat.db of a booted, signed-in device with some history (where the operator's Pod mounts
/// the Messages directory: `/messages`).
fn device_with_history(root: &Path, events: usize) -> Simulator {
    // The kubelet provides the termination-message file's directory.
    std::fs::create_dir_all(root.join("dev")).unwrap();
    let mut config = SimulatorConfig::new(root.join("messages"), 21);
    config.delete_after_steps = u64::MAX; // every event must be archived
    let mut sim = Simulator::create(config).unwrap();
    sim.write_history(events).unwrap();
    sim
}

fn holds_chat_db(pid: u32) -> bool {
    open_files(pid).iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("chat.db"))
    })
}

#[test]
fn the_configuration_the_operator_renders_runs_the_real_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let addr = free_loopback_addr();
    let sim = device_with_history(root, 400);
    let yaml = localise(&rendered("assigned"), root, &addr);
    let config = ProjectedFile::new(&root.join("etc/capturefleet/agent"), "agent.yaml", &yaml);
    let agent = start_agent(&config.path());

    // The filesystem sink's mount: /archive/<sink name>.
    let archive = root.join("archive/worm-filesystem");
    let expected = sim.manifest().events.len();
    wait_until(60, "the agent archives the device's history", || {
        archived_count(&archive, "jane-doe") >= expected
    });
    wait_until(10, "/readyz ready", || {
        http_get(&addr, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    let (code, receipt) = stop(agent);
    assert_eq!(code, Some(0));
    assert!(receipt.complete, "{receipt:?}");
    assert_eq!(receipt.pending.keys().collect::<Vec<_>>(), vec!["worm-filesystem"]);
    // The termination-message path the operator rendered (moved under root) holds it too.
    let written = std::fs::read_to_string(root.join("dev/termination-log")).unwrap();
    assert_eq!(DrainReceipt::parse(&written), Some(receipt.clone()));

    let records = assert_archive_matches_manifest(&archive, "jane-doe", sim.manifest());
    assert_eq!(records as u64, receipt.records_captured);
    for record in archived_records(&archive, "jane-doe") {
        assert_eq!(record.device.name, "jane-doe");
        assert_eq!(record.device.namespace.as_deref(), Some("wealth-advisory"));
        assert_eq!(record.device.user_id.as_deref(), Some("e100234"));
    }
    let (verified, summary) = verify_archive(&archive);
    assert!(verified.status.success(), "{summary}");
    assert!(
        root.join("spool/checkpoint").is_file() && root.join("spool/log").is_dir(),
        "the spool is where the operator said"
    );
}

#[test]
fn a_warm_spare_idles_then_captures_when_claimed_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let addr = free_loopback_addr();
    let sim = device_with_history(root, 300);
    let config = ProjectedFile::new(
        &root.join("etc/capturefleet/agent"),
        "agent.yaml",
        &localise(&rendered("spare"), root, &addr),
    );
    let mut agent = start_agent(&config.path());
    let pid = agent.id();

    // Unassigned: live, not ready, and it says why.
    wait_until(30, "/readyz says it is an unassigned warm spare", || {
        http_get(&addr, "/readyz").is_some_and(|(status, body)| status == 503 && body.contains("unassigned warm spare"))
    });
    assert_eq!(http_get(&addr, "/livez").map(|r| r.0), Some(200));
    // Two config polls later it still has not touched chat.db or the spool.
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert!(agent.try_wait().unwrap().is_none(), "the spare keeps running");
    assert!(!holds_chat_db(pid), "a spare does not open chat.db");
    assert!(!root.join("spool").exists(), "a spare does not touch the spool");
    let (_, body) = http_get(&addr, "/readyz").unwrap();
    assert!(body.contains("unassigned warm spare"), "{body}");

    // The operator claims it: the annotation (so the projected file) becomes the device's.
    config.update(&localise(&rendered("assigned"), root, &addr));
    let archive = root.join("archive/worm-filesystem");
    let expected = sim.manifest().events.len();
    wait_until(60, "the claimed spare archives the device's history", || {
        archived_count(&archive, "jane-doe") >= expected
    });
    wait_until(10, "/readyz ready", || {
        http_get(&addr, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    assert!(agent.try_wait().unwrap().is_none(), "no restart: the same process");
    assert!(holds_chat_db(pid), "the same process (pid {pid}) now reads chat.db");

    // And it keeps capturing live traffic.
    let mut sim = sim;
    for _ in 0..20 {
        sim.step().unwrap();
    }
    let expected = sim.manifest().events.len();
    wait_until(30, "live events archived", || {
        archived_count(&archive, "jane-doe") >= expected
    });
    let (code, receipt) = stop(agent);
    assert_eq!(code, Some(0));
    assert!(receipt.complete, "{receipt:?}");
    let records = assert_archive_matches_manifest(&archive, "jane-doe", sim.manifest());
    assert_eq!(records as u64, receipt.records_captured);
    let (verified, summary) = verify_archive(&archive);
    assert!(verified.status.success(), "{summary}");
}
