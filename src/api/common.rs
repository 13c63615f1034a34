//! Types shared by the three custom resources.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// API group of every capturefleet resource.
pub const GROUP: &str = "capturefleet.dev";
/// API version served and stored.
pub const VERSION: &str = "v1alpha1";

/// CEL fragment: a DNS-1123 label (what Kubernetes accepts as most object names).
pub(crate) const DNS_LABEL_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')";

/// A reference to another object in the same namespace, by name.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalObjectRef {
    /// Name of the object, in the same namespace.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = kube::core::Rule::new(DNS_LABEL_RULE).message(
        "must be the name of an object in this namespace: lowercase letters, digits and '-', starting and ending with a letter or digit"
    ))]
    pub name: String,
}

/// A reference to a Secret in the same namespace. The operator never reads it: it is mounted
/// into the capture agent's container, which reads the files itself.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Name of the Secret, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message(
        "must be the name of a Secret in this namespace: lowercase letters, digits, '-' and '.'"
    ))]
    pub name: String,
}

/// A key in a ConfigMap in the same namespace, e.g. a PEM bundle of certificate authorities.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message(
        "must be the name of a ConfigMap in this namespace: lowercase letters, digits, '-' and '.'"
    ))]
    pub name: String,
    /// Key within the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The standard condition list: one entry per `type`, merged by type under server-side apply,
/// each with its own `observedGeneration` and a `lastTransitionTime` that changes only when
/// `status` changes (kstatus, Flux and Argo CD health checks read these).
pub type Conditions = Vec<Condition>;

/// Condition `status` values.
pub mod condition_status {
    /// The condition holds.
    pub const TRUE: &str = "True";
    /// The condition does not hold.
    pub const FALSE: &str = "False";
    /// Not known yet.
    pub const UNKNOWN: &str = "Unknown";
}

/// CEL fragment shared by duration fields: Go duration syntax, as used throughout Kubernetes.
pub(crate) const DURATION_RULE: &str = "self.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$')";
