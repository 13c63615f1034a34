//! `capturefleet inspect …`.

use std::process::ExitCode;

/// Inspection subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum InspectCommand {}

/// Run an inspection.
pub fn run(command: InspectCommand) -> anyhow::Result<ExitCode> {
    match command {}
}
