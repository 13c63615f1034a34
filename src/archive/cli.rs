//! `capturefleet archive verify`.

use std::process::ExitCode;

/// Verify options.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {}

/// Verify an archive.
pub fn run(_args: VerifyArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("archive verification is not implemented yet")
}
