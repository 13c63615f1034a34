//! capturefleet: a Kubernetes operator that runs one cloud Apple device per employee, the
//! capture agent that streams every iMessage conversation from the device's `chat.db` into a
//! compliance archive, and the archive sinks and tools around them.
//!
//! Dependencies point one way: `api` and `apple` depend on nothing of ours; `operator` uses
//! `api` and `telemetry`; `agent` uses `api`, `apple`, `sinks` and `telemetry` and never a
//! Kubernetes client; `sinks` know records, not where they came from.

pub mod agent;
pub mod api;
pub mod apple;
pub mod archive;
pub mod bench;
pub mod cli;
pub mod device;
pub mod operator;
pub mod sinks;
pub mod telemetry;
pub mod tls;
