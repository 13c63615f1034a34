//! Logging, metrics and the HTTP health/metrics endpoints shared by the operator and the agent.

pub mod health;
pub mod logging;
pub mod server;

pub use health::Health;
