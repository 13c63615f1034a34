//! The capture agent: reads chat.db, builds archive records, spools them durably and delivers
//! them to every sink. Never uses a Kubernetes client.

pub mod cli;
pub mod seal;
pub mod source;
pub mod spool;
