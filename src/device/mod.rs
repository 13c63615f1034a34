//! The device simulator: writes a realistic chat.db in Apple's schema (via `crate::apple`),
//! with attachment files on disk, for the demo, tests and benchmarks. Deterministic by seed.
//!
//! Library use (tests, benchmarks, crash tests):
//! ```no_run
//! use capturefleet::device::{Simulator, SimulatorConfig};
//! let mut sim = Simulator::create(SimulatorConfig::new("/tmp/Messages", 42)).unwrap();
//! sim.write_history(10_000).unwrap();   // bulk history, dated in the past
//! sim.step().unwrap();                  // one live event dated now (message, edit, unsend, deletion …)
//! sim.manifest().write_json("/tmp/manifest.json").unwrap();
//! ```

pub mod cli;
pub mod content;
pub mod manifest;
pub mod runtime;
pub mod sim;

pub use manifest::{Manifest, ManifestEvent};
pub use sim::{SimError, Simulator, SimulatorConfig};
