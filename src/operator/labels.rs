//! Names, labels and annotations the operator puts on the objects it owns. Watches select
//! owned objects by these labels, so the operator never lists what is not its own.

/// Every object the operator creates carries this (value [`MANAGED_BY_VALUE`]).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY`].
pub const MANAGED_BY_VALUE: &str = "capturefleet";
/// Which part of a device an object is (`device` for device Pods and volumes).
pub const COMPONENT: &str = "capturefleet.dev/component";
/// Value of [`COMPONENT`] on device Pods and their volumes.
pub const COMPONENT_DEVICE: &str = "device";
/// The DevicePool a device Pod or volume belongs to.
pub const POOL: &str = "capturefleet.dev/pool";
/// The CaptureDevice a Pod or volume is assigned to (absent on warm spares).
pub const DEVICE: &str = "capturefleet.dev/device";
/// `assigned` (belongs to a CaptureDevice), `spare` (warm, unclaimed) or `drain` (a
/// drain-only Pod delivering a stopped device's spool).
pub const ROLE: &str = "capturefleet.dev/role";
/// [`ROLE`] value of a device's own Pod.
pub const ROLE_ASSIGNED: &str = "assigned";
/// [`ROLE`] value of a warm spare.
pub const ROLE_SPARE: &str = "spare";
/// [`ROLE`] value of a drain-only Pod.
pub const ROLE_DRAIN: &str = "drain";

/// Annotation holding the agent configuration (YAML), exposed to the agent through a
/// downward-API volume so that a claim or a sink change reaches it without a restart and
/// without a ConfigMap per device.
pub const AGENT_CONFIG: &str = "capturefleet.dev/agent-config";
/// Annotation: hash of the runtime container settings the Pod was built from.
pub const RUNTIME_REVISION: &str = "capturefleet.dev/runtime-revision";
/// Annotation: hash of the agent container settings the Pod was built from.
pub const AGENT_REVISION: &str = "capturefleet.dev/agent-revision";
/// Annotation on a spare: the ArchiveSinks whose credentials it mounts (comma-separated).
pub const PREPARED_SINKS: &str = "capturefleet.dev/prepared-sinks";
/// Annotation a person sets on a CaptureDevice, with the lost host's name as value, to
/// acknowledge that its Mac host is gone and the employee will sign in again elsewhere.
pub const ACKNOWLEDGE_HOST_LOSS: &str = "capturefleet.dev/acknowledge-host-loss";

/// Finalizer that holds a CaptureDevice until its agent has drained.
pub const DRAIN_FINALIZER: &str = "capturefleet.dev/drain";

/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "capturefleet-operator";

/// The extended resource of one macOS VM slot on a Mac host.
pub const MACOS_VM_RESOURCE: &str = "capturefleet.dev/macos-vm";

/// Label selector of every device Pod and volume (the operator's owned-object watches).
pub fn device_objects_selector() -> String {
    format!("{MANAGED_BY}={MANAGED_BY_VALUE},{COMPONENT}={COMPONENT_DEVICE}")
}

/// Name of the Pod the operator creates for a device (claimed spares keep their own names).
pub fn device_pod_name(device: &str) -> String {
    format!("cdev-{device}")
}

/// Name of a drain-only Pod for a device.
pub fn drain_pod_name(device: &str) -> String {
    format!("cdev-{device}-drain")
}

/// Name of the volume claim the operator creates for a device.
pub fn device_claim_name(device: &str) -> String {
    format!("cdev-{device}")
}
