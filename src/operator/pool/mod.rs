//! The DevicePool controller: keeps `warmSpares` booted, unclaimed devices (replacing outdated
//! ones), and reports the pool's counts. Device rollouts and the PodDisruptionBudget live in
//! their own modules.

pub mod counts;
pub mod pdb;
pub mod rollout;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::api::DevicePool;
use crate::operator::apply;
use crate::operator::context::Context;
use crate::operator::device::build::{self, PodPlan, PodRole};
use crate::operator::device::pod_facts;
use crate::operator::device::settings::PoolSettings;
use crate::operator::device::sink_mounts::{self, SinkMount};
use crate::operator::error::Error;
use crate::operator::labels::PREPARED_SINKS;

/// Name of a new spare (Pod and volume share it).
fn spare_name(pool: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{pool}-spare-{suffix}")
}

/// Reconcile one DevicePool.
pub async fn reconcile(pool: Arc<DevicePool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pool
        .namespace()
        .ok_or_else(|| Error::Invalid("a DevicePool without a namespace".into()))?;
    let name = pool.name_any();
    if pool.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let settings = PoolSettings::resolve(&pool);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let claims_api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);

    // Spares are prepared for every sink of the namespace (their credentials mounted), so a
    // device using any of them can claim a spare; a spare prepared for another set is replaced.
    let sinks: Vec<SinkMount> = ctx
        .stores
        .sinks_in(&ns)
        .iter()
        .map(|s| sink_mounts::render(s))
        .collect();
    let prepared: String = sinks
        .iter()
        .filter_map(|s| s.config.as_ref().map(|c| c.name.as_str()))
        .collect::<Vec<_>>()
        .join(",");
    let revisions = (build::runtime_revision(&pool), build::agent_revision(&pool));

    let spares: Vec<Arc<Pod>> = ctx
        .stores
        .spares(&ns, &name)
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let (current, stale): (Vec<_>, Vec<_>) = spares.into_iter().partition(|p| {
        let f = pod_facts::read(p);
        f.runtime_revision.as_ref() == Some(&revisions.0)
            && f.agent_revision.as_ref() == Some(&revisions.1)
            && p.annotations().get(PREPARED_SINKS) == Some(&prepared)
            && !f.finished
    });
    for spare in &stale {
        tracing::info!(spare = %spare.name_any(), "replacing an outdated warm spare");
        apply::delete(&pods_api, &spare.name_any(), spare.uid(), Some(0)).await?;
        apply::delete(&claims_api, &spare.name_any(), None, None).await?;
    }

    let devices = ctx.stores.pool_devices(&ns, &name).len() as i32;
    let mut target = settings.warm_spares;
    if let Some(max) = settings.max_devices {
        target = target.min((max - devices).max(0));
    }
    let have = current.len() as i32;
    if have < target {
        for _ in have..target {
            let spare = spare_name(&name);
            apply::apply(&claims_api, &build::device_claim(&pool, &spare, None)).await?;
            let pod = build::device_pod(&PodPlan {
                name: spare.clone(),
                claim_name: spare.clone(),
                pool: &pool,
                pool_settings: &settings,
                role: PodRole::Spare,
                sinks: &sinks,
                pinned_host: None,
            });
            apply::create(&pods_api, &pod).await?;
            tracing::info!(%spare, "created a warm spare");
        }
    } else if have > target {
        // Remove the surplus: not-yet-booted first, then the newest.
        let mut surplus = current.clone();
        surplus.sort_by_key(|p| {
            (
                pod_facts::read(p).runtime_started,
                std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)),
            )
        });
        for spare in surplus.into_iter().take((have - target) as usize) {
            apply::delete(&pods_api, &spare.name_any(), spare.uid(), Some(0)).await?;
            apply::delete(&claims_api, &spare.name_any(), None, None).await?;
        }
    }

    // Rollout of outdated devices.
    let views: Vec<rollout::DeviceView> = ctx
        .stores
        .pool_devices(&ns, &name)
        .iter()
        .map(|d| {
            let pod = ctx.stores.assigned_pods(&ns, &d.name_any()).into_iter().next();
            let facts = pod.as_deref().map(pod_facts::read);
            let status = d.status.as_ref();
            rollout::DeviceView {
                name: d.name_any(),
                phase: status.and_then(|s| s.phase),
                stopping: d.metadata.deletion_timestamp.is_some()
                    || d.spec.run_strategy == Some(crate::api::capture_device::RunStrategy::Halted)
                    || status.and_then(|s| s.phase) == Some(crate::api::DevicePhase::Draining)
                    || facts.as_ref().is_some_and(|f| f.terminating || f.drain_requested),
                available: facts
                    .as_ref()
                    .is_some_and(|f| f.runtime_ready && f.agent_ready && !f.terminating),
                pod: facts.as_ref().map(|f| f.name.clone()),
                runtime_current: facts
                    .as_ref()
                    .is_some_and(|f| f.runtime_revision.as_ref() == Some(&revisions.0)),
                agent_current: facts
                    .as_ref()
                    .is_some_and(|f| f.agent_revision.as_ref() == Some(&revisions.1)),
            }
        })
        .collect();
    let decision = rollout::decide(&pool, &views);
    for (device, pod) in &decision.replace {
        let uid = ctx
            .stores
            .pods
            .find(|p| p.name_any() == *pod && p.namespace().as_deref() == Some(ns.as_str()))
            .and_then(|p| p.uid());
        tracing::info!(%device, %pod, "rolling update: replacing the device Pod with the pool's new images");
        apply::delete(&pods_api, pod, uid, None).await?;
    }

    // PodDisruptionBudget (written only when it differs from what exists).
    let pdb_api: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &ns);
    let desired_pdb = pdb::build(&pool);
    let existing = pdb_api
        .get_opt(&pdb::name(&pool))
        .await
        .map_err(Error::kube("read PodDisruptionBudget"))?;
    if existing
        .as_ref()
        .and_then(|p| p.spec.as_ref())
        .map(|s| (&s.max_unavailable, &s.selector))
        != desired_pdb.spec.as_ref().map(|s| (&s.max_unavailable, &s.selector))
    {
        apply::apply(&pdb_api, &desired_pdb).await?;
    }

    let mut status = counts::compute(&pool, &ctx.stores, &revisions, target, Timestamp::now());
    counts::set_rollout(&mut status, &pool, &decision, Timestamp::now());
    if pool.status.as_ref() != Some(&status) {
        let api: Api<DevicePool> = Api::namespaced(ctx.client.clone(), &ns);
        apply::apply_status(&api, &name, &status).await?;
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}
