//! The CaptureDevice controller.

pub mod build;
pub mod claim;
pub mod offboard;
pub mod pod_facts;
pub mod reconcile;
pub mod settings;
pub mod sink_mounts;
pub mod status;
