//! A CaptureDevice's status as a pure function of what the operator observed (the device, its
//! pool and sinks, and its Pod's status as the kubelet reported it). Recomputing from the same
//! observation yields the same status, so an idle fleet causes no writes; time enters only
//! through the hysteresis deadline, reported back as when to look again.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::pod_facts::PodFacts;
use super::settings::{DeviceSettings, PoolSettings};
use crate::api::agent::DrainReceipt;
use crate::api::capture_device::{
    CaptureDeviceStatus, DeviceRuntimeStatus, DrainReceiptStatus, EnrollmentStatus, FailureStatus, RunStrategy,
};
use crate::api::{CaptureDevice, DevicePhase, DevicePool};
use crate::operator::conditions::{self, Desired};
use crate::operator::labels::ACKNOWLEDGE_HOST_LOSS;

/// Condition types of a CaptureDevice.
pub mod types {
    /// Capturing into every sink.
    pub const READY: &str = "Ready";
    /// Pod and volume exist and the Pod is placed on a Mac host.
    pub const PROVISIONED: &str = "Provisioned";
    /// The employee is signed in.
    pub const ENROLLED: &str = "Enrolled";
    /// The agent is capturing.
    pub const CAPTURING: &str = "Capturing";
    /// Every sink is reachable.
    pub const SINKS_HEALTHY: &str = "SinksHealthy";
}

/// Where a drain stands (while the device is deleted or halted).
#[derive(Clone, Debug, PartialEq)]
pub enum DrainView {
    /// The agent has been asked to stop and deliver.
    InProgress,
    /// The agent stopped with records pending (or without a receipt).
    Incomplete {
        /// Its receipt, if it wrote one.
        receipt: Option<DrainReceipt>,
        /// Why the drain is incomplete.
        reason: String,
    },
    /// Everything was delivered.
    Complete(DrainReceipt),
}

/// Everything the status is computed from.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// The device.
    pub device: &'a CaptureDevice,
    /// Its resolved settings.
    pub settings: &'a DeviceSettings,
    /// Its pool, when it exists.
    pub pool: Option<&'a DevicePool>,
    /// The pool's resolved settings.
    pub pool_settings: Option<&'a PoolSettings>,
    /// Sinks named in `sinkRefs` that do not exist.
    pub missing_sinks: Vec<String>,
    /// The device's Pod (not a drain Pod).
    pub pod: Option<&'a PodFacts>,
    /// The device's volume claim exists.
    pub claim: Option<String>,
    /// `Some(false)` when the Mac host the device is pinned to no longer exists.
    pub pinned_host_present: Option<bool>,
    /// The pool is at `maxDevices` and this device has no Pod yet.
    pub waiting_for_capacity: bool,
    /// Drain state, while deleting or halting.
    pub drain: Option<DrainView>,
    /// The pool's current revisions (runtime, agent), to report outdated Pods.
    pub current_revisions: Option<(String, String)>,
    /// Now.
    pub now: Timestamp,
}

/// The computed status, and when to look again (hysteresis deadlines).
#[derive(Clone, Debug, PartialEq)]
pub struct Computed {
    /// The status to store.
    pub status: CaptureDeviceStatus,
    /// The phase (also in `status.phase`).
    pub phase: DevicePhase,
    /// Re-evaluate after this long even if nothing changes.
    pub recheck_after: Option<Duration>,
}

/// One message for the ordinary steps of provisioning (creating, scheduling, booting), so that
/// they do not each cost a status write; problems (unschedulable, crash loops) get their own.
const PROVISIONING_MESSAGE: &str = "creating, placing and booting the device";

fn since(now: Timestamp, then: Option<Timestamp>) -> Duration {
    then.and_then(|t| now.duration_since(t).try_into().ok())
        .unwrap_or(Duration::ZERO)
}

fn render_url(template: &str, device: &CaptureDevice, host: Option<&str>) -> String {
    template
        .replace("{namespace}", &device.namespace().unwrap_or_default())
        .replace("{device}", &device.name_any())
        .replace("{user}", &device.spec.user.id)
        .replace("{host}", host.unwrap_or(""))
}

fn receipt_status(r: &DrainReceipt) -> DrainReceiptStatus {
    DrainReceiptStatus {
        records_captured: r.records_captured as i64,
        last_sequence: r.last_sequence as i64,
        chain_head: r.chain_head.clone(),
        pending_total: r.pending_total as i64,
        complete: r.complete,
        finished_at: r.finished_at.clone(),
    }
}

/// Compute the status.
pub fn compute(o: &Observed<'_>) -> Computed {
    use types::*;
    let previous = o.device.status.clone().unwrap_or_default();
    let generation = o.device.metadata.generation;
    let deleting = o.device.metadata.deletion_timestamp.is_some();
    let halted = o.settings.run_strategy == RunStrategy::Halted;
    let pod = o.pod;
    let degraded_after = o
        .pool_settings
        .map(|p| p.degraded_after)
        .unwrap_or(super::settings::DEFAULT_DEGRADED_AFTER);
    let max_failures = o
        .pool_settings
        .map(|p| p.max_failures)
        .unwrap_or(super::settings::DEFAULT_MAX_FAILURES);
    let mut recheck_after = None;

    // --- enrollment (sticky host) ---
    let mut enrollment = previous.enrollment.clone().unwrap_or_default();
    let acknowledged_loss = o.pinned_host_present == Some(false)
        && enrollment.host.is_some()
        && o.device.annotations().get(ACKNOWLEDGE_HOST_LOSS) == enrollment.host.as_ref();
    if acknowledged_loss {
        enrollment.host = None;
        enrollment.enrolled_at = None;
    }
    if let Some(p) = pod
        && p.runtime_ready
        && enrollment.host.is_none()
    {
        enrollment.host = p.node.clone();
        enrollment.enrolled_at = Some(o.now.to_string());
    }
    let enrolled_before = enrollment.host.is_some();
    let template = o
        .pool
        .and_then(|p| p.spec.enrollment.as_ref())
        .map(|e| e.url_template.as_str());
    enrollment.url = template.map(|t| render_url(t, o.device, pod.and_then(|p| p.node.as_deref())));
    let host_lost = o.pinned_host_present == Some(false) && enrolled_before;

    // --- failures ---
    let failures = previous.failures.clone();
    let failed = failures.as_ref().is_some_and(|f| f.consecutive >= max_failures);

    // --- phase, by precedence ---
    let runtime_ready = pod.is_some_and(|p| p.runtime_ready);
    let agent_ready = pod.is_some_and(|p| p.agent_ready);
    let not_ready_for = since(o.now, pod.and_then(|p| p.not_ready_since));
    let within_hysteresis =
        |problem: bool| problem && previous.phase == Some(DevicePhase::Capturing) && not_ready_for < degraded_after;

    let (phase, ready_reason, ready_message): (DevicePhase, String, String) = if deleting
        || (halted
            && matches!(
                o.drain,
                Some(DrainView::InProgress) | Some(DrainView::Incomplete { .. })
            )) {
        match &o.drain {
            Some(DrainView::Incomplete { reason, .. }) => {
                (DevicePhase::Draining, "DrainIncomplete".into(), reason.clone())
            }
            Some(DrainView::Complete(_)) => (
                DevicePhase::Draining,
                "Drained".into(),
                "every record was delivered; removing the device".into(),
            ),
            _ => (
                DevicePhase::Draining,
                "Draining".into(),
                "the agent is delivering what it has captured before the device stops".into(),
            ),
        }
    } else if failed {
        let f = failures.as_ref().expect("failed implies failures");
        (
            DevicePhase::Failed,
            "RepeatedFailures".into(),
            format!(
                "the device failed {} times in a row (last: {}); it is no longer recreated — fix the cause, then delete its Pod or set spec.runStrategy",
                f.consecutive,
                f.last_reason.clone().unwrap_or_default()
            ),
        )
    } else if halted {
        (
            DevicePhase::Halted,
            "Halted".into(),
            "spec.runStrategy is Halted; the volume and host pinning are kept".into(),
        )
    } else if host_lost {
        let host = enrollment.host.clone().unwrap_or_default();
        (
            DevicePhase::ReEnrollmentRequired,
            "HostLost".into(),
            format!(
                "Mac host {host} is gone and Apple binds the sign-in to it; the employee must sign in again on a new device. Acknowledge with: kubectl annotate cdev {} {ACKNOWLEDGE_HOST_LOSS}={host}",
                o.device.name_any()
            ),
        )
    } else if o.pool.is_none() {
        (
            DevicePhase::Pending,
            "PoolNotFound".into(),
            format!(
                "DevicePool {} does not exist in this namespace",
                o.device.spec.pool_ref.name
            ),
        )
    } else if !o.missing_sinks.is_empty() {
        (
            DevicePhase::Pending,
            "SinkNotFound".into(),
            format!(
                "ArchiveSink(s) {} do not exist in this namespace",
                o.missing_sinks.join(", ")
            ),
        )
    } else if o.waiting_for_capacity {
        (
            DevicePhase::Pending,
            "PoolAtCapacity".into(),
            "the pool has reached spec.maxDevices; the device waits for a free place".into(),
        )
    } else if let Some(p) = pod.filter(|p| p.runtime_started) {
        if runtime_ready && agent_ready {
            (
                DevicePhase::Capturing,
                "Capturing".into(),
                "signed in, and the agent is capturing into every sink".into(),
            )
        } else if runtime_ready {
            if within_hysteresis(true) {
                recheck_after = Some(degraded_after - not_ready_for);
                (
                    DevicePhase::Capturing,
                    "Capturing".into(),
                    "the agent reports not ready; waiting before reporting Degraded".into(),
                )
            } else {
                (
                    DevicePhase::Degraded,
                    "AgentNotReady".into(),
                    format!(
                        "the capture agent has not been ready for {}s: capture stalled or a sink is failing (see the agent's /readyz and capture_* metrics)",
                        not_ready_for.as_secs()
                    ),
                )
            }
        } else if enrolled_before {
            if within_hysteresis(true) {
                recheck_after = Some(degraded_after - not_ready_for);
                (
                    DevicePhase::Capturing,
                    "Capturing".into(),
                    "the device reports not ready; waiting before reporting Degraded".into(),
                )
            } else {
                let _ = p;
                (
                    DevicePhase::Degraded,
                    "DeviceNotReady".into(),
                    "the device is booted but not signed in or not syncing; the employee may have signed out".into(),
                )
            }
        } else {
            let url = enrollment
                .url
                .clone()
                .unwrap_or_else(|| "(the pool has no enrollment.urlTemplate)".into());
            (
                DevicePhase::AwaitingEnrollment,
                "AwaitingEnrollment".into(),
                format!("the device has booted; the employee signs in at {url}"),
            )
        }
    } else if let Some(p) = pod {
        if let Some(msg) = &p.unschedulable {
            (
                DevicePhase::Provisioning,
                "Unschedulable".into(),
                format!("no Mac host can take the device: {msg}"),
            )
        } else if let Some(problem) = &p.waiting_problem {
            (DevicePhase::Provisioning, "ContainerProblem".into(), problem.clone())
        } else if p.node.is_none() {
            (
                DevicePhase::Provisioning,
                "Scheduling".into(),
                "waiting for a Mac host".into(),
            )
        } else {
            (
                DevicePhase::Provisioning,
                "Booting".into(),
                format!("the device is booting on {}", p.node.clone().unwrap_or_default()),
            )
        }
    } else {
        (
            DevicePhase::Provisioning,
            "Creating".into(),
            "creating the device Pod and volume".into(),
        )
    };

    // --- conditions ---
    let provisioned = match (phase, pod) {
        (DevicePhase::Pending, _) => Desired::false_(PROVISIONED, ready_reason.clone(), ready_message.clone()),
        (DevicePhase::Halted, _) => Desired::false_(PROVISIONED, "Halted", "no device Pod while halted"),
        (_, Some(p)) if p.node.is_some() && o.claim.is_some() => Desired::true_(
            PROVISIONED,
            "Placed",
            format!("running on Mac host {}", p.node.clone().unwrap_or_default()),
        ),
        (_, Some(p)) if p.unschedulable.is_some() => {
            Desired::false_(PROVISIONED, "Unschedulable", ready_message.clone())
        }
        _ => Desired::false_(PROVISIONED, "Provisioning", PROVISIONING_MESSAGE),
    };
    let enrolled = if runtime_ready {
        Desired::true_(ENROLLED, "SignedIn", "the employee is signed in")
    } else if enrolled_before && !host_lost {
        Desired::false_(
            ENROLLED,
            "NotSignedInNow",
            format!(
                "signed in on {} before; the device is not reporting signed in now",
                enrollment.host.clone().unwrap_or_default()
            ),
        )
    } else if host_lost {
        Desired::false_(ENROLLED, "HostLost", ready_message.clone())
    } else {
        Desired::false_(ENROLLED, "AwaitingSignIn", "the employee has not signed in yet")
    };
    let capturing = if pod.is_some_and(|p| p.agent_running) && runtime_ready {
        Desired::true_(
            CAPTURING,
            "AgentRunning",
            "the agent is reading the device's Messages database",
        )
    } else {
        Desired::false_(
            CAPTURING,
            "NotCapturing",
            "the agent is not running on a signed-in device",
        )
    };
    let sinks_healthy = if agent_ready {
        Desired::true_(SINKS_HEALTHY, "AgentReady", "the agent reports every sink reachable")
    } else if pod.is_some_and(|p| p.agent_running) && (runtime_ready || enrolled_before) {
        Desired::false_(
            SINKS_HEALTHY,
            "AgentNotReady",
            "the agent is not ready: a sink is failing or capture is stalled",
        )
    } else {
        Desired::unknown(
            SINKS_HEALTHY,
            "NotCapturing",
            "the agent is not capturing yet (device not running or not signed in)",
        )
    };
    let ready = if phase == DevicePhase::Capturing {
        Desired::true_(READY, ready_reason, ready_message)
    } else {
        Desired::false_(READY, ready_reason, ready_message)
    };
    let conditions = conditions::resolve(
        &previous.conditions,
        vec![ready, provisioned, enrolled, capturing, sinks_healthy],
        generation,
        o.now,
    );

    // --- the rest ---
    let outdated = match (pod, &o.current_revisions) {
        (Some(p), Some((rt, ag))) => {
            Some(p.runtime_revision.as_ref() != Some(rt) || p.agent_revision.as_ref() != Some(ag))
        }
        _ => None,
    };
    let device = pod.map(|p| DeviceRuntimeStatus {
        pod_name: Some(p.name.clone()),
        host: p.node.clone(),
        volume_claim: o.claim.clone(),
        runtime_image: p.runtime_image.clone(),
        agent_image: p.agent_image.clone(),
        outdated,
    });
    let device = device.or_else(|| {
        o.claim.as_ref().map(|c| DeviceRuntimeStatus {
            volume_claim: Some(c.clone()),
            ..Default::default()
        })
    });
    let last_drain_receipt = match &o.drain {
        Some(DrainView::Complete(r)) => Some(receipt_status(r)),
        Some(DrainView::Incomplete { receipt: Some(r), .. }) => Some(receipt_status(r)),
        _ => previous.last_drain_receipt.clone(),
    };
    let failures = if phase == DevicePhase::Capturing {
        None
    } else {
        failures.filter(|f: &FailureStatus| f.consecutive > 0)
    };
    let enrollment = (enrollment != EnrollmentStatus::default()).then_some(enrollment);

    Computed {
        status: CaptureDeviceStatus {
            observed_generation: generation,
            phase: Some(phase),
            conditions,
            device,
            enrollment,
            failures,
            last_drain_receipt,
            effective: Some(o.settings.to_status()),
        },
        phase,
        recheck_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::testdata;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    struct Fixture {
        device: CaptureDevice,
        pool: DevicePool,
        settings: DeviceSettings,
        pool_settings: PoolSettings,
    }

    impl Fixture {
        fn new() -> Self {
            let device = testdata::device();
            let pool = testdata::pool();
            let settings = DeviceSettings::resolve(&device);
            let pool_settings = PoolSettings::resolve(&pool);
            Fixture {
                device,
                pool,
                settings,
                pool_settings,
            }
        }

        fn observe<'a>(&'a self, pod: Option<&'a PodFacts>, now: &str) -> Observed<'a> {
            Observed {
                device: &self.device,
                settings: &self.settings,
                pool: Some(&self.pool),
                pool_settings: Some(&self.pool_settings),
                missing_sinks: vec![],
                pod,
                claim: Some("cdev-jane-doe".into()),
                pinned_host_present: None,
                waiting_for_capacity: false,
                drain: None,
                current_revisions: None,
                now: ts(now),
            }
        }

        /// Store the computed status on the device, as the API server would.
        fn store(&mut self, computed: &Computed) {
            self.device.status = Some(computed.status.clone());
        }
    }

    fn booted(node: &str) -> PodFacts {
        PodFacts {
            name: "cdev-jane-doe".into(),
            node: Some(node.into()),
            runtime_started: true,
            agent_running: true,
            ..Default::default()
        }
    }

    fn condition<'a>(c: &'a Computed, t: &str) -> &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        conditions::find(&c.status.conditions, t).unwrap()
    }

    #[test]
    fn walks_provisioning_awaiting_enrollment_capturing() {
        let mut f = Fixture::new();
        let c = compute(&f.observe(None, "2026-01-01T00:00:00Z"));
        assert_eq!(c.phase, DevicePhase::Provisioning);
        assert_eq!(condition(&c, "Ready").status, "False");
        assert_eq!(c.status.observed_generation, Some(3));
        f.store(&c);

        let pod = booted("mac-host-2");
        let c = compute(&f.observe(Some(&pod), "2026-01-01T00:02:00Z"));
        assert_eq!(c.phase, DevicePhase::AwaitingEnrollment);
        let url = c.status.enrollment.as_ref().unwrap().url.clone().unwrap();
        assert_eq!(
            url,
            "https://enroll.acme-wealth.example/devices/wealth-advisory/jane-doe?user=e100234"
        );
        assert!(condition(&c, "Ready").message.contains(&url));
        assert_eq!(condition(&c, "Provisioned").status, "True");
        f.store(&c);

        let pod = PodFacts {
            runtime_ready: true,
            agent_ready: true,
            ..booted("mac-host-2")
        };
        let c = compute(&f.observe(Some(&pod), "2026-01-01T00:07:00Z"));
        assert_eq!(c.phase, DevicePhase::Capturing);
        let ready = condition(&c, "Ready");
        assert_eq!((ready.status.as_str(), ready.observed_generation), ("True", Some(3)));
        assert_eq!(ready.last_transition_time.0, ts("2026-01-01T00:07:00Z"));
        assert_eq!(
            c.status.enrollment.as_ref().unwrap().host.as_deref(),
            Some("mac-host-2"),
            "the sign-in host is pinned"
        );
        f.store(&c);

        // Nothing changes: the same status, transition times and all (no write, no hot loop).
        let again = compute(&f.observe(Some(&pod), "2026-01-01T03:00:00Z"));
        assert_eq!(again.status, c.status);
    }

    #[test]
    fn degraded_only_after_the_hysteresis_window() {
        let mut f = Fixture::new();
        let ok = PodFacts {
            runtime_ready: true,
            agent_ready: true,
            ..booted("mac-host-2")
        };
        let c = compute(&f.observe(Some(&ok), "2026-01-01T00:00:00Z"));
        f.store(&c);
        let flapping = PodFacts {
            runtime_ready: true,
            agent_ready: false,
            not_ready_since: Some(ts("2026-01-01T00:10:00Z")),
            ..booted("mac-host-2")
        };
        let c = compute(&f.observe(Some(&flapping), "2026-01-01T00:10:30Z"));
        assert_eq!(
            c.phase,
            DevicePhase::Capturing,
            "a short agent reconnect does not drop Ready"
        );
        assert_eq!(condition(&c, "Ready").status, "True");
        assert_eq!(c.recheck_after, Some(Duration::from_secs(90)));
        f.store(&c);
        let c = compute(&f.observe(Some(&flapping), "2026-01-01T00:12:01Z"));
        assert_eq!(c.phase, DevicePhase::Degraded);
        assert_eq!(condition(&c, "Ready").reason, "AgentNotReady");
        assert_eq!(condition(&c, "SinksHealthy").status, "False");
    }

    #[test]
    fn lost_host_requires_re_enrollment_until_acknowledged() {
        let mut f = Fixture::new();
        let ok = PodFacts {
            runtime_ready: true,
            agent_ready: true,
            ..booted("mac-host-2")
        };
        let c = compute(&f.observe(Some(&ok), "2026-01-01T00:00:00Z"));
        f.store(&c);
        let mut o = f.observe(None, "2026-01-02T00:00:00Z");
        o.pinned_host_present = Some(false);
        let c = compute(&o);
        assert_eq!(c.phase, DevicePhase::ReEnrollmentRequired);
        assert!(condition(&c, "Ready").message.contains("mac-host-2"));
        f.store(&c);
        f.device.metadata.annotations = Some([(ACKNOWLEDGE_HOST_LOSS.to_owned(), "mac-host-2".to_owned())].into());
        let mut o = f.observe(None, "2026-01-02T00:01:00Z");
        o.pinned_host_present = Some(false);
        let c = compute(&o);
        assert_eq!(c.phase, DevicePhase::Provisioning);
        assert!(
            c.status.enrollment.as_ref().is_none_or(|e| e.host.is_none()),
            "the pin is released"
        );
    }

    #[test]
    fn missing_references_and_capacity_keep_it_pending_with_a_reason() {
        let f = Fixture::new();
        let mut o = f.observe(None, "2026-01-01T00:00:00Z");
        o.missing_sinks = vec!["s3-worm".into()];
        let c = compute(&o);
        assert_eq!(
            (c.phase, condition(&c, "Provisioned").reason.as_str()),
            (DevicePhase::Pending, "SinkNotFound")
        );
        let mut o = f.observe(None, "2026-01-01T00:00:00Z");
        o.waiting_for_capacity = true;
        assert_eq!(condition(&compute(&o), "Ready").reason, "PoolAtCapacity");
        let unschedulable = PodFacts {
            unschedulable: Some("0/4 nodes are available: 4 Insufficient capturefleet.dev/macos-vm.".into()),
            ..Default::default()
        };
        let c = compute(&f.observe(Some(&unschedulable), "2026-01-01T00:00:00Z"));
        assert_eq!(condition(&c, "Provisioned").reason, "Unschedulable");
        assert!(
            condition(&c, "Ready")
                .message
                .contains("Insufficient capturefleet.dev/macos-vm")
        );
    }

    #[test]
    fn draining_reports_incomplete_drains() {
        let mut f = Fixture::new();
        f.device.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(
            "2026-01-01T00:00:00Z",
        )));
        let receipt = DrainReceipt {
            pending_total: 5,
            records_captured: 40,
            last_sequence: 40,
            ..Default::default()
        };
        let mut o = f.observe(None, "2026-01-01T00:01:00Z");
        o.drain = Some(DrainView::Incomplete {
            receipt: Some(receipt),
            reason: "5 records pending for sink s3-worm".into(),
        });
        let c = compute(&o);
        assert_eq!(c.phase, DevicePhase::Draining);
        assert_eq!(condition(&c, "Ready").reason, "DrainIncomplete");
        assert_eq!(c.status.last_drain_receipt.as_ref().unwrap().pending_total, 5);
    }
}
