//! What every reconcile shares: the client, the caches (read-only views of the watches), the
//! event recorder, metrics, and the in-flight expectations that keep a stale cache from making
//! the operator create a second Pod for a device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::Client;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};

use super::labels::{DEVICE, POOL, ROLE, ROLE_ASSIGNED, ROLE_DRAIN, ROLE_SPARE};
use super::metrics::OperatorMetrics;
use crate::api::capture_device::FailureStatus;
use crate::api::{ArchiveSink, CaptureDevice, DevicePool};

/// Read-only caches of everything the operator watches.
#[derive(Clone)]
pub struct Stores {
    /// CaptureDevices.
    pub devices: Store<CaptureDevice>,
    /// DevicePools.
    pub pools: Store<DevicePool>,
    /// ArchiveSinks.
    pub sinks: Store<ArchiveSink>,
    /// Device Pods (trimmed).
    pub pods: Store<Pod>,
    /// Device volume claims (metadata only).
    pub claims: Store<PartialObjectMeta<PersistentVolumeClaim>>,
    /// Nodes (metadata only), for sticky-host checks.
    pub nodes: Store<PartialObjectMeta<Node>>,
}

impl Stores {
    /// A pool by namespace and name.
    pub fn pool(&self, namespace: &str, name: &str) -> Option<Arc<DevicePool>> {
        self.pools.get(&ObjectRef::new(name).within(namespace))
    }

    /// A sink by namespace and name.
    pub fn sink(&self, namespace: &str, name: &str) -> Option<Arc<ArchiveSink>> {
        self.sinks.get(&ObjectRef::new(name).within(namespace))
    }

    /// Every sink in a namespace, by name.
    pub fn sinks_in(&self, namespace: &str) -> Vec<Arc<ArchiveSink>> {
        let mut sinks = self.sinks.state_filter(|s| s.namespace().as_deref() == Some(namespace));
        sinks.sort_by_key(|s| s.name_any());
        sinks
    }

    /// A device's Pods with the given role (`assigned` or `drain`).
    pub fn device_pods(&self, namespace: &str, device: &str, role: &str) -> Vec<Arc<Pod>> {
        self.pods.state_filter(|p| {
            p.namespace().as_deref() == Some(namespace)
                && p.labels().get(DEVICE).map(String::as_str) == Some(device)
                && p.labels().get(ROLE).map(String::as_str) == Some(role)
        })
    }

    /// A device's own Pod (there is at most one; if a bug or a race ever made two, the newest
    /// is returned and the operator deletes the others).
    pub fn assigned_pods(&self, namespace: &str, device: &str) -> Vec<Arc<Pod>> {
        let mut pods = self.device_pods(namespace, device, ROLE_ASSIGNED);
        pods.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)));
        pods
    }

    /// A device's drain Pod.
    pub fn drain_pod(&self, namespace: &str, device: &str) -> Option<Arc<Pod>> {
        self.device_pods(namespace, device, ROLE_DRAIN).into_iter().next()
    }

    /// The pool's warm spares.
    pub fn spares(&self, namespace: &str, pool: &str) -> Vec<Arc<Pod>> {
        self.pods.state_filter(|p| {
            p.namespace().as_deref() == Some(namespace)
                && p.labels().get(POOL).map(String::as_str) == Some(pool)
                && p.labels().get(ROLE).map(String::as_str) == Some(ROLE_SPARE)
        })
    }

    /// Whether a volume claim exists.
    pub fn claim_exists(&self, namespace: &str, name: &str) -> bool {
        self.claims.get(&ObjectRef::new(name).within(namespace)).is_some()
    }

    /// Whether a node exists.
    pub fn node_exists(&self, name: &str) -> bool {
        self.nodes.get(&ObjectRef::new(name)).is_some()
    }

    /// Devices of a pool.
    pub fn pool_devices(&self, namespace: &str, pool: &str) -> Vec<Arc<CaptureDevice>> {
        self.devices
            .state_filter(|d| d.namespace().as_deref() == Some(namespace) && d.spec.pool_ref.name == pool)
    }
}

/// Objects the operator has created or claimed but not yet seen in its cache. While an
/// expectation is open, the device is treated as having that Pod, so a reconcile that runs
/// before the watch catches up cannot create another one.
#[derive(Default)]
pub struct Expectations {
    open: Mutex<HashMap<String, (String, Instant)>>,
}

impl Expectations {
    /// How long an expectation is trusted without the watch confirming it.
    pub const TIMEOUT: Duration = Duration::from_secs(60);

    /// Record that `pod` was created or claimed for the device `key` (namespace/name).
    pub fn expect(&self, key: &str, pod: &str) {
        if let Ok(mut open) = self.open.lock() {
            open.insert(key.to_owned(), (pod.to_owned(), Instant::now()));
        }
    }

    /// The Pod expected for `key`, if still pending. `seen` says whether the cache now shows it
    /// (which satisfies the expectation).
    pub fn pending(&self, key: &str, seen: impl Fn(&str) -> bool) -> Option<String> {
        let mut open = self.open.lock().ok()?;
        let (pod, at) = open.get(key).cloned()?;
        if seen(&pod) || at.elapsed() > Self::TIMEOUT {
            open.remove(key);
            return None;
        }
        Some(pod)
    }

    /// Forget the expectation (e.g. the Pod was deleted on purpose).
    pub fn clear(&self, key: &str) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(key);
        }
    }
}

/// Failure bookkeeping written to status but possibly not yet back in the cache: without it a
/// reconcile that runs on a stale cache would recreate a failed Pod before its backoff, or
/// reset the failure count.
#[derive(Default)]
pub struct FailureMemory {
    recent: Mutex<HashMap<String, FailureStatus>>,
}

impl FailureMemory {
    /// Remember the latest failure state of a device.
    pub fn record(&self, key: &str, failures: &FailureStatus) {
        if let Ok(mut m) = self.recent.lock() {
            m.insert(key.to_owned(), failures.clone());
        }
    }

    /// The more recent of what the cache shows and what was recorded.
    pub fn merge(&self, key: &str, cached: Option<FailureStatus>) -> Option<FailureStatus> {
        let remembered = self.recent.lock().ok()?.get(key).cloned();
        match (cached, remembered) {
            (Some(c), Some(r)) => Some(if r.consecutive > c.consecutive { r } else { c }),
            (c, r) => c.or(r),
        }
    }

    /// Forget (the device is capturing again, or gone).
    pub fn clear(&self, key: &str) {
        if let Ok(mut m) = self.recent.lock() {
            m.remove(key);
        }
    }
}

/// Warm spares a reconcile is claiming right now, so that concurrent reconciles of new devices
/// pick different spares instead of racing for the same one (the compare-and-swap on the Pod
/// stays the safety net; this only avoids a storm of refused patches).
#[derive(Default)]
pub struct Reservations {
    held: Mutex<HashMap<String, Instant>>,
}

impl Reservations {
    /// How long a reservation holds without being released.
    pub const TIMEOUT: Duration = Duration::from_secs(30);

    /// Reserve a spare (namespace/name); false when someone else holds it.
    pub fn try_reserve(&self, key: &str) -> bool {
        let Ok(mut held) = self.held.lock() else { return false };
        held.retain(|_, at| at.elapsed() < Self::TIMEOUT);
        if held.contains_key(key) {
            return false;
        }
        held.insert(key.to_owned(), Instant::now());
        true
    }

    /// Release a reservation.
    pub fn release(&self, key: &str) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(key);
        }
    }
}

/// The status each device was last written with, to skip writing the same status again while
/// the cache has not caught up with the previous write.
#[derive(Default)]
pub struct WrittenStatus {
    last: Mutex<HashMap<String, u64>>,
}

impl WrittenStatus {
    fn digest<T: serde::Serialize>(status: &T) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(status).unwrap_or_default().hash(&mut h);
        h.finish()
    }

    /// Whether this exact status was the last one written for the device.
    pub fn is_last<T: serde::Serialize>(&self, key: &str, status: &T) -> bool {
        let d = Self::digest(status);
        self.last.lock().map(|m| m.get(key) == Some(&d)).unwrap_or(false)
    }

    /// Remember a written status.
    pub fn remember<T: serde::Serialize>(&self, key: &str, status: &T) {
        let d = Self::digest(status);
        if let Ok(mut m) = self.last.lock() {
            m.insert(key.to_owned(), d);
        }
    }

    /// Forget a device.
    pub fn forget(&self, key: &str) {
        if let Ok(mut m) = self.last.lock() {
            m.remove(key);
        }
    }
}

/// Operator settings from the command line.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Identity used in events and the Lease.
    pub identity: String,
}

/// Shared by every reconcile.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Caches.
    pub stores: Stores,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: OperatorMetrics,
    /// In-flight creations and claims.
    pub expectations: Expectations,
    /// Recent failure bookkeeping.
    pub failures: FailureMemory,
    /// Spares being claimed.
    pub reservations: Reservations,
    /// Last status written per device.
    pub written: WrittenStatus,
    /// Settings.
    pub settings: Settings,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectation_holds_until_seen() {
        let e = Expectations::default();
        e.expect("ns/jane", "cdev-jane");
        assert_eq!(e.pending("ns/jane", |_| false).as_deref(), Some("cdev-jane"));
        assert_eq!(e.pending("ns/jane", |p| p == "cdev-jane"), None);
        assert_eq!(e.pending("ns/jane", |_| false), None, "a satisfied expectation is gone");
    }
}
