//! Wiring: one watch per type, shared by the controllers that need it (so 10,000 Pods are
//! cached once), then the three controllers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Future, StreamExt, future};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::controller::{Action, Config as ControllerConfig};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::context::{Context, Stores};
use super::error::Error;
use super::labels::{self, POOL};
use super::metrics::OperatorMetrics;
use super::{device, pool, sink, watch};
use crate::api::{ArchiveSink, CaptureDevice, DevicePool};

/// Scope of the watches.
#[derive(Clone, Debug)]
pub enum Scope {
    /// Every namespace.
    Cluster,
    /// One namespace.
    Namespace(String),
}

fn api<K>(client: &Client, scope: &Scope) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match scope {
        Scope::Cluster => Api::all(client.clone()),
        Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
    }
}

/// Started watches: their stores, and the futures that drive them.
pub struct Watches {
    /// The caches.
    pub stores: Stores,
    /// Subscriptions for the controllers.
    subs: Subscriptions,
    /// Futures driving the watches (run them until shutdown).
    pub drivers: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>>,
}

struct Subscriptions {
    devices: reflector::ReflectHandle<CaptureDevice>,
    pools: reflector::ReflectHandle<DevicePool>,
    sinks: reflector::ReflectHandle<ArchiveSink>,
    pods: reflector::ReflectHandle<Pod>,
    claims: reflector::ReflectHandle<PartialObjectMeta<PersistentVolumeClaim>>,
    nodes: reflector::ReflectHandle<PartialObjectMeta<Node>>,
}

const BUFFER: usize = 4096;

fn drive<S, T, E>(
    stream: S,
    kind: &'static str,
    metrics: &OperatorMetrics,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
where
    S: futures::Stream<Item = Result<T, E>> + Send + 'static,
    E: std::fmt::Display,
{
    let errors = metrics.watch_errors.clone();
    Box::pin(stream.for_each(move |item| {
        if let Err(error) = item {
            errors.with_label_values(&[kind]).inc();
            tracing::warn!(kind, %error, "watch error (retrying with backoff)");
        }
        future::ready(())
    }))
}

/// Start the watches (not yet driven: poll `drivers`).
pub fn watches(client: &Client, scope: &Scope, metrics: &OperatorMetrics) -> Watches {
    let owned = watcher::Config::default().labels(&labels::device_objects_selector());
    let invalid = metrics.invalid_objects.clone();

    let (devices, w) = reflector::store_shared(BUFFER);
    let devices_sub = w.subscribe().expect("shared store");
    let d_stream = watch::guarded(
        api::<DeserializeGuard<CaptureDevice>>(client, scope),
        watcher::Config::default(),
        "CaptureDevice",
        invalid.clone(),
    )
    .reflect_shared(w);

    let (pools, w) = reflector::store_shared(BUFFER);
    let pools_sub = w.subscribe().expect("shared store");
    let p_stream = watch::guarded(
        api::<DeserializeGuard<DevicePool>>(client, scope),
        watcher::Config::default(),
        "DevicePool",
        invalid.clone(),
    )
    .reflect_shared(w);

    let (sinks, w) = reflector::store_shared(BUFFER);
    let sinks_sub = w.subscribe().expect("shared store");
    let s_stream = watch::guarded(
        api::<DeserializeGuard<ArchiveSink>>(client, scope),
        watcher::Config::default(),
        "ArchiveSink",
        invalid.clone(),
    )
    .reflect_shared(w);

    let (pods, w) = reflector::store_shared(BUFFER);
    let pods_sub = w.subscribe().expect("shared store");
    let pod_stream = watch::guarded(
        api::<DeserializeGuard<Pod>>(client, scope),
        owned.clone(),
        "Pod",
        invalid.clone(),
    )
    .modify(watch::trim_pod)
    .reflect_shared(w);

    let (claims, w) = reflector::store_shared(BUFFER);
    let claims_sub = w.subscribe().expect("shared store");
    let c_stream = watcher::watcher(api::<PartialObjectMeta<PersistentVolumeClaim>>(client, scope), owned)
        .default_backoff()
        .modify(|m| m.metadata.managed_fields = None)
        .reflect_shared(w);

    let (nodes, w) = reflector::store_shared(BUFFER);
    let nodes_sub = w.subscribe().expect("shared store");
    let n_stream = watcher::watcher(
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|m| {
        m.metadata.managed_fields = None;
        m.metadata.annotations = None;
    })
    .reflect_shared(w);

    Watches {
        stores: Stores {
            devices,
            pools,
            sinks,
            pods,
            claims,
            nodes,
        },
        subs: Subscriptions {
            devices: devices_sub,
            pools: pools_sub,
            sinks: sinks_sub,
            pods: pods_sub,
            claims: claims_sub,
            nodes: nodes_sub,
        },
        drivers: vec![
            drive(d_stream, "CaptureDevice", metrics),
            drive(p_stream, "DevicePool", metrics),
            drive(s_stream, "ArchiveSink", metrics),
            drive(pod_stream, "Pod", metrics),
            drive(c_stream, "PersistentVolumeClaim", metrics),
            drive(n_stream, "Node", metrics),
        ],
    }
}

/// Wait until every cache has its first full list.
pub async fn wait_synced(stores: &Stores) {
    let _ = stores.devices.wait_until_ready().await;
    let _ = stores.pools.wait_until_ready().await;
    let _ = stores.sinks.wait_until_ready().await;
    let _ = stores.pods.wait_until_ready().await;
    let _ = stores.claims.wait_until_ready().await;
    let _ = stores.nodes.wait_until_ready().await;
}

/// A boxed reconcile future.
type ReconcileFuture = std::pin::Pin<Box<dyn Future<Output = Result<Action, Error>> + Send>>;

fn instrumented<K, F, Fut>(controller: &'static str, f: F) -> impl FnMut(Arc<K>, Arc<Context>) -> ReconcileFuture
where
    K: Resource + Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Context>) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |object: Arc<K>, ctx: Arc<Context>| {
        let span = tracing::info_span!(
            "reconcile",
            controller,
            namespace = object.namespace().unwrap_or_default(),
            name = object.name_any()
        );
        Box::pin(
            async move {
                let started = Instant::now();
                let result = f(object, ctx.clone()).await;
                let m = &ctx.metrics;
                m.reconcile_duration
                    .with_label_values(&[controller])
                    .observe(started.elapsed().as_secs_f64());
                match &result {
                    Ok(_) => m.reconciles.with_label_values(&[controller, "ok"]).inc(),
                    Err(error) => {
                        m.reconciles.with_label_values(&[controller, "error"]).inc();
                        m.reconcile_errors
                            .with_label_values(&[controller, error.reason()])
                            .inc();
                        tracing::warn!(%error, "reconcile failed; retrying with backoff");
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}

fn error_policy<K>(_object: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    let base = match error.reason() {
        "conflict" => Duration::from_secs(1),
        "throttled" => Duration::from_secs(10),
        _ => Duration::from_secs(5),
    };
    Action::requeue(base + Duration::from_millis(rand::random_range(0..1000)))
}

/// Run the three controllers until `shutdown`.
pub async fn run(watches: Watches, ctx: Arc<Context>, concurrency: u16, shutdown: CancellationToken) {
    let Watches { stores, subs, drivers } = watches;
    let devices_store: Store<CaptureDevice> = stores.devices.clone();

    let pool_devices = {
        let devices = devices_store.clone();
        move |pool: Arc<DevicePool>| {
            let ns = pool.namespace();
            let name = pool.name_any();
            devices
                .state_filter(|d| d.namespace() == ns && d.spec.pool_ref.name == name)
                .into_iter()
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let sink_devices = {
        let devices = devices_store.clone();
        move |sink: Arc<ArchiveSink>| {
            let ns = sink.namespace();
            let name = sink.name_any();
            devices
                .state_filter(|d| d.namespace() == ns && d.spec.sink_refs.iter().any(|r| r.name == name))
                .into_iter()
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let node_devices = {
        let devices = devices_store.clone();
        move |node: Arc<PartialObjectMeta<Node>>| {
            let name = node.name_any();
            devices
                .state_filter(|d| {
                    d.status
                        .as_ref()
                        .and_then(|s| s.enrollment.as_ref())
                        .and_then(|e| e.host.as_ref())
                        == Some(&name)
                })
                .into_iter()
                .map(|d| ObjectRef::from_obj(d.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    // Pods reach their device through the device label (a claimed spare changes owner).
    let pod_device = |pod: Arc<Pod>| {
        let ns = pod.namespace().unwrap_or_default();
        pod.labels()
            .get(labels::DEVICE)
            .map(|d| ObjectRef::<CaptureDevice>::new(d).within(&ns))
    };
    let claim_device = |claim: Arc<PartialObjectMeta<PersistentVolumeClaim>>| {
        let ns = claim.namespace().unwrap_or_default();
        claim
            .labels()
            .get(labels::DEVICE)
            .map(|d| ObjectRef::<CaptureDevice>::new(d).within(&ns))
    };

    let device_controller = Controller::for_shared_stream(subs.devices.clone(), devices_store.clone())
        .watches_shared_stream(subs.pods.clone(), pod_device)
        .watches_shared_stream(subs.claims.clone(), claim_device)
        .watches_shared_stream(subs.pools.clone(), pool_devices)
        .watches_shared_stream(subs.sinks.clone(), sink_devices)
        .watches_shared_stream(subs.nodes.clone(), node_devices)
        // A short debounce folds the bursts of a Pod's first seconds (created, scheduled,
        // started) into one reconcile, hence one status write.
        .with_config(
            ControllerConfig::default()
                .concurrency(concurrency)
                .debounce(Duration::from_millis(500)),
        )
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(
            instrumented("capturedevice", device::reconcile::reconcile),
            error_policy,
            ctx.clone(),
        )
        .for_each(|_| future::ready(()));

    // Pools: their devices' and Pods' changes, debounced so a burst of 10,000 device updates
    // becomes a handful of status writes.
    let pod_pool = |pod: Arc<Pod>| {
        let ns = pod.namespace().unwrap_or_default();
        pod.labels()
            .get(POOL)
            .map(|p| ObjectRef::<DevicePool>::new(p).within(&ns))
    };
    let device_pool = |d: Arc<CaptureDevice>| {
        let ns = d.namespace().unwrap_or_default();
        Some(ObjectRef::<DevicePool>::new(&d.spec.pool_ref.name).within(&ns))
    };
    let sink_pools = {
        let pools = stores.pools.clone();
        move |s: Arc<ArchiveSink>| {
            let ns = s.namespace();
            pools
                .state_filter(|p| p.namespace() == ns)
                .into_iter()
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let pool_controller = Controller::for_shared_stream(subs.pools.clone(), stores.pools.clone())
        .watches_shared_stream(subs.pods.clone(), pod_pool)
        .watches_shared_stream(subs.devices.clone(), device_pool)
        .watches_shared_stream(subs.sinks.clone(), sink_pools)
        .with_config(
            ControllerConfig::default()
                .concurrency(4)
                .debounce(Duration::from_secs(2)),
        )
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(instrumented("devicepool", pool::reconcile), error_policy, ctx.clone())
        .for_each(|_| future::ready(()));

    let device_sinks = |d: Arc<CaptureDevice>| {
        let ns = d.namespace().unwrap_or_default();
        d.spec
            .sink_refs
            .iter()
            .map(|r| ObjectRef::<ArchiveSink>::new(&r.name).within(&ns))
            .collect::<Vec<_>>()
    };
    let sink_controller = Controller::for_shared_stream(subs.sinks.clone(), stores.sinks.clone())
        .watches_shared_stream(subs.devices.clone(), device_sinks)
        .with_config(
            ControllerConfig::default()
                .concurrency(2)
                .debounce(Duration::from_secs(2)),
        )
        .graceful_shutdown_on(shutdown.clone().cancelled_owned())
        .run(instrumented("archivesink", sink::reconcile), error_policy, ctx.clone())
        .for_each(|_| future::ready(()));

    // Each controller holds its own clones of the subscriptions. The originals must go: a
    // subscription nobody reads fills its buffer, and the shared reflector then waits for it —
    // every cache would stop updating after BUFFER events (found by the 1,000-device benchmark:
    // half the fleet stuck in a stale phase while its Pods ran).
    drop(subs);
    let gauges = fleet_gauges(ctx.clone(), shutdown.clone());
    let drivers = future::join_all(drivers);
    tokio::select! {
        _ = async { tokio::join!(device_controller, pool_controller, sink_controller, gauges) } => {}
        _ = drivers => tracing::error!("a watch ended unexpectedly"),
    }
}

/// Recompute the fleet gauges from the caches every 10 s (no API calls).
async fn fleet_gauges(ctx: Arc<Context>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        super::fleet::update(&ctx);
    }
}
