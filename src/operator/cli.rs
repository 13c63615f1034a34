//! `capturefleet operator`.

use std::process::ExitCode;

/// Operator options.
#[derive(clap::Args, Debug)]
pub struct OperatorArgs {}

/// Run the operator.
pub fn run(_args: OperatorArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the operator is not implemented yet")
}
