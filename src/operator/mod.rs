//! The Kubernetes operator: one controller per kind, each a pipeline
//! fetch → validate → build (pure) → apply (server-side apply) → status.

pub mod cli;
