//! `CaptureDevice`: one cloud Apple device for one employee, captured into one or more archives.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{DURATION_RULE, LocalObjectRef};

/// A cloud Apple device for one employee, whose Messages conversations are captured into the
/// firm's compliance archive.
///
/// The operator runs the device as a Pod on a Mac host (one macOS VM slot), with the capture
/// agent beside it and a volume for device state and the agent's spool. Once the employee has
/// signed in, the device stays on that Mac host: Apple binds the sign-in to the host/VM pair.
/// Deleting a CaptureDevice drains the agent (every captured record reaches every sink) before
/// anything is removed.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "capturefleet.dev",
    version = "v1alpha1",
    kind = "CaptureDevice",
    doc = "A cloud Apple device for one employee, captured into the firm's compliance archive (short name cdev).",
    namespaced,
    shortname = "cdev",
    category = "capturefleet",
    status = "CaptureDeviceStatus",
    derive = "PartialEq",
    selectable = ".spec.user.id",
    printcolumn(name = "User", type_ = "string", json_path = ".spec.user.id", description = "Employee id"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Host", type_ = "string", json_path = ".status.device.host", description = "Mac host the device runs on"),
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.poolRef.name"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1),
    validation = kube::core::Rule::new("self.metadata.name.size() <= 63").message(
        "CaptureDevice names must be at most 63 characters: the name is used as a label value on the device's Pod and volume"
    ),
)]
#[serde(rename_all = "camelCase")]
pub struct CaptureDeviceSpec {
    /// The employee this device belongs to.
    pub user: EmployeeIdentity,

    /// The DevicePool (same namespace) that defines the device class: runtime and agent
    /// images, Mac host selection, volume size and enrollment. Immutable: moving a device to
    /// another pool would need a new Apple ID sign-in.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message(
        "poolRef is immutable: moving a device to another pool needs a new sign-in; delete this CaptureDevice and create a new one"
    ))]
    pub pool_ref: LocalObjectRef,

    /// The ArchiveSinks (same namespace) every captured record is delivered to. At least one;
    /// each sink receives every record, with its own delivery cursor.
    #[schemars(length(min = 1, max = 8))]
    #[x_kube(validation = kube::core::Rule::new("self.all(s, self.exists_one(t, t.name == s.name))").message(
        "sinkRefs must not name the same ArchiveSink twice"
    ))]
    pub sink_refs: Vec<LocalObjectRef>,

    /// `Always` (the default) keeps the device running; `Halted` stops it (the Pod is
    /// deleted after a drain, the volume and the Mac host pinning are kept) until set back to
    /// `Always`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,

    /// When true the operator makes no writes at all for this device — not to its Pod, its
    /// volume, nor its status — until it is set back to false. For maintenance by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciliation_paused: Option<bool>,

    /// What to capture. Every field has a default, reported in `status.effective`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<CaptureSpec>,

    /// What happens when the CaptureDevice is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offboarding: Option<OffboardingSpec>,
}

/// The employee a device belongs to.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EmployeeIdentity {
    /// The employee's id in the firm's directory. Immutable: the device, its sign-in and its
    /// archive chain belong to this employee.
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(
        validation = kube::core::Rule::new("self == oldSelf").message(
            "user.id is immutable: the device, its Apple ID sign-in and its archive belong to this employee; create a new CaptureDevice for another employee"
        ),
        validation = kube::core::Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._@-]*$')").message(
            "user.id may contain letters, digits, '.', '_', '@' and '-', and must start with a letter or digit"
        )
    )]
    pub id: String,

    /// The employee's name, for people reading the fleet view and the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,

    /// The employee's work e-mail address (used in enrollment URLs and SMTP journaling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 320))]
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[^@\\\\s]+@[^@\\\\s]+\\\\.[^@\\\\s]+$')").message(
        "user.email must be an e-mail address such as jane.doe@example.com"
    ))]
    pub email: Option<String>,
}

// Whether the device should be running.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RunStrategy {
    /// Keep the device running and capturing.
    #[default]
    Always,
    /// Stop the device after draining its agent; keep its volume and host pinning.
    Halted,
}

/// What to capture.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CaptureSpec {
    /// Messaging services to capture. Default: all of `iMessage`, `SMS` and `RCS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 3))]
    #[x_kube(validation = kube::core::Rule::new("self.all(s, self.exists_one(t, t == s))").message(
        "capture.services must not list a service twice"
    ))]
    pub services: Option<Vec<Service>>,

    /// `Include` (default) archives attachment files with their SHA-256; `MetadataOnly`
    /// archives only name, type and size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<AttachmentCapture>,

    /// How much history to archive when the device is first captured, as a duration (e.g.
    /// `720h` for 30 days). Default: everything on the device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message(
        "capture.backfillWindow must be a duration such as 720h (30 days) or 90m; days are written in hours"
    ))]
    pub backfill_window: Option<String>,

    /// How far back each poll re-reads messages to catch edits, unsends and deletions, as a
    /// duration. Apple allows edits for 15 minutes and unsends for 2 minutes, but a device
    /// that was offline syncs them later. Default: `168h` (7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message(
        "capture.rescanWindow must be a duration such as 168h"
    ))]
    pub rescan_window: Option<String>,
}

// A messaging service Messages can carry.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// Apple's end-to-end encrypted messaging.
    #[serde(rename = "iMessage")]
    IMessage,
    /// Carrier text messages relayed by the employee's iPhone.
    #[serde(rename = "SMS")]
    Sms,
    /// Rich Communication Services (macOS 15 / iOS 18 and later).
    #[serde(rename = "RCS")]
    Rcs,
}

// Attachment capture policy.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachmentCapture {
    /// Archive the files.
    #[default]
    Include,
    /// Archive only their metadata.
    MetadataOnly,
}

/// Offboarding policy.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OffboardingSpec {
    /// What happens to the device volume once the agent has drained with nothing pending:
    /// `Delete` (default: every record is in the archive, and the volume holds the
    /// employee's message database) or `Retain`. After an incomplete drain the volume is
    /// always kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumePolicy>,

    /// How long the agent may take to deliver what it has spooled when the device is
    /// deleted or halted, as a duration. Default: `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = kube::core::Rule::new(DURATION_RULE).message(
        "offboarding.drainTimeout must be a duration such as 1h or 30m"
    ))]
    pub drain_timeout: Option<String>,
}

// What to do with a drained device's volume.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VolumePolicy {
    /// Delete the volume.
    #[default]
    Delete,
    /// Keep the volume (and its data) after the CaptureDevice is gone.
    Retain,
}

// The device's lifecycle phase, chosen from the conditions by a fixed precedence.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DevicePhase {
    /// Accepted, nothing created yet (or waiting for the pool's device limit).
    Pending,
    /// Pod and volume are being created, scheduled or booted.
    Provisioning,
    /// The device is booted; the employee has not signed in yet (see `status.enrollment.url`).
    AwaitingEnrollment,
    /// Signed in, and the agent is capturing into every sink.
    Capturing,
    /// Signed in, but the agent has not been ready for longer than the hysteresis window
    /// (capture stalled or a sink failing).
    Degraded,
    /// `runStrategy: Halted`: the Pod is stopped, volume and host pinning kept.
    Halted,
    /// The CaptureDevice is being deleted or halted; the agent is delivering what it holds.
    Draining,
    /// The Mac host the employee signed in on is gone; the employee must sign in again.
    ReEnrollmentRequired,
    /// The device failed repeatedly and is no longer recreated (see the Ready condition).
    Failed,
}

impl DevicePhase {
    /// The phase's name as shown in status and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DevicePhase::Pending => "Pending",
            DevicePhase::Provisioning => "Provisioning",
            DevicePhase::AwaitingEnrollment => "AwaitingEnrollment",
            DevicePhase::Capturing => "Capturing",
            DevicePhase::Degraded => "Degraded",
            DevicePhase::Halted => "Halted",
            DevicePhase::Draining => "Draining",
            DevicePhase::ReEnrollmentRequired => "ReEnrollmentRequired",
            DevicePhase::Failed => "Failed",
        }
    }

    /// Every phase, in precedence order.
    pub const ALL: [DevicePhase; 9] = [
        DevicePhase::Pending,
        DevicePhase::Provisioning,
        DevicePhase::AwaitingEnrollment,
        DevicePhase::Capturing,
        DevicePhase::Degraded,
        DevicePhase::Halted,
        DevicePhase::Draining,
        DevicePhase::ReEnrollmentRequired,
        DevicePhase::Failed,
    ];
}

/// Observed state of a CaptureDevice, computed by the operator from the objects it owns.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CaptureDeviceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One-word summary of the conditions, by precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<DevicePhase>,

    /// `Ready` (capturing into every sink), `Provisioned` (pod and volume exist and the pod is
    /// placed), `Enrolled` (employee signed in), `Capturing` (agent capturing), `SinksHealthy`
    /// (every sink reachable). Each carries its own `observedGeneration`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Where the device runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceRuntimeStatus>,

    /// Sign-in state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<EnrollmentStatus>,

    /// Consecutive failures of the device pod, for auto-repair with backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<FailureStatus>,

    /// What the agent reported when it last stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drain_receipt: Option<DrainReceiptStatus>,

    /// The settings in force, with every default resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<EffectiveSettings>,
}

/// Where the device runs.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DeviceRuntimeStatus {
    /// The device Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// The Mac host (node) the Pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The volume claim holding device state and the agent's spool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_claim: Option<String>,
    /// Runtime image of the running Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_image: Option<String>,
    /// Agent image of the running Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_image: Option<String>,
    /// True when the running Pod's images differ from the pool's current ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outdated: Option<bool>,
}

/// Sign-in state.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EnrollmentStatus {
    /// Where the employee signs in (from the pool's `enrollment.urlTemplate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The Mac host the employee signed in on. The device is pinned to it from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// When the sign-in was first observed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolled_at: Option<String>,
}

/// Failure bookkeeping for auto-repair.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FailureStatus {
    /// Consecutive failures since the device was last capturing.
    pub consecutive: i32,
    /// Why the last failure happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reason: Option<String>,
    /// When the last failure was observed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_at: Option<String>,
    /// The device pod is not recreated before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
}

/// The agent's drain receipt (termination message), as last read by the operator.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DrainReceiptStatus {
    /// Records in the device's chain.
    pub records_captured: i64,
    /// Sequence number of the chain head.
    pub last_sequence: i64,
    /// Hash of the chain head.
    pub chain_head: String,
    /// Records not yet acknowledged by every sink.
    pub pending_total: i64,
    /// True when nothing was pending.
    pub complete: bool,
    /// When the agent wrote the receipt (RFC 3339).
    pub finished_at: String,
}

/// Settings in force, defaults resolved.
#[derive(Serialize, Deserialize, KubeSchema, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveSettings {
    /// Run strategy in force.
    pub run_strategy: String,
    /// Services captured.
    pub services: Vec<String>,
    /// Attachment policy.
    pub attachments: String,
    /// Backfill window (`all` when unlimited).
    pub backfill_window: String,
    /// Rescan window.
    pub rescan_window: String,
    /// Drain timeout.
    pub drain_timeout: String,
    /// Volume policy after a complete drain.
    pub volume_policy: String,
}
