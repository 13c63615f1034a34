//! `capturefleet agent`.

use std::process::ExitCode;

/// Agent options.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {}

/// Run the agent.
pub fn run(_args: AgentArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the agent is not implemented yet")
}
