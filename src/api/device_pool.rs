//! `DevicePool`: a class of cloud Apple devices, with warm spares and an update strategy.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Probe, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{DURATION_RULE, LocalObjectRef};

/// A class of cloud Apple devices: which device runtime and capture agent run, on which Mac
/// hosts, with how much storage, and how many booted, not yet signed-in warm spares are kept
/// so that onboarding an employee takes seconds instead of a macOS boot.
///
/// `kubectl scale dpool/NAME --replicas=N` sets the number of warm spares.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capturefleet.dev",
    version = "v1alpha1",
    kind = "DevicePool",
    doc = "A class of cloud Apple devices with warm spares and an update strategy (short name dpool).",
    namespaced,
    shortname = "dpool",
    category = "capturefleet",
    status = "DevicePoolStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.warmSpares",
        status_replicas_path = ".status.warm",
        label_selector_path = ".status.spareSelector"
    ),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.desired", description = "Devices plus the warm spares wanted"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.ready", description = "Devices capturing"),
    printcolumn(name = "Warm", type_ = "integer", json_path = ".status.warm", description = "Booted spares ready to be claimed"),
    printcolumn(name = "Outdated", type_ = "integer", json_path = ".status.outdated", description = "Devices running old images"),
    printcolumn(name = "Waiting", type_ = "integer", json_path = ".status.waiting", description = "Devices waiting for a Mac host slot or the pool limit", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new("self.metadata.name.size() <= 40").message(
        "DevicePool names must be at most 40 characters: warm spare Pods are named after the pool"
    ),
)]
#[serde(rename_all = "camelCase")]
pub struct DevicePoolSpec {
    /// The device runtime: the container that materialises a macOS device on a Mac host.
    pub runtime: RuntimeSpec,

    /// The capture agent that runs beside every device.
    pub agent: AgentSpec,

    /// RuntimeClass of device Pods (e.g. a virtual-kubelet macOS provider).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub runtime_class_name: Option<String>,

    /// Labels a node must carry to host devices of this pool. Default:
    /// `capturefleet.dev/mac-host: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Tolerations of device Pods, for tainted Mac hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub tolerations: Option<Vec<Toleration>>,

    /// Secrets for pulling the runtime and agent images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub image_pull_secrets: Option<Vec<LocalObjectRef>>,

    /// The per-device volume holding device state and the agent's spool.
    pub volume: VolumeSpec,

    /// How employees sign in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<EnrollmentSpec>,

    /// Booted, unassigned devices to keep ready for new employees. Default 0. Each spare
    /// occupies a macOS VM slot on a Mac host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub warm_spares: Option<i32>,

    /// Upper bound of devices (employees' devices plus spares) in this pool. A CaptureDevice
    /// beyond it waits, with condition `Provisioned=False, reason=PoolAtCapacity`. Default:
    /// unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_devices: Option<i32>,

    /// How devices move to new images when `runtime.image` or `agent.image` changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,

    /// Auto-repair of failing devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairSpec>,
}

/// The device runtime container.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// Image of the device runtime (a macOS VM launcher, or `capturefleet` itself for the
    /// simulated runtime of evaluation clusters).
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = kube::core::Rule::new("!self.contains(' ')").message("runtime.image must be an image reference without spaces"))]
    pub image: String,

    /// Command of the runtime container. Default: the image's entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub command: Option<Vec<String>>,

    /// Arguments of the runtime container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub args: Option<Vec<String>>,

    /// Image pull policy. Default: Kubernetes' default for the tag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// CPU and memory of the runtime container. The operator adds one
    /// `capturefleet.dev/macos-vm` to requests and limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Directory, inside the shared volume, where the runtime exposes the guest's
    /// `~/Library/Messages` (chat.db, its WAL and Attachments/). Default: `Messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    #[x_kube(validation = kube::core::Rule::new("!self.startsWith('/') && !self.contains('..')").message(
        "runtime.messagesPath is relative to the shared volume and must not contain '..'"
    ))]
    pub messages_path: Option<String>,

    /// Probe that succeeds once the device has booted. Default: the simulated runtime's
    /// `capturefleet device probe booted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,

    /// Probe that succeeds while the Apple ID is signed in and Messages is syncing. Default:
    /// the simulated runtime's `capturefleet device probe signed-in`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
}

/// The capture agent container.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Image of the capture agent (the `capturefleet` image).
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = kube::core::Rule::new("!self.contains(' ')").message("agent.image must be an image reference without spaces"))]
    pub image: String,

    /// Image pull policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// CPU and memory of the agent container. Default: requests 20m CPU / 32Mi, limit 128Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Largest disk space the spool may use before capture pauses (never drops), as a
    /// quantity. Default: half the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message(
        "agent.spoolLimit must be a positive quantity such as 10Gi"
    ))]
    pub spool_limit: Option<String>,

    /// Log level of the agent (`error`, `warn`, `info`, `debug`). Default `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<LogLevel>,
}

// Container image pull policy.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull if not present on the host.
    IfNotPresent,
    /// Never pull.
    Never,
}

// Agent log level.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// Normal operation.
    Info,
    /// Troubleshooting (still no message content).
    Debug,
}

/// The per-device volume.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// Size, as a quantity (e.g. `64Gi`).
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = kube::core::Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))").message(
        "volume.size must be a positive quantity such as 64Gi"
    ))]
    pub size: String,

    /// StorageClass. Default: the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub storage_class_name: Option<String>,
}

/// Enrollment settings.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentSpec {
    /// URL where an employee signs in to their device, with placeholders `{namespace}`,
    /// `{device}`, `{user}` and `{host}`; reported in the CaptureDevice's
    /// `status.enrollment.url` while it awaits enrollment.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('https://')").message(
        "enrollment.urlTemplate must be an https:// URL (employees sign in through it)"
    ))]
    pub url_template: String,
}

/// Update strategy.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.type == 'RollingUpdate' || !has(self.rollingUpdate)").message(
    "updateStrategy.rollingUpdate may only be set when updateStrategy.type is RollingUpdate"
))]
pub struct UpdateStrategy {
    /// `Opportunistic` (default): a device takes the new images only when its Pod is
    /// recreated anyway. `RollingUpdate`: the operator replaces outdated devices, at most
    /// `rollingUpdate.maxUnavailable` at a time, agent-only changes first, and halts when a
    /// replaced device does not become ready.
    #[serde(rename = "type")]
    pub type_: UpdateStrategyType,

    /// Rolling update settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

// Update strategy type.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UpdateStrategyType {
    /// New images only when a device is recreated anyway.
    #[default]
    Opportunistic,
    /// Replace outdated devices gradually.
    RollingUpdate,
}

/// Rolling update settings.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    /// Devices that may be down for replacement at once: a number or a percentage of the
    /// pool's devices (rounded down, at least 1). Default 1. Also the pool's
    /// PodDisruptionBudget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new(
        "type(self) == int ? self >= 1 : self.matches('^(100|[1-9][0-9]?)%$')"
    ).message("rollingUpdate.maxUnavailable must be a positive number or a percentage between 1% and 100%"))]
    pub max_unavailable: Option<IntOrString>,
}

/// Auto-repair settings.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RepairSpec {
    /// Consecutive failures after which a device is marked `Failed` and no longer recreated.
    /// Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_consecutive_failures: Option<i32>,

    /// How long a signed-in device's agent may be not ready before the device is reported
    /// `Degraded` (hysteresis against short reconnects), as a duration. Default `2m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message("repair.degradedAfter must be a duration such as 2m"))]
    pub degraded_after: Option<String>,

    /// How long a device Pod may stay unready (not booted, or crash-looping) before it is
    /// recreated, as a duration. Default `15m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message("repair.unreadyTimeout must be a duration such as 15m"))]
    pub unready_timeout: Option<String>,
}

/// Observed state of a DevicePool.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DevicePoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` (all devices capturing and spares warm), `RolloutHalted` (a rolling update
    /// stopped on a failing device), `AtCapacity` (devices waiting for Mac host slots or the
    /// pool limit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Employees' devices plus the warm spares wanted.
    #[serde(default)]
    pub desired: i32,
    /// Employees' devices (CaptureDevices) in the pool.
    #[serde(default)]
    pub devices: i32,
    /// Devices capturing.
    #[serde(default)]
    pub ready: i32,
    /// Booted spares ready to be claimed.
    #[serde(default)]
    pub warm: i32,
    /// Devices (and spares) running images other than the pool's current ones.
    #[serde(default)]
    pub outdated: i32,
    /// Devices waiting for a Mac host slot or for the pool limit.
    #[serde(default)]
    pub waiting: i32,

    /// Label selector of the warm spare Pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spare_selector: Option<String>,

    /// Hash of the current runtime image and pod settings; devices with another hash need
    /// re-enrollment to update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_revision: Option<String>,

    /// Hash of the current agent image and settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_revision: Option<String>,
}
