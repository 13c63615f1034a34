//! YAML fixtures for the operator's pure builders and status computations.
#![cfg(test)]

use serde::Deserialize;

use crate::api::{ArchiveSink, CaptureDevice, DevicePool};

/// The example employee device (jane-doe, two sinks).
pub fn device() -> CaptureDevice {
    serde_yaml::from_str(include_str!("testdata/device.yaml")).expect("device fixture")
}

/// The example pool (advisers).
pub fn pool() -> DevicePool {
    serde_yaml::from_str(include_str!("testdata/pool.yaml")).expect("pool fixture")
}

/// The example sinks (filesystem, S3 with Object Lock).
pub fn sinks() -> Vec<ArchiveSink> {
    serde_yaml::Deserializer::from_str(include_str!("testdata/sinks.yaml"))
        .map(|doc| ArchiveSink::deserialize(doc).expect("sink fixture"))
        .collect()
}
