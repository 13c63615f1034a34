//! A DevicePool's status: counts over its devices and spares, computed from the caches.

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{DevicePhase, DevicePool, DevicePoolStatus};
use crate::operator::conditions::{self, Desired};
use crate::operator::context::Stores;
use crate::operator::device::pod_facts;
use crate::operator::labels::{POOL, ROLE, ROLE_SPARE};

/// Compute the pool's status. `target_spares` is how many spares the pool wants right now.
pub fn compute(
    pool: &DevicePool,
    stores: &Stores,
    revisions: &(String, String),
    target_spares: i32,
    now: Timestamp,
) -> DevicePoolStatus {
    let ns = pool.namespace().unwrap_or_default();
    let name = pool.name_any();
    let devices = stores.pool_devices(&ns, &name);
    let pods = stores
        .pods
        .state_filter(|p| p.namespace().as_deref() == Some(ns.as_str()) && p.labels().get(POOL) == Some(&name));

    let phase = |d: &crate::api::CaptureDevice| d.status.as_ref().and_then(|s| s.phase);
    let reason = |d: &crate::api::CaptureDevice| {
        d.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.reason.clone())
            .unwrap_or_default()
    };
    let ready = devices
        .iter()
        .filter(|d| phase(d) == Some(DevicePhase::Capturing))
        .count() as i32;
    let waiting = devices
        .iter()
        .filter(|d| matches!(reason(d).as_str(), "PoolAtCapacity" | "Unschedulable"))
        .count() as i32;
    let mut warm = 0;
    let mut outdated = 0;
    for pod in &pods {
        let f = pod_facts::read(pod);
        if f.terminating {
            continue;
        }
        let current =
            f.runtime_revision.as_ref() == Some(&revisions.0) && f.agent_revision.as_ref() == Some(&revisions.1);
        if !current {
            outdated += 1;
        }
        if pod.labels().get(ROLE).map(String::as_str) == Some(ROLE_SPARE) && f.runtime_started && current {
            warm += 1;
        }
    }
    let previous = pool.status.clone().unwrap_or_default();
    let device_count = devices.len() as i32;
    let mut desired = vec![];
    if ready == device_count && warm >= target_spares {
        desired.push(Desired::true_(
            "Ready",
            "AllCapturing",
            format!("{ready} device(s) capturing, {warm} warm spare(s)"),
        ));
    } else {
        desired.push(Desired::false_(
            "Ready",
            "NotAllCapturing",
            format!("{ready} of {device_count} device(s) capturing; {warm} of {target_spares} warm spare(s) booted"),
        ));
    }
    if waiting > 0 {
        desired.push(Desired::true_(
            "AtCapacity",
            "DevicesWaiting",
            format!("{waiting} device(s) wait for a Mac host slot or the pool's maxDevices"),
        ));
    } else {
        desired.push(Desired::false_(
            "AtCapacity",
            "Capacity",
            "no device is waiting for capacity",
        ));
    }
    DevicePoolStatus {
        observed_generation: pool.metadata.generation,
        conditions: conditions::resolve(&previous.conditions, desired, pool.metadata.generation, now),
        desired: device_count + target_spares,
        devices: device_count,
        ready,
        warm,
        outdated,
        waiting,
        spare_selector: Some(format!("{POOL}={name},{ROLE}={ROLE_SPARE}")),
        runtime_revision: Some(revisions.0.clone()),
        agent_revision: Some(revisions.1.clone()),
    }
}

/// Add the rollout condition (`RolloutHalted`) to a computed status.
pub fn set_rollout(
    status: &mut DevicePoolStatus,
    pool: &DevicePool,
    decision: &super::rollout::Decision,
    now: Timestamp,
) {
    let previous = pool.status.clone().unwrap_or_default();
    let desired = match &decision.halted {
        Some(reason) => Desired::true_("RolloutHalted", "ReplacedDeviceNotReady", reason.clone()),
        None if decision.outdated > 0 => Desired::false_(
            "RolloutHalted",
            "Progressing",
            format!("{} device(s) still run older images", decision.outdated),
        ),
        None => Desired::false_(
            "RolloutHalted",
            "UpToDate",
            "every device runs the pool's current images",
        ),
    };
    let resolved = conditions::resolve(&previous.conditions, vec![desired], pool.metadata.generation, now);
    status.conditions.extend(resolved);
}
