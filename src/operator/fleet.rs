//! Fleet gauges, recomputed from the caches: devices by phase (optionally by pool), outdated
//! devices, devices waiting for capacity, warm spares.

use std::collections::HashMap;

use kube::ResourceExt;

use super::context::Context;
use super::device::pod_facts;
use super::labels::{ROLE, ROLE_SPARE};
use crate::api::DevicePhase;

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
