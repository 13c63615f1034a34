//! Reading and verifying archives.

pub mod cli;
pub mod verify;
