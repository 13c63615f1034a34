//! `capturefleet device simulate`.

use std::process::ExitCode;

/// Simulator options.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {}

/// Run the simulator.
pub fn run(_args: SimulateArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the simulator is not implemented yet")
}
