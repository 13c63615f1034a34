//! One CaptureDevice reconcile: fetch (from the caches) → validate (pool and sinks exist, host
//! still there) → build the desired objects (pure) → apply what is missing → compute the status
//! from what exists and write it only if it changed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::build::{self, PodPlan, PodRole};
use super::claim;
use super::offboard::{self, Step};
use super::pod_facts::{self, PodFacts};
use super::settings::{DeviceSettings, PoolSettings};
use super::sink_mounts::{self, SinkMount};
use super::status::{self, DrainView, Observed};
use crate::api::capture_device::{CaptureDeviceStatus, FailureStatus, RunStrategy, VolumePolicy};
use crate::api::{ArchiveSink, CaptureDevice, DevicePhase, DevicePool};
use crate::operator::apply;
use crate::operator::context::Context;
use crate::operator::error::Error;
use crate::operator::labels::{self, DRAIN_FINALIZER, FIELD_MANAGER};

/// How often a settled device is looked at again (reads from cache only; no writes unless
/// something changed), with jitter so a fleet does not move in lockstep.
const RESYNC: Duration = Duration::from_secs(600);

/// How often a device in a transitional or unhealthy phase is looked at again even without a
/// watch event, so that a missed or coalesced Pod event costs seconds, not a resync period.
/// (Cache reads only; nothing is written unless the status changed.)
const UNSETTLED_RECHECK: Duration = Duration::from_secs(20);

fn jitter(base: Duration) -> Duration {
    let spread = base.as_millis() as u64 / 10;
    base + Duration::from_millis(rand::random_range(0..=spread.max(1)))
}

/// Backoff before recreating a failed device Pod: 10 s doubling, at most 10 minutes.
pub fn repair_backoff(consecutive: i32) -> Duration {
    let exp = consecutive.clamp(1, 16) as u32 - 1;
    Duration::from_secs(10u64.saturating_mul(1u64 << exp)).min(Duration::from_secs(600))
}

struct Resolved {
    pool: Option<Arc<DevicePool>>,
    pool_settings: Option<PoolSettings>,
    sinks: Vec<Arc<ArchiveSink>>,
    missing_sinks: Vec<String>,
    mounts: Vec<SinkMount>,
}

fn resolve(ctx: &Context, device: &CaptureDevice, ns: &str) -> Resolved {
    let pool = ctx.stores.pool(ns, &device.spec.pool_ref.name);
    let pool_settings = pool.as_deref().map(PoolSettings::resolve);
    let mut sinks = vec![];
    let mut missing_sinks = vec![];
    for r in &device.spec.sink_refs {
        match ctx.stores.sink(ns, &r.name) {
            Some(s) => sinks.push(s),
            None => missing_sinks.push(r.name.clone()),
        }
    }
    let mounts = sinks.iter().map(|s| sink_mounts::render(s)).collect();
    Resolved {
        pool,
        pool_settings,
        sinks,
        missing_sinks,
        mounts,
    }
}

/// The device's volume claim: the one recorded in status, else one labelled for the device,
/// else the name the operator would create.
fn claim_name(ctx: &Context, device: &CaptureDevice, ns: &str) -> (String, bool) {
    let name = device.name_any();
    let recorded = device
        .status
        .as_ref()
        .and_then(|s| s.device.as_ref())
        .and_then(|d| d.volume_claim.clone());
    if let Some(c) = recorded.filter(|c| ctx.stores.claim_exists(ns, c)) {
        return (c, true);
    }
    if let Some(c) = ctx.stores.claims.find(|c| {
        c.namespace().as_deref() == Some(ns)
            && c.labels().get(labels::DEVICE).map(String::as_str) == Some(name.as_str())
    }) {
        return (c.name_any(), true);
    }
    let default = labels::device_claim_name(&name);
    let exists = ctx.stores.claim_exists(ns, &default);
    (default, exists)
}

/// Reconcile one CaptureDevice.
pub async fn reconcile(device: Arc<CaptureDevice>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = device
        .namespace()
        .ok_or_else(|| Error::Invalid("a CaptureDevice without a namespace".into()))?;
    let name = device.name_any();
    let settings = DeviceSettings::resolve(&device);
    if settings.paused {
        tracing::debug!("reconciliation paused; no writes");
        return Ok(Action::await_change());
    }
    let now = Timestamp::now();
    let devices: Api<CaptureDevice> = Api::namespaced(ctx.client.clone(), &ns);
    let resolved = resolve(&ctx, &device, &ns);
    let (claim, claim_exists) = claim_name(&ctx, &device, &ns);
    let has_finalizer = device.finalizers().iter().any(|f| f == DRAIN_FINALIZER);
    let mut status_device = (*device).clone();
    let key = format!("{ns}/{name}");
    if let Some(st) = status_device.status.as_mut() {
        st.failures = ctx.failures.merge(&key, st.failures.take());
    } else if let Some(f) = ctx.failures.merge(&key, None) {
        status_device.status = Some(CaptureDeviceStatus {
            failures: Some(f),
            ..Default::default()
        });
    }
    let mut drain_view = None;
    let mut waiting_for_capacity = false;
    let mut recheck = None;

    if device.metadata.deletion_timestamp.is_some() {
        if !has_finalizer {
            return Ok(Action::await_change());
        }
        let view = drain(&ctx, &device, &settings, &resolved, &claim, claim_exists, now).await?;
        if let DrainView::Complete(_) = &view {
            finish_offboarding(&ctx, &device, &settings, &claim, claim_exists).await?;
            apply::set_finalizer(&devices, &name, DRAIN_FINALIZER, false).await?;
            ctx.written.forget(&key);
            ctx.failures.clear(&key);
            publish(
                &ctx,
                &device,
                EventType::Normal,
                "Offboarded",
                "every record was delivered; the device was removed",
            )
            .await;
            return Ok(Action::await_change());
        }
        drain_view = Some(view);
        recheck = Some(Duration::from_secs(30));
    } else {
        if !has_finalizer {
            apply::set_finalizer(&devices, &name, DRAIN_FINALIZER, true).await?;
        }
        if settings.run_strategy == RunStrategy::Halted {
            let has_pods =
                !ctx.stores.assigned_pods(&ns, &name).is_empty() || ctx.stores.drain_pod(&ns, &name).is_some();
            if has_pods {
                let view = drain(&ctx, &device, &settings, &resolved, &claim, claim_exists, now).await?;
                if !matches!(view, DrainView::Complete(_)) {
                    recheck = Some(Duration::from_secs(30));
                }
                drain_view = Some(view);
            }
        } else if let (Some(pool), Some(pool_settings)) = (&resolved.pool, &resolved.pool_settings)
            && resolved.missing_sinks.is_empty()
        {
            let outcome = ensure_pod(
                &ctx,
                &status_device,
                &settings,
                pool,
                pool_settings,
                &resolved,
                &claim,
                claim_exists,
                now,
            )
            .await?;
            waiting_for_capacity = outcome.waiting_for_capacity;
            if let Some(f) = outcome.failures {
                ctx.failures.record(&key, &f);
                let mut st = status_device.status.clone().unwrap_or_default();
                st.failures = Some(f);
                status_device.status = Some(st);
            }
            recheck = outcome.recheck;
        }
    }

    // ---- status ----
    let assigned = ctx.stores.assigned_pods(&ns, &name);
    let facts: Option<PodFacts> = assigned.first().map(|p| pod_facts::read(p));
    let pinned = status_device
        .status
        .as_ref()
        .and_then(|s| s.enrollment.as_ref())
        .and_then(|e| e.host.clone());
    let current_revisions = resolved
        .pool
        .as_deref()
        .map(|p| (build::runtime_revision(p), build::agent_revision(p)));
    let computed = status::compute(&Observed {
        device: &status_device,
        settings: &settings,
        pool: resolved.pool.as_deref(),
        pool_settings: resolved.pool_settings.as_ref(),
        missing_sinks: resolved.missing_sinks.clone(),
        pod: facts.as_ref(),
        claim: (claim_exists || facts.is_some()).then(|| claim.clone()),
        pinned_host_present: pinned.as_deref().map(|h| ctx.stores.node_exists(h)),
        waiting_for_capacity,
        drain: drain_view,
        current_revisions,
        now,
    });
    if computed.phase == DevicePhase::Capturing {
        ctx.failures.clear(&key);
    }
    write_status(&ctx, &devices, &device, &computed.status, computed.phase).await?;
    let unsettled = matches!(
        computed.phase,
        DevicePhase::Provisioning | DevicePhase::Degraded | DevicePhase::Draining
    )
    .then_some(UNSETTLED_RECHECK);
    let next = [recheck, computed.recheck_after, unsettled]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(RESYNC);
    Ok(Action::requeue(jitter(next)))
}

async fn write_status(
    ctx: &Context,
    api: &Api<CaptureDevice>,
    device: &CaptureDevice,
    status: &CaptureDeviceStatus,
    phase: DevicePhase,
) -> Result<(), Error> {
    let previous = device.status.clone().unwrap_or_default();
    let key = format!("{}/{}", device.namespace().unwrap_or_default(), device.name_any());
    // Nothing to write when the stored status is this one — or when this one was the last we
    // wrote and the cache simply has not caught up yet.
    if &previous == status || ctx.written.is_last(&key, status) {
        tracing::debug!(
            phase = phase.as_str(),
            stored = previous.phase.map(|p| p.as_str()),
            "status unchanged"
        );
        return Ok(());
    }
    tracing::debug!(phase = phase.as_str(), "writing the status");
    apply::apply_status(api, &device.name_any(), status).await?;
    ctx.written.remember(&key, status);
    // An event for each transition (the very first status is not a transition).
    if previous.phase.is_some() && previous.phase != Some(phase) {
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        let note = ready.map(|c| c.message.clone()).unwrap_or_default();
        let kind = match phase {
            DevicePhase::Degraded | DevicePhase::Failed | DevicePhase::ReEnrollmentRequired => EventType::Warning,
            DevicePhase::Draining if ready.is_some_and(|c| c.reason == "DrainIncomplete") => EventType::Warning,
            _ => EventType::Normal,
        };
        publish(ctx, device, kind, phase.as_str(), &note).await;
    }
    Ok(())
}

/// Publish an Event on the device (best effort: an event that cannot be written is logged).
pub async fn publish(ctx: &Context, device: &CaptureDevice, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &device.object_ref(&())).await {
        tracing::warn!(%error, reason, "could not publish an event");
    }
}

struct EnsureOutcome {
    waiting_for_capacity: bool,
    failures: Option<FailureStatus>,
    recheck: Option<Duration>,
}

#[allow(clippy::too_many_arguments)]
async fn ensure_pod(
    ctx: &Context,
    device: &CaptureDevice,
    settings: &DeviceSettings,
    pool: &DevicePool,
    pool_settings: &PoolSettings,
    resolved: &Resolved,
    claim: &str,
    claim_exists: bool,
    now: Timestamp,
) -> Result<EnsureOutcome, Error> {
    let ns = device.namespace().unwrap_or_default();
    let name = device.name_any();
    let key = format!("{ns}/{name}");
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut outcome = EnsureOutcome {
        waiting_for_capacity: false,
        failures: None,
        recheck: None,
    };
    let previous = device.status.clone().unwrap_or_default();

    let pods = ctx.stores.assigned_pods(&ns, &name);
    // Never two device Pods for one employee: if a race ever produced a second one, keep the
    // newest and remove the others.
    for extra in pods.iter().skip(1) {
        tracing::error!(pod = %extra.name_any(), "a device had two Pods; deleting the older one");
        apply::delete(&pods_api, &extra.name_any(), extra.uid(), None).await?;
    }

    let pinned = previous.enrollment.as_ref().and_then(|e| e.host.clone());
    if let Some(host) = &pinned
        && !ctx.stores.node_exists(host)
    {
        // Sticky host: the sign-in is bound to that Mac. Report; never move silently.
        return Ok(outcome);
    }

    if !pods.is_empty() {
        // The cache shows the device's Pod: any creation or claim we were waiting for is done.
        ctx.expectations.clear(&key);
    }
    let Some(pod) = pods.first() else {
        if let Some(expected) = ctx.expectations.pending(&key, |p| {
            ctx.stores
                .pods
                .find(|x| x.name_any() == p && x.namespace().as_deref() == Some(&ns))
                .is_some()
        }) {
            tracing::debug!(pod = %expected, "waiting for the cache to show the Pod just created");
            outcome.recheck = Some(Duration::from_secs(2));
            return Ok(outcome);
        }
        let failures = previous.failures.clone().unwrap_or_default();
        if failures.consecutive >= pool_settings.max_failures {
            return Ok(outcome);
        }
        if let Some(retry) = failures
            .retry_after
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            && retry > now
        {
            outcome.recheck = Some(now.duration_until(retry).try_into().unwrap_or(Duration::from_secs(1)));
            return Ok(outcome);
        }
        if let Some(max) = pool_settings.max_devices {
            let used = ctx.stores.pods.state_filter(|p| {
                p.namespace().as_deref() == Some(&ns)
                    && p.labels().get(labels::POOL) == Some(&pool.name_any())
                    && p.labels().get(labels::ROLE).map(String::as_str) != Some(labels::ROLE_SPARE)
            });
            if used.len() as i32 >= max {
                outcome.waiting_for_capacity = true;
                outcome.recheck = Some(Duration::from_secs(60));
                return Ok(outcome);
            }
        }
        // A fresh device (never had a Pod or volume) may take a warm spare.
        if !claim_exists
            && pinned.is_none()
            && let Some(spare) = claim::claim(ctx, device, settings, pool, pool_settings, &resolved.mounts).await?
        {
            ctx.expectations.expect(&key, &spare);
            observe_onboarding(ctx, device, now);
            tracing::info!(pod = %spare, "claimed a warm spare");
            return Ok(outcome);
        }
        if !claim_exists {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            apply::apply(&claims, &build::device_claim(pool, claim, Some(device))).await?;
        }
        let pod_name = labels::device_pod_name(&name);
        let desired = build::device_pod(&PodPlan {
            name: pod_name.clone(),
            claim_name: claim.to_owned(),
            pool,
            pool_settings,
            role: PodRole::Assigned { device, settings },
            sinks: &resolved.mounts,
            pinned_host: pinned.as_deref(),
        });
        match apply::create(&pods_api, &desired).await {
            Ok(_) => {}
            // The cache was behind; the Pod exists and the watch will bring it.
            Err(Error::Kube {
                source: kube::Error::Api(s),
                ..
            }) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
        ctx.expectations.expect(&key, &pod_name);
        observe_onboarding(ctx, device, now);
        tracing::info!(pod = %pod_name, host = pinned.as_deref().unwrap_or("any Mac host"), "created the device Pod");
        return Ok(outcome);
    };

    // The Pod exists: repair it if it failed, refresh its agent configuration if it changed.
    let facts = pod_facts::read(pod);
    let age = facts
        .created
        .map(|c| now.duration_since(c))
        .unwrap_or(SignedDuration::ZERO);
    let stuck = !facts.runtime_started
        && facts.unschedulable.is_none()
        && age >= SignedDuration::try_from(pool_settings.unready_timeout).unwrap_or(SignedDuration::MAX);
    let failed = facts.finished && !facts.drain_requested;
    if (failed || stuck) && !facts.terminating {
        let reason = if failed {
            format!("device Pod {} stopped", facts.name)
        } else {
            format!(
                "device Pod {} did not boot within {}s",
                facts.name,
                pool_settings.unready_timeout.as_secs()
            )
        };
        let mut f = previous.failures.clone().unwrap_or_default();
        f.consecutive += 1;
        f.last_reason = Some(reason.clone());
        f.last_failure_at = Some(now.to_string());
        let backoff = repair_backoff(f.consecutive);
        f.retry_after = Some((now + SignedDuration::try_from(backoff).unwrap_or_default()).to_string());
        tracing::warn!(pod = %facts.name, consecutive = f.consecutive, backoff_s = backoff.as_secs(), "device Pod failed; recreating after backoff");
        apply::delete(&pods_api, &facts.name, pod.uid(), Some(0)).await?;
        ctx.expectations.clear(&key);
        publish(
            ctx,
            device,
            kube::runtime::events::EventType::Warning,
            "DeviceFailed",
            &reason,
        )
        .await;
        outcome.failures = Some(f);
        outcome.recheck = Some(backoff);
        return Ok(outcome);
    }
    if !facts.terminating && !facts.drain_requested {
        let desired = build::agent_config(&PodPlan {
            name: facts.name.clone(),
            claim_name: claim.to_owned(),
            pool,
            pool_settings,
            role: PodRole::Assigned { device, settings },
            sinks: &resolved.mounts,
            pinned_host: None,
        });
        let desired = build::agent_config_annotation(&desired);
        if pod.annotations().get(labels::AGENT_CONFIG) != Some(&desired) {
            let ops = vec![
                json!({"op": "add", "path": format!("/metadata/annotations/{}", apply::pointer_key(labels::AGENT_CONFIG)), "value": desired}),
            ];
            apply::compare_and_swap(&pods_api, &facts.name, &pod.resource_version().unwrap_or_default(), ops).await?;
            tracing::info!(pod = %facts.name, "updated the agent configuration");
        }
    }
    Ok(outcome)
}

fn observe_onboarding(ctx: &Context, device: &CaptureDevice, now: Timestamp) {
    if let Some(created) = device.metadata.creation_timestamp.as_ref() {
        let secs = now.duration_since(created.0).as_secs_f64().max(0.0);
        ctx.metrics.onboarding_seconds.observe(secs);
    }
}

async fn drain(
    ctx: &Context,
    device: &CaptureDevice,
    settings: &DeviceSettings,
    resolved: &Resolved,
    claim: &str,
    claim_exists: bool,
    now: Timestamp,
) -> Result<DrainView, Error> {
    let ns = device.namespace().unwrap_or_default();
    let name = device.name_any();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mut pods: Vec<Arc<Pod>> = ctx.stores.assigned_pods(&ns, &name);
    pods.extend(ctx.stores.drain_pod(&ns, &name));
    let with_facts: Vec<(&Pod, PodFacts)> = pods.iter().map(|p| (p.as_ref(), pod_facts::read(p))).collect();
    let previous = device.status.clone().unwrap_or_default();
    let plan = offboard::plan(&with_facts, &previous, claim_exists, now);
    match &plan.step {
        Step::RequestStop {
            pod,
            active_deadline_seconds,
        } => {
            let patch = json!({"spec": {"activeDeadlineSeconds": active_deadline_seconds}});
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            pods_api
                .patch(pod, &params, &Patch::Merge(patch))
                .await
                .map_err(Error::kube(format!("ask Pod {pod} to stop and drain")))?;
            tracing::info!(%pod, "asked the agent to drain");
        }
        Step::DeletePods(names) => {
            for (p, facts) in &with_facts {
                if names.contains(&facts.name) {
                    apply::delete(&pods_api, &facts.name, p.uid(), Some(0)).await?;
                }
            }
        }
        Step::CreateDrainPod => {
            if let (Some(pool), Some(pool_settings)) = (&resolved.pool, &resolved.pool_settings) {
                let pinned = previous.enrollment.as_ref().and_then(|e| e.host.clone());
                let pod = build::device_pod(&PodPlan {
                    name: labels::drain_pod_name(&name),
                    claim_name: claim.to_owned(),
                    pool,
                    pool_settings,
                    role: PodRole::Drain { device, settings },
                    sinks: &resolved.mounts,
                    pinned_host: pinned.as_deref(),
                });
                match apply::create(&pods_api, &pod).await {
                    Ok(_) => tracing::info!("started a drain Pod"),
                    Err(Error::Kube {
                        source: kube::Error::Api(s),
                        ..
                    }) if s.code == 409 => {}
                    Err(e) => return Err(e),
                }
            } else {
                return Ok(DrainView::Incomplete {
                    receipt: None,
                    reason: format!(
                        "the device's spool cannot be drained: DevicePool {} is gone; recreate it (the volume is kept)",
                        device.spec.pool_ref.name
                    ),
                });
            }
        }
        Step::Wait | Step::Finished => {}
    }
    let _ = resolved.sinks.len();
    Ok(plan.view)
}

async fn finish_offboarding(
    ctx: &Context,
    device: &CaptureDevice,
    settings: &DeviceSettings,
    claim: &str,
    claim_exists: bool,
) -> Result<(), Error> {
    let ns = device.namespace().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    for pod in ctx
        .stores
        .device_pods(&ns, &device.name_any(), labels::ROLE_ASSIGNED)
        .iter()
        .chain(ctx.stores.drain_pod(&ns, &device.name_any()).iter())
    {
        apply::delete(&pods_api, &pod.name_any(), pod.uid(), Some(0)).await?;
    }
    if !claim_exists {
        return Ok(());
    }
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    match settings.volume_policy {
        VolumePolicy::Delete => apply::delete(&claims, claim, None, None).await?,
        VolumePolicy::Retain => {
            // Orphan the volume so garbage collection keeps it after the device is gone.
            let patch = json!({"metadata": {"ownerReferences": null, "labels": {"capturefleet.dev/retained": "true"}}});
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            claims
                .patch(claim, &params, &Patch::Merge(patch))
                .await
                .map_err(Error::kube(format!("retain volume {claim}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repair_backoff_doubles_and_caps() {
        assert_eq!(repair_backoff(1), Duration::from_secs(10));
        assert_eq!(repair_backoff(2), Duration::from_secs(20));
        assert_eq!(repair_backoff(4), Duration::from_secs(80));
        assert_eq!(repair_backoff(30), Duration::from_secs(600));
    }
}
