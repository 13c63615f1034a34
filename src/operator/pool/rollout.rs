//! Rolling updates of a pool's devices, decided as a pure function of the pool and its
//! devices' observed state.
//!
//! `Opportunistic`: nothing is replaced; a device takes the new images when its Pod is
//! recreated for another reason. `RollingUpdate`: outdated devices are replaced (their Pod
//! deleted; the device controller recreates it on the same pinned Mac host), at most
//! `maxUnavailable` down at once, agent-only changes first (they need no new sign-in), never a
//! device that is draining, halted or not capturing. A replaced device that does not come back
//! to `Capturing` (it turns `Degraded` or `Failed`) halts the rollout until it recovers or the
//! pool changes again.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::DevicePhase;
use crate::api::device_pool::{DevicePool, UpdateStrategyType};

/// What the rollout sees of one device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceView {
    /// Device name.
    pub name: String,
    /// Its phase.
    pub phase: Option<DevicePhase>,
    /// Being deleted, halted, or draining.
    pub stopping: bool,
    /// Its Pod reports the device signed in and the agent ready right now (stricter than the
    /// phase, which hides short outages behind the Degraded hysteresis).
    pub available: bool,
    /// The device Pod, if any.
    pub pod: Option<String>,
    /// The Pod's runtime revision is current.
    pub runtime_current: bool,
    /// The Pod's agent revision is current.
    pub agent_current: bool,
}

/// The rollout's decision.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Decision {
    /// Pods to delete now (device, pod).
    pub replace: Vec<(String, String)>,
    /// Devices still outdated.
    pub outdated: usize,
    /// Why the rollout is halted (a replaced device that did not come back).
    pub halted: Option<String>,
}

/// `maxUnavailable` resolved against the number of devices (at least 1).
pub fn max_unavailable(pool: &DevicePool, devices: usize) -> usize {
    let value = pool
        .spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.clone());
    let n = match value {
        None => 1,
        Some(IntOrString::Int(n)) => n.max(1) as usize,
        Some(IntOrString::String(p)) => {
            let pct: usize = p.trim_end_matches('%').parse().unwrap_or(1);
            devices * pct / 100
        }
    };
    n.max(1)
}

/// Decide which devices to replace now.
pub fn decide(pool: &DevicePool, devices: &[DeviceView]) -> Decision {
    let strategy = pool.spec.update_strategy.as_ref().map(|u| u.type_).unwrap_or_default();
    let outdated: Vec<&DeviceView> = devices
        .iter()
        .filter(|d| d.pod.is_some() && !(d.runtime_current && d.agent_current))
        .collect();
    let mut decision = Decision {
        outdated: outdated.len(),
        ..Default::default()
    };
    if strategy != UpdateStrategyType::RollingUpdate || outdated.is_empty() {
        return decision;
    }
    // A device already running the new images but not capturing was (most likely) just
    // replaced: it counts as unavailable, and if it has turned Degraded or Failed the rollout
    // stops here.
    let replaced_down: Vec<&DeviceView> = devices
        .iter()
        .filter(|d| d.pod.is_some() && d.runtime_current && d.agent_current && !d.stopping)
        .filter(|d| !d.available)
        .collect();
    if let Some(bad) = replaced_down
        .iter()
        .find(|d| matches!(d.phase, Some(DevicePhase::Degraded) | Some(DevicePhase::Failed)))
    {
        decision.halted = Some(format!(
            "device {} did not become ready on the new images (phase {}); the rollout is halted until it recovers or the pool changes",
            bad.name,
            bad.phase.map(|p| p.as_str()).unwrap_or("unknown")
        ));
        return decision;
    }
    let unavailable = devices.iter().filter(|d| !d.stopping && !d.available).count();
    let budget = max_unavailable(pool, devices.len()).saturating_sub(unavailable);
    let mut candidates: Vec<&&DeviceView> = outdated.iter().filter(|d| !d.stopping && d.available).collect();
    // Agent-only changes first: they need no new sign-in.
    candidates.sort_by_key(|d| (!d.runtime_current, d.name.clone()));
    decision.replace = candidates
        .into_iter()
        .take(budget)
        .map(|d| (d.name.clone(), d.pod.clone().unwrap_or_default()))
        .collect();
    decision
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::testdata;

    fn rolling(max: i32) -> DevicePool {
        let mut pool = testdata::pool();
        pool.spec.update_strategy = serde_json::from_value(serde_json::json!({
            "type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": max}
        }))
        .unwrap();
        pool
    }

    fn dev(name: &str, phase: DevicePhase, runtime_current: bool, agent_current: bool) -> DeviceView {
        DeviceView {
            name: name.into(),
            phase: Some(phase),
            stopping: false,
            available: phase == DevicePhase::Capturing,
            pod: Some(format!("cdev-{name}")),
            runtime_current,
            agent_current,
        }
    }

    #[test]
    fn opportunistic_replaces_nothing_but_counts() {
        let pool = testdata::pool();
        let d = decide(&pool, &[dev("a", DevicePhase::Capturing, false, true)]);
        assert_eq!((d.replace.len(), d.outdated), (0, 1));
    }

    #[test]
    fn agent_only_changes_go_first_within_max_unavailable() {
        let pool = rolling(2);
        let devices = [
            dev("a", DevicePhase::Capturing, false, false),
            dev("b", DevicePhase::Capturing, true, false),
            dev("c", DevicePhase::Capturing, false, true),
            dev("d", DevicePhase::Capturing, true, false),
        ];
        let d = decide(&pool, &devices);
        assert_eq!(
            d.replace.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            vec!["b", "d"]
        );
    }

    #[test]
    fn a_replaced_device_that_stays_down_uses_the_budget_and_a_degraded_one_halts() {
        let pool = rolling(1);
        let booting = [
            dev("a", DevicePhase::AwaitingEnrollment, true, true),
            dev("b", DevicePhase::Capturing, true, false),
        ];
        assert!(
            decide(&pool, &booting).replace.is_empty(),
            "one device down already uses maxUnavailable=1"
        );
        let failed = [
            dev("a", DevicePhase::Degraded, true, true),
            dev("b", DevicePhase::Capturing, true, false),
        ];
        let d = decide(&pool, &failed);
        assert!(d.replace.is_empty());
        assert!(d.halted.as_deref().unwrap().contains("device a"));
    }

    #[test]
    fn never_replaces_draining_or_halted_devices() {
        let pool = rolling(5);
        let mut draining = dev("a", DevicePhase::Draining, false, false);
        draining.stopping = true;
        let d = decide(&pool, &[draining]);
        assert!(d.replace.is_empty());
        assert_eq!(d.outdated, 1);
    }

    #[test]
    fn percentages_round_down_to_at_least_one() {
        let mut pool = rolling(1);
        pool.spec
            .update_strategy
            .as_mut()
            .unwrap()
            .rolling_update
            .as_mut()
            .unwrap()
            .max_unavailable = Some(IntOrString::String("10%".into()));
        assert_eq!(max_unavailable(&pool, 35), 3);
        assert_eq!(max_unavailable(&pool, 5), 1);
    }
}
