//! The pool's PodDisruptionBudget: node drains (e.g. macOS host maintenance) may evict at most
//! `maxUnavailable` of the pool's employee devices at once. Warm spares are not covered (they
//! hold no one's sign-in).

use std::collections::BTreeMap;

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::api::DevicePool;
use crate::operator::labels::{COMPONENT, COMPONENT_DEVICE, MANAGED_BY, MANAGED_BY_VALUE, POOL, ROLE, ROLE_ASSIGNED};

/// Name of a pool's PDB.
pub fn name(pool: &DevicePool) -> String {
    format!("{}-devices", pool.name_any())
}

/// The pool's PodDisruptionBudget.
pub fn build(pool: &DevicePool) -> PodDisruptionBudget {
    let max_unavailable = pool
        .spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.clone())
        .unwrap_or(IntOrString::Int(1));
    PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(name(pool)),
            namespace: pool.namespace(),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.to_owned(), MANAGED_BY_VALUE.to_owned()),
                (POOL.to_owned(), pool.name_any()),
            ])),
            owner_references: pool.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(max_unavailable),
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([
                    (COMPONENT.to_owned(), COMPONENT_DEVICE.to_owned()),
                    (POOL.to_owned(), pool.name_any()),
                    (ROLE.to_owned(), ROLE_ASSIGNED.to_owned()),
                ])),
                match_expressions: None,
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            min_available: None,
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::testdata;

    #[test]
    fn covers_assigned_devices_of_the_pool() {
        let pdb = build(&testdata::pool());
        let spec = pdb.spec.unwrap();
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        let labels = spec.selector.unwrap().match_labels.unwrap();
        assert_eq!(labels.get(ROLE).map(String::as_str), Some("assigned"));
        assert_eq!(pdb.metadata.owner_references.unwrap()[0].kind, "DevicePool");
    }
}
