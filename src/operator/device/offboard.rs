//! Draining a device before it stops (deleted, or halted): the agent is asked to stop, delivers
//! what it has spooled, and writes a drain receipt to its termination message, which the
//! kubelet copies into the Pod status. The receipt decides: nothing pending → the device may go
//! (the volume follows the offboarding policy); anything pending → the volume is kept, the
//! device reports `DrainIncomplete`, and the drain is retried.
//!
//! The agent is asked to stop by setting the Pod's `activeDeadlineSeconds` rather than by
//! deleting it: the kubelet then sends SIGTERM with the Pod's long grace period, and the Pod
//! object stays (phase Failed) with the receipt in its status until the operator has read it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::pod_facts::PodFacts;
use super::status::DrainView;
use crate::api::agent::DrainReceipt;
use crate::api::capture_device::{CaptureDeviceStatus, DevicePhase};

/// How long after an incomplete drain the operator tries again.
pub const RETRY_AFTER: Duration = Duration::from_secs(300);

/// What the operator should do next for a drain.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Ask this running Pod to stop: set `activeDeadlineSeconds` to this value.
    RequestStop {
        /// The Pod.
        pod: String,
        /// Seconds since the Pod started, plus one: the kubelet stops it at once.
        active_deadline_seconds: i64,
    },
    /// Delete these Pods (never started, or finished and read; or an old try being retried).
    DeletePods(Vec<String>),
    /// Start a drain-only Pod (just the agent on the device volume).
    CreateDrainPod,
    /// Nothing to do until the Pod changes.
    Wait,
    /// The drain is over.
    Finished,
}

/// The next step, and what to report.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// What to do.
    pub step: Step,
    /// What to report.
    pub view: DrainView,
}

fn incomplete_reason(r: &DrainReceipt) -> String {
    let sinks: Vec<String> = r
        .pending
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(s, n)| format!("{n} for {s}"))
        .collect();
    format!(
        "{} record(s) still pending ({}); the volume is kept and the drain is retried every {} minutes — check the sinks' health",
        r.pending_total,
        if sinks.is_empty() {
            "no per-sink detail".into()
        } else {
            sinks.join(", ")
        },
        RETRY_AFTER.as_secs() / 60
    )
}

/// Decide the next drain step from the device's Pods (assigned and drain-only, with their
/// facts) and what was stored before.
///
/// `volume_exists`: the device has a volume, so its spool may hold undelivered records.
pub fn plan(pods: &[(&Pod, PodFacts)], previous: &CaptureDeviceStatus, volume_exists: bool, now: Timestamp) -> Plan {
    // 1. A Pod whose agent has stopped for good: its receipt decides. Only a Pod that finished
    //    (drain Pods; Pods the kubelet stopped at their deadline) or that we asked to stop
    //    counts: an agent that exited to reload its configuration is restarted by the kubelet,
    //    and its receipt says nothing about the device's end.
    let stopped = |f: &PodFacts| f.finished || (f.drain_requested && f.agent_termination_message.is_some());
    if let Some((_, facts)) = pods.iter().find(|(_, f)| stopped(f)) {
        let finished: Vec<String> = pods
            .iter()
            .filter(|(_, f)| stopped(f))
            .map(|(_, f)| f.name.clone())
            .collect();
        return match facts.receipt() {
            Some(r) if r.complete && r.pending_total == 0 => {
                let all = pods.iter().map(|(_, f)| f.name.clone()).collect();
                Plan {
                    step: Step::DeletePods(all),
                    view: DrainView::Complete(r),
                }
            }
            receipt => {
                let reason = receipt.as_ref().map(incomplete_reason).unwrap_or_else(|| {
                    "the agent stopped without a drain receipt (it crashed or was killed before finishing); the volume is kept and the drain is retried".into()
                });
                // Retry once the incomplete drain has been reported for RETRY_AFTER (the
                // stored condition is the clock: the receipt's own time may be skewed).
                let reported_since = previous
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Ready" && c.reason == "DrainIncomplete")
                    .map(|c| c.last_transition_time.0);
                let due =
                    reported_since.is_some_and(|t| now.duration_since(t) >= RETRY_AFTER.try_into().unwrap_or_default());
                let step = if due { Step::DeletePods(finished) } else { Step::Wait };
                Plan {
                    step,
                    view: DrainView::Incomplete { receipt, reason },
                }
            }
        };
    }
    let retrying = |view: DrainView| match (&view, previous_incomplete(previous)) {
        (DrainView::InProgress, Some(reason)) => DrainView::Incomplete { receipt: None, reason },
        _ => view,
    };
    // 2. A running agent: ask it to stop (once), then wait for its receipt.
    if let Some((pod, facts)) = pods.iter().find(|(_, f)| f.agent_running && !f.terminating) {
        if facts.drain_requested {
            return Plan {
                step: Step::Wait,
                view: retrying(DrainView::InProgress),
            };
        }
        let started = pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0)
            .or(facts.created);
        let elapsed = started.map(|t| now.duration_since(t).as_secs()).unwrap_or(0).max(0);
        return Plan {
            step: Step::RequestStop {
                pod: facts.name.clone(),
                active_deadline_seconds: elapsed + 1,
            },
            view: retrying(DrainView::InProgress),
        };
    }
    // 3. Pods whose agent never ran (pending, unschedulable, booting): remove them; a drain
    //    Pod follows if the volume may hold anything.
    if !pods.is_empty() {
        let pending: Vec<String> = pods
            .iter()
            .filter(|(_, f)| !f.terminating)
            .map(|(_, f)| f.name.clone())
            .collect();
        let step = if pending.is_empty() {
            Step::Wait
        } else {
            Step::DeletePods(pending)
        };
        return Plan {
            step,
            view: retrying(DrainView::InProgress),
        };
    }
    // 4. No Pod at all.
    let last_complete = previous.last_drain_receipt.as_ref().filter(|r| r.complete);
    let nothing_since_last_drain = last_complete.is_some() && previous.phase == Some(DevicePhase::Halted);
    let never_ran = !volume_exists || matches!(previous.phase, None | Some(DevicePhase::Pending));
    if never_ran || nothing_since_last_drain {
        let receipt = last_complete
            .map(|r| DrainReceipt {
                schema: crate::api::agent::DRAIN_RECEIPT_SCHEMA.into(),
                records_captured: r.records_captured.max(0) as u64,
                last_sequence: r.last_sequence.max(0) as u64,
                chain_head: r.chain_head.clone(),
                pending: Default::default(),
                pending_total: 0,
                complete: true,
                finished_at: r.finished_at.clone(),
            })
            .unwrap_or_else(|| DrainReceipt {
                schema: crate::api::agent::DRAIN_RECEIPT_SCHEMA.into(),
                complete: true,
                finished_at: now.to_string(),
                ..Default::default()
            });
        return Plan {
            step: Step::Finished,
            view: DrainView::Complete(receipt),
        };
    }
    Plan {
        step: Step::CreateDrainPod,
        view: retrying(DrainView::InProgress),
    }
}

fn previous_incomplete(previous: &CaptureDeviceStatus) -> Option<String> {
    previous
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.reason == "DrainIncomplete")
        .map(|c| c.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::device::pod_facts;

    fn pod(yaml: &str) -> (Pod, PodFacts) {
        let pod: Pod = serde_yaml::from_str(yaml).unwrap();
        let facts = pod_facts::read(&pod);
        (pod, facts)
    }

    fn now() -> Timestamp {
        "2026-01-01T01:00:00Z".parse().unwrap()
    }

    const RUNNING: &str = r#"
metadata: {name: cdev-jane, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {containers: [{name: device}, {name: agent}]}
status:
  phase: Running
  startTime: "2026-01-01T00:00:00Z"
  containerStatuses:
  - {name: agent, ready: true, restartCount: 0, image: a, imageID: "", state: {running: {}}}
"#;

    #[test]
    fn asks_a_running_agent_to_stop_then_waits() {
        let (p, f) = pod(RUNNING);
        let plan = super::plan(&[(&p, f)], &Default::default(), true, now());
        assert_eq!(
            plan.step,
            Step::RequestStop {
                pod: "cdev-jane".into(),
                active_deadline_seconds: 3601
            }
        );
        assert_eq!(plan.view, DrainView::InProgress);
        let (p, f) = pod(&RUNNING.replace("spec: {", "spec: {activeDeadlineSeconds: 3601, "));
        assert_eq!(
            super::plan(&[(&p, f)], &Default::default(), true, now()).step,
            Step::Wait
        );
    }

    #[test]
    fn the_receipt_decides() {
        let finished = |message: &str| {
            pod(&format!(
                r#"
metadata: {{name: cdev-jane}}
spec: {{activeDeadlineSeconds: 10, containers: [{{name: device}}, {{name: agent}}]}}
status:
  phase: Failed
  containerStatuses:
  - name: agent
    ready: false
    restartCount: 0
    image: a
    imageID: ""
    state: {{terminated: {{exitCode: 0, message: '{message}'}}}}
"#
            ))
        };
        let (p, f) = finished(
            r#"{"schema":"capturefleet.dev/drain-receipt/v1","recordsCaptured":9,"lastSequence":9,"chainHead":"h","pending":{},"pendingTotal":0,"complete":true,"finishedAt":"2026-01-01T00:59:00Z"}"#,
        );
        let plan = super::plan(&[(&p, f)], &Default::default(), true, now());
        assert_eq!(plan.step, Step::DeletePods(vec!["cdev-jane".into()]));
        assert!(matches!(plan.view, DrainView::Complete(ref r) if r.records_captured == 9));

        let (p, f) = finished(
            r#"{"schema":"capturefleet.dev/drain-receipt/v1","recordsCaptured":9,"lastSequence":9,"chainHead":"h","pending":{"s3-worm":4},"pendingTotal":4,"complete":false,"finishedAt":"2026-01-01T00:59:00Z"}"#,
        );
        let plan = super::plan(&[(&p, f.clone())], &Default::default(), true, now());
        assert_eq!(
            plan.step,
            Step::Wait,
            "a fresh incomplete receipt is kept for people to read"
        );
        let DrainView::Incomplete { reason, .. } = plan.view else {
            panic!("incomplete expected")
        };
        assert!(reason.contains("4 for s3-worm"), "{reason}");
        // Reported as incomplete for longer than RETRY_AFTER: retry (remove the stopped Pod;
        // a drain Pod follows).
        let reported = CaptureDeviceStatus {
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "DrainIncomplete".into(),
                message: reason,
                observed_generation: None,
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    "2026-01-01T00:50:00Z".parse().unwrap(),
                ),
            }],
            ..Default::default()
        };
        assert_eq!(
            super::plan(&[(&p, f)], &reported, true, now()).step,
            Step::DeletePods(vec!["cdev-jane".into()])
        );

        let (p, f) = finished("panic: out of memory");
        let plan = super::plan(&[(&p, f)], &Default::default(), true, now());
        assert!(matches!(plan.view, DrainView::Incomplete { receipt: None, .. }));
    }

    #[test]
    fn a_receipt_from_a_reload_restart_does_not_end_the_device() {
        // The agent exited 0 to reload its configuration (no stop was requested) and the
        // kubelet shows its termination until it restarts: not a drain.
        let (p, f) = pod(r#"
metadata: {name: cdev-jane, creationTimestamp: "2026-01-01T00:00:00Z"}
spec: {containers: [{name: device}, {name: agent}]}
status:
  phase: Running
  startTime: "2026-01-01T00:00:00Z"
  containerStatuses:
  - name: agent
    ready: false
    restartCount: 1
    image: a
    imageID: ""
    state:
      terminated:
        exitCode: 0
        message: '{"schema":"capturefleet.dev/drain-receipt/v1","recordsCaptured":9,"lastSequence":9,"chainHead":"h","pending":{},"pendingTotal":0,"complete":true,"finishedAt":"2026-01-01T00:59:00Z"}'
"#);
        let plan = super::plan(&[(&p, f)], &Default::default(), true, now());
        assert!(
            !matches!(plan.view, DrainView::Complete(_)),
            "a reload receipt must not finish offboarding: {plan:?}"
        );
    }

    #[test]
    fn without_pods_a_drain_pod_runs_unless_nothing_was_ever_captured() {
        let previous = CaptureDeviceStatus {
            phase: Some(DevicePhase::Capturing),
            ..Default::default()
        };
        assert_eq!(plan(&[], &previous, true, now()).step, Step::CreateDrainPod);
        let never = CaptureDeviceStatus {
            phase: Some(DevicePhase::Pending),
            ..Default::default()
        };
        assert_eq!(plan(&[], &never, true, now()).step, Step::Finished);
        assert_eq!(
            plan(&[], &previous, false, now()).step,
            Step::Finished,
            "no volume, nothing spooled"
        );
    }
}
