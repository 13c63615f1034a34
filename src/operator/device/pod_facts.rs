//! What the operator reads from a device Pod's status: the kubelet's report of the runtime's
//! probes (booted = started, signed in = ready), the agent's readiness (capturing and every
//! sink reachable) and the agent's drain receipt (its termination message). This is the whole
//! channel between the device and the operator: the agent has no API access.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::build::{AGENT_CONTAINER, RUNTIME_CONTAINER};
use crate::api::agent::DrainReceipt;
use crate::operator::labels::{AGENT_REVISION, RUNTIME_REVISION};

/// Facts about one device Pod.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PodFacts {
    /// Pod name.
    pub name: String,
    /// The node it is bound to.
    pub node: Option<String>,
    /// Being deleted.
    pub terminating: bool,
    /// `spec.activeDeadlineSeconds` is set (the operator asked the Pod to stop and drain).
    pub drain_requested: bool,
    /// Pod phase `Failed` or `Succeeded`: every container has stopped for good.
    pub finished: bool,
    /// The scheduler could not place it: the scheduler's message.
    pub unschedulable: Option<String>,
    /// The device runtime has booted (startup probe passed).
    pub runtime_started: bool,
    /// The employee is signed in and Messages is syncing (runtime readiness).
    pub runtime_ready: bool,
    /// The agent is running.
    pub agent_running: bool,
    /// The agent is capturing and every sink is reachable (agent readiness).
    pub agent_ready: bool,
    /// Since when the Pod's `Ready` condition has been `False` (for hysteresis).
    pub not_ready_since: Option<Timestamp>,
    /// The agent container terminated; its termination message, if any.
    pub agent_termination_message: Option<String>,
    /// Restarts of the runtime and agent containers.
    pub restarts: i32,
    /// A container is waiting in a crash loop or cannot pull its image: the reason.
    pub waiting_problem: Option<String>,
    /// Runtime revision the Pod was built from.
    pub runtime_revision: Option<String>,
    /// Agent revision the Pod was built from.
    pub agent_revision: Option<String>,
    /// The runtime image.
    pub runtime_image: Option<String>,
    /// The agent image.
    pub agent_image: Option<String>,
    /// When the Pod was created.
    pub created: Option<Timestamp>,
}

impl PodFacts {
    /// The drain receipt, if the agent terminated with one.
    pub fn receipt(&self) -> Option<DrainReceipt> {
        self.agent_termination_message.as_deref().and_then(DrainReceipt::parse)
    }
}

fn container<'a>(statuses: Option<&'a Vec<ContainerStatus>>, name: &str) -> Option<&'a ContainerStatus> {
    statuses.and_then(|s| s.iter().find(|c| c.name == name))
}

/// The scheduler's message says only that the Pod's volume claim is not bound yet.
fn waiting_for_volume_only(message: &str) -> bool {
    message.contains("unbound immediate PersistentVolumeClaims") && !message.contains("Insufficient")
}

/// Read the facts from a Pod.
pub fn read(pod: &Pod) -> PodFacts {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let conditions = status.and_then(|s| s.conditions.as_ref());
    let cond = |t: &str| conditions.and_then(|c| c.iter().find(|c| c.type_ == t));
    let statuses = status.and_then(|s| s.container_statuses.as_ref());
    let runtime = container(statuses, RUNTIME_CONTAINER);
    let agent = container(statuses, AGENT_CONTAINER);
    let started = |c: Option<&ContainerStatus>| {
        c.is_some_and(|c| c.started.unwrap_or(false) || c.state.as_ref().is_some_and(|s| s.running.is_some()))
    };
    // A Pod whose new volume is not bound yet is "unschedulable" to the scheduler, but that is
    // an ordinary provisioning step, not a lack of Mac capacity (it would count as waiting for
    // capacity and cost a status write per device).
    let unschedulable = cond("PodScheduled")
        .filter(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
        .filter(|c| !c.message.as_deref().is_some_and(waiting_for_volume_only))
        .map(|c| {
            c.message
                .clone()
                .unwrap_or_else(|| "no Mac host has a free macOS VM slot".into())
        });
    let not_ready_since = cond("Ready")
        .filter(|c| c.status != "True")
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0);
    let agent_termination_message = agent
        .and_then(|a| a.state.as_ref())
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.message.clone().unwrap_or_default());
    let waiting_problem = statuses.into_iter().flatten().find_map(|c| {
        let reason = c.state.as_ref()?.waiting.as_ref()?.reason.clone()?;
        matches!(
            reason.as_str(),
            "CrashLoopBackOff"
                | "ImagePullBackOff"
                | "ErrImagePull"
                | "CreateContainerConfigError"
                | "InvalidImageName"
        )
        .then(|| format!("container {}: {reason}", c.name))
    });
    let phase = status.and_then(|s| s.phase.as_deref());
    let annotations = pod.annotations();
    let image_of = |name: &str| {
        spec.and_then(|s| s.containers.iter().find(|c| c.name == name))
            .and_then(|c| c.image.clone())
    };
    PodFacts {
        name: pod.name_any(),
        node: spec.and_then(|s| s.node_name.clone()),
        terminating: pod.metadata.deletion_timestamp.is_some(),
        drain_requested: spec.and_then(|s| s.active_deadline_seconds).is_some(),
        finished: matches!(phase, Some("Failed") | Some("Succeeded")),
        unschedulable,
        runtime_started: started(runtime),
        runtime_ready: runtime.is_some_and(|c| c.ready),
        agent_running: agent.is_some_and(|c| c.state.as_ref().is_some_and(|s| s.running.is_some())),
        agent_ready: agent.is_some_and(|c| c.ready),
        not_ready_since,
        agent_termination_message,
        restarts: [runtime, agent].into_iter().flatten().map(|c| c.restart_count).sum(),
        waiting_problem,
        runtime_revision: annotations.get(RUNTIME_REVISION).cloned(),
        agent_revision: annotations.get(AGENT_REVISION).cloned(),
        runtime_image: image_of(RUNTIME_CONTAINER),
        agent_image: image_of(AGENT_CONTAINER),
        created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn booted_not_signed_in() {
        let f = read(&pod(r#"
metadata: {name: cdev-jane}
spec:
  nodeName: mac-host-1
  containers: [{name: device, image: rt:1}, {name: agent, image: agent:1}]
status:
  phase: Running
  conditions:
  - {type: Ready, status: "False", lastTransitionTime: "2026-01-01T00:00:00Z"}
  containerStatuses:
  - {name: device, ready: false, started: true, restartCount: 0, image: rt:1, imageID: "", state: {running: {}}}
  - {name: agent, ready: false, started: true, restartCount: 1, image: agent:1, imageID: "", state: {running: {}}}
"#));
        assert!(f.runtime_started && !f.runtime_ready && f.agent_running && !f.agent_ready);
        assert_eq!(f.node.as_deref(), Some("mac-host-1"));
        assert_eq!(f.not_ready_since, Some("2026-01-01T00:00:00Z".parse().unwrap()));
        assert_eq!(f.restarts, 1);
        assert_eq!(f.runtime_image.as_deref(), Some("rt:1"));
    }

    #[test]
    fn unschedulable_and_crash_looping() {
        let f = read(&pod(r#"
metadata: {name: cdev-jane}
spec: {containers: [{name: device}, {name: agent}]}
status:
  phase: Pending
  conditions:
  - {type: PodScheduled, status: "False", reason: Unschedulable, message: "0/4 nodes are available: 4 Insufficient capturefleet.dev/macos-vm."}
"#));
        assert!(
            f.unschedulable
                .as_deref()
                .unwrap()
                .contains("Insufficient capturefleet.dev/macos-vm")
        );
        // A volume not bound yet is a provisioning step, not a lack of capacity.
        let waiting_for_volume = |message: &str| {
            read(&pod(&format!(
                "metadata: {{name: cdev-jane}}\nspec: {{containers: [{{name: device}}]}}\nstatus:\n  phase: Pending\n  conditions:\n  - {{type: PodScheduled, status: \"False\", reason: Unschedulable, message: \"{message}\"}}\n"
            )))
            .unschedulable
        };
        assert_eq!(
            waiting_for_volume(
                "0/545 nodes are available: pod has unbound immediate PersistentVolumeClaims. not found"
            ),
            None
        );
        assert!(
            waiting_for_volume(
                "0/5 nodes are available: 1 pod has unbound immediate PersistentVolumeClaims, 4 Insufficient capturefleet.dev/macos-vm."
            )
            .is_some()
        );
        let f = read(&pod(r#"
metadata: {name: cdev-jane}
spec: {containers: [{name: device}, {name: agent}]}
status:
  phase: Running
  containerStatuses:
  - {name: agent, ready: false, restartCount: 7, image: a, imageID: "", state: {waiting: {reason: CrashLoopBackOff}}}
"#));
        assert_eq!(f.waiting_problem.as_deref(), Some("container agent: CrashLoopBackOff"));
    }

    #[test]
    fn reads_the_drain_receipt_from_the_termination_message() {
        let f = read(&pod(r#"
metadata: {name: cdev-jane}
spec: {activeDeadlineSeconds: 100, containers: [{name: device}, {name: agent}]}
status:
  phase: Failed
  containerStatuses:
  - name: agent
    ready: false
    restartCount: 0
    image: a
    imageID: ""
    state:
      terminated:
        exitCode: 0
        message: '{"schema":"capturefleet.dev/drain-receipt/v1","recordsCaptured":12,"lastSequence":12,"chainHead":"ab","pending":{},"pendingTotal":0,"complete":true,"finishedAt":"2026-01-01T00:00:00Z"}'
"#));
        assert!(f.finished && f.drain_requested);
        let receipt = f.receipt().unwrap();
        assert!(receipt.complete);
        assert_eq!(receipt.records_captured, 12);
    }
}
