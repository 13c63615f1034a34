//! Reading and verifying archives.

pub mod cli;
