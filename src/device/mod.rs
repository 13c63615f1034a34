//! The device simulator: writes a realistic chat.db in Apple's schema.

pub mod cli;
