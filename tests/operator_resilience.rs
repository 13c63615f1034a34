//! The operator converges through crashes: it is SIGKILLed in the middle of reconciling a
//! fleet and restarted, and the API server itself is restarted; throughout, a sampler checks
//! that no employee ever has two live device Pods, and at the end nothing is orphaned.
//! (Alone in its test binary: restarting the API server would disturb parallel tests.)

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use support::operator::OperatorProcess;
use support::{TestNamespace, apply_yaml, client, eventually, install_crds};

use capturefleet::api::{CaptureDevice, DevicePhase};

const DEVICES: usize = 12;

fn fleet(n: usize) -> String {
    let mut yaml = support::ARCHIVE_SINK_YAML.to_owned()
        + r#"apiVersion: capturefleet.dev/v1alpha1
kind: DevicePool
metadata: {name: desk}
spec:
  runtime: {image: "example.invalid/macos-runtime:15"}
  agent: {image: "example.invalid/capturefleet:test"}
  volume: {size: 1Gi}
  warmSpares: 2
"#;
    for i in 0..n {
        yaml.push_str(&format!(
            "---\napiVersion: capturefleet.dev/v1alpha1\nkind: CaptureDevice\nmetadata: {{name: dev-{i}}}\nspec:\n  user: {{id: \"u{i}\"}}\n  poolRef: {{name: desk}}\n  sinkRefs: [{{name: archive}}]\n"
        ));
    }
    yaml
}

fn restart_api_server() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/restart");
    let status = std::process::Command::new(script)
        .arg("kube-apiserver")
        .status()
        .expect("run tests/cluster/restart");
    assert!(status.success(), "restarting the API server failed");
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up); run by `make test`"]
async fn converges_after_operator_crashes_and_an_api_server_restart_without_duplicate_pods() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, "op-crash").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let devices: Api<CaptureDevice> = Api::namespaced(client.clone(), &ns.name);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);

    // The sampler: every 100 ms, no device may have two live Pods.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(AtomicUsize::new(0));
    let violations: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let sampler = {
        let (pods, stop, samples, violations) = (pods.clone(), stop.clone(), samples.clone(), violations.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(list) = pods
                    .list(&ListParams::default().labels("capturefleet.dev/component=device"))
                    .await
                {
                    let mut per_device: HashMap<String, Vec<String>> = HashMap::new();
                    for p in list.items.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
                        if let Some(d) = p.labels().get("capturefleet.dev/device") {
                            per_device.entry(d.clone()).or_default().push(p.name_any());
                        }
                    }
                    for (d, ps) in per_device.into_iter().filter(|(_, ps)| ps.len() > 1) {
                        violations.lock().unwrap().push(format!("{d}: {ps:?}"));
                    }
                    samples.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let mut first = OperatorProcess::start(&ns.name, "crashing");
    first.wait_ready().await;
    apply_yaml(&client, &ns.name, &fleet(DEVICES)).await;
    // Kill it in the middle of creating the fleet.
    tokio::time::sleep(Duration::from_millis(700)).await;
    first.kill();
    let mut second = OperatorProcess::start(&ns.name, "after-crash");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    second.kill();
    // The API server goes away and comes back while a fresh operator works.
    let third = OperatorProcess::start(&ns.name, "survivor");
    tokio::time::sleep(Duration::from_millis(500)).await;
    restart_api_server();

    // Everything converges: every device has exactly one Pod and reaches AwaitingEnrollment.
    let wait = Duration::from_secs(180);
    eventually(wait, "every device to await enrollment", || async {
        let list = devices.list(&ListParams::default()).await.ok()?;
        let waiting = list
            .items
            .iter()
            .filter(|d| d.status.as_ref().and_then(|s| s.phase) == Some(DevicePhase::AwaitingEnrollment))
            .count();
        (waiting == DEVICES).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    let violations = violations.lock().unwrap().clone();
    assert!(
        samples.load(Ordering::SeqCst) > 20,
        "the sampler ran too rarely to mean anything"
    );
    assert!(
        violations.is_empty(),
        "a device had two live Pods at once: {violations:?}\n{}",
        third.log_tail()
    );

    // No orphans: every device Pod and volume belongs to an existing device or is a spare.
    let device_names: Vec<String> = devices
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| d.name_any())
        .collect();
    let live_pods = pods
        .list(&ListParams::default().labels("capturefleet.dev/component=device"))
        .await
        .unwrap();
    let mut per_device: HashMap<String, usize> = HashMap::new();
    for p in live_pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        match p.labels().get("capturefleet.dev/device") {
            Some(d) => {
                assert!(
                    device_names.contains(d),
                    "orphan Pod {} for missing device {d}",
                    p.name_any()
                );
                *per_device.entry(d.clone()).or_default() += 1;
            }
            None => assert_eq!(
                p.labels().get("capturefleet.dev/role").map(String::as_str),
                Some("spare"),
                "unlabelled Pod {}",
                p.name_any()
            ),
        }
    }
    assert_eq!(per_device.len(), DEVICES, "every device has a Pod");
    assert!(
        per_device.values().all(|n| *n == 1),
        "exactly one Pod per device: {per_device:?}"
    );
    for c in claims
        .list(&ListParams::default().labels("capturefleet.dev/component=device"))
        .await
        .unwrap()
        .items
    {
        if let Some(d) = c.labels().get("capturefleet.dev/device") {
            assert!(
                device_names.contains(d),
                "orphan volume {} for missing device {d}",
                c.name_any()
            );
        }
    }
    drop(third);
}
