//! Fleet behaviour on the real control plane: warm spares (claim, replenish, scale), Mac host
//! capacity and pool limits, rolling updates that halt on a failing device, auto-repair with
//! backoff, and the pool's PodDisruptionBudget.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use support::operator::OperatorProcess;
use support::{TestNamespace, apply_yaml, client, eventually, install_crds};

use capturefleet::api::{CaptureDevice, DevicePhase, DevicePool};

const WAIT: Duration = Duration::from_secs(120);

fn pool_yaml(name: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: capturefleet.dev/v1alpha1
kind: ArchiveSink
metadata: {{name: archive}}
spec:
  filesystem: {{claimName: archive}}
---
apiVersion: capturefleet.dev/v1alpha1
kind: DevicePool
metadata: {{name: {name}}}
spec:
  runtime: {{image: "example.invalid/macos-runtime:15"}}
  agent: {{image: "example.invalid/capturefleet:1"}}
  volume: {{size: 1Gi}}
{extra}
"#
    )
}

fn device_yaml(name: &str, pool: &str) -> String {
    format!(
        "apiVersion: capturefleet.dev/v1alpha1\nkind: CaptureDevice\nmetadata: {{name: {name}}}\nspec:\n  user: {{id: \"{name}\"}}\n  poolRef: {{name: {pool}}}\n  sinkRefs: [{{name: archive}}]\n"
    )
}

async fn setup(prefix: &str) -> (Client, TestNamespace, OperatorProcess) {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::new(&client, prefix).await;
    apply_yaml(&client, &ns.name, "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: archive}\nspec: {accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}}\n").await;
    let operator = OperatorProcess::start(&ns.name, "fleet");
    operator.wait_ready().await;
    (client, ns, operator)
}

async fn live_pods(pods: &Api<Pod>, selector: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(selector))
        .await
        .map(|l| {
            l.items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect()
        })
        .unwrap_or_default()
}

async fn device_pod(pods: &Api<Pod>, device: &str) -> Option<Pod> {
    live_pods(
        pods,
        &format!("capturefleet.dev/device={device},capturefleet.dev/role=assigned"),
    )
    .await
    .into_iter()
    .next()
}

async fn phase(devices: &Api<CaptureDevice>, name: &str) -> Option<DevicePhase> {
    devices.get(name).await.ok()?.status?.phase
}

async fn sign_in(pods: &Api<Pod>, pod: &str) {
    let patch = json!({"metadata": {"annotations": {"sim.capturefleet.dev/enrolled": "true"}}});
    pods.patch(pod, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

async fn capturing(pods: &Api<Pod>, devices: &Api<CaptureDevice>, device: &str) -> Pod {
    let pod = eventually(WAIT, "a running device Pod", || async {
        let p = device_pod(pods, device).await?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    sign_in(pods, &pod.name_any()).await;
    eventually(WAIT, "Capturing", || async {
        (phase(devices, device).await? == DevicePhase::Capturing).then_some(())
    })
    .await;
    pod
}

/// A Mac host only this test's pods can use (tainted), so capacity is deterministic.
async fn dedicated_host(client: &Client, name: &str, slots: u32) {
    let nodes: Api<Node> = Api::all(client.clone());
    // The capacity is part of the created object (nodes may set their status on create): a
    // status patch after creation races kwok's first status update, which copies the
    // allocatable it read and can write it back empty.
    let capacity =
        json!({"cpu": "10", "memory": "32Gi", "pods": "110", "capturefleet.dev/macos-vm": slots.to_string()});
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                     "labels": {"kubernetes.io/hostname": name, "capturefleet.dev/mac-host": "true", "dedicated": name, "type": "kwok"}},
        "spec": {"taints": [{"key": "dedicated", "value": name, "effect": "NoSchedule"}]},
        "status": {"capacity": capacity, "allocatable": capacity}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    eventually(WAIT, "the dedicated Mac host Ready with its slots", || async {
        let status = nodes.get(name).await.ok()?.status?;
        let ready = status
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let slots_there = status
            .allocatable?
            .get("capturefleet.dev/macos-vm")
            .is_some_and(|q| q.0 == slots.to_string());
        (ready && slots_there).then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up); run by `make test`"]
async fn a_new_device_claims_a_warm_spare_and_the_pool_replenishes() {
    let (client, ns, _op) = setup("fleet-warm").await;
    apply_yaml(&client, &ns.name, &pool_yaml("warm", "  warmSpares: 2")).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let pools: Api<DevicePool> = Api::namespaced(client.clone(), &ns.name);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let devices: Api<CaptureDevice> = Api::namespaced(client.clone(), &ns.name);
    let spares = "capturefleet.dev/pool=warm,capturefleet.dev/role=spare";
    eventually(WAIT, "two warm spares", || async {
        let warm = pools.get("warm").await.ok()?.status?.warm;
        (warm == 2).then_some(())
    })
    .await;
    let before: Vec<(String, String)> = live_pods(&pods, spares)
        .await
        .iter()
        .map(|p| (p.name_any(), p.uid().unwrap()))
        .collect();

    apply_yaml(&client, &ns.name, &device_yaml("new-hire", "warm")).await;
    let pod = eventually(WAIT, "the device to claim a spare", || async {
        device_pod(&pods, "new-hire").await
    })
    .await;
    assert!(
        before.contains(&(pod.name_any(), pod.uid().unwrap())),
        "the device took over a spare Pod (same name and uid: no restart), got {}",
        pod.name_any()
    );
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("CaptureDevice", "new-hire")
    );
    let config = pod.annotations().get("capturefleet.dev/agent-config").unwrap();
    assert!(
        config.contains("userId: new-hire") && config.contains("name: archive"),
        "the agent got its identity and sinks:\n{config}"
    );
    eventually(WAIT, "the volume to follow its Pod to the device", || async {
        let claim = claims.get(&pod.name_any()).await.ok()?;
        let owner = claim.metadata.owner_references?.into_iter().next()?;
        let labelled = claim
            .metadata
            .labels?
            .get("capturefleet.dev/device")
            .map(String::as_str)
            == Some("new-hire");
        (owner.kind == "CaptureDevice" && owner.name == "new-hire" && labelled).then_some(())
    })
    .await;
    eventually(WAIT, "AwaitingEnrollment right away (the spare had booted)", || async {
        (phase(&devices, "new-hire").await? == DevicePhase::AwaitingEnrollment).then_some(())
    })
    .await;

    // The pool replenishes, and `kubectl scale` changes the number of spares.
    eventually(WAIT, "the pool to replenish to two spares", || async {
        (pools.get("warm").await.ok()?.status?.warm == 2 && live_pods(&pods, spares).await.len() == 2).then_some(())
    })
    .await;
    pools
        .patch_scale(
            "warm",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    eventually(WAIT, "three spares after scaling", || async {
        (pools.get("warm").await.ok()?.status?.warm == 3).then_some(())
    })
    .await;
    assert_eq!(pools.get("warm").await.unwrap().spec.warm_spares, Some(3));
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up); run by `make test`"]
async fn capacity_exhaustion_and_the_pool_limit_are_reported() {
    let (client, ns, _op) = setup("fleet-cap").await;
    let host = format!("mac-{}", ns.name);
    dedicated_host(&client, &host, 2).await;
    let extra = format!(
        "  nodeSelector: {{dedicated: {host}}}\n  tolerations: [{{key: dedicated, operator: Equal, value: {host}, effect: NoSchedule}}]\n"
    );
    apply_yaml(&client, &ns.name, &pool_yaml("small", &extra)).await;
    apply_yaml(&client, &ns.name, &pool_yaml("limited", "  maxDevices: 1")).await;
    let devices: Api<CaptureDevice> = Api::namespaced(client.clone(), &ns.name);
    let pools: Api<DevicePool> = Api::namespaced(client.clone(), &ns.name);
    for d in ["cap-a", "cap-b", "cap-c"] {
        apply_yaml(&client, &ns.name, &device_yaml(d, "small")).await;
    }
    // Two macOS VM slots on the one Mac host: a third device cannot be placed.
    let (waiting, message) = eventually(WAIT, "one device Unschedulable for lack of a macOS VM slot", || async {
        let list = devices.list(&ListParams::default()).await.ok()?;
        let unschedulable: Vec<(String, String)> = list
            .items
            .iter()
            .filter_map(|d| {
                let c = d
                    .status
                    .as_ref()?
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Provisioned")?;
                (c.reason == "Unschedulable" && c.message.contains("capturefleet.dev/macos-vm"))
                    .then(|| (d.name_any(), c.message.clone()))
            })
            .collect();
        (unschedulable.len() == 1).then(|| unschedulable[0].clone())
    })
    .await;
    assert!(
        message.contains("capturefleet.dev/macos-vm"),
        "the reason names the exhausted resource: {message}"
    );
    eventually(WAIT, "the pool to count the waiting device", || async {
        let s = pools.get("small").await.ok()?.status?;
        let at_capacity = s
            .conditions
            .iter()
            .any(|c| c.type_ == "AtCapacity" && c.status == "True");
        (s.waiting == 1 && at_capacity).then_some(())
    })
    .await;
    assert_eq!(phase(&devices, &waiting).await, Some(DevicePhase::Provisioning));

    // maxDevices: the second device of a pool limited to one waits with a clear condition.
    apply_yaml(&client, &ns.name, &device_yaml("lim-a", "limited")).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    eventually(WAIT, "the first device's Pod", || async {
        device_pod(&pods, "lim-a").await
    })
    .await;
    apply_yaml(&client, &ns.name, &device_yaml("lim-b", "limited")).await;
    let ready = eventually(WAIT, "PoolAtCapacity", || async {
        let s = devices.get("lim-b").await.ok()?.status?;
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.reason == "PoolAtCapacity")
    })
    .await;
    assert!(ready.message.contains("maxDevices"), "{}", ready.message);
    assert_eq!(phase(&devices, "lim-b").await, Some(DevicePhase::Pending));
    assert!(
        device_pod(&pods, "lim-b").await.is_none(),
        "no Pod beyond the pool limit"
    );
    let _ = Api::<Node>::all(client.clone())
        .delete(&host, &Default::default())
        .await;
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up); run by `make test`"]
async fn a_rolling_update_replaces_agent_first_within_max_unavailable_and_halts_on_a_failing_device() {
    let (client, ns, _op) = setup("fleet-roll").await;
    let extra =
        "  updateStrategy: {type: RollingUpdate, rollingUpdate: {maxUnavailable: 1}}\n  repair: {degradedAfter: 5s}\n";
    apply_yaml(&client, &ns.name, &pool_yaml("roll", extra)).await;
    let names = ["roll-a", "roll-b", "roll-c"];
    for d in names {
        apply_yaml(&client, &ns.name, &device_yaml(d, "roll")).await;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let devices: Api<CaptureDevice> = Api::namespaced(client.clone(), &ns.name);
    let pools: Api<DevicePool> = Api::namespaced(client.clone(), &ns.name);
    let mut original = vec![];
    for d in names {
        original.push(capturing(&pods, &devices, d).await.uid().unwrap());
    }
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns.name);
    let pdb = eventually(WAIT, "the pool's PodDisruptionBudget", || async {
        pdbs.get("roll-devices").await.ok()
    })
    .await;
    let spec = pdb.spec.unwrap();
    assert_eq!(
        spec.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert_eq!(
        spec.selector
            .unwrap()
            .match_labels
            .unwrap()
            .get("capturefleet.dev/pool")
            .map(String::as_str),
        Some("roll")
    );

    // New agent image (no re-enrollment needed): one device at a time.
    let patch = json!({"spec": {"agent": {"image": "example.invalid/capturefleet:2"}}});
    pools
        .patch("roll", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    eventually(WAIT, "the pool to count outdated devices", || async {
        (pools.get("roll").await.ok()?.status?.outdated >= 1).then_some(())
    })
    .await;
    let replaced = eventually(WAIT, "one device Pod replaced", || async {
        for (i, d) in names.iter().enumerate() {
            let p = device_pod(&pods, d).await?;
            if p.uid().unwrap() != original[i] {
                return Some((d.to_string(), p));
            }
        }
        None
    })
    .await;
    let agent = replaced
        .1
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == "agent")
        .unwrap();
    assert_eq!(agent.image.as_deref(), Some("example.invalid/capturefleet:2"));
    // The replaced device never signs in again (a bad image): the rollout halts, and no other
    // device is replaced meanwhile.
    let halted = eventually(WAIT, "RolloutHalted", || async {
        let s = pools.get("roll").await.ok()?.status?;
        s.conditions
            .into_iter()
            .find(|c| c.type_ == "RolloutHalted" && c.status == "True")
    })
    .await;
    assert!(halted.message.contains(&replaced.0), "{}", halted.message);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let untouched = names.iter().enumerate().filter(|(_, d)| **d != replaced.0);
    for (i, d) in untouched {
        assert_eq!(
            device_pod(&pods, d).await.unwrap().uid().unwrap(),
            original[i],
            "{d} must not be replaced while the rollout is halted"
        );
    }
    // It recovers: the rollout continues to the end, one at a time.
    sign_in(&pods, &replaced.1.name_any()).await;
    eventually(
        Duration::from_secs(240),
        "every device on the new image and capturing",
        || async {
            let mut done = 0;
            for d in names {
                let p = device_pod(&pods, d).await?;
                let image = p
                    .spec
                    .as_ref()?
                    .containers
                    .iter()
                    .find(|c| c.name == "agent")?
                    .image
                    .clone()?;
                if image.ends_with(":2") {
                    if p.annotations().get("sim.capturefleet.dev/enrolled").is_none()
                        && p.status.as_ref()?.phase.as_deref() == Some("Running")
                    {
                        sign_in(&pods, &p.name_any()).await;
                    }
                    if phase(&devices, d).await == Some(DevicePhase::Capturing) {
                        done += 1;
                    }
                }
            }
            (done == names.len()).then_some(())
        },
    )
    .await;
    // The pool's status follows its devices' (a reconcile later).
    eventually(
        WAIT,
        "the pool to report no outdated device and the rollout resumed",
        || async {
            let s = pools.get("roll").await.ok()?.status?;
            let resumed = s
                .conditions
                .iter()
                .any(|c| c.type_ == "RolloutHalted" && c.status == "False");
            (s.outdated == 0 && resumed).then_some(())
        },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up); run by `make test`"]
async fn a_failing_device_is_recreated_with_backoff_then_marked_failed() {
    let (client, ns, _op) = setup("fleet-repair").await;
    apply_yaml(
        &client,
        &ns.name,
        &pool_yaml("fragile", "  repair: {maxConsecutiveFailures: 2}\n"),
    )
    .await;
    apply_yaml(&client, &ns.name, &device_yaml("crashy", "fragile")).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let devices: Api<CaptureDevice> = Api::namespaced(client.clone(), &ns.name);
    let fail = |name: String| {
        let pods = pods.clone();
        async move {
            let status = json!({"status": {"phase": "Failed", "reason": "Error", "containerStatuses": [
                {"name": "device", "ready": false, "restartCount": 0, "image": "x", "imageID": "", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}},
                {"name": "agent", "ready": false, "restartCount": 0, "image": "x", "imageID": "", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}
            ]}});
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                .await
                .unwrap();
        }
    };
    let first = eventually(WAIT, "the device Pod", || async {
        let p = device_pod(&pods, "crashy").await?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    fail(first.name_any()).await;
    let failures = eventually(WAIT, "one failure counted", || async {
        let f = devices.get("crashy").await.ok()?.status?.failures?;
        (f.consecutive == 1).then_some(f)
    })
    .await;
    assert!(failures.retry_after.is_some() && failures.last_reason.is_some());
    let second = eventually(WAIT, "a new Pod after the backoff", || async {
        let p = device_pod(&pods, "crashy").await?;
        (p.uid() != first.uid() && p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    let created = second.metadata.creation_timestamp.clone().unwrap().0;
    let retry: k8s_openapi::jiff::Timestamp = failures.retry_after.unwrap().parse().unwrap();
    // creationTimestamp has whole seconds: compare at that precision.
    assert!(
        created.as_second() >= retry.as_second(),
        "recreated at {created}, before the backoff ended at {retry}"
    );
    fail(second.name_any()).await;
    eventually(WAIT, "Failed after two consecutive failures", || async {
        (phase(&devices, "crashy").await? == DevicePhase::Failed).then_some(())
    })
    .await;
    let ready = devices
        .get("crashy")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "RepeatedFailures");
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert!(
        device_pod(&pods, "crashy").await.is_none(),
        "a Failed device is not recreated forever"
    );
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up); run by `make test`"]
async fn the_operator_keeps_up_after_more_watch_events_than_its_buffers_hold() {
    // Every cache is fed through a shared reflector whose subscribers each buffer 4,096 events;
    // a subscriber nobody reads would stall every cache once its buffer is full. 5,000 Pod
    // changes, then a sign-in: the operator must still see it.
    use futures::StreamExt;
    let (client, ns, _op) = setup("fleet-flood").await;
    apply_yaml(&client, &ns.name, &pool_yaml("flood", "")).await;
    apply_yaml(&client, &ns.name, &device_yaml("flood-a", "flood")).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let devices: Api<CaptureDevice> = Api::namespaced(client.clone(), &ns.name);
    let pod = eventually(WAIT, "a running device Pod", || async {
        let p = device_pod(&pods, "flood-a").await?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    let name = pod.name_any();
    let failed = futures::stream::iter(0..5_000)
        .map(|i| {
            let (pods, name) = (pods.clone(), name.clone());
            async move {
                let patch = json!({"metadata": {"annotations": {"test.capturefleet.dev/churn": i.to_string()}}});
                pods.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .is_err()
            }
        })
        .buffer_unordered(16)
        .filter(|failed| futures::future::ready(*failed))
        .count()
        .await;
    assert_eq!(failed, 0, "Pod patches refused");
    sign_in(&pods, &name).await;
    eventually(WAIT, "Capturing after the churn", || async {
        (phase(&devices, "flood-a").await? == DevicePhase::Capturing).then_some(())
    })
    .await;
}
