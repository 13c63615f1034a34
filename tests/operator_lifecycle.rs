//! The operator against the real control plane, with the test playing the kubelet of the fake
//! Mac hosts (annotating device Pods as signed in, writing termination messages).

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::operator::OperatorProcess;
use support::{TestNamespace, apply_yaml, client, eventually, install_crds};

use capturefleet::api::{CaptureDevice, DevicePhase};

const WAIT: Duration = Duration::from_secs(90);

fn fleet_yaml(devices: &[&str], warm_spares: u32) -> String {
    let mut yaml = format!(
        r#"
apiVersion: capturefleet.dev/v1alpha1
kind: ArchiveSink
metadata: {{name: archive}}
spec:
  filesystem: {{claimName: archive}}
---
apiVersion: capturefleet.dev/v1alpha1
kind: DevicePool
metadata: {{name: advisers}}
spec:
  runtime: {{image: "example.invalid/macos-runtime:15"}}
  agent: {{image: "example.invalid/capturefleet:test"}}
  volume: {{size: 1Gi}}
  enrollment: {{urlTemplate: "https://enroll.example/{{namespace}}/{{device}}?user={{user}}"}}
  warmSpares: {warm_spares}
"#
    );
    for (i, d) in devices.iter().enumerate() {
        yaml.push_str(&format!(
            r#"---
apiVersion: capturefleet.dev/v1alpha1
kind: CaptureDevice
metadata: {{name: {d}}}
spec:
  user: {{id: "e{i:04}", displayName: "Employee {i}"}}
  poolRef: {{name: advisers}}
  sinkRefs: [{{name: archive}}]
"#
        ));
    }
    yaml
}

async fn device_pod(pods: &Api<Pod>, device: &str) -> Option<Pod> {
    let list = pods
        .list(&ListParams::default().labels(&format!(
            "capturefleet.dev/device={device},capturefleet.dev/role=assigned"
        )))
        .await
        .ok()?;
    list.items.into_iter().find(|p| p.metadata.deletion_timestamp.is_none())
}

async fn phase(devices: &Api<CaptureDevice>, name: &str) -> Option<DevicePhase> {
    devices.get(name).await.ok()?.status?.phase
}

/// Play the employee signing in: kwok's `device-pod-enrolled` stage then reports both
/// containers ready, as the kubelet would once the readiness probes pass.
async fn sign_in(pods: &Api<Pod>, pod: &str) {
    let patch = json!({"metadata": {"annotations": {"sim.capturefleet.dev/enrolled": "true"}}});
    pods.patch(pod, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// Play the kubelet stopping a Pod whose agent drained: phase Failed, the agent terminated with
/// its drain receipt as termination message.
async fn agent_terminated(pods: &Api<Pod>, pod: &str, receipt: &serde_json::Value) {
    let status = json!({"status": {
        "phase": "Failed",
        "reason": "DeadlineExceeded",
        "containerStatuses": [
            {"name": "device", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
             "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
            {"name": "agent", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
             "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": receipt.to_string()}}}
        ]
    }});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

async fn setup(prefix: &str) -> (Client, TestNamespace) {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, prefix).await;
    apply_yaml(&client, &ns.name, "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: archive}\nspec: {accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}}\n").await;
    (client, ns)
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up); run by `make test`"]
async fn devices_reach_capturing_and_an_idle_fleet_makes_no_writes() {
    let (client, ns) = setup("op-life").await;
    let leader = OperatorProcess::start(&ns.name, "replica-a");
    leader.wait_ready().await;
    let names = ["jane-doe", "omar-haddad", "li-wei"];
    apply_yaml(&client, &ns.name, &fleet_yaml(&names, 0)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let devices: Api<CaptureDevice> = Api::namespaced(client.clone(), &ns.name);

    // Three device Pods, each on a Mac host with one macOS VM slot.
    for d in names {
        let pod = eventually(WAIT, "a running device Pod on a Mac host", || async {
            let p = device_pod(&pods, d).await?;
            (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
        })
        .await;
        let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
        assert!(node.starts_with("mac-host-"), "{d} runs on {node}");
        let runtime = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(
            runtime.resources.as_ref().unwrap().requests.as_ref().unwrap()["capturefleet.dev/macos-vm"].0,
            "1"
        );
        assert_eq!(pod.spec.as_ref().unwrap().automount_service_account_token, Some(false));
    }
    // Booted, not signed in: AwaitingEnrollment with the enrollment URL.
    for d in names {
        eventually(WAIT, "AwaitingEnrollment", || async {
            (phase(&devices, d).await? == DevicePhase::AwaitingEnrollment).then_some(())
        })
        .await;
        let status = devices.get(d).await.unwrap().status.unwrap();
        let url = status.enrollment.unwrap().url.unwrap();
        assert_eq!(
            url,
            format!(
                "https://enroll.example/{}/{d}?user={}",
                ns.name,
                devices.get(d).await.unwrap().spec.user.id
            )
        );
    }
    // Signed in: Capturing, Ready=True, observedGeneration current, host pinned.
    for d in names {
        sign_in(&pods, &device_pod(&pods, d).await.unwrap().name_any()).await;
    }
    for d in names {
        eventually(WAIT, "Capturing", || async {
            (phase(&devices, d).await? == DevicePhase::Capturing).then_some(())
        })
        .await;
        let device = devices.get(d).await.unwrap();
        let status = device.status.clone().unwrap();
        assert_eq!(status.observed_generation, device.metadata.generation);
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.observed_generation),
            ("True", device.metadata.generation)
        );
        for c in &status.conditions {
            assert_eq!(
                c.observed_generation, device.metadata.generation,
                "condition {} carries observedGeneration",
                c.type_
            );
        }
        let host = status.enrollment.unwrap().host.unwrap();
        assert_eq!(
            Some(host.clone()),
            status.device.unwrap().host,
            "the sign-in host is recorded"
        );
    }

    // A second replica stands by.
    let standby = OperatorProcess::start(&ns.name, "replica-b");
    standby.wait_ready().await;
    // Let the last events and status writes land, then count writes over 60 s of nothing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (a0, b0) = (leader.writes().await, standby.writes().await);
    let before = devices.list(&ListParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let (a1, b1) = (leader.writes().await, standby.writes().await);
    assert_eq!(
        a1 - a0,
        0,
        "the leader wrote {} times while nothing changed:\n{}",
        a1 - a0,
        leader.log_tail()
    );
    assert_eq!(
        b1, 0,
        "a standby replica must write nothing (it wrote {b1}; {b0} before the quiet minute)"
    );
    let after = devices.list(&ListParams::default()).await.unwrap();
    let versions =
        |l: &kube::api::ObjectList<CaptureDevice>| l.items.iter().map(|d| d.resource_version()).collect::<Vec<_>>();
    assert_eq!(
        versions(&before),
        versions(&after),
        "no CaptureDevice changed while idle"
    );
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up); run by `make test`"]
async fn deleting_a_device_drains_it_and_keeps_the_volume_while_records_are_pending() {
    let (client, ns) = setup("op-drain").await;
    let _operator = OperatorProcess::start(&ns.name, "replica-a");
    apply_yaml(&client, &ns.name, &fleet_yaml(&["pending-drain", "clean-drain"], 0)).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let devices: Api<CaptureDevice> = Api::namespaced(client.clone(), &ns.name);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    for d in ["pending-drain", "clean-drain"] {
        let pod = eventually(WAIT, "a running device Pod", || async {
            let p = device_pod(&pods, d).await?;
            (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
        })
        .await;
        sign_in(&pods, &pod.name_any()).await;
        eventually(WAIT, "Capturing", || async {
            (phase(&devices, d).await? == DevicePhase::Capturing).then_some(())
        })
        .await;
    }
    let claim_of = |d: &CaptureDevice| {
        d.status
            .as_ref()
            .unwrap()
            .device
            .as_ref()
            .unwrap()
            .volume_claim
            .clone()
            .unwrap()
    };

    // Records pending: the device stays (finalizer), reports DrainIncomplete, keeps its volume.
    let device = devices.get("pending-drain").await.unwrap();
    let claim = claim_of(&device);
    devices.delete("pending-drain", &DeleteParams::default()).await.unwrap();
    let pod = eventually(WAIT, "the operator to ask the agent to drain", || async {
        let p = device_pod(&pods, "pending-drain").await?;
        p.spec.as_ref()?.active_deadline_seconds.map(|_| p)
    })
    .await;
    assert!(
        pod.metadata.deletion_timestamp.is_none(),
        "the Pod is stopped, not deleted, so its receipt can be read"
    );
    let pending = json!({"schema": "capturefleet.dev/drain-receipt/v1", "recordsCaptured": 120, "lastSequence": 120,
        "chainHead": "ab12", "pending": {"archive": 7}, "pendingTotal": 7, "complete": false, "finishedAt": "2026-01-01T00:00:00Z"});
    agent_terminated(&pods, &pod.name_any(), &pending).await;
    let status = eventually(WAIT, "DrainIncomplete", || async {
        let s = devices.get("pending-drain").await.ok()?.status?;
        let ready = s.conditions.iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == "DrainIncomplete").then_some(s)
    })
    .await;
    assert_eq!(status.phase, Some(DevicePhase::Draining));
    assert_eq!(status.last_drain_receipt.as_ref().unwrap().pending_total, 7);
    assert!(
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .message
            .contains("7 for archive")
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        claims.get(&claim).await.is_ok(),
        "the volume with undelivered records is kept"
    );
    assert!(
        devices.get("pending-drain").await.is_ok(),
        "the device is kept until its records are delivered"
    );

    // Nothing pending: finalizer released, Pod gone, volume deleted (the default policy).
    let device = devices.get("clean-drain").await.unwrap();
    let claim = claim_of(&device);
    devices.delete("clean-drain", &DeleteParams::default()).await.unwrap();
    let pod = eventually(WAIT, "the operator to ask the agent to drain", || async {
        let p = device_pod(&pods, "clean-drain").await?;
        p.spec.as_ref()?.active_deadline_seconds.map(|_| p)
    })
    .await;
    let done = json!({"schema": "capturefleet.dev/drain-receipt/v1", "recordsCaptured": 80, "lastSequence": 80,
        "chainHead": "cd34", "pending": {"archive": 0}, "pendingTotal": 0, "complete": true, "finishedAt": "2026-01-01T00:00:00Z"});
    agent_terminated(&pods, &pod.name_any(), &done).await;
    eventually(WAIT, "the device to be gone", || async {
        devices.get("clean-drain").await.is_err().then_some(())
    })
    .await;
    eventually(WAIT, "its Pod to be gone", || async {
        device_pod(&pods, "clean-drain").await.is_none().then_some(())
    })
    .await;
    support::claim_deleted(WAIT, &claims, &claim).await;
}
