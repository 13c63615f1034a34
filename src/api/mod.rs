//! The contracts: the CRDs (users ↔ operator), the agent configuration and drain receipt
//! (operator ↔ agent), and the archive record (agent ↔ archive ↔ auditors).
//! Depends on nothing else of this crate.

pub mod agent;
pub mod crdgen;
pub mod record;
