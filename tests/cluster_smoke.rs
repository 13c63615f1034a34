//! Smoke test of the test control plane itself (tests/cluster/up): the real scheduler places
//! pods on kwok's fake Mac hosts by the `capturefleet.dev/macos-vm` extended resource and
//! enforces two VMs per Mac; kwok runs the pods; the external provisioner binds claims; the
//! garbage collector removes children of a deleted owner.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use support::{TestNamespace, client, eventually};

const WAIT: Duration = Duration::from_secs(60);

fn vm_pod_template(node_selector: serde_json::Value, tolerate: bool) -> serde_json::Value {
    json!({
        "spec": {
            "nodeSelector": node_selector,
            "tolerations": if tolerate { json!([{"key": "capturefleet.dev/smoke", "operator": "Exists", "effect": "NoSchedule"}]) } else { json!([]) },
            "containers": [{
                "name": "vm",
                "image": "example.invalid/macos:15",
                "resources": {"requests": {"capturefleet.dev/macos-vm": "1"}, "limits": {"capturefleet.dev/macos-vm": "1"}}
            }]
        }
    })
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up); run by `make test`"]
async fn deployment_pods_run_on_mac_hosts_and_are_garbage_collected() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "smoke").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let nodes: Api<Node> = Api::all(client.clone());

    let mut template = vm_pod_template(json!({"capturefleet.dev/mac-host": "true"}), false);
    template["metadata"] = json!({"labels": {"app": "vm"}});
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "vms"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "vm"}}, "template": template}
    }))
    .unwrap();
    deployments.create(&PostParams::default(), &deployment).await.unwrap();

    let running = eventually(WAIT, "two Running pods on Mac hosts", || async {
        let list = pods.list(&ListParams::default().labels("app=vm")).await.ok()?;
        let running: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        (running.len() == 2).then_some(running)
    })
    .await;
    for pod in &running {
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .expect("scheduled pod has a node");
        let node = nodes.get(&node_name).await.unwrap();
        assert_eq!(
            node.labels().get("capturefleet.dev/mac-host").map(String::as_str),
            Some("true"),
            "pod {} on a non-Mac node",
            pod.name_any()
        );
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        assert_eq!(ready.as_deref(), Some("True"), "kwok marks ordinary pods Ready");
    }

    // Deleting the owner lets the garbage collector remove the ReplicaSet and its pods.
    deployments.delete("vms", &DeleteParams::background()).await.unwrap();
    eventually(WAIT, "garbage collection of the deployment's pods", || async {
        let list = pods.list(&ListParams::default().labels("app=vm")).await.ok()?;
        list.items.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up); run by `make test`"]
async fn claims_bind_through_the_external_provisioner() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "smoke-pvc").await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns.name);
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "device-state"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    }))
    .unwrap();
    claims.create(&PostParams::default(), &claim).await.unwrap();
    let bound = eventually(WAIT, "the claim to be Bound", || async {
        let c = claims.get("device-state").await.ok()?;
        (c.status.as_ref()?.phase.as_deref() == Some("Bound")).then_some(c)
    })
    .await;
    let spec = bound.spec.unwrap();
    assert_eq!(
        spec.storage_class_name.as_deref(),
        Some("standard"),
        "the default StorageClass was applied"
    );
    assert!(
        spec.volume_name.is_some_and(|v| v.starts_with("pvc-")),
        "a PersistentVolume was provisioned"
    );
}

#[tokio::test]
#[ignore = "needs the test cluster (tests/cluster/up); run by `make test`"]
async fn the_scheduler_allows_two_macos_vms_per_mac_host() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "smoke-cap").await;
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    // A dedicated one-node, two-slot Mac host, tainted so only this test's pods land on it.
    let host = format!("mac-host-{}", ns.name);
    let node: Node = serde_json::from_value(json!({
        "metadata": {
            "name": host,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"kubernetes.io/hostname": host, "capturefleet.dev/mac-host": "true", "type": "kwok"}
        },
        "spec": {"taints": [{"key": "capturefleet.dev/smoke", "value": "true", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "10", "memory": "32Gi", "pods": "110", "capturefleet.dev/macos-vm": "2"},
            "capacity": {"cpu": "10", "memory": "32Gi", "pods": "110", "capturefleet.dev/macos-vm": "2"}
        }
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    // Node status from a create is dropped by the API server; set it through the subresource.
    nodes
        .patch_status(
            &host,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": node.status})),
        )
        .await
        .unwrap();
    eventually(WAIT, "the dedicated Mac host to be Ready", || async {
        let n = nodes.get(&host).await.ok()?;
        let ready = n
            .status?
            .conditions?
            .into_iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(())
    })
    .await;

    for i in 0..3 {
        let mut pod = vm_pod_template(json!({"kubernetes.io/hostname": host}), true);
        pod["metadata"] = json!({"name": format!("vm-{i}")});
        let pod: Pod = serde_json::from_value(pod).unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        // Create them one after another so the first two take the two slots.
        if i < 2 {
            eventually(WAIT, "pod to be scheduled", || async {
                let p = pods.get(&format!("vm-{i}")).await.ok()?;
                p.spec?.node_name.map(|_| ())
            })
            .await;
        }
    }

    let reason = eventually(WAIT, "the third pod to be marked unschedulable", || async {
        let p = pods.get("vm-2").await.ok()?;
        let cond = p.status?.conditions?.into_iter().find(|c| c.type_ == "PodScheduled")?;
        (cond.status == "False").then(|| {
            format!(
                "{}: {}",
                cond.reason.unwrap_or_default(),
                cond.message.unwrap_or_default()
            )
        })
    })
    .await;
    assert!(reason.starts_with("Unschedulable"), "unexpected reason {reason}");
    assert!(
        reason.contains("capturefleet.dev/macos-vm"),
        "the scheduler names the exhausted resource: {reason}"
    );
    // Still pending a moment later, and never placed on the full host.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let third = pods.get("vm-2").await.unwrap();
    assert!(
        third.spec.and_then(|s| s.node_name).is_none(),
        "a third macOS VM must not be placed on a two-slot host"
    );
    for i in 0..2 {
        let p = pods.get(&format!("vm-{i}")).await.unwrap();
        assert_eq!(p.spec.and_then(|s| s.node_name).as_deref(), Some(host.as_str()));
    }

    // Freeing a slot lets the waiting pod in.
    pods.delete("vm-0", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually(WAIT, "the third pod to take the freed slot", || async {
        let p = pods.get("vm-2").await.ok()?;
        (p.spec?.node_name.as_deref() == Some(host.as_str())).then_some(())
    })
    .await;
    nodes.delete(&host, &DeleteParams::default()).await.unwrap();
}
