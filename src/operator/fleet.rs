//! Fleet gauges, recomputed from the caches: devices by phase (optionally by pool), outdated
//! devices, devices waiting for capacity, the longest time a device of each phase has been
//! unready, warm spares.

use std::collections::HashMap;

use jiff::Timestamp;
use kube::ResourceExt;

use super::context::Context;
use super::device::pod_facts;
use super::labels::{ROLE, ROLE_SPARE};
use crate::api::{CaptureDevice, DevicePhase};

/// Update the gauges.
pub fn update(ctx: &Context) {
    let m = &ctx.metrics;
    let devices = ctx.stores.devices.state();
    let mut by: HashMap<(DevicePhase, String), i64> = HashMap::new();
    let mut waiting: HashMap<&'static str, i64> = HashMap::from([("Unschedulable", 0), ("PoolAtCapacity", 0)]);
    let mut outdated = 0;
    for d in &devices {
        let status = d.status.as_ref();
        let phase = status.and_then(|s| s.phase).unwrap_or(DevicePhase::Pending);
        let pool = if m.pool_label {
            d.spec.pool_ref.name.clone()
        } else {
            String::new()
        };
        *by.entry((phase, pool)).or_default() += 1;
        if let Some(reason) = status
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.reason.as_str())
            && let Some(n) = waiting.iter_mut().find(|(k, _)| **k == reason).map(|(_, v)| v)
        {
            *n += 1;
        }
        if status.and_then(|s| s.device.as_ref()).and_then(|d| d.outdated) == Some(true) {
            outdated += 1;
        }
    }
    m.devices.reset();
    for phase in DevicePhase::ALL {
        if !m.pool_label {
            m.devices
                .with_label_values(&[phase.as_str()])
                .set(by.get(&(phase, String::new())).copied().unwrap_or(0));
        }
    }
    if m.pool_label {
        for ((phase, pool), n) in &by {
            m.devices.with_label_values(&[phase.as_str(), pool]).set(*n);
        }
    }
    for (reason, n) in waiting {
        m.devices_waiting.with_label_values(&[reason]).set(n);
    }
    m.devices_outdated.set(outdated);
    let longest = longest_not_ready(devices.iter().map(|d| d.as_ref()), Timestamp::now());
    for phase in DevicePhase::ALL {
        m.longest_not_ready
            .with_label_values(&[phase.as_str()])
            .set(longest.get(&phase).copied().unwrap_or(0));
    }
    let warm = ctx
        .stores
        .pods
        .state()
        .iter()
        .filter(|p| p.labels().get(ROLE).map(String::as_str) == Some(ROLE_SPARE))
        .filter(|p| {
            let f = pod_facts::read(p);
            f.runtime_started && !f.terminating
        })
        .count();
    m.warm_spares.set(warm as i64);
}

/// For each phase, the longest time (whole seconds) since a device of that phase had its
/// `Ready` condition turn False. Devices that are Ready, or have no `Ready` condition yet, do
/// not count.
pub fn longest_not_ready<'a>(
    devices: impl IntoIterator<Item = &'a CaptureDevice>,
    now: Timestamp,
) -> HashMap<DevicePhase, i64> {
    let mut longest: HashMap<DevicePhase, i64> = HashMap::new();
    for d in devices {
        let Some(status) = d.status.as_ref() else { continue };
        let phase = status.phase.unwrap_or(DevicePhase::Pending);
        let Some(ready) = status.conditions.iter().find(|c| c.type_ == "Ready") else {
            continue;
        };
        if ready.status != "False" {
            continue;
        }
        let seconds = now.duration_since(ready.last_transition_time.0).as_secs().max(0);
        let entry = longest.entry(phase).or_default();
        *entry = (*entry).max(seconds);
    }
    longest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(phase: &str, ready: &str, since: &str) -> CaptureDevice {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: capturefleet.dev/v1alpha1
kind: CaptureDevice
metadata: {{name: d, namespace: ns}}
spec: {{user: {{id: e1}}, poolRef: {{name: p}}, sinkRefs: [{{name: s}}]}}
status:
  phase: {phase}
  conditions:
  - {{type: Ready, status: "{ready}", reason: R, message: m, lastTransitionTime: "{since}", observedGeneration: 1}}
"#
        ))
        .unwrap()
    }

    #[test]
    fn longest_not_ready_is_per_phase_and_ignores_ready_devices() {
        let now: Timestamp = "2026-03-01T12:00:00Z".parse().unwrap();
        let devices = [
            device("AwaitingEnrollment", "False", "2026-03-01T11:00:00Z"),
            device("AwaitingEnrollment", "False", "2026-02-28T12:00:00Z"),
            device("Draining", "False", "2026-03-01T11:59:00Z"),
            device("Capturing", "True", "2026-01-01T00:00:00Z"),
        ];
        let longest = longest_not_ready(devices.iter(), now);
        assert_eq!(longest.get(&DevicePhase::AwaitingEnrollment), Some(&86_400));
        assert_eq!(longest.get(&DevicePhase::Draining), Some(&60));
        assert_eq!(
            longest.get(&DevicePhase::Capturing),
            None,
            "a Ready device is not counted"
        );
    }
}
