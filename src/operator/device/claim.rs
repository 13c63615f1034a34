//! Claiming a warm spare: a booted, not yet signed-in device of the pool becomes an employee's
//! device by relabelling and re-owning its Pod and volume, and handing its agent the device's
//! configuration through the Pod annotation — no restart, no boot. Each step is a
//! compare-and-swap on the object's `resourceVersion`, so two devices can never claim the same
//! spare.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::build::{self, PodPlan, PodRole};
use super::pod_facts;
use super::settings::{DeviceSettings, PoolSettings};
use super::sink_mounts::SinkMount;
use crate::api::{CaptureDevice, DevicePool};
use crate::operator::apply::{compare_and_swap, pointer_key};
use crate::operator::context::Context;
use crate::operator::error::Error;
use crate::operator::labels::{AGENT_CONFIG, DEVICE, PREPARED_SINKS, ROLE, ROLE_ASSIGNED};

/// Whether a spare can become this device: booted, current images, and prepared for (has the
/// credentials of) every sink the device uses.
pub fn eligible(spare: &Pod, wanted_sinks: &BTreeSet<String>, revisions: &(String, String)) -> bool {
    let facts = pod_facts::read(spare);
    let prepared: BTreeSet<String> = spare
        .annotations()
        .get(PREPARED_SINKS)
        .map(|s| s.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    !facts.terminating
        && !facts.finished
        && facts.runtime_started
        && facts.node.is_some()
        && facts.runtime_revision.as_ref() == Some(&revisions.0)
        && facts.agent_revision.as_ref() == Some(&revisions.1)
        && wanted_sinks.is_subset(&prepared)
}

/// Try to claim one of the pool's spares for the device. Returns the claimed Pod's name.
pub async fn claim(
    ctx: &Context,
    device: &CaptureDevice,
    settings: &DeviceSettings,
    pool: &DevicePool,
    pool_settings: &PoolSettings,
    sinks: &[SinkMount],
) -> Result<Option<String>, Error> {
    let ns = device.namespace().unwrap_or_default();
    let wanted: BTreeSet<String> = device.spec.sink_refs.iter().map(|s| s.name.clone()).collect();
    let revisions = (build::runtime_revision(pool), build::agent_revision(pool));
    let mut candidates: Vec<Arc<Pod>> = ctx
        .stores
        .spares(&ns, &pool.name_any())
        .into_iter()
        .filter(|p| eligible(p, &wanted, &revisions))
        .collect();
    candidates.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let owner = build::owner_of_device(device);

    let mut tried = 0;
    for spare in candidates {
        if tried == 3 {
            break;
        }
        let name = spare.name_any();
        let reservation = format!("{ns}/{name}");
        if !ctx.reservations.try_reserve(&reservation) {
            continue;
        }
        tried += 1;
        let config = build::agent_config(&PodPlan {
            name: name.clone(),
            claim_name: name.clone(),
            pool,
            pool_settings,
            role: PodRole::Assigned { device, settings },
            sinks,
            pinned_host: None,
        });
        let ops = vec![
            json!({"op": "replace", "path": format!("/metadata/labels/{}", pointer_key(ROLE)), "value": ROLE_ASSIGNED}),
            json!({"op": "add", "path": format!("/metadata/labels/{}", pointer_key(DEVICE)), "value": device.name_any()}),
            json!({"op": "replace", "path": "/metadata/ownerReferences", "value": [owner.clone()]}),
            json!({"op": "replace", "path": format!("/metadata/annotations/{}", pointer_key(AGENT_CONFIG)), "value": build::agent_config_annotation(&config)}),
        ];
        let rv = spare.resource_version().unwrap_or_default();
        // The reservation is kept after a successful claim (until it times out), by which time
        // the cache shows the Pod as assigned and no longer a candidate.
        if !compare_and_swap(&pods, &name, &rv, ops)
            .await
            .inspect_err(|_| ctx.reservations.release(&reservation))?
        {
            ctx.reservations.release(&reservation);
            tracing::debug!(spare = %name, "spare was taken or changed; trying the next one");
            continue;
        }
        // The volume follows its Pod. Read it fresh: the cache holds only its metadata and may
        // be behind; retry a few times on a concurrent change.
        for _ in 0..3 {
            let claim = match claims.get(&name).await {
                Ok(c) => c,
                Err(kube::Error::Api(s)) if s.code == 404 => break,
                Err(e) => return Err(Error::kube(format!("read volume claim {name}"))(e)),
            };
            let ops = vec![
                json!({"op": "replace", "path": format!("/metadata/labels/{}", pointer_key(ROLE)), "value": ROLE_ASSIGNED}),
                json!({"op": "add", "path": format!("/metadata/labels/{}", pointer_key(DEVICE)), "value": device.name_any()}),
                json!({"op": "replace", "path": "/metadata/ownerReferences", "value": [owner.clone()]}),
            ];
            if compare_and_swap(&claims, &name, &claim.resource_version().unwrap_or_default(), ops).await? {
                break;
            }
        }
        return Ok(Some(name));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare(prepared: &str, started: bool, rt: &str) -> Pod {
        serde_yaml::from_str(&format!(
            r#"
metadata:
  name: advisers-spare-a
  annotations: {{capturefleet.dev/prepared-sinks: "{prepared}", capturefleet.dev/runtime-revision: {rt}, capturefleet.dev/agent-revision: ag1}}
spec: {{nodeName: mac-host-1, containers: [{{name: device}}, {{name: agent}}]}}
status:
  phase: Running
  containerStatuses:
  - {{name: device, ready: false, started: {started}, restartCount: 0, image: r, imageID: ""}}
"#
        ))
        .unwrap()
    }

    #[test]
    fn only_booted_current_spares_prepared_for_the_sinks_are_eligible() {
        let wanted: BTreeSet<String> = ["worm-filesystem".to_owned()].into();
        let revs = ("rt1".to_owned(), "ag1".to_owned());
        assert!(eligible(&spare("worm-filesystem,s3-worm", true, "rt1"), &wanted, &revs));
        assert!(
            !eligible(&spare("s3-worm", true, "rt1"), &wanted, &revs),
            "missing the sink's credentials"
        );
        assert!(
            !eligible(&spare("worm-filesystem", false, "rt1"), &wanted, &revs),
            "not booted yet"
        );
        assert!(
            !eligible(&spare("worm-filesystem", true, "rt0"), &wanted, &revs),
            "outdated runtime"
        );
    }
}
