//! The Kubernetes operator: one controller per kind, each a pipeline
//! fetch → validate → build (pure) → apply (server-side apply) → status.

pub mod apply;
pub mod cli;
pub mod client;
pub mod conditions;
pub mod context;
pub mod controllers;
pub mod device;
pub mod durations;
pub mod error;
pub mod fleet;
pub mod labels;
pub mod metrics;
pub mod pool;
pub mod quantity;
pub mod runtime;
pub mod sink;
mod testdata;
pub mod watch;
