//! The contracts: the CRDs (users ↔ operator), the agent configuration and drain receipt
//! (operator ↔ agent), and the archive record (agent ↔ archive ↔ auditors).
//! Depends on nothing else of this crate.

pub mod agent;
// The `CustomResource` derive repeats `type_` across printer columns, which trips this lint.
#[allow(clippy::duplicated_attributes)]
pub mod archive_sink;
#[allow(clippy::duplicated_attributes)]
pub mod capture_device;
pub mod common;
pub mod crdgen;
#[allow(clippy::duplicated_attributes)]
pub mod device_pool;
pub mod record;
pub mod reference;

pub use archive_sink::{ArchiveSink, ArchiveSinkSpec, ArchiveSinkStatus};
pub use capture_device::{CaptureDevice, CaptureDeviceSpec, CaptureDeviceStatus, DevicePhase};
pub use device_pool::{DevicePool, DevicePoolSpec, DevicePoolStatus};
