//! The one `capturefleet` binary: operator, agent, CRD generator, device simulator and tools.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    capturefleet::tls::install_crypto_provider();
    let cli = capturefleet::cli::Cli::parse();
    capturefleet::cli::run(cli)
}
