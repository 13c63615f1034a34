//! The capture agent: reads chat.db, builds archive records, spools them durably and delivers
//! them to every sink. Never uses a Kubernetes client.
//!
//! - [`source`]: the chat.db reader (drafts) and its contract with the pipeline;
//! - [`spool`]: the durable, hash-chained spool (SQLite WAL) and its attachment store;
//! - [`capture`]: the loop that seals drafts into the spool, with back-pressure;
//! - [`deliver`]: one delivery task per sink, retries with backoff, health;
//! - [`drain`]: the drain receipt; [`run`]: wiring it all together; [`cli`]: `capturefleet agent`;
//! - [`memory`]: allocator settings that bound the resident size;
//! - [`config_file`]: the configuration file over time; [`lifecycle`]: waiting for an
//!   assignment (warm spares), running, applying changes.

pub mod backoff;
pub mod capture;
pub mod cli;
pub mod config_file;
pub mod deliver;
pub mod drain;
pub mod lifecycle;
pub mod memory;
pub mod metrics;
pub mod run;
pub mod seal;
pub mod source;
pub mod spool;
pub mod status;
